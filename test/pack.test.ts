/*
 * Proof that the published package works: `npm pack`, the tarball installed into a project of its
 * own (its dependencies from the npm cache that `npm ci` filled), and there an ES module, a
 * CommonJS module, `tsc --noEmit` on TypeScript that uses the types, and the `check` bin.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { createTestIssuer } from '../lib/testing'

const root = join(__dirname, '..')
// the file installs a project: more than the suite's 120 s may pass on a busy machine
t.setTimeout(600_000)

/**
 * The environment of the temporary project, as a user's would be: none of the `npm test` run's own npm_*
 * settings (but the same cache), and none of tap's (its loader in NODE_OPTIONS, its coverage recording).
 */
const env = Object.fromEntries(Object.entries(process.env).filter(([name]) =>
  /^npm_config_(cache|registry|userconfig)$/i.test(name) || !/^(npm_|_?tap|node_options$|node_v8_coverage$|path$)/i.test(name)))
// nor the node_modules/.bin folders that `npm run` puts on PATH
env.PATH = (process.env.PATH ?? '').split(delimiter).filter((dir) => !/node_modules[\\/]\.bin|node-gyp-bin/.test(dir)).join(delimiter)

/** Runs a command to its end (never synchronously: the test issuer answers from this process). */
function run (command: string, args: string[], cwd: string, input = '') {
  return new Promise<{ code: number | null, stdout: string, stderr: string }>((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, shell: process.platform === 'win32' })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
    child.stdin.end(input)
  })
}

/** The version this repository's lockfile installs, so that the npm cache has it. */
function locked (name: string): string {
  const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { version: string }> }
  return lock.packages[`node_modules/${name}`]!.version
}

/** Registers the plugin against the installed package's own test issuer and answers `ok <status>`. */
const usage = (load: string) => `${load}
async function main () {
  const issuer = await createTestIssuer()
  const app = Fastify()
  await app.register(supabaseJwks, { supabaseUrl: issuer.url })
  app.get('/me', { preHandler: app.authenticate }, async (request) => ({ sub: request.user.sub }))
  const token = issuer.sign({ sub: 'user-1' })
  const res = await app.inject({ url: '/me', headers: { authorization: 'Bearer ' + token } })
  const denied = await app.inject({ url: '/me' })
  await app.close()
  await issuer.close()
  console.log('ok', res.statusCode, res.json().sub, denied.statusCode)
}
main().catch((err) => { console.error(err); process.exit(1) })
`

const typed = `import Fastify from 'fastify'
import supabaseJwks, { type SupabaseJwksOptions, type SupabaseUser } from 'fastify-supabase-jwks'
import { createTestIssuer, type TestIssuer } from 'fastify-supabase-jwks/testing'

const options: SupabaseJwksOptions = { supabaseUrl: 'https://abc.supabase.co', algorithms: ['ES256'], cacheTtl: 600 }
// @ts-expect-error HS256 is not an algorithm of the options type
const legacy: SupabaseJwksOptions = { supabaseUrl: 'https://abc.supabase.co', algorithms: ['HS256'] }

const app = Fastify()
app.register(supabaseJwks, options)
app.get('/me', { preHandler: app.authenticate }, async (request) => {
  const user: SupabaseUser = request.user
  const sub: string = request.user.sub
  const aal: 'aal1' | 'aal2' | undefined = request.user.aal
  // @ts-expect-error claims are typed: sub is a string
  const wrong: number = request.user.sub
  return { user, sub, aal, wrong, legacy }
})

export async function mint (): Promise<string> {
  const issuer: TestIssuer = await createTestIssuer({ alg: 'ES256' })
  const token: string = issuer.sign({ email: 'ada@example.com' })
  await issuer.close()
  return token
}
`

t.test('the packed package installs and works: import, require(), tsc, the check bin', { timeout: 600_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'fastify-supabase-jwks-pack-'))
  t.teardown(() => rmSync(work, { recursive: true, force: true }))

  // scripts off: `npm test` has built dist already, and the tarball is what users get from it
  const pack = await run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], root)
  t.equal(pack.code, 0, pack.stderr)
  const [packed] = JSON.parse(pack.stdout) as Array<{ filename: string, files: Array<{ path: string }> }>
  const files = packed!.files.map((file) => file.path).sort()

  t.test('the tarball holds what users need, and nothing else', async (t) => {
    const outside = files.filter((path) => !path.startsWith('dist/') && !['package.json', 'README.md', 'SECURITY.md', 'LICENSE', 'CHANGELOG.md'].includes(path))
    t.same(outside, [], 'only dist, the docs and package.json')
    for (const path of ['LICENSE', 'CHANGELOG.md', 'README.md', 'SECURITY.md', 'dist/index.js', 'dist/index.d.ts', 'dist/esm.mjs', 'dist/testing.js', 'dist/testing.d.ts', 'dist/cli.js']) {
      t.ok(files.includes(path), path)
    }
    // every file of dist is built from a source of lib (a stale or test-only build would not be)
    const orphans = files.filter((path) => path.startsWith('dist/')).filter((path) => {
      const source = path.slice('dist/'.length).replace(/\.d\.mts$|\.mjs(\.map)?$/, '.mts').replace(/\.d\.ts$|\.js(\.map)?$/, '.ts')
      return !existsSync(join(root, 'lib', source))
    })
    t.same(orphans, [], 'no dist file without its lib source')
    t.same(files.filter((path) => /\.test\.|fixture|bench|example/i.test(path)), [], 'no test, fixture, bench or example file')
    t.match(readFileSync(join(root, 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) 2026 fastify-supabase-jwks contributors/)
  })

  writeFileSync(join(work, 'package.json'), JSON.stringify({
    name: 'pack-proof',
    private: true,
    dependencies: {
      'fastify-supabase-jwks': `file:./${packed!.filename}`,
      fastify: locked('fastify'),
      typescript: locked('typescript'),
      '@types/node': locked('@types/node')
    }
  }, null, 2))
  const install = await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel', 'error'], work)
  t.equal(install.code, 0, `npm install: ${install.stderr}`)
  if (install.code !== 0) return

  t.test('import from an ES module', async (t) => {
    writeFileSync(join(work, 'main.mjs'), usage(`import Fastify from 'fastify'
import supabaseJwks from 'fastify-supabase-jwks'
import { fastifySupabaseJwks } from 'fastify-supabase-jwks'
import { createTestIssuer } from 'fastify-supabase-jwks/testing'
if (fastifySupabaseJwks !== supabaseJwks) throw new Error('the named export is the plugin')`))
    const esm = await run(process.execPath, ['main.mjs'], work)
    t.equal(esm.code, 0, esm.stderr)
    t.equal(esm.stdout.trim(), 'ok 200 user-1 401')
  })

  t.test('require() from CommonJS', async (t) => {
    writeFileSync(join(work, 'main.cjs'), usage(`const Fastify = require('fastify')
const supabaseJwks = require('fastify-supabase-jwks')
const { createTestIssuer } = require('fastify-supabase-jwks/testing')`))
    const cjs = await run(process.execPath, ['main.cjs'], work)
    t.equal(cjs.code, 0, cjs.stderr)
    t.equal(cjs.stdout.trim(), 'ok 200 user-1 401')
  })

  t.test('tsc --noEmit on TypeScript using the options type, request.user and ./testing', async (t) => {
    writeFileSync(join(work, 'app.ts'), typed)
    writeFileSync(join(work, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { target: 'ES2022', module: 'nodenext', moduleResolution: 'nodenext', strict: true, esModuleInterop: true, types: ['node'], noEmit: true },
      files: ['app.ts']
    }))
    const tsc = await run(process.execPath, [join(work, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '-p', 'tsconfig.json'], work)
    t.equal(tsc.code, 0, tsc.stdout + tsc.stderr)
  })

  t.test('npx fastify-supabase-jwks check', async (t) => {
    const issuer = await createTestIssuer()
    t.teardown(() => issuer.close())
    const keys = await run('npx', ['--no-install', 'fastify-supabase-jwks', 'check', issuer.url], work)
    t.equal(keys.code, 0, keys.stderr)
    t.match(keys.stdout, `${issuer.currentKey.kid}  RS256  RSA 2048  sig  used (RS256)`)
    const token = await run('npx', ['--no-install', 'fastify-supabase-jwks', 'check', issuer.url, '--json', '--token', '-'], work, issuer.sign({ exp: Math.floor(Date.now() / 1000) - 60 }))
    t.equal(token.code, 1, token.stderr)
    t.match(JSON.parse(token.stdout), { token: { accepted: false, statusCode: 401, code: 'FST_SUPABASE_JWKS_TOKEN_EXPIRED' } })
    t.equal(issuer.jwksRequests, 2)
  })
})
