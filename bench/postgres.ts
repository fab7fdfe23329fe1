/*
 * The bench's PostgreSQL: test/fixtures/postgres.ts's throwaway server (Supabase's roles, auth.uid(),
 * notes and public_posts under RLS), in a process of its own that bench/run.mjs forks with tap's
 * TypeScript loader when a sql-* variant runs. The parent pins this process to the servers' cores and
 * then sends 'start': the server (runuser, the postmaster, every backend) inherits the pinning. Seeds
 * the notes of the realistic query, answers 'stats' with the server's CPU time (all its processes, the
 * ended ones too), and stops the server on 'stop', on SIGINT/SIGTERM, or when the parent goes away.
 */
import { readFileSync, readdirSync } from 'node:fs'
import path from 'node:path'
import pg from 'pg'
import { startPostgres, type Postgres } from '../test/fixtures/postgres'

/** The seeded users: each owns NOTES_PER_USER notes, spread over the table (inserted round-robin). */
const USERS = 500
const NOTES_PER_USER = 20

/*
 * An index on notes.user_id (the policy's column), and USERS x NOTES_PER_USER notes. The unscoped
 * variants query as `authenticator` itself, which Supabase grants nothing: here it may read both
 * tables (a policy `using (true)`: the unscoped query filters by itself, as an app without RLS does).
 */
const SEED = `
create index notes_user_id on public.notes (user_id);
insert into public.notes (user_id, body)
  select ('00000000-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid, 'note ' || n || ' of user ' || u
  from generate_series(1, ${NOTES_PER_USER}) n, generate_series(0, ${USERS - 1}) u
  order by n, u;
grant select on public.notes, public.public_posts to authenticator;
create policy notes_bench_unscoped on public.notes for select to authenticator using (true);
create policy public_posts_bench_unscoped on public.public_posts for select to authenticator using (true);
analyze;
`

const teardowns: Array<() => unknown> = []
let stopping: Promise<void> | undefined

function stop (): Promise<void> {
  stopping ??= (async () => {
    for (const teardown of teardowns.reverse()) await teardown()
  })().finally(() => process.exit())
  return stopping
}

async function seed (url: string): Promise<string[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    await client.query(SEED)
    const { rows } = await client.query<{ user_id: string }>('select distinct user_id from public.notes order by user_id')
    return rows.map((row) => row.user_id)
  } finally {
    await client.end()
  }
}

/** Clock ticks per second of /proc's CPU times (Linux: 100 on every architecture it runs on now). */
const TICKS = 100

/** The CPU time of the server in µs: the postmaster's own and its ended children's, and every live child's. */
function cpuMicros (server: Postgres): number {
  const postmaster = Number(readFileSync(path.join(server.socketDir, 'data', 'postmaster.pid'), 'utf8').split('\n')[0])
  let ticks = 0
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8')
    } catch {
      continue // ended while listed
    }
    // fields after the command name (which may hold spaces), from field 3: state, ppid, ... utime (14), stime, cutime, cstime
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const pid = Number(name)
    if (pid === postmaster) ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])
    else if (Number(fields[1]) === postmaster) ticks += Number(fields[11]) + Number(fields[12])
  }
  return ticks * 1e6 / TICKS
}

async function main (): Promise<void> {
  const server = await startPostgres({ teardown: (fn) => { teardowns.push(fn) } })
  const users = await seed(server.superuserUrl)
  process.on('message', (message: { type: string }) => {
    if (message.type === 'stats') process.send!({ type: 'stats', cpuMicros: cpuMicros(server) })
    else if (message.type === 'stop') stop()
  })
  process.send!({ type: 'ready', superuserUrl: server.superuserUrl, authenticatorUrl: server.authenticatorUrl, users })
}

process.once('disconnect', () => { stop() })
process.once('SIGINT', () => { stop() })
process.once('SIGTERM', () => { stop() })
process.once('message', (message: { type: string }) => {
  if (message.type !== 'start') return
  main().catch(async (err) => {
    console.error(err)
    process.exitCode = 1
    await stop()
  })
})
