import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { randomUUID } from 'node:crypto'
import { createServer, type Socket } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import { Pool } from 'pg'
import supabaseJwks from '../lib/index'
import { fastifyJwtOptions } from '../lib/jwt'
import { SESSIONS_QUERY } from '../lib/sessions'
import { createClient, type SupabaseClient } from '@supabase/supabase-js'
import WebSocket from 'ws'
import { createTestIssuer, type TestIssuer } from '../lib/testing'
import { issuerFor } from './fixtures/helpers'
import { startPostgres, type Postgres } from './fixtures/postgres'

/*
 * The option `sessions` against a real PostgreSQL holding Supabase Auth's auth.users and auth.sessions:
 * a sign-out (the session's row deleted), a deleted or banned user reach every instance within `every`,
 * an instance that never saw a session reads it before it accepts an old token, one query reads every
 * session due, and a database that cannot answer gets the failure policy, never a 500 or a hang.
 */

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const ROLE = 'supabase_jwks_sessions'

let pg: Postgres
let issuer: TestIssuer
let admin: Pool
let sessionsUrl: string
t.before(async () => {
  pg = await startPostgres(t)
  issuer = await issuerFor(t)
  admin = new Pool({ connectionString: pg.superuserUrl, max: 2 })
  admin.on('error', () => {})
  // the guide's own SQL makes the role the check reads with
  const guide = readFileSync(new URL('../docs/sessions.md', `file://${__filename}`), 'utf8')
  const grants = /```sql\n([\s\S]*?)```/.exec(guide)![1]!
  await admin.query(grants)
  const password = /password '([^']+)'/.exec(grants)![1]!
  sessionsUrl = `postgres://${ROLE}:${password}@127.0.0.1:${pg.port}/postgres`
})
t.teardown(() => admin.end())

/** A user of auth.users, and a session of it in auth.sessions (as Supabase Auth writes them). */
async function newUser (): Promise<string> {
  const id = randomUUID()
  await admin.query('insert into auth.users (id, email, encrypted_password) values ($1, $2, $3)', [id, `${id}@example.com`, 'not a hash'])
  return id
}
async function newSession (userId: string): Promise<string> {
  const id = randomUUID()
  await admin.query('insert into auth.sessions (id, user_id, aal) values ($1, $2, \'aal1\')', [id, userId])
  return id
}

/** A token of a session, issued `age` seconds ago (0: now, rounded up: `iat` counts whole seconds). */
function tokenOf (sub: string, session: string, age = 0, claims: Record<string, unknown> = {}): string {
  const iat = age === 0 ? Math.ceil(Date.now() / 1000) : Math.floor(Date.now() / 1000) - age
  return issuer.sign({ sub, session_id: session, iat, ...claims })
}

interface Counted { pool: Pool, queries: string[], peak: () => number }

/**
 * A pool as the sessions role whose clients record every query (the real query runs), and the most
 * connections checked out at once when one starts: a check holds its connection for its query only.
 */
function countedPool (t: Test, connectionString = sessionsUrl): Counted {
  const pool = new Pool({ connectionString, max: 4 })
  pool.on('error', () => {})
  const queries: string[] = []
  let peak = 0
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (...args: unknown[]) => unknown
    Object.assign(client, {
      query: (...args: unknown[]) => {
        queries.push((args[0] as { text: string }).text)
        peak = Math.max(peak, pool.totalCount - pool.idleCount)
        return query(...args)
      }
    })
  })
  t.teardown(() => pool.end())
  return { pool, queries, peak: () => peak }
}

async function appWith (t: Test, sessions: supabaseJwks.SessionsOptions, more: Partial<supabaseJwks.SupabaseJwksOptions> = {}): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, sessions, ...more })
  app.get('/me', { preHandler: app.authenticate }, async (request) => ({ sub: request.user.sub, session: request.user.session_id }))
  await app.ready()
  return app
}

const statsOf = (app: FastifyInstance) => app.supabaseJwks.stats().sessions!

/** Waits (at most 10 s, polling) until `done()`: for a check to come round, never a fixed sleep. */
async function until (done: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (await done()) return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`timed out waiting for ${what}`)
}

/** Waits for a check that started after now: what the database holds now is then read. */
async function nextCheck (app: FastifyInstance): Promise<void> {
  const since = Date.now()
  await until(() => statsOf(app).lastCheckAt > since + 5, 'the next check')
}

async function get (app: FastifyInstance, token: string) {
  const response = await app.inject({ url: '/me', headers: bearer(token) })
  return { status: response.statusCode, code: response.json().code as string | undefined, message: response.json().message as string, headers: response.headers, body: response.json() }
}

t.test('a sign-out reaches every instance, the one that never saw the session too', async (t) => {
  const { pool, queries } = countedPool(t)
  const a = await appWith(t, { pool, every: 0.2 })
  const b = await appWith(t, { connectionString: sessionsUrl, every: 0.2 })
  const user = await newUser()
  const session = await newSession(user)
  const other = await newSession(user)
  const token = tokenOf(user, session)

  // issued just now: its session stood then, accepted at once, no query
  t.same((await get(a, token)).body, { sub: user, session })
  t.equal(queries.length, 0, 'a recent token costs no query')
  await until(() => statsOf(a).checks > 0, 'the first check')
  // verified a second time, the token is admitted to the token cache: the third is a hit
  t.equal((await get(a, token)).status, 200)
  t.equal((await get(a, token)).status, 200, 'a token-cache hit, its session read')
  const hits = a.supabaseJwks.stats().tokenCacheHits
  t.ok(hits > 0)

  // signed out on this device (Supabase Auth deletes the session's row)
  await admin.query('delete from auth.sessions where id = $1', [session])
  await nextCheck(a)
  const refused = await get(a, token)
  t.equal(refused.status, 401)
  t.equal(refused.code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.match(refused.message, /the session ended \(signed out\)/)
  t.ok(a.supabaseJwks.stats().tokenCacheHits > hits, 'refused on a token-cache hit')
  t.equal(refused.headers['www-authenticate'], 'Bearer realm="api", error="invalid_token", error_description="The token has been revoked"')
  t.equal((await get(a, tokenOf(user, other))).status, 200, 'the user\'s other session stands')

  // B never saw the session: an old token of it waits for one check, which reads it ended
  const old = tokenOf(user, session, 60)
  const checks = statsOf(b).checks
  t.equal((await get(b, old)).code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.equal(statsOf(b).checks, checks + 1, 'one check read it')
  t.equal((await get(b, tokenOf(user, other, 60))).status, 200, 'an old token of a live session, read first')
})

t.test('supabase-js signs out (others, local, global), a ban and a deletion: two instances, and one that never saw them', async (t) => {
  // the test issuer writes its sessions where Supabase Auth does: a sign-in inserts the row, a sign-out deletes
  const mirror = await createTestIssuer({ database: admin })
  t.teardown(() => mirror.close())
  async function instance (): Promise<FastifyInstance> {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(supabaseJwks, { supabaseUrl: mirror.url, sessions: { connectionString: sessionsUrl, every: 0.2 } })
    app.get('/me', { preHandler: app.authenticate }, async (request) => ({ sub: request.user.sub, session: request.user.session_id }))
    return app
  }
  const a = await instance()
  const b = await instance()
  const device = (): SupabaseClient => createClient(mirror.url, mirror.apiKey, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: WebSocket as never }
  })
  async function signIn (client: SupabaseClient, email: string): Promise<string> {
    const { data, error } = await client.auth.signInWithPassword({ email, password: 'pw' })
    t.error(error)
    return data.session!.access_token
  }
  /** The status each token gets from each instance, once both have read the database as it is now. */
  async function statuses (tokens: readonly string[]): Promise<number[][]> {
    await Promise.all([a, b].filter((app) => statsOf(app).tracked > 0).map(nextCheck))
    return Promise.all([a, b].map((app) => Promise.all(tokens.map(async (token) => (await get(app, token)).status))))
  }
  mirror.addUser({ email: 'ada@example.com', password: 'pw' })
  const bob = mirror.addUser({ email: 'bob@example.com', password: 'pw' })
  const ada = [device(), device(), device(), device()]
  const tokens = await Promise.all(ada.map((client) => signIn(client, 'ada@example.com')))
  const bobToken = await signIn(device(), 'bob@example.com')
  t.same(await statuses([...tokens, bobToken]), [[200, 200, 200, 200, 200], [200, 200, 200, 200, 200]])

  t.error((await ada[0]!.auth.signOut({ scope: 'others' })).error)
  t.same(await statuses([...tokens, bobToken]), [[200, 401, 401, 401, 200], [200, 401, 401, 401, 200]], 'others: every session of ada but this one')
  t.error((await ada[0]!.auth.signOut({ scope: 'local' })).error)
  t.same(await statuses([tokens[0]!, bobToken]), [[401, 200], [401, 200]], 'local: this one')
  const again = [device(), device()]
  const fresh = await Promise.all(again.map((client) => signIn(client, 'ada@example.com')))
  t.same(await statuses(fresh), [[200, 200], [200, 200]])
  t.error((await again[1]!.auth.signOut()).error)
  t.same(await statuses([...fresh, bobToken]), [[401, 401, 200], [401, 401, 200]], 'global (supabase-js\'s default): every session of ada')

  // an instance that never saw them: ada's old tokens each wait for one check, which reads them ended
  const c = await instance()
  const ended = await get(c, tokens[1]!)
  t.equal(ended.code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.match(ended.message, /signed out/)
  t.equal((await get(c, bobToken)).status, 200)

  await mirror.banUser(bob.id, 3600)
  t.same(await statuses([bobToken]), [[401], [401]], 'banned')
  t.match((await get(a, bobToken)).message, /user banned/)
  await mirror.banUser(bob.id, 0)
  t.same(await statuses([bobToken]), [[200], [200]], 'the ban lifted')
  await mirror.deleteUser(bob.id)
  t.same(await statuses([bobToken]), [[401], [401]], 'deleted')
})

t.test('a deleted, a soft-deleted or a banned user, a session past not_after, and a ban lifted', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool, every: 0.1 })
  const [deleted, soft, banned, timeboxed] = await Promise.all([newUser(), newUser(), newUser(), newUser()])
  const tokens = {
    deleted: tokenOf(deleted, await newSession(deleted)),
    soft: tokenOf(soft, await newSession(soft)),
    banned: tokenOf(banned, await newSession(banned)),
    timeboxed: tokenOf(timeboxed, await newSession(timeboxed))
  }
  for (const token of Object.values(tokens)) t.equal((await get(app, token)).status, 200)
  await admin.query('delete from auth.users where id = $1', [deleted])
  await admin.query('update auth.users set deleted_at = now() where id = $1', [soft])
  await admin.query('update auth.users set banned_until = now() + interval \'1 hour\' where id = $1', [banned])
  await admin.query('update auth.sessions set not_after = now() where user_id = $1', [timeboxed])
  await nextCheck(app)
  t.match((await get(app, tokens.deleted)).message, /signed out/, 'a deleted user\'s sessions are deleted with it')
  t.match((await get(app, tokens.soft)).message, /user deleted/)
  t.match((await get(app, tokens.banned)).message, /user banned/)
  t.match((await get(app, tokens.timeboxed)).message, /past not_after/)
  for (const token of Object.values(tokens)) t.equal((await get(app, token)).code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')

  // the ban lifted: the session stands again at a check within every, even while other sessions keep
  // the instance busy (their waits start the checks: ended sessions are read again by those too)
  await admin.query('update auth.users set banned_until = null where id = $1', [banned])
  const busy = await newUser()
  const busyToken = tokenOf(busy, await newSession(busy))
  const flowing = { on: true }
  const traffic = (async () => {
    while (flowing.on) await Promise.all(Array.from({ length: 8 }, () => get(app, busyToken)))
  })()
  try {
    await until(async () => (await get(app, tokens.banned)).status === 200, 'the lifted ban seen under traffic')
  } finally {
    flowing.on = false
    await traffic
  }
  t.equal((await get(app, tokens.banned)).status, 200)
})

t.test('a token without a session it can look up is refused before any query', async (t) => {
  const { pool, queries } = countedPool(t)
  const app = await appWith(t, { pool, every: 3600 })
  const user = await newUser()
  const none = await get(app, issuer.sign({ sub: user, session_id: undefined }))
  t.equal(none.status, 401)
  t.equal(none.code, 'FST_SUPABASE_JWKS_NO_SESSION')
  t.match(none.message, /no session_id claim/)
  t.equal(none.headers['www-authenticate'], 'Bearer realm="api", error="invalid_token", error_description="The token names no session that can be checked"')
  for (const sessionId of ['1\' or 1=1 --', 'not-a-uuid', 42, '', `${randomUUID()}x`]) {
    const refused = await get(app, tokenOf(user, sessionId as string, 7200))
    t.equal(refused.code, 'FST_SUPABASE_JWKS_NO_SESSION', String(sessionId))
    t.match(refused.message, /session_id claim is not a UUID/)
  }
  t.match((await get(app, tokenOf('not-a-uuid', randomUUID(), 7200))).message, /sub claim is not a user id/)
  t.equal(queries.length, 0, 'no query was made')
  // a token without iat, or issued further ahead than every, is no proof the session stood: read first
  t.equal((await get(app, issuer.sign({ sub: user, session_id: randomUUID(), iat: undefined }))).code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.equal((await get(app, tokenOf(user, randomUUID(), -7200))).code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.equal(queries.length, 2, 'each waited for a check')
  t.equal(app.supabaseJwks.stats().rejected.FST_SUPABASE_JWKS_NO_SESSION, 7)

  // a session_id another user's token names is that user's
  const session = await newSession(user)
  t.equal((await get(app, tokenOf(user, session, 7200))).status, 200)
  t.equal(queries.length, 3, 'an old token of a session never read: one query')
  const stranger = await get(app, tokenOf(randomUUID(), session, 7200))
  t.equal(stranger.code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.match(stranger.message, /another user's/)
  // the same session with its id or its user's in capitals: the same session, read already
  t.equal((await get(app, tokenOf(user.toUpperCase(), session.toUpperCase(), 7200))).status, 200)
  t.equal(queries.length, 3, 'no query for it')
})

t.test('the cost does not follow the traffic: one query for every session due, one in flight', async (t) => {
  const counted = countedPool(t)
  const app = await appWith(t, { pool: counted.pool, every: 3600 })
  const users = await Promise.all(Array.from({ length: 20 }, () => newUser()))
  const sessions = await Promise.all(users.map((user) => newSession(user)))
  // 20 sessions this instance never saw, their tokens old: 400 requests at once
  const tokens = users.map((user, index) => tokenOf(user, sessions[index]!, 7200))
  const answers = await Promise.all(Array.from({ length: 400 }, (_, index) => get(app, tokens[index % tokens.length]!)))
  t.same(new Set(answers.map((answer) => answer.status)), new Set([200]))
  t.ok(counted.queries.length >= 1 && counted.queries.length <= 2, `${counted.queries.length} queries for 400 requests of 20 sessions`)
  t.ok(counted.queries.every((text) => text.endsWith(SESSIONS_QUERY)), 'the check\'s bounds, then its query, in one round trip')
  t.equal(counted.peak(), 1, 'never two queries in flight')
  const made = counted.queries.length
  for (let i = 0; i < 200; i++) t.equal((await get(app, tokens[i % tokens.length]!)).status, 200)
  t.equal(counted.queries.length, made, 'sessions read within every: no query')
  t.equal(statsOf(app).tracked, 20)
})

t.test('with a short every, checks come once per every, whatever the traffic', async (t) => {
  const counted = countedPool(t)
  const app = await appWith(t, { pool: counted.pool, every: 0.1 })
  const user = await newUser()
  const token = tokenOf(user, await newSession(user))
  t.equal((await get(app, token)).status, 200)
  await nextCheck(app)
  // a control: how many checks come round while nothing is asked
  const idleFrom = counted.queries.length
  await until(() => counted.queries.length >= idleFrom + 5, 'five checks of an idle instance')
  // then as many checks while requests flow: about the same number, never one per request
  const busyFrom = counted.queries.length
  let requests = 0
  while (counted.queries.length < busyFrom + 5) {
    await Promise.all(Array.from({ length: 20 }, () => get(app, token)))
    requests += 20
  }
  t.ok(requests >= 40, `${requests} requests over five checks`)
  t.ok(counted.queries.length - busyFrom <= 6, `${counted.queries.length - busyFrom} checks for ${requests} requests`)
  t.equal(counted.peak(), 1)
})

t.test('PostgreSQL stopped and restarted: last known state, 503 for the unknown, then back', async (t) => {
  const { pool } = countedPool(t)
  const app = await appWith(t, { pool, every: 0.1, lastKnownFor: 3600 })
  const strict = await appWith(t, { connectionString: sessionsUrl, every: 0.1, onUnavailable: 'refuse' })
  const bounded = await appWith(t, { connectionString: sessionsUrl, every: 0.1, lastKnownFor: 2 })
  const user = await newUser()
  const live = await newSession(user)
  const ending = await newSession(user)
  const token = tokenOf(user, live, 60)
  const endingToken = tokenOf(user, ending, 60)
  for (const instance of [app, strict, bounded]) {
    t.equal((await get(instance, token)).status, 200)
    t.equal((await get(instance, endingToken)).status, 200)
  }

  await pg.stop()
  try {
    await until(() => statsOf(app).failures > 0 && statsOf(strict).failures > 0, 'a failed check')
    t.equal((await get(app, token)).status, 200, 'a session read before answers from what was read')
    const unknown = await get(app, tokenOf(user, randomUUID(), 60))
    t.equal(unknown.status, 503)
    t.equal(unknown.code, 'FST_SUPABASE_JWKS_SESSIONS_UNAVAILABLE')
    t.match(unknown.message, /never read/)
    t.equal(unknown.headers['retry-after'], '1')
    t.notOk(unknown.headers['www-authenticate'])
    // onUnavailable 'refuse': once its last check is older than every, a read session gets 503 too
    await until(async () => (await get(strict, token)).status === 503, 'the refusal of a session read before')
    t.equal((await get(strict, token)).code, 'FST_SUPABASE_JWKS_SESSIONS_UNAVAILABLE')
    // lastKnownFor bounds the answers from what was read: 200 for a while, then 503
    await until(() => statsOf(bounded).failures > 0, 'a failed check')
    t.equal((await get(bounded, token)).status, 200, 'within lastKnownFor')
    await until(async () => (await get(bounded, token)).status === 503, 'lastKnownFor past')
    t.equal((await get(app, token)).status, 200, 'the default (60 s) still answers')
  } finally {
    await pg.start()
  }
  // the database back: the checks read it again (a sign-out made now is seen)
  await admin.query('delete from auth.sessions where id = $1', [ending])
  await nextCheck(app)
  await nextCheck(strict)
  for (const instance of [app, strict]) {
    t.equal((await get(instance, token)).status, 200)
    t.equal((await get(instance, endingToken)).code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  }
})

t.test('a database that never answers: no connection within timeout, 503', async (t) => {
  const black = await blackHole(t)
  const app = await appWith(t, { connectionString: black, every: 0.05, timeout: 0.05 })
  const user = randomUUID()
  // a recent token is accepted without a read; an old one of a session never read gets 503 within timeout
  t.equal((await get(app, tokenOf(user, randomUUID()))).status, 200)
  const old = await get(app, tokenOf(user, randomUUID(), 60))
  t.equal(old.code, 'FST_SUPABASE_JWKS_SESSIONS_UNAVAILABLE')
  t.ok(statsOf(app).failures > 0)
})

/** A server on 127.0.0.1 that accepts connections and never answers: a database that hangs. */
async function blackHole (t: Test): Promise<string> {
  const sockets = new Set<Socket>()
  const server = createServer((socket) => { sockets.add(socket) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const socket of sockets) socket.destroy()
    return new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return `postgres://nobody@127.0.0.1:${(server.address() as { port: number }).port}/postgres`
}

t.test('a query that hangs (a lock) fails after timeout, its connection destroyed', async (t) => {
  const counted = countedPool(t)
  const app = await appWith(t, { pool: counted.pool, every: 3600, timeout: 0.3 })
  const user = await newUser()
  const session = await newSession(user)
  const locker = await admin.connect()
  try {
    await locker.query('begin; lock table auth.sessions in access exclusive mode')
    const first = get(app, tokenOf(user, session, 7200))
    // a second session arrives while the first check hangs: it waits for the next, which the failure puts off
    await until(() => counted.queries.length === 1, 'the first check in flight')
    const second = get(app, tokenOf(user, randomUUID(), 7200))
    for (const waited of [await first, await second]) {
      t.equal(waited.status, 503)
      t.equal(waited.code, 'FST_SUPABASE_JWKS_SESSIONS_UNAVAILABLE')
    }
    t.equal(counted.queries.length, 1, 'one check in flight, no other started while the failure is recent')
    t.equal(counted.pool.totalCount, 0, 'the connection of the query past its time was destroyed')
    // and PostgreSQL itself cancelled it (its lock_timeout): no check of the sessions role still runs there
    await until(async () => (await admin.query('select count(*)::int as n from pg_stat_activity where usename = $1 and state = \'active\'', [ROLE])).rows[0].n === 0,
      'the server-side query cancelled')
  } finally {
    await locker.query('rollback')
    locker.release()
  }
  // the next try, a second after the failure, reads the session
  await until(async () => (await get(app, tokenOf(user, session, 7200))).status === 200, 'a check once the lock is gone')
})

t.test('a session forgotten (maxSessions) while it waited gets 503 saying so', async (t) => {
  const counted = countedPool(t)
  const app = await appWith(t, { pool: counted.pool, every: 3600, timeout: 0.5, maxSessions: 2 })
  const user = await newUser()
  const locker = await admin.connect()
  try {
    await locker.query('begin; lock table auth.sessions in access exclusive mode')
    const waiting = get(app, tokenOf(user, randomUUID(), 7200))
    await until(() => counted.queries.length === 1, 'its check in flight')
    // two sessions whose tokens are recent need no check: held at once, the waiting one is forgotten
    for (let i = 0; i < 2; i++) t.equal((await get(app, tokenOf(user, randomUUID()))).status, 200)
    const answer = await waiting
    t.equal(answer.code, 'FST_SUPABASE_JWKS_SESSIONS_UNAVAILABLE')
    t.match(answer.message, /forgotten while it waited/)
  } finally {
    await locker.query('rollback')
    locker.release()
  }
})

t.test('a role that cannot read the tables: 503, and the failure logged', async (t) => {
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(line) } } } })
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, sessions: { connectionString: pg.authenticatorUrl, every: 3600 } })
  app.get('/me', { preHandler: app.authenticate }, async () => 'ok')
  const user = await newUser()
  const refused = await get(app, tokenOf(user, await newSession(user), 7200))
  t.equal(refused.status, 503)
  t.equal(statsOf(app).failures, 1)
  const logged = lines.map((line) => JSON.parse(line) as { msg: string, err?: { code?: string } }).find((line) => /sessions check failed/.test(line.msg))
  t.equal(logged?.err?.code, '42501', 'permission denied, in the log')
})

t.test('isRevoked applies beside it, verify() goes through it, watchSession tells a socket', async (t) => {
  const revoked = new Set<string>()
  let asked = 0
  const app = await appWith(t, { connectionString: sessionsUrl, every: 0.1 }, {
    isRevoked: (claims) => { asked++; return revoked.has(claims.sub) }
  })
  const [one, two] = await Promise.all([newUser(), newUser()])
  const sessionOne = await newSession(one)
  const tokenOne = tokenOf(one, sessionOne)
  const tokenTwo = tokenOf(two, await newSession(two))
  revoked.add(two)
  t.equal((await get(app, tokenOne)).status, 200)
  t.equal((await get(app, tokenTwo)).code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED', 'isRevoked still refuses')

  const user = await app.supabaseJwks.verify(tokenOne)
  const ended: Error[] = []
  const stop = app.supabaseJwks.watchSession(user, (err) => ended.push(err))
  const stopped: Error[] = []
  app.supabaseJwks.watchSession(user, (err) => stopped.push(err))()
  // one function watched twice: each watch stops on its own
  const twice: Error[] = []
  const onTwice = (err: Error): void => { twice.push(err) }
  app.supabaseJwks.watchSession(user, onTwice)
  app.supabaseJwks.watchSession(user, onTwice)()
  app.supabaseJwks.watchSession(user, () => { throw new Error('a watcher that throws is logged, the others told') })
  app.supabaseJwks.watchSession(user, async () => { throw new Error('a watcher that rejects is logged, never unhandled') })
  await admin.query('delete from auth.sessions where id = $1', [sessionOne])
  await until(() => ended.length > 0, 'the watcher told')
  t.equal(ended.length, 1)
  t.equal((ended[0] as { code?: string }).code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.equal(stopped.length, 0, 'a watch stopped is not told')
  t.equal(twice.length, 1, 'the watch not stopped is told')
  stop()
  asked = 0
  await t.rejects(app.supabaseJwks.verify(tokenOne), { code: 'FST_SUPABASE_JWKS_TOKEN_REVOKED', statusCode: 401 })
  t.equal(asked, 0, 'an ended session is refused before isRevoked is asked')

  // a session known ended: told at once (on the next microtask)
  const late: Error[] = []
  app.supabaseJwks.watchSession(user, (err) => late.push(err))
  await Promise.resolve()
  t.equal(late.length, 1)
  t.throws(() => app.supabaseJwks.watchSession(user, 'no' as never), { code: 'FST_SUPABASE_JWKS_USAGE' })
  t.throws(() => app.supabaseJwks.watchSession(null as never, () => {}), { code: 'FST_SUPABASE_JWKS_USAGE', message: /user must be the claims/ })
  t.throws(() => app.supabaseJwks.watchSession({ ...user, session_id: undefined } as never, () => {}), { code: 'FST_SUPABASE_JWKS_NO_SESSION' })
})

t.test('watchSession without the option is a usage error', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url })
  const user = await app.supabaseJwks.verify(issuer.sign())
  t.throws(() => app.supabaseJwks.watchSession(user, () => {}), { code: 'FST_SUPABASE_JWKS_USAGE', message: /needs the option sessions/ })
  t.equal(app.supabaseJwks.stats().sessions, undefined)
})

t.test('several issuers: only those whose sessions are configured are checked', async (t) => {
  const second = await createTestIssuer()
  t.teardown(() => second.close())
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, {
    issuers: [{ supabaseUrl: issuer.url, sessions: { connectionString: sessionsUrl, every: 0.1 } }, { supabaseUrl: second.url }]
  })
  app.get('/me', { preHandler: app.authenticate }, async (request) => ({ sub: request.user.sub }))
  const user = await newUser()
  const session = await newSession(user)
  t.equal((await get(app, tokenOf(user, session, 60))).status, 200)
  t.equal((await get(app, second.sign({ session_id: undefined }))).status, 200, 'the other issuer\'s tokens are not checked')
  t.equal((await get(app, issuer.sign({ session_id: undefined }))).code, 'FST_SUPABASE_JWKS_NO_SESSION')
  await admin.query('delete from auth.sessions where id = $1', [session])
  await nextCheck(app)
  t.equal((await get(app, tokenOf(user, session, 60))).code, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.throws(() => app.supabaseJwks.watchSession(second.sign() as never, () => {}))
  const claims = await app.supabaseJwks.verify(second.sign())
  t.throws(() => app.supabaseJwks.watchSession(claims, () => {}), { code: 'FST_SUPABASE_JWKS_USAGE', message: /for the token's issuer/ })
  t.equal(statsOf(app).tracked, 1)
})

t.test('sessions held are bounded, and forgotten once their tokens expired', async (t) => {
  const app = await appWith(t, { connectionString: sessionsUrl, every: 0.1, maxSessions: 2 })
  const user = await newUser()
  const sessions = [await newSession(user), await newSession(user), await newSession(user)]
  for (const session of sessions) t.equal((await get(app, tokenOf(user, session, 0, { exp: Math.floor(Date.now() / 1000) + 2 }))).status, 200)
  t.equal(statsOf(app).tracked, 2, 'the oldest was forgotten')
  // a watched session is held past its tokens' exp, the others are forgotten once their tokens expired
  const watchedClaims = await app.supabaseJwks.verify(tokenOf(user, sessions[2]!, 0, { exp: Math.floor(Date.now() / 1000) + 2 }))
  const stopWatching = app.supabaseJwks.watchSession(watchedClaims, () => {})
  await until(() => statsOf(app).tracked === 1, 'the unwatched sessions forgotten')
  const held = statsOf(app).checks
  await until(() => statsOf(app).checks > held + 1, 'checks of the watched session')
  stopWatching()
  await until(() => statsOf(app).tracked === 0, 'the session forgotten once not watched')
  const checks = statsOf(app).checks
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(statsOf(app).checks, checks, 'no check with no session held')

  // watched sessions are held outside maxSessions: a new session is held beside them
  const watched = await appWith(t, { connectionString: sessionsUrl, every: 3600, maxSessions: 2 })
  for (let i = 0; i < 5; i++) {
    const claims = await watched.supabaseJwks.verify(tokenOf(user, randomUUID()))
    watched.supabaseJwks.watchSession(claims, () => {})
  }
  for (let i = 0; i < 3; i++) t.equal((await get(watched, tokenOf(user, randomUUID()))).status, 200)
  t.equal(statsOf(watched).tracked, 7, 'five watched, and the two newest of the others')
})

t.test('the role of the guide reads what the check needs, and never a password', async (t) => {
  const reader = new Pool({ connectionString: sessionsUrl, max: 1 })
  t.teardown(() => reader.end())
  const user = await newUser()
  const session = await newSession(user)
  const gone = randomUUID()
  const { rows } = await reader.query(SESSIONS_QUERY, [`{${session},${gone}}`, `{${user},${user}}`])
  t.same(rows, [{ id: gone, ended: 'signed out' }])
  await t.rejects(reader.query('select encrypted_password from auth.users limit 1'), { code: '42501' })
  await t.rejects(reader.query('select * from auth.sessions limit 1'), { code: '42501' })
})

t.test('options', async (t) => {
  const pool = new Pool({ connectionString: sessionsUrl })
  t.teardown(() => pool.end())
  const register = async (options: Record<string, unknown>) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(supabaseJwks, { supabaseUrl: issuer.url, ...options } as supabaseJwks.SupabaseJwksOptions)
    await app.ready()
  }
  await t.rejects(register({ sessions: {} }), { code: 'FST_SUPABASE_JWKS_OPTION', message: /exactly one of pool/ })
  await t.rejects(register({ sessions: { pool, connectionString: sessionsUrl } }), { message: /exactly one of pool/ })
  await t.rejects(register({ sessions: 'yes' }), { message: /sessions must be an object/ })
  await t.rejects(register({ sessions: { pool, often: 1 } }), { message: /unknown option sessions.often/ })
  await t.rejects(register({ sessions: { pool: {} } }), { message: /sessions.pool must be a pg Pool/ })
  await t.rejects(register({ sessions: { connectionString: '' } }), { message: /non-empty string/ })
  await t.rejects(register({ sessions: { pool, onUnavailable: 'accept' } }), { message: /'last-known' or 'refuse'/ })
  await t.rejects(register({ sessions: { pool, every: 0 } }), { message: /sessions.every must be/ })
  await t.rejects(register({ sessions: { pool, maxSessions: 0 } }), { message: /sessions.maxSessions must be/ })
  await t.rejects(register({ sessions: { pool, every: 2, timeout: 3 } }), { message: /sessions.timeout \(3 s\) is longer than sessions.every \(2 s\)/ })
  await t.rejects(register({ sessions: { pool }, postgres: { pool } }), { message: /sessions and postgres are the same pool/ })
  await t.rejects(register({ sessions: { connectionString: sessionsUrl }, postgres: { connectionString: sessionsUrl } }), { message: /same connection string/ })
  await t.rejects(register({ supabaseUrl: undefined, issuers: [{ supabaseUrl: issuer.url }], sessions: { pool } }), { message: /give sessions in its entry of issuers/ })
  await t.rejects(register({ supabaseUrl: undefined, issuers: [{ supabaseUrl: issuer.url, sessions: { pool, every: -1 } }] }), { message: /issuers\[0\]\.sessions\.every/ })
  t.throws(() => fastifyJwtOptions({ supabaseUrl: issuer.url, sessions: { pool } }), { message: /sessions is not available through @fastify\/jwt/ })
  t.throws(() => fastifyJwtOptions({ issuers: [{ supabaseUrl: issuer.url, sessions: { pool } }] }), { message: /sessions is not available through @fastify\/jwt/ })
  // a different pool for each is fine, and the own pool is ended on close
  const app = Fastify()
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, sessions: { connectionString: sessionsUrl }, postgres: { pool } })
  await app.close()
  t.pass('closed')
})
