import t, { type Test } from 'tap'
import { randomBytes, randomUUID } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import { Client, Pool, type PoolClient } from 'pg'
import supabaseJwks from '../lib/index'
import type { TestIssuer } from '../lib/testing'
import { issuerFor } from './fixtures/helpers'
import { startPostgres, type Postgres } from './fixtures/postgres'

/*
 * request.sql against a real PostgreSQL (started for this file, with Supabase's roles, auth.uid() and
 * auth.jwt(), and tables under RLS): who each statement runs as, what stays on a pooled connection
 * (nothing), what a hostile value or a statement that would leave the transaction gets, and the
 * bounds: the wait for a connection, the statement timeout, round trips per statement.
 */

const SECRET = `sb_secret_${randomBytes(24).toString('base64url')}`
const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

let pg: Postgres
let issuer: TestIssuer
t.before(async () => {
  pg = await startPostgres(t)
  issuer = await issuerFor(t)
})

interface Counted { pool: Pool, queries: string[] }

/** A pool as `authenticator` whose clients record the text of every query they send (the real query runs). */
function countedPool (t: Test, max = 1): Counted {
  const pool = new Pool({ connectionString: pg.authenticatorUrl, max })
  pool.on('error', () => {})
  const queries: string[] = []
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (...args: unknown[]) => unknown
    Object.assign(client, {
      query: (...args: unknown[]) => {
        const config = args[0]
        queries.push(typeof config === 'string' ? config : (config as { text: string }).text)
        return query(...args)
      }
    })
  })
  t.teardown(() => pool.end())
  return { pool, queries }
}

/** The app: routes that run SQL as their caller. */
async function appWith (t: Test, postgres: supabaseJwks.PostgresOptions): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, secretKeys: SECRET, postgres })
  const guarded = { preHandler: app.authenticate }
  app.get('/notes', guarded, (request) => request.sql`select body, auth.uid() as uid from notes order by id`)
  app.post('/notes', guarded, (request) => request.sql`insert into notes (body) values (${(request.body as { body: string }).body}) returning body, user_id`)
  app.get('/whoami', { ...guarded, config: { supabaseJwks: { auth: ['user', 'secret', 'none'] } } }, async (request) => {
    const [row] = await request.sql<{ who: { role: string, uid: string | null, claims: Record<string, unknown> } }>`select whoami() as who`
    return row!.who
  })
  app.get('/posts', { ...guarded, config: { supabaseJwks: { auth: ['user', 'none'] } } }, (request) => request.sql`select title from public_posts order by id`)
  app.get('/anon-notes', { ...guarded, config: { supabaseJwks: { auth: 'none' } } }, (request) => request.sql`select body from notes`)
  app.post('/raw', guarded, (request) => {
    const { text, params } = request.body as { text: string, params?: unknown[] }
    return request.sql.raw(text, params)
  })
  app.get('/sorted', guarded, (request) => {
    const column = request.sql.ident((request.query as { by: string }).by, ['body', 'id'])
    return request.sql`select body from notes order by ${column} desc`
  })
  app.post('/transaction', guarded, (request) => request.sql.transaction(async (sql) => {
    const { bodies, fail } = request.body as { bodies: string[], fail?: boolean }
    for (const body of bodies) await sql`insert into notes (body) values (${body})`
    if (fail === true) throw new Error('the handler changed its mind')
    return sql`select count(*)::int as n from notes`
  }))
  app.post('/foreign', guarded, (request) => request.sql.transaction(async (sql) => {
    await sql`insert into notes (body) values (${'mine'})`
    return sql`insert into notes (user_id, body) values (${randomUUID()}, ${'not mine'})`
  }))
  app.get('/unguarded', (request) => request.sql`select 1`)
  return app
}

/** The app on a counted pool of one connection, already open, and a caller's headers: queries counted from here. */
async function countingApp (t: Test) {
  const { pool, queries } = countedPool(t)
  const app = await appWith(t, { pool })
  await stateOf(pool)
  return { pool, queries, app, headers: bearer(issuer.sign({ sub: randomUUID() })) }
}

/** What a connection of the pool is, outside request.sql: its role and claims. */
async function stateOf (pool: Pool): Promise<{ role: string, claims: string | null, timeout: string }> {
  const { rows } = await pool.query("select current_user as role, nullif(current_setting('request.jwt.claims', true), '') as claims, current_setting('statement_timeout') as timeout")
  return rows[0]
}

t.test('each user reads and writes only their own rows; a value is never SQL', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool })
  const alice = randomUUID()
  const bob = randomUUID()
  const hostile = "x'); delete from notes; --"
  for (const [sub, body] of [[alice, 'alice 1'], [bob, 'bob 1'], [alice, hostile]] as const) {
    const res = await app.inject({ method: 'POST', url: '/notes', headers: bearer(issuer.sign({ sub })), payload: { body } })
    t.equal(res.statusCode, 200, `insert as ${sub}`)
    t.same(res.json(), [{ body, user_id: sub }], 'the row belongs to the caller (user_id defaults to auth.uid())')
  }
  const asAlice = await app.inject({ url: '/notes', headers: bearer(issuer.sign({ sub: alice })) })
  t.same(asAlice.json(), [{ body: 'alice 1', uid: alice }, { body: hostile, uid: alice }], 'alice: her two rows, the hostile value stored as text')
  const asBob = await app.inject({ url: '/notes', headers: bearer(issuer.sign({ sub: bob })) })
  t.same(asBob.json(), [{ body: 'bob 1', uid: bob }], 'bob: his row only')
  t.same(await stateOf(pool), { role: 'authenticator', claims: null, timeout: '0' }, 'the connection is the pool\'s own again: its role, no claims, no timeout')
})

t.test('two users interleaved on a pool of one connection each see only their rows', async (t) => {
  const { pool } = countedPool(t, 1)
  const app = await appWith(t, { pool })
  const users = [randomUUID(), randomUUID()]
  for (const sub of users) {
    await app.inject({ method: 'POST', url: '/notes', headers: bearer(issuer.sign({ sub })), payload: { body: `note of ${sub}` } })
  }
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => {
    const sub = users[i % 2]!
    return app.inject({ url: '/notes', headers: bearer(issuer.sign({ sub })) }).then((res) => ({ sub, rows: res.json() }))
  }))
  for (const { sub, rows } of answers) t.same(rows, [{ body: `note of ${sub}`, uid: sub }], `${sub.slice(0, 8)} sees their row only`)
  t.equal(pool.totalCount, 1, 'one connection served them all')
})

t.test('who a statement runs as: authenticated with the claims, anon with no user; other roles are refused', async (t) => {
  const { pool, queries } = countedPool(t)
  const app = await appWith(t, { pool })
  const sub = randomUUID()
  const quoted = 'it\'s a "quote" \\ and a backslash'
  const user = await app.inject({ url: '/whoami', headers: bearer(issuer.sign({ sub, note: quoted })) })
  t.equal(user.statusCode, 200)
  t.equal(user.json().role, 'authenticated')
  t.equal(user.json().uid, sub)
  t.equal(user.json().claims.note, quoted, 'the claims reach auth.jwt() whole, quotes and backslashes too')
  const anon = await app.inject({ url: '/whoami' })
  t.same(anon.json(), { role: 'anon', uid: null, claims: { role: 'anon' } }, 'no user: anon')
  t.same((await app.inject({ url: '/posts' })).json(), [{ title: 'Hello' }, { title: 'Row Level Security' }], 'anon reads what its policy admits')
  await app.inject({ method: 'POST', url: '/notes', headers: bearer(issuer.sign({ sub })), payload: { body: 'private' } })
  t.same((await app.inject({ url: '/anon-notes' })).json(), [], 'anon sees no note')

  const before = queries.length
  for (const [label, claims] of [['service_role', { role: 'service_role' }], ['a custom role', { role: 'admin' }], ['no role', { role: undefined }], ['an odd role', { role: 'x"; drop' }]] as const) {
    const res = await app.inject({ url: '/whoami', headers: bearer(issuer.sign({ sub, ...claims })) })
    t.equal(res.statusCode, 403, label)
    t.equal(res.json().code, 'FST_SUPABASE_JWKS_UNSUPPORTED_ROLE', label)
    t.notMatch(res.json().message, /drop/, 'a role that is not a plain name is not repeated')
  }
  const secret = await app.inject({ url: '/whoami', headers: { apikey: SECRET } })
  t.equal(secret.statusCode, 403, 'a secret-key caller has no user to act as')
  t.equal(secret.json().code, 'FST_SUPABASE_JWKS_UNSUPPORTED_ROLE')
  t.equal(queries.length, before, 'no refused caller reached the database')
  const unguarded = await app.inject({ url: '/unguarded', headers: bearer(issuer.sign({ sub })) })
  t.equal(unguarded.statusCode, 500)
  t.equal(unguarded.json().code, 'FST_SUPABASE_JWKS_USAGE', 'a route authenticate does not guard has no caller to act as')
})

t.test('one round trip per statement, always the extended protocol; a transaction() one more at each end', async (t) => {
  const { pool, queries, app, headers } = await countingApp(t)
  let before = queries.length
  t.equal((await app.inject({ url: '/posts', headers })).statusCode, 200)
  t.equal(queries.length - before, 1, 'a statement: one query of the client (one Sync): the setup, the statement')
  t.match(queries[queries.length - 1], /^SELECT current_user AS role, [^;]*set_config\('role', \$3, true\), set_config\('request.jwt.claims', \$4, true\);\nselect title from public_posts order by id$/,
    'the setup reads the connection as it was, then scopes it; all bind parameters')
  before = queries.length
  t.equal((await app.inject({ method: 'POST', url: '/transaction', headers, payload: { bodies: ['a', 'b'] } })).statusCode, 200)
  t.equal(queries.length - before, 5, 'transaction(): BEGIN with the setup, two inserts, the count, COMMIT')
  // with no parameter, pg would send the simple protocol, which runs every statement of the text
  for (const text of ['select 1; commit; select 2', 'select 1; set role postgres']) {
    const raw = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text } })
    t.equal(raw.statusCode, 500, text)
    t.equal(raw.json().code, '42601', 'PostgreSQL refuses several statements in one: the extended protocol')
  }
  const inside = await app.inject({ method: 'POST', url: '/transaction', headers, payload: { bodies: ["x'); commit; select ('"] } })
  t.same(inside.json(), [{ n: 3 }], 'a value is a value inside transaction() too')
  t.same(await stateOf(pool), { role: 'authenticator', claims: null, timeout: '0' })
})

t.test('SQL that would leave the transaction is refused before it runs, however it is written', async (t) => {
  const { pool, queries, app, headers } = await countingApp(t)
  const before = queries.length
  for (const text of ['commit', '  /* done */ COMMIT', '-- x\nrollback', '-- x\rrollback', '/* a /* nested */ comment */ commit', '/**/end',
    'set role postgres', 'reset role', 'begin', 'start transaction', 'savepoint a', 'discard all', 'abort']) {
    const res = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text } })
    t.equal(res.statusCode, 500, text)
    t.equal(res.json().code, 'FST_SUPABASE_JWKS_USAGE')
    t.match(res.json().message, /^request\.sql refuses [A-Z]+: it would end/, `${JSON.stringify(text)}: refused`)
  }
  t.equal(queries.length, before, 'none reached PostgreSQL')
  // what PostgreSQL reads past a comment is what the scan reads: an unterminated one is PostgreSQL's error
  const open = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text: '/* a /* nested */ commit' } })
  t.equal(open.json().code, '42601')
  // a session-level change no keyword gives away (set_config(..., false)) is found at the connection's next use
  const escaped = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text: "select set_config('request.jwt.claims', '{\"sub\":\"someone\"}', false)" } })
  t.equal(escaped.statusCode, 200, 'the statement ran')
  const leaked = (await pool.query('select pg_backend_pid() as pid')).rows[0].pid
  // found at the connection's next use by request.sql: that statement still runs as its own caller, then the connection goes
  const sub = randomUUID()
  const next = await app.inject({ method: 'POST', url: '/raw', headers: bearer(issuer.sign({ sub })), payload: { text: 'select auth.uid() as uid' } })
  t.same(next.json(), [{ uid: sub }], 'the next caller is itself, whatever the session was left with')
  t.not((await pool.query('select pg_backend_pid() as pid')).rows[0].pid, leaked, 'and the changed connection was destroyed')
  t.same(await stateOf(pool), { role: 'authenticator', claims: null, timeout: '0' })
})

t.test('a refusal inside transaction() leaves the transaction as it was: the next statement still runs as the caller', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool })
  const seen: string[] = []
  app.get('/swallowed', { preHandler: app.authenticate }, (request) => request.sql.transaction(async (sql) => {
    const [outcome] = await Promise.allSettled([sql.raw('/* a /* nested */ comment */ commit'), sql`select 1`])
    seen.push((outcome as PromiseRejectedResult).reason.message)
    const [row] = await sql<{ role: string }>`select current_user as role`
    return row!.role
  }))
  const res = await app.inject({ url: '/swallowed', headers: bearer(issuer.sign({ sub: randomUUID() })) })
  t.equal(res.statusCode, 200)
  t.equal(res.body, 'authenticated', 'still the caller\'s role, in the caller\'s transaction')
  t.match(seen[0], /refuses COMMIT/)
})

t.test('sql.raw() arguments, comments, and a transaction\'s sql kept past its end', async (t) => {
  const { pool, queries } = countedPool(t)
  const app = await appWith(t, { pool })
  let kept: supabaseJwks.SqlStatements | undefined
  app.get('/kept', { preHandler: app.authenticate }, async (request) => {
    await request.sql.transaction(async (sql) => { kept = sql })
    return kept!`select 1`
  })
  app.get('/odd', { preHandler: app.authenticate }, (request) => {
    const { kind } = request.query as { kind: string }
    if (kind === 'ident') return request.sql`select ${request.sql.ident('body', 'body' as unknown as string[])} from notes`
    return kind === 'text' ? request.sql.raw(42 as unknown as string) : request.sql.raw('select $1', 'x' as unknown as unknown[])
  })
  const headers = bearer(issuer.sign({ sub: randomUUID() }))
  const late = await app.inject({ url: '/kept', headers })
  t.equal(late.json().code, 'FST_SUPABASE_JWKS_USAGE')
  t.match(late.json().message, /after transaction\(\) ended/)
  const before = queries.length
  t.match((await app.inject({ url: '/odd?kind=text', headers })).json(), { code: 'FST_SUPABASE_JWKS_USAGE', message: /as a string/ })
  t.match((await app.inject({ url: '/odd?kind=params', headers })).json(), { code: 'FST_SUPABASE_JWKS_USAGE', message: /as an array/ })
  t.match((await app.inject({ url: '/odd?kind=ident', headers })).json(), { code: 'FST_SUPABASE_JWKS_USAGE', message: /takes an allowlist/ })
  t.equal(queries.length, before, 'nothing was sent')
  const comment = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text: '-- only a comment' } })
  t.equal(comment.statusCode, 200, 'a comment alone is no statement PostgreSQL refuses')
  const open = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text: '/* never closed commit' } })
  t.equal(open.json().code, '42601', 'an unterminated comment is PostgreSQL\'s syntax error')
})

t.test('a procedure or a DO block that commits is refused by PostgreSQL: nothing runs past the caller\'s role', async (t) => {
  const admin = new Pool({ connectionString: pg.superuserUrl, max: 1 })
  t.teardown(() => admin.end())
  await admin.query(`create table if not exists audit (who text);
    grant insert, select on audit to authenticated;
    create or replace procedure commit_midway() language plpgsql as $$
    begin insert into audit values (current_user); commit; insert into audit values (current_user); end $$;
    grant execute on procedure commit_midway() to authenticated`)
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool })
  const headers = bearer(issuer.sign({ sub: randomUUID() }))
  for (const text of ['call commit_midway()', 'do $$ begin insert into audit values (current_user); commit; insert into audit values (current_user); end $$']) {
    const res = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text } })
    t.equal(res.statusCode, 500, text)
    t.equal(res.json().code, '2D000', 'invalid transaction termination: the caller\'s transaction is a block')
  }
  t.same((await admin.query('select who from audit')).rows, [], 'nothing was written, as the caller or as anyone')
  t.same(await stateOf(pool), { role: 'authenticator', claims: null, timeout: '0' })
})

t.test('Supabase\'s older per-claim settings left on a connection do not speak for the caller', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool })
  const sub = randomUUID()
  const headers = bearer(issuer.sign({ sub }))
  t.equal((await app.inject({ method: 'POST', url: '/raw', headers, payload: { text: 'select 1' } })).statusCode, 200)
  // code of the app's own sets one for the session on the pool's only connection
  await pool.query("select set_config('request.jwt.claim.sub', $1, false)", [randomUUID()])
  const pid = (await pool.query('select pg_backend_pid() as pid')).rows[0].pid
  const res = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text: 'select auth.uid() as uid' } })
  t.same(res.json(), [{ uid: sub }], 'auth.uid() is the caller\'s')
  t.not((await pool.query('select pg_backend_pid() as pid')).rows[0].pid, pid, 'and the changed connection was destroyed')
})

t.test('identifiers only from an allowlist', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool })
  const headers = bearer(issuer.sign({ sub: randomUUID() }))
  await app.inject({ method: 'POST', url: '/notes', headers, payload: { body: 'a' } })
  await app.inject({ method: 'POST', url: '/notes', headers, payload: { body: 'b' } })
  t.same((await app.inject({ url: '/sorted?by=body', headers })).json(), [{ body: 'b' }, { body: 'a' }], 'an allowed column')
  for (const by of ['user_id', 'body desc; drop table notes', 'BODY', '"body"']) {
    const res = await app.inject({ url: `/sorted?by=${encodeURIComponent(by)}`, headers })
    t.equal(res.statusCode, 400, `${by}: not in the allowlist, the client's mistake`)
    t.equal(res.json().code, 'FST_SUPABASE_JWKS_IDENTIFIER_NOT_ALLOWED')
    t.notMatch(res.json().message, /drop|user_id/, 'the name is not repeated')
  }
})

t.test('transaction(): several statements in one, rolled back when the handler throws', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool })
  const headers = bearer(issuer.sign({ sub: randomUUID() }))
  const ok = await app.inject({ method: 'POST', url: '/transaction', headers, payload: { bodies: ['one', 'two'] } })
  t.same(ok.json(), [{ n: 2 }], 'both inserts seen inside')
  const pid = (await pool.query('select pg_backend_pid() as pid')).rows[0].pid
  const failed = await app.inject({ method: 'POST', url: '/transaction', headers, payload: { bodies: ['three'], fail: true } })
  t.equal(failed.statusCode, 500)
  t.equal(failed.json().message, 'the handler changed its mind', 'the handler\'s own error comes out')
  t.same((await app.inject({ url: '/notes', headers })).json().map((row: { body: string }) => row.body), ['one', 'two'], 'rolled back')
  t.equal((await pool.query('select pg_backend_pid() as pid')).rows[0].pid, pid, 'a clean rollback returns the connection')
  // a statement the policy refuses: PostgreSQL's error, with the hint, and nothing of the transaction kept
  const refused = await app.inject({ method: 'POST', url: '/foreign', headers })
  t.equal(refused.json().code, '42501')
  t.match(refused.json().message, /row-level security policy.*request\.sql ran as authenticated/)
  t.same((await app.inject({ url: '/notes', headers })).json().map((row: { body: string }) => row.body), ['one', 'two'], 'rolled back, the first insert too')
  t.same(await stateOf(pool), { role: 'authenticator', claims: null, timeout: '0' })
})

/** An app whose route's transaction has its connection ended by the superuser, then does `after`. */
async function appKillingItsConnection (t: Test, after: () => Promise<string>): Promise<{ app: FastifyInstance, pool: Pool }> {
  const { pool } = countedPool(t)
  const admin = new Pool({ connectionString: pg.superuserUrl, max: 1 })
  t.teardown(() => admin.end())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, postgres: { pool } })
  app.get('/killed', { preHandler: app.authenticate }, (request) => request.sql.transaction(async (sql) => {
    const [row] = await sql<{ pid: number }>`select pg_backend_pid() as pid`
    await admin.query('select pg_terminate_backend($1)', [row!.pid])
    return after()
  }))
  return { app, pool }
}

t.test('a connection whose ROLLBACK fails is destroyed', async (t) => {
  const { app, pool } = await appKillingItsConnection(t, () => Promise.reject(new Error('after the kill')))
  const res = await app.inject({ url: '/killed', headers: bearer(issuer.sign({ sub: randomUUID() })) })
  t.equal(res.statusCode, 500)
  t.equal(res.json().message, 'after the kill')
  t.equal(pool.totalCount, 0, 'the broken connection left the pool')
  t.same(await stateOf(pool), { role: 'authenticator', claims: null, timeout: '0' }, 'a new one serves')
})

t.test('a connection lost before COMMIT: 503, and it is not returned', async (t) => {
  // time for the connection to report its end while request.sql holds it: an 'error' event, heard
  const { app, pool } = await appKillingItsConnection(t, () => new Promise((resolve) => setTimeout(() => resolve('done'), 200)))
  const res = await app.inject({ url: '/killed', headers: bearer(issuer.sign({ sub: randomUUID() })) })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_SUPABASE_JWKS_DATABASE_UNAVAILABLE')
  t.equal(pool.totalCount, 0, 'the broken connection left the pool')
})

/** A statement and a transaction() on `pool`: both the app's mistake, 500 USAGE with `message`. */
async function usageOfBoth (t: Test, pool: Pool, message: RegExp): Promise<void> {
  const app = await appWith(t, { pool })
  const headers = bearer(issuer.sign({ sub: randomUUID() }))
  for (const res of [await app.inject({ url: '/posts', headers }), await app.inject({ method: 'POST', url: '/transaction', headers, payload: { bodies: ['x'] } })]) {
    t.equal(res.statusCode, 500)
    t.equal(res.json().code, 'FST_SUPABASE_JWKS_USAGE')
    t.match(res.json().message, message)
  }
}

t.test('a pool whose role cannot act as the caller is told what to grant', async (t) => {
  const admin = new Pool({ connectionString: pg.superuserUrl, max: 1 })
  t.teardown(() => admin.end())
  await admin.query('drop role if exists lonely; create role lonely login')
  const url = new URL(pg.superuserUrl)
  url.username = 'lonely'
  const pool = new Pool({ connectionString: url.href, max: 1 })
  t.teardown(() => pool.end())
  await usageOfBoth(t, pool, /cannot act as authenticated: grant it the roles/)
  t.same(await stateOf(pool), { role: 'lonely', claims: null, timeout: '0' }, 'rolled back: the connection is its own again')
})

t.test('a database without Supabase\'s roles: PostgreSQL says which is missing', async (t) => {
  const admin = new Pool({ connectionString: pg.superuserUrl, max: 1 })
  t.teardown(() => admin.end())
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool })
  await admin.query('alter role anon rename to anon_away')
  t.teardown(() => admin.query('alter role anon_away rename to anon'))
  const res = await app.inject({ url: '/posts' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, '22023')
  t.equal(res.json().message, 'role "anon" does not exist')
  t.equal(pool.idleCount, 1, 'rolled back and returned')
})

t.test('a pool whose client is not node-postgres\'s JavaScript one is the app\'s mistake, said plainly', async (t) => {
  // pg's own way to make a pool of another client class: one with no Query class, and one whose Query
  // never prepares its statements (pg-native's NativeQuery sends the text as it is)
  class NoQuery extends Client {}
  Object.defineProperty(NoQuery, 'Query', { value: undefined })
  class NativeLike extends Client {}
  Object.defineProperty(NativeLike, 'Query', { value: class NativeQuery {} })
  for (const OtherClient of [NoQuery, NativeLike]) {
    const pool = new Pool({ connectionString: pg.authenticatorUrl, max: 1, Client: OtherClient })
    t.teardown(() => pool.end())
    await usageOfBoth(t, pool, /need the pool of node-postgres/)
    t.equal(pool.idleCount, 1, 'the connection went back unused')
  }
})

t.test('request.sql is a tag: called as a function it runs nothing', async (t) => {
  const { pool, queries } = countedPool(t)
  const app = await appWith(t, { pool })
  app.get('/called', { preHandler: app.authenticate }, (request) => (request.sql as unknown as (text: string) => Promise<unknown>)('select 1'))
  const res = await app.inject({ url: '/called', headers: bearer(issuer.sign({ sub: randomUUID() })) })
  t.equal(res.json().code, 'FST_SUPABASE_JWKS_USAGE')
  t.match(res.json().message, /sql\.raw\(text, params\)/)
  t.equal(queries.length, 0)
})

t.test('the wait for a connection is bounded: 503 with Retry-After', async (t) => {
  const { pool } = countedPool(t, 1)
  const app = await appWith(t, { pool, connectionTimeout: 0.2, maxWaiting: 1 })
  const headers = bearer(issuer.sign({ sub: randomUUID() }))
  const held: PoolClient = await pool.connect()
  const [waited, refused] = await Promise.all([
    app.inject({ url: '/posts', headers }),
    new Promise((resolve) => setTimeout(resolve, 50)).then(() => app.inject({ url: '/posts', headers }))
  ])
  t.equal(waited.statusCode, 503, 'waited connectionTimeout')
  t.equal(waited.json().code, 'FST_SUPABASE_JWKS_DATABASE_UNAVAILABLE')
  t.equal(waited.headers['retry-after'], '1')
  t.equal(refused.statusCode, 503, 'the wait list was full: at once')
  t.match(refused.json().message, /already wait/)
  held.release()
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.equal(pool.idleCount, 1, 'the connection that came too late went back to the pool')
  t.equal((await app.inject({ url: '/posts', headers })).statusCode, 200)
})

t.test('statement_timeout is transaction-local; a statement past it gets 503', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool, statementTimeout: 0.2 })
  const headers = bearer(issuer.sign({ sub: randomUUID() }))
  const slow = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text: 'select pg_sleep(5)' } })
  t.equal(slow.statusCode, 503)
  t.equal(slow.json().code, 'FST_SUPABASE_JWKS_DATABASE_UNAVAILABLE')
  const fast = await app.inject({ method: 'POST', url: '/raw', headers, payload: { text: "select current_setting('statement_timeout') as timeout" } })
  t.same(fast.json(), [{ timeout: '200ms' }], 'set inside')
  t.same(await stateOf(pool), { role: 'authenticator', claims: null, timeout: '0' }, 'and gone after')
})

t.test('a permission error carries a hint about grants', async (t) => {
  const admin = new Pool({ connectionString: pg.superuserUrl, max: 1 })
  t.teardown(() => admin.end())
  await admin.query('create table if not exists ungranted (id int)')
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool })
  const res = await app.inject({ method: 'POST', url: '/raw', headers: bearer(issuer.sign({ sub: randomUUID() })), payload: { text: 'select * from ungranted' } })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, '42501')
  t.match(res.json().message, /permission denied for table ungranted \(request\.sql ran as authenticated: grant it/)
})

t.test('PostgreSQL stopped: 503; started again: answers', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool, connectionTimeout: 2 })
  const headers = bearer(issuer.sign({ sub: randomUUID() }))
  t.equal((await app.inject({ url: '/posts', headers })).statusCode, 200)
  await pg.stop()
  const down = await app.inject({ url: '/posts', headers })
  t.equal(down.statusCode, 503)
  t.equal(down.json().code, 'FST_SUPABASE_JWKS_DATABASE_UNAVAILABLE')
  t.equal(down.headers['retry-after'], '1')
  const again = await app.inject({ url: '/posts', headers })
  t.equal(again.statusCode, 503, 'still down')
  await pg.start()
  t.equal((await app.inject({ url: '/posts', headers })).statusCode, 200)
})

t.test('connectionString: a pool of the plugin\'s own, ended on close, its string never logged', async (t) => {
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'trace', stream: { write: (line: string) => lines.push(line) } } })
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, postgres: { connectionString: pg.authenticatorUrl, max: 2 } })
  app.get('/posts', { preHandler: app.authenticate }, (request) => request.sql`select title from public_posts order by id`)
  const res = await app.inject({ url: '/posts', headers: bearer(issuer.sign({ sub: randomUUID() })) })
  t.same(res.json(), [{ title: 'Hello' }, { title: 'Row Level Security' }])
  const admin = new Pool({ connectionString: pg.superuserUrl, max: 1 })
  t.teardown(() => admin.end())
  const open = async () => (await admin.query("select count(*)::int as n from pg_stat_activity where usename = 'authenticator'")).rows[0].n
  t.equal(await open(), 1, 'one connection open')
  await app.close()
  // a backend leaves pg_stat_activity a moment after its client hung up
  for (let i = 0; i < 50 && await open() > 0; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal(await open(), 0, 'closed with the app')
  const password = new URL(pg.authenticatorUrl).password
  t.ok(password.length > 0)
  t.notOk(lines.some((line) => line.includes(password)), 'no log line holds the password')
})

t.test('the option postgres is checked at registration', async (t) => {
  const { pool } = countedPool(t)
  for (const [postgres, message] of [
    [{}, /exactly one of pool/],
    [{ pool, connectionString: 'postgres://x' }, /exactly one of pool/],
    [{ pool: {} }, /must be a pg Pool/],
    [{ connectionString: '' }, /non-empty string/],
    [{ pool, max: 3 }, /size your pool where you make it/],
    [{ pool, connectionTimeout: 5000 }, /were milliseconds meant/],
    [{ pool, poolSize: 3 }, /unknown option postgres.poolSize/],
    [{ pool, maxWaiting: 0 }, /postgres.maxWaiting must be an integer from 1/],
    ['postgres://x', /must be an object/]
  ] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(supabaseJwks, { supabaseUrl: issuer.url, postgres: postgres as never })
    await t.rejects(async () => { await app.ready() }, { code: 'FST_SUPABASE_JWKS_OPTION', message }, JSON.stringify(postgres, (key, value) => key === 'pool' ? 'pool' : value))
  }
})
