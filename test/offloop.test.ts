import t from 'tap'
import { lookup } from 'node:dns'
import Fastify from 'fastify'
import supabaseJwks from '../lib/index'
import { MAX_OFF_LOOP, MAX_QUEUED, queueSlots } from '../lib/signature'
import { b64, parts } from './fixtures/craft'
import { appFor, codeOf, getMe, issuerFor } from './fixtures/helpers'

t.test('signatures are checked on the thread pool, whatever the algorithm', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const ed = issuer.addKey({ alg: 'EdDSA' })
  const rs = issuer.addKey({ alg: 'RS256' })
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['ES256', 'EdDSA', 'RS256'] })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.equal((await getMe(app, issuer.sign({}, { kid: ed.kid }))).statusCode, 200)
  t.match(app.supabaseJwks.stats(), { signaturesOffLoop: 2, signaturesOnLoop: 0 })
  t.equal((await getMe(app, issuer.sign({}, { kid: rs.kid }))).statusCode, 200)
  t.match(app.supabaseJwks.stats(), { signaturesOffLoop: 3, signaturesOnLoop: 0 }, 'RSA too')
  // a forged signature of the right length, checked on the pool
  const forged = issuer.sign({ role: 'service_role' }).replace(/\.[^.]+$/, `.${'A'.repeat(86)}`)
  const response = await getMe(app, forged)
  t.equal(response.statusCode, 401)
  t.match(response.json(), { code: 'FST_SUPABASE_JWKS_TOKEN_INVALID', message: /signature is invalid/ })
  t.equal(app.supabaseJwks.stats().signaturesOffLoop, 4)
})

t.test('a burst past the pool bound waits in the queue; past the queue bound, checks run on the loop; every token verifies', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['ES256'], tokenCache: 0 })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const count = MAX_OFF_LOOP + MAX_QUEUED + 50
  const tokens = Array.from({ length: count }, (_, i) => issuer.sign({ sub: `user-${i}` }))
  // the last one, checked on the loop, is forged
  const forged = tokens.at(-1)!.replace(/\.[^.]+$/, `.${'A'.repeat(86)}`)
  const answers = await Promise.all([...tokens.slice(0, -1), forged].map((token) => app.supabaseJwks.verify(token).then((claims) => claims.sub, (err) => err.code)))
  t.same(answers.slice(0, -1), tokens.slice(0, -1).map((_, i) => `user-${i}`), 'each token got its own claims')
  t.equal(answers.at(-1), 'FST_SUPABASE_JWKS_TOKEN_INVALID', 'a forged signature checked on the loop is refused')
  const { signaturesOffLoop, signaturesOnLoop } = app.supabaseJwks.stats()
  t.ok(signaturesOnLoop >= 50, `past ${MAX_OFF_LOOP} in flight and ${MAX_QUEUED} queued, on the loop (${signaturesOnLoop})`)
  t.equal(signaturesOffLoop + signaturesOnLoop, count + 1)
  t.ok(signaturesOffLoop >= MAX_OFF_LOOP + MAX_QUEUED, 'the pool and the queue were used to their bounds')
})

t.test('a flood of ES256 tokens does not delay a JWKS fetch that needs a DNS lookup (localhost) into its timeout', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, {
    jwksUrl: issuer.jwksUrl.replace('127.0.0.1', 'localhost'),
    issuer: issuer.issuer,
    algorithms: ['ES256'],
    tokenCache: 0,
    timeout: 2
  })
  app.get('/me', { preHandler: app.authenticate }, async (request) => request.user)
  await app.ready()
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const flood = Array.from({ length: 600 }, (_, i) => issuer.sign({ sub: `flood-${i}` }))
  const fresh = issuer.rotate('ES256')
  const answers = await Promise.all([
    ...flood.map((token) => app.supabaseJwks.verify(token).then(() => 200, () => 401)),
    getMe(app, issuer.sign({}, { kid: fresh.kid })).then((response) => response.statusCode === 200 ? 200 : codeOf(response))
  ])
  t.equal(answers.at(-1), 200, 'the token of the new key verified: its fetch (with its DNS lookup) made it in time')
  t.equal(answers.filter((answer) => answer === 200).length, flood.length + 1)
  t.match(app.supabaseJwks.stats(), { fetches: 2, failures: 0 })
})

t.test('a DNS lookup made during a flood waits behind at most the checks in flight, not behind the flood', async (t) => {
  t.equal(MAX_OFF_LOOP, 16 * 4, '16 checks per thread of the default pool (4 threads) in flight at most')
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['ES256'], tokenCache: 0 })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const flood = Array.from({ length: MAX_OFF_LOOP + MAX_QUEUED }, (_, i) => issuer.sign({ sub: `flood-${i}` }))
  let done = 0
  const checks = flood.map((token) => app.supabaseJwks.verify(token).then(() => { done++ }))
  // dns.lookup runs on the same thread pool, first come, first served: without the bound it would
  // come after every check of the flood
  const doneAtLookup = await new Promise<number>((resolve) => lookup('localhost', () => resolve(done)))
  await Promise.all(checks)
  t.ok(doneAtLookup < flood.length / 4, `the lookup was answered after ${doneAtLookup} of ${flood.length} checks`)
  t.equal(app.supabaseJwks.stats().signaturesOnLoop, 0, 'all of them on the pool or in the queue')
})

t.test('a sustained flood of forged signatures with a held kid: the queue never holds more than MAX_QUEUED slots, each one a check waiting; nothing held after', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['ES256'], tokenCache: 0 })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'the kid is held')
  // tokens of the held kid, each with claims of its own and a signature of the right length that is not theirs
  const { head, claims } = parts(issuer.sign())
  const forged = (i: number) => `${head}.${b64({ ...claims, sub: `flood-${i}` })}.${'A'.repeat(86)}`
  // a flood kept up: as each check is answered, another is sent, so that about half of MAX_QUEUED wait
  // all along and the queue never empties until the last ones; four times MAX_QUEUED go through it
  const total = MAX_OFF_LOOP + 4 * MAX_QUEUED
  const outstanding = MAX_OFF_LOOP + MAX_QUEUED / 2
  let sent = 0
  let answered = 0
  let refused = 0
  const samples = { count: 0, maxCapacity: 0, maxWaiting: 0, mismatched: 0, emptied: 0 }
  function sample (): void {
    const slots = queueSlots()
    samples.count++
    samples.maxCapacity = Math.max(samples.maxCapacity, slots.capacity)
    samples.maxWaiting = Math.max(samples.maxWaiting, slots.waiting)
    if (slots.occupied !== slots.waiting) samples.mismatched++
    // while checks are still being sent, the queue must not have emptied: that is what a sustained flood is
    if (sent < total && slots.waiting === 0) samples.emptied++
  }
  await new Promise<void>((resolve) => {
    function send (): void {
      const token = forged(sent++)
      app.supabaseJwks.verify(token).then(() => {}, (err: { code?: string }) => {
        if (err.code === 'FST_SUPABASE_JWKS_TOKEN_INVALID') refused++
      }).then(() => {
        answered++
        sample()
        if (sent < total) send()
        else if (answered === total) resolve()
      })
    }
    while (sent < outstanding) send()
    sample()
  })
  t.equal(refused, total, 'every forged signature refused')
  t.match(app.supabaseJwks.stats(), { signaturesOffLoop: total + 1, signaturesOnLoop: 0 }, 'all of them through the pool and its queue')
  t.ok(samples.count > total, `sampled ${samples.count} times during the flood`)
  t.equal(samples.emptied, 0, 'the queue did not empty while the flood lasted')
  t.ok(samples.maxWaiting >= MAX_QUEUED / 4, `up to ${samples.maxWaiting} checks waited at once`)
  t.ok(samples.maxCapacity <= MAX_QUEUED, `the storage held at most ${samples.maxCapacity} slots (MAX_QUEUED: ${MAX_QUEUED}), while ${total - MAX_OFF_LOOP} checks went through the queue`)
  t.equal(samples.mismatched, 0, 'occupied slots were always the checks waiting')
  const after = queueSlots()
  t.same({ occupied: after.occupied, waiting: after.waiting }, { occupied: 0, waiting: 0 }, 'after the flood: nothing held')
  t.ok(after.capacity <= MAX_QUEUED)
})
