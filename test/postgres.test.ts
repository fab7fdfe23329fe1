import t, { type Test } from 'tap'
import pg from 'pg'
import { startPostgres, type Postgres } from './fixtures/postgres'

/*
 * The throwaway PostgreSQL server and the Supabase schema the RLS tests stand on, proven with `pg` alone:
 * a claim set the way PostgREST sets it decides what each caller sees, and nothing of it outlives the
 * transaction.
 */

const USER_A = '00000000-0000-4000-8000-00000000000a'
const USER_B = '00000000-0000-4000-8000-00000000000b'
const claimsOf = (sub: string) => ({ sub, role: 'authenticated', aud: 'authenticated', email: `${sub.slice(-1)}@example.com` })

let postgres: Postgres
t.before(async () => {
  const started = Date.now()
  postgres = await startPostgres(t)
  t.comment(`PostgreSQL started (initdb, server, schema) in ${Date.now() - started} ms`)
})

async function connect (url: string, t: Test): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(() => client.end().catch(() => {}))
  return client
}

/** Runs `fn` in a transaction as `role` with `claims`, transaction-local, as PostgREST does. */
async function scoped<T> (client: pg.Client, role: string, claims: object | null, fn: () => Promise<T>): Promise<T> {
  await client.query('begin')
  try {
    await client.query("select set_config('role', $1, true), set_config('request.jwt.claims', $2, true)", [role, claims === null ? '' : JSON.stringify(claims)])
    const result = await fn()
    await client.query('commit')
    return result
  } catch (error) {
    await client.query('rollback')
    throw error
  }
}

const rows = async (client: pg.Client, text: string, params: unknown[] = []) => (await client.query(text, params)).rows

t.test('authenticator logs in, is no superuser, inherits nothing and may become anon, authenticated or service_role', async (t) => {
  const client = await connect(postgres.authenticatorUrl, t)
  t.same(await rows(client, 'select current_user, (select rolsuper from pg_roles where rolname = current_user) as super'), [{ current_user: 'authenticator', super: false }])
  t.same(await rows(client, "select rolinherit, rolcanlogin from pg_roles where rolname = 'authenticator'"), [{ rolinherit: false, rolcanlogin: true }])
  t.same((await rows(client, "select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid join pg_roles u on u.oid = m.member where u.rolname = 'authenticator' order by 1"))
    .map((row) => row.rolname), ['anon', 'authenticated', 'service_role'])
  t.same(await rows(client, "select rolname, rolcanlogin, rolbypassrls from pg_roles where rolname in ('anon', 'authenticated', 'service_role') order by 1"), [
    { rolname: 'anon', rolcanlogin: false, rolbypassrls: false },
    { rolname: 'authenticated', rolcanlogin: false, rolbypassrls: false },
    { rolname: 'service_role', rolcanlogin: false, rolbypassrls: true }
  ])
  // NOINHERIT: without SET ROLE, authenticator has none of authenticated's grants
  await t.rejects(client.query('select * from public.notes'), { code: '42501' })
})

t.test('the Unix socket in socketDir takes connections too', async (t) => {
  const client = new pg.Client({ host: postgres.socketDir, port: postgres.port, user: 'postgres', database: 'postgres' })
  await client.connect()
  t.teardown(() => client.end())
  t.same(await rows(client, "select current_user, coalesce(inet_server_addr()::text, 'socket') as via"), [{ current_user: 'postgres', via: 'socket' }])
})

t.test('claims set as PostgREST sets them: auth.uid(), auth.role(), auth.jwt() and whoami() read them', async (t) => {
  const client = await connect(postgres.authenticatorUrl, t)
  const seen = await scoped(client, 'authenticated', claimsOf(USER_A), () =>
    rows(client, 'select auth.uid() as uid, auth.role() as role, auth.jwt() as jwt, public.whoami() as whoami'))
  t.same(seen, [{ uid: USER_A, role: 'authenticated', jwt: claimsOf(USER_A), whoami: { role: 'authenticated', uid: USER_A, claims: claimsOf(USER_A) } }])
  // the older single-claim settings that Supabase's functions still read first
  t.same(await scoped(client, 'anon', null, async () => {
    await client.query("select set_config('request.jwt.claim.sub', $1, true), set_config('request.jwt.claim.role', 'anon', true)", [USER_B])
    return rows(client, 'select auth.uid() as uid, auth.role() as role, auth.jwt() as jwt')
  }), [{ uid: USER_B, role: 'anon', jwt: null }])
})

t.test('RLS on notes: each user reads and writes only their own rows, anon none; public_posts for everyone', async (t) => {
  const client = await connect(postgres.authenticatorUrl, t)
  const superuser = await connect(postgres.superuserUrl, t)
  const asA = <T>(fn: () => Promise<T>) => scoped(client, 'authenticated', claimsOf(USER_A), fn)
  const asB = <T>(fn: () => Promise<T>) => scoped(client, 'authenticated', claimsOf(USER_B), fn)
  const asAnon = <T>(fn: () => Promise<T>) => scoped(client, 'anon', null, fn)

  await asA(() => client.query("insert into public.notes (body) values ('a1'), ('a2')"))
  await asB(() => client.query("insert into public.notes (body) values ('b1')"))
  t.same(await rows(superuser, 'select user_id, body from public.notes order by id'),
    [{ user_id: USER_A, body: 'a1' }, { user_id: USER_A, body: 'a2' }, { user_id: USER_B, body: 'b1' }], 'user_id defaults to auth.uid()')

  t.same((await asA(() => rows(client, 'select body from public.notes order by id'))).map((row) => row.body), ['a1', 'a2'])
  t.same((await asB(() => rows(client, 'select body from public.notes order by id'))).map((row) => row.body), ['b1'])
  t.equal((await asB(() => client.query("update public.notes set body = 'taken' where body = 'a1'"))).rowCount, 0, "B cannot update A's note")
  t.equal((await asB(() => client.query("delete from public.notes where body = 'a2'"))).rowCount, 0, "B cannot delete A's note")
  await t.rejects(asB(() => client.query('insert into public.notes (user_id, body) values ($1, $2)', [USER_A, 'forged'])),
    { code: '42501', message: /row-level security/ }, 'B cannot write a note as A')
  t.equal((await asA(() => client.query("update public.notes set body = 'a1!' where body = 'a1'"))).rowCount, 1, 'A updates their own')

  t.same(await asAnon(() => rows(client, 'select * from public.notes')), [], 'anon sees no notes')
  await t.rejects(asAnon(() => client.query("insert into public.notes (body) values ('x')")), { code: '42501' }, 'anon cannot write')
  t.same(await asAnon(() => rows(client, 'select id, title from public.public_posts order by id')),
    [{ id: 1, title: 'Hello' }, { id: 2, title: 'Row Level Security' }], 'anon reads public_posts')
  t.equal((await asA(() => rows(client, 'select id from public.public_posts'))).length, 2, 'authenticated reads public_posts')
  t.same(await asAnon(() => rows(client, 'select public.whoami() as who')), [{ who: { role: 'anon', uid: null, claims: null } }])
})

t.test('after COMMIT or ROLLBACK the connection is authenticator again, with no claims', async (t) => {
  const client = await connect(postgres.authenticatorUrl, t)
  const state = () => rows(client, "select current_user, current_setting('request.jwt.claims', true) as claims")
  const clean = [{ current_user: 'authenticator', claims: '' }]
  // the next transaction that sets only a role (anon) finds none of the earlier claims
  const nextAnon = async () => {
    await client.query('begin')
    await client.query("select set_config('role', 'anon', true)")
    const seen = await rows(client, 'select auth.uid() as uid, auth.jwt() as jwt')
    await client.query('commit')
    return seen
  }

  t.same(await scoped(client, 'authenticated', claimsOf(USER_A), state), [{ current_user: 'authenticated', claims: JSON.stringify(claimsOf(USER_A)) }])
  t.same(await state(), clean, 'after COMMIT')
  t.same(await nextAnon(), [{ uid: null, jwt: null }])
  await t.rejects(scoped(client, 'authenticated', claimsOf(USER_A), () => client.query('select 1/0')), { code: '22012' })
  t.same(await state(), clean, 'after ROLLBACK')
  t.same(await nextAnon(), [{ uid: null, jwt: null }])
  // like Supabase's, the auth schema is for the three roles only: authenticator itself cannot call auth.uid()
  await t.rejects(client.query('select auth.uid()'), { code: '42501' })
})

t.test('Supabase Auth\'s sessions: deleting a user deletes its sessions; Auth\'s tables are no caller\'s', async (t) => {
  const admin = await connect(postgres.superuserUrl, t)
  const user = '00000000-0000-4000-8000-0000000000c1'
  await admin.query('insert into auth.users (id, email) values ($1, $2)', [user, 'c@example.com'])
  await admin.query("insert into auth.sessions (id, user_id, aal) values ('00000000-0000-4000-8000-0000000000d1', $1, 'aal1'), ('00000000-0000-4000-8000-0000000000d2', $1, 'aal2')", [user])
  t.same(await rows(admin, 'select count(*)::int as n from auth.sessions where user_id = $1', [user]), [{ n: 2 }])
  await admin.query('delete from auth.users where id = $1', [user])
  t.same(await rows(admin, 'select count(*)::int as n from auth.sessions where user_id = $1', [user]), [{ n: 0 }], 'cascaded')
  const client = await connect(postgres.authenticatorUrl, t)
  await t.rejects(scoped(client, 'authenticated', claimsOf(USER_A), () => rows(client, 'select id from auth.sessions')), { code: '42501' }, 'no grant to authenticated')
})

t.test('stop() ends the server (connections fail), start() brings it back on the same port with the same data', async (t) => {
  const before = await connect(postgres.superuserUrl, t)
  before.on('error', () => {}) // the server ends this connection: pg reports it here too
  const count = async (client: pg.Client) => Number((await rows(client, 'select count(*) from public.notes'))[0].count)
  const notes = await count(before)

  await postgres.stop()
  await t.rejects(before.query('select 1'), 'an open connection is ended')
  await t.rejects(connect(postgres.superuserUrl, t), { code: 'ECONNREFUSED' }, 'a new one is refused')
  await postgres.stop() // stopping a stopped server is a no-op

  await postgres.start()
  await postgres.start() // starting a running server is a no-op
  const after = await connect(postgres.superuserUrl, t)
  t.equal(await count(after), notes, 'the data folder survived the restart')
  const client = await connect(postgres.authenticatorUrl, t)
  t.same(await scoped(client, 'authenticated', claimsOf(USER_A), () => rows(client, 'select auth.uid() as uid')), [{ uid: USER_A }])
})
