/*
 * Keys given inline (option `jwks`): judged at registration as a fetched set is; alone, nothing is
 * ever fetched; beside a URL, a seed that answers until the first good fetch, whose set alone is
 * trusted from then on.
 */
import t from 'tap'
import Fastify from 'fastify'
import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt'
import { createPublicKey, randomUUID, type JsonWebKey } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { performance } from 'node:perf_hooks'
import type { ServerResponse } from 'node:http'
import { fastifyJwtOptions } from '../lib/index'
import { generateTestKey, signJwt, type TestKey } from '../lib/testing'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor, registrationError } from './fixtures/helpers'
import { RESOURCE, providerFor, providerKey } from './fixtures/oidc'

/** The `iss` of tokens checked against keys given inline alone: no server answers at this address. */
const ISS = 'https://inline.example.com/auth/v1'

/** A Supabase-shaped access token signed with `key`, valid for an hour. */
function tokenOf (key: TestKey, claims: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000)
  return signJwt({ alg: key.alg, kid: key.kid, typ: 'JWT' },
    { sub: randomUUID(), aud: 'authenticated', role: 'authenticated', iss: ISS, iat: now, exp: now + 3600, ...claims }, key.privateKey)
}

/** Sleeps until `ms` after `start` (monotonic): windows are measured from registration, however slow the machine. */
async function sleepUntil (start: number, ms: number): Promise<void> {
  await sleep(Math.max(0, start + ms - performance.now()))
}

/** Waits (bounded) until `done()` holds. */
async function until (done: () => boolean): Promise<void> {
  for (let i = 0; i < 300 && !done(); i++) await sleep(10)
}

t.test('alone, with no JWKS server anywhere: the first token verifies at once; nothing is ever fetched', async (t) => {
  const key = generateTestKey('ES256')
  const app = await appFor(t, { jwks: { keys: [key.jwk] }, issuer: ISS, algorithms: ['ES256'], warmStart: true })
  t.match(app.supabaseJwks.stats(), { fetches: 0, failures: 0, keys: 1, state: 'fresh', lastSuccessAt: null, nextRetryAt: null }, 'ready: the key held, no fetch')
  const res = await getMe(app, tokenOf(key, { email: 'ada@example.com' }))
  t.equal(res.statusCode, 200, 'the cold start\'s first token')
  t.match(res.json(), { iss: ISS, email: 'ada@example.com' })
  t.match(await app.supabaseJwks.verify(tokenOf(key)), { iss: ISS }, 'verify() too')
  t.equal(await app.supabaseJwks.refresh(), undefined, 'refresh() resolves at once: nothing to fetch')

  const stranger = generateTestKey('ES256')
  for (const token of [tokenOf(stranger), tokenOf(stranger, {}), tokenOf(generateTestKey('ES256'))]) {
    const unknown = await getMe(app, token)
    t.equal(unknown.statusCode, 401)
    t.equal(codeOf(unknown), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'an unknown kid, again and again: no cooldown to wait for')
    t.equal(unknown.headers['www-authenticate'], 'Bearer realm="api", error="invalid_token", error_description="The token was signed with an unknown key"')
  }
  await t.rejects(app.supabaseJwks.verify(tokenOf(stranger)), { code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' })
  // a token signed by another key under the known kid is still checked in full
  const forged = tokenOf({ ...stranger, kid: key.kid })
  t.equal(codeOf(await getMe(app, forged)), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.match(app.supabaseJwks.stats(), { fetches: 0, failures: 0, keys: 1, state: 'fresh', accepted: 2 })
})

t.test('alone, beside a JWKS server that exists: it counts no request, whatever happens', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { jwks: JSON.stringify(issuer.jwks()), issuer: issuer.issuer, warmStart: true, cacheTtl: 0.05, cooldown: 0 })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'the JSON string form')
  await sleep(100) // past cacheTtl: the set given alone never ages
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const fresh = issuer.rotate()
  const unknown = await getMe(app, issuer.sign())
  t.equal(codeOf(unknown), 'FST_SUPABASE_JWKS_UNKNOWN_KID', `a key published after the deploy (${fresh.kid}) is unknown until a redeploy`)
  await app.supabaseJwks.refresh()
  t.equal(codeOf(await getMe(app, issuer.sign())), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'refresh() learns nothing either')
  t.equal(issuer.jwksRequests, 0, 'no request to the JWKS server')
  t.match(app.supabaseJwks.stats(), { fetches: 0, keys: 1, state: 'fresh' })
})

t.test('registration judges the set as a fetched one is, and refuses it loudly, never showing a key', async (t) => {
  const es = generateTestKey('ES256')
  const rsa = generateTestKey('RS256')
  const privateJwk = { ...es.privateKey.export({ format: 'jwk' }), kid: 'leaked' }
  const privateRsa = { ...rsa.privateKey.export({ format: 'jwk' }), kid: 'leaked-rsa', alg: 'RS256' }
  const secret = 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA'
  const noKid = Object.fromEntries(Object.entries(rsa.jwk).filter(([name]) => name !== 'kid'))
  const cases: Array<[string, unknown, RegExp, string[]?]> = [
    ['a private EC key', { keys: [rsa.jwk, privateJwk] }, /jwks\.keys\[1\] is a private key \(it has "d"\): give the public key set/, [privateJwk.d as string]],
    ['a private RSA key', { keys: [privateRsa] }, /jwks\.keys\[0\] is a private key \(it has "d"\)/, [privateRsa.d as string, privateRsa.p as string]],
    ['a public key with one private member', { keys: [{ ...rsa.jwk, qi: 'AQAB' }] }, /jwks\.keys\[0\] is a private key \(it has "qi"\)/],
    ['an HS256 (oct) key', { keys: [{ kty: 'oct', kid: 'hs', alg: 'HS256', k: secret }] }, /jwks\.keys\[0\] is a symmetric key \(it has "k"\): tokens are verified with public keys only/, [secret]],
    ['no key', { keys: [] }, /jwks has no keys: .*legacy JWT secret/],
    ['only keys of an algorithm not allowed', { keys: [es.jwk] },
      /jwks holds no key for the algorithms option \(RS256\); its keys sign with ES256: add those to algorithms, so every token would be refused$/],
    ['an oct key without its secret', { keys: [{ kty: 'oct', kid: 'hs', alg: 'HS256' }] },
      /jwks holds no usable signing key, so every token would be refused \(keys\[0\]: unsupported key type or curve\)$/],
    ['keys without kid', { keys: [noKid, 'a string', { ...rsa.jwk, use: 'enc' }, { ...rsa.jwk, alg: 'ES256' }, noKid] },
      /jwks holds no usable signing key, so every token would be refused \(keys\[0\]: no kid; keys\[1\]: not a JSON object; keys\[2\]: use is not "sig"; and 2 more\)$/],
    ['a usable key past the first 100', { keys: [...Array.from({ length: 100 }, () => noKid), rsa.jwk] }, /jwks holds no usable signing key.*and 98 more\)$/]
  ]
  for (const [name, jwks, message, hidden = []] of cases) {
    for (const form of [jwks, JSON.stringify(jwks)]) {
      const err = await registrationError({ jwks: form, issuer: ISS })
      t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', `${name} (${typeof form})`)
      t.match(err.message, message, name)
      for (const value of hidden) t.notOk(err.message.includes(value), `${name}: the key is not in the message`)
    }
  }
  // a usable key beside unusable ones is enough, as in a fetched set
  const app = await appFor(t, { jwks: { keys: [noKid, { kty: 'oct', kid: 'hs' }, es.jwk] }, issuer: ISS, algorithms: ['ES256'] })
  t.equal((await getMe(app, tokenOf(es))).statusCode, 200)
  t.equal(app.supabaseJwks.stats().keys, 1, 'the unusable entries are skipped')
})

t.test('the option itself: an object or its JSON text, a key set, with issuer when alone; the value never echoed', async (t) => {
  const secret = 'sb_secret_do-not-print-me'
  const cases: Array<[string, unknown, RegExp]> = [
    ['a string that is not JSON', `{"keys": [${secret}`, /^Invalid fastify-supabase-jwks option: jwks is a string that is not JSON: give the JWKS document itself/],
    ['an env var left empty', '', /jwks is a string that is not JSON/],
    ['JSON that is not a set', JSON.stringify({ key: secret }), /jwks is not a key set: give the JWKS document itself, \{ "keys": \[\.\.\.\] \}/],
    ['JSON null', 'null', /jwks is not a key set/],
    ['keys that are not a list', { keys: { kid: 'a' } }, /jwks is not a key set/],
    ['a number', 42, /jwks is not a key set/],
    ['a list of keys', [{ kty: 'RSA', kid: secret }], /jwks is a list: give the key set, \{ "keys": \[\.\.\.\] \}, not its list of keys/],
    ['a list of keys, as JSON', JSON.stringify([{ kty: 'RSA', kid: secret }]), /jwks is a list/]
  ]
  for (const [name, jwks, message] of cases) {
    const err = await registrationError({ jwks, issuer: ISS })
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', name)
    t.match(err.message, message, name)
    t.notOk(err.message.includes('do-not-print-me'), `${name}: the value is not echoed`)
  }
  const key = generateTestKey()
  t.match(await registrationError({ jwks: { keys: [key.jwk] } }), { message: /issuer is required with jwks alone: the exact iss of the tokens/ })
  t.match(await registrationError({}), { message: /supabaseUrl or jwksUrl is required \(or jwks, the key set itself, with issuer\)/ })
  t.match(await registrationError({ jwks: { keys: [key.jwk] }, issuers: [{ supabaseUrl: 'https://abc.supabase.co' }] }),
    { message: /jwks does not go with issuers: give each issuer its own entry/ })
  const app = await appFor(t, { jwks: { keys: [key.jwk] }, issuer: false })
  t.equal((await getMe(app, tokenOf(key, { iss: undefined }))).statusCode, 200, 'issuer: false skips the check, as with jwksUrl alone')
})

/** A JWKS server's answers held back until `release()`: the order of a fetch in flight and requests made meanwhile. */
function heldAnswers () {
  const pending: ServerResponse[] = []
  return {
    responder: (_request: unknown, response: ServerResponse) => { pending.push(response); return true },
    get waiting () { return pending.length },
    release (body: unknown) {
      for (const response of pending.splice(0)) response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body))
    }
  }
}

t.test('beside supabaseUrl: the seed answers while the warm start\'s fetch is in flight; from the fetched set on, only that set is trusted', async (t) => {
  const issuer = await issuerFor(t)
  const extra = generateTestKey() // in the inline set only (an old set, a key since revoked)
  const held = heldAnswers()
  issuer.respondWith(held.responder)
  const app = await appFor(t, { supabaseUrl: issuer.url, jwks: { keys: [...issuer.jwks().keys, extra.jwk] }, warmStart: true })
  // 1. ready() did not wait for the JWKS: its fetch is still in flight
  await until(() => held.waiting === 1)
  t.equal(issuer.jwksRequests, 1, 'the warm start\'s fetch has started')
  t.match(app.supabaseJwks.stats(), { fetches: 1, keys: 2, state: 'refreshing', lastSuccessAt: null })
  // 2. the seed answers meanwhile, the extra key included (three times: the token cache keeps it)
  const old = tokenOf(extra, { iss: issuer.issuer })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'the first request verifies from the seed')
  for (let i = 0; i < 3; i++) t.equal((await getMe(app, old)).statusCode, 200, 'a key only the seed has verifies, before the fetch')
  t.equal(app.supabaseJwks.stats().tokenCacheHits, 1, 'and is answered from the token cache')
  t.equal(held.waiting, 1, 'still the one fetch in flight')
  // 3. the fetch completes: its set alone is trusted
  held.release(issuer.jwks())
  await until(() => app.supabaseJwks.stats().lastSuccessAt !== null)
  issuer.respondWith(undefined)
  t.match(app.supabaseJwks.stats(), { fetches: 1, keys: 1, state: 'fresh' })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const refused = await getMe(app, old)
  t.equal(refused.statusCode, 401)
  t.equal(codeOf(refused), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'a kid only the seed had is unknown now, its cached token too')
  t.equal(issuer.jwksRequests, 2, 'after one lookup, as for any unknown kid')
  t.equal(codeOf(await getMe(app, old)), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 2, 'then the unknown-kid cooldown, as usual')
})

t.test('beside supabaseUrl without warm start: no fetch until the seed is cacheTtl old, then the refresh ahead, as for a fetched set', async (t) => {
  const issuer = await issuerFor(t)
  const start = performance.now()
  const app = await appFor(t, { supabaseUrl: issuer.url, jwks: issuer.jwks(), cacheTtl: 1 })
  const token = issuer.sign()
  t.equal((await getMe(app, token)).statusCode, 200)
  t.equal((await app.supabaseJwks.verify(issuer.sign())).iss, issuer.issuer)
  t.equal(issuer.jwksRequests, 0, 'the first requests need no fetch')
  t.match(app.supabaseJwks.stats(), { fetches: 0, keys: 1, state: 'fresh' })
  await sleepUntil(start, 1100)
  t.equal((await getMe(app, token)).statusCode, 200, 'past cacheTtl: answered by the held set while it is refreshed ahead')
  await until(() => issuer.jwksRequests === 1)
  t.equal(issuer.jwksRequests, 1, 'one refresh ahead')
})

t.test('beside supabaseUrl: a kid the seed lacks is looked up, as one a fetched set lacks', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, jwks: issuer.jwks() })
  const next = issuer.rotate()
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, `a key published since the seed (${next.kid}) verifies after one fetch`)
  t.equal(issuer.jwksRequests, 1)
  t.match(app.supabaseJwks.stats(), { fetches: 1, keys: 2, state: 'fresh' })
})

t.test('beside supabaseUrl, the JWKS failing from the start: the seed verifies like a held set within staleIfError, then the recovered, rotated set takes over', async (t) => {
  const issuer = await issuerFor(t)
  const seedKey = issuer.currentKey
  issuer.respondWith((_request, response) => { response.writeHead(500, { 'content-type': 'application/json' }).end('{}'); return true })
  const start = performance.now()
  const { app, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url, jwks: issuer.jwks(), warmStart: true, cacheTtl: 1, staleIfError: 1.5, cooldown: 0 }, 'warn')
  await until(() => app.supabaseJwks.stats().failures === 1)
  t.ok(entries().some((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed' && entry.status === 500), 'the failed warm start is logged')
  const token = issuer.sign()
  t.equal((await getMe(app, token)).statusCode, 200, 'the seed verifies during the outage')
  t.equal(app.supabaseJwks.stats().state, 'stale')
  const unknown = await getMe(app, tokenOf(generateTestKey(), { iss: issuer.issuer }))
  t.equal(unknown.statusCode, 503, 'an unknown kid cannot be checked during the outage')
  t.equal(codeOf(unknown), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  await sleepUntil(start, 1200)
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'past cacheTtl, within staleIfError: still verifies')
  await sleepUntil(start, 2700)
  const late = await getMe(app, issuer.sign())
  t.equal(late.statusCode, 503, 'past cacheTtl + staleIfError: the seed is no more trusted than a fetched set')
  t.equal(codeOf(late), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  // the JWKS comes back, rotated: a new current key, the seed's key revoked
  const next = issuer.rotate()
  issuer.unpublish(seedKey.kid)
  issuer.respondWith(undefined)
  const fresh = await getMe(app, issuer.sign())
  t.equal(fresh.statusCode, 200, `the new key (${next.kid}) verifies once the JWKS answers`)
  t.match(app.supabaseJwks.stats(), { keys: 1, state: 'fresh' })
  const revoked = await getMe(app, issuer.sign({}, { kid: seedKey.kid }))
  t.equal(codeOf(revoked), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'the seed\'s key, gone from the fetched set, no longer verifies')
})

t.test('beside jwksUrl, or discovery: the same seed, no request before the first fetch is due', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { jwksUrl: issuer.jwksUrl, issuer: issuer.issuer, jwks: JSON.stringify(issuer.jwks()) })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.equal(issuer.jwksRequests, 0)

  const signing = providerKey('RS256')
  const publicJwk = { ...createPublicKey({ key: signing.jwk as JsonWebKey, format: 'jwk' }).export({ format: 'jwk' }), kid: signing.kid, alg: signing.alg, use: 'sig' }
  const provider = await providerFor(t, [signing])
  const oidc = await appFor(t, { issuer: provider.issuer, discovery: true, audience: RESOURCE, jwks: { keys: [publicJwk] } })
  t.equal((await getMe(oidc, await provider.token())).statusCode, 200, 'an OIDC provider\'s token, from the seed')
  t.same([provider.discoveryRequests, provider.jwksRequests], [0, 0], 'neither the discovery document nor the JWKS was read')
  await oidc.supabaseJwks.refresh()
  t.same([provider.discoveryRequests, provider.jwksRequests], [1, 1], 'refresh() reads both, as usual')
  t.equal((await getMe(oidc, await provider.token())).statusCode, 200)
})

t.test('issuers: each entry its own inline set, alone or beside a URL', async (t) => {
  const project = await issuerFor(t)
  const inline = generateTestKey('ES256')
  const app = await appFor(t, {
    issuers: [
      { issuer: ISS, audience: 'authenticated', algorithms: ['ES256'], jwks: JSON.stringify({ keys: [inline.jwk] }) },
      { supabaseUrl: project.url, jwks: project.jwks() }
    ]
  })
  t.equal((await getMe(app, tokenOf(inline))).statusCode, 200, 'the entry with its set alone')
  t.equal((await getMe(app, project.sign())).statusCode, 200, 'the entry seeded beside its URL')
  t.equal(project.jwksRequests, 0)
  const crossed = await getMe(app, project.sign({ iss: ISS }, { header: { alg: 'ES256', kid: inline.kid } }).replace(/\.[^.]*$/, `.${'A'.repeat(86)}`))
  t.equal(codeOf(crossed), 'FST_SUPABASE_JWKS_TOKEN_INVALID', 'a kid of one entry is checked with that entry\'s key only')
  t.equal(codeOf(await getMe(app, tokenOf(inline, { iss: project.issuer }))), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', 'the other entry\'s rules apply')
  t.equal(codeOf(await getMe(app, tokenOf(generateTestKey('ES256')))), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'the entry alone never fetches')
  const stats = app.supabaseJwks.stats()
  t.match(stats.issuers![ISS], { fetches: 0, keys: 1, state: 'fresh' })
  t.match(stats.issuers![project.issuer], { fetches: 0, keys: 1, state: 'fresh' })
  t.match(await registrationError({ issuers: [{ issuer: ISS, audience: 'authenticated', algorithms: ['ES256'], jwks: { keys: [inline.jwk] } }, { supabaseUrl: project.url, jwks: { keys: [] } }] }),
    { message: /issuers\[1\]\.jwks has no keys/ }, 'messages name the entry')
  t.match(await registrationError({ issuers: [{ issuer: ISS, audience: 'authenticated', jwks: { keys: [{ ...inline.privateKey.export({ format: 'jwk' }), kid: 'x' }] } }] }),
    { message: /issuers\[0\]\.jwks\.keys\[0\] is a private key/ })
  t.match(await registrationError({ issuers: [{ issuer: ISS, audience: 'authenticated' }] }),
    { message: /issuers\[0\]\.supabaseUrl, issuers\[0\]\.jwksUrl or issuers\[0\]\.discovery is required \(or issuers\[0\]\.jwks, the key set itself\)/ })
})

t.test('@fastify/jwt mode: request.jwtVerify() verifies with keys given inline alone, with no fetch', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyJwt, fastifyJwtOptions({ jwks: issuer.jwks(), issuer: issuer.issuer, algorithms: ['ES256'] }) as unknown as FastifyJWTOptions)
  app.get('/me', async (request) => {
    await request.jwtVerify()
    return request.user
  })
  await app.ready()
  const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${issuer.sign({ email: 'ada@example.com' })}` } })
  t.equal(res.statusCode, 200)
  t.match(res.json(), { email: 'ada@example.com', iss: issuer.issuer })
  const unknown = await app.inject({ url: '/me', headers: { authorization: `Bearer ${tokenOf(generateTestKey('ES256'), { iss: issuer.issuer })}` } })
  t.equal(codeOf(unknown), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 0, 'warm start included: nothing fetched')

  t.throws(() => fastifyJwtOptions({ jwks: { keys: [] }, issuer: ISS }), { code: 'FST_SUPABASE_JWKS_OPTION', message: /jwks has no keys/ },
    'a set refused throws at once, as any mistake in the options')
  t.throws(() => fastifyJwtOptions({ issuers: [{ issuer: ISS, audience: 'authenticated', jwks: { keys: [issuer.currentKey.jwk] } }] }),
    { message: /issuers\[0\]\.jwks holds no key for the algorithms option \(RS256\)/ })
})
