/*
 * Several issuers in one registration: each with its own key set, cache, cooldown and claim rules;
 * a token goes to the issuer configured for exactly its `iss`, and nowhere else.
 */
import t from 'tap'
import Fastify from 'fastify'
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import supabaseJwks from '../lib/index'
import { combineStats, type KeyStats } from '../lib/keys'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor, registrationError } from './fixtures/helpers'
import { RESOURCE, providerFor, providerKey } from './fixtures/oidc'

t.test('two Supabase projects and an OIDC provider in one registration: each token verifies with its own issuer\'s keys', async (t) => {
  const production = await issuerFor(t)
  const staging = await issuerFor(t, { alg: 'ES256' })
  const provider = await providerFor(t, [providerKey('RS256')])
  const app = await appFor(t, {
    issuers: [
      { supabaseUrl: production.url },
      { supabaseUrl: staging.url, algorithms: ['ES256'] },
      { issuer: provider.issuer, discovery: true, audience: RESOURCE }
    ]
  })
  const cases = [
    [production.sign(), production.issuer],
    [staging.sign(), staging.issuer],
    [await provider.token(), provider.issuer]
  ] as const
  for (const [token, iss] of cases) {
    const res = await getMe(app, token)
    t.equal(res.statusCode, 200, iss)
    t.equal(res.json().iss, iss, 'request.user.iss tells which issuer verified it')
  }
  t.same([production.jwksRequests, staging.jwksRequests, provider.jwksRequests], [1, 1, 1], 'each issuer\'s JWKS fetched once')
  const stats = app.supabaseJwks.stats()
  t.match(stats, { fetches: 3, failures: 0, keys: 3, state: 'fresh', nextRetryAt: null, signaturesOffLoop: 3 }, 'the sums')
  t.same(Object.keys(stats.issuers!), [production.issuer, staging.issuer, provider.issuer])
  t.match(stats.issuers![staging.issuer], { fetches: 1, keys: 1, state: 'fresh' })
  t.equal(stats.lastSuccessAt, Math.max(...Object.values(stats.issuers!).map((each) => each.lastSuccessAt!)))

  const claims = await app.supabaseJwks.verify(staging.sign({ email: 'ops@example.com' }))
  t.match(claims, { iss: staging.issuer, email: 'ops@example.com' }, 'verify() routes the same way')
})

t.test('a token goes only to the issuer configured for exactly its iss: anything else is a 401 before any fetch', async (t) => {
  const a = await issuerFor(t)
  const b = await issuerFor(t, { alg: 'ES256' })
  const c = await issuerFor(t)
  const app = await appFor(t, { issuers: [{ supabaseUrl: a.url }, { supabaseUrl: b.url, algorithms: ['ES256'] }, { supabaseUrl: c.url }] })
  const cases: Array<[string, string, string, RegExp]> = [
    ['an issuer not configured', a.sign({ iss: 'https://evil.example.com/auth/v1' }), 'FST_SUPABASE_JWKS_TOKEN_INVALID', /the iss claim value is not allowed/],
    ['a configured issuer with a trailing slash', a.sign({ iss: `${a.issuer}/` }), 'FST_SUPABASE_JWKS_TOKEN_INVALID', /the iss claim value is not allowed/],
    ['no iss', a.sign({ iss: undefined }), 'FST_SUPABASE_JWKS_TOKEN_INVALID', /the iss claim is required/],
    ['an iss that is not a string', a.sign({ iss: [a.issuer] }), 'FST_SUPABASE_JWKS_TOKEN_INVALID', /the iss claim must be a string/],
    ['an algorithm the routed issuer does not allow', a.sign({ iss: b.issuer }), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', /RS256/],
    ['an algorithm no issuer allows', a.sign({}, { header: { alg: 'PS256' } }), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', /PS256/]
  ]
  for (const [name, token, code, message] of cases) {
    const res = await getMe(app, token)
    t.equal(codeOf(res), code, name)
    t.match(res.json().message, message, name)
  }
  t.same([a.jwksRequests, b.jwksRequests, c.jwksRequests], [0, 0, 0], 'no fetch, from anywhere')
  const foreign = await getMe(app, a.sign({ iss: 'https://evil.example.com/auth/v1' }))
  t.equal(foreign.json().message, `The token is invalid: the iss claim value is not allowed (expected "${a.issuer}", "${b.issuer}" or "${c.issuer}")`,
    'the answer names the configured issuers, not the token\'s')

  // c's kid and key, claiming a's iss: a's key set is asked, and it has no such key
  const forged = c.sign({ iss: a.issuer })
  t.equal(codeOf(await getMe(app, forged)), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.same([a.jwksRequests, c.jwksRequests], [1, 0], 'only the configured JWKS of the claimed issuer')
  t.equal((await getMe(app, c.sign())).statusCode, 200)
})

t.test('an unknown-kid flood on one issuer is bounded by its cooldown; the other keeps verifying with no extra fetch', async (t) => {
  const a = await issuerFor(t)
  const b = await issuerFor(t)
  const { app, entries } = await loggedAppFor(t, { issuers: [{ supabaseUrl: a.url }, { supabaseUrl: b.url, cooldown: 0 }] }, 'info')
  t.equal((await getMe(app, a.sign())).statusCode, 200)
  t.equal((await getMe(app, b.sign())).statusCode, 200)

  const flood = Array.from({ length: 300 }, () => getMe(app, a.sign({}, { header: { kid: randomUUID() } })))
  const genuine = Array.from({ length: 50 }, () => getMe(app, b.sign()))
  const [floodAnswers, genuineAnswers] = await Promise.all([Promise.all(flood), Promise.all(genuine)])
  t.same(new Set(floodAnswers.map(codeOf)), new Set(['FST_SUPABASE_JWKS_UNKNOWN_KID']))
  t.same(new Set(genuineAnswers.map((res) => res.statusCode)), new Set([200]))
  t.equal(a.jwksRequests, 2, 'the flood cost issuer a one fetch, then its cooldown answers')
  t.equal(b.jwksRequests, 1, 'issuer b fetched nothing more')
  const more = await Promise.all(Array.from({ length: 100 }, () => getMe(app, a.sign({}, { header: { kid: randomUUID() } }))))
  t.same(new Set(more.map(codeOf)), new Set(['FST_SUPABASE_JWKS_UNKNOWN_KID']))
  t.equal(a.jwksRequests, 2, 'within a\'s cooldown: no fetch')
  t.match(app.supabaseJwks.stats().issuers, { [a.issuer]: { fetches: 2 }, [b.issuer]: { fetches: 1 } })
  const fetching = entries().filter((entry) => entry.msg === 'supabase-jwks: fetching JWKS')
  t.same(fetching.map((entry) => entry.issuer), [a.issuer, b.issuer, a.issuer], 'each issuer\'s log lines say which')
})

t.test('one issuer down: its tokens get 503 with Retry-After, the other\'s keep verifying; stats say which', async (t) => {
  const a = await issuerFor(t)
  const b = await issuerFor(t)
  const app = await appFor(t, { issuers: [{ supabaseUrl: a.url, staleIfError: 0 }, { supabaseUrl: b.url }] })
  t.equal((await getMe(app, b.sign())).statusCode, 200)
  a.respondWith((_request, response) => { response.writeHead(500).end(); return true })
  const res = await getMe(app, a.sign())
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  t.ok(Number(res.headers['retry-after']) >= 1)
  t.equal((await getMe(app, b.sign())).statusCode, 200)
  const stats = app.supabaseJwks.stats()
  t.match(stats, { state: 'stale', failures: 1, fetches: 2 }, 'one issuer unavailable: stale, not unavailable')
  t.equal(stats.nextRetryAt, stats.issuers![a.issuer]!.nextRetryAt)
  t.match(stats.issuers, { [a.issuer]: { state: 'unavailable', failures: 1 }, [b.issuer]: { state: 'fresh', failures: 0 } })
})

t.test('Retry-After is the wait of the token\'s own issuer, not another one\'s longer backoff', async (t) => {
  const a = await issuerFor(t)
  const b = await issuerFor(t)
  // a: backoff 1 s, then 2 s; b: cooldown 1.6 s, so its first retry waits 0.1 s
  const app = await appFor(t, { issuers: [{ supabaseUrl: a.url, staleIfError: 0 }, { supabaseUrl: b.url, staleIfError: 0, cooldown: 1.6 }] })
  const down = (_request: unknown, response: { writeHead (status: number): { end (): void } }) => { response.writeHead(500).end(); return true }
  a.respondWith(down)
  b.respondWith(down)
  t.equal(codeOf(await getMe(app, a.sign())), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  for (let i = 0; i < 300 && app.supabaseJwks.stats().issuers![a.issuer]!.nextRetryAt! > Date.now(); i++) await sleep(10)
  const fromA = await getMe(app, a.sign())
  t.equal(app.supabaseJwks.stats().issuers![a.issuer]!.failures, 2, 'a failed twice: its backoff is now 2 s or more')
  t.ok(Number(fromA.headers['retry-after']) >= 2, `a's 503 says ${fromA.headers['retry-after']}`)
  const fromB = await getMe(app, b.sign())
  t.equal(codeOf(fromB), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  t.equal(fromB.headers['retry-after'], '1', 'b\'s 503 says b\'s own wait')
  await t.rejects(app.supabaseJwks.verify(b.sign()), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', retryAfter: 1 }, 'verify() rejects with it too')
})

t.test('the token cache serves several issuers, each entry retired with its own issuer\'s key', async (t) => {
  const a = await issuerFor(t)
  const b = await issuerFor(t)
  const app = await appFor(t, { issuers: [{ supabaseUrl: a.url }, { supabaseUrl: b.url }] })
  const tokenA = a.sign()
  const tokenB = b.sign()
  for (let i = 0; i < 3; i++) {
    t.equal((await getMe(app, tokenA)).statusCode, 200)
    t.equal((await getMe(app, tokenB)).statusCode, 200)
  }
  t.match(app.supabaseJwks.stats(), { cachedTokens: 2, tokenCacheHits: 2 })
  a.unpublish(a.currentKey.kid)
  a.rotate()
  await app.supabaseJwks.refresh()
  t.equal(codeOf(await getMe(app, tokenA)), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'a\'s revoked key: its cached token is refused')
  t.equal((await getMe(app, tokenB)).statusCode, 200)
})

t.test('route requirements name the issuers a route accepts (403 otherwise), checked at declaration', async (t) => {
  const a = await issuerFor(t)
  const b = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { issuers: [{ supabaseUrl: a.url }, { supabaseUrl: b.url }], require: { issuers: [a.issuer] }, warmStart: false })
  app.get('/a-only', { preHandler: app.authenticate }, async (request) => request.user.iss)
  app.get('/both', { preHandler: app.authenticate, config: { supabaseJwks: { issuers: [a.issuer, b.issuer] } } }, async (request) => request.user.iss)
  await app.ready()
  const ask = (url: string, token: string) => app.inject({ url, headers: { authorization: `Bearer ${token}` } })
  t.equal((await ask('/a-only', a.sign())).statusCode, 200)
  const refused = await ask('/a-only', b.sign())
  t.equal(refused.statusCode, 403)
  t.equal(codeOf(refused), 'FST_SUPABASE_JWKS_FORBIDDEN')
  t.match(refused.json().message, /the route does not accept tokens of this issuer/)
  t.match(refused.headers['www-authenticate'], /error="insufficient_scope"/)
  t.equal((await ask('/both', b.sign())).statusCode, 200, 'a route\'s config overrides the require option')

  const declare = async (requirement: unknown) => {
    const other = Fastify()
    t.teardown(() => other.close())
    await other.register(supabaseJwks, { issuers: [{ supabaseUrl: a.url }, { supabaseUrl: b.url }], warmStart: false })
    try {
      other.get('/x', { preHandler: other.authenticate, config: { supabaseJwks: requirement as supabaseJwks.Requirements } }, async () => 'x')
      await other.ready()
    } catch (err) {
      return err as Error & { code: string }
    }
    throw new Error('declared')
  }
  t.match(await declare({ issuers: ['https://evil.example.com/auth/v1'] }), { code: 'FST_SUPABASE_JWKS_OPTION', message: /names "https:\/\/evil.example.com\/auth\/v1", which is not a configured issuer/ })
  t.match(await declare({ issuers: [] }), { message: /issuers must be a non-empty array of issuer strings/ })
  t.match(await declare({ issuers: a.issuer }), { message: /issuers must be a non-empty array of issuer strings/ })
  t.match(await registrationError({ supabaseUrl: a.url, require: { issuers: [b.issuer] } }), { message: /not a configured issuer \(http:\/\/127/ })
  t.match(await registrationError({ jwksUrl: a.jwksUrl, issuer: false, require: { issuers: [a.issuer] } }), { message: /\(no issuer is checked\)/ })
})

t.test('a single registration can name its issuers in requirements too', async (t) => {
  const a = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { jwksUrl: a.jwksUrl, issuer: [a.issuer, 'https://other.example.com'], warmStart: false })
  app.get('/other', { preHandler: app.authenticate, config: { supabaseJwks: { issuers: ['https://other.example.com'] } } }, async () => 'ok')
  await app.ready()
  const res = await app.inject({ url: '/other', headers: { authorization: `Bearer ${a.sign()}` } })
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_FORBIDDEN')
})

t.test('issuers options are checked at registration', async (t) => {
  const supabase = 'https://abc.supabase.co'
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['with supabaseUrl', { supabaseUrl: supabase, issuers: [{ supabaseUrl: 'https://def.supabase.co' }] }, /supabaseUrl does not go with issuers/],
    ['with jwksUrl', { jwksUrl: 'https://x.example.com/jwks', issuers: [{ supabaseUrl: supabase }] }, /jwksUrl does not go with issuers/],
    ['with issuer', { issuer: 'https://x.example.com', issuers: [{ supabaseUrl: supabase }] }, /issuer does not go with issuers/],
    ['with discovery', { discovery: true, issuers: [{ supabaseUrl: supabase }] }, /discovery does not go with issuers/],
    ['with legacyTokens', { legacyTokens: { until: new Date(Date.now() + 86_400_000), apiKey: 'sb_publishable_x' }, issuers: [{ supabaseUrl: supabase }] }, /legacyTokens does not go with issuers/],
    ['empty', { issuers: [] }, /issuers must be a non-empty array/],
    ['not an array', { issuers: { supabaseUrl: supabase } }, /issuers must be a non-empty array/],
    ['too many', { issuers: Array.from({ length: 51 }, (_, i) => ({ supabaseUrl: `https://p${i}.supabase.co` })) }, /issuers has 51 entries, more than the 50 allowed/],
    ['an entry not an object', { issuers: [{ supabaseUrl: supabase }, 'https://x.example.com'] }, /issuers\[1\] must be an object/],
    ['an unknown entry option', { issuers: [{ supabaseUrl: supabase, hook: 'onRequest' }] }, /unknown option issuers\[0\]\.hook/],
    ['an entry without keys', { issuers: [{ issuer: 'https://x.example.com', audience: 'a' }] }, /issuers\[0\]\.supabaseUrl, issuers\[0\]\.jwksUrl or issuers\[0\]\.discovery is required/],
    ['an entry without issuer', { issuers: [{ jwksUrl: 'https://x.example.com/jwks', audience: 'a' }] }, /issuers\[0\]\.issuer is required in an issuers entry without supabaseUrl/],
    ['an entry with issuer false', { issuers: [{ supabaseUrl: supabase, issuer: false }] }, /issuers\[0\]\.issuer must be one non-empty string in an issuers entry: tokens are routed/],
    ['an entry with several issuers', { issuers: [{ jwksUrl: 'https://x.example.com/jwks', issuer: ['https://a', 'https://b'], audience: 'a' }] }, /issuers\[0\]\.issuer must be one non-empty string/],
    ['an issuer twice', { issuers: [{ supabaseUrl: supabase }, { supabaseUrl: `${supabase}/` }] }, /issuers\[1\]\.issuer https:\/\/abc.supabase.co\/auth\/v1 is configured twice/],
    ['an OIDC entry without audience', { issuers: [{ issuer: 'https://x.example.com', jwksUrl: 'https://x.example.com/jwks' }] }, /issuers\[0\]\.audience is required for an issuer that is not a Supabase project/],
    ['a bad entry value', { issuers: [{ supabaseUrl: supabase }, { supabaseUrl: 'https://def.supabase.co', cacheTtl: 600_000 }] }, /issuers\[1\]\.cacheTtl is 600000 seconds/],
    ['a bad inherited value', { cooldown: -1, issuers: [{ supabaseUrl: supabase }] }, /^Invalid fastify-supabase-jwks option: cooldown must be a finite number/],
    ['a bad entry algorithm list', { issuers: [{ supabaseUrl: supabase, algorithms: [] }] }, /issuers\[0\]\.algorithms must be a non-empty array/],
    ['a bad entry URL', { issuers: [{ supabaseUrl: `${supabase}/auth/v1` }] }, /issuers\[0\]\.supabaseUrl is the project URL, without \/auth\/v1/],
    ['a plain http entry', { issuers: [{ issuer: 'http://x.example.com', jwksUrl: 'http://x.example.com/jwks', audience: 'a' }] }, /uses plain http on a non-loopback host/]
  ]
  for (const [name, options, message] of cases) {
    const err = await registrationError(options)
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', name)
    t.match(err.message, message, name)
  }
  // the top-level per-issuer options are the entries' defaults (an audience there satisfies OIDC entries)
  const app = await appFor(t, {
    audience: 'https://api.example.com',
    cacheTtl: 60,
    issuers: [{ issuer: 'https://x.example.com', jwksUrl: 'https://x.example.com/jwks' }, { supabaseUrl: supabase, cacheTtl: 30 }]
  })
  t.equal(app.supabaseJwks.stats().fetches, 0)
})

t.test('combineStats: sums, the latest times, the earliest retry, and a state that says whether any issuer can verify', async (t) => {
  const base: KeyStats = { fetches: 1, failures: 0, keys: 2, lastSuccessAt: 100, lastFailureAt: null, state: 'fresh', nextRetryAt: null, signaturesOffLoop: 3, signaturesOnLoop: 1 }
  const combined = combineStats([base, { ...base, fetches: 2, failures: 1, lastSuccessAt: 50, lastFailureAt: 70, nextRetryAt: 900 }, { ...base, lastSuccessAt: null, nextRetryAt: 800 }])
  t.same(combined, { fetches: 4, failures: 1, keys: 6, lastSuccessAt: 100, lastFailureAt: 70, state: 'fresh', nextRetryAt: 800, signaturesOffLoop: 9, signaturesOnLoop: 3 })
  const state = (...states: KeyStats['state'][]) => combineStats(states.map((each) => ({ ...base, state: each }))).state
  t.equal(state('unavailable', 'unavailable'), 'unavailable', 'no issuer can verify')
  t.equal(state('fresh', 'unavailable'), 'stale')
  t.equal(state('refreshing', 'stale'), 'stale')
  t.equal(state('fresh', 'refreshing'), 'refreshing')
  t.equal(combineStats([{ ...base, lastSuccessAt: null }]).lastSuccessAt, null)
})
