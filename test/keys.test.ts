import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { generateKeyPairSync } from 'node:crypto'
import Fastify from 'fastify'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor } from './fixtures/helpers'
import { parseKeySet, toCachedKey } from '../lib/key-set'
import { SUPPORTED_ALGORITHMS as ALL } from '../lib/options'
import { generateTestKey } from '../lib/testing'

t.test('concurrent first requests cause one JWKS fetch', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const token = issuer.sign()
  const answers = await Promise.all(Array.from({ length: 50 }, () => getMe(app, token)))
  t.same(answers.map((res) => res.statusCode), Array(50).fill(200))
  t.equal(issuer.jwksRequests, 1)
})

t.test('JWKS down at the first request: 503 with Retry-After, nothing leaked, then recovery', async (t) => {
  const issuer = await issuerFor(t)
  // the first retry waits cooldown / 16 (plus up to 20% jitter): 200 to 240 ms, so the second request comes within it on a busy machine too
  const app = await appFor(t, { supabaseUrl: issuer.url, cooldown: 3.2 })
  issuer.respondWith((_request, response) => {
    response.writeHead(500, { 'content-type': 'text/html' }).end('<html>internal secret stack</html>')
    return true
  })
  const token = issuer.sign()
  const down = await getMe(app, token)
  t.equal(down.statusCode, 503)
  t.equal(codeOf(down), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  t.equal(down.headers['retry-after'], '1')
  t.notOk(down.body.includes('internal secret'), 'nothing the JWKS server sent')
  t.equal(down.headers['www-authenticate'], undefined)
  t.equal(issuer.jwksRequests, 1)

  const again = await getMe(app, token)
  t.equal(again.statusCode, 503, 'still 503 within the cooldown')
  t.equal(issuer.jwksRequests, 1, 'no refetch within the cooldown')
  t.equal(app.supabaseJwks.stats().failures, 1)

  issuer.respondWith(undefined)
  await sleep(250)
  const back = await getMe(app, token)
  t.equal(back.statusCode, 200, 'recovered after the cooldown')
  t.equal(issuer.jwksRequests, 2)
  t.ok(app.supabaseJwks.stats().lastSuccessAt! >= app.supabaseJwks.stats().lastFailureAt!)
})

t.test('JWKS unreachable (connection refused): 503, never acceptance', async (t) => {
  const issuer = await issuerFor(t)
  const token = issuer.sign()
  const url = issuer.url
  await issuer.close()
  const app = await appFor(t, { supabaseUrl: url })
  const res = await getMe(app, token)
  t.equal(res.statusCode, 503)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  t.ok(['1', '2'].includes(res.headers['retry-after'] as string), 'Retry-After is the time to the next retry: the backoff starts at 1 s (plus jitter)')
})

t.test('the Retry-After value is at least one second', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, cooldown: 0 })
  issuer.respondWith((_request, response) => { response.writeHead(502).end(); return true })
  const res = await getMe(app, issuer.sign())
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '1')
})

t.test('a failed fetch is logged at warn without the response body', async (t) => {
  const issuer = await issuerFor(t)
  const { app, lines, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url }, 'info')
  issuer.respondWith((_request, response) => {
    response.writeHead(500, { 'content-type': 'application/json' }).end('{"keys":[],"leak":"body-marker"}')
    return true
  })
  await app.inject({ url: '/me', headers: { authorization: `Bearer ${issuer.sign()}` } })
  const warn = entries().find((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed')!
  t.equal(warn.level, 40)
  t.equal(warn.status, 500, 'with the HTTP status')
  t.notOk(lines.some((line) => line.includes('body-marker')), 'the body is not logged')
})

t.test('key hygiene: only public signing keys that fit their algorithm', async (t) => {
  const rsa = generateTestKey('RS256').jwk
  const ec = generateTestKey('ES256').jwk
  const ed = generateTestKey('EdDSA').jwk
  t.same(toCachedKey(rsa, ALL).algorithms, ['RS256'])
  t.same(toCachedKey({ ...rsa, alg: undefined }, ALL).algorithms, ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'])
  t.same(toCachedKey({ ...ec, alg: undefined }, ALL).algorithms, ['ES256'])
  t.same(toCachedKey({ ...ed, alg: undefined }, ALL).algorithms, ['EdDSA'])
  const ed448 = { ...generateKeyPairSync('ed448').publicKey.export({ format: 'jwk' }), kid: 'ed448' }
  t.same(toCachedKey(ed448, ALL).algorithms, ['EdDSA'])
  t.match(toCachedKey({ ...rsa, use: undefined, key_ops: undefined }, ALL), { kid: rsa.kid })
  t.same([...toCachedKey({ ...rsa, alg: undefined }, ['RS256', 'PS256', 'ES256']).checks.keys()], ['RS256', 'PS256'],
    'a signature check is built for each algorithm both the key and the allowlist accept')
  t.same([...toCachedKey(ec, ['RS256']).checks.keys()], [], 'none when the allowlist takes none of its algorithms')
  const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' })
  const bad: Array<[string, Record<string, unknown>, RegExp]> = [
    ['use enc', { ...rsa, use: 'enc' }, /use is not "sig"/],
    ['key_ops without verify', { ...rsa, key_ops: ['encrypt'] }, /key_ops/],
    ['key_ops not a list', { ...rsa, key_ops: 'verify' }, /key_ops/],
    ['a private key', { ...rsa, d: 'AAAA' }, /private key/],
    ['no kid', { ...rsa, kid: undefined }, /no kid/],
    ['an oct key', { kty: 'oct', k: 'c2VjcmV0', kid: 'k' }, /a private key is published \(k\)/],
    ['an oct-like key without k', { kty: 'oct', kid: 'k' }, /unsupported key type/],
    ['an unknown curve', { ...ec, crv: 'secp256k1' }, /unsupported key type/],
    ['alg that does not fit', { ...ec, alg: 'RS256' }, /alg does not match/],
    ['a missing exponent', { ...rsa, e: undefined }, /not a valid public key/],
    ['an RSA modulus under 2048 bits', { ...small, kid: 'k' }, /under 2048 bits/]
  ]
  for (const [name, jwk, message] of bad) {
    t.throws(() => toCachedKey(jwk, ALL), { message }, name)
  }
})

t.test('an unusable key in the JWKS is an unknown kid; good keys beside it still verify', async (t) => {
  const issuer = await issuerFor(t)
  const bad = issuer.addKey({ kid: 'enc-key' })
  bad.jwk.use = 'enc'
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal(codeOf(await getMe(app, issuer.sign({}, { kid: 'enc-key' }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
})

t.test('parseKeySet: only a JSON object with a non-empty keys array is a key set', async (t) => {
  const log = Fastify().log
  for (const body of ['<html>', '[]', 'null', '{"keys":{}}', '{"keys":[]}']) {
    t.equal(parseKeySet(Buffer.from(body), ALL, log), undefined, body)
  }
  const good = generateTestKey('ES256', 'good').jwk
  const set = parseKeySet(Buffer.from(JSON.stringify({ keys: [good, { kty: 'oct', kid: 'bad' }, { ...good, x: 'changed' }] })), ALL, log)
  t.same([...set!.keys()], ['good'], 'bad keys are skipped, the first of a duplicate kid wins')
})

t.test('refresh() fetches now, ignoring the cache lifetime and the cooldown', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'forged' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 2, 'an unknown-kid cooldown runs now')
  const next = issuer.rotate()
  await app.supabaseJwks.refresh()
  t.equal(issuer.jwksRequests, 3, 'fetched despite the cooldown')
  t.equal(app.supabaseJwks.stats().keys, 2)
  const newer = issuer.rotate()
  t.equal((await getMe(app, issuer.sign({}, { kid: newer.kid }))).statusCode, 200, 'a refresh starts no cooldown: a key published after it verifies')
  t.equal(issuer.jwksRequests, 4)
  issuer.unpublish(next.kid)
  await Promise.all([app.supabaseJwks.refresh(), app.supabaseJwks.refresh()])
  t.equal(issuer.jwksRequests, 6, 'a refresh never reuses a fetch that started before it')
  t.equal(codeOf(await getMe(app, issuer.sign({}, { kid: next.kid }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'purged at once')
})
