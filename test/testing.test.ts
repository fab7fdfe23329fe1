import t from 'tap'
import { createTestIssuer, generateTestKey, signJwt } from '../lib/testing'
import { issuerFor } from './fixtures/helpers'

t.test('the issuer serves the JWKS at GoTrue paths with GoTrue headers and counts requests', async (t) => {
  const issuer = await issuerFor(t)
  t.match(issuer.url, /^http:\/\/127\.0\.0\.1:\d+$/)
  t.equal(issuer.issuer, `${issuer.url}/auth/v1`)
  t.equal(issuer.jwksUrl, `${issuer.url}/auth/v1/.well-known/jwks.json`)
  for (const path of ['/auth/v1/.well-known/jwks.json', '/.well-known/jwks.json?x=1']) {
    const res = await fetch(`${issuer.url}${path}`)
    t.equal(res.status, 200)
    t.equal(res.headers.get('cache-control'), 'public, max-age=600')
    t.equal(res.headers.get('content-type'), 'application/json')
    const body = await res.json() as { keys: Array<Record<string, unknown>> }
    t.equal(body.keys.length, 1)
    t.match(body.keys[0], { kid: issuer.currentKey.kid, alg: 'RS256', use: 'sig', key_ops: ['verify'], kty: 'RSA', e: 'AQAB' })
    t.notOk('d' in body.keys[0]!, 'no private part')
  }
  t.equal(issuer.jwksRequests, 2)
  const missing = await fetch(`${issuer.url}/nope`)
  t.equal(missing.status, 404)
  await missing.arrayBuffer()
  t.equal(issuer.jwksRequests, 2, 'other paths are not counted')
})

t.test('tokens carry Supabase claims and header; claims and header can be overridden or removed', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const token = issuer.sign({ email: undefined, role: 'service_role' }, { header: { typ: 'at+jwt' } })
  const [head, body, sig] = token.split('.') as [string, string, string]
  const header = JSON.parse(Buffer.from(head, 'base64url').toString())
  const claims = JSON.parse(Buffer.from(body, 'base64url').toString())
  t.same(header, { alg: 'ES256', kid: issuer.currentKey.kid, typ: 'at+jwt' })
  t.equal(Buffer.from(sig, 'base64url').length, 64, 'ES256 signatures are r||s, 64 bytes')
  t.match(claims, {
    aud: 'authenticated', iss: issuer.issuer, role: 'service_role', aal: 'aal1', is_anonymous: false, phone: ''
  })
  t.notOk('email' in claims)
  for (const claim of ['sub', 'exp', 'iat', 'session_id', 'app_metadata', 'user_metadata', 'amr']) t.ok(claim in claims, claim)
  t.equal(claims.exp - claims.iat, 3600)
})

t.test('keys: add, publish, unpublish, rotate', async (t) => {
  const issuer = await issuerFor(t)
  const first = issuer.currentKey
  const standby = issuer.addKey({ publish: false })
  t.equal(issuer.jwks().keys.length, 1)
  issuer.publish(standby.kid)
  t.same(issuer.jwks().keys.map((key) => key.kid), [first.kid, standby.kid])
  t.equal(issuer.currentKey.kid, first.kid, 'a published standby key does not sign')
  const next = issuer.rotate('ES256')
  t.equal(issuer.currentKey.kid, next.kid)
  t.equal(next.alg, 'ES256')
  t.equal(issuer.keys.length, 3)
  issuer.unpublish(first.kid)
  t.same(issuer.jwks().keys.map((key) => key.kid), [standby.kid, next.kid])
  t.ok(issuer.sign({}, { kid: first.kid }), 'an unpublished key still signs')
  t.throws(() => issuer.sign({}, { kid: 'nope' }), /no test key nope/)
  t.throws(() => issuer.publish('nope'), /no test key nope/)
})

t.test('respondWith answers JWKS requests instead of the issuer', async (t) => {
  const issuer = await issuerFor(t)
  issuer.respondWith((_request, response) => { response.writeHead(503).end(); return true })
  t.equal((await fetch(issuer.jwksUrl)).status, 503)
  issuer.respondWith(() => false)
  t.equal((await fetch(issuer.jwksUrl)).status, 200, 'a responder can pass')
  issuer.respondWith(undefined)
  t.equal((await fetch(issuer.jwksUrl)).status, 200)
  t.equal(issuer.jwksRequests, 3)
})

t.test('signJwt signs any header and payload; generateTestKey makes each kind of key', async (t) => {
  for (const alg of ['RS256', 'PS512', 'ES384', 'ES512', 'EdDSA'] as const) {
    const key = generateTestKey(alg, `kid-${alg}`)
    t.equal(key.jwk.kid, `kid-${alg}`)
    const token = signJwt({ alg, kid: key.kid }, { sub: 'x' }, key.privateKey)
    t.equal(token.split('.').length, 3)
  }
  t.match(generateTestKey().jwk, { alg: 'RS256', kty: 'RSA' })
})

t.test('a fixed port', async (t) => {
  const probe = await createTestIssuer()
  const port = Number(new URL(probe.url).port)
  await probe.close()
  const issuer = await createTestIssuer({ port })
  t.teardown(() => issuer.close())
  t.equal(issuer.url, `http://127.0.0.1:${port}`)
})
