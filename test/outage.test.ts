import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { gzipSync } from 'node:zlib'
import Fastify from 'fastify'
import supabaseJwks from '../lib/index'
import { signJwt, type JwksResponder } from '../lib/testing'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor } from './fixtures/helpers'

const hang: JwksResponder = () => true
/** A valid key set to serve with a wrong status: filled in by the test that uses it. */
let issuerKeys: unknown = { keys: [] }

const failures: Array<[string, JwksResponder]> = [
  ['connection reset', (request) => { request.socket.destroy(); return true }],
  ['5xx', (_request, response) => { response.writeHead(500, { 'content-type': 'application/json' }).end('{"keys":[]}'); return true }],
  ['invalid JSON', (_request, response) => { response.writeHead(200, { 'content-type': 'application/json' }).end('{"keys": ['); return true }],
  ['HTML', (_request, response) => { response.writeHead(200, { 'content-type': 'text/html' }).end('<html><body>Bad gateway</body></html>'); return true }],
  ['an empty key set', (_request, response) => { response.writeHead(200, { 'content-type': 'application/json' }).end('{"keys":[]}'); return true }],
  ['a 203 with a key set', (_request, response) => { response.writeHead(203, { 'content-type': 'application/json' }).end(JSON.stringify(issuerKeys)); return true }],
  ['a timeout', hang]
]

for (const [name, responder] of failures) {
  t.test(`stale if error (${name}): known keys keep verifying for a bounded window, unknown kids get 503`, async (t) => {
    const issuer = await issuerFor(t)
    // cooldown 8 s: the first retry waits cooldown / 16 = 0.5 s, plus up to 20% jitter
    const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.2, cooldown: 8, staleIfError: 1.5, timeout: 0.2 })
    const token = issuer.sign()
    issuerKeys = issuer.jwks()
    // a reset connection is tried once more at once: each failed fetch is then two requests
    const per = name === 'connection reset' ? 2 : 1
    t.equal((await getMe(app, token)).statusCode, 200)
    issuer.respondWith(responder)
    await sleep(250)
    t.equal((await getMe(app, token)).statusCode, 200, 'a known key verifies while the JWKS fails')
    // the refresh ahead runs in the background, up to timeout: wait (bounded) for it to fail
    for (let i = 0; i < 200 && app.supabaseJwks.stats().failures === 0; i++) await sleep(10)
    t.equal(issuer.jwksRequests, 1 + per, 'one failed refresh')
    t.equal(app.supabaseJwks.stats().failures, 1)
    t.equal((await getMe(app, token)).statusCode, 200)
    const unknown = await getMe(app, issuer.sign({}, { header: { kid: 'not-cached' } }))
    t.equal(unknown.statusCode, 503, 'a kid that is not cached cannot be checked')
    t.equal(unknown.headers['retry-after'], '1')
    t.equal(issuer.jwksRequests, 1 + per, 'no retry within the backoff')
    await sleep(650) // the backoff (0.5 s) plus its jitter (at most 20%)
    t.equal((await getMe(app, token)).statusCode, 200, 'still within staleIfError, answered without waiting for the retry')
    for (let i = 0; i < 100 && app.supabaseJwks.stats().failures < 2; i++) await sleep(10)
    t.equal(issuer.jwksRequests, 1 + 2 * per, 'retried once the cooldown passed, in the background')
    await sleep(1000)
    const late = await getMe(app, token)
    t.equal(late.statusCode, 503, 'the window ran out')
    t.equal(codeOf(late), 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
    issuer.respondWith(undefined)
    await app.supabaseJwks.refresh()
    t.equal((await getMe(app, token)).statusCode, 200, 'recovers with the JWKS')
  })
}

t.test('a connection reset under a fetch is tried once more at once, and named in the warning when it stays', async (t) => {
  const issuer = await issuerFor(t)
  const { app, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url }, 'warn')
  let resets = 1
  issuer.respondWith((request) => {
    if (resets-- <= 0) return false
    request.socket.destroy()
    return true
  })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'the second try answered')
  t.equal(issuer.jwksRequests, 2)
  t.match(app.supabaseJwks.stats(), { fetches: 1, failures: 0 })
  issuer.respondWith((request) => { request.socket.destroy(); return true })
  await t.rejects(app.supabaseJwks.refresh(), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', cause: { message: /\((ECONNRESET|UND_ERR_SOCKET)\)$/ } }, 'the cause names the code')
  t.equal(issuer.jwksRequests, 4, 'two tries, no more')
  const warning = entries().find((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed')!
  t.match(warning.code, /^(ECONNRESET|UND_ERR_SOCKET)$/, 'the warning says the connection was closed under it')
})

t.test('staleIfError: 0 turns stale use off', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.2, staleIfError: 0 })
  const token = issuer.sign()
  t.equal((await getMe(app, token)).statusCode, 200)
  issuer.respondWith((_request, response) => { response.writeHead(500).end(); return true })
  await sleep(250)
  t.equal((await getMe(app, token)).statusCode, 200, 'the held set answers while the refresh ahead runs')
  await sleep(50)
  t.equal((await getMe(app, token)).statusCode, 503, 'the refresh failed: no stale use')
})

t.test('a hanging JWKS server never holds a request longer than the timeout', async (t) => {
  const issuer = await issuerFor(t)
  issuer.respondWith(hang)
  const app = await appFor(t, { supabaseUrl: issuer.url, timeout: 0.3 })
  const started = Date.now()
  const res = await getMe(app, issuer.sign())
  t.equal(res.statusCode, 503)
  t.ok(Date.now() - started < 3000, 'answered after the timeout, not when the server gives up')
})

t.test('a body that drips faster than the idle timeout is still cut off at the timeout, and the connection closed', async (t) => {
  const issuer = await issuerFor(t)
  let open = 0
  issuer.respondWith((_request, response) => {
    open++
    response.writeHead(200, { 'content-type': 'application/json' })
    response.write('{"keys":[')
    const drip = setInterval(() => response.write(' '), 50)
    response.on('close', () => { open--; clearInterval(drip) })
    return true
  })
  const app = Fastify()
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, timeout: 0.3, cooldown: 0.1 })
  app.get('/me', { preHandler: app.authenticate }, async (request) => request.user)
  for (let i = 0; i < 3; i++) {
    t.equal((await getMe(app, issuer.sign())).statusCode, 503)
    await sleep(150)
  }
  for (let wait = 0; wait < 20; wait++) {
    if (open === 0) break
    await sleep(50)
  }
  t.equal(open, 0, 'every dripping connection was aborted, none piles up')
  await app.close()
  t.pass('close() returns')
})

t.test('a compressed JWKS is refused (the size cap could not hold), and identity is asked for', async (t) => {
  const issuer = await issuerFor(t)
  const encodings: Array<string | undefined> = []
  issuer.respondWith((request, response) => {
    encodings.push(request.headers['accept-encoding'])
    response.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' })
    response.end(gzipSync(JSON.stringify({ ...issuer.jwks(), padding: 'x'.repeat(5_000_000) })))
    return true
  })
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const res = await getMe(app, issuer.sign())
  t.equal(res.statusCode, 503)
  t.equal(app.supabaseJwks.stats().failures, 1)
  t.same(encodings, ['identity'])
})

t.test('a JWKS larger than maxResponseSize is refused', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, maxResponseSize: 10_000 })
  const padding = 'x'.repeat(2 * 1024 * 1024)
  issuer.respondWith((_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' })
    response.end(JSON.stringify({ ...issuer.jwks(), padding }))
    return true
  })
  const res = await getMe(app, issuer.sign())
  t.equal(res.statusCode, 503)
  t.equal(app.supabaseJwks.stats().failures, 1)
  issuer.respondWith(undefined)
  await app.supabaseJwks.refresh()
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'a normal JWKS fits under the same cap')
})

t.test('a JWKS past maxResponseSize without content-length is cut off as it arrives, its connection closed', async (t) => {
  const issuer = await issuerFor(t)
  const { app, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url, maxResponseSize: 10_000 }, 'warn')
  let sent = 0
  let closed = 0
  issuer.respondWith((_request, response) => {
    // chunked: the size is known only by counting; the server would send 1 MB if it were read
    response.writeHead(200, { 'content-type': 'application/json' })
    response.on('close', () => { closed++ })
    const chunk = 'x'.repeat(4096)
    const write = () => {
      while (sent < 1024 * 1024 && !response.destroyed) {
        sent += chunk.length
        if (!response.write(chunk)) return response.once('drain', write)
      }
      response.end()
    }
    write()
    return true
  })
  const res = await getMe(app, issuer.sign())
  t.same([res.statusCode, codeOf(res)], [503, 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE'])
  t.match(entries().find((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed'),
    { reason: 'the answer is larger than maxResponseSize (10000 bytes)', code: 'RESPONSE_TOO_LARGE' })
  await sleep(50)
  t.equal(closed, 1, 'the connection was closed')
})

t.test('redirects are not followed', async (t) => {
  const issuer = await issuerFor(t)
  const elsewhere = await issuerFor(t)
  issuer.respondWith((_request, response) => {
    response.writeHead(302, { location: elsewhere.jwksUrl }).end()
    return true
  })
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const res = await getMe(app, elsewhere.sign({ iss: issuer.issuer }))
  t.equal(res.statusCode, 503)
  t.equal(elsewhere.jwksRequests, 0, 'the redirect target was never contacted')
})

t.test('a JWKS mixing good and bad keys serves the good ones', async (t) => {
  const issuer = await issuerFor(t)
  const enc = issuer.addKey({ kid: 'enc' })
  enc.jwk.use = 'enc'
  const noVerify = issuer.addKey({ kid: 'no-verify' })
  noVerify.jwk.key_ops = ['encrypt']
  const wrongAlg = issuer.addKey({ kid: 'wrong-alg' })
  wrongAlg.jwk.alg = 'ES256'
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  for (const kid of ['enc', 'no-verify', 'wrong-alg']) {
    t.equal(codeOf(await getMe(app, issuer.sign({}, { kid }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID', kid)
  }
  t.equal(app.supabaseJwks.stats().keys, 1)
})

t.test('a token whose kid is held, signed with an algorithm the key does not fit', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['ES256', 'EdDSA'] })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const ed = issuer.addKey({ alg: 'EdDSA', publish: false })
  const token = signJwt({ alg: 'EdDSA', kid: issuer.currentKey.kid }, { sub: 'x' }, ed.privateKey)
  t.equal(codeOf(await getMe(app, token)), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
})
