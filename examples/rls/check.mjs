// Run by test/examples.test.ts against a throwaway PostgreSQL with Supabase's roles and the notes
// table: the server connects as authenticator (it may only SET ROLE to anon, authenticated and
// service_role); each user sees only their rows, a caller without a token sees none.
export default async function check (t, { issuer, start, postgres }) {
  const { authenticatorUrl } = await postgres()
  const api = await start('server.mjs', { DATABASE_URL: authenticatorUrl })
  const ada = issuer.sign()
  const bob = issuer.sign()
  const adaId = JSON.parse(Buffer.from(ada.split('.')[1], 'base64url')).sub

  async function post (token, body) {
    return api.request('/notes', { method: 'POST', token, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ body }) })
  }

  const created = await post(ada, 'ada 1')
  t.equal(created.status, 201, 'a user adds a note')
  t.equal(created.json().user_id, adaId, 'its user_id is auth.uid(): the token\'s sub')
  t.equal((await post(ada, 'ada 2')).status, 201)
  t.equal((await post(bob, "bob's'); delete from notes; --")).status, 201, 'a value is a parameter, never SQL')

  const mine = await api.request('/notes', { token: ada })
  t.equal(mine.status, 200)
  t.same(mine.json().map((note) => note.body), ['ada 1', 'ada 2'], 'ada sees her two notes only')
  const his = await api.request('/notes', { token: bob })
  t.same(his.json().map((note) => note.body), ["bob's'); delete from notes; --"], 'bob sees his one note only')

  const nobody = await api.request('/notes')
  t.equal(nobody.status, 200, 'no token on a route of users and anyone: runs as anon')
  t.same(nobody.json(), [], 'anon: no policy admits a note')

  const refused = await post(undefined, 'nobody')
  t.equal(refused.status, 401, 'adding a note needs a user')
  t.equal(refused.json().code, 'FST_SUPABASE_JWKS_NO_TOKEN')

  const posts = await api.request('/posts')
  t.same(posts.json().map((post) => post.title), ['Hello', 'Row Level Security'], 'public posts: readable by anon')

  t.notMatch(api.output(), /authenticator-test-password|postgres:\/\//, 'the connection string is never logged')
}
