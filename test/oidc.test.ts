/*
 * Proven against an OpenID provider we did not write (oidc-provider), and a second independent
 * signer (jose): the plugin verifies any issuer's RFC 9068 access tokens, not only Supabase's.
 */
import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { appFor, codeOf, getMe, issuerFor } from './fixtures/helpers'
import { ES256_RESOURCE, RESOURCE, providerFor, providerKey } from './fixtures/oidc'

t.test('oidc-provider: its RS256 at+jwt access tokens verify with its issuer, audience and JWKS', async (t) => {
  const rsa = providerKey('RS256')
  const provider = await providerFor(t, [rsa])
  const app = await appFor(t, { jwksUrl: provider.jwksUrl, issuer: provider.issuer, audience: RESOURCE })
  const token = await provider.token()
  const [head] = token.split('.')
  t.match(JSON.parse(Buffer.from(head!, 'base64url').toString()), { alg: 'RS256', typ: 'at+jwt', kid: rsa.kid }, 'an RFC 9068 token')
  const res = await getMe(app, token)
  t.equal(res.statusCode, 200)
  t.match(res.json(), { iss: provider.issuer, aud: RESOURCE, sub: 'billing-worker', client_id: 'billing-worker', scope: 'read' })
  t.equal(provider.jwksRequests, 1)
})

t.test('oidc-provider: ES256 tokens verify when ES256 is allowed, and are refused when not', async (t) => {
  const ec = providerKey('ES256')
  const provider = await providerFor(t, [providerKey('RS256'), ec])
  const token = await provider.token(ES256_RESOURCE)
  t.match(JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()), { alg: 'ES256', typ: 'at+jwt', kid: ec.kid })
  const allowed = await appFor(t, { jwksUrl: provider.jwksUrl, issuer: provider.issuer, audience: ES256_RESOURCE, algorithms: ['RS256', 'ES256'] })
  t.equal((await getMe(allowed, token)).statusCode, 200)
  const refused = await appFor(t, { jwksUrl: provider.jwksUrl, issuer: provider.issuer, audience: ES256_RESOURCE })
  const res = await getMe(refused, token)
  t.equal(res.statusCode, 401)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED')
  t.equal(refused.supabaseJwks.stats().fetches, 0, 'refused before any key lookup')
})

t.test('oidc-provider: a wrong issuer or audience is refused before any fetch; the Supabase audience default refuses them too', async (t) => {
  const provider = await providerFor(t, [providerKey('RS256')])
  const token = await provider.token()
  const cases = [
    { name: 'another issuer', options: { issuer: `${provider.issuer}/other`, audience: RESOURCE }, message: /the iss claim value is not allowed/ },
    { name: 'another audience', options: { issuer: provider.issuer, audience: 'https://other.example.com' }, message: /the aud claim value is not allowed/ },
    { name: 'audience left to its Supabase default', options: { issuer: provider.issuer }, message: /the aud claim value is not allowed/ }
  ]
  for (const { name, options, message } of cases) {
    const app = await appFor(t, { jwksUrl: provider.jwksUrl, ...options })
    const res = await getMe(app, token)
    t.equal(codeOf(res), 'FST_SUPABASE_JWKS_TOKEN_INVALID', name)
    t.match(res.json().message, message, name)
    t.equal(app.supabaseJwks.stats().fetches, 0, `${name}: no fetch`)
  }
  t.equal(provider.jwksRequests, 0)
})

t.test('oidc-provider: a key rotation is followed; a new key verifies at once, a removed one is refused within cacheTtl + timeout', async (t) => {
  const first = providerKey('RS256')
  const provider = await providerFor(t, [first])
  const cacheTtl = 1
  const timeout = 1
  const app = await appFor(t, { jwksUrl: provider.jwksUrl, issuer: provider.issuer, audience: RESOURCE, cacheTtl, timeout })
  const old = await provider.token()
  t.equal((await getMe(app, old)).statusCode, 200)
  t.equal(app.supabaseJwks.stats().fetches, 1)

  // the provider rotates: a new key signs, the old one is still published
  const second = providerKey('RS256')
  await provider.setKeys([second, first])
  const fresh = await provider.token()
  t.equal((await getMe(app, fresh)).statusCode, 200, 'the new key verifies at once')
  t.equal(app.supabaseJwks.stats().fetches, 2, 'by the one fetch its unknown kid caused')
  t.equal((await getMe(app, old)).statusCode, 200, 'the old key still verifies while published')

  // the old key is removed at the provider: once cacheTtl + timeout have passed, it is refused
  await provider.setKeys([second])
  await sleep((cacheTtl + timeout) * 1000 + 50)
  const res = await getMe(app, old)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'the removed key is refused')
  t.equal(app.supabaseJwks.stats().fetches, 3)
  t.equal((await getMe(app, fresh)).statusCode, 200, 'the current key keeps verifying')
})

t.test('jose: tokens signed by SignJWT with keys jose exported to a JWKS verify (RS256, ES256, EdDSA)', async (t) => {
  const { SignJWT, exportJWK, generateKeyPair } = await import('jose')
  const server = await issuerFor(t)
  const algorithms = ['RS256', 'ES256', 'EdDSA'] as const
  const pairs = await Promise.all(algorithms.map(async (alg) => ({ alg, kid: `jose-${alg}`, ...await generateKeyPair(alg, { extractable: true }) })))
  const keys = await Promise.all(pairs.map(async ({ alg, kid, publicKey }) => ({ ...await exportJWK(publicKey), kid, alg, use: 'sig' })))
  server.respondWith((_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }))
    return true
  })
  const app = await appFor(t, { jwksUrl: server.jwksUrl, issuer: 'https://issuer.example.com', audience: 'api://orders', algorithms: [...algorithms] })
  for (const { alg, kid, privateKey } of pairs) {
    const token = await new SignJWT({ scope: 'orders:read' })
      .setProtectedHeader({ alg, kid, typ: 'at+jwt' })
      .setIssuer('https://issuer.example.com')
      .setAudience('api://orders')
      .setSubject(`service-${alg}`)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey)
    const res = await getMe(app, token)
    t.equal(res.statusCode, 200, alg)
    t.equal(res.json().sub, `service-${alg}`, alg)
  }
  t.equal(server.jwksRequests, 1)
})
