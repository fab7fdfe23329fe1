import t from 'tap'
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { JwksResponder } from '../lib/testing'
import { appFor, codeOf, getMe, issuerFor } from './fixtures/helpers'

const hang: JwksResponder = () => true

t.test('cold start: 200 concurrent requests on an empty cache cause exactly 1 JWKS fetch, and all pass', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const tokens = Array.from({ length: 200 }, () => issuer.sign())
  const answers = await Promise.all(tokens.map((token) => getMe(app, token)))
  t.equal(answers.filter((res) => res.statusCode === 200).length, 200)
  t.equal(issuer.jwksRequests, 1)
})

t.test('unknown kid flood: 1,000 random kids cost at most one fetch per cooldown and no per-kid state', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.equal(issuer.jwksRequests, 1)

  // all at once, while the one fetch they cause is in flight
  const first = await Promise.all(Array.from({ length: 1000 }, () => getMe(app, issuer.sign({}, { header: { kid: randomUUID() } }))))
  t.same(new Set(first.map(codeOf)), new Set(['FST_SUPABASE_JWKS_UNKNOWN_KID']))
  t.equal(issuer.jwksRequests, 2, 'one fetch for the whole flood')

  // within the cooldown nothing waits on the network: a JWKS server that hangs is never asked
  issuer.respondWith(hang)
  const later = await Promise.all(Array.from({ length: 1000 }, () => getMe(app, issuer.sign({}, { header: { kid: randomUUID() } }))))
  t.same(new Set(later.map((res) => res.statusCode)), new Set([401]))
  t.equal(issuer.jwksRequests, 2, 'no fetch within the cooldown')
  t.equal(app.supabaseJwks.stats().keys, 1, 'memory holds the key set, nothing per kid')
  issuer.respondWith(undefined)
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'real tokens are unaffected')
})

t.test('unknown kid flood: the next fetch waits for the cooldown window', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, cooldown: 0.3 })
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'x1' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'x2' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 1)
  await sleep(350)
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'x3' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 2, 'one more fetch once the window has passed')
})

t.test('cacheTtl shorter than cooldown: unknown kids cost at most one fetch per cooldown, stale set or not; a known kid still refreshes the set', async (t) => {
  const issuer = await issuerFor(t)
  const cooldown = 1
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.2, timeout: 0.1, cooldown })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const forged = () => getMe(app, issuer.sign({}, { header: { kid: randomUUID() } }))
  // a stream of unknown kids for 2.2 s: eleven cacheTtl periods, a little over two cooldowns
  const started = performance.now()
  const codes = new Set<string>()
  while (performance.now() - started < 2200) {
    codes.add(codeOf(await forged()))
    await sleep(20)
  }
  const elapsed = performance.now() - started
  const lookups = issuer.jwksRequests - 1
  t.same([...codes], ['FST_SUPABASE_JWKS_UNKNOWN_KID'])
  t.ok(lookups >= 1 && lookups <= Math.ceil(elapsed / (cooldown * 1000)), `${lookups} fetches in ${Math.round(elapsed)} ms, at most one per cooldown`)

  // one cooldown, its set past cacheTtl + timeout
  await sleep(cooldown * 1000 + 100)
  t.equal(codeOf(await forged()), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  const fetched = issuer.jwksRequests
  t.equal(fetched, lookups + 2, 'the cooldown over, an unknown kid fetched and started another')
})

t.test('a set past cacheTtl within the unknown-kid cooldown: unknown kids fetch nothing, a kid the set has refreshes it', async (t) => {
  const issuer = await issuerFor(t)
  // a cooldown long enough that a loaded machine still answers the next requests within it
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.2, timeout: 0.1, cooldown: 5 })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const forged = () => getMe(app, issuer.sign({}, { header: { kid: randomUUID() } }))
  t.equal(codeOf(await forged()), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  const fetched = issuer.jwksRequests // the lookup that started the cooldown
  await sleep(400) // the set is past cacheTtl + timeout
  t.equal(codeOf(await forged()), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  const standby = issuer.addKey()
  const standbyToken = issuer.sign({}, { kid: standby.kid })
  t.equal(codeOf(await getMe(app, standbyToken)), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'a key the held set lacks waits for the cooldown, as with a fresh set')
  t.equal(issuer.jwksRequests, fetched, 'a stale set within the cooldown: no fetch for unknown kids')
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'a kid the stale set has verifies')
  t.equal(issuer.jwksRequests, fetched + 1, 'and refreshes the set')
  t.equal((await getMe(app, standbyToken)).statusCode, 200, 'the refreshed set brought the new key')
  t.equal(issuer.jwksRequests, fetched + 1)
})

t.test('rotation, Supabase style: a published standby key verifies with no 401 and no extra fetch', async (t) => {
  const issuer = await issuerFor(t)
  const a = issuer.currentKey
  const b = issuer.addKey() // standby: published, not yet signing
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((await getMe(app, issuer.sign({}, { kid: a.kid }))).statusCode, 200)
  await sleep(1000)
  t.equal((await getMe(app, issuer.sign({}, { kid: b.kid }))).statusCode, 200)
  t.equal(issuer.jwksRequests, 1, 'B came with the set that A fetched')
})

t.test('a kid published after the last fetch is accepted on its first token', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const fresh = issuer.rotate()
  const res = await getMe(app, issuer.sign())
  t.equal(res.statusCode, 200, 'the cache filled a moment ago does not hold the new key back')
  t.equal(issuer.jwksRequests, 2)
  t.equal(issuer.currentKey.kid, fresh.kid)
})

t.test('a standby key published before an unknown-kid cooldown verifies during it', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const standby = issuer.addKey()
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'forged' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 2)
  t.equal((await getMe(app, issuer.sign({}, { kid: standby.kid }))).statusCode, 200)
  t.equal(issuer.jwksRequests, 2, 'the fetch the forged kid caused brought the standby key')
})

t.test('revocation: a key removed from the JWKS stops verifying within cacheTtl + timeout, stale copies or not', async (t) => {
  const issuer = await issuerFor(t)
  const a = issuer.currentKey
  issuer.rotate()
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.2, timeout: 0.1, staleIfError: 3600 })
  const tokenA = issuer.sign({}, { kid: a.kid })
  t.equal((await getMe(app, tokenA)).statusCode, 200)
  issuer.unpublish(a.kid)
  t.equal((await getMe(app, tokenA)).statusCode, 200, 'still cached within the lifetime')
  await sleep(350)
  const res = await getMe(app, tokenA)
  t.equal(res.statusCode, 401, 'revoked after cacheTtl + timeout, not served from a stale copy')
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 2)
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'the other key still verifies')
  t.equal(codeOf(await getMe(app, tokenA)), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
})

t.test('refresh ahead: past cacheTtl the held set verifies while one background fetch replaces it; a removed key then gets 401', async (t) => {
  const issuer = await issuerFor(t)
  const a = issuer.currentKey
  issuer.rotate()
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.2, timeout: 2 })
  const tokenA = issuer.sign({}, { kid: a.kid })
  t.equal((await getMe(app, tokenA)).statusCode, 200)
  issuer.unpublish(a.kid)
  await sleep(250)
  t.match(app.supabaseJwks.stats(), { state: 'stale', nextRetryAt: null }, 'past cacheTtl, idle: the next request refreshes')
  // the JWKS answers the background fetch only when released: its state is seen while it runs
  let release!: () => void
  const released = new Promise<void>((resolve) => { release = resolve })
  issuer.respondWith((_request, response) => {
    released.then(() => response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(issuer.jwks())))
    return true
  })
  t.equal((await getMe(app, tokenA)).statusCode, 200, 'within cacheTtl + timeout: the held set answers while the refresh runs')
  t.equal(app.supabaseJwks.stats().state, 'refreshing')
  release()
  for (let i = 0; i < 200 && app.supabaseJwks.stats().state !== 'fresh'; i++) await sleep(10)
  issuer.respondWith(undefined)
  t.equal(issuer.jwksRequests, 2, 'one background fetch')
  t.equal(app.supabaseJwks.stats().state, 'fresh')
  t.equal(codeOf(await getMe(app, tokenA)), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'the new set no longer has it')
  t.equal(issuer.jwksRequests, 3, 'a kid the new set lacks: one lookup, which starts the unknown-kid cooldown')
  t.equal(codeOf(await getMe(app, tokenA)), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.equal(issuer.jwksRequests, 3)
})
