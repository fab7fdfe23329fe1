import t from 'tap'
import Fastify from 'fastify'
import supabaseJwks from '../lib/index'
import { codeOf, issuerFor } from './fixtures/helpers'

for (const hook of ['onRequest', 'preHandler'] as const) {
  t.test(`hook: '${hook}' protects every route of the registering context, with a per-route opt-out`, async (t) => {
    const issuer = await issuerFor(t)
    const app = Fastify()
    t.teardown(() => app.close())
    app.get('/outside', async () => 'outside')
    await app.register(async (scope) => {
      await scope.register(supabaseJwks, { supabaseUrl: issuer.url, hook })
      scope.get('/me', async (request) => ({ sub: request.user.sub }))
      scope.get('/health', { config: { supabaseJwks: false } }, async () => 'ok')
    })
    const token = issuer.sign({ sub: 'user-1' })
    const noToken = await app.inject({ url: '/me' })
    t.equal(noToken.statusCode, 401)
    t.equal(codeOf(noToken), 'FST_SUPABASE_JWKS_NO_TOKEN')
    t.equal(noToken.headers['www-authenticate'], 'Bearer realm="api"')
    const ok = await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
    t.equal(ok.statusCode, 200)
    t.same(ok.json(), { sub: 'user-1' })
    t.equal((await app.inject({ url: '/health' })).statusCode, 200, 'opted out')
    t.equal((await app.inject({ url: '/outside' })).statusCode, 200, 'a route outside the context is not touched')
  })
}

t.test('fastify.authenticate works as an onRequest hook of one route', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, realm: 'orders' })
  app.get('/orders', { onRequest: app.authenticate }, async (request) => ({ sub: request.user.sub }))
  const res = await app.inject({ url: '/orders', headers: { authorization: 'Bearer x.y.zA' } })
  t.equal(res.statusCode, 401)
  t.equal(res.headers['www-authenticate'], 'Bearer realm="orders", error="invalid_token", error_description="The token is invalid"')
  t.equal((await app.inject({ url: '/orders', headers: { authorization: `Bearer ${issuer.sign({ sub: 's' })}` } })).json().sub, 's')
})

t.test('without the hook option, routes without authenticate stay public', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url })
  app.get('/public', async () => 'public')
  t.equal((await app.inject({ url: '/public' })).statusCode, 200)
  t.equal(issuer.jwksRequests, 1, 'warm start: one fetch when the server starts, none for a public route')
})
