import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt'
import supabaseJwks, { fastifyJwtOptions, hasScopes } from '../lib/index'
import { grants } from '../lib/scope'
import { codeOf, appWithEarlyRoute, issuerFor, registrationError } from './fixtures/helpers'

/*
 * The `scope` requirement: every scope a route lists must be in the token's space-delimited `scope`
 * claim (as Supabase Auth's OAuth 2.1 server issues it), or 403 insufficient_scope naming them.
 */

const challengeOf = (scope: string) =>
  `Bearer realm="api", error="insufficient_scope", scope="${scope}", error_description="The token lacks a scope this route requires"`

type Response = Awaited<ReturnType<FastifyInstance['inject']>>

t.test('scope: one, several, a missing or non-string claim, a prefix of another scope; 403 naming the scopes', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  const routes: Array<[string, string | string[]]> = [
    ['/read', 'read'],
    ['/read-all', 'read:all'],
    ['/both', ['read', 'write']],
    ['/twice', ['read', 'read']]
  ]
  for (const [url, scope] of routes) {
    app.get(url, { preHandler: app.authenticate, config: { supabaseJwks: { scope } } }, async (request) => ({ scope: request.user.scope }))
  }
  app.get('/open', { preHandler: app.authenticate }, async () => 'open')
  const call = (url: string, claims: Record<string, unknown>) =>
    app.inject({ url, headers: { authorization: `Bearer ${issuer.sign({ client_id: 'mcp-client', ...claims })}` } })
  const cases: Array<[string, unknown, number]> = [
    ['/read', 'read', 200],
    ['/read', 'openid read email', 200],
    ['/read', 'email read', 200],
    ['/read', 'write', 403],
    ['/read', 'read:all', 403], // read is not a part of read:all
    ['/read', 'readx xread', 403],
    ['/read', 'read\twrite', 403], // only a space delimits
    ['/read', '', 403],
    ['/read', undefined, 403], // no claim: no scope
    ['/read', ['read'], 403], // not a string: no scope
    ['/read', 42, 403],
    ['/read-all', 'read', 403], // read:all is not granted by read
    ['/read-all', 'read:all', 200],
    ['/both', 'write read', 200],
    ['/both', 'read', 403],
    ['/both', 'write', 403],
    ['/both', 'read  write', 200], // a run of spaces delimits as one
    ['/twice', 'read', 200],
    ['/open', undefined, 200]
  ]
  for (const [url, scope, status] of cases) {
    const response = await call(url, { scope })
    t.equal(response.statusCode, status, `${url} with scope ${JSON.stringify(scope)}: ${status}`)
    if (status === 403) {
      t.equal(codeOf(response), 'FST_SUPABASE_JWKS_FORBIDDEN', url)
      const required = routes.find(([path]) => path === url)![1]
      const text = [...new Set([required].flat())].join(' ')
      t.equal(response.headers['www-authenticate'], challengeOf(text), `${url}: the challenge names the route's scopes`)
      t.equal(response.json().message, `The token does not grant access to this route: the token lacks a scope the route requires (${text})`)
    }
  }
  t.same((await call('/both', { scope: 'read write' })).json(), { scope: 'read write' }, 'request.user has the claim')
})

t.test('the require option sets a default scope; a route overrides it, or relaxes it with []; hook mode reads both', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, hook: 'onRequest', require: { scope: 'api', aal: 'aal2' } })
  app.get('/default', async () => 'default')
  app.get('/admin', { config: { supabaseJwks: { scope: ['admin'] } } }, async () => 'admin')
  app.get('/any-scope', { config: { supabaseJwks: { scope: [] } } }, async () => 'any')
  app.get('/public', { config: { supabaseJwks: false } }, async () => 'public')
  const call = async (url: string, claims: Record<string, unknown>): Promise<Response> =>
    await app.inject({ url, headers: { authorization: `Bearer ${issuer.sign({ aal: 'aal2', ...claims })}` } })
  t.equal((await call('/default', { scope: 'api' })).statusCode, 200)
  const refused = await call('/default', { scope: 'other' })
  t.equal(refused.statusCode, 403)
  t.equal(refused.headers['www-authenticate'], challengeOf('api'))
  t.equal((await call('/default', { scope: 'api', aal: 'aal1' })).statusCode, 403, 'the rest of require holds')
  t.equal((await call('/admin', { scope: 'admin' })).statusCode, 200, 'the route\'s scope replaces the default')
  t.equal((await call('/admin', { scope: 'api' })).statusCode, 403)
  t.equal((await call('/admin', { scope: 'api' })).headers['www-authenticate'], challengeOf('admin'))
  t.equal((await call('/any-scope', {})).statusCode, 200, 'scope: [] asks nothing')
  t.equal((await call('/any-scope', { aal: 'aal1' })).statusCode, 403, 'and keeps aal2')
  t.equal((await app.inject({ url: '/public' })).statusCode, 200)
})

t.test('bad scope requirements are refused: in require at registration, on a route when it is declared', async (t) => {
  const issuer = await issuerFor(t)
  const cases: Array<[unknown, RegExp]> = [
    ['read write', /require.scope names one scope per string: give several as an array \(\["read","write"\]\)/],
    [['read', 'a b'], /require.scope names one scope per string: give several as an array \(\["a","b"\]\)/],
    ['', /require.scope must be a scope or an array of scopes, each a non-empty string of printable ASCII without spaces, " or \\ \(RFC 6749 §3.3\)/],
    [['read', ''], /require.scope must be a scope/],
    ['a"b', /require.scope must be a scope/],
    ['a\\b', /require.scope must be a scope/],
    ['lecture:écrire', /require.scope must be a scope/],
    ['read\twrite', /require.scope must be a scope/],
    [['read', 5], /require.scope must be a scope/],
    [{ read: true }, /require.scope must be a scope/],
    [null, /require.scope must be a scope/]
  ]
  for (const [scope, message] of cases) {
    const err = await registrationError({ supabaseUrl: issuer.url, require: { scope } })
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', JSON.stringify(scope))
    t.match(err.message, message, JSON.stringify(scope))
  }
  t.match((await registrationError({ supabaseUrl: issuer.url, require: { scopes: 'read' } })).message, /unknown requirement require.scopes: did you mean scope\?/)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  t.throws(() => app.get('/bad', { config: { supabaseJwks: { scope: 'read write' } } }, async () => 'x'),
    { code: 'FST_SUPABASE_JWKS_OPTION', message: /config.supabaseJwks of GET \/bad.scope names one scope per string/ })
})

t.test('a route declared before the plugin gets its scope requirement on its first request', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appWithEarlyRoute(t, { scope: 'early' }, { supabaseUrl: issuer.url })
  const call = (scope: string) => app.inject({ url: '/early', headers: { authorization: `Bearer ${issuer.sign({ scope })}` } })
  t.equal((await call('late')).statusCode, 403)
  t.equal((await call('late')).headers['www-authenticate'], challengeOf('early'))
  t.equal((await call('early')).statusCode, 200)
})

t.test('with @fastify/jwt (fastifyJwtOptions): the scope requirement and its challenge; resourceMetadata is refused there', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url, warmStart: false, require: { scope: 'api' } }) as unknown as FastifyJWTOptions)
  app.get('/me', { config: { supabaseJwks: { scope: ['api', 'me'] } } }, async (request) => {
    await request.jwtVerify()
    return { sub: request.user.sub }
  })
  const call = (scope: string) => app.inject({ url: '/me', headers: { authorization: `Bearer ${issuer.sign({ scope })}` } })
  t.equal((await call('api me')).statusCode, 200)
  const refused = await call('api')
  t.equal(refused.statusCode, 403)
  t.equal(codeOf(refused), 'FST_SUPABASE_JWKS_FORBIDDEN')
  t.equal(refused.headers['www-authenticate'], challengeOf('api me'))
  t.throws(() => fastifyJwtOptions({ supabaseUrl: issuer.url, resourceMetadata: { resource: 'https://api.example.com' } }), {
    code: 'FST_SUPABASE_JWKS_OPTION',
    message: /resourceMetadata is not available through @fastify\/jwt: the document is served by the plugin's own registration, and @fastify\/jwt's own 401s/
  })
})

t.test('hasScopes: the claims of verify() checked as a route would check them', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  const user = await app.supabaseJwks.verify(issuer.sign({ client_id: 'mcp-client', scope: 'openid mcp:tools' }))
  t.equal(hasScopes(user, 'mcp:tools'), true)
  t.equal(hasScopes(user, ['openid', 'mcp:tools']), true)
  t.equal(hasScopes(user, ['mcp:tools', 'mcp:admin']), false)
  t.equal(hasScopes(user, 'mcp'), false, 'whole scopes only')
  t.equal(hasScopes(user, []), true, 'nothing asked')
  t.equal(hasScopes(await app.supabaseJwks.verify(issuer.sign()), 'openid'), false, 'no scope claim')
  t.equal(supabaseJwks.hasScopes, hasScopes, 'also on the plugin, as the ES module entry exports it')
  t.throws(() => hasScopes(user, 'openid mcp:tools'), { name: 'TypeError', message: /hasScopes: "openid mcp:tools" is not a scope/ })
  t.throws(() => hasScopes(user, ['']), TypeError)
  t.throws(() => hasScopes(user, [42 as unknown as string]), { message: /hasScopes: 42 is not a scope/ })
})

/** The median of `values`. */
function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

t.test('hostile scope claims: a 403 (or 200) in time linear in their length, never a 500', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, maxTokenLength: 64 * 1024 })
  app.get('/scoped', { preHandler: app.authenticate, config: { supabaseJwks: { scope: ['read', 'read:all'] } } }, async () => 'ok')
  const size = 30_000
  const hostile: Record<string, string> = {
    spaces: ' '.repeat(size),
    'many scopes': 'r '.repeat(size / 2),
    'prefixes of the scope': 'rea'.repeat(size / 3),
    'the scope without a delimiter': 'read'.repeat(size / 4),
    'near misses': 'read:al '.repeat(size / 8),
    'a match at the end': `${'read:alx '.repeat(size / 9 - 2)}read read:all`
  }
  const control = issuer.sign({ scope: 'x'.repeat(size) })
  const send = (token: string) => app.inject({ url: '/scoped', headers: { authorization: `Bearer ${token}` } })
  const timeOf = async (token: string) => {
    const started = process.hrtime.bigint()
    for (let i = 0; i < 3; i++) await send(token)
    return Number(process.hrtime.bigint() - started)
  }
  for (const [name, scope] of Object.entries(hostile)) {
    const token = issuer.sign({ scope })
    const answer = await send(token)
    t.equal(answer.statusCode, name === 'a match at the end' ? 200 : 403, `${name}: answered, not a 500`)
    await send(control)
    const ratios: number[] = []
    for (let round = 0; round < 9; round++) ratios.push(await timeOf(token) / await timeOf(control))
    t.ok(median(ratios) < 3, `${name} (${scope.length} characters): ${median(ratios).toFixed(2)} x the time of a plain claim as long`)
  }
  // the parse alone, against a claim twice as long: linear, not quadratic
  const parse = (claim: string) => {
    const started = process.hrtime.bigint()
    for (let i = 0; i < 20; i++) grants(claim, ['read', 'read:all'])
    return Number(process.hrtime.bigint() - started)
  }
  const ratios: number[] = []
  for (let round = 0; round < 15; round++) ratios.push(parse('rea read:al '.repeat(20_000)) / parse('rea read:al '.repeat(10_000)))
  t.ok(median(ratios) < 3, `twice the claim, ${median(ratios).toFixed(2)} x the time`)
})
