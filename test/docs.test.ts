/*
 * Every TypeScript and JavaScript block of the docs compiles against the built package, under the
 * project's compiler settings (tsconfig.json: strict), as one TypeScript program:
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
 * - blocks in other languages are skipped by their language (SKIPPED); a ts or js block that cannot
 *   compile by nature is skipped only with `<!-- not-compiled: <reason> -->` on the last non-blank
 *   line before its fence. A fence without a language, or with one in neither list, fails.
 *
 * Run `npm run build` first: the blocks compile against dist/.
 */
import t from 'tap'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import ts from 'typescript'
import { codeBlocks, type CodeBlock } from './fixtures/code-blocks'

const ROOT = join(__dirname, '..')

/** Folders never searched for markdown. */
const IGNORED = new Set(['node_modules', 'dist', 'coverage', '.tap', '.git'])

/** Every markdown file of the repository (README.md, SECURITY.md, docs/, examples/, …), relative to ROOT. */
function markdownFiles (dir = ROOT): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    if (entry.isDirectory()) return IGNORED.has(entry.name) ? [] : markdownFiles(join(dir, entry.name))
    return entry.name.endsWith('.md') ? [relative(ROOT, join(dir, entry.name))] : []
  }).sort()
}

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

t.test('every TypeScript and JavaScript block of the docs compiles against the built package', async (t) => {
  t.ok(existsSync(join(ROOT, 'dist', 'index.d.ts')), 'dist/ is built (npm run build)')
  const files = markdownFiles()
  t.ok(files.includes('README.md'), 'README.md is among the files')
  const blocks = files.flatMap((file) => codeBlocks(file, readFileSync(join(ROOT, file), 'utf8')))

  const compiled: CodeBlock[] = []
  for (const block of blocks) {
    const name = `${block.file}:${block.line} (${block.lang || 'no language'})`
    if (block.notCompiled !== undefined) {
      t.not(block.notCompiled, '', `${name}: not compiled, with a reason`)
      t.ok(COMPILED[block.lang] !== undefined, `${name}: the marker is only for ts and js blocks`)
      continue
    }
    if (COMPILED[block.lang] !== undefined) compiled.push(block)
    else t.ok(SKIPPED.has(block.lang), `${name}: a language that is not compiled (${[...SKIPPED].join(', ')}), or ts/js`)
  }

  // a block with a known error, compiled with the others: proof that the blocks are checked, and errors placed
  const canary: CodeBlock = { file: 'canary.md', line: 3, lang: 'ts', code: "import { createTestIssuer } from 'fastify-supabase-jwks/testing'\nconst issuer: number = await createTestIssuer()\n", notCompiled: undefined }
  const sources = new Map<string, string>([[join(ROOT, 'docs-preamble.d.ts'), PREAMBLE]])
  const blockOf = new Map<string, CodeBlock>()
  for (const block of [canary, ...compiled]) {
    sources.set(pathOf(block), block.code)
    blockOf.set(pathOf(block), block)
  }
  const diagnostics = compile(sources).map((diagnostic) => describe(diagnostic, blockOf))
  t.match(diagnostics.filter((line) => line.startsWith('canary.md:')), [/^canary\.md:5: TS2322 Type 'TestIssuer' is not assignable to type 'number'/],
    'a block with an error fails, at its line of the markdown file')
  t.same(diagnostics.filter((line) => !line.startsWith('canary.md:')), [], `${compiled.length} blocks of ${files.length} files compile`)
})

t.test('blocks are read as CommonMark fences: backticks or tildes, indented in lists, with their markers', async (t) => {
  const markdown = [
    '# Title', // 1
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
  t.same(codeBlocks('x.md', markdown).map(({ line, lang, code, notCompiled }) => ({ line, lang, code, notCompiled })), [
    { line: 2, lang: 'ts', code: 'const a = 1\n', notCompiled: undefined },
    { line: 7, lang: 'js', code: '```\n', notCompiled: 'a partial signature' },
    { line: 11, lang: 'ts', code: 'const b = 2\n  indented more\n', notCompiled: undefined },
    { line: 17, lang: '', code: 'no language\n', notCompiled: undefined },
    { line: 21, lang: 'sh', code: 'unclosed\n', notCompiled: '' }
  ])
})
