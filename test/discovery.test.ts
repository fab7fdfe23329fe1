/*
 * `discovery: true`: the JWKS URL comes from the issuer's discovery document, read with the JWKS
 * fetch's bounds, checked (its issuer, an https jwks_uri), cached and re-read with the key set.
 */
import t from 'tap'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { normalizeOptions } from '../lib/options'
import { appFor, codeOf, getMe, loggedAppFor, registrationError } from './fixtures/helpers'
import { RESOURCE, providerFor, providerKey } from './fixtures/oidc'

function json (response: ServerResponse, status: number, body: unknown): true {
  response.writeHead(status, { 'content-type': 'application/json' }).end(typeof body === 'string' ? body : JSON.stringify(body))
  return true
}

const pathOf = (request: IncomingMessage) => String(request.url).split('?')[0]

t.test('discovery: the JWKS URL is read from the provider\'s discovery document, cached, and re-read with the key set', async (t) => {
  const provider = await providerFor(t, [providerKey('RS256')])
  const app = await appFor(t, { discovery: true, issuer: provider.issuer, audience: RESOURCE, cacheTtl: 2, cooldown: 0 })
  const token = await provider.token()
  t.equal((await getMe(app, token)).statusCode, 200)
  t.same([provider.discoveryRequests, provider.jwksRequests], [1, 1])
  t.equal(app.supabaseJwks.stats().fetches, 1, 'the document and the JWKS are one fetch of the key set')

  // a kid the set lacks, within cacheTtl: the JWKS is fetched again, the document is not
  const [, body, signature] = token.split('.')
  const head = JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString())
  const unknownKid = `${Buffer.from(JSON.stringify({ ...head, kid: 'not-published' })).toString('base64url')}.${body}.${signature}`
  t.equal(codeOf(await getMe(app, unknownKid)), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.same([provider.discoveryRequests, provider.jwksRequests], [1, 2], 'the document is not read again within cacheTtl')

  // refresh() reads the document again at once: a provider that moved its JWKS is followed
  let moved = 0
  provider.respondWith((request, response) => {
    if (pathOf(request) === '/.well-known/openid-configuration') {
      return json(response, 200, { issuer: provider.issuer, jwks_uri: `${provider.issuer}/jwks?v=2` })
    }
    if (String(request.url).endsWith('/jwks?v=2')) moved++
    return false
  })
  await app.supabaseJwks.refresh()
  t.equal(provider.discoveryRequests, 2)
  t.equal(moved, 1, 'the new jwks_uri is fetched')
  t.equal((await getMe(app, await provider.token())).statusCode, 200)

  // past cacheTtl, a request refreshes the set ahead, and the document is read again with it
  await sleep(2100)
  t.equal((await getMe(app, token)).statusCode, 200, 'the held set answers meanwhile')
  for (let i = 0; i < 200 && app.supabaseJwks.stats().state !== 'fresh'; i++) await sleep(10)
  t.same([provider.discoveryRequests, moved], [3, 2], 'document and JWKS read again in the background')

  // after a failed fetch, the next fetch reads the document again (within cacheTtl too)
  provider.respondWith((request, response) => String(request.url).includes('jwks') ? json(response, 500, '{}') : false)
  await t.rejects(app.supabaseJwks.refresh(), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE' })
  t.equal(app.supabaseJwks.stats().failures, 1)
  t.equal(provider.discoveryRequests, 4)
  provider.respondWith(undefined)
  for (let i = 0; i < 300 && app.supabaseJwks.stats().nextRetryAt! > Date.now(); i++) await sleep(10) // the backoff after the failure
  t.equal(codeOf(await getMe(app, unknownKid)), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(provider.discoveryRequests, 5, 're-read after the failure')
  t.match(app.supabaseJwks.stats(), { state: 'fresh', failures: 1 })
})

t.test('discovery: an outage of the discovery endpoint alone is no outage of the keys (the last jwks_uri is fetched)', async (t) => {
  const provider = await providerFor(t, [providerKey('RS256')])
  const { app, entries } = await loggedAppFor(t, { discovery: true, issuer: provider.issuer, audience: RESOURCE, timeout: 1 }, 'warn')
  const token = await provider.token()
  t.equal((await getMe(app, token)).statusCode, 200)
  provider.respondWith((request, response) => pathOf(request) === '/.well-known/openid-configuration' ? json(response, 503, '{}') : false)
  await app.supabaseJwks.refresh()
  t.same([provider.discoveryRequests, provider.jwksRequests], [2, 2], 'the document failed; the JWKS it named before was fetched')
  // keys were fetched: not a failed fetch (stats say fresh, no failure, no backoff), but the document's failure is logged
  t.match(app.supabaseJwks.stats(), { state: 'fresh', fetches: 2, failures: 0, lastFailureAt: null, nextRetryAt: null, keys: 1 })
  t.match(entries().filter((entry) => entry.level === 40), [{
    msg: 'supabase-jwks: discovery document not read: fetching the jwks_uri it named last',
    reason: /discovery document answered HTTP 503/,
    jwksUrl: provider.jwksUrl
  }])
  t.equal((await getMe(app, await provider.token())).statusCode, 200)

  // a document that takes the whole timeout leaves no time for the JWKS: that fetch fails as a whole
  provider.respondWith((request) => pathOf(request) === '/.well-known/openid-configuration')
  await t.rejects(app.supabaseJwks.refresh(), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', cause: { message: /timed out|aborted/ } })
  t.same([provider.discoveryRequests, provider.jwksRequests], [3, 2], 'no JWKS request after a document that timed out')
  t.match(app.supabaseJwks.stats(), { failures: 1, state: 'stale' })
})

t.test('discovery: a failed document and then a failed JWKS are one failed fetch: counted once, logged twice, the backoff starts at 1 s', async (t) => {
  const provider = await providerFor(t, [providerKey('RS256')])
  const { app, entries } = await loggedAppFor(t, { discovery: true, issuer: provider.issuer, audience: RESOURCE }, 'warn')
  t.equal((await getMe(app, await provider.token())).statusCode, 200)
  provider.respondWith((request, response) => pathOf(request) === '/.well-known/openid-configuration'
    ? json(response, 503, '{}')
    : String(request.url).includes('jwks') ? json(response, 500, '{}') : false)
  await t.rejects(app.supabaseJwks.refresh(), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', cause: { message: 'the JWKS answered HTTP 500' } })
  t.same([provider.discoveryRequests, provider.jwksRequests], [2, 2])
  const stats = app.supabaseJwks.stats()
  t.match(stats, { fetches: 2, failures: 1, state: 'stale' })
  const wait = stats.nextRetryAt! - stats.lastFailureAt!
  t.ok(wait >= 990 && wait <= 1210, `the first wait is the 1 s start, jitter included (${wait} ms)`)
  t.match(entries().filter((entry) => entry.level === 40), [
    { msg: 'supabase-jwks: discovery document not read: fetching the jwks_uri it named last', reason: /discovery document answered HTTP 503/ },
    { msg: 'supabase-jwks: JWKS fetch failed', reason: 'the JWKS answered HTTP 500', status: 500 }
  ], 'each cause logged')
  t.equal(entries().filter((entry) => entry.level === 40).length, 2)
})

t.test('discovery: an issuer with a path; on a 404, the RFC 8414 forms are tried in turn', async (t) => {
  const provider = await providerFor(t, [providerKey('RS256')], '/tenant')
  const document = { issuer: provider.issuer, jwks_uri: provider.jwksUrl }
  const origin = new URL(provider.issuer).origin
  const forms = [
    ['/tenant/.well-known/openid-configuration', 'the OIDC form'],
    ['/.well-known/oauth-authorization-server/tenant', 'the RFC 8414 form'],
    ['/.well-known/openid-configuration/tenant', 'openid-configuration after the host']
  ] as const
  for (const [index, [path, name]] of forms.entries()) {
    const asked: string[] = []
    provider.respondWith((request, response) => {
      const at = pathOf(request)!
      if (!at.includes('/.well-known/')) return false
      asked.push(at)
      return at === path ? json(response, 200, document) : json(response, 404, { error: 'not found' })
    })
    const app = await appFor(t, { discovery: true, issuer: provider.issuer, audience: RESOURCE })
    t.equal((await getMe(app, await provider.token())).statusCode, 200, name)
    t.same(asked, forms.slice(0, index + 1).map(([form]) => form), `${name}: tried in order, up to the one that answers`)
  }

  provider.respondWith((request, response) => pathOf(request)!.includes('/.well-known/') ? json(response, 404, {}) : false)
  const { app, entries } = await loggedAppFor(t, { discovery: true, issuer: provider.issuer, audience: RESOURCE }, 'warn')
  const res = await getMe(app, await provider.token())
  t.equal(res.statusCode, 503)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  const warning = entries().find((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed')!
  t.match(warning, { reason: /every discovery URL answered HTTP 404/, discoveryUrls: forms.map(([form]) => `${origin}${form}`) })
})

t.test('discovery: a document that is not acceptable leaves the keys unavailable (503), and a warning says why', async (t) => {
  const provider = await providerFor(t, [providerKey('RS256')])
  const token = await provider.token()
  const cases: Array<[string, (request: IncomingMessage, response: ServerResponse) => boolean, RegExp, Record<string, unknown>?]> = [
    ['another issuer', (_request, response) => json(response, 200, { issuer: `${provider.issuer}/other`, jwks_uri: provider.jwksUrl }),
      /names another issuer/, { issuer: provider.issuer, documentIssuer: `${provider.issuer}/other` }],
    ['no issuer', (_request, response) => json(response, 200, { jwks_uri: provider.jwksUrl }), /names another issuer/, { documentIssuer: 'undefined' }],
    ['a plain http jwks_uri off loopback', (_request, response) => json(response, 200, { issuer: provider.issuer, jwks_uri: 'http://keys.example.com/jwks' }),
      /jwks_uri is plain http on a non-loopback host/, { jwksUri: 'http://keys.example.com/jwks' }],
    ['no jwks_uri', (_request, response) => json(response, 200, { issuer: provider.issuer }), /no jwks_uri that is an http\(s\) URL/],
    ['a jwks_uri without a path', (_request, response) => json(response, 200, { issuer: provider.issuer, jwks_uri: new URL(provider.issuer).origin }), /jwks_uri has no path/],
    ['a jwks_uri that is no URL', (_request, response) => json(response, 200, { issuer: provider.issuer, jwks_uri: 'not a url' }), /no jwks_uri that is an http\(s\) URL/],
    ['a jwks_uri that is not http(s)', (_request, response) => json(response, 200, { issuer: provider.issuer, jwks_uri: 'file:///etc/keys' }), /no jwks_uri that is an http\(s\) URL/],
    ['a jwks_uri with credentials', (_request, response) => json(response, 200, { issuer: provider.issuer, jwks_uri: 'https://user:pass@keys.example.com/jwks' }),
      /jwks_uri carries credentials or a fragment/],
    ['not JSON', (_request, response) => json(response, 200, '<html>'), /not a JSON object/],
    ['JSON but not an object', (_request, response) => json(response, 200, 'null'), /not a JSON object/],
    ['HTTP 500', (_request, response) => json(response, 500, {}), /answered HTTP 500/, { status: 500 }],
    // to a document that would be acceptable, on this very server: never followed
    ['a redirect', (_request, response) => { response.writeHead(302, { location: `${provider.issuer}/moved-configuration` }).end(); return true }, /answered HTTP 302/, { status: 302 }],
    ['a reset connection', (request) => { request.socket.destroy(); return true }, /socket hang up/, { code: 'ECONNRESET' }],
    ['larger than maxResponseSize', (_request, response) => json(response, 200, { issuer: provider.issuer, jwks_uri: provider.jwksUrl, pad: 'x'.repeat(70_000) }), /larger than maxResponseSize \(65536 bytes\)/, { code: 'RESPONSE_TOO_LARGE' }],
    ['compressed', (_request, response) => { response.writeHead(200, { 'content-encoding': 'gzip' }).end('x'); return true }, /compressed answer is refused \(content-encoding gzip\)/, { code: 'COMPRESSED' }],
    ['hanging', () => true, /JWKS fetch timed out \(timeout 1000 ms\)/]
  ]
  let movedRequests = 0
  for (const [name, responder, reason, extra] of cases) {
    provider.respondWith((request, response) => {
      if (pathOf(request) === '/moved-configuration') {
        movedRequests++
        return json(response, 200, { issuer: provider.issuer, jwks_uri: provider.jwksUrl })
      }
      return pathOf(request) === '/.well-known/openid-configuration' ? responder(request, response) : false
    })
    const { app, entries } = await loggedAppFor(t, { discovery: true, issuer: provider.issuer, audience: RESOURCE, timeout: 1 }, 'warn')
    const before = provider.jwksRequests
    const res = await getMe(app, token)
    t.equal(codeOf(res), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', name)
    t.equal(provider.jwksRequests, before, `${name}: no JWKS fetched`)
    const warning = entries().find((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed')
    t.match(warning, { level: 40, reason, discoveryUrl: `${provider.issuer}/.well-known/openid-configuration`, ...extra }, name)
  }
  t.equal(movedRequests, 0, 'the redirect was not followed')
})

t.test('discovery: allowInsecureJwksUrl lets a plain http issuer and jwks_uri off loopback through, with a warning', async (t) => {
  const provider = await providerFor(t, [providerKey('RS256')])
  // 0.0.0.0 is not a loopback name, though a connection to it reaches this machine
  const port = new URL(provider.issuer).port
  const issuer = `http://0.0.0.0:${port}`
  provider.respondWith((request, response) => pathOf(request) === '/.well-known/openid-configuration'
    ? json(response, 200, { issuer, jwks_uri: `${issuer}/jwks` })
    : false)
  t.match((await registrationError({ discovery: true, issuer, audience: RESOURCE })).message, /uses plain http on a non-loopback host/)
  const { app, entries } = await loggedAppFor(t, { discovery: true, issuer, audience: RESOURCE, allowInsecureJwksUrl: true }, 'warn')
  t.match(entries().find((entry) => /plain http/.test(entry.msg)), { discoveryUrl: `${issuer}/.well-known/openid-configuration` })
  // the token's iss is the provider's own: here only its keys matter
  const res = await getMe(app, await provider.token())
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_TOKEN_INVALID', 'the iss is the provider\'s, not the configured one')
  await app.supabaseJwks.refresh()
  t.match(app.supabaseJwks.stats(), { state: 'fresh', keys: 1, failures: 0 }, 'the keys were fetched from the plain http jwks_uri')
  await app.supabaseJwks.refresh()
  const told = entries().filter((entry) => entry.msg === 'supabase-jwks: the JWKS is fetched over plain http' && entry.jwksUri !== undefined)
  t.equal(told.length, 1, 'once, though the document was read twice')
  t.match(told[0], { level: 40, jwksUri: `${issuer}/jwks` }, 'the discovered plain http jwks_uri is logged at warn')
})

t.test('discovery options are checked at registration', async (t) => {
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['without issuer', { discovery: true, audience: 'a' }, /issuer is required with discovery/],
    ['with jwksUrl', { discovery: true, issuer: 'https://id.example.com', jwksUrl: 'https://id.example.com/jwks', audience: 'a' }, /discovery reads the JWKS URL from the issuer's discovery document: remove jwksUrl/],
    ['with a list of issuers', { discovery: true, issuer: ['https://a.example.com', 'https://b.example.com'], audience: 'a' }, /issuer must be one non-empty string with discovery/],
    ['with issuer false', { discovery: true, issuer: false, audience: 'a' }, /issuer must be one non-empty string with discovery/],
    ['not a boolean', { discovery: 'yes', issuer: 'https://id.example.com', audience: 'a' }, /discovery must be a boolean/],
    ['without audience', { discovery: true, issuer: 'https://id.example.com' }, /audience is required for an issuer that is not a Supabase project/],
    ['an issuer with a query', { discovery: true, issuer: 'https://id.example.com/?tenant=1', audience: 'a' }, /must not carry a query string, a fragment or credentials/],
    ['an issuer with credentials', { discovery: true, issuer: 'https://u:p@id.example.com', audience: 'a' }, /must not carry a query string, a fragment or credentials/],
    ['an issuer without a scheme', { discovery: true, issuer: 'id.example.com', audience: 'a' }, /issuer has no scheme \(https:\/\/, or http:\/\/ on a loopback host\): set https:\/\/id\.example\.com$/]
  ]
  for (const [name, options, message] of cases) {
    const err = await registrationError(options)
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', name)
    t.match(err.message, message, name)
  }
  const auth0 = normalizeOptions({ discovery: true, issuer: 'https://tenant.eu.auth0.com/', audience: 'https://api.example.com' }).issuers[0]!
  t.same(auth0.discovery?.urls.map(String), [
    'https://tenant.eu.auth0.com/.well-known/openid-configuration',
    'https://tenant.eu.auth0.com/.well-known/oauth-authorization-server'
  ], 'an issuer without a path (a trailing slash is kept in the issuer, not doubled in the URL)')
  t.equal(auth0.discovery?.issuer, 'https://tenant.eu.auth0.com/')
  t.equal(auth0.jwksUrl, undefined)
  const supabase = normalizeOptions({ discovery: true, supabaseUrl: 'https://abc.supabase.co' }).issuers[0]!
  t.same(supabase.discovery?.urls.map(String), [
    'https://abc.supabase.co/auth/v1/.well-known/openid-configuration',
    'https://abc.supabase.co/.well-known/oauth-authorization-server/auth/v1',
    'https://abc.supabase.co/.well-known/openid-configuration/auth/v1'
  ], 'a Supabase project: its issuer, and the Supabase audience default')
  t.same(supabase.audience, ['authenticated'])
})
