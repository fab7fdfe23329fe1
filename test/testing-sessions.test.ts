import t, { type Test } from 'tap'
import { createClient, type SupabaseClient } from '@supabase/supabase-js'
import { randomUUID } from 'node:crypto'
import { Pool } from 'pg'
import WebSocket from 'ws'
import { createTestIssuer, generateTestKey, signJwt, TestAuthError, type TestIssuer, type TestUser } from '../lib/testing'
import { createSessionBook } from '../lib/testing-sessions'
import { startPostgres, type Postgres } from './fixtures/postgres'

/*
 * The test issuer's sessions as Supabase Auth keeps them, written into a real PostgreSQL (started for
 * this file, with auth.users and auth.sessions as supabase/auth's migrations define them) and driven
 * by real supabase-js over HTTP: the rows each sign-in, refresh, sign-out scope, ban and deletion
 * leaves, the refresh tokens that still work, what the logout endpoint refuses, and a database that
 * fails.
 */

const UUID = /^[\da-f]{8}-[\da-f]{4}-[\da-f]{4}-[\da-f]{4}-[\da-f]{12}$/

let pg: Postgres
let pool: Pool
t.before(async () => {
  pg = await startPostgres(t)
  // a session time zone other than UTC: refreshed_at (a timestamp without time zone) must still be UTC
  pool = new Pool({ connectionString: pg.superuserUrl, max: 2, options: '-c timezone=Asia/Tokyo' })
  pool.on('error', () => {}) // idle connections die when the server is stopped below
  t.teardown(() => pool.end())
})

async function issuerWith (t: Test): Promise<TestIssuer> {
  const issuer = await createTestIssuer({ database: pool })
  t.teardown(() => issuer.close())
  return issuer
}

/** A supabase-js client of the issuer: one device. */
function device (issuer: TestIssuer): SupabaseClient {
  return createClient(issuer.url, issuer.apiKey, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: WebSocket as never }
  })
}

function claimsOf (token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString())
}

/** Signs `user` in on `client` (password `pw`); the session's id and refresh token. */
async function signInOn (t: Test, client: SupabaseClient, user: TestUser): Promise<{ id: string, refreshToken: string, accessToken: string }> {
  const { data, error } = await client.auth.signInWithPassword({ email: user.email, password: 'pw' })
  t.error(error)
  const accessToken = data.session!.access_token
  return { id: claimsOf(accessToken).session_id as string, refreshToken: data.session!.refresh_token, accessToken }
}

/** The ids of the user's rows in auth.sessions, sorted. */
async function rowsOf (userId: string): Promise<string[]> {
  const { rows } = await pool.query<{ id: string }>('select id from auth.sessions where user_id = $1 order by id', [userId])
  return rows.map((row) => row.id)
}

async function refreshWith (issuer: TestIssuer, refreshToken: string): Promise<{ status: number, body: Record<string, unknown> }> {
  const response = await fetch(`${issuer.url}/auth/v1/token?grant_type=refresh_token`, {
    method: 'POST',
    headers: { apikey: issuer.apiKey, 'content-type': 'application/json' },
    body: JSON.stringify({ refresh_token: refreshToken })
  })
  return { status: response.status, body: await response.json() as Record<string, unknown> }
}

async function logout (issuer: TestIssuer, headers: Record<string, string>, query = ''): Promise<{ status: number, body: unknown }> {
  const response = await fetch(`${issuer.url}/auth/v1/logout${query}`, { method: 'POST', headers })
  const text = await response.text()
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text) }
}

const sorted = (ids: string[]) => [...ids].sort()

t.test('a sign-in writes the user and its session; a refresh keeps the session and sets refreshed_at', async (t) => {
  const issuer = await issuerWith(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  const supabase = device(issuer)
  const first = await signInOn(t, supabase, ada)
  t.match(first.id, UUID)
  t.equal(claimsOf(first.accessToken).sub, ada.id)

  const { rows: [row] } = await pool.query('select id, user_id, aal, refreshed_at, created_at = updated_at as untouched from auth.sessions where user_id = $1', [ada.id])
  t.same(row, { id: first.id, user_id: ada.id, aal: 'aal1', refreshed_at: null, untouched: true })
  const { rows: [account] } = await pool.query('select email, encrypted_password, banned_until from auth.users where id = $1', [ada.id])
  t.same(account, { email: 'ada@example.com', encrypted_password: 'test-issuer: not a password hash', banned_until: null })
  t.same(issuer.sessions(ada.id), [first.id])

  const before = Date.now()
  const refreshed = await supabase.auth.refreshSession()
  const after = Date.now()
  t.error(refreshed.error)
  t.equal(claimsOf(refreshed.data.session!.access_token).session_id, first.id, 'the same session')
  t.not(refreshed.data.session!.refresh_token, first.refreshToken, 'a new refresh token')
  const { rows: [again] } = await pool.query(
    "select refreshed_at at time zone 'utc' as refreshed_at, updated_at from auth.sessions where user_id = $1", [ada.id])
  t.ok(again.refreshed_at.getTime() >= before && again.refreshed_at.getTime() <= after, 'refreshed_at: now, in UTC')
  t.equal(again.updated_at.getTime(), again.refreshed_at.getTime(), 'updated_at too')
  t.same(await rowsOf(ada.id), [first.id], 'no other row')
  t.equal((await refreshWith(issuer, first.refreshToken)).body.error_code, 'refresh_token_not_found', 'the used one is spent')

  const second = await signInOn(t, device(issuer), ada)
  t.not(second.id, first.id, 'another sign-in, another session')
  t.same(await rowsOf(ada.id), sorted([first.id, second.id]))
  const { rows: users } = await pool.query('select id from auth.users where id = $1', [ada.id])
  t.equal(users.length, 1, 'the user is upserted, not inserted twice')

  const signedIn = await issuer.signIn(ada, { aal: 'aal2' })
  const programmatic = claimsOf(signedIn.access_token)
  t.match(programmatic, { sub: ada.id, aal: 'aal2' })
  t.same(await rowsOf(ada.id), sorted([first.id, second.id, programmatic.session_id as string]), 'signIn writes as the endpoint does')
  const inMemory = claimsOf(issuer.session(ada).access_token).session_id as string
  t.ok(issuer.sessions(ada.id).includes(inMemory), 'session() opens a session of the issuer')
  t.notOk((await rowsOf(ada.id)).includes(inMemory), 'that session() does not write')
  t.equal(claimsOf((await refreshWith(issuer, signedIn.refresh_token)).body.access_token as string).session_id, programmatic.session_id)
})

t.test('sign-out: others, local and global (the default) delete exactly the rows GoTrue deletes', async (t) => {
  const issuer = await issuerWith(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  const bob = issuer.addUser({ email: 'bob@example.com', password: 'pw' })
  const laptop = device(issuer)
  const phone = device(issuer)
  const tablet = device(issuer)
  const onLaptop = await signInOn(t, laptop, ada)
  const onPhone = await signInOn(t, phone, ada)
  const onTablet = await signInOn(t, tablet, ada)
  const bobs = await signInOn(t, device(issuer), bob)
  t.same(await rowsOf(ada.id), sorted([onLaptop.id, onPhone.id, onTablet.id]))

  t.error((await laptop.auth.signOut({ scope: 'others' })).error)
  t.same(await rowsOf(ada.id), [onLaptop.id], 'others: only the laptop stays')
  t.same(await rowsOf(bob.id), [bobs.id], 'another user is untouched')
  for (const ended of [onPhone, onTablet]) {
    t.equal((await refreshWith(issuer, ended.refreshToken)).body.error_code, 'refresh_token_not_found', 'an ended session cannot refresh')
  }
  const laptopRefreshed = await laptop.auth.refreshSession()
  t.error(laptopRefreshed.error, 'the kept session refreshes')

  const desktop = device(issuer)
  const onDesktop = await signInOn(t, desktop, ada)
  t.error((await desktop.auth.signOut({ scope: 'local' })).error)
  t.same(await rowsOf(ada.id), [onLaptop.id], 'local: the token\'s own session ends')
  t.equal((await refreshWith(issuer, onDesktop.refreshToken)).body.error_code, 'refresh_token_not_found')

  const kiosk = device(issuer)
  await signInOn(t, kiosk, ada)
  t.equal((await rowsOf(ada.id)).length, 2)
  t.error((await kiosk.auth.signOut()).error)
  t.same(await rowsOf(ada.id), [], 'global: every session of the user ends')
  t.same(await rowsOf(bob.id), [bobs.id], 'another user is untouched')
  t.equal((await refreshWith(issuer, laptopRefreshed.data.session!.refresh_token)).body.error_code, 'refresh_token_not_found')
  t.same(issuer.sessions(ada.id), [])
  t.same(issuer.sessions(), [bobs.id])
  t.equal(issuer.logoutRequests, 3)

  // GoTrue answers 403 session_not_found for a session already ended; supabase-js takes it as signed out
  const gone = await logout(issuer, { apikey: issuer.apiKey, authorization: `Bearer ${laptopRefreshed.data.session!.access_token}` })
  t.match(gone, { status: 403, body: { code: 403, error_code: 'session_not_found' } })
  t.error((await laptop.auth.signOut()).error)
  t.same(await rowsOf(bob.id), [bobs.id])
  t.equal(issuer.logoutRequests, 5)
})

t.test('the logout endpoint refuses what the gateway and GoTrue refuse, and then ends nothing', async (t) => {
  const issuer = await issuerWith(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  const session = await issuer.signIn(ada)
  const id = claimsOf(session.access_token).session_id as string
  const bearer = (token: string) => ({ apikey: issuer.apiKey, authorization: `Bearer ${token}` })
  const refused: Array<[string, Record<string, string>, string, number, unknown]> = [
    ['no apikey', { authorization: `Bearer ${session.access_token}` }, '', 401, { message: 'No API key found in request' }],
    ['another apikey', { apikey: 'sb_publishable_wrong', authorization: `Bearer ${session.access_token}` }, '', 401, { message: 'Invalid API key' }],
    ['no bearer', { apikey: issuer.apiKey }, '', 401, { code: 401, error_code: 'no_authorization' }],
    ['not a JWT', bearer('abc'), '', 403, { code: 403, error_code: 'bad_jwt' }],
    ['signed by another key', bearer(signJwt({ alg: 'RS256', kid: issuer.currentKey.kid }, { sub: ada.id, session_id: id, exp: 2e9 }, generateTestKey().privateKey)), '', 403, { error_code: 'bad_jwt' }],
    ['expired', bearer(issuer.sign({ sub: ada.id, session_id: id, exp: 1 })), '', 403, { error_code: 'bad_jwt' }],
    ['a user the issuer does not have', bearer(issuer.sign({ session_id: id })), '', 403, { error_code: 'user_not_found' }],
    ['a session that is not live', bearer(issuer.sign({ sub: ada.id })), '', 403, { error_code: 'session_not_found' }],
    ['a session_id that is not a UUID', bearer(issuer.sign({ sub: ada.id, session_id: 'abc' })), '', 403, { error_code: 'bad_jwt', msg: 'invalid claim: session_id claim must be a UUID' }],
    ['a session_id that is not a string', bearer(issuer.sign({ sub: ada.id, session_id: 42 })), '', 403, { error_code: 'bad_jwt' }],
    ['an unknown scope', bearer(session.access_token), '?scope=everywhere', 400, { code: 400, error_code: 'validation_failed', msg: 'Unsupported logout scope "everywhere"' }]
  ]
  for (const [what, headers, query, status, body] of refused) {
    t.match(await logout(issuer, headers, query), { status, body }, what)
  }
  t.same(await rowsOf(ada.id), [id], 'no row deleted')
  t.same(issuer.sessions(ada.id), [id])
  t.equal(issuer.logoutRequests, refused.length)

  await t.rejects(issuer.signOut('abc'), new TestAuthError(403, 'bad_jwt', 'invalid JWT: unable to parse or verify signature'))
  await t.rejects(issuer.signOut(session.access_token, 'everywhere' as never), { name: 'TestAuthError', status: 400, code: 'validation_failed' })
  t.same(await rowsOf(ada.id), [id], 'still no row deleted')
  t.equal(issuer.logoutRequests, refused.length, 'the programmatic sign-out is not a request')

  t.match(await logout(issuer, bearer(issuer.signLegacy({ sub: ada.id, session_id: id })), '?scope=local'), { status: 204 }, 'a legacy HS256 token of the session')
  t.same(await rowsOf(ada.id), [])

  // GoTrue: a token without a session (no session_id, or an empty one) ends every session of its user, whatever the scope
  for (const sessionId of [undefined, '']) {
    await issuer.signIn(ada)
    await issuer.signIn(ada)
    t.equal((await rowsOf(ada.id)).length, 2)
    t.match(await logout(issuer, bearer(issuer.sign({ sub: ada.id, session_id: sessionId })), '?scope='), { status: 204 }, 'an empty scope is global')
    t.same(await rowsOf(ada.id), [])
    t.same(issuer.sessions(ada.id), [])
  }
})

t.test('signOut() ends sessions as the endpoint does', async (t) => {
  const issuer = await issuerWith(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  const sessions = [await issuer.signIn(ada), await issuer.signIn(ada), await issuer.signIn(ada)]
  const ids = sessions.map((session) => claimsOf(session.access_token).session_id as string)
  await issuer.signOut(sessions[0]!.access_token, 'local')
  t.same(await rowsOf(ada.id), sorted(ids.slice(1)))
  await issuer.signOut(sessions[1]!.access_token, 'others')
  t.same(await rowsOf(ada.id), [ids[1]])
  await issuer.signOut(sessions[1]!.access_token)
  t.same(await rowsOf(ada.id), [], 'global by default')
  await t.rejects(issuer.signOut(sessions[1]!.access_token), { status: 403, code: 'session_not_found' })
})

t.test('a ban sets banned_until and ends no session; sign-ins and refreshes wait for its end; a deleted user loses its rows', async (t) => {
  const issuer = await issuerWith(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  const bob = issuer.addUser({ email: 'bob@example.com', password: 'pw' })
  const adas = await signInOn(t, device(issuer), ada)
  const adas2 = await issuer.signIn(ada)
  const bobs = await signInOn(t, device(issuer), bob)

  const before = Date.now()
  await issuer.banUser(ada.id, 3600)
  const after = Date.now()
  const { rows: [banned] } = await pool.query('select banned_until from auth.users where id = $1', [ada.id])
  t.ok(banned.banned_until.getTime() >= before + 3_600_000 && banned.banned_until.getTime() <= after + 3_600_000, 'banned for an hour')
  t.equal((await rowsOf(ada.id)).length, 2, 'GoTrue\'s ban ends no session')
  const refusedSignIn = await device(issuer).auth.signInWithPassword({ email: ada.email, password: 'pw' })
  t.match(refusedSignIn.error, { status: 400, code: 'user_banned' })
  t.match(await refreshWith(issuer, adas.refreshToken), { status: 400, body: { error_code: 'user_banned', msg: 'Invalid Refresh Token: User Banned' } })
  await t.rejects(issuer.signIn(ada), { status: 400, code: 'user_banned' })
  t.throws(() => issuer.session(ada), { status: 400, code: 'user_banned' })
  t.match(await logout(issuer, { apikey: issuer.apiKey, authorization: `Bearer ${adas2.access_token}` }), { status: 403, body: { error_code: 'user_banned' } })
  t.equal((await rowsOf(ada.id)).length, 2)

  await issuer.banUser(ada.id, 0)
  const { rows: [lifted] } = await pool.query('select banned_until from auth.users where id = $1', [ada.id])
  t.equal(lifted.banned_until, null, '0 lifts the ban')
  t.equal((await refreshWith(issuer, adas.refreshToken)).status, 200, 'the refused refresh did not spend its token')
  await issuer.banUser(ada.id, -60)
  t.equal((await refreshWith(issuer, adas2.refresh_token)).status, 200, 'a ban that has ended refuses nothing')
  await t.rejects(issuer.banUser(ada.id, Number.NaN), TypeError)

  await issuer.deleteUser(bob.id)
  const { rows: bobRows } = await pool.query('select id from auth.users where id = $1', [bob.id])
  t.same(bobRows, [], 'the user is deleted')
  t.same(await rowsOf(bob.id), [], 'its sessions by cascade')
  t.same(issuer.sessions(bob.id), [])
  t.equal((await refreshWith(issuer, bobs.refreshToken)).body.error_code, 'refresh_token_not_found')
  t.match((await device(issuer).auth.signInWithPassword({ email: bob.email, password: 'pw' })).error, { status: 400, code: 'invalid_credentials' })
  t.equal((await rowsOf(ada.id)).length, 2, 'another user is untouched')
})

t.test('changes run one at a time: a refresh token is used once, a session ended cannot refresh', async (t) => {
  // the issuer's book itself: two calls in the same tick, which two HTTP requests only sometimes are
  const book = createSessionBook<{ id: string, email: string }>(pool)
  const ada = { id: randomUUID(), email: 'ada@example.com' }
  const { refreshToken } = await book.signIn(ada)
  const twice = await Promise.allSettled([book.refresh(refreshToken), book.refresh(refreshToken)])
  t.same(twice.map((result) => result.status), ['fulfilled', 'rejected'])
  t.match((twice[1] as PromiseRejectedResult).reason, { code: 'refresh_token_not_found' })

  const { refreshToken: next } = (twice[0] as PromiseFulfilledResult<{ refreshToken: string }>).value
  const [, refreshed] = await Promise.allSettled([book.signOut(ada.id, undefined, 'global'), book.refresh(next)])
  t.match(refreshed, { status: 'rejected', reason: { code: 'refresh_token_not_found' } }, 'the sign-out came first')
  t.same(book.ids(ada.id), [])
  t.same(await rowsOf(ada.id), [])
})

t.test('without a database the sessions are kept in memory, and any user id will do', async (t) => {
  const issuer = await createTestIssuer()
  t.teardown(() => issuer.close())
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw', id: 'ada' })
  const first = issuer.session(ada)
  const second = await issuer.signIn(ada)
  const ids = [first, second].map((session) => claimsOf(session.access_token).session_id as string)
  t.same(issuer.sessions('ada'), ids)
  const refreshed = await refreshWith(issuer, first.refresh_token)
  t.equal(claimsOf(refreshed.body.access_token as string).session_id, ids[0], 'a refresh keeps the session')
  await issuer.signOut(second.access_token, 'others')
  t.same(issuer.sessions(), [ids[1]])
  t.equal((await refreshWith(issuer, refreshed.body.refresh_token as string)).body.error_code, 'refresh_token_not_found')
  t.notOk(issuer.sessions().includes(claimsOf(issuer.sign()).session_id as string), 'sign() mints a random session_id, of no session')
  await issuer.banUser('ada', 60)
  await t.rejects(issuer.signIn(ada), { code: 'user_banned' })
  await issuer.deleteUser('ada')
  t.same(issuer.sessions(), [])
})

// last: it stops the server
t.test('a database that fails: 500 as GoTrue answers, nothing changed, the JWKS still served', async (t) => {
  const issuer = await issuerWith(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  const session = await issuer.signIn(ada)
  const id = claimsOf(session.access_token).session_id as string
  await pg.stop()

  const signIn = await device(issuer).auth.signInWithPassword({ email: ada.email, password: 'pw' })
  t.match(signIn.error, { status: 500, message: 'Database error creating new session' }) // supabase-js keeps no code of a 5xx
  t.match(await refreshWith(issuer, session.refresh_token), { status: 500, body: { code: 500, error_code: 'unexpected_failure', msg: 'failed to update session information' } })
  t.match(await logout(issuer, { apikey: issuer.apiKey, authorization: `Bearer ${session.access_token}` }), { status: 500, body: { error_code: 'unexpected_failure', msg: 'Error logging out user' } })
  const failed = await issuer.banUser(ada.id, 60).catch((error: unknown) => error)
  t.match(failed, { name: 'TestAuthError', status: 500, code: 'unexpected_failure' })
  t.ok((failed as Error).cause instanceof Error, 'the database\'s error is its cause')
  await t.rejects(issuer.deleteUser(ada.id), { status: 500, code: 'unexpected_failure' })
  await t.rejects(issuer.signIn(ada), { status: 500, code: 'unexpected_failure' })
  t.equal((await fetch(issuer.jwksUrl)).status, 200, 'the issuer still serves')
  t.same(issuer.sessions(ada.id), [id], 'nothing changed')

  await pg.start()
  const refreshed = await refreshWith(issuer, session.refresh_token)
  t.equal(refreshed.status, 200, 'the failed refresh did not spend its token')
  t.equal((await logout(issuer, { apikey: issuer.apiKey, authorization: `Bearer ${refreshed.body.access_token as string}` })).status, 204)
  t.same(await rowsOf(ada.id), [])
  await issuer.signIn(ada)
  t.equal((await rowsOf(ada.id)).length, 1, 'the user was not banned, nor deleted')
})
