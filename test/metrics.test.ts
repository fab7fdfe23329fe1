import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import client from 'prom-client'
import supabaseJwks from '../lib/index'
import { errorCodes } from '../lib/errors'
import { issuerFor } from './fixtures/helpers'

/** The `/metrics` route of docs/metrics.md, as written there. */
function metricsRoute (app: FastifyInstance): void {
  const registry = new client.Registry()
  const stats = () => app.supabaseJwks.stats()
  registry.registerMetric(new client.Counter({
    name: 'supabase_jwks_answers_total',
    help: 'Tokens accepted (code="OK") and refused, by error code',
    labelNames: ['code'],
    registers: [],
    collect () {
      const { accepted, rejected } = stats()
      this.reset()
      this.inc({ code: 'OK' }, accepted)
      for (const [code, count] of Object.entries(rejected)) this.inc({ code }, count)
    }
  }))
  registry.registerMetric(new client.Counter({
    name: 'supabase_jwks_token_cache_total',
    help: 'Token-cache lookups, by result',
    labelNames: ['result'],
    registers: [],
    collect () {
      const { tokenCacheHits, tokenCacheMisses } = stats()
      this.reset()
      this.inc({ result: 'hit' }, tokenCacheHits)
      this.inc({ result: 'miss' }, tokenCacheMisses)
    }
  }))
  registry.registerMetric(new client.Counter({
    name: 'supabase_jwks_fetches_total',
    help: 'JWKS fetches started',
    registers: [],
    collect () { this.reset(); this.inc(stats().fetches) }
  }))
  registry.registerMetric(new client.Counter({
    name: 'supabase_jwks_fetch_failures_total',
    help: 'JWKS fetches that failed',
    registers: [],
    collect () { this.reset(); this.inc(stats().failures) }
  }))
  registry.registerMetric(new client.Gauge({
    name: 'supabase_jwks_keys',
    help: 'Usable signing keys held',
    registers: [],
    collect () { this.set(stats().keys) }
  }))
  app.get('/metrics', { config: { supabaseJwks: false } }, async (_request, reply) => {
    reply.type(registry.contentType)
    return registry.metrics()
  })
}

/** Prometheus text → `name{labels}` → value. */
function parse (text: string): Map<string, number> {
  const samples = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const space = line.lastIndexOf(' ')
    samples.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return samples
}

t.test('stats() counts answers by code and token-cache hits and misses; prom-client exports them', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  app.get('/me', { preHandler: app.authenticate }, async (request) => request.user)
  app.get('/mfa', { preHandler: app.authenticate, config: { supabaseJwks: { aal: 'aal2' } } }, async () => 'ok')
  metricsRoute(app)
  const url = await app.listen({ host: '127.0.0.1', port: 0 })

  const zero = app.supabaseJwks.stats()
  t.equal(zero.accepted, 0)
  t.same(Object.values(zero.rejected), Object.values(zero.rejected).map(() => 0), 'every code is there, from 0')
  t.same(Object.keys(zero.rejected), Object.keys(errorCodes), 'one count per code')

  const token = issuer.sign()
  const get = (path: string, authorization?: string) =>
    fetch(`${url}${path}`, { headers: authorization === undefined ? {} : { authorization } }).then((response) => response.status)
  t.equal(await get('/me', `Bearer ${token}`), 200)
  t.equal(await get('/me', `Bearer ${token}`), 200)
  t.equal(await get('/me', `Bearer ${token}`), 200)
  t.equal(await get('/me'), 401)
  t.equal(await get('/me', 'Bearer'), 400)
  t.equal(await get('/me', `Bearer ${issuer.sign({ exp: 1 })}`), 401)
  t.equal(await get('/mfa', `Bearer ${token}`), 403)
  await t.rejects(app.supabaseJwks.verify('nope'))
  t.ok(await app.supabaseJwks.verify(token))

  const stats = app.supabaseJwks.stats()
  t.equal(stats.accepted, 4, 'three requests and one verify()')
  t.match(stats.rejected, {
    FST_SUPABASE_JWKS_NO_TOKEN: 1,
    FST_SUPABASE_JWKS_BAD_REQUEST: 1,
    FST_SUPABASE_JWKS_TOKEN_EXPIRED: 1,
    FST_SUPABASE_JWKS_FORBIDDEN: 1,
    FST_SUPABASE_JWKS_MALFORMED_TOKEN: 1,
    FST_SUPABASE_JWKS_TOKEN_INVALID: 0
  })
  // the token: a miss, a miss that admits it (see the token cache policy), then hits on /me, /mfa and
  // verify(); the expired token and verify('nope') are misses; requests without a token never ask
  t.same([stats.tokenCacheHits, stats.tokenCacheMisses], [3, 4], 'hits and misses')
  stats.rejected.FST_SUPABASE_JWKS_NO_TOKEN = 99
  t.equal(app.supabaseJwks.stats().rejected.FST_SUPABASE_JWKS_NO_TOKEN, 1, 'a copy: the counts cannot be changed from outside')

  const response = await fetch(`${url}/metrics`)
  t.equal(response.status, 200, 'the metrics route is public')
  t.match(response.headers.get('content-type'), /^text\/plain/)
  const samples = parse(await response.text())
  t.equal(samples.get('supabase_jwks_answers_total{code="OK"}'), 4)
  t.equal(samples.get('supabase_jwks_answers_total{code="FST_SUPABASE_JWKS_FORBIDDEN"}'), 1)
  t.equal(samples.get('supabase_jwks_answers_total{code="FST_SUPABASE_JWKS_KEYS_UNAVAILABLE"}'), 0)
  t.equal(samples.get('supabase_jwks_token_cache_total{result="hit"}'), 3)
  t.equal(samples.get('supabase_jwks_token_cache_total{result="miss"}'), 4)
  t.equal(samples.get('supabase_jwks_fetches_total'), 1)
  t.equal(samples.get('supabase_jwks_fetch_failures_total'), 0)
  t.equal(samples.get('supabase_jwks_keys'), 1)
  t.equal(await get('/me', `Bearer ${token}`), 200)
  t.equal(parse(await (await fetch(`${url}/metrics`)).text()).get('supabase_jwks_answers_total{code="OK"}'), 5, 'read anew at each scrape')
})
