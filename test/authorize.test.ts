import t from 'tap'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import fastifyAuth from '@fastify/auth'
import supabaseJwks from '../lib/index'
import { codeOf, getMe, appWithEarlyRoute, issuerFor, registrationError } from './fixtures/helpers'

const FORBIDDEN = 'Bearer realm="api", error="insufficient_scope", error_description="The token does not grant access to this route"'

t.test('route requirements: aal2, no anonymous users, a check; 403 insufficient_scope, 401 still for bad tokens', async (t) => {
  const issuer = await issuerFor(t)
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(line) } } } })
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  app.get('/me', { preHandler: app.authenticate }, async (request) => request.user)
  const entries = () => lines.map((line) => JSON.parse(line) as { msg: string })
  const routes: Array<[string, supabaseJwks.Requirements]> = [
    ['/mfa', { aal: 'aal2' }],
    ['/members', { anonymous: false }],
    ['/admin', { check: (user) => (user as Record<string, unknown>).user_role === 'admin' }],
    ['/async', { check: async (user, request) => request.headers['x-tenant'] === (user as Record<string, unknown>).tenant }],
    ['/throws', { check: () => { throw new Error('a bug in the check') } }],
    ['/truthy', { check: () => 1 as unknown as boolean }]
  ]
  for (const [url, supabaseJwks] of routes) {
    app.get(url, { preHandler: app.authenticate, config: { supabaseJwks } }, async (request) => ({ sub: request.user.sub }))
  }
  const call = (url: string, token: string, headers: Record<string, string> = {}) =>
    app.inject({ url, headers: { authorization: `Bearer ${token}`, ...headers } })
  const cases: Array<[string, string, Record<string, string>, number]> = [
    ['/mfa', issuer.sign({ aal: 'aal1' }), {}, 403],
    ['/mfa', issuer.sign({ aal: 'aal2' }), {}, 200],
    ['/members', issuer.sign({ is_anonymous: true }), {}, 403],
    ['/members', issuer.sign({ is_anonymous: false }), {}, 200],
    ['/admin', issuer.sign({ user_role: 'viewer' }), {}, 403],
    ['/admin', issuer.sign({ user_role: 'admin' }), {}, 200],
    ['/async', issuer.sign({ tenant: 'a' }), { 'x-tenant': 'b' }, 403],
    ['/async', issuer.sign({ tenant: 'a' }), { 'x-tenant': 'a' }, 200],
    ['/throws', issuer.sign(), {}, 403],
    ['/truthy', issuer.sign(), {}, 403]
  ]
  for (const [url, token, headers, status] of cases) {
    const response = await call(url, token, headers)
    t.equal(response.statusCode, status, `${url}: ${status}`)
    if (status === 403) {
      t.equal(codeOf(response), 'FST_SUPABASE_JWKS_FORBIDDEN', url)
      t.equal(response.headers['www-authenticate'], FORBIDDEN, url)
    }
  }
  t.match((await call('/mfa', issuer.sign({ aal: 'aal1' }))).json().message, /requires aal2/)
  const expired = await call('/mfa', issuer.sign({ aal: 'aal2', exp: Math.floor(Date.now() / 1000) - 60 }))
  t.equal(codeOf(expired), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED', 'a token that does not verify is still a 401')
  t.ok(entries().some((entry) => entry.msg === 'supabase-jwks: a route check threw: answered 403'), 'a throwing check is logged at warn')
  t.equal((await getMe(app, issuer.sign({ aal: 'aal1' }))).statusCode, 200, 'a route without requirements asks nothing')
})

t.test('the require option sets a default for every route; route config overrides it key by key; hook mode reads both', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, hook: 'onRequest', require: { aal: 'aal2', anonymous: false } })
  app.get('/strict', async (request) => ({ sub: request.user.sub }))
  app.get('/relaxed', { config: { supabaseJwks: { aal: 'aal1' } } }, async (request) => ({ sub: request.user.sub }))
  app.get('/public', { config: { supabaseJwks: false } }, async () => 'public')
  const call = (url: string, claims: Record<string, unknown>) => app.inject({ url, headers: { authorization: `Bearer ${issuer.sign(claims)}` } })
  t.equal((await call('/strict', { aal: 'aal1' })).statusCode, 403)
  t.equal((await call('/strict', { aal: 'aal2' })).statusCode, 200)
  t.equal((await call('/strict', { aal: 'aal2', is_anonymous: true })).statusCode, 403)
  t.equal((await call('/relaxed', { aal: 'aal1' })).statusCode, 200, 'the route relaxed aal')
  t.equal((await call('/relaxed', { aal: 'aal1', is_anonymous: true })).statusCode, 403, 'and kept anonymous: false')
  t.equal((await app.inject({ url: '/public' })).statusCode, 200)
})

t.test('bad requirements are refused: in the option at registration, on a route when it is declared', async (t) => {
  const issuer = await issuerFor(t)
  const cases: Array<[unknown, RegExp]> = [
    ['aal2', /require must be an object/],
    [{ aal: 'aal3' }, /require.aal must be 'aal1' or 'aal2'/],
    [{ anonymous: 'no' }, /require.anonymous must be a boolean/],
    [{ check: true }, /require.check must be a function/],
    [{ role: 'admin' }, /unknown requirement require.role/]
  ]
  for (const [require, message] of cases) {
    const err = await registrationError({ supabaseUrl: issuer.url, require })
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION')
    t.match(err.message, message)
  }
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  t.throws(() => app.get('/bad', { config: { supabaseJwks: { aal: 'aal9' as 'aal2' } } }, async () => 'x'),
    { code: 'FST_SUPABASE_JWKS_OPTION', message: /config.supabaseJwks of GET \/bad.aal must be/ })
})

t.test('a route declared before the plugin still gets its requirements (checked on its first request)', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appWithEarlyRoute(t, { aal: 'aal2' }, { supabaseUrl: issuer.url })
  const response = await app.inject({ url: '/early', headers: { authorization: `Bearer ${issuer.sign({ aal: 'aal1' })}` } })
  t.equal(response.statusCode, 403)
})

t.test('a route declared before the plugin with invalid requirements: a coded 500 to every request, logged at error once per route', async (t) => {
  const issuer = await issuerFor(t)
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'debug', stream: { write: (line: string) => { lines.push(line) } } } })
  t.teardown(() => app.close())
  const guard = (request: FastifyRequest, reply: FastifyReply) => app.authenticate(request, reply)
  app.register(async function early (child) {
    child.get('/aal3', { config: { supabaseJwks: { aal: 'aal3' as 'aal2' } }, preHandler: guard }, async () => 'ok')
    child.get('/role', { config: { supabaseJwks: { role: 'admin' } as supabaseJwks.Requirements }, preHandler: guard }, async () => 'ok')
    child.get('/fine', { config: { supabaseJwks: { anonymous: false } }, preHandler: guard }, async () => 'ok')
  })
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  await app.ready()
  const token = issuer.sign()
  const requests = [{ authorization: `Bearer ${token}` }, {}, { authorization: 'Bearer not.a.token' }]
  for (const headers of [...requests, ...requests]) {
    const res = await app.inject({ url: '/aal3', headers })
    t.equal(res.statusCode, 500, 'a valid token, none, or a bad one: the route is broken, not the request')
    t.equal(codeOf(res), 'FST_SUPABASE_JWKS_ROUTE_CONFIG')
    t.equal(res.json().message, 'Invalid route requirements of GET /aal3: the server log says what is wrong', 'the route only: nothing of the configuration')
    t.notOk(res.headers['www-authenticate'], 'no challenge: nothing is asked of the client')
  }
  t.equal(issuer.jwksRequests, 0, 'the route is read before the token: no token was verified, no key fetched')
  const role = await app.inject({ url: '/role', headers: requests[0] })
  t.equal(codeOf(role), 'FST_SUPABASE_JWKS_ROUTE_CONFIG')
  t.equal(role.json().message, 'Invalid route requirements of GET /role: the server log says what is wrong')
  t.equal((await app.inject({ url: '/fine', headers: requests[0] })).statusCode, 200, 'a valid route declared before the plugin still works')

  const own = lines.map((line) => JSON.parse(line) as { msg: string, level: number, code?: string, route?: string, reason?: string })
    .filter((entry) => entry.msg.startsWith('supabase-jwks:'))
  const errors = own.filter((entry) => entry.level === 50)
  t.equal(errors.length, 2, 'the plugin logs it at error once per route (Fastify\'s error handler logs each 500 besides)')
  t.same(errors.map(({ code, route, reason }) => ({ code, route, reason })), [
    { code: 'FST_SUPABASE_JWKS_ROUTE_CONFIG', route: 'GET /aal3', reason: 'config.supabaseJwks of GET /aal3.aal must be \'aal1\' or \'aal2\'' },
    { code: 'FST_SUPABASE_JWKS_ROUTE_CONFIG', route: 'GET /role', reason: errors[1]?.reason }
  ], 'the log says what is wrong')
  t.match(errors[1]?.reason, /unknown requirement config.supabaseJwks of GET \/role.role/)
  t.equal(own.filter((entry) => entry.level === 40).length, 0, 'no warning per request')
  const stats = app.supabaseJwks.stats()
  t.equal(stats.rejected.FST_SUPABASE_JWKS_ROUTE_CONFIG, 7, 'counted under its own code')
  t.match(stats.rejected, { FST_SUPABASE_JWKS_TOKEN_INVALID: 0, FST_SUPABASE_JWKS_NO_TOKEN: 0, FST_SUPABASE_JWKS_MALFORMED_TOKEN: 0 }, 'never as a user\'s bad token')
})

t.test('with @fastify/auth: authenticate composes with other strategies', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  await app.register(fastifyAuth)
  const apiKey = async (request: FastifyRequest, _reply: FastifyReply) => {
    if (request.headers['x-api-key'] !== 'service-key') throw new Error('no api key')
  }
  app.get('/either', { preHandler: app.auth([app.authenticate, apiKey]) }, async () => 'ok')
  app.get('/both', { preHandler: app.auth([app.authenticate, apiKey], { relation: 'and' }), config: { supabaseJwks: { anonymous: false } } }, async () => 'ok')
  const bearer = (claims: Record<string, unknown> = {}) => ({ authorization: `Bearer ${issuer.sign(claims)}` })
  t.equal((await app.inject({ url: '/either', headers: bearer() })).statusCode, 200, 'a Supabase user')
  t.equal((await app.inject({ url: '/either', headers: { 'x-api-key': 'service-key' } })).statusCode, 200, 'a service with its key')
  t.equal((await app.inject({ url: '/either' })).statusCode, 401, 'neither')
  t.equal((await app.inject({ url: '/both', headers: { ...bearer(), 'x-api-key': 'service-key' } })).statusCode, 200, 'both')
  const anonymous = await app.inject({ url: '/both', headers: { ...bearer({ is_anonymous: true }), 'x-api-key': 'service-key' } })
  t.equal(anonymous.statusCode, 403, 'the route requirement holds inside @fastify/auth')
  t.equal(codeOf(anonymous), 'FST_SUPABASE_JWKS_FORBIDDEN')
})
