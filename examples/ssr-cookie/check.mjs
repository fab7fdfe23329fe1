// Run by test/examples.test.ts: sign in through @supabase/ssr, then the session cookie signs requests
// in; a change needs the CSRF token too; the Authorization header still works.
/** name → value of the Set-Cookie headers of a response, merged into `jar` (a deletion removes). */
function keep (jar, response) {
  for (const line of response.headers.getSetCookie()) {
    const [pair] = line.split(';')
    const name = pair.slice(0, pair.indexOf('='))
    const value = pair.slice(pair.indexOf('=') + 1)
    if (value === '' || /max-age=0/i.test(line)) jar.delete(name)
    else jar.set(name, value)
  }
}
const cookie = (jar) => [...jar].map(([name, value]) => `${name}=${value}`).join('; ')

export default async function check (t, { issuer, start, node }) {
  issuer.addUser({ email: 'grace@example.com', password: 'pw', user_metadata: { name: 'Grace' } })
  const api = await start('server.mjs', { SUPABASE_PUBLISHABLE_KEY: issuer.apiKey })
  const json = { 'content-type': 'application/json' }

  const wrong = await api.request('/login', { method: 'POST', headers: json, body: JSON.stringify({ email: 'grace@example.com', password: 'no' }) })
  t.equal(wrong.status, 401, 'a wrong password: no session')
  const jar = new Map()
  const login = await fetch(`${api.url}/login`, { method: 'POST', headers: json, body: JSON.stringify({ email: 'grace@example.com', password: 'pw' }) })
  t.equal(login.status, 200)
  keep(jar, login)
  t.ok(jar.has('sb-127-auth-token'), 'the session cookie @supabase/ssr writes')
  t.match(login.headers.get('cache-control'), /private.*no-store/, 'never cached: the headers @supabase/ssr asks for')

  const me = await api.request('/api/me', { headers: { cookie: cookie(jar) } })
  t.equal(me.status, 200, 'the cookie signs the request in')
  t.equal(me.json().name, 'Grace')
  t.equal((await api.request('/api/me')).json().code, 'FST_SUPABASE_JWKS_NO_TOKEN', 'no cookie: 401')
  const header = await api.request('/api/me', { token: issuer.sign({ email: 'bearer@example.com' }), headers: { cookie: cookie(jar) } })
  t.equal(header.json().email, 'bearer@example.com', 'an Authorization header wins over the cookie')

  const keyless = await node(['server.mjs'], { SUPABASE_URL: 'https://abcdefgh.supabase.co', SUPABASE_PUBLISHABLE_KEY: undefined })
  t.equal(keyless.code, 1, 'a real project without a publishable key does not start')
  t.match(keyless.stderr, /set SUPABASE_PUBLISHABLE_KEY/)

  const forged = await api.request('/api/notes', { method: 'POST', headers: { ...json, cookie: cookie(jar) }, body: '{"text":"hi"}' })
  t.equal(forged.status, 403, 'the cookie alone cannot change state: what a cross-site form would send')
  t.equal(forged.json().code, 'FST_CSRF_MISSING_SECRET')
  const csrf = await fetch(`${api.url}/api/csrf`, { headers: { cookie: cookie(jar) } })
  keep(jar, csrf)
  const { token } = await csrf.json()
  const note = await api.request('/api/notes', { method: 'POST', headers: { ...json, cookie: cookie(jar), 'x-csrf-token': token }, body: '{"text":"hi"}' })
  t.equal(note.status, 201, 'cookie and CSRF token')
  t.equal(note.json().text, 'hi')
  const stale = await api.request('/api/notes', { method: 'POST', headers: { ...json, cookie: cookie(jar), 'x-csrf-token': 'nope' }, body: '{}' })
  t.equal(stale.json().code, 'FST_CSRF_INVALID_TOKEN', 'a wrong CSRF token: 403')
}
