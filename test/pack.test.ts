/*
 * Proof that the published package works: `npm pack` of a clean checkout of the working tree (as
 * `npm publish` packs it: scripts on), the tarball installed into a project of its own (its
 * dependencies from the npm cache that `npm ci` filled) with no warning about it, its source maps
 * naming files it ships, and there an ES module, a CommonJS module, `tsc --noEmit` on TypeScript
 * that uses the types, and the `check` bin. Then the install from git: the checkout without dist/
 * installed as npm installs a git dependency, built by its `prepare` script.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join, relative, resolve, sep } from 'node:path'
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
    // a child that exits without reading its input (git) closes the pipe: EPIPE is no failure of the run
    child.stdin.on('error', (error: NodeJS.ErrnoException) => { if (error.code !== 'EPIPE') reject(error) })
    child.stdin.end(input)
  })
}

/**
 * A clean checkout of the working tree in `dir`: the files git has (tracked ones, and new ones it
 * does not ignore) as they are now, so no dist/ and nothing else built or ignored; this
 * repository's node_modules linked in, standing for the `npm ci` of a fresh clone.
 */
async function checkout (dir: string): Promise<void> {
  const listed = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], root)
  if (listed.code !== 0) throw new Error(`git ls-files: ${listed.stderr}`)
  for (const path of listed.stdout.split('\0')) {
    // a tracked file deleted in the working tree is not part of it
    if (path === '' || !existsSync(join(root, path))) continue
    mkdirSync(dirname(join(dir, path)), { recursive: true })
    cpSync(join(root, path), join(dir, path))
  }
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'), 'junction')
}

/** Every file under `dir`, recursively. */
function filesUnder (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? filesUnder(join(dir, entry.name)) : [join(dir, entry.name)])
}

/** npm's warnings in `output` that are about this package or its scripts (others, such as EBADENGINE for a dependency of fastify on Node 20, are not). */
function warningsAboutPackage (output: string): string[] {
  return output.split('\n').filter((line) => /^npm warn/i.test(line) && /fastify-supabase-jwks|install-scripts|prepare/i.test(line))
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
import supabaseJwks, { type SupabaseClientLike, type SupabaseJwksOptions, type SupabaseUser } from 'fastify-supabase-jwks'
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
// without supabase-js, and with no SupabaseTypes merged, request.supabase is typed SupabaseClientLike
app.get('/notes', { preHandler: app.authenticate }, async (request) => {
  const like: SupabaseClientLike = request.supabase
  // @ts-expect-error supabase-js's other members are typed once SupabaseTypes gives its client type
  request.supabase.channel('room')
  return like.from('notes')
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
  const source = join(work, 'checkout')
  await checkout(source)
  const manifest = readFileSync(join(source, 'package.json'), 'utf8')

  // scripts on, as `npm publish` runs them: prepack builds dist/ and sets package.json aside for
  // one without prepare, which the tarball gets; postpack puts it back
  const pack = await run('npm', ['pack', '--json', '--pack-destination', work], source)
  t.equal(pack.code, 0, 'npm pack, scripts on', { stderr: pack.stderr })
  if (pack.code !== 0) return
  t.equal(readFileSync(join(source, 'package.json'), 'utf8'), manifest, 'package.json is as it was after the pack')
  t.notOk(existsSync(join(source, 'package.json.prepack')), 'nothing left aside')
  const [packed] = JSON.parse(pack.stdout) as Array<{ filename: string, files: Array<{ path: string }> }>
  const files = packed!.files.map((file) => file.path).sort()

  t.test('the tarball holds what users need, and nothing else', async (t) => {
    const outside = files.filter((path) => !/^(dist|lib|docs)\//.test(path) && !['package.json', 'README.md', 'SECURITY.md', 'LICENSE', 'CHANGELOG.md'].includes(path))
    t.same(outside, [], 'only dist, lib, the docs and package.json')
    // the guides the README links to ship with it, so its links resolve where npm shows the README
    t.same(files.filter((path) => path.startsWith('docs/')), readdirSync(join(root, 'docs')).map((name) => `docs/${name}`).sort(), 'docs: every guide')
    const linked = [...new Set([...readFileSync(join(root, 'README.md'), 'utf8').matchAll(/\]\((docs\/[^)#]+)/g)].map(([, path]) => path!))]
    t.ok(linked.length > 0, 'the README links to guides')
    t.same(linked.filter((path) => !files.includes(path)), [], 'every guide the README links to is in the tarball')
    for (const path of ['LICENSE', 'CHANGELOG.md', 'README.md', 'SECURITY.md', 'dist/index.js', 'dist/index.d.ts', 'dist/esm.mjs', 'dist/testing.js', 'dist/testing.d.ts', 'dist/cli.js']) {
      t.ok(files.includes(path), path)
    }
    // every file of dist is built from a source of lib (a stale or test-only build would not be)
    const orphans = files.filter((path) => path.startsWith('dist/')).filter((path) => {
      const source = path.slice('dist/'.length).replace(/\.d\.mts$|\.mjs(\.map)?$/, '.mts').replace(/\.d\.ts$|\.js(\.map)?$/, '.ts')
      return !existsSync(join(root, 'lib', source))
    })
    t.same(orphans, [], 'no dist file without its lib source')
    // lib is there for the source maps: the sources of the build, all of them
    t.same(files.filter((path) => path.startsWith('lib/')), readdirSync(join(root, 'lib')).map((name) => `lib/${name}`).sort(), 'lib: every source of dist')
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
  // npm's own warnings shown (the default loglevel): the install must give none about the package
  const install = await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], work)
  t.equal(install.code, 0, 'npm install of the tarball', { stderr: install.stderr })
  if (install.code !== 0) return
  const installed = join(work, 'node_modules', 'fastify-supabase-jwks')

  t.test('installing the tarball prints no warning about the package: its manifest has no prepare script', async (t) => {
    t.same(warningsAboutPackage(install.stdout + install.stderr), [], 'no npm warning about the package or its scripts')
    const { scripts, ...rest } = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
    const { scripts: ownScripts, ...ownRest } = JSON.parse(manifest) as { scripts: Record<string, string> }
    t.equal(scripts.prepare, undefined, 'no prepare script (it never runs from a tarball)')
    t.same(scripts, Object.fromEntries(Object.entries(ownScripts).filter(([name]) => name !== 'prepare')), 'the other scripts as they are')
    t.same(rest, ownRest, 'the rest of package.json as it is')
  })

  t.test('every source map names files the installed package holds', async (t) => {
    // the .js maps, and declaration maps (.d.ts.map) if the build makes any
    const maps = filesUnder(installed).filter((path) => path.endsWith('.map'))
    t.ok(maps.length >= 15, `${maps.length} source maps`)
    for (const map of maps) {
      const { sources, sourceRoot = '' } = JSON.parse(readFileSync(map, 'utf8')) as { sources: string[], sourceRoot?: string }
      t.not(sources.length, 0, `${relative(installed, map)} names its sources`)
      for (const name of sources) {
        const path = resolve(dirname(map), sourceRoot, name)
        t.ok(path.startsWith(installed + sep) && existsSync(path), `${relative(installed, map)}: ${name} is ${relative(installed, path)}, in the package`)
      }
    }
  })

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

  t.test('without @supabase/supabase-js installed, the option supabase fails the registration, saying what to install', async (t) => {
    writeFileSync(join(work, 'peer.cjs'), `const Fastify = require('fastify')
const app = Fastify()
app.register(require('fastify-supabase-jwks'), { supabaseUrl: 'https://abc.supabase.co', supabase: { publishableKey: 'sb_publishable_x' } })
app.ready().then(() => console.log('registered'), (err) => console.log(err.code, err.message))`)
    const peer = await run(process.execPath, ['peer.cjs'], work)
    t.equal(peer.code, 0, peer.stderr)
    t.match(peer.stdout, /^FST_SUPABASE_JWKS_REGISTRATION .*the option supabase needs @supabase\/supabase-js, an optional peer dependency it cannot load: npm install @supabase\/supabase-js/)
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

  t.test('an install from git still builds dist/: the repository\'s prepare script runs', async (t) => {
    // npm installs a git dependency by cloning it, installing its dependencies there and packing it,
    // which runs prepare (and no prepack); here the clean checkout, its dist/ removed and its
    // dependencies linked in, packed the same way: installed as a directory with --install-links
    rmSync(join(source, 'dist'), { recursive: true, force: true })
    const project = join(work, 'from-git')
    mkdirSync(project)
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'git-proof', private: true }))
    const fromGit = await run('npm', ['install', '--install-links', '--prefer-offline', '--no-audit', '--no-fund', source], project)
    t.equal(fromGit.code, 0, 'npm install --install-links of the checkout', { stderr: fromGit.stderr })
    const built = join(project, 'node_modules', 'fastify-supabase-jwks')
    t.ok(existsSync(join(built, 'dist', 'index.js')) && existsSync(join(built, 'dist', 'index.d.ts')), 'dist/ built by prepare')
    t.equal((JSON.parse(readFileSync(join(built, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.prepare, 'npm run build', 'its manifest keeps prepare')
    const loaded = await run(process.execPath, ['-e', 'process.stdout.write(typeof require("fastify-supabase-jwks"))'], project)
    t.equal(loaded.stdout, 'function', 'require() gets the plugin', { stderr: loaded.stderr })
  })
})

t.test('scripts/packed-manifest.js: strip sets package.json aside for one without prepare, restore puts it back, a leftover stops strip', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fastify-supabase-jwks-manifest-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  mkdirSync(join(dir, 'scripts'))
  cpSync(join(root, 'scripts', 'packed-manifest.js'), join(dir, 'scripts', 'packed-manifest.js'))
  const original = readFileSync(join(root, 'package.json'), 'utf8')
  writeFileSync(join(dir, 'package.json'), original)
  const manifest = (command: string) => run(process.execPath, [join('scripts', 'packed-manifest.js'), command], dir)

  t.equal((await manifest('check')).code, 0, 'check: the repository\'s own package.json passes')
  t.equal((await manifest('strip')).code, 0)
  const failed = await manifest('check')
  t.equal(failed.code, 1, 'check: a pack left unfinished fails npm test')
  t.match(failed.stderr, /package\.json\.prepack is left from a pack that did not finish/)
  const stripped = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
  t.equal(stripped.scripts.prepare, undefined, 'no prepare')
  t.equal(stripped.scripts.build, 'tsc -p tsconfig.build.json', 'the other scripts stay')
  t.equal(readFileSync(join(dir, 'package.json.prepack'), 'utf8'), original, 'the original set aside')

  // a pack that stopped before postpack: strip refuses, and says how to go on
  const again = await manifest('strip')
  t.equal(again.code, 1)
  t.match(again.stderr, /package\.json\.prepack is left from a pack that did not finish: .*packed-manifest\.js restore/)
  t.equal((await manifest('restore')).code, 0)
  t.equal(readFileSync(join(dir, 'package.json'), 'utf8'), original, 'restored byte for byte')
  t.notOk(existsSync(join(dir, 'package.json.prepack')))
  t.equal((await manifest('restore')).code, 0, 'restore with nothing set aside does nothing')
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ ...JSON.parse(original), scripts: { build: 'tsc' } }))
  const unprepared = await manifest('check')
  t.equal(unprepared.code, 1, 'check: a package.json without prepare fails')
  t.match(unprepared.stderr, /no prepare script: git installs would not build dist/)
  t.equal((await manifest('nope')).code, 2)
})
