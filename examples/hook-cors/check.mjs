// Run by test/examples.test.ts: hook mode with public routes, and CORS for a browser app.
const ORIGIN = 'https://app.example.com'

export default async function check (t, { issuer, start }) {
  const api = await start('server.mjs', { CORS_ORIGINS: ORIGIN })
  const token = issuer.sign({ sub: 'user-1' })

  const preflight = await api.request('/api/me', {
    method: 'OPTIONS',
    headers: { origin: ORIGIN, 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' }
  })
  t.equal(preflight.status, 204, 'a preflight needs no token')
  t.equal(preflight.headers.get('access-control-allow-origin'), ORIGIN)
  t.match(preflight.headers.get('access-control-allow-headers'), /authorization/)

  const denied = await api.request('/api/me', { headers: { origin: ORIGIN } })
  t.equal(denied.status, 401, 'a protected route without a token: 401')
  t.equal(denied.json().code, 'FST_SUPABASE_JWKS_NO_TOKEN')
  t.equal(denied.headers.get('access-control-allow-origin'), ORIGIN, 'the 401 carries the CORS headers: the browser app can read it')
  t.match(denied.headers.get('access-control-expose-headers'), /www-authenticate/)

  const me = await api.request('/api/me', { token, headers: { origin: ORIGIN } })
  t.equal(me.status, 200)
  t.equal(me.json().id, 'user-1')
  t.equal((await api.request('/api/posts', { method: 'POST', token })).status, 201, 'POST /api/posts with a token: 201')
  t.equal((await api.request('/api/posts', { method: 'POST' })).status, 401, 'POST /api/posts without: 401')

  t.equal((await api.request('/api/posts')).status, 200, 'a route that opts out is public')
  t.equal((await api.request('/health')).status, 200, 'a route outside the protected context is public')

  const stranger = await api.request('/api/posts', { headers: { origin: 'https://evil.example' } })
  t.equal(stranger.headers.get('access-control-allow-origin'), null, 'another origin gets no CORS grant')
}
