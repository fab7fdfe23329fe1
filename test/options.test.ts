import t from 'tap'
import Fastify from 'fastify'
import supabaseJwks from '../lib/index'
import { normalizeOptions } from '../lib/options'

/** The one issuer's options, with the shared ones. */
function single (options: unknown) {
  const config = normalizeOptions(options)
  return { ...config, ...config.issuers[0]! }
}
import { registrationError } from './fixtures/helpers'

const URL = 'https://abc.supabase.co'

t.test('a bad option fails ready() with a clear message', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['neither supabaseUrl nor jwksUrl', {}, /supabaseUrl or jwksUrl is required/],
    ['a shared secret', { supabaseUrl: URL, secret: 'super-secret' }, /shared secret is never used/],
    ['jwtSecret', { supabaseUrl: URL, jwtSecret: 'super-secret' }, /shared secret is never used/],
    ['an unknown option', { supabaseUrl: URL, cacheTTL: 5 }, /unknown option cacheTTL/],
    ['supabaseUrl not a string', { supabaseUrl: 42 }, /supabaseUrl must be a non-empty string URL/],
    ['supabaseUrl not a URL', { supabaseUrl: 'not a url' }, /supabaseUrl is not a valid URL: not a url/],
    ['supabaseUrl without a scheme', { supabaseUrl: 'abc.supabase.co' }, /supabaseUrl has no scheme \(https:\/\/, or http:\/\/ on a loopback host\): set https:\/\/abc\.supabase\.co$/],
    ['supabaseUrl ftp', { supabaseUrl: 'ftp://abc.supabase.co' }, /must be an http\(s\) URL/],
    ['jwksUrl empty', { jwksUrl: '' }, /jwksUrl must be a non-empty string URL/],
    ['jwksUrl alone without issuer', { jwksUrl: 'https://auth.example.com/.well-known/jwks.json' }, /issuer is required with jwksUrl alone/],
    ['jwksUrl with credentials', { jwksUrl: 'https://u:p@auth.example.com/jwks', issuer: false }, /must not carry credentials/],
    ['plain http off loopback', { supabaseUrl: 'http://abc.supabase.co' }, /plain http on a non-loopback host/],
    ['allowInsecureJwksUrl not boolean', { supabaseUrl: URL, allowInsecureJwksUrl: 'yes' }, /allowInsecureJwksUrl must be a boolean/],
    ['issuer empty list', { supabaseUrl: URL, issuer: [] }, /issuer must be a non-empty string/],
    ['issuer true', { supabaseUrl: URL, issuer: true }, /issuer must be a non-empty string/],
    ['audience with a number', { supabaseUrl: URL, audience: ['authenticated', 1] }, /audience must be a non-empty string/],
    ['audience empty string', { supabaseUrl: URL, audience: '' }, /audience must be a non-empty string/],
    ['algorithms HS256', { supabaseUrl: URL, algorithms: ['HS256'] }, /algorithm HS256 is refused: this plugin verifies only asymmetric signatures/],
    ['algorithms hs512', { supabaseUrl: URL, algorithms: ['RS256', 'hs512'] }, /algorithm hs512 is refused/],
    ['algorithms none', { supabaseUrl: URL, algorithms: ['none'] }, /algorithm none is refused/],
    ['algorithms NONE', { supabaseUrl: URL, algorithms: ['NONE'] }, /algorithm NONE is refused/],
    ['algorithms unknown', { supabaseUrl: URL, algorithms: ['RS1'] }, /unknown algorithm RS1; supported: RS256/],
    ['algorithms not a list', { supabaseUrl: URL, algorithms: 'RS256' }, /algorithms must be a non-empty array/],
    ['algorithms empty', { supabaseUrl: URL, algorithms: [] }, /algorithms must be a non-empty array/],
    ['clockTolerance negative', { supabaseUrl: URL, clockTolerance: -1 }, /clockTolerance must be a finite number of seconds >= 0/],
    ['clockTolerance a string', { supabaseUrl: URL, clockTolerance: '5s' }, /clockTolerance must be a finite number/],
    ['cacheTtl zero', { supabaseUrl: URL, cacheTtl: 0 }, /cacheTtl must be a finite number of seconds >= 0.001/],
    ['cooldown infinite', { supabaseUrl: URL, cooldown: Infinity }, /cooldown must be a finite number/],
    ['staleIfError NaN', { supabaseUrl: URL, staleIfError: NaN }, /staleIfError must be a finite number/],
    ['timeout zero', { supabaseUrl: URL, timeout: 0 }, /timeout must be a finite number of seconds >= 0.001/],
    ['maxResponseSize fractional', { supabaseUrl: URL, maxResponseSize: 1.5 }, /maxResponseSize must be an integer from 1 to/],
    ['maxTokenLength zero', { supabaseUrl: URL, maxTokenLength: 0 }, /maxTokenLength must be an integer from 1 to/],
    ['tokenCache negative', { supabaseUrl: URL, tokenCache: -1 }, /tokenCache must be an integer from 0 to 100000/],
    ['tokenCache huge', { supabaseUrl: URL, tokenCache: 1e7 }, /tokenCache must be an integer from 0 to 100000/],
    ['supabaseUrl with /auth/v1', { supabaseUrl: 'https://abc.supabase.co/auth/v1' }, /without \/auth\/v1 \(e\.g\. https:\/\/abc\.supabase\.co\)/],
    ['supabaseUrl with /auth/v1/', { supabaseUrl: 'https://abc.supabase.co/auth/v1/' }, /without \/auth\/v1/],
    ['supabaseUrl with a query', { supabaseUrl: 'https://abc.supabase.co/?apikey=k' }, /must not carry a query string or a fragment/],
    ['supabaseUrl with a fragment', { supabaseUrl: 'https://abc.supabase.co/#x' }, /must not carry a query string or a fragment/],
    ['supabaseUrl with a bare ?', { supabaseUrl: 'https://abc.supabase.co?' }, /must not carry a query string or a fragment: use the project URL \(e\.g\. https:\/\/abc\.supabase\.co\)/],
    ['supabaseUrl with a bare #', { supabaseUrl: 'https://abc.supabase.co/#' }, /must not carry a query string or a fragment/],
    ['supabaseUrl is the JWKS URL', { supabaseUrl: 'https://abc.supabase.co/auth/v1/.well-known/jwks.json' }, /project URL without a path \(e\.g\. https:\/\/abc\.supabase\.co\).*set jwksUrl and issuer/],
    ['supabaseUrl with /rest/v1', { supabaseUrl: 'https://abc.supabase.co/rest/v1' }, /project URL without a path/],
    ['clockTolerance in ms', { supabaseUrl: URL, clockTolerance: 5000 }, /clockTolerance is 5000 seconds, more than the 300 allowed: .*were milliseconds meant\?/],
    ['cacheTtl in ms', { supabaseUrl: URL, cacheTtl: 600_000 }, /cacheTtl is 600000 seconds, more than the 86400 allowed/],
    ['timeout past the timers', { supabaseUrl: URL, timeout: 2_147_484 }, /timeout is 2147484 seconds, more than the 60 allowed/],
    ['timeout in ms', { supabaseUrl: URL, timeout: 5000 }, /timeout is 5000 seconds, more than the 60 allowed/],
    ['cooldown in ms', { supabaseUrl: URL, cooldown: 30_000 }, /cooldown is 30000 seconds, more than the 3600 allowed/],
    ['staleIfError in ms', { supabaseUrl: URL, staleIfError: 3_600_000 }, /staleIfError is 3600000 seconds, more than the 604800 allowed/],
    ['jwksUrl with a fragment', { jwksUrl: 'https://a.example/.well-known/jwks.json#x', issuer: false }, /jwksUrl must not carry a fragment/],
    ['jwksUrl without a path', { jwksUrl: 'https://auth.example.com', issuer: false }, /jwksUrl has no path: give the JWKS document's URL \(e\.g\. https:\/\/auth\.example\.com\/\.well-known\/jwks\.json\)/],
    ['hook unknown', { supabaseUrl: URL, hook: 'onSend' }, /hook must be false, "onRequest" or "preHandler"/],
    ['realm with a quote', { supabaseUrl: URL, realm: 'a"b' }, /realm must be a printable ASCII string/],
    ['realm not a string', { supabaseUrl: URL, realm: 5 }, /realm must be a printable ASCII string/]
  ]
  for (const [name, options, message] of cases) {
    const err = await registrationError(options)
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', `${name}: code`)
    t.match(err.message, message, `${name}: message`)
  }
})

/** The message `normalizeOptions` refuses `options` with, without the common prefix. */
function refusal (options: unknown): string {
  try {
    normalizeOptions(options)
  } catch (err) {
    return (err as Error).message.replace(/^Invalid fastify-supabase-jwks option: /, '')
  }
  return 'accepted'
}

t.test('a URL without its scheme, or the dashboard\'s address, is refused with the URL to set instead', async (t) => {
  const noScheme = 'has no scheme (https://, or http:// on a loopback host): set'
  const dashboard = 'is a supabase.com address (the dashboard\'s or the Management API\'s), not the project URL: set'
  const soon = new Date(Date.now() + 3_600_000).toISOString()
  const cases: Array<[unknown, string]> = [
    [{ supabaseUrl: 'abc.supabase.co' }, `supabaseUrl ${noScheme} https://abc.supabase.co`],
    [{ supabaseUrl: 'abc.supabase.co/' }, `supabaseUrl ${noScheme} https://abc.supabase.co`],
    [{ supabaseUrl: 'abc.supabase.co/auth/v1' }, `supabaseUrl ${noScheme} https://abc.supabase.co`],
    // loopback (the Supabase CLI) is plain http
    [{ supabaseUrl: '127.0.0.1:54321' }, `supabaseUrl ${noScheme} http://127.0.0.1:54321`],
    [{ supabaseUrl: 'localhost:54321' }, `supabaseUrl ${noScheme} http://localhost:54321`],
    [{ issuers: [{ supabaseUrl: 'prod.supabase.co' }] }, `issuers[0].supabaseUrl ${noScheme} https://prod.supabase.co`],
    // the address bar while on the project's dashboard page, today's and the older one
    [{ supabaseUrl: 'https://supabase.com/dashboard/project/abcdefghijklmnopqrst' }, `supabaseUrl ${dashboard} https://abcdefghijklmnopqrst.supabase.co`],
    [{ supabaseUrl: 'https://supabase.com/dashboard/project/abc/settings/api-keys' }, `supabaseUrl ${dashboard} https://abc.supabase.co`],
    [{ supabaseUrl: 'https://app.supabase.com/project/abc' }, `supabaseUrl ${dashboard} https://abc.supabase.co`],
    [{ supabaseUrl: 'supabase.com/dashboard/project/abc' }, `supabaseUrl ${noScheme} https://abc.supabase.co`],
    // no project in the path: the form of the URL, with the ref to fill in
    [{ supabaseUrl: 'https://supabase.com' }, `supabaseUrl ${dashboard} https://<ref>.supabase.co`],
    [{ supabaseUrl: 'https://supabase.com/dashboard/projects' }, `supabaseUrl ${dashboard} https://<ref>.supabase.co`],
    [{ supabaseUrl: 'https://api.supabase.com/v1/projects/abc' }, `supabaseUrl ${dashboard} https://<ref>.supabase.co`],
    // the other URL options: the value as given, with the scheme
    [{ jwksUrl: 'auth.example.com/.well-known/jwks.json', issuer: false }, `jwksUrl ${noScheme} https://auth.example.com/.well-known/jwks.json`],
    [{ discovery: true, issuer: 'tenant.eu.auth0.com/', audience: 'a' }, `issuer ${noScheme} https://tenant.eu.auth0.com/`],
    [{ supabaseUrl: URL, legacyTokens: { until: soon, apiKey: 'k', userUrl: 'auth.example.com/user' } }, `legacyTokens.userUrl ${noScheme} https://auth.example.com/user`],
    // nothing to offer
    [{ supabaseUrl: 'not a url' }, 'supabaseUrl is not a valid URL: not a url'],
    [{ supabaseUrl: 'abc' }, 'supabaseUrl is not a valid URL: abc']
  ]
  for (const [options, message] of cases) t.equal(refusal(options), message, JSON.stringify(options))
  // a project URL on another host, and a custom domain, are as before
  t.equal(single({ supabaseUrl: 'https://abc.supabase.co' }).authBase, 'https://abc.supabase.co/auth/v1')
  t.equal(single({ supabaseUrl: 'https://auth.supabase.company.example' }).authBase, 'https://auth.supabase.company.example/auth/v1')
})

t.test('an unknown option says which known one it resembles, when one does', async (t) => {
  const soon = new Date(Date.now() + 3_600_000).toISOString()
  const cases: Array<[unknown, string]> = [
    [{ supabaseUrl: URL, jwksURL: 'https://a.example/jwks' }, 'unknown option jwksURL: did you mean jwksUrl?'],
    [{ supabaseUrl: URL, cacheTTL: 60 }, 'unknown option cacheTTL: did you mean cacheTtl?'],
    [{ supabaseUrl: URL, cache_ttl: 60 }, 'unknown option cache_ttl: did you mean cacheTtl?'],
    [{ supabaseUrl: URL, audiences: ['a'] }, 'unknown option audiences: did you mean audience?'],
    [{ supabaseUrl: URL, algorithm: ['ES256'] }, 'unknown option algorithm: did you mean algorithms?'],
    [{ supabaseUrl: URL, clockTolerence: 5 }, 'unknown option clockTolerence: did you mean clockTolerance?'],
    [{ supabaseURL: URL }, 'unknown option supabaseURL: did you mean supabaseUrl?'],
    [{ issuers: [{ supabaseUrl: URL, coolDown: 5 }] }, 'unknown option issuers[0].coolDown: did you mean cooldown?'],
    [{ supabaseUrl: URL, legacyTokens: { until: soon, apiKey: 'k', userURL: 'https://a.example/user' } }, 'unknown option legacyTokens.userURL: did you mean userUrl?'],
    [{ supabaseUrl: URL, require: { anonymus: false } }, 'unknown requirement require.anonymus: did you mean anonymous?'],
    // too far from every name: no guess
    [{ supabaseUrl: URL, foo: 1 }, 'unknown option foo'],
    [{ supabaseUrl: URL, url: 'x' }, 'unknown option url'],
    [{ supabaseUrl: URL, require: { role: 'admin' } }, 'unknown requirement require.role'],
    [{ supabaseUrl: URL, ['cacheTtl'.repeat(9)]: 1 }, `unknown option ${'cacheTtl'.repeat(9)}`]
  ]
  for (const [options, message] of cases) t.equal(refusal(options), message, message)
  // a route's requirements, checked when it is declared: the same
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: URL, warmStart: false })
  t.throws(() => app.get('/x', { config: { supabaseJwks: { aall: 'aal2' } as never } }, async () => 'ok'),
    { code: 'FST_SUPABASE_JWKS_OPTION', message: /unknown requirement config\.supabaseJwks of GET \/x\.aall: did you mean aal\?$/ })
})

t.test('options that are not an object are refused', async (t) => {
  t.throws(() => normalizeOptions(null), { code: 'FST_SUPABASE_JWKS_OPTION', message: /options must be an object/ })
  t.throws(() => normalizeOptions('https://abc.supabase.co'), { code: 'FST_SUPABASE_JWKS_OPTION' })
})

t.test('supabaseUrl gives the hosted JWKS URL and issuer, with or without a trailing slash', async (t) => {
  for (const supabaseUrl of ['https://abc.supabase.co', 'https://abc.supabase.co/']) {
    const config = single({ supabaseUrl })
    t.equal(config.jwksUrl?.href, 'https://abc.supabase.co/auth/v1/.well-known/jwks.json')
    t.same(config.issuer, ['https://abc.supabase.co/auth/v1'])
  }
})

t.test('defaults', async (t) => {
  const config = single({ supabaseUrl: 'http://127.0.0.1:54321' })
  t.same(config.algorithms, ['RS256'])
  t.same(config.audience, ['authenticated'])
  t.same(config.issuer, ['http://127.0.0.1:54321/auth/v1'])
  t.equal(config.clockToleranceMs, 0)
  t.equal(config.cacheTtlMs, 600_000)
  t.equal(config.cooldownMs, 30_000)
  t.equal(config.staleIfErrorMs, 3_600_000)
  t.equal(config.timeoutMs, 5_000)
  t.equal(config.maxResponseSize, 65_536)
  t.equal(config.maxTokenLength, 16_384)
  t.equal(config.tokenCache, 10_000)
  t.equal(config.hook, false)
  t.equal(config.realm, 'api')
  t.equal(config.insecureJwksUrl, false, 'loopback http is fine')
})

t.test('explicit values: jwksUrl wins, issuer and audience lists or false, seconds become ms', async (t) => {
  const config = single({
    supabaseUrl: 'https://abc.supabase.co',
    jwksUrl: 'https://auth.example.com/.well-known/jwks.json?v=1',
    issuer: ['https://a', 'https://b'],
    audience: false,
    algorithms: ['ES256', 'RS256', 'ES256'],
    clockTolerance: 5,
    cacheTtl: 0.5,
    cooldown: 0,
    staleIfError: 0,
    timeout: 0.25,
    maxResponseSize: 1000,
    maxTokenLength: 4096,
    tokenCache: 0,
    hook: 'onRequest',
    realm: 'my api',
    allowInsecureJwksUrl: false
  })
  t.equal(config.jwksUrl?.href, 'https://auth.example.com/.well-known/jwks.json?v=1')
  t.same(config.issuer, ['https://a', 'https://b'])
  t.equal(config.audience, undefined)
  t.same(config.algorithms, ['ES256', 'RS256'], 'deduplicated')
  t.equal(config.clockToleranceMs, 5000)
  t.equal(config.cacheTtlMs, 500)
  t.equal(config.cooldownMs, 0)
  t.equal(config.timeoutMs, 250)
  t.equal(config.hook, 'onRequest')
  t.equal(config.tokenCache, 0)
  t.equal(config.realm, 'my api')
  t.same(single({ jwksUrl: 'http://localhost:9999/.well-known/jwks.json', issuer: false }).issuer, undefined)
  t.equal(single({ supabaseUrl: 'https://abc.supabase.co/' }).jwksUrl?.href, 'https://abc.supabase.co/auth/v1/.well-known/jwks.json', 'a trailing slash is fine')
  const bounds = single({ supabaseUrl: URL, clockTolerance: 300, cacheTtl: 86_400, cooldown: 3600, staleIfError: 604_800, timeout: 60 })
  t.same([bounds.clockToleranceMs, bounds.cacheTtlMs, bounds.cooldownMs, bounds.staleIfErrorMs, bounds.timeoutMs], [300_000, 86_400_000, 3_600_000, 604_800_000, 60_000], 'each bound itself is accepted')
  t.equal(single({ supabaseUrl: URL, audience: 'x' }).audience?.[0], 'x')
})

t.test('plain http off loopback is allowed only when asked, with a warning in the log', async (t) => {
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(line) } } } })
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: 'http://gotrue.internal:9999', allowInsecureJwksUrl: true })
  await app.ready()
  const warning = lines.map((line) => JSON.parse(line)).find((entry) => /plain http/.test(entry.msg))
  t.ok(warning, 'a warning is logged')
  t.equal(warning.level, 40)
  t.equal(warning.jwksUrl, 'http://gotrue.internal:9999/auth/v1/.well-known/jwks.json')
  for (const host of ['127.0.0.1', 'localhost', '[::1]']) {
    t.equal(single({ supabaseUrl: `http://${host}:54321` }).insecureJwksUrl, false, host)
  }
})

t.test('Fastify register options (prefix, logLevel) are not refused', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: URL, logLevel: 'warn', prefix: '/x' } as supabaseJwks.SupabaseJwksOptions)
  await app.ready()
  t.type(app.authenticate, 'function')
})
