import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import Fastify, { type FastifyRequest } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { createServerClient } from '@supabase/ssr'
import WebSocket from 'ws'
import supabaseJwks from '../lib/index'
import { ClientCache, MAX_CLIENTS } from '../lib/supabase-client'
import { optionalPeer } from '../lib/acting'
import type { TestIssuer } from '../lib/testing'
import { codeOf, issuerFor, registrationError } from './fixtures/helpers'
import { standInFor, type ProjectStandIn, type Received } from './fixtures/postgrest'

/*
 * request.supabase and fastify.supabaseAdmin with the real supabase-js, over real HTTP to a stand-in
 * for the project's API on 127.0.0.1: what reaches it is what PostgREST, Storage and Functions would
 * act on (the bearer token decides the role and the user under Row Level Security, `apikey` the project).
 */

const key = (prefix: string) => `${prefix}${randomBytes(24).toString('base64url')}`
const PUBLISHABLE = key('sb_publishable_')
const SECRET = key('sb_secret_')

/** The client the handler read, by request: to compare the objects themselves. */
type Seen = unknown[]

/** What `/data` does through `request.supabase`: one call to each API. */
async function everyApi (request: FastifyRequest): Promise<void> {
  const supabase = request.supabase as unknown as import('@supabase/supabase-js').SupabaseClient
  const rows = await supabase.from('notes').select('*')
  if (rows.error !== null) throw rows.error
  await supabase.rpc('mine', { since: 1 })
  await supabase.storage.from('avatars').list()
  await supabase.functions.invoke('hello', { body: { hi: true } })
}

/**
 * An app with the plugin pointed at `standIn`, and routes: `/data` (a user) calls every API;
 * `/notes` with `auth` ['user', 'none'], `/anon` 'publishable', `/secret` 'secret', `/lazy`
 * (authenticated, never reads request.supabase), `/unguarded` (no authenticate) each read one table;
 * `/touch` (authenticated) reads request.supabase and calls nothing.
 */
async function appWith (t: Test, issuer: TestIssuer, standIn: ProjectStandIn, options: Partial<supabaseJwks.SupabaseJwksOptions> = {}, app = Fastify()) {
  t.teardown(() => app.close())
  const seen: Seen = []
  await app.register(supabaseJwks, {
    supabaseUrl: issuer.url,
    warmStart: false,
    publishableKeys: PUBLISHABLE,
    secretKeys: SECRET,
    supabase: { url: standIn.url, publishableKey: PUBLISHABLE, secretKey: SECRET },
    ...options
  })
  const notes = async (request: FastifyRequest) => {
    seen.push(request.supabase)
    const supabase = request.supabase as unknown as import('@supabase/supabase-js').SupabaseClient
    const { data, error } = await supabase.from('notes').select('*')
    if (error !== null) throw error
    return data
  }
  app.get('/data', { preHandler: app.authenticate }, async (request) => {
    await everyApi(request)
    return 'done'
  })
  app.get('/notes', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'none'] } } }, notes)
  app.get('/anon', { preHandler: app.authenticate, config: { supabaseJwks: { auth: 'publishable' } } }, notes)
  app.get('/secret', { preHandler: app.authenticate, config: { supabaseJwks: { auth: 'secret' } } }, notes)
  app.get('/lazy', { preHandler: app.authenticate }, async (request) => request.user.sub)
  app.get('/touch', { preHandler: app.authenticate }, async (request) => {
    seen.push(request.supabase)
    return 'ok'
  })
  app.get('/unguarded', notes)
  await app.ready()
  return { app, seen }
}

function bearer (token: string) {
  return { authorization: `Bearer ${token}` }
}

/** Whether any header of any request received holds `value`. */
function sent (received: Received[], value: string): boolean {
  return received.some((request) => JSON.stringify(request.headers).includes(value))
}

t.test('a user\'s request.supabase sends the caller\'s exact token and the publishable key to PostgREST, RPC, Storage and Functions', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  const { app } = await appWith(t, issuer, standIn)
  const token = issuer.sign({ sub: 'user-1' })
  const res = await app.inject({ url: '/data', headers: bearer(token) })
  t.equal(res.statusCode, 200, res.body)
  t.same(standIn.received.map(({ method, url }) => `${method} ${url}`), [
    'GET /rest/v1/notes?select=*',
    'POST /rest/v1/rpc/mine',
    'POST /storage/v1/object/list/avatars',
    'POST /functions/v1/hello'
  ])
  for (const { url, authorization, apikey } of standIn.received) {
    t.equal(authorization, `Bearer ${token}`, `${url}: the caller's token`)
    t.equal(apikey, PUBLISHABLE, `${url}: the publishable key`)
  }
  t.notOk(sent(standIn.received, SECRET), 'never the secret key')
})

t.test('the token of the session cookie is the one sent', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  issuer.addUser({ email: 'ada@example.com', password: 'pw', id: 'ada' })
  const jar = new Map<string, string>()
  const ssr = createServerClient(issuer.url, issuer.apiKey, {
    cookies: {
      getAll: () => [...jar].map(([name, value]) => ({ name, value })),
      setAll: (cookies) => { for (const { name, value } of cookies) jar.set(name, value) }
    },
    realtime: { transport: WebSocket as never }
  })
  const { data, error } = await ssr.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' })
  if (error !== null) throw error
  const app = Fastify()
  await app.register(fastifyCookie)
  await appWith(t, issuer, standIn, { cookie: true }, app)
  const cookie = [...jar].map(([name, value]) => `${name}=${encodeURIComponent(value)}`).join('; ')
  const res = await app.inject({ url: '/notes', headers: { cookie } })
  t.equal(res.statusCode, 200, res.body)
  t.equal(standIn.received.length, 1)
  t.equal(standIn.received[0]!.authorization, `Bearer ${data.session!.access_token}`, 'the access token of the cookie\'s session')
  t.equal(standIn.received[0]!.apikey, PUBLISHABLE)
})

t.test('callers with no user get one anonymous client: the publishable key, never a user\'s token nor the secret key', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  const { app, seen } = await appWith(t, issuer, standIn)
  const token = issuer.sign({ sub: 'user-1' })
  t.equal((await app.inject({ url: '/notes', headers: bearer(token) })).statusCode, 200, 'a user first')
  t.equal((await app.inject({ url: '/notes' })).statusCode, 200, 'auth none: no credential')
  t.equal((await app.inject({ url: '/anon', headers: { apikey: PUBLISHABLE } })).statusCode, 200, 'auth publishable')
  t.equal((await app.inject({ url: '/notes' })).statusCode, 200, 'none again')
  const anonymous = standIn.received.slice(1)
  t.equal(anonymous.length, 3)
  for (const { authorization, apikey } of anonymous) {
    t.equal(authorization, `Bearer ${PUBLISHABLE}`, 'the publishable key as bearer, as an anonymous supabase-js client sends it')
    t.equal(apikey, PUBLISHABLE)
  }
  t.notOk(sent(anonymous, token), 'not the user\'s token of the request before')
  t.notOk(sent(standIn.received, SECRET), 'never the secret key')
  t.not(seen[0], seen[1], 'the user\'s client is not the anonymous one')
  t.equal(seen[1], seen[2], 'one anonymous client')
  t.equal(seen[2], seen[3])
  // shared by every anonymous caller, it has no auth client: no session can be signed in on it
  t.throws(() => (seen[1] as { auth: { signInWithPassword: unknown } }).auth.signInWithPassword, /accessToken option/)
  t.equal(app.supabaseJwks.stats().supabaseClients, 1, 'the anonymous client is not counted among the users\'')
})

t.test('fastify.supabaseAdmin sends the secret key, on the instance only; none without a secret key', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  const { app } = await appWith(t, issuer, standIn)
  const admin = app.supabaseAdmin as unknown as import('@supabase/supabase-js').SupabaseClient
  const { error } = await admin.from('notes').select('id')
  t.equal(error, null)
  t.match(standIn.received, [{ url: '/rest/v1/notes?select=id', authorization: `Bearer ${SECRET}`, apikey: SECRET }])
  t.equal(app.supabaseAdmin, app.supabaseAdmin, 'one client')
  const inRequest = await app.inject({ url: '/lazy', headers: bearer(issuer.sign()) })
  t.equal(inRequest.statusCode, 200)

  const other = await appWith(t, issuer, standIn, { supabase: { url: standIn.url, publishableKey: PUBLISHABLE } })
  t.notOk(other.app.hasDecorator('supabaseAdmin'), 'no secret key, no supabaseAdmin')
  t.notOk(other.app.hasRequestDecorator('supabaseAdmin'), 'never on the request')
  t.ok(other.app.hasRequestDecorator('supabase'))
})

t.test('request.supabase refuses callers it cannot act as, and routes authenticate does not guard', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  const { app } = await appWith(t, issuer, standIn)
  const secret = await app.inject({ url: '/secret', headers: { apikey: SECRET } })
  t.equal(secret.statusCode, 403)
  t.equal(codeOf(secret), 'FST_SUPABASE_JWKS_UNSUPPORTED_ROLE')
  t.match(secret.json().message, 'use fastify.supabaseAdmin')

  const unguarded = await app.inject({ url: '/unguarded', headers: bearer(issuer.sign()) })
  t.equal(unguarded.statusCode, 500)
  t.equal(codeOf(unguarded), 'FST_SUPABASE_JWKS_USAGE')
  t.match(unguarded.json().message, 'a route that authenticate guards, after it ran')

  const serviceRole = await app.inject({ url: '/notes', headers: bearer(issuer.sign({ role: 'service_role' })) })
  t.equal(serviceRole.statusCode, 403, 'a token with role service_role: refused, never sent')
  t.match(serviceRole.json().message, 'role is service_role')
  const odd = await app.inject({ url: '/notes', headers: bearer(issuer.sign({ role: 'x y' })) })
  t.equal(odd.statusCode, 403)
  t.match(odd.json().message, 'is missing or not a plain name', 'a role not repeated')
  t.equal((await app.inject({ url: '/notes', headers: bearer(issuer.sign({ role: 'anon' })) })).statusCode, 200, 'role anon acts as itself')
  t.equal(standIn.received.length, 1, 'nothing sent for the refused ones')
})

t.test('read before authenticate ran, or beside a user mode set by the app: 500 FST_SUPABASE_JWKS_USAGE', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  const app = Fastify()
  const codes: string[] = []
  app.addHook('onRequest', async (request) => {
    try {
      return request.supabase
    } catch (err) {
      codes.push((err as { code: string }).code)
    }
  })
  const { app: ready } = await appWith(t, issuer, standIn, {}, app)
  t.equal((await ready.inject({ url: '/notes', headers: bearer(issuer.sign()) })).statusCode, 200, 'the handler\'s read, after authenticate, works')
  t.same(codes, ['FST_SUPABASE_JWKS_USAGE'], 'the onRequest read failed, and nothing was kept of it')

  const forged = Fastify()
  t.teardown(() => forged.close())
  await forged.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, supabase: { url: standIn.url, publishableKey: PUBLISHABLE } })
  forged.get('/', async (request) => {
    request.supabaseAuth = { mode: 'user' }
    return request.supabase
  })
  const res = await forged.inject({ url: '/' })
  t.equal(res.statusCode, 500)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_USAGE')
  t.match(res.json().message, 'no access token')
})

t.test('made only when read, once per request; the same token gets the same client, another token another', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  const app = Fastify()
  const twice: boolean[] = []
  app.get('/twice', { preHandler: (request, reply) => app.authenticate(request, reply) }, async (request) => {
    const first = request.supabase
    twice.push(first === request.supabase)
    return 'ok'
  })
  const { seen } = await appWith(t, issuer, standIn, {}, app)
  const stats = () => app.supabaseJwks.stats().supabaseClients
  const one = issuer.sign({ sub: 'one' })
  const two = issuer.sign({ sub: 'two' })
  t.equal(stats(), 0)
  t.equal((await app.inject({ url: '/lazy', headers: bearer(one) })).statusCode, 200)
  t.equal((await app.inject({ url: '/lazy', headers: bearer(two) })).statusCode, 200)
  t.equal(stats(), 0, 'a guarded route that never reads request.supabase makes no client')
  await app.inject({ url: '/notes', headers: bearer(one) })
  t.equal(stats(), 1)
  await app.inject({ url: '/notes', headers: bearer(one) })
  await app.inject({ url: '/notes', headers: bearer(two) })
  t.equal(stats(), 2)
  t.equal(seen[0], seen[1], 'the same token: the same client')
  t.not(seen[1], seen[2], 'another token: another client')
  await app.inject({ url: '/twice', headers: bearer(one) })
  t.same(twice, [true], 'read twice in a request: one client')
  t.same(standIn.received.map(({ authorization }) => authorization), [one, one, two].map((token) => `Bearer ${token}`))
})

t.test('a client is never handed out after its token\'s exp', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  // the clock tolerance lets authenticate accept a token just past its exp: the client cache does not
  const { app, seen } = await appWith(t, issuer, standIn, { clockTolerance: 30 })
  const stats = () => app.supabaseJwks.stats().supabaseClients
  const past = issuer.sign({ exp: Math.floor(Date.now() / 1000) - 1 })
  t.equal((await app.inject({ url: '/notes', headers: bearer(past) })).statusCode, 200, 'accepted within the tolerance')
  await app.inject({ url: '/notes', headers: bearer(past) })
  t.not(seen[0], seen[1], 'an expired token\'s client is not kept')
  t.equal(stats(), 0)

  const exp = Math.ceil(Date.now() / 1000) + 1
  const soon = issuer.sign({ exp })
  await app.inject({ url: '/notes', headers: bearer(soon) })
  await app.inject({ url: '/notes', headers: bearer(soon) })
  t.equal(seen[2], seen[3], 'reused before exp')
  t.equal(stats(), 1)
  await new Promise((resolve) => setTimeout(resolve, exp * 1000 - Date.now() + 20))
  await app.inject({ url: '/notes', headers: bearer(soon) })
  t.not(seen[4], seen[3], 'a new client once exp has passed')
  t.equal(stats(), 0, 'and neither kept')
  t.equal(standIn.received.length, 5)
})

t.test('the client cache is bounded: tokenCache, at most 1000, the least recently used going first', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  const { app, seen } = await appWith(t, issuer, standIn, { tokenCache: 3 })
  const tokens = ['a', 'b', 'c', 'd'].map((sub) => issuer.sign({ sub }))
  for (const token of tokens.slice(0, 3)) await app.inject({ url: '/notes', headers: bearer(token) })
  await app.inject({ url: '/notes', headers: bearer(tokens[0]!) })
  t.equal(seen[3], seen[0], 'a is used again')
  await app.inject({ url: '/notes', headers: bearer(tokens[3]!) })
  t.equal(app.supabaseJwks.stats().supabaseClients, 3, 'three held')
  await app.inject({ url: '/notes', headers: bearer(tokens[0]!) })
  t.equal(seen[5], seen[0], 'a, used lately, stayed')
  await app.inject({ url: '/notes', headers: bearer(tokens[1]!) })
  t.not(seen[6], seen[1], 'b, the least recently used, went')

  const off = await appWith(t, issuer, standIn, { tokenCache: 0 })
  await off.app.inject({ url: '/notes', headers: bearer(tokens[0]!) })
  await off.app.inject({ url: '/notes', headers: bearer(tokens[0]!) })
  t.not(off.seen[0], off.seen[1], 'tokenCache: 0 keeps no client either')
  t.equal(off.app.supabaseJwks.stats().supabaseClients, 0)

  const fast = await issuerFor(t, { alg: 'ES256' })
  const big = await appWith(t, fast, standIn, { algorithms: ['ES256'] })
  for (let i = 0; i <= MAX_CLIENTS; i++) {
    const res = await big.app.inject({ url: '/touch', headers: bearer(fast.sign({ sub: `u${i}` })) })
    if (res.statusCode !== 200) {
      t.fail(res.body)
      break
    }
  }
  t.equal(big.app.supabaseJwks.stats().supabaseClients, MAX_CLIENTS, `${MAX_CLIENTS + 1} tokens, ${MAX_CLIENTS} clients held (tokenCache is 10000)`)
})

t.test('ClientCache: an entry with no usable exp is never kept', async (t) => {
  const cache = new ClientCache(2)
  cache.set('t', {} as never, Number.NaN)
  t.equal(cache.size, 0)
  t.equal(cache.get('t'), undefined)
})

t.test('several issuers: each caller\'s client goes to its own issuer\'s project; callers with no user to the top level\'s', async (t) => {
  const first = await issuerFor(t)
  const second = await issuerFor(t)
  const firstApi = await standInFor(t)
  const secondApi = await standInFor(t)
  const topApi = await standInFor(t)
  const SECOND = key('sb_publishable_')
  const { app } = await appWith(t, first, firstApi, {
    supabaseUrl: undefined,
    supabase: { url: topApi.url, publishableKey: PUBLISHABLE },
    issuers: [
      { supabaseUrl: first.url, supabase: { url: firstApi.url, publishableKey: PUBLISHABLE } },
      { supabaseUrl: second.url, supabase: { url: secondApi.url, publishableKey: SECOND } }
    ]
  })
  const one = first.sign()
  const two = second.sign()
  t.equal((await app.inject({ url: '/notes', headers: bearer(one) })).statusCode, 200)
  t.equal((await app.inject({ url: '/notes', headers: bearer(two) })).statusCode, 200)
  t.equal((await app.inject({ url: '/notes' })).statusCode, 200)
  t.match(firstApi.received, [{ authorization: `Bearer ${one}`, apikey: PUBLISHABLE }])
  t.match(secondApi.received, [{ authorization: `Bearer ${two}`, apikey: SECOND }])
  t.match(topApi.received, [{ authorization: `Bearer ${PUBLISHABLE}`, apikey: PUBLISHABLE }])
  t.equal(firstApi.received.length + secondApi.received.length + topApi.received.length, 3)
})

t.test('several issuers: an issuer with no supabase, or no top-level url for callers with no user, is the app\'s mistake', async (t) => {
  const first = await issuerFor(t)
  const second = await issuerFor(t)
  const api = await standInFor(t)
  const { app } = await appWith(t, first, api, {
    supabaseUrl: undefined,
    supabase: undefined,
    issuers: [
      { supabaseUrl: first.url, supabase: { url: api.url, publishableKey: PUBLISHABLE } },
      { supabaseUrl: second.url }
    ]
  })
  t.notOk(app.hasDecorator('supabaseAdmin'))
  const unset = await app.inject({ url: '/notes', headers: bearer(second.sign()) })
  t.equal(unset.statusCode, 500)
  t.equal(codeOf(unset), 'FST_SUPABASE_JWKS_USAGE')
  t.match(unset.json().message, 'set issuers[1].supabase')
  const anonymous = await app.inject({ url: '/notes' })
  t.equal(anonymous.statusCode, 500)
  t.match(anonymous.json().message, 'give the top-level supabase a url')
  t.equal((await app.inject({ url: '/notes', headers: bearer(first.sign()) })).statusCode, 200, 'the first issuer\'s users are served')
  t.equal(api.received.length, 1)
})

t.test('options: a bad url, a secret key as publishableKey, one key twice: ready() rejects, and never shows the key', async (t) => {
  const base = { supabaseUrl: 'https://abc.supabase.co' }
  const cases: Array<[unknown, RegExp, string?]> = [
    [{ url: 'ftp://x', publishableKey: PUBLISHABLE }, /supabase\.url/],
    [{ url: 'not a url', publishableKey: PUBLISHABLE }, /supabase\.url/],
    [{ publishableKey: SECRET }, /publishableKey is a secret key/, SECRET],
    [{ publishableKey: PUBLISHABLE, secretKey: PUBLISHABLE }, /are the same key/, PUBLISHABLE],
    [{ publishableKey: 'has space' }, /the key itself/, 'has space'],
    [{ publishableKey: PUBLISHABLE, serviceRoleKey: SECRET }, /unknown option supabase\.serviceRoleKey/, SECRET]
  ]
  for (const [supabase, message, secret] of cases) {
    const err = await registrationError({ ...base, supabase })
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', err.message)
    t.match(err.message, message)
    if (secret !== undefined) t.notOk(err.message.includes(secret), 'the key is not repeated')
  }
  const noUrl = await registrationError({ jwksUrl: 'https://auth.example.com/jwks', issuer: 'https://auth.example.com', supabase: { publishableKey: PUBLISHABLE } })
  t.match(noUrl.message, 'supabase.url is required here')
  const entrySecret = await registrationError({ issuers: [{ supabaseUrl: 'https://abc.supabase.co', supabase: { publishableKey: PUBLISHABLE, secretKey: SECRET } }] })
  t.equal(entrySecret.code, 'FST_SUPABASE_JWKS_OPTION')
  t.match(entrySecret.message, 'issuers[0].supabase.secretKey is never used: fastify.supabaseAdmin is one client, of the top-level supabase')
  t.notOk(entrySecret.message.includes(SECRET), 'the key is not repeated')
  const topSecret = await registrationError({ issuers: [{ supabaseUrl: 'https://abc.supabase.co' }], supabase: { publishableKey: PUBLISHABLE, secretKey: SECRET } })
  t.match(topSecret.message, 'supabase.secretKey needs supabase.url with issuers')
  t.notOk(topSecret.message.includes(SECRET), 'the key is not repeated')
})

t.test('optional peers: one that cannot be loaded fails the registration, saying what to install', async (t) => {
  const err = t.throws(() => optionalPeer('@supabase/no-such-package', 'the option supabase')) as Error & { code: string }
  t.equal(err.code, 'FST_SUPABASE_JWKS_REGISTRATION')
  t.match(err.message, 'the option supabase needs @supabase/no-such-package, an optional peer dependency it cannot load: npm install @supabase/no-such-package')
  t.equal(optionalPeer<typeof WebSocket>('ws', 'x'), WebSocket)
})

t.test('where a global WebSocket exists (Node.js 22), ws is not needed', async (t) => {
  const issuer = await issuerFor(t)
  const standIn = await standInFor(t)
  const global = globalThis as { WebSocket?: unknown }
  // supabase-js looks for it when a client is made: there until the test ends
  global.WebSocket = WebSocket
  t.teardown(() => { delete global.WebSocket })
  const { app } = await appWith(t, issuer, standIn)
  const token = issuer.sign()
  t.equal((await app.inject({ url: '/notes', headers: bearer(token) })).statusCode, 200)
  t.match(standIn.received, [{ authorization: `Bearer ${token}` }])
})
