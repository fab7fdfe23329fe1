// Run by test/examples.test.ts: the demo API against the test's issuer.
export default async function check (t, { issuer, start }) {
  const api = await start('server.js')

  t.equal((await api.request('/')).status, 200, 'GET / is public')

  const me = await api.request('/me', { token: issuer.sign({ email: 'ada@example.com', aal: 'aal2' }) })
  t.equal(me.status, 200, 'a valid token: 200')
  t.match(me.json(), { email: 'ada@example.com', role: 'authenticated', aal: 'aal2' })

  const none = await api.request('/me')
  t.equal(none.status, 401, 'no token: 401')
  t.equal(none.json().code, 'FST_SUPABASE_JWKS_NO_TOKEN')
  t.match(none.headers.get('www-authenticate'), /^Bearer realm="api"/)

  const expired = await api.request('/me', { token: issuer.sign({ exp: Math.floor(Date.now() / 1000) - 60 }) })
  t.equal(expired.status, 401, 'an expired token: 401')
  t.equal(expired.json().code, 'FST_SUPABASE_JWKS_TOKEN_EXPIRED')

  t.match(api.output(), `Verifying tokens of ${issuer.url}`, 'with SUPABASE_URL set, no local issuer is started')
}
