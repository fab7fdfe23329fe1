import t from 'tap'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { parse } from 'yaml'
import { codeBlocks, type CodeBlock } from './fixtures/code-blocks'
import { findPostgresBin } from './fixtures/postgres'

/* The public CI runs what .ci/run runs, on each supported Node.js line; they cannot drift apart. */

const ROOT = path.resolve(__dirname, '..')

interface Step { uses?: string, run?: string, with?: Record<string, unknown> }
interface Job { if?: string, strategy?: { matrix?: { node?: unknown[] } }, steps: Step[] }
const workflow = parse(readFileSync(path.join(ROOT, '.github/workflows/ci.yml'), 'utf8')) as { on: Record<string, unknown>, jobs: Record<string, Job> }
const ciRun = readFileSync(path.join(ROOT, '.ci/run'), 'utf8')
const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }

/** The commands a shell script runs, without comments, `set`, `cd` and version prints. */
function commandsOf (script: string): string[] {
  return script.split('\n').map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#') && !/^(set|cd) /.test(line) && !/ --version$/.test(line))
}

/** The npm commands of a shell script, in order. */
function npmCommandsOf (script: string): string[] {
  return commandsOf(script).filter((line) => line.startsWith('npm '))
}

t.test('the test job: .ci/run on Node 20, 22 and 24', async (t) => {
  const job = workflow.jobs.test!
  t.same(job.strategy?.matrix?.node?.map(String), ['20', '22', '24'])
  t.same(job.steps.map((step) => step.uses).filter(Boolean), ['actions/checkout@v4', 'actions/setup-node@v4'])
  // eslint-disable-next-line no-template-curly-in-string -- a GitHub Actions expression, not a JS template
  t.same(job.steps.find((step) => step.uses === 'actions/setup-node@v4')?.with, { 'node-version': '${{ matrix.node }}', cache: 'npm' })
  t.same(job.steps.map((step) => step.run).filter(Boolean), ['bash .ci/run'], 'its only command is .ci/run itself')
  t.same(npmCommandsOf(ciRun), ['npm ci', 'npm test'], '.ci/run is npm ci, then npm test')
  for (const event of ['push', 'pull_request', 'workflow_dispatch']) t.ok(event in workflow.on, `runs on ${event}`)
})

/** The fenced blocks of `markdown` under its `## <title>` heading, up to the next heading of level 1 or 2 (outside code). */
function blocksUnder (markdown: string, title: string): CodeBlock[] {
  const lines = markdown.split('\n')
  const blocks = codeBlocks('README.md', markdown)
  const start = lines.indexOf(`## ${title}`) + 1
  if (start === 0) return []
  const inCode = (line: number): boolean => blocks.some((block) => line >= block.line && line <= block.end)
  let end = start + 1
  while (end <= lines.length && !(/^##? /.test(lines[end - 1]!) && !inCode(end))) end++
  return blocks.filter((block) => block.line > start && block.line < end)
}

t.test("the README's quick start is what CI runs: npm ci && npm start, then npm test", async (t) => {
  const sh = blocksUnder(readFileSync(path.join(ROOT, 'README.md'), 'utf8'), 'Quick start').filter((block) => block.lang === 'sh')
  t.same(sh.slice(0, 2).map((block) => block.code), ['npm ci && npm start\n', 'npm test\n'],
    'the first two sh blocks under "## Quick start", word for word')
  const commands = sh.slice(0, 2).flatMap((block) => block.code.trim().split(' && '))
  t.same(commands.filter((command) => command !== 'npm start'), npmCommandsOf(ciRun),
    'without the demo (npm start), they are .ci/run\'s npm commands, in order')
})

t.test("between npm ci and npm test, .ci/run installs Debian's postgresql where no server binaries are found", async (t) => {
  const commands = commandsOf(ciRun)
  t.equal(commands[0], 'npm ci')
  t.equal(commands.at(-1), 'npm test')
  const step = commands.slice(1, -1)
  const condition = /^if (.+); then$/.exec(step[0]!)?.[1]
  t.equal(condition, "! compgen -G '/usr/lib/postgresql/*/bin/initdb' > /dev/null && ! command -v initdb > /dev/null",
    "only when neither Debian's folders nor PATH have initdb")
  t.same(step.filter((line) => line.includes('apt-get')), ['$sudo apt-get update', '$sudo apt-get install -y --no-install-recommends postgresql'])
  t.equal(step.at(-1), 'fi')
  execFileSync('bash', ['-n', path.join(ROOT, '.ci/run')])
  // where the test fixture finds the binaries (here), the step does not install them again
  t.ok(findPostgresBin())
  t.equal(execFileSync('bash', ['-c', `set -euo pipefail; if ${condition}; then echo missing; else echo found; fi`], { encoding: 'utf8' }), 'found\n')
})

t.test('the fuzz job: weekly (and on demand), npm run fuzz with a random seed printed in the log', async (t) => {
  const cron = (workflow.on.schedule as Array<{ cron: string }>)[0]!.cron
  t.match(cron, /^\d+ \d+ \* \* [0-6]$/, 'once a week')
  const job = workflow.jobs.fuzz!
  t.match(job.if, /github\.event_name == 'schedule'/)
  t.match(workflow.jobs.test!.if, /github\.event_name != 'schedule'/, 'the weekly run is the fuzz alone')
  const runs = job.steps.map((step) => step.run).filter((run): run is string => run !== undefined)
  t.equal(runs[0], 'npm ci')
  const fuzz = commandsOf(runs[1]!)
  t.match(fuzz[0], /^seed=\$\(node -e .*randomInt/, 'the seed is chosen in the step')
  t.match(fuzz[1], /^echo "FUZZ_SEED=\$seed/, 'and printed before the run')
  t.equal(fuzz.at(-1), 'FUZZ_SEED=$seed npm run fuzz')
  t.match(pkg.scripts.fuzz, /FUZZ_SEED=\$\{FUZZ_SEED:-random\} /, 'npm run fuzz takes FUZZ_SEED from the environment (random without it)')
})
