/*
 * The option `sessions`' one query (SESSIONS_QUERY) for 1,000, 10,000 and 100,000 sessions in use, on
 * test/fixtures/postgres.ts's throwaway PostgreSQL: `npm run bench:sessions` (alone), and at the end of
 * an unfiltered `npm run bench`. Run with tap's TypeScript loader, as bench/postgres.ts is.
 *
 * The database holds 100,000 users (Supabase Auth's auth.users) with one session each (auth.sessions),
 * ids random (gen_random_uuid, as Auth's are: the index lookups land anywhere). Of every 1,000 users,
 * 3 have signed out (their session deleted), 2 are banned, 1 is deleted (deleted_at) and 1 session is
 * past its not_after; one more had a ban lifted and one has a not_after still ahead (neither ended).
 * The check reads as the role of docs/sessions.md's grants (that guide's SQL, run as is), on a `pg`
 * Pool, as the plugin does. The sessions checked are the first 1,000, 10,000 or all 100,000 of the
 * list: the tables always hold 100,000, as a project's do when one instance sees a part of them.
 *
 * Each round times, for each size (interleaved, every other round reversed):
 * - the check as the plugin runs it (lib/sessions.ts, SessionChecker's #query): a connection from
 *   readEnded as SessionChecker calls it: a connection, the two array literals, the bounds and the query, the rows
 *   read into a Map: its wall time, this process's CPU time for it (process.cpuUsage), and the CPU
 *   time of the PostgreSQL backend that ran it (/proc: in clock ticks of 10 ms, so its mean over the
 *   rounds is reported): that includes parsing the two array literals, which EXPLAIN does not count,
 *   and which a query that only parses them (PARSE_ONLY) measures apart, the same way;
 * - PostgreSQL's own time for the same query and values: EXPLAIN (ANALYZE, FORMAT JSON)'s
 *   "Execution Time" (and "Planning Time").
 * The median and the spread (min to max) over the rounds are reported. Every check must return the
 * sessions that ended, and only them, with their reasons, or the run stops: a query that answered
 * wrong would measure nothing.
 *
 * On Linux this process runs on core 0 and PostgreSQL (the postmaster and every backend) on the other
 * cores, as bench/run.mjs pins its load generator and servers (BENCH_PIN=0: unpinned). The machine
 * check (run.mjs's: a fixed hash loop, 7 times, on the servers' cores) is timed before and after.
 * The machine is shared and noisy: compare the sizes within one run, not absolute figures.
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { SESSIONS_QUERY, readEnded } from '../lib/sessions'
import type { SqlPool } from '../lib/acting-options'
import { startPostgres } from '../test/fixtures/postgres'

const quick = process.argv.includes('--quick')
/** Rounds measured (after one not measured): a check of 100,000 sessions takes a fraction of a second. */
const ROUNDS = Number(process.env.BENCH_SESSIONS_ROUNDS ?? (quick ? 3 : 11))
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error(`BENCH_SESSIONS_ROUNDS=${process.env.BENCH_SESSIONS_ROUNDS} is not a whole number of rounds: set it to 1 or more, or unset it`)
const SIZES = [1_000, 10_000, 100_000]
const USERS = SIZES.at(-1)!
/** Of every 1,000 users in a row, what ended (n % 1000 is the user's place): 7 of each 1,000. */
const ENDED_PER_1000 = { 'signed out': 3, 'user banned': 2, 'user deleted': 1, 'past not_after': 1 }
/** The two literals parsed as the check's query parses them, and nothing else: their share of its CPU. */
const PARSE_ONLY = 'select cardinality($1::uuid[]) + cardinality($2::uuid[]) as count'
/** The timeout the check gets a connection within (the option's default, 5 s): never reached here. */
const CHECK_TIMEOUT_MS = 30_000

/*
 * The users and their sessions, in two INSERT ... SELECT from a list of (n, session id, user id) kept
 * beside them (public.bench_sessions: the sessions the bench checks, in order). n % 1000: 0-2 signed
 * out (their rows deleted below), 3-4 banned for a day, 5 deleted, 6 past not_after, 7 a ban lifted
 * yesterday, 8 a not_after an hour ahead.
 */
const SEED = `
create table public.bench_sessions as
  select n, gen_random_uuid() as session_id, gen_random_uuid() as user_id from generate_series(1, ${USERS}) n;
insert into auth.users (id, email, encrypted_password, banned_until, deleted_at)
  select user_id, 'user-' || n || '@example.com', 'not a hash',
    case when n % 1000 in (3, 4) then now() + interval '1 day' when n % 1000 = 7 then now() - interval '1 day' end,
    case when n % 1000 = 5 then now() end
  from public.bench_sessions order by n;
insert into auth.sessions (id, user_id, aal, not_after)
  select session_id, user_id, 'aal1',
    case when n % 1000 = 6 then now() - interval '1 hour' when n % 1000 = 8 then now() + interval '1 hour' end
  from public.bench_sessions order by n;
delete from auth.sessions where id in (select session_id from public.bench_sessions where n % 1000 < 3);
`

/** A session in use, as the plugin holds it (lib/sessions.ts's Session: its id and its token's sub). */
interface InUse { id: string, userId: string }

/*
 * Every core of the machine, not this process's share: forked by bench/run.mjs, this process starts
 * pinned to its core 0 (where availableParallelism() would count 1), and widens its own affinity.
 */
const CORES = cpus().length
const PIN = process.env.BENCH_PIN !== '0' && process.platform === 'linux' && CORES >= 2
const SERVER_CORES = CORES === 2 ? '1' : `1-${CORES - 1}`

/** Sets the CPU affinity of this process (every thread of it): what it starts later inherits it. */
function pinTo (cores: string): void {
  execFileSync('taskset', ['-a', '-cp', cores, String(process.pid)], { stdio: 'ignore' })
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

interface Spread { medianMs: number, minMs: number, maxMs: number }
const spreadOf = (values: number[]): Spread => ({ medianMs: +median(values).toFixed(2), minMs: +Math.min(...values).toFixed(2), maxMs: +Math.max(...values).toFixed(2) })

/** The machine check (bench/machine.mjs), on the servers' cores: an ES module, loaded as this CommonJS file can. */
async function probeMachine (): Promise<Spread> {
  const { probeMachine: machineCheck } = await import('./machine.mjs')
  return machineCheck(PIN ? SERVER_CORES : undefined)
}

/** The check as SessionChecker runs it (readEnded: a connection, the two literals, its bounds and the query in one round trip, the rows by id). */
function check (pool: SqlPool, batch: readonly InUse[]): Promise<Map<string, string>> {
  return readEnded(pool, batch, CHECK_TIMEOUT_MS)
}

interface Plan { 'Node Type': string, 'Join Type'?: string, 'Relation Name'?: string, Plans?: Plan[] }
interface Explained { Plan: Plan, 'Planning Time': number, 'Execution Time': number }

/** The two literals of `batch`, as the check builds them. */
function literals (batch: readonly InUse[]): [string, string] {
  return [`{${batch.map((session) => session.id).join(',')}}`, `{${batch.map((session) => session.userId).join(',')}}`]
}

/** The CPU ticks of `backend` for parsing the literals of `batch` alone (checked: every element counted). */
async function parseTicks (pool: pg.Pool, backend: number, batch: readonly InUse[]): Promise<number> {
  const values = literals(batch)
  const ticks = cpuTicks(backend)
  const { rows } = await pool.query<{ count: number }>({ text: PARSE_ONLY, values })
  const spent = cpuTicks(backend) - ticks
  if (rows[0]?.count !== 2 * batch.length) throw new Error(`the literals of ${batch.length} sessions parsed to ${rows[0]?.count} elements, not ${2 * batch.length}`)
  return spent
}

/** PostgreSQL's own account of the same query with the same values. */
async function explain (pool: pg.Pool, batch: readonly InUse[]): Promise<Explained> {
  const { rows } = await pool.query<{ 'QUERY PLAN': Explained[] }>({ text: `explain (analyze, format json) ${SESSIONS_QUERY}`, values: literals(batch) })
  return rows[0]!['QUERY PLAN'][0]!
}

/** The plan's nodes, depth first: `Hash Join (Left) > [Function Scan, Hash > Seq Scan on sessions]`. */
function shapeOf (plan: Plan): string {
  const join = plan['Join Type'] === undefined ? '' : ` (${plan['Join Type']})`
  const name = `${plan['Node Type']}${join}${plan['Relation Name'] === undefined ? '' : ` on ${plan['Relation Name']}`}`
  const children = plan.Plans ?? []
  if (children.length === 0) return name
  return `${name} > ${children.length === 1 ? shapeOf(children[0]!) : `[${children.map(shapeOf).join(', ')}]`}`
}

/** Throws unless `ended` is exactly the sessions of `batch` that ended, each for its reason. */
function expectEnded (ended: Map<string, string>, batch: readonly InUse[], reasons: ReadonlyMap<string, string>): void {
  const expected = batch.filter((session) => reasons.has(session.id))
  const wrong = expected.filter((session) => ended.get(session.id) !== reasons.get(session.id))
  if (wrong.length > 0 || ended.size !== expected.length) {
    throw new Error(`the check of ${batch.length} sessions returned ${ended.size} ended sessions, ${expected.length} expected (${wrong.length} missing or with another reason)`)
  }
}

/** Why each ended session of the list ended, from its place in it (see SEED). */
function reasonsOf (list: ReadonlyArray<InUse & { n: number }>): Map<string, string> {
  const reasons = new Map<string, string>()
  for (const { id, n } of list) {
    const place = n % 1000
    const reason = place < 3 ? 'signed out' : place < 5 ? 'user banned' : place === 5 ? 'user deleted' : place === 6 ? 'past not_after' : undefined
    if (reason !== undefined) reasons.set(id, reason)
  }
  return reasons
}

const teardowns: Array<() => unknown> = []
let stopping: Promise<void> | undefined

/** Stops PostgreSQL (and ends the pools) once; exits with `code`. */
function stop (code: number): Promise<void> {
  stopping ??= (async () => {
    for (const teardown of teardowns.reverse()) {
      try {
        await teardown()
      } catch (err) {
        console.error(err)
        code = 1
      }
    }
  })().finally(() => process.exit(code))
  return stopping
}

async function seed (superuserUrl: string): Promise<Array<InUse & { n: number }>> {
  const admin = new pg.Client({ connectionString: superuserUrl })
  await admin.connect()
  try {
    await admin.query(SEED)
    await admin.query('vacuum analyze auth.users, auth.sessions')
    // the guide's own SQL makes the role the check reads with (as test/sessions.test.ts runs it)
    const guide = readFileSync(path.join(__dirname, '..', 'docs', 'sessions.md'), 'utf8')
    const grants = /```sql\n([\s\S]*?)```/.exec(guide)?.[1]
    if (grants === undefined) throw new Error('docs/sessions.md has no ```sql block of grants')
    await admin.query(grants)
    const { rows } = await admin.query<{ n: number, id: string, user_id: string }>('select n, session_id::text as id, user_id::text from public.bench_sessions order by n')
    return rows.map((row) => ({ n: row.n, id: row.id, userId: row.user_id }))
  } finally {
    await admin.end()
  }
}

/** The role and password of the guide's `create role` line. */
function guideRole (): { role: string, password: string } {
  const guide = readFileSync(path.join(__dirname, '..', 'docs', 'sessions.md'), 'utf8')
  const match = /create role (\w+) login password '([^']+)'/.exec(guide)
  if (match === null) throw new Error('docs/sessions.md has no `create role ... login password` line')
  return { role: match[1]!, password: match[2]! }
}

interface Sample { wallMs: number[], cpuMs: number[], backendTicks: number, parseTicks: number, executionMs: number[], planningMs: number[] }

/** Clock ticks per second of /proc's CPU times (Linux: 100 on every architecture it runs on now). */
const TICKS = 100

/** The CPU time (user + system) of process `pid` so far, in clock ticks (NaN without Linux's /proc). */
function cpuTicks (pid: number): number {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return NaN
  }
  // the fields after the command name (which may hold spaces), from field 3: utime is 14, stime 15
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return Number(fields[11]) + Number(fields[12])
}

async function main (): Promise<void> {
  const before = await probeMachine()
  console.log(`sessions: machine check: a fixed hash loop took ${before.minMs} to ${before.maxMs} ms (median ${before.medianMs})`)
  // PostgreSQL started from the servers' cores inherits them; then this process goes to core 0
  if (PIN) pinTo(SERVER_CORES)
  const server = await startPostgres({ teardown: (fn) => { teardowns.push(fn) } })
  if (PIN) pinTo('0')
  console.log(`sessions: seeding ${USERS} users with a session each...`)
  const list = await seed(server.superuserUrl)
  const reasons = reasonsOf(list)
  const { role, password } = guideRole()
  const pool = new pg.Pool({ connectionString: `postgres://${role}:${password}@127.0.0.1:${server.port}/postgres`, max: 1 })
  pool.on('error', () => {})
  teardowns.push(() => pool.end())
  const { rows: [who] } = await pool.query<{ user: string, pid: number }>('select current_user as user, pg_backend_pid() as pid')
  if (who?.user !== role) throw new Error(`the check reads as ${who?.user}, not as the guide's role ${role}`)
  // the pool's one connection: every check runs on this backend (a failed one stops the run)
  const backend = who.pid

  const batches = new Map(SIZES.map((size) => [size, list.slice(0, size)]))
  const samples = new Map<number, Sample>(SIZES.map((size) => [size, { wallMs: [], cpuMs: [], backendTicks: 0, parseTicks: 0, executionMs: [], planningMs: [] }]))
  const shapes = new Map<number, string>()
  // round 0 is not measured: the connection, the plans and the pages it reads warmed up
  for (let round = 0; round <= ROUNDS; round++) {
    for (const size of round % 2 === 1 ? SIZES : [...SIZES].reverse()) {
      const batch = batches.get(size)!
      const ticks = cpuTicks(backend)
      const cpu = process.cpuUsage()
      const start = process.hrtime.bigint()
      const ended = await check(pool, batch)
      const wallMs = Number(process.hrtime.bigint() - start) / 1e6
      const { user, system } = process.cpuUsage(cpu)
      const backendTicks = cpuTicks(backend) - ticks
      expectEnded(ended, batch, reasons)
      const explained = await explain(pool, batch)
      const parsing = await parseTicks(pool, backend, batch)
      shapes.set(size, shapeOf(explained.Plan))
      if (round === 0) continue
      const sample = samples.get(size)!
      sample.wallMs.push(wallMs)
      sample.cpuMs.push((user + system) / 1000)
      sample.backendTicks += backendTicks
      sample.parseTicks += parsing
      sample.executionMs.push(explained['Execution Time'])
      sample.planningMs.push(explained['Planning Time'])
      console.log(`sessions: round ${round}, ${size} sessions: ${wallMs.toFixed(1)} ms (Node CPU ${((user + system) / 1000).toFixed(1)} ms, backend CPU ${backendTicks * 1000 / TICKS} ms), PostgreSQL ${explained['Execution Time'].toFixed(1)} ms, ${ended.size} ended`)
    }
  }
  const after = await probeMachine()

  const rows = SIZES.map((size) => {
    const sample = samples.get(size)!
    return {
      sessions: size,
      ended: Object.values(ENDED_PER_1000).reduce((sum, count) => sum + count, 0) * size / 1000,
      parameterBytes: 2 * (size * 37 + 1),
      wall: spreadOf(sample.wallMs),
      nodeCpu: spreadOf(sample.cpuMs),
      backendCpuMeanMs: +(sample.backendTicks * 1000 / TICKS / ROUNDS).toFixed(1),
      parseCpuMeanMs: +(sample.parseTicks * 1000 / TICKS / ROUNDS).toFixed(1),
      execution: spreadOf(sample.executionMs),
      planning: spreadOf(sample.planningMs),
      plan: shapes.get(size)
    }
  })
  const first = rows[0]!
  const range = (spread: Spread): string => `${spread.medianMs} (${spread.minMs} to ${spread.maxMs})`
  const times = (spread: Spread, base: Spread): string => (spread.medianMs / base.medianMs).toFixed(1)
  console.log(`\nsessions: machine check: ${before.minMs} to ${before.maxMs} ms (median ${before.medianMs}) before, ${after.minMs} to ${after.maxMs} ms (median ${after.medianMs}) after`)
  console.log(`${ROUNDS} round(s), node ${process.version}, ${PIN ? `this process on core 0, PostgreSQL on cores ${SERVER_CORES}` : 'unpinned'}, the fixture's PostgreSQL (shared_buffers 16MB)\n`)
  console.log('| sessions | ended | check wall ms | x 1,000\'s | PostgreSQL execution ms | x 1,000\'s | planning ms | Node CPU ms | PostgreSQL backend CPU ms (mean) | the literals parsed alone, backend CPU ms (mean) |')
  console.log('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const row of rows) {
    console.log(`| ${row.sessions} | ${row.ended} | ${range(row.wall)} | ${times(row.wall, first.wall)} | ${range(row.execution)} | ${times(row.execution, first.execution)} | ${range(row.planning)} | ${range(row.nodeCpu)} | ${row.backendCpuMeanMs} | ${row.parseCpuMeanMs} |`)
  }
  for (const row of rows) console.log(`plan for ${row.sessions}: ${row.plan}`)

  mkdirSync(path.join(__dirname, 'results'), { recursive: true })
  const file = path.join(__dirname, 'results', quick ? 'sessions-quick.json' : 'sessions.json')
  writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), node: process.version, pinned: PIN && { client: '0', postgres: SERVER_CORES }, quick, rounds: ROUNDS, endedPer1000: ENDED_PER_1000, machineCheck: { before, after }, rows }, null, 2) + '\n')
  console.log(`\nwritten to ${file}`)
}

process.once('SIGINT', () => { stop(130) })
process.once('SIGTERM', () => { stop(143) })
// forked by bench/run.mjs: stops when it goes away
if (process.send !== undefined) process.once('disconnect', () => { stop(1) })
main().then(() => stop(0), (err) => {
  // stopped meanwhile (a signal): the pool ended under the run, which says nothing more
  if (stopping === undefined) console.error(err)
  return stop(1)
})
