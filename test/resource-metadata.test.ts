import t from 'tap'
import Fastify from 'fastify'
import supabaseJwks from '../lib/index'
import { codeOf, issuerFor, registrationError } from './fixtures/helpers'

/*
 * The resourceMetadata option (RFC 9728): the document served at the server's root, public, in both
 * URL forms; every 401 (and 403) challenge names it.
 */

const RESOURCE = 'https://api.example.com/mcp'
const METADATA_URL = 'https://api.example.com/.well-known/oauth-protected-resource/mcp'

t.test('the document: both URL forms, at the root under a prefix, public with hook and require', async (t) => {
  const issuer = await issuerFor(t)
  for (const prefix of ['', '/api', '/api/']) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(async function api (api) {
      await api.register(supabaseJwks, {
        supabaseUrl: issuer.url,
        warmStart: false,
        hook: 'onRequest',
        require: { scope: 'mcp', aal: 'aal2' },
        resourceMetadata: { resource: RESOURCE, scopesSupported: ['mcp', 'openid'] }
      })
      api.get('/mcp', async () => 'tools')
    }, { prefix })
    await app.ready()
    const expected = { resource: RESOURCE, authorization_servers: [issuer.issuer], scopes_supported: ['mcp', 'openid'], bearer_methods_supported: ['header'] }
    for (const url of ['/.well-known/oauth-protected-resource/mcp', '/.well-known/oauth-protected-resource']) {
      const response = await app.inject({ url })
      t.equal(response.statusCode, 200, `prefix "${prefix}": ${url} at the root, without a token`)
      t.same(response.json(), expected, 'the RFC 9728 document')
      t.equal(response.body, JSON.stringify(expected), 'exactly')
      t.equal(response.headers['content-type'], 'application/json; charset=utf-8')
      t.equal(response.headers['access-control-allow-origin'], '*', 'any origin may read it')
      t.notOk(response.headers['www-authenticate'])
      t.equal((await app.inject({ method: 'HEAD', url })).statusCode, 200, 'HEAD too')
    }
    if (prefix !== '') {
      t.equal((await app.inject({ url: `${prefix.replace(/\/$/, '')}/.well-known/oauth-protected-resource` })).statusCode, 404, 'not under the prefix')
      t.equal((await app.inject({ url: '/api/mcp' })).statusCode, 401, 'the prefixed routes are still protected')
    }
  }
  t.equal(issuer.jwksRequests, 0, 'no key was needed')
})

t.test('without a path, one URL; the document without scopes_supported; authorizationServers given; several issuers by default', async (t) => {
  const issuer = await issuerFor(t)
  const other = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, resourceMetadata: { resource: 'https://api.example.com/' } })
  await app.ready()
  t.same((await app.inject({ url: '/.well-known/oauth-protected-resource' })).json(),
    { resource: 'https://api.example.com/', authorization_servers: [issuer.issuer], bearer_methods_supported: ['header'] }, 'the resource as given')
  t.equal((await app.inject({ url: '/.well-known/oauth-protected-resource/' })).statusCode, 404, 'no path-suffixed form')

  const given = Fastify()
  t.teardown(() => given.close())
  await given.register(supabaseJwks, {
    supabaseUrl: issuer.url,
    warmStart: false,
    resourceMetadata: { resource: 'http://127.0.0.1:3000', authorizationServers: ['https://auth.example.com', 'https://auth.example.com'] }
  })
  t.same((await given.inject({ url: '/.well-known/oauth-protected-resource' })).json().authorization_servers, ['https://auth.example.com'], 'as given, once each')

  const routed = Fastify()
  t.teardown(() => routed.close())
  await routed.register(supabaseJwks, {
    issuers: [{ supabaseUrl: issuer.url }, { supabaseUrl: other.url }],
    warmStart: false,
    resourceMetadata: { resource: 'https://api.example.com' }
  })
  t.same((await routed.inject({ url: '/.well-known/oauth-protected-resource' })).json().authorization_servers, [issuer.issuer, other.issuer], 'every configured issuer')
})

t.test('resource_metadata in every 401 and 403 challenge; not in a 400; a 503 has no challenge', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, resourceMetadata: { resource: RESOURCE } })
  app.get('/mcp', { preHandler: app.authenticate, config: { supabaseJwks: { scope: ['mcp:tools', 'mcp:read'] } } }, async () => 'ok')
  app.get('/mfa', { preHandler: app.authenticate, config: { supabaseJwks: { aal: 'aal2' } } }, async () => 'ok')
  const metadata = `resource_metadata="${METADATA_URL}"`
  const invalid = (description: string) => `Bearer realm="api", error="invalid_token", error_description="${description}", ${metadata}`
  const [head, body] = issuer.sign().split('.')
  const cases: Array<[string, Record<string, string>, number, string, string | undefined]> = [
    ['/mcp', {}, 401, 'FST_SUPABASE_JWKS_NO_TOKEN', `Bearer realm="api", ${metadata}`],
    ['/mcp', { authorization: 'Basic dXNlcjpwYXNz' }, 401, 'FST_SUPABASE_JWKS_NO_TOKEN', `Bearer realm="api", ${metadata}`],
    ['/mcp', { authorization: `Bearer ${issuer.sign({ exp: Math.floor(Date.now() / 1000) - 60 })}` }, 401, 'FST_SUPABASE_JWKS_TOKEN_EXPIRED', invalid('The token has expired')],
    ['/mcp', { authorization: `Bearer ${head}.${body}.${'A'.repeat(342)}` }, 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', invalid('The token is invalid')],
    ['/mcp', { authorization: 'Bearer not-a-jwt' }, 401, 'FST_SUPABASE_JWKS_MALFORMED_TOKEN', invalid('The token is malformed')],
    ['/mcp', { authorization: `Bearer ${issuer.sign({}, { header: { kid: 'gone' } })}` }, 401, 'FST_SUPABASE_JWKS_UNKNOWN_KID', invalid('The token was signed with an unknown key')],
    ['/mcp', { authorization: `Bearer ${issuer.signLegacy()}` }, 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', invalid('The token algorithm is not allowed')],
    ['/mcp', { authorization: `Bearer ${issuer.sign({ scope: 'mcp:tools' })}` }, 403, 'FST_SUPABASE_JWKS_FORBIDDEN',
      `Bearer realm="api", error="insufficient_scope", scope="mcp:tools mcp:read", error_description="The token lacks a scope this route requires", ${metadata}`],
    ['/mfa', { authorization: `Bearer ${issuer.sign()}` }, 403, 'FST_SUPABASE_JWKS_FORBIDDEN',
      `Bearer realm="api", error="insufficient_scope", error_description="The token does not grant access to this route", ${metadata}`],
    ['/mcp', { authorization: 'Bearer a b' }, 400, 'FST_SUPABASE_JWKS_BAD_REQUEST',
      'Bearer realm="api", error="invalid_request", error_description="Malformed Authorization header"']
  ]
  for (const [url, headers, status, code, challenge] of cases) {
    const response = await app.inject({ url, headers })
    t.equal(response.statusCode, status, code)
    t.equal(codeOf(response), code)
    t.equal(response.headers['www-authenticate'], challenge, `${code}: the challenge, exactly`)
  }
  t.equal((await app.inject({ url: '/mcp', headers: { authorization: `Bearer ${issuer.sign({ scope: 'mcp:read mcp:tools' })}` } })).statusCode, 200)

  // the keys cannot be had: 503, no challenge (nothing is asked of the client's credentials)
  const down = await issuerFor(t)
  const unavailable = Fastify()
  t.teardown(() => unavailable.close())
  await unavailable.register(supabaseJwks, { supabaseUrl: down.url, warmStart: false, resourceMetadata: { resource: RESOURCE } })
  unavailable.get('/mcp', { preHandler: unavailable.authenticate }, async () => 'ok')
  down.respondWith((_request, response) => { response.writeHead(500).end(); return true })
  const answer = await unavailable.inject({ url: '/mcp', headers: { authorization: `Bearer ${down.sign()}` } })
  t.equal(answer.statusCode, 503)
  t.equal(codeOf(answer), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  t.notOk(answer.headers['www-authenticate'])
})

t.test('a hook-mode 401 names the document too, and a resource without a path names the bare URL', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, hook: 'preHandler', realm: 'mcp', resourceMetadata: { resource: 'http://localhost:8080' } })
  app.get('/tools', async () => 'tools')
  const response = await app.inject({ url: '/tools' })
  t.equal(response.statusCode, 401)
  t.equal(response.headers['www-authenticate'], 'Bearer realm="mcp", resource_metadata="http://localhost:8080/.well-known/oauth-protected-resource"')
})

t.test('bad resourceMetadata options are refused at registration, with the fix', async (t) => {
  const issuer = await issuerFor(t)
  const cases: Array<[unknown, RegExp, Record<string, unknown>?]> = [
    ['https://api.example.com', /resourceMetadata must be an object \{ resource, scopesSupported, authorizationServers \}/],
    [null, /resourceMetadata must be an object/],
    [{}, /resourceMetadata.resource must be a non-empty string URL/],
    [{ resource: 'api.example.com/mcp' }, /resourceMetadata.resource has no scheme \(https:\/\/, or http:\/\/ on a loopback host\): set https:\/\/api.example.com\/mcp/],
    [{ resource: 'http://api.example.com/mcp' }, /resourceMetadata.resource http:\/\/api.example.com\/mcp must use https \(http only on a loopback host\)/],
    [{ resource: 'ftp://api.example.com' }, /resourceMetadata.resource must be an http\(s\) URL/],
    [{ resource: 'https://api.example.com/mcp#top' }, /resourceMetadata.resource must not carry credentials or a fragment/],
    [{ resource: 'https://api.example.com/mcp#' }, /must not carry credentials or a fragment/],
    [{ resource: 'https://user:pass@api.example.com' }, /must not carry credentials or a fragment/],
    [{ resource: 'https://api.example.com/mcp?tenant=1' }, /resourceMetadata.resource must not carry a query string: the metadata document's URL is made from its path \(RFC 9728 §3.1\)/],
    [{ resource: 'https://api.example.com/mcp?' }, /must not carry a query string/],
    [{ resource: 'https://API.example.com:443/a/b/' }, /resourceMetadata.resource must be written in its normal form, as clients compare it \(RFC 9728 §3.3\): https:\/\/api\.example\.com\/a\/b\//],
    [{ resource: 'https://api.example.com/%2e%2e/x' }, /must be written in its normal form.*: https:\/\/api\.example\.com\/x$/],
    [{ resource: 'https://api.example.com/tenants/:id' }, /resourceMetadata.resource has a path \(\/tenants\/:id\) with characters other than letters, digits, -, ., _, ~ and \/: the path becomes a route of the server/],
    [{ resource: 'https://api.example.com/a b' }, /has a path \(\/a%20b\) with characters other than/],
    [{ resource: 'https://api.example.com/*' }, /has a path/],
    [{ resource: RESOURCE, authorizationServer: ['https://auth.example.com'] }, /unknown option resourceMetadata.authorizationServer: did you mean authorizationServers\?/],
    [{ resource: RESOURCE, scopesSupported: [] }, /resourceMetadata.scopesSupported must be a non-empty array of scopes \(or left out\)/],
    [{ resource: RESOURCE, scopesSupported: 'mcp' }, /resourceMetadata.scopesSupported must be a non-empty array/],
    [{ resource: RESOURCE, scopesSupported: ['mcp tools'] }, /resourceMetadata.scopesSupported names one scope per string/],
    [{ resource: RESOURCE, authorizationServers: [] }, /resourceMetadata.authorizationServers must be a non-empty array of issuer URLs \(or left out: the configured issuers\)/],
    [{ resource: RESOURCE, authorizationServers: ['http://auth.example.com'] }, /resourceMetadata.authorizationServers\[0\] http:\/\/auth.example.com\/ must use https/],
    [{ resource: RESOURCE, authorizationServers: [42] }, /resourceMetadata.authorizationServers\[0\] must be a non-empty string URL/],
    [{ resource: RESOURCE }, /resourceMetadata.authorizationServers is required when no issuer is configured \(issuer: false\)/, { jwksUrl: `${issuer.url}/jwks`, issuer: false }],
    [{ resource: RESOURCE }, /resourceMetadata.authorizationServers \(the configured issuer "supabase"\) is not a valid URL: supabase/, { jwksUrl: `${issuer.url}/jwks`, issuer: 'supabase' }]
  ]
  for (const [resourceMetadata, message, source] of cases) {
    const err = await registrationError({ ...(source ?? { supabaseUrl: issuer.url }), resourceMetadata })
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', JSON.stringify(resourceMetadata))
    t.match(err.message, message, JSON.stringify(resourceMetadata))
  }
})

t.test('the document is served once per server: a second registration with resourceMetadata, or an app route at its path, fails with a code', async (t) => {
  const issuer = await issuerFor(t)
  const twice = Fastify()
  twice.register(async (one) => { await one.register(supabaseJwks, { supabaseUrl: issuer.url, resourceMetadata: { resource: 'https://api.example.com/a' } }) })
  twice.register(async (two) => { await two.register(supabaseJwks, { supabaseUrl: issuer.url, resourceMetadata: { resource: 'https://api.example.com/b' } }) }, { prefix: '/b' })
  await t.rejects(async () => { await twice.ready() }, {
    code: 'FST_SUPABASE_JWKS_REGISTRATION',
    message: 'fastify-supabase-jwks cannot be registered: resourceMetadata serves GET /.well-known/oauth-protected-resource, which is already a route of ' +
      'this server (another registration of the plugin with resourceMetadata, or the app\'s own): one registration per server serves the document'
  })
  await twice.close()

  const own = Fastify()
  own.get('/.well-known/oauth-protected-resource/mcp', async () => ({}))
  own.register(supabaseJwks, { supabaseUrl: issuer.url, resourceMetadata: { resource: RESOURCE } })
  await t.rejects(async () => { await own.ready() }, { code: 'FST_SUPABASE_JWKS_REGISTRATION', message: /serves GET \/.well-known\/oauth-protected-resource\/mcp, which is already a route/ })
  await own.close()

  // one registration with it, another (for another issuer) without: fine
  const other = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(async (one) => {
    await one.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, hook: 'onRequest', resourceMetadata: { resource: RESOURCE } })
    one.get('/mcp', async () => 'mcp')
  })
  await app.register(async (two) => {
    await two.register(supabaseJwks, { supabaseUrl: other.url, warmStart: false, hook: 'onRequest' })
    two.get('/other', async () => 'other')
  })
  t.equal((await app.inject({ url: '/.well-known/oauth-protected-resource' })).json().authorization_servers[0], issuer.issuer)
  t.equal((await app.inject({ url: '/mcp' })).headers['www-authenticate'], `Bearer realm="api", resource_metadata="${METADATA_URL}"`)
  t.equal((await app.inject({ url: '/other' })).headers['www-authenticate'], 'Bearer realm="api"', 'the other registration names none')
})
