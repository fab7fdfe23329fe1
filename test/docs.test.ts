/*
 * Every TypeScript and JavaScript block of the docs compiles against the built package, under the
 * project's compiler settings (tsconfig.json: strict), as one TypeScript program; blocks marked to
 * run also run:
 *
 * - each block is a module of its own (`.mts` for ts, `.mjs` for js, checked with checkJs), placed
 *   beside its markdown file, so `fastify-supabase-jwks` and `fastify-supabase-jwks/testing` resolve
 *   as a user's imports do: through package.json "exports" (the package's own name) to dist/, and
 *   every other package to this repository's node_modules;
 * - a block may be a fragment: the names it uses without declaring them (`app`, `supabaseUrl`,
 *   `handler`, …) come from PREAMBLE below, declared globally, which the block's own declarations
 *   and imports shadow;
 * - declaration merging in one block (`declare module 'fastify-supabase-jwks'`) applies to the
 *   whole program, as it would in an app;
 * - blocks in other languages are skipped by their language (SKIPPED). A fence without a language,
 *   or with one in neither list, fails.
 *
 * Two markers, each an HTML comment on the last non-blank line before a ts or js block's fence:
 *
 * - `<!-- not-compiled: <reason> -->`: a block that cannot compile by nature (a partial signature,
 *   a sketch of a file layout) is skipped, and says why;
 * - `<!-- run -->`: the block is compiled as the others, then run with node after the build, and
 *   must exit 0 within RUN_TIMEOUT. It runs as an ES module file (ts transpiled by typescript's
 *   transpileModule) in a temporary folder whose node_modules links the package by its own name, so
 *   its imports reach dist/ through package.json "exports" as a user's do. It is complete: no
 *   PREAMBLE at run time, every name declared or imported. Whatever it starts it stops (a server
 *   listens on 127.0.0.1 and is closed, the test issuer too); a block that never ends fails on the
 *   timeout.
 *
 * Run `npm run build` first: the blocks compile against dist/, and run it.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import ts from 'typescript'
import { codeBlocks, markdownFiles, type CodeBlock } from './fixtures/code-blocks'
import { actingErrorCodes, errorCodes } from '../lib/errors'

/** A tap subtest, as the callback of `t.test` gets it. */
type Test = Parameters<Parameters<typeof t.test>[0]>[0]

const ROOT = join(__dirname, '..')
/** The package's own name, which the blocks import. */
const PACKAGE = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { name: string }).name
/** How long a block marked `<!-- run -->` may run, in milliseconds, before it is killed and fails. */
const RUN_TIMEOUT = 30_000

/** Languages compiled, and the extension their blocks get. */
const COMPILED: Record<string, string> = { ts: '.mts', typescript: '.mts', js: '.mjs', javascript: '.mjs' }
/** Languages that are not TypeScript or JavaScript: shown, never compiled. */
const SKIPPED = new Set(['sh', 'bash', 'shell', 'console', 'json', 'jsonc', 'yaml', 'yml', 'text', 'dockerfile', 'sql', 'http', 'html', 'diff', 'dotenv'])

/**
 * What a fragment may use without declaring it, declared globally (a block's own declarations win):
 * the app, the plugin as the Usage section imports it, and the app's own values and handlers that
 * the docs name without showing. @fastify/websocket's types are loaded for its route option.
 */
const PREAMBLE = `/// <reference types="@fastify/websocket" />
declare const app: import('fastify').FastifyInstance
declare const supabaseJwks: typeof import('fastify-supabase-jwks')
declare const supabaseUrl: string
/** A token from elsewhere than a request's header (a WebSocket's first message, a job). */
declare const token: string
/** Route handlers of the app. */
declare const handler: import('fastify').RouteHandlerMethod
declare const getProfile: import('fastify').RouteHandlerMethod
declare const createOrder: import('fastify').RouteHandlerMethod
/** Another @fastify/auth strategy of the app. */
declare const verifyServiceKey: import('@fastify/auth').FastifyAuthFunction
`

/** Where a block is compiled: beside its markdown file, named by its line. */
function pathOf (block: CodeBlock): string {
  return join(ROOT, `${block.file}.${block.line}${COMPILED[block.lang]}`)
}

/** The project's compiler options, for type-checking only, with JavaScript checked too. */
function compilerOptions (): ts.CompilerOptions {
  const file = join(ROOT, 'tsconfig.json')
  const { config } = ts.readConfigFile(file, ts.sys.readFile)
  const { options } = ts.parseJsonConfigFileContent(config, ts.sys, ROOT, undefined, file)
  return { ...options, noEmit: true, allowJs: true, checkJs: true, declaration: false, sourceMap: false }
}

/** Compiles `sources` (path -> text, next to the files on disk) as one program; its diagnostics, each with its file. */
function compile (sources: Map<string, string>): readonly ts.Diagnostic[] {
  const options = compilerOptions()
  const host = ts.createCompilerHost(options)
  const { fileExists, readFile, getSourceFile } = host
  host.fileExists = (path) => sources.has(path) || fileExists.call(host, path)
  host.readFile = (path) => sources.get(path) ?? readFile.call(host, path)
  host.getSourceFile = (path, language, ...rest) => {
    const text = sources.get(path)
    return text === undefined ? getSourceFile.call(host, path, language, ...rest) : ts.createSourceFile(path, text, language)
  }
  const program = ts.createProgram({ rootNames: [...sources.keys()], options, host })
  return ts.getPreEmitDiagnostics(program)
}

/** A diagnostic as `README.md:185: TS2339 Property 'user_role' does not exist…`, at its markdown line. */
function describe (diagnostic: ts.Diagnostic, blockOf: Map<string, CodeBlock>): string {
  const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n  ')
  const block = diagnostic.file === undefined ? undefined : blockOf.get(diagnostic.file.fileName)
  if (diagnostic.file === undefined || diagnostic.start === undefined) return `TS${diagnostic.code} ${message}`
  const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
  const where = block === undefined ? `${relative(ROOT, diagnostic.file.fileName)}:${line + 1}` : `${block.file}:${block.line + 1 + line}`
  return `${where}: TS${diagnostic.code} ${message}`
}

/** Every fenced block of the repository's markdown files. */
function docBlocks (files: readonly string[]): CodeBlock[] {
  return files.flatMap((file) => codeBlocks(file, readFileSync(join(ROOT, file), 'utf8')))
}

/** A block of no markdown file, with its code from line 4 of canary.md: the tests' proof that they can fail. */
function canary (lang: string, lines: readonly string[], runs = false): CodeBlock {
  return { file: 'canary.md', line: 3, end: 4 + lines.length, lang, code: lines.join('\n') + '\n', notCompiled: undefined, run: runs }
}

t.test('every TypeScript and JavaScript block of the docs compiles against the built package', async (t) => {
  t.ok(existsSync(join(ROOT, 'dist', 'index.d.ts')), 'dist/ is built (npm run build)')
  const files = markdownFiles(ROOT)
  t.ok(files.includes('README.md'), 'README.md is among the files')

  const compiled: CodeBlock[] = []
  for (const block of docBlocks(files)) {
    const name = `${block.file}:${block.line} (${block.lang || 'no language'})`
    if (block.notCompiled !== undefined) {
      t.not(block.notCompiled, '', `${name}: not compiled, with a reason`)
      t.ok(COMPILED[block.lang] !== undefined, `${name}: the marker is only for ts and js blocks`)
      continue
    }
    if (block.run) t.ok(COMPILED[block.lang] !== undefined, `${name}: <!-- run --> is only for ts and js blocks`)
    if (COMPILED[block.lang] !== undefined) compiled.push(block)
    else t.ok(SKIPPED.has(block.lang), `${name}: a language that is not compiled (${[...SKIPPED].join(', ')}), or ts/js`)
  }

  // a block with a known error, compiled with the others: proof that the blocks are checked, and errors placed
  const broken = canary('ts', ["import { createTestIssuer } from 'fastify-supabase-jwks/testing'", 'const issuer: number = await createTestIssuer()'])
  const sources = new Map<string, string>([[join(ROOT, 'docs-preamble.d.ts'), PREAMBLE]])
  const blockOf = new Map<string, CodeBlock>()
  for (const block of [broken, ...compiled]) {
    sources.set(pathOf(block), block.code)
    blockOf.set(pathOf(block), block)
  }
  const diagnostics = compile(sources).map((diagnostic) => describe(diagnostic, blockOf))
  t.match(diagnostics.filter((line) => line.startsWith('canary.md:')), [/^canary\.md:5: TS2322 Type 'TestIssuer' is not assignable to type 'number'/],
    'a block with an error fails, at its line of the markdown file')
  t.same(diagnostics.filter((line) => !line.startsWith('canary.md:')), [], `${compiled.length} blocks of ${files.length} files compile`)
})

/**
 * A folder to run blocks in, laid out as a user's project: `<tmp>/app/node_modules/<PACKAGE>`
 * links this repository (whose package.json "exports" lead to dist/), and `<tmp>/node_modules`
 * links this repository's node_modules for the other imports (fastify, @fastify/cookie, …).
 * Removed after `t`.
 */
function runFolder (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'docs-run-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir')
  const app = join(dir, 'app')
  mkdirSync(join(app, 'node_modules'), { recursive: true })
  symlinkSync(ROOT, join(app, 'node_modules', PACKAGE), 'dir')
  return app
}

/** A block's code as node runs it: ts transpiled to an ES module, js as written. */
function runnable (block: CodeBlock): string {
  if (COMPILED[block.lang] !== '.mts') return block.code
  const compilerOptions = { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 }
  return ts.transpileModule(block.code, { fileName: 'block.mts', compilerOptions }).outputText
}

/** Runs `block` as an ES module file of `dir` (a runFolder) with node; why it failed, or `undefined` when it exited 0 within `timeout` ms. */
async function run (dir: string, block: CodeBlock, timeout = RUN_TIMEOUT): Promise<string | undefined> {
  const file = join(dir, `${block.file.replaceAll('/', '-')}.${block.line}.mjs`)
  writeFileSync(file, runnable(block))
  const child = spawn(process.execPath, [file], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], timeout, killSignal: 'SIGKILL' })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  const [code, signal] = await once(child, 'close') as [number | null, NodeJS.Signals | null]
  if (code === 0) return undefined
  return `${code === null ? `killed (${signal}) after ${timeout} ms` : `exit code ${code}`}:\n${output}`
}

t.test('blocks marked <!-- run --> run against the built package, and exit 0', async (t) => {
  t.ok(existsSync(join(ROOT, 'dist', 'index.js')), 'dist/ is built (npm run build)')
  const dir = runFolder(t)

  // canaries: a ts block through both entry points passes; one that throws, and one that never ends, fail
  t.equal(await run(dir, canary('ts', [
    "import { strict as assert } from 'node:assert'",
    "import Fastify from 'fastify'",
    "import supabaseJwks from 'fastify-supabase-jwks'",
    "import { createTestIssuer } from 'fastify-supabase-jwks/testing'",
    '',
    'const issuer = await createTestIssuer()',
    'const app = Fastify()',
    'await app.register(supabaseJwks, { supabaseUrl: issuer.url })',
    "app.get('/me', { preHandler: app.authenticate }, async (request) => ({ sub: request.user.sub }))",
    "const res = await app.inject({ url: '/me', headers: { authorization: 'Bearer ' + issuer.sign({ sub: 'ada' }) } })",
    'const status: number = res.statusCode',
    'assert.equal(status, 200)',
    "assert.equal(res.json().sub, 'ada')",
    'await Promise.all([app.close(), issuer.close()])'
  ], true)), undefined, 'a ts block runs, transpiled, with the package by its name (both entry points, through "exports")')
  t.match(await run(dir, canary('js', ["throw new Error('the canary throws')"], true)), /^exit code 1:\n[\s\S]*Error: the canary throws/,
    'a block that throws fails, with its output')
  t.match(await run(dir, canary('js', ['setInterval(() => {}, 1000)'], true), 1000), /^killed \(SIGKILL\) after 1000 ms/,
    'a block that never ends is killed at the timeout, and fails')

  const marked = docBlocks(markdownFiles(ROOT)).filter((block) => block.run && COMPILED[block.lang] !== undefined)
  for (const block of marked) {
    const name = `${block.file}:${block.line}`
    if (block.code.includes('.listen(')) t.ok(block.code.includes('127.0.0.1'), `${name}: listens on 127.0.0.1`)
    t.equal(await run(dir, block), undefined, `${name} runs and exits 0`)
  }
  t.pass(`${marked.length} blocks marked <!-- run --> ran`)
})

t.test('blocks are read as CommonMark fences: backticks or tildes, indented in lists, with their markers', async (t) => {
  const markdown = [
    '<!-- run -->', // 1
    '```ts', // 2
    'const a = 1', // 3
    '```', // 4
    '<!-- not-compiled: a partial signature -->', // 5
    '', // 6
    '````js title="x"', // 7
    '```', // 8: shorter than the fence, part of the block
    '````', // 9
    '1. a list item', // 10
    '   ~~~TS', // 11
    '   const b = 2', // 12
    '     indented more', // 13
    '   ~~~', // 14
    '<!-- not-compiled: -->', // 15
    'text in between', // 16
    '```', // 17
    'no language', // 18
    '```', // 19
    '<!-- not-compiled:-->', // 20
    '```sh', // 21
    'unclosed' // 22
  ].join('\n')
  t.same(codeBlocks('x.md', markdown).map(({ line, end, lang, code, notCompiled, run }) => ({ line, end, lang, code, notCompiled, run })), [
    { line: 2, end: 4, lang: 'ts', code: 'const a = 1\n', notCompiled: undefined, run: true },
    { line: 7, end: 9, lang: 'js', code: '```\n', notCompiled: 'a partial signature', run: false },
    { line: 11, end: 14, lang: 'ts', code: 'const b = 2\n  indented more\n', notCompiled: undefined, run: false },
    { line: 17, end: 19, lang: '', code: 'no language\n', notCompiled: undefined, run: false },
    { line: 21, end: 22, lang: 'sh', code: 'unclosed\n', notCompiled: '', run: false }
  ])
})

/** The `| \`CODE\` | status |` rows of a markdown section's tables: code -> status. */
function codeRows (markdown: string, heading: string): Map<string, number> {
  const start = markdown.indexOf(`\n## ${heading}\n`)
  const end = markdown.indexOf('\n## ', start + 1)
  const section = start === -1 ? '' : markdown.slice(start, end === -1 ? undefined : end)
  return new Map([...section.matchAll(/^\| `(FST_[A-Z_]+)` \| (\d{3})\b/gm)].map(([, code, status]) => [code!, Number(status)]))
}

/** The codes of `codes` that `rows` lacks or lists with another status. */
function missingRows (rows: Map<string, number>, codes: Record<string, number>): string[] {
  return Object.entries(codes).filter(([code, status]) => rows.get(code) !== status).map(([code, status]) => `${code} ${status}`)
}

t.test("README's errors table lists every code a request can be answered with, with its status", async (t) => {
  const rows = codeRows(readFileSync(join(ROOT, 'README.md'), 'utf8'), 'Errors')
  t.same(missingRows(rows, errorCodes), [], 'every code authenticate answers')
  t.same(missingRows(rows, actingErrorCodes), [], 'every code request.sql and request.supabase throw')
  // proof that it can fail: a table without a code, and one with a wrong status
  const table = '# App\n\n## Errors\n\n| Code | Status |\n| --- | --- |\n| `FST_A` | 401 | x |\n| `FST_B` | 500 | y |\n\n## Next\n| `FST_C` | 403 |\n'
  t.same(missingRows(codeRows(table, 'Errors'), { FST_A: 401, FST_B: 503, FST_C: 403 }), ['FST_B 503', 'FST_C 403'])
})
