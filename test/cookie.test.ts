import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { createServerClient } from '@supabase/ssr'
import WebSocket from 'ws'
import supabaseJwks from '../lib/index'
import type { TestIssuer } from '../lib/testing'
import { appFor, codeOf, issuerFor, registrationError } from './fixtures/helpers'

type Jar = Map<string, string>

/**
 * Signs in through @supabase/ssr's server client against the test issuer, as an SSR app's login
 * route does: the cookies it writes land in `jar` (name → value, as a browser would keep them).
 */
async function signIn (issuer: TestIssuer, email: string, password: string, options: { cookieEncoding?: 'raw' | 'base64url' } = {}): Promise<Jar> {
  const jar: Jar = new Map()
  const supabase = createServerClient(issuer.url, issuer.apiKey, {
    ...options,
    cookies: {
      getAll: () => [...jar].map(([name, value]) => ({ name, value })),
      setAll: (cookies) => {
        for (const { name, value, options } of cookies) {
          if (options.maxAge === 0 || value === '') jar.delete(name)
          else jar.set(name, value)
        }
      }
    },
    // Node 20 has no global WebSocket: supabase-js's realtime client needs one to be constructed
    realtime: { transport: WebSocket as never }
  })
  const { error } = await supabase.auth.signInWithPassword({ email, password })
  if (error) throw error
  return jar
}

/** The `Cookie` header a browser sends for `jar`. */
function cookieHeader (jar: Jar): string {
  return [...jar].map(([name, value]) => `${name}=${encodeURIComponent(value)}`).join('; ')
}

/** An app with @fastify/cookie and the plugin (`cookie: true` unless told), listening on 127.0.0.1. */
async function cookieApp (t: Parameters<typeof appFor>[0], issuer: TestIssuer, options: Partial<supabaseJwks.SupabaseJwksOptions> = {}): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify()
  await app.register(fastifyCookie)
  await appFor(t, { supabaseUrl: issuer.url, cookie: true, ...options }, app)
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, url }
}

/** `GET /me` over HTTP with these headers; the JSON answer and its status. */
async function me (url: string, headers: Record<string, string>) {
  const response = await fetch(`${url}/me`, { headers })
  return { status: response.status, body: await response.json() as Record<string, unknown>, headers: response.headers }
}

t.test('a session cookie written by @supabase/ssr signs its user in', async (t) => {
  const issuer = await issuerFor(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'correct horse', user_metadata: { name: 'Ada' } })
  const jar = await signIn(issuer, 'ada@example.com', 'correct horse')
  t.same([...jar.keys()], ['sb-127-auth-token'], 'one cookie, named after the project URL\'s first DNS label')
  t.match(jar.get('sb-127-auth-token'), /^base64-/, 'the default encoding')
  t.equal(issuer.tokenRequests, 1)
  const { url } = await cookieApp(t, issuer)
  const answer = await me(url, { cookie: cookieHeader(jar) })
  t.equal(answer.status, 200)
  t.equal(answer.body.sub, ada.id)
  t.equal(answer.body.email, 'ada@example.com')
  t.same(answer.body.user_metadata, { name: 'Ada' })
})

t.test('a session big enough to be chunked, and the raw encoding', async (t) => {
  const issuer = await issuerFor(t)
  const bio = 'x'.repeat(2000)
  const big = issuer.addUser({ email: 'big@example.com', password: 'pw', user_metadata: { bio } })
  const chunked = await signIn(issuer, 'big@example.com', 'pw')
  const names = [...chunked.keys()].sort()
  t.ok(names.length >= 2, `chunked: ${names.length} cookies`)
  t.same(names, names.map((_, i) => `sb-127-auth-token.${i}`), 'named .0, .1, … and no unsuffixed cookie')
  const { url } = await cookieApp(t, issuer)
  const answer = await me(url, { cookie: cookieHeader(chunked) })
  t.equal(answer.status, 200)
  t.equal(answer.body.sub, big.id)
  t.equal((answer.body.user_metadata as { bio: string }).bio, bio)

  const raw = await signIn(issuer, 'big@example.com', 'pw', { cookieEncoding: 'raw' })
  t.ok(raw.has('sb-127-auth-token.0') && raw.get('sb-127-auth-token.0')!.startsWith('{'), 'raw JSON, chunked')
  t.equal((await me(url, { cookie: cookieHeader(raw) })).body.sub, big.id)

  // a chunk lost (or one from another write): not a session, never half read
  const partial = new Map(chunked)
  partial.delete('sb-127-auth-token.1')
  const broken = await me(url, { cookie: cookieHeader(partial) })
  t.equal(broken.status, 401)
  t.equal(broken.body.code, 'FST_SUPABASE_JWKS_MALFORMED_COOKIE')
  t.equal(broken.headers.get('www-authenticate'),
    'Bearer realm="api", error="invalid_token", error_description="The session cookie is malformed"')
  // chunk .1 of another user's sign-in: the access token spans the chunks, so it no longer verifies
  issuer.addUser({ email: 'other@example.com', password: 'pw', user_metadata: { bio } })
  const other = await signIn(issuer, 'other@example.com', 'pw')
  const mixed = new Map(chunked)
  mixed.set('sb-127-auth-token.1', other.get('sb-127-auth-token.1')!)
  const two = await me(url, { cookie: cookieHeader(mixed) })
  t.equal(two.status, 401, 'chunks of two sign-ins')
  t.match(two.body.code, /^FST_SUPABASE_JWKS_(MALFORMED_COOKIE|TOKEN_INVALID)$/)
  mixed.set('sb-127-auth-token.1', raw.get('sb-127-auth-token.1')!)
  t.match((await me(url, { cookie: cookieHeader(mixed) })).body.message, /not base64url/, 'a raw chunk among base64 ones')
})

t.test('the Authorization header wins over the cookie', async (t) => {
  const issuer = await issuerFor(t)
  issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  const jar = await signIn(issuer, 'ada@example.com', 'pw')
  const { url } = await cookieApp(t, issuer)
  const other = issuer.sign({ sub: 'header-user' })
  t.equal((await me(url, { cookie: cookieHeader(jar), authorization: `Bearer ${other}` })).body.sub, 'header-user')
  const bad = await me(url, { cookie: cookieHeader(jar), authorization: 'Bearer' })
  t.equal(bad.status, 400, 'a malformed bearer header is answered, not passed over for the cookie')
  t.equal(bad.body.code, 'FST_SUPABASE_JWKS_BAD_REQUEST')
  const basic = await me(url, { cookie: cookieHeader(jar), authorization: 'Basic dXNlcjpwYXNz' })
  t.equal(basic.status, 200, 'another scheme is no bearer token: the cookie is read')
  const none = await me(url, { authorization: 'Basic dXNlcjpwYXNz' })
  t.equal(none.status, 401)
  t.equal(none.body.code, 'FST_SUPABASE_JWKS_NO_TOKEN')
  t.equal(none.headers.get('www-authenticate'), 'Bearer realm="api"')
  t.equal(none.body.message, 'Missing bearer token in the Authorization header or the sb-127-auth-token cookie', 'both places are named')
  t.equal((await me(url, {})).body.message, 'Missing bearer token in the Authorization header or the sb-127-auth-token cookie', 'no credential at all')
})

t.test('malformed, tampered and oversized cookies: a coded 401, never a 5xx', async (t) => {
  const issuer = await issuerFor(t)
  const { app, url } = await cookieApp(t, issuer)
  const name = 'sb-127-auth-token'
  const session = (value: unknown) => `base64-${Buffer.from(JSON.stringify(value)).toString('base64url')}`
  const token = issuer.sign({ sub: 'u-1' })
  const cases: Array<[string, string, string]> = [
    ['not base64url', 'base64-%%%', 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'],
    ['base64 of no JSON', `base64-${Buffer.from('{"access_token":').toString('base64url')}`, 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'],
    ['raw, no JSON', 'hello', 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'],
    ['JSON, not an object', session(42), 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'],
    ['JSON null', session(null), 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'],
    ['no access_token', session({ refresh_token: 'r' }), 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'],
    ['access_token not a string', session({ access_token: 7 }), 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'],
    ['empty access_token', session({ access_token: '' }), 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'],
    ['access_token no JWT', session({ access_token: 'abc' }), 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'],
    ['tampered access_token', session({ access_token: token.replace(/\.[^.]+\./, `.${Buffer.from(JSON.stringify({ sub: 'admin' })).toString('base64url')}.`) }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['access_token over maxTokenLength', session({ access_token: 'a'.repeat(20_000) }), 'FST_SUPABASE_JWKS_MALFORMED_TOKEN']
  ]
  for (const [what, value, code] of cases) {
    const answer = await app.inject({ method: 'GET', url: '/me', cookies: { [name]: value } })
    t.equal(answer.statusCode, 401, what)
    t.equal(codeOf(answer), code, what)
  }
  t.equal((await me(url, { cookie: `${name}=${session({ access_token: token })}` })).body.sub, 'u-1', 'the same shape, genuine')
  t.equal((await me(url, { cookie: `${name}=` })).body.code, 'FST_SUPABASE_JWKS_NO_TOKEN', 'an empty cookie is no session')

  // Node refuses headers over 16 KiB by default: past the HTTP layer, the plugin bounds them too
  const huge = await app.inject({ method: 'GET', url: '/me', cookies: { [name]: 'a'.repeat(70_000) } })
  t.equal(codeOf(huge), 'FST_SUPABASE_JWKS_MALFORMED_COOKIE')
  t.match(huge.json().message, /too large/)
  const manyBig = Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`${name}.${i}`, 'a'.repeat(3000)]))
  t.match((await app.inject({ method: 'GET', url: '/me', cookies: manyBig })).json().message, /too large/, 'chunks joined')
  const chunks = (count: number) => Object.fromEntries(Array.from({ length: count }, (_, i) => [`${name}.${i}`, 'a']))
  t.match((await app.inject({ method: 'GET', url: '/me', cookies: chunks(32) })).json().message, /not a session/, '32 chunks are read')
  const tooMany = await app.inject({ method: 'GET', url: '/me', cookies: chunks(33) })
  t.equal(codeOf(tooMany), 'FST_SUPABASE_JWKS_MALFORMED_COOKIE')
  t.match(tooMany.json().message, /too many chunks/, 'a 33rd is refused')
  t.equal(issuer.jwksRequests, 1, 'one fetch for the genuine token\'s key; none for the malformed cookies')
  t.equal(app.supabaseJwks.stats().rejected.FST_SUPABASE_JWKS_MALFORMED_COOKIE, 12, 'each refusal counted under its code: the eight cases, two too large, 32 and 33 chunks')
})

t.test('a cookie is never logged', async (t) => {
  const issuer = await issuerFor(t)
  issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  const jar = await signIn(issuer, 'ada@example.com', 'pw')
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'trace', stream: { write: (line: string) => { lines.push(line) } } } })
  await app.register(fastifyCookie)
  await appFor(t, { supabaseUrl: issuer.url, cookie: true }, app)
  const value = jar.get('sb-127-auth-token')!
  const token = JSON.parse(Buffer.from(value.slice('base64-'.length), 'base64url').toString()).access_token as string
  t.equal((await app.inject({ method: 'GET', url: '/me', headers: { cookie: cookieHeader(jar) } })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/me', cookies: { 'sb-127-auth-token': `${value.slice(0, 60)}!` } })).statusCode, 401)
  t.ok(lines.length > 4, 'requests were logged at trace')
  const log = lines.join('\n')
  t.notOk(log.includes(value.slice(7, 40)), 'no part of the cookie')
  t.notOk(log.includes(token.split('.')[2]!.slice(0, 20)), 'no part of the token')
})

t.test('cookie: { name }, cookie: false, and @fastify/cookie registered after the plugin or without its hook', async (t) => {
  const issuer = await issuerFor(t)
  const session = `base64-${Buffer.from(JSON.stringify({ access_token: issuer.sign({ sub: 'u-2' }) })).toString('base64url')}`
  const named = await cookieApp(t, issuer, { cookie: { name: 'my-app-session' } })
  t.equal((await me(named.url, { cookie: `my-app-session=${session}` })).body.sub, 'u-2')
  t.equal((await me(named.url, { cookie: `sb-127-auth-token=${session}` })).body.code, 'FST_SUPABASE_JWKS_NO_TOKEN')
  const inherited = await cookieApp(t, issuer, { cookie: { name: 'constructor' } })
  t.equal((await me(inherited.url, {})).body.code, 'FST_SUPABASE_JWKS_NO_TOKEN', 'a name of Object.prototype is no cookie')
  const off = await cookieApp(t, issuer, { cookie: false })
  t.equal((await me(off.url, { cookie: `sb-127-auth-token=${session}` })).body.code, 'FST_SUPABASE_JWKS_NO_TOKEN', 'off: cookies are not read')

  // the plugin's onRequest hook runs before @fastify/cookie's: the cookie is parsed with @fastify/cookie's parser
  const before = Fastify()
  t.teardown(() => before.close())
  await before.register(supabaseJwks, { supabaseUrl: issuer.url, cookie: true, hook: 'onRequest', warmStart: false })
  await before.register(fastifyCookie)
  before.get('/me', async (request) => request.user)
  await before.ready()
  const early = await before.inject({ method: 'GET', url: '/me', headers: { cookie: `sb-127-auth-token=${session}` } })
  t.equal(early.json().sub, 'u-2')
  t.equal((await before.inject({ method: 'GET', url: '/me' })).json().code, 'FST_SUPABASE_JWKS_NO_TOKEN', 'no Cookie header')

  const unhooked = Fastify()
  await unhooked.register(fastifyCookie, { hook: false })
  await appFor(t, { supabaseUrl: issuer.url, cookie: true }, unhooked)
  t.equal((await unhooked.inject({ method: 'GET', url: '/me', headers: { cookie: `sb-127-auth-token=${session}` } })).json().sub, 'u-2')
})

t.test('@fastify/cookie in an enclosing context serves the plugin in a child; in a child, not the plugin at the root', async (t) => {
  const issuer = await issuerFor(t)
  const session = `base64-${Buffer.from(JSON.stringify({ access_token: issuer.sign({ sub: 'u-3' }) })).toString('base64url')}`
  const root = Fastify()
  t.teardown(() => root.close())
  await root.register(fastifyCookie)
  await root.register(async function pages (child) {
    await child.register(supabaseJwks, { supabaseUrl: issuer.url, cookie: true, warmStart: false })
    child.get('/me', { preHandler: child.authenticate }, async (request) => request.user)
  })
  t.equal((await root.inject({ method: 'GET', url: '/me', headers: { cookie: `sb-127-auth-token=${session}` } })).json().sub, 'u-3')

  const inverted = Fastify()
  t.teardown(() => inverted.close())
  await inverted.register(supabaseJwks, { supabaseUrl: issuer.url, cookie: true, warmStart: false })
  await inverted.register(async function child (scope) { await scope.register(fastifyCookie) })
  await t.rejects(async () => { await inverted.ready() }, { code: 'FST_SUPABASE_JWKS_REGISTRATION', message: /same or an enclosing context/ })
})

t.test('cookie without @fastify/cookie, and bad cookie options, fail at registration', async (t) => {
  const issuer = await issuerFor(t)
  const missing = await registrationError({ supabaseUrl: issuer.url, cookie: true, warmStart: false })
  t.equal(missing.code, 'FST_SUPABASE_JWKS_REGISTRATION')
  t.match(missing.message, /register\(require\('@fastify\/cookie'\)\)/)
  const alone = await registrationError({ jwksUrl: issuer.jwksUrl, issuer: issuer.issuer, cookie: true })
  t.equal(alone.code, 'FST_SUPABASE_JWKS_OPTION')
  t.match(alone.message, /without it \(jwksUrl alone, or issuers\), give cookie: \{ name/)
  for (const cookie of [{ name: 'a b' }, { name: '' }, { name: 3 }, { names: 'x' }, 'yes', null, {}]) {
    const err = await registrationError({ supabaseUrl: issuer.url, cookie })
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', JSON.stringify(cookie))
    t.match(err.message, /cookie must be true, false or \{ name \}/)
  }
  t.match((await registrationError({ supabaseUrl: issuer.url, extractToken: 'query' })).message, /extractToken must be a function/)
  const self = await cookieApp(t, issuer, { cookie: { name: 'sb-abc-auth-token' }, jwksUrl: issuer.jwksUrl, supabaseUrl: undefined, issuer: issuer.issuer })
  t.ok(self.url, 'with jwksUrl alone, a named cookie is fine')
})

t.test('extractToken: any other place a token may come from', async (t) => {
  const issuer = await issuerFor(t)
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(line) } } } })
  await app.register(fastifyCookie)
  await appFor(t, {
    supabaseUrl: issuer.url,
    cookie: true,
    extractToken: (request) => {
      const query = request.query as Record<string, string>
      if (query.fail !== undefined) throw new Error('the extractor broke')
      if (query.coded !== undefined) throw Object.assign(new Error('coded'), { code: 'FST_SUPABASE_JWKS_FORBIDDEN' })
      if (query.later !== undefined) return Promise.resolve(query.later)
      return query.access_token
    }
  }, app)
  const token = issuer.sign({ sub: 'from-query' })
  const session = `base64-${Buffer.from(JSON.stringify({ access_token: issuer.sign({ sub: 'from-cookie' }) })).toString('base64url')}`
  const get = (url: string, headers: Record<string, string> = {}) => app.inject({ method: 'GET', url, headers })
  t.equal((await get(`/me?access_token=${token}`)).json().sub, 'from-query')
  t.equal((await get(`/me?later=${token}`)).json().sub, 'from-query', 'async')
  t.equal((await get(`/me?access_token=${token}`, { cookie: `sb-127-auth-token=${session}` })).json().sub, 'from-cookie', 'the cookie first')
  t.equal((await get(`/me?access_token=${token}`, { authorization: `Bearer ${issuer.sign({ sub: 'from-header' })}` })).json().sub, 'from-header', 'the header first')
  const none = await get('/me')
  t.equal(none.statusCode, 401)
  t.equal(codeOf(none), 'FST_SUPABASE_JWKS_NO_TOKEN')
  t.equal(none.json().message, 'Missing bearer token in the Authorization header, the sb-127-auth-token cookie or extractToken\'s result')
  t.equal(codeOf(await get('/me?later=')), 'FST_SUPABASE_JWKS_NO_TOKEN', 'an empty token is none')
  const broke = await get('/me?fail=1')
  t.equal(broke.statusCode, 401)
  t.equal(codeOf(broke), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.notMatch(broke.body, /extractor broke/)
  t.match(lines.join(''), /extractor broke/, 'the throw is logged at warn')
  const coded = await get('/me?coded=1')
  t.equal(coded.statusCode, 401, 'an error carrying one of the plugin\'s codes is still a 401')
  t.equal(codeOf(coded), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.equal(codeOf(await get(`/me?access_token=${'a'.repeat(17_000)}`)), 'FST_SUPABASE_JWKS_MALFORMED_TOKEN', 'bounded like a header')

  const alone = await appFor(t, { supabaseUrl: issuer.url, extractToken: () => null })
  const nothing = await alone.inject({ method: 'GET', url: '/me' })
  t.equal(codeOf(nothing), 'FST_SUPABASE_JWKS_NO_TOKEN', 'null is no token')
  t.equal(nothing.json().message, 'Missing bearer token in the Authorization header or extractToken\'s result')
  const longest = Fastify()
  await longest.register(fastifyCookie)
  await appFor(t, { supabaseUrl: issuer.url, cookie: { name: 'n'.repeat(128) }, extractToken: () => undefined }, longest)
  const bounded = (await longest.inject({ method: 'GET', url: '/me', headers: { authorization: 'Basic dXNlcjpwYXNz' } })).json().message as string
  t.ok(bounded.includes('n'.repeat(128)) && bounded.length < 250, `bounded by the longest cookie name allowed: ${bounded.length} characters`)
})

t.test('the CSRF layout of docs/session-cookies.md: the cookie in one sibling context, the header only in the other', async (t) => {
  const issuer = await issuerFor(t)
  const session = `base64-${Buffer.from(JSON.stringify({ access_token: issuer.sign({ sub: 'u-4' }) })).toString('base64url')}`
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyCookie)
  app.register(async function pages (scope) {
    await scope.register(supabaseJwks, { supabaseUrl: issuer.url, cookie: true, warmStart: false })
    scope.get('/api/profile', { preHandler: scope.authenticate }, async (request) => request.user)
  })
  app.register(async function writes (scope) {
    await scope.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
    scope.post('/api/orders', { preHandler: scope.authenticate }, async (request) => ({ by: request.user.sub }))
  })
  const cookie = `sb-127-auth-token=${session}`
  t.equal((await app.inject({ method: 'GET', url: '/api/profile', headers: { cookie } })).json().sub, 'u-4')
  const write = await app.inject({ method: 'POST', url: '/api/orders', headers: { cookie } })
  t.equal(write.statusCode, 401, 'the cookie alone does not reach a state-changing route')
  t.equal(codeOf(write), 'FST_SUPABASE_JWKS_NO_TOKEN')
  t.equal((await app.inject({ method: 'POST', url: '/api/orders', headers: { authorization: `Bearer ${issuer.sign({ sub: 'u-4' })}` } })).json().by, 'u-4')
})

t.test('cookie with several issuers: the name is given, and the cookie\'s token is routed by its iss', async (t) => {
  const one = await issuerFor(t)
  const two = await issuerFor(t)
  const err = await registrationError({ issuers: [{ supabaseUrl: one.url }, { supabaseUrl: two.url }], cookie: true })
  t.match(err.message, /without it \(jwksUrl alone, or issuers\), give cookie: \{ name/)
  const app = Fastify()
  await app.register(fastifyCookie)
  await appFor(t, { issuers: [{ supabaseUrl: one.url }, { supabaseUrl: two.url }], cookie: { name: 'sb-app-auth-token' } }, app)
  const session = (token: string) => `base64-${Buffer.from(JSON.stringify({ access_token: token })).toString('base64url')}`
  for (const [issuer, sub] of [[one, 'from-one'], [two, 'from-two']] as const) {
    const answer = await app.inject({ method: 'GET', url: '/me', cookies: { 'sb-app-auth-token': session(issuer.sign({ sub })) } })
    t.equal(answer.json().sub, sub)
    t.equal(answer.json().iss, issuer.issuer)
  }
})
