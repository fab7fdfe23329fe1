// Run by test/examples.test.ts: aal2, anonymous users and a user_role check; 403 vs 401.
export default async function check (t, { issuer, start }) {
  const api = await start('server.mjs')
  const user = issuer.sign()
  const anonymous = issuer.sign({ is_anonymous: true })

  async function expectForbidden (route, token, label, method = 'GET') {
    const res = await api.request(route, { token, method })
    t.equal(res.status, 403, `${label}: 403`)
    t.equal(res.json().code, 'FST_SUPABASE_JWKS_FORBIDDEN')
    t.match(res.headers.get('www-authenticate'), /error="insufficient_scope"/)
  }

  t.equal((await api.request('/me', { token: user })).status, 200, 'a signed-in user: 200')
  await expectForbidden('/me', anonymous, 'an anonymous user, refused by the plugin-wide require')
  const cart = await api.request('/cart', { token: anonymous })
  t.equal(cart.status, 200, 'the route that lets anonymous users in: 200')
  t.equal(cart.json().anonymous, true)

  await expectForbidden('/billing', user, 'aal1 on an aal2 route')
  t.equal((await api.request('/billing', { token: issuer.sign({ aal: 'aal2' }) })).status, 200, 'aal2: 200')

  t.equal((await api.request('/posts/1', { method: 'DELETE', token: issuer.sign({ user_role: 'admin' }) })).status, 204, 'user_role admin: 204')
  await expectForbidden('/posts/1', issuer.sign({ user_role: 'editor' }), 'user_role editor', 'DELETE')
  await expectForbidden('/posts/1', user, 'no user_role', 'DELETE')

  const none = await api.request('/billing')
  t.equal(none.status, 401, 'no token is still 401, not 403')
  t.equal(none.json().code, 'FST_SUPABASE_JWKS_NO_TOKEN')
}
