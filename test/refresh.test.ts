import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import supabaseJwks from '../lib/index'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor, registrationError } from './fixtures/helpers'

t.test('a slow JWKS at refresh time: no request waits on the routine refresh', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.5, timeout: 2 })
  const token = issuer.sign()
  t.equal((await getMe(app, token)).statusCode, 200)
  // from now on, the JWKS answers in 800 ms
  issuer.respondWith((_request, response) => {
    setTimeout(() => response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(issuer.jwks())), 800)
    return true
  })
  const slowest: number[] = []
  const statuses = new Set<number>()
  for (let i = 0; i < 40; i++) { // 40 x 50 ms: 4 x cacheTtl
    const started = performance.now()
    statuses.add((await getMe(app, token)).statusCode)
    slowest.push(performance.now() - started)
    await sleep(50)
  }
  t.same([...statuses], [200], 'every request verified')
  t.ok(Math.max(...slowest) < 300, `none waited for the 800 ms refresh (slowest ${Math.round(Math.max(...slowest))} ms)`)
  t.ok(issuer.jwksRequests >= 3, `refreshed ahead in the background (${issuer.jwksRequests} fetches)`)
  t.equal(app.supabaseJwks.stats().failures, 0)
})

t.test('JWKS down at start and back 1 s later: start-up succeeds, 503 says when to retry, 200 within 3 s of the return', async (t) => {
  const issuer = await issuerFor(t)
  issuer.respondWith((request) => { request.socket.destroy(); return true })
  const { app, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url, warmStart: true }, 'warn')
  t.ok(entries().some((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed'), 'the failed warm start is logged')
  t.match(app.supabaseJwks.stats(), { state: 'unavailable', failures: 1 })
  t.ok(app.supabaseJwks.stats().nextRetryAt! > Date.now() - 10, 'the next retry is due')
  const token = issuer.sign()
  const first = await getMe(app, token)
  t.equal(first.statusCode, 503)
  t.ok(Number(first.headers['retry-after']) >= 1 && Number(first.headers['retry-after']) <= 2, `Retry-After ${first.headers['retry-after']}`)
  const back = Date.now() + 1000
  setTimeout(() => issuer.respondWith(undefined), 1000)
  let okAt = 0
  for (let i = 0; i < 24 && okAt === 0; i++) { // every 250 ms, 6 s at most
    await sleep(250)
    if ((await getMe(app, token)).statusCode === 200) okAt = Date.now()
  }
  t.ok(okAt > 0 && okAt - back < 3000, `200 ${okAt - back} ms after the JWKS came back`)
  t.match(app.supabaseJwks.stats(), { state: 'fresh', nextRetryAt: null })
})

t.test('failing fetches back off: the gaps grow, doubling, and never exceed cooldown (plus jitter)', async (t) => {
  const issuer = await issuerFor(t)
  const at: number[] = []
  issuer.respondWith((_request, response) => { at.push(performance.now()); response.writeHead(500).end(); return true })
  const cooldown = 0.4
  const app = await appFor(t, { supabaseUrl: issuer.url, cooldown })
  const token = issuer.sign()
  const until = performance.now() + 3500
  const statuses = new Set<number>()
  while (at.length < 10 && performance.now() < until) {
    statuses.add((await getMe(app, token)).statusCode)
    await sleep(5)
  }
  t.same([...statuses], [503], 'no key: 503 throughout')
  t.equal(at.length, 10, 'ten failed fetches')
  const gaps = at.slice(1).map((time, i) => time - at[i]!)
  // 25, 50, 100, 200 ms (cooldown / 16, doubling), then cooldown
  // compared with the capped gaps of the same run, not with a wall-clock figure (a loaded machine adds to every gap)
  t.ok(gaps[0]! < gaps.at(-1)! / 2, `the first gap is short (${Math.round(gaps[0]!)} ms, against ${Math.round(gaps.at(-1)!)} ms once capped)`)
  t.ok(gaps[3]! > gaps[0]! * 3, `the gaps grow (${gaps.map(Math.round).join(', ')} ms)`)
  t.ok(gaps.every((gap) => gap < cooldown * 1000 * 1.2 + 60), 'none past cooldown plus jitter')
  t.ok(gaps.slice(5).every((gap) => gap >= cooldown * 1000 - 5), 'capped at cooldown')
  issuer.respondWith(undefined)
  await sleep(cooldown * 1200 + 20)
  t.equal((await getMe(app, token)).statusCode, 200, 'a good fetch ends it')
  t.match(app.supabaseJwks.stats(), { state: 'fresh', nextRetryAt: null })
})

t.test('warm start: the first request causes no fetch; stats() says the keys are fresh', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, warmStart: true })
  t.equal(issuer.jwksRequests, 1, 'fetched when the server started')
  t.match(app.supabaseJwks.stats(), { state: 'fresh', keys: 1, nextRetryAt: null })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.equal(issuer.jwksRequests, 1, 'the first request found the key held')
  t.match((await registrationError({ supabaseUrl: issuer.url, warmStart: 'yes' })).message, /warmStart must be a boolean/)
})

t.test('no idle connection is kept for the JWKS server to close: every fetch opens its own', async (t) => {
  const issuer = await issuerFor(t, { keepAliveTimeout: 100 })
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  await sleep(150) // the server has closed whatever was idle
  for (let i = 0; i < 2; i++) await app.supabaseJwks.refresh()
  t.equal(issuer.jwksRequests, 3)
  t.equal(issuer.connections, 3, 'one connection per fetch, none reused')
  t.equal(app.supabaseJwks.stats().failures, 0)
})

t.test('a readiness route answers 503 while the keys are unavailable', async (t) => {
  const issuer = await issuerFor(t)
  issuer.respondWith((_request, response) => { response.writeHead(500).end(); return true })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, cooldown: 0.2 })
  app.get('/ready', async (_request, reply) => {
    const { state } = app.supabaseJwks.stats()
    return reply.code(state === 'unavailable' ? 503 : 200).send({ state })
  })
  const down = await app.inject({ url: '/ready' })
  t.same([down.statusCode, down.json()], [503, { state: 'unavailable' }])
  issuer.respondWith(undefined)
  await app.supabaseJwks.refresh()
  const up = await app.inject({ url: '/ready' })
  t.same([up.statusCode, up.json()], [200, { state: 'fresh' }])
})

t.test('an idle server past cacheTtl + timeout, JWKS failing: the request waits for the fetch, then the known key serves stale', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.1, timeout: 0.1 })
  const token = issuer.sign()
  t.equal((await getMe(app, token)).statusCode, 200)
  issuer.respondWith((_request, response) => { response.writeHead(500).end(); return true })
  await sleep(250)
  t.equal((await getMe(app, token)).statusCode, 200, 'served from the held set after the failed fetch')
  t.equal(issuer.jwksRequests, 2)
  t.match(app.supabaseJwks.stats(), { state: 'stale', failures: 1 })
})

t.test('refresh() after a revocation that meets a 502: it rejects with KEYS_UNAVAILABLE, and its retry applies the revocation with no second call', async (t) => {
  const issuer = await issuerFor(t)
  const revoked = issuer.currentKey
  issuer.rotate()
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const token = issuer.sign({}, { kid: revoked.kid })
  t.equal((await getMe(app, token)).statusCode, 200)
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'forged' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 2, 'an unknown-kid cooldown runs now')
  issuer.unpublish(revoked.kid)
  let failures = 1
  issuer.respondWith((_request, response) => {
    if (failures-- <= 0) return false
    response.writeHead(502, { 'content-type': 'text/html' }).end('<html>bad gateway: upstream 10.0.0.7</html>')
    return true
  })
  const err = await app.supabaseJwks.refresh().then(() => undefined, (error: Error & { retryAfter?: number }) => error)
  t.match(err, { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', statusCode: 503, message: 'The signing keys are temporarily unavailable' }, 'refresh() says it failed')
  t.ok(err!.retryAfter! >= 1 && err!.retryAfter! <= 2, `retryAfter ${err!.retryAfter}`)
  t.match((err!.cause as Error).message, /^the JWKS answered HTTP 502$/, 'the cause: the status, not the body')
  t.equal(issuer.jwksRequests, 3)
  t.equal((await getMe(app, token)).statusCode, 200, 'until a fetch succeeds, the held set verifies')

  // no request and no second refresh(): the retry comes by itself after the first wait (1 s, up to 20% jitter)
  for (let i = 0; i < 60 && app.supabaseJwks.stats().lastSuccessAt! < app.supabaseJwks.stats().lastFailureAt!; i++) await sleep(50)
  t.equal(issuer.jwksRequests, 4, 'retried once, on its own')
  t.match(app.supabaseJwks.stats(), { fetches: 4, failures: 1, state: 'fresh', nextRetryAt: null })
  // the retry did what the refresh was for: it ended the unknown-kid cooldown, so a key published now verifies
  const next = issuer.addKey()
  t.equal((await getMe(app, issuer.sign({}, { kid: next.kid }))).statusCode, 200, 'a key published now verifies on its first token')
  t.equal(issuer.jwksRequests, 5)
  const res = await getMe(app, token)
  t.equal(res.statusCode, 401, 'the revoked key is refused')
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 6, 'after one lookup, which starts a cooldown')
  t.equal(codeOf(await getMe(app, token)), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 6)
})

t.test('refresh() with several issuers fetches every one and rejects if any failed, naming them (the first three)', async (t) => {
  const issuers = await Promise.all(Array.from({ length: 5 }, () => issuerFor(t)))
  const app = await appFor(t, { issuers: issuers.map((issuer) => ({ supabaseUrl: issuer.url })) })
  await app.supabaseJwks.refresh()
  t.same(issuers.map((issuer) => issuer.jwksRequests), [1, 1, 1, 1, 1], 'all fetched, none failed: resolves')
  const down = issuers.slice(1)
  for (const issuer of down) issuer.respondWith((_request, response) => { response.writeHead(500).end(); return true })
  const err = await app.supabaseJwks.refresh().then(() => undefined, (error: Error & { retryAfter?: number }) => error)
  t.same(issuers.map((issuer) => issuer.jwksRequests), [2, 2, 2, 2, 2], 'every issuer fetched')
  t.match(err, { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', statusCode: 503 })
  t.ok(err!.retryAfter! >= 1 && err!.retryAfter! <= 2, `retryAfter ${err!.retryAfter}`)
  t.equal((err!.cause as Error).message, `the JWKS of 4 of 5 issuers could not be fetched: ${down.slice(0, 3).map((issuer) => `${issuer.issuer}: the JWKS answered HTTP 500`).join('; ')}; and 1 more`)
  t.equal(app.supabaseJwks.stats().issuers![issuers[0]!.issuer]!.failures, 0)
  // one issuer down: its own error, named
  for (const issuer of down.slice(1)) issuer.respondWith(undefined)
  await t.rejects(app.supabaseJwks.refresh(), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', cause: { message: `the JWKS of 1 of 5 issuers could not be fetched: ${down[0]!.issuer}: the JWKS answered HTTP 500` } })
})

t.test('close() while a refresh() fails: no retry is left behind', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  await app.ready()
  issuer.respondWith(() => true) // hangs until the agent is destroyed
  const refreshing = app.supabaseJwks.refresh()
  await sleep(50)
  await app.close()
  await t.rejects(refreshing, { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE' })
  await sleep(1300) // past the first wait
  t.equal(app.supabaseJwks.stats().fetches, 1, 'no retry after close()')
})

t.test('close() after a refresh() failed: the retry it armed never runs', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false })
  await app.ready()
  issuer.respondWith((_request, response) => { response.writeHead(502).end(); return true })
  await t.rejects(app.supabaseJwks.refresh(), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE' })
  issuer.respondWith(undefined)
  await app.close() // before the first wait (about 1 s) is over
  await sleep(1300)
  t.equal(issuer.jwksRequests, 1, 'the retry timer was cleared by close()')
  t.equal(app.supabaseJwks.stats().fetches, 1)
})

t.test('the fetching JWKS log line says why the fetch runs, and names a kid only for a lookup', async (t) => {
  const issuer = await issuerFor(t)
  const { app, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url, warmStart: true, cacheTtl: 0.2, timeout: 2 }, 'info')
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'forged' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  await app.supabaseJwks.refresh()
  await sleep(250)
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  for (let i = 0; i < 100 && app.supabaseJwks.stats().state !== 'fresh'; i++) await sleep(10)
  const fetching = entries().filter((entry) => entry.msg === 'supabase-jwks: fetching JWKS')
  t.same(fetching.map((entry) => [entry.reason, 'kid' in entry ? entry.kid : 'no kid']), [
    ['warm start', 'no kid'],
    ['lookup', 'forged'],
    ['refresh', 'no kid'],
    ['refresh ahead', 'no kid']
  ])
})
