import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { request as httpRequest } from 'node:http'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import supabaseJwks from '../lib/index'
import type { TestIssuer } from '../lib/testing'
import { issuerFor } from './fixtures/helpers'

/*
 * The requirement `auth` over real HTTP (the app listens on 127.0.0.1, requests go through fetch):
 * every mode, lists in both orders, what falls through and what is refused.
 */

const key = (prefix: string) => `${prefix}${randomBytes(24).toString('base64url')}`
const PUBLISHABLE = key('sb_publishable_')
const WEB = key('sb_publishable_')
const SECRET = key('sb_secret_')
const CRON = key('sb_secret_')
const CHALLENGE = 'Bearer realm="api"'

/** What each route answers: who called, and the user's `sub` (or null). */
function whoCalled (request: FastifyRequest) {
  return { auth: request.supabaseAuth, sub: request.supabaseAuth?.mode === 'user' ? request.user.sub : request.user }
}

const ROUTES: Record<string, supabaseJwks.Requirements['auth']> = {
  '/user': 'user',
  '/optional': ['user', 'none'],
  '/publishable': 'publishable',
  '/web': 'publishable:web',
  '/any-publishable': 'publishable:*',
  '/secret': 'secret',
  '/cron': 'secret:cron',
  '/any-secret': 'secret:*',
  '/user-or-secret': ['user', 'secret'],
  '/secret-or-user': ['secret', 'user'],
  '/keys': ['secret', 'publishable'],
  '/none': 'none'
}

interface Answer { status: number, body: Record<string, unknown>, challenge: string | null }

/** An app listening on 127.0.0.1 with a route per mode (and `/me`, with no requirement), and a way to call it. */
async function listening (t: Test, issuer: TestIssuer, options: Partial<supabaseJwks.SupabaseJwksOptions> = {}) {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, {
    supabaseUrl: issuer.url,
    warmStart: false,
    publishableKeys: { default: PUBLISHABLE, web: WEB },
    secretKeys: { default: SECRET, cron: CRON },
    ...options
  })
  app.get('/me', { preHandler: app.authenticate }, async (request) => whoCalled(request))
  for (const [url, auth] of Object.entries(ROUTES)) {
    app.get(url, { preHandler: app.authenticate, config: { supabaseJwks: { auth } } }, async (request) => whoCalled(request))
  }
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  async function call (url: string, headers: Record<string, string> = {}): Promise<Answer> {
    const response = await fetch(`${base}${url}`, { headers })
    return { status: response.status, body: await response.json() as Record<string, unknown>, challenge: response.headers.get('www-authenticate') }
  }
  return { app, base, call }
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const apikey = (value: string) => ({ apikey: value })

t.test('each mode lets in its own credential, and says who called', async (t) => {
  const issuer = await issuerFor(t)
  const { call } = await listening(t, issuer)
  const token = issuer.sign({ sub: 'ada' })
  const cases: Array<[string, Record<string, string>, unknown, unknown]> = [
    ['/user', bearer(token), { mode: 'user' }, 'ada'],
    ['/optional', bearer(token), { mode: 'user' }, 'ada'],
    ['/optional', {}, { mode: 'none' }, null],
    ['/publishable', apikey(PUBLISHABLE), { mode: 'publishable', keyName: 'default' }, null],
    ['/web', apikey(WEB), { mode: 'publishable', keyName: 'web' }, null],
    ['/any-publishable', apikey(WEB), { mode: 'publishable', keyName: 'web' }, null],
    ['/any-publishable', apikey(PUBLISHABLE), { mode: 'publishable', keyName: 'default' }, null],
    ['/secret', apikey(SECRET), { mode: 'secret', keyName: 'default' }, null],
    ['/cron', apikey(CRON), { mode: 'secret', keyName: 'cron' }, null],
    ['/any-secret', apikey(CRON), { mode: 'secret', keyName: 'cron' }, null],
    ['/any-secret', apikey(SECRET), { mode: 'secret', keyName: 'default' }, null],
    ['/user-or-secret', bearer(token), { mode: 'user' }, 'ada'],
    ['/user-or-secret', apikey(SECRET), { mode: 'secret', keyName: 'default' }, null],
    ['/none', {}, { mode: 'none' }, null],
    ['/me', bearer(token), { mode: 'user' }, 'ada']
  ]
  for (const [url, headers, auth, sub] of cases) {
    const answer = await call(url, headers)
    t.same([answer.status, answer.body], [200, { auth, sub }], `${url} with ${Object.keys(headers).join(', ') || 'nothing'}`)
    t.equal(answer.challenge, null, 'no challenge on a 200')
  }
})

t.test('a list is tried in order: the first credential present decides', async (t) => {
  const issuer = await issuerFor(t)
  const { call } = await listening(t, issuer)
  const both = { ...bearer(issuer.sign({ sub: 'ada' })), ...apikey(SECRET) }
  t.same((await call('/user-or-secret', both)).body.auth, { mode: 'user' })
  t.same((await call('/secret-or-user', both)).body.auth, { mode: 'secret', keyName: 'default' })
  // an apikey that matches no key of a mode lets the next mode try
  t.same((await call('/keys', apikey(PUBLISHABLE))).body.auth, { mode: 'publishable', keyName: 'default' })
  t.same((await call('/secret-or-user', { ...bearer(issuer.sign({ sub: 'ada' })), ...apikey(PUBLISHABLE) })).body, { auth: { mode: 'user' }, sub: 'ada' })
  // 'none' lets anyone in, whatever the Authorization header holds: it is not this route's credential
  const none = await call('/none', bearer('not.a.token'))
  t.same([none.status, none.body.auth], [200, { mode: 'none' }])
})

t.test('a user token that is present but invalid is refused, never passed on to the next mode', async (t) => {
  const issuer = await issuerFor(t)
  const { call } = await listening(t, issuer)
  const expired = issuer.sign({ exp: Math.floor(Date.now() / 1000) - 60 })
  const valid = issuer.sign()
  const tampered = valid.slice(0, -4) + (valid.endsWith('AAAA') ? 'BBBB' : 'AAAA')
  const cases: Array<[string, Record<string, string>, number, string, string]> = [
    ['/optional', bearer(expired), 401, 'FST_SUPABASE_JWKS_TOKEN_EXPIRED', 'The token has expired'],
    ['/optional', bearer(tampered), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', 'The token is invalid'],
    ['/optional', { authorization: 'Bearer two tokens' }, 400, 'FST_SUPABASE_JWKS_BAD_REQUEST', 'Malformed Authorization header'],
    ['/user-or-secret', { ...bearer(tampered), ...apikey(SECRET) }, 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', 'The token is invalid']
  ]
  for (const [url, headers, status, code, description] of cases) {
    const answer = await call(url, headers)
    t.same([answer.status, answer.body.code], [status, code], `${url}: ${code}`)
    t.equal(answer.challenge, `${CHALLENGE}, error="${status === 400 ? 'invalid_request' : 'invalid_token'}", error_description="${description}"`)
  }
})

t.test('a bearer that is an API key is no user token on a route that admits others: supabase-js sends its key so when signed out', async (t) => {
  const issuer = await issuerFor(t)
  const { call } = await listening(t, issuer)
  const anon = issuer.signLegacy({ role: 'anon', iss: 'supabase', sub: undefined, aud: undefined, email: undefined })
  const cases: Array<[string, Record<string, string>, unknown]> = [
    ['/optional', bearer(PUBLISHABLE), { mode: 'none' }],
    ['/optional', { ...bearer(PUBLISHABLE), ...apikey(PUBLISHABLE) }, { mode: 'none' }],
    // the legacy anon key is a JWT: what makes it no user token is that it is the apikey too
    ['/optional', { ...bearer(anon), ...apikey(anon) }, { mode: 'none' }],
    ['/user-or-secret', { ...bearer(SECRET), ...apikey(SECRET) }, { mode: 'secret', keyName: 'default' }],
    ['/user-or-secret', { authorization: `bearer   ${SECRET}`, ...apikey(SECRET) }, { mode: 'secret', keyName: 'default' }]
  ]
  for (const [url, headers, auth] of cases) {
    const answer = await call(url, headers)
    t.same([answer.status, answer.body], [200, { auth, sub: null }], `${url}: ${JSON.stringify(auth)}`)
  }
  // the legacy anon key alone, as a bearer: verified as a user token, and refused with the reason
  const alone = await call('/optional', bearer(anon))
  t.same([alone.status, alone.body.code], [401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED'])
  t.match(alone.body.message, /legacy anon or service_role API key/)
  // routes of users only keep their answer to an sb_ bearer
  for (const url of ['/user', '/me']) {
    const answer = await call(url, { ...bearer(PUBLISHABLE), ...apikey(PUBLISHABLE) })
    t.same([answer.status, answer.body.code], [401, 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'], url)
  }
  // an sb_ key as the bearer alone, where no mode took it: said so
  const misplaced = await call('/user-or-secret', bearer(SECRET))
  t.same([misplaced.status, misplaced.body.code], [401, 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'])
  t.match(misplaced.body.message, /send API keys in the apikey header/)
  t.notMatch(misplaced.body.message, SECRET)
  const empty = await call('/user-or-secret', { ...bearer(SECRET), apikey: '' })
  t.same([empty.status, empty.body.code], [401, 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'], 'an empty apikey is none')
})

t.test('when no mode lets the request in, the answer says what was wrong', async (t) => {
  const issuer = await issuerFor(t)
  const { call } = await listening(t, issuer)
  const cases: Array<[string, Record<string, string>, string, string | null, RegExp]> = [
    ['/secret', apikey(PUBLISHABLE), 'FST_SUPABASE_JWKS_INVALID_API_KEY', null, /holds no key this route accepts/],
    ['/secret', apikey(CRON), 'FST_SUPABASE_JWKS_INVALID_API_KEY', null, /holds no key this route accepts/],
    ['/cron', apikey(SECRET), 'FST_SUPABASE_JWKS_INVALID_API_KEY', null, /holds no key/],
    ['/web', apikey(PUBLISHABLE), 'FST_SUPABASE_JWKS_INVALID_API_KEY', null, /holds no key/],
    ['/keys', apikey(key('sb_secret_')), 'FST_SUPABASE_JWKS_INVALID_API_KEY', null, /holds no key/],
    ['/user-or-secret', apikey(PUBLISHABLE), 'FST_SUPABASE_JWKS_INVALID_API_KEY', null, /holds no key/],
    ['/secret', {}, 'FST_SUPABASE_JWKS_NO_API_KEY', null, /^Missing API key in the apikey header$/],
    ['/secret', bearer(issuer.sign()), 'FST_SUPABASE_JWKS_NO_API_KEY', null, /Missing API key/],
    ['/user-or-secret', {}, 'FST_SUPABASE_JWKS_NO_TOKEN', CHALLENGE, /^Missing bearer token in the Authorization header, or an API key in the apikey header$/],
    ['/user-or-secret', { authorization: 'Basic YTpi' }, 'FST_SUPABASE_JWKS_NO_TOKEN', CHALLENGE, /Missing bearer token/]
  ]
  for (const [url, headers, code, challenge, message] of cases) {
    const answer = await call(url, headers)
    t.same([answer.status, answer.body.code, answer.challenge], [401, code, challenge], `${url}: ${code}`)
    t.match(answer.body.message, message)
  }
})

t.test('an optional route called without a credential: the handler runs, request.user is null, no challenge', async (t) => {
  const issuer = await issuerFor(t)
  const { call } = await listening(t, issuer)
  for (const headers of [{}, apikey(PUBLISHABLE), apikey(key('sb_publishable_')), { apikey: '' }]) {
    const answer = await call('/optional', headers)
    t.same([answer.status, answer.body, answer.challenge], [200, { auth: { mode: 'none' }, sub: null }, null])
  }
})

/** `GET url` over a connection of its own with raw headers (repeats included), as no fetch sends them. */
function rawGet (base: string, url: string, headers: Array<[string, string | string[]]>): Promise<{ status: number, body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(`${base}${url}`, { agent: false }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.once('end', () => resolve({ status: response.statusCode!, body: JSON.parse(Buffer.concat(chunks).toString()) }))
    })
    for (const [name, value] of headers) request.setHeader(name, value)
    request.once('error', reject).end()
  })
}

t.test('hostile apikey values are refused with a 401, never a 500', async (t) => {
  const issuer = await issuerFor(t)
  const { app, base, call } = await listening(t, issuer)
  const huge = 'sb_secret_' + 'x'.repeat(12_000)
  const values: Array<[string, string | string[]]> = [
    ['huge', huge],
    ['just over the longest key', SECRET + 'x'.repeat(1024)],
    ['latin-1', `${SECRET}\u00e9`],
    ['UTF-8 bytes read as latin-1', Buffer.from(`${SECRET}é`, 'utf8').toString('latin1')],
    ['the key twice, in one header', `${SECRET}, ${SECRET}`],
    ['repeated', [SECRET, SECRET]],
    ['repeated, the first right', [SECRET, 'x']]
  ]
  for (const [what, value] of values) {
    const answer = await rawGet(base, '/secret', [['apikey', value]])
    t.same([answer.status, answer.body.code], [401, 'FST_SUPABASE_JWKS_INVALID_API_KEY'], what)
    const optional = await rawGet(base, '/optional', [['apikey', value]])
    t.same([optional.status, optional.body.auth], [200, { mode: 'none' }], `${what}, on an optional route`)
  }
  // as an array, as inject (or another framework) may hand it over: no match, not a crash
  const injected = await app.inject({ url: '/secret', headers: { apikey: [SECRET, SECRET] as unknown as string } })
  t.same([injected.statusCode, injected.json().code], [401, 'FST_SUPABASE_JWKS_INVALID_API_KEY'])
  // spaces around the value are not part of it (HTTP drops them): the key still matches
  t.equal((await rawGet(base, '/secret', [['apikey', `  ${SECRET}  `]])).status, 200)
  t.equal((await call('/secret', apikey(SECRET))).status, 200, 'and the right key still gets in')
})

t.test('the other requirements are for users: a key or none passes them, a user that fails them is refused', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, secretKeys: SECRET })
  let checked = 0
  const supabaseJwksConfig = { auth: ['user', 'secret', 'none'] as supabaseJwks.AuthMode[], aal: 'aal2' as const, anonymous: false, check: () => { checked++; return true } }
  app.get('/strict', { preHandler: app.authenticate, config: { supabaseJwks: supabaseJwksConfig } }, async (request) => whoCalled(request))
  const call = (headers: Record<string, string>) => app.inject({ url: '/strict', headers })
  t.same((await call(apikey(SECRET))).json().auth, { mode: 'secret', keyName: 'default' })
  t.same((await call({})).json().auth, { mode: 'none' })
  t.equal(checked, 0, 'check is not called for a key or for none')
  const weak = await call(bearer(issuer.sign({ aal: 'aal1' })))
  t.same([weak.statusCode, weak.json().code], [403, 'FST_SUPABASE_JWKS_FORBIDDEN'], 'aal1: refused, not let in as none')
  t.same((await call(bearer(issuer.sign({ aal: 'aal2' })))).json().auth, { mode: 'user' })
  t.equal(checked, 1)
})

t.test('a token the token cache holds is let in at once, and a route\'s requirements still apply to it', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  const optional = ['user', 'none'] as supabaseJwks.AuthMode[]
  const routes: Array<[string, supabaseJwks.Requirements, number]> = [
    ['/plain', { auth: optional }, 200],
    ['/members', { auth: optional, anonymous: false }, 403],
    ['/checked', { auth: optional, check: (user) => user.email === 'ada@example.com' }, 403],
    ['/elsewhere', { auth: optional, issuers: [issuer.issuer] }, 200],
    ['/mfa', { auth: optional, aal: 'aal2' }, 403],
    ['/scoped', { auth: optional, scope: 'mcp:tools' }, 403],
    ['/read', { auth: optional, scope: 'read' }, 200]
  ]
  for (const [url, supabaseJwks] of routes) app.get(url, { preHandler: app.authenticate, config: { supabaseJwks } }, async (request) => whoCalled(request))
  const token = issuer.sign({ sub: 'ada', is_anonymous: true, email: 'someone@example.com', aal: 'aal1', scope: 'read' })
  // the third time a token comes, it is answered from the token cache
  for (let i = 0; i < 3; i++) {
    for (const [url, , status] of routes) t.equal((await app.inject({ url, headers: bearer(token) })).statusCode, status, `${url}, time ${i + 1}`)
  }
  t.ok(app.supabaseJwks.stats().tokenCacheHits >= routes.length, 'the last round came from the token cache')
  t.equal(app.supabaseJwks.stats().accepted, 9)
})

t.test('isRevoked applies to users only, and a revoked token is not let in as none', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  let asked = 0
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, isRevoked: (claims) => { asked++; return claims.session_id === 'gone' } })
  app.get('/optional', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'none'] } } }, async (request) => whoCalled(request))
  const revoked = await app.inject({ url: '/optional', headers: bearer(issuer.sign({ session_id: 'gone' })) })
  t.same([revoked.statusCode, revoked.json().code], [401, 'FST_SUPABASE_JWKS_TOKEN_REVOKED'])
  t.same((await app.inject({ url: '/optional' })).json().auth, { mode: 'none' })
  t.equal(asked, 1)
})

t.test('hook: the require option sets auth for every route, a route overrides it', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, hook: 'onRequest', secretKeys: { cron: CRON }, require: { auth: ['user', 'none'] } })
  app.get('/feed', async (request) => whoCalled(request))
  app.get('/account', { config: { supabaseJwks: { auth: 'user' } } }, async (request) => whoCalled(request))
  app.post('/jobs', { config: { supabaseJwks: { auth: 'secret:cron' } } }, async (request) => whoCalled(request))
  t.same((await app.inject({ url: '/feed' })).json(), { auth: { mode: 'none' }, sub: null })
  t.same((await app.inject({ url: '/feed', headers: bearer(issuer.sign({ sub: 'ada' })) })).json(), { auth: { mode: 'user' }, sub: 'ada' })
  const account = await app.inject({ url: '/account' })
  t.same([account.statusCode, account.json().code, account.headers['www-authenticate']], [401, 'FST_SUPABASE_JWKS_NO_TOKEN', CHALLENGE])
  t.same((await app.inject({ method: 'POST', url: '/jobs', headers: apikey(CRON) })).json().auth, { mode: 'secret', keyName: 'cron' })
  t.equal((await app.inject({ method: 'POST', url: '/jobs' })).json().code, 'FST_SUPABASE_JWKS_NO_API_KEY')
})

t.test('stats: users in accepted, keys and none apart, refusals by their code', async (t) => {
  const issuer = await issuerFor(t)
  const { app, call } = await listening(t, issuer)
  await call('/optional')
  await call('/optional', bearer(issuer.sign()))
  await call('/secret', apikey(SECRET))
  await call('/any-publishable', apikey(WEB))
  await call('/secret', apikey(PUBLISHABLE))
  await call('/secret')
  await call('/user-or-secret')
  const stats = app.supabaseJwks.stats()
  t.same([stats.accepted, stats.acceptedApiKeys, stats.acceptedNone], [1, 2, 1])
  t.equal(stats.rejected.FST_SUPABASE_JWKS_INVALID_API_KEY, 1)
  t.equal(stats.rejected.FST_SUPABASE_JWKS_NO_API_KEY, 1)
  t.equal(stats.rejected.FST_SUPABASE_JWKS_NO_TOKEN, 1)
})

t.test('with the session cookie or extractToken, an ignored bearer leaves them to be read; their own failures are refused', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, {
    supabaseUrl: issuer.url,
    warmStart: false,
    publishableKeys: PUBLISHABLE,
    extractToken: async (request) => {
      const given = request.headers['x-token']
      if (given === 'throw') throw new Error('a bug')
      return given as string | undefined
    }
  })
  app.get('/optional', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'none'] } } }, async (request) => whoCalled(request))
  app.get('/either', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'publishable'] } } }, async (request) => whoCalled(request))
  const call = (url: string, headers: Record<string, string>) => app.inject({ url, headers })
  const token = issuer.sign({ sub: 'ada' })
  t.same((await call('/optional', { ...bearer(PUBLISHABLE), ...apikey(PUBLISHABLE), 'x-token': token })).json(), { auth: { mode: 'user' }, sub: 'ada' })
  t.same((await call('/optional', { ...bearer(PUBLISHABLE), ...apikey(PUBLISHABLE) })).json(), { auth: { mode: 'none' }, sub: null })
  t.same((await call('/either', apikey(PUBLISHABLE))).json().auth, { mode: 'publishable', keyName: 'default' }, 'extractToken found none: the next mode')
  const thrown = await call('/optional', { 'x-token': 'throw' })
  t.same([thrown.statusCode, thrown.json().code], [401, 'FST_SUPABASE_JWKS_TOKEN_INVALID'], 'extractToken threw: refused, not none')
  const missing = await call('/either', {})
  t.equal(missing.json().message, 'Missing bearer token in the Authorization header or extractToken\'s result, or an API key in the apikey header')
})

t.test('the session cookie: read when the bearer is an API key; a malformed one is refused', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register((await import('@fastify/cookie')).default)
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, cookie: true })
  app.get('/optional', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'none'] } } }, async (request) => whoCalled(request))
  const name = 'sb-127-auth-token'
  const session = `base64-${Buffer.from(JSON.stringify({ access_token: issuer.sign({ sub: 'ada' }) })).toString('base64url')}`
  const call = (headers: Record<string, string>) => app.inject({ url: '/optional', headers })
  t.same((await call({ ...bearer(PUBLISHABLE), ...apikey(PUBLISHABLE), cookie: `${name}=${session}` })).json(), { auth: { mode: 'user' }, sub: 'ada' })
  t.same((await call({ cookie: 'other=1' })).json().auth, { mode: 'none' })
  const malformed = await call({ cookie: `${name}=base64-!!!` })
  t.same([malformed.statusCode, malformed.json().code], [401, 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'])
})

t.test('a signed-out supabase-js client on an optional route: the handler runs with request.user null', async (t) => {
  const { createClient } = await import('@supabase/supabase-js')
  const { default: WebSocket } = await import('ws')
  const issuer = await issuerFor(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  // the app stands where supabase-js sends function calls and queries: /functions/v1/<name>, /rest/v1/<table>
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  const seen: Array<{ authorization?: string, apikey?: string }> = []
  const optional = { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'none'] as supabaseJwks.AuthMode[] } } }
  const handler = async (request: FastifyRequest) => {
    seen.push({ authorization: request.headers.authorization, apikey: request.headers.apikey as string })
    return whoCalled(request)
  }
  app.get('/functions/v1/hello', optional, handler)
  app.get('/rest/v1/todos', optional, handler)
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  const client = (apiKey: string, options: Record<string, unknown> = {}) =>
    createClient(base, apiKey, { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: WebSocket as never }, ...options })

  // signed out, with the publishable key: functions get the apikey alone, queries the key as the bearer too
  const signedOut = client(issuer.apiKey)
  const invoked = await signedOut.functions.invoke('hello', { method: 'GET' })
  t.error(invoked.error)
  t.same(invoked.data, { auth: { mode: 'none' }, sub: null })
  const queried = await signedOut.from('todos').select()
  t.error(queried.error)
  t.same(queried.data, { auth: { mode: 'none' }, sub: null })
  t.same(seen, [{ apikey: issuer.apiKey }, { authorization: `Bearer ${issuer.apiKey}`, apikey: issuer.apiKey }], 'what supabase-js sent')

  // with the legacy anon key (a JWT): sent as the bearer and as the apikey, everywhere
  const anon = issuer.signLegacy({ role: 'anon', iss: 'supabase', sub: undefined, aud: undefined, email: undefined })
  const legacy = await client(anon).functions.invoke('hello', { method: 'GET' })
  t.same(legacy.data, { auth: { mode: 'none' }, sub: null })
  t.same(seen.at(-1), { authorization: `Bearer ${anon}`, apikey: anon })

  // signed in (against the issuer), the session's access token: the user
  const auth = createClient(issuer.url, issuer.apiKey, { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: WebSocket as never } })
  const { data } = await auth.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' })
  const signedIn = client(issuer.apiKey, { accessToken: async () => data.session!.access_token })
  const mine = await signedIn.functions.invoke('hello', { method: 'GET' })
  t.same(mine.data, { auth: { mode: 'user' }, sub: ada.id })
  t.same(seen.at(-1), { authorization: `Bearer ${data.session!.access_token}`, apikey: issuer.apiKey })
})

t.test('the route\'s publishable mode serves a signed-out supabase-js client; another project\'s key is refused', async (t) => {
  const { createClient } = await import('@supabase/supabase-js')
  const { default: WebSocket } = await import('ws')
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, publishableKeys: issuer.apiKey })
  app.get('/functions/v1/hello', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'publishable'] } } }, async (request) => whoCalled(request))
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  const client = (apiKey: string) => createClient(base, apiKey, { auth: { persistSession: false }, realtime: { transport: WebSocket as never } })
  const ours = await client(issuer.apiKey).functions.invoke('hello', { method: 'GET' })
  t.same(ours.data, { auth: { mode: 'publishable', keyName: 'default' }, sub: null })
  const theirs = await client(key('sb_publishable_')).functions.invoke('hello', { method: 'GET' })
  const response = (theirs.error as { context?: Response } | null)?.context
  t.equal(response?.status, 401)
  t.equal((await response?.json() as { code: string }).code, 'FST_SUPABASE_JWKS_INVALID_API_KEY')
})

t.test('request.supabaseAuth is null where authenticate did not let the request in', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  app.get('/public', async (request) => ({ auth: request.supabaseAuth }))
  app.get('/after-refusal', async (request, reply) => {
    await app.authenticate(request, reply).catch(() => {})
    return { auth: request.supabaseAuth, user: request.user }
  })
  t.same((await app.inject({ url: '/public' })).json(), { auth: null })
  t.same((await app.inject({ url: '/after-refusal' })).json(), { auth: null, user: null })
})

/** Routes of an app built by `routes`, checked with `ready()`: the error it fails with, or undefined. */
async function readyError (t: Test, issuer: TestIssuer, routes: (app: FastifyInstance) => void): Promise<Error & { code?: string } | undefined> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, secretKeys: { cron: CRON } })
  try {
    routes(app)
  } catch (err) {
    return err as Error
  }
  return undefined
}

t.test('a route naming keys that are not configured fails its declaration, naming the route', async (t) => {
  const issuer = await issuerFor(t)
  const cases: Array<[unknown, RegExp]> = [
    ['publishable', /config.supabaseJwks of GET \/x.auth names 'publishable', but no publishableKeys are configured: add the option publishableKeys/],
    ['secret', /names 'secret', but secretKeys has no key named default \(it has cron\): bare 'secret' is the key named default; use 'secret:<name>', or 'secret:\*' for any key/],
    ['secret:nightly', /names 'secret:nightly', but secretKeys has no key named nightly \(it has cron\)$/],
    [['user', 'public'], /GET \/x.auth: 'public' is called 'publishable' here/],
    ['always', /'always' is called 'none' here/],
    ['admin', /has 'admin': a mode is 'user', 'publishable', 'secret', 'none'/],
    [[1], /has a value of type number: a mode is/],
    [[], /must be a mode or a list of 1 to 16 modes/],
    [Array(17).fill('user'), /a list of 1 to 16 modes/],
    [['user', 'user'], /lists 'user' twice/],
    [['none', 'user'], /has modes after 'none', which lets every request in: they would never be tried; put 'none' last/]
  ]
  for (const [auth, message] of cases) {
    const err = await readyError(t, issuer, (app) => app.get('/x', { config: { supabaseJwks: { auth: auth as 'user' } } }, async () => 'x'))
    t.equal(err?.code, 'FST_SUPABASE_JWKS_OPTION', JSON.stringify(auth))
    t.match(err?.message, message)
  }
  t.equal(await readyError(t, issuer, (app) => app.get('/x', { config: { supabaseJwks: { auth: ['secret:cron', 'secret:*', 'none'] } } }, async () => 'x')), undefined)
})
