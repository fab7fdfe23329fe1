import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { createTestIssuer, type TestIssuer, type TestIssuerOptions } from '../lib/testing'

/** A tap subtest, as the callback of `t.test` gets it. */
type Test = Parameters<Parameters<typeof t.test>[0]>[0]

/*
 * Runs every example in examples/ the way a user would: `node <file>` in its folder, the package
 * imported by its name (resolved to this repository's dist/ through package.json "exports"), real
 * HTTP on 127.0.0.1. Each examples/<name>/ has a README.md and a check.mjs:
 *
 *   export const issuerOptions = { alg: 'ES256' }          // optional: options of the test issuer
 *   export default async function check (t, { issuer, start, node }) {
 *     const api = await start('server.mjs')                 // PORT=0, SUPABASE_URL=issuer.url
 *     const res = await api.request('/me', { token: issuer.sign() })
 *     t.equal(res.status, 200)
 *   }
 *
 * A new folder is picked up by itself; one without a check.mjs fails here.
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

interface CheckContext {
  issuer: TestIssuer
  start (file: string, env?: Record<string, string | undefined>): Promise<Started>
  node (args: string[], env?: Record<string, string | undefined>): Promise<Finished>
}

interface CheckModule {
  default: (t: Test, context: CheckContext) => Promise<void>
  issuerOptions?: TestIssuerOptions
}

/**
 * The environment of an example: the user's, without tap's instrumentation (its loaders and
 * coverage belong to the test process, and examples are not part of lib/'s coverage).
 */
function exampleEnv (extra: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (!/^(NODE_OPTIONS|NODE_V8_COVERAGE|TAP|_TAPJS_)/.test(name)) env[name] = value
  }
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
  return {
    issuer,
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
