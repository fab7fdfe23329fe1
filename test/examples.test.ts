import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { parse } from 'yaml'
import { createTestIssuer, type TestIssuer, type TestIssuerOptions } from '../lib/testing'
import { startPostgres } from './fixtures/postgres'

/** A tap subtest, as the callback of `t.test` gets it. */
type Test = Parameters<Parameters<typeof t.test>[0]>[0]

/*
 * Runs every example in examples/ the way a user would: `node <file>` in its folder, the package
 * imported by its name (resolved to this repository's dist/ through package.json "exports"), real
 * HTTP on 127.0.0.1. Each examples/<name>/ has a README.md and a check.mjs:
 *
 *   export const issuerOptions = { alg: 'ES256' }          // optional: options of the test issuer
 *   export default async function check (t, { issuer, start, node, postgres }) {
 *     const api = await start('server.mjs')                 // PORT=0, SUPABASE_URL=issuer.url
 *     const res = await api.request('/me', { token: issuer.sign() })
 *     t.equal(res.status, 200)
 *   }
 *
 * `postgres()` starts a throwaway PostgreSQL with Supabase's roles and demo tables (test/fixtures/postgres.ts)
 * for the checks that ask for one, once per example, and gives its URLs (`authenticatorUrl`, `superuserUrl`).
 *
 * A new folder is picked up by itself; one without a check.mjs fails here. tap follows the spawned
 * processes for coverage: package.json's "coverage-exclude" keeps examples/ out of it (lib/ is measured).
 */

const ROOT = path.resolve(__dirname, '..')
const EXAMPLES = path.join(ROOT, 'examples')
/** `listening on http://127.0.0.1:<port>`: the line every example server prints once it accepts connections. */
const LISTENING = /listening on (http:\/\/127\.0\.0\.1:\d+)/

interface Response {
  status: number
  headers: Headers
  text: string
  json (): any
}

interface RequestOptions {
  method?: string
  token?: string
  headers?: Record<string, string>
  body?: string
}

interface Started {
  url: string
  output (): string
  request (path: string, options?: RequestOptions): Promise<Response>
}

interface Finished {
  code: number | null
  stdout: string
  stderr: string
}

/** The URLs of the example's PostgreSQL. */
interface PostgresUrls {
  /** As `authenticator`: may only SET ROLE to anon, authenticated and service_role. */
  authenticatorUrl: string
  /** As `postgres`, the superuser. */
  superuserUrl: string
}

interface CheckContext {
  issuer: TestIssuer
  start (file: string, env?: Record<string, string | undefined>): Promise<Started>
  node (args: string[], env?: Record<string, string | undefined>): Promise<Finished>
  /** A throwaway PostgreSQL with Supabase's roles and demo tables, started on the first call, stopped after the example. */
  postgres (): Promise<PostgresUrls>
}

interface CheckModule {
  default: (t: Test, context: CheckContext) => Promise<void>
  issuerOptions?: TestIssuerOptions
}

/** The test's environment with `extra` set (or, for `undefined`, removed). */
function exampleEnv (extra: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const [name, value] of Object.entries(extra)) {
    if (value === undefined) delete env[name]
    else env[name] = value
  }
  return env
}

async function request (base: string, route: string, options: RequestOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { ...options.headers }
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`
  const response = await fetch(`${base}${route}`, { method: options.method ?? 'GET', headers, body: options.body })
  const text = await response.text()
  return { status: response.status, headers: response.headers, text, json: () => JSON.parse(text) }
}

function contextFor (t: Test, dir: string, issuer: TestIssuer): CheckContext {
  let started: Promise<PostgresUrls> | undefined
  return {
    issuer,
    postgres () {
      started ??= startPostgres(t).then(({ authenticatorUrl, superuserUrl }) => ({ authenticatorUrl, superuserUrl }))
      return started
    },
    async start (file, env = {}) {
      const child = spawn(process.execPath, [file], {
        cwd: dir,
        env: exampleEnv({ PORT: '0', LOG_LEVEL: 'warn', SUPABASE_URL: issuer.url, ...env }),
        stdio: ['ignore', 'pipe', 'pipe']
      })
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
      t.teardown(async () => {
        child.kill('SIGTERM')
        await exited
      })
      let stdout = ''
      let stderr = ''
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
      const url = await new Promise<string>((resolve, reject) => {
        child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
          stdout += chunk
          const match = LISTENING.exec(stdout)
          if (match) resolve(match[1]!)
        })
        child.once('exit', (code) => reject(new Error(`${file} exited (${code}) before listening:\n${stdout}${stderr}`)))
      })
      return { url, output: () => stdout + stderr, request: (route, options) => request(url, route, options) }
    },
    async node (args, env = {}) {
      const child = spawn(process.execPath, args, { cwd: dir, env: exampleEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
      let stdout = ''
      let stderr = ''
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
      const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
      return { code, stdout, stderr }
    }
  }
}

const names = readdirSync(EXAMPLES, { withFileTypes: true }).filter((entry) => entry.isDirectory()).map((entry) => entry.name).sort()

t.test('the examples are found by folder', async (t) => {
  t.ok(names.length >= 6, `examples: ${names.join(', ')}`)
  t.ok(existsSync(path.join(ROOT, 'dist', 'index.js')), 'dist/ is built (npm run build): the examples import the package from it')
})

for (const name of names) {
  t.test(`examples/${name}`, async (t) => {
    const dir = path.join(EXAMPLES, name)
    t.ok(existsSync(path.join(dir, 'README.md')), 'has a README.md')
    for (const file of readdirSync(dir).filter((file) => /\.(c|m)?js$/.test(file))) {
      const source = readFileSync(path.join(dir, file), 'utf8')
      t.notMatch(source, /(from |require\()'\.\.\//, `${file} imports nothing from outside its folder: the package by its name only`)
    }
    const check = path.join(dir, 'check.mjs')
    if (!existsSync(check)) {
      t.fail(`examples/${name} has no check.mjs: every example is run by test/examples.test.ts (see its header)`)
      return
    }
    const mod = await import(pathToFileURL(check).href) as CheckModule
    const issuer = await createTestIssuer(mod.issuerOptions)
    t.teardown(() => issuer.close())
    await mod.default(t, contextFor(t, dir, issuer))
  })
}

/** Names and values that belong to a signer, never to an API that only verifies. */
const SECRET_NAME = /SECRET|PASSWORD|PRIVATE|SERVICE_ROLE|JWT_KEYS|API_KEY|ANON_KEY|TOKEN/i
const SECRET_VALUE = /^eyJ|sb_secret_|-----BEGIN|"d"\s*:|\$\{/

t.test('examples/self-hosted/docker-compose.yml: the API gets URLs and no secret; GoTrue gets its signing key', async (t) => {
  const dir = path.join(EXAMPLES, 'self-hosted')
  const compose = parse(readFileSync(path.join(dir, 'docker-compose.yml'), 'utf8')) as {
    services: Record<string, { environment?: Record<string, string>, env_file?: unknown, secrets?: unknown, volumes?: unknown, ports?: string[] }>
  }
  t.same(Object.keys(compose.services).sort(), ['api', 'auth', 'db'])
  const { api, auth } = compose.services as Record<'api' | 'auth', { environment: Record<string, string>, env_file?: unknown, secrets?: unknown, volumes?: unknown }>

  t.same(Object.keys(api.environment).sort(), ['ALLOW_INSECURE_JWKS_URL', 'HOST', 'PORT', 'SUPABASE_ISSUER', 'SUPABASE_JWKS_URL'],
    'the api service is given exactly these variables')
  for (const [name, value] of Object.entries(api.environment)) {
    t.notMatch(name, SECRET_NAME, `${name} is not a secret's name`)
    t.notMatch(String(value), SECRET_VALUE, `${name} holds no key, token or value read from .env`)
  }
  for (const name of ['SUPABASE_JWKS_URL', 'SUPABASE_ISSUER']) {
    t.match(new URL(api.environment[name]!).protocol, /^https?:$/, `${name} is a URL`)
  }
  t.same(Object.keys(api).sort(), ['build', 'depends_on', 'environment', 'ports'],
    'the api service has nothing else: no env_file, secrets, configs, volumes, volumes_from or extends')
  t.equal((api as { build?: unknown }).build, '.', 'built from its folder, with no build args or secrets')
  for (const override of ['docker-compose.override.yml', 'docker-compose.override.yaml', 'compose.override.yml', 'compose.override.yaml']) {
    t.notOk(existsSync(path.join(dir, override)), `no ${override}, which compose would load on top`)
  }
  t.equal(api.env_file, undefined, 'no env_file: .env (GoTrue\'s secrets) never reaches the api service')
  t.equal(api.secrets, undefined)
  t.equal(api.volumes, undefined, 'no volume: nothing mounted into the api container')

  const jwks = new URL(api.environment.SUPABASE_JWKS_URL!)
  t.equal(`${jwks.hostname}:${jwks.port}${jwks.pathname}`, `auth:${auth.environment.GOTRUE_API_PORT}/.well-known/jwks.json`,
    'the JWKS URL is the auth service\'s, at a bare GoTrue\'s root')
  t.equal(api.environment.SUPABASE_ISSUER, auth.environment.GOTRUE_JWT_ISSUER, 'the expected issuer is GoTrue\'s GOTRUE_JWT_ISSUER')

  t.match(auth.environment.GOTRUE_JWT_KEYS, /^\$\{GOTRUE_JWT_KEYS:\?/, 'GoTrue signs with GOTRUE_JWT_KEYS, required from .env')
  t.match(auth.environment.GOTRUE_JWT_SECRET, /^\$\{GOTRUE_JWT_SECRET:\?/, 'GoTrue\'s required GOTRUE_JWT_SECRET comes from .env')
  for (const [name, service] of Object.entries(compose.services)) {
    for (const port of service.ports ?? []) t.match(port, /^127\.0\.0\.1:/, `${name} publishes ${port} on loopback only`)
  }

  const dockerfile = readFileSync(path.join(dir, 'Dockerfile'), 'utf8')
  t.notMatch(dockerfile, /^[ \t]*(ENV|ARG)\s/m, 'the API image sets no variables')
  t.notMatch(dockerfile, /^[ \t]*COPY\s+\.\s/m, 'the API image copies server.mjs only, not the folder with .env')
  t.match(readFileSync(path.join(dir, '.dockerignore'), 'utf8'), /^\.env$/m, '.env is kept out of the build context')
  t.match(readFileSync(path.join(ROOT, '.gitignore'), 'utf8'), /^\.env$/m, '.env is kept out of git')
})

t.test('examples/.env.example: SUPABASE_URL and nothing secret', async (t) => {
  const lines = readFileSync(path.join(EXAMPLES, '.env.example'), 'utf8').split('\n')
  const vars = lines.map((line) => /^#?\s*([A-Z][A-Z0-9_]*)=(.*)$/.exec(line)).filter((match) => match !== null)
  t.ok(lines.some((line) => /^SUPABASE_URL=https:\/\//.test(line)), 'SUPABASE_URL is set, to an https URL')
  for (const [, name, value] of vars) {
    t.notMatch(name!, SECRET_NAME, `${name} is not a secret's name`)
    t.notMatch(value!, SECRET_VALUE, `${name} holds no key or token`)
  }
})
