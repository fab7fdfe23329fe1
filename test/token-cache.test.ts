import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import supabaseJwks from '../lib/index'
import { TokenCache, deepFreeze } from '../lib/token-cache'
import type { CachedKey } from '../lib/key-set'
import { codeOf, issuerFor } from './fixtures/helpers'

/** An app whose /same route says whether request.user is the very object the previous request got. */
async function identityApp (t: Test, options: supabaseJwks.SupabaseJwksOptions): Promise<{ app: FastifyInstance, ask: (token: string) => Promise<{ status: number, same: boolean, frozen: boolean, code?: string }> }> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, options)
  const last = new Map<string, unknown>()
  app.get('/same', { preHandler: app.authenticate }, async (request) => {
    const token = request.headers.authorization!
    const same = last.get(token) === request.user
    last.set(token, request.user)
    return { same, frozen: Object.isFrozen(request.user) && Object.isFrozen(request.user.app_metadata) }
  })
  return {
    app,
    async ask (token) {
      const res = await app.inject({ url: '/same', headers: { authorization: `Bearer ${token}` } })
      return res.statusCode === 200 ? { status: 200, ...res.json() } : { status: res.statusCode, same: false, frozen: false, code: codeOf(res) }
    }
  }
}

/** Verifies `token` twice, so that the third request is answered from the cache. */
async function cached (t: Test, ask: (token: string) => Promise<{ status: number, same: boolean }>, token: string) {
  t.equal((await ask(token)).status, 200)
  t.equal((await ask(token)).status, 200)
  t.equal((await ask(token)).same, true, 'answered from the cache')
}

t.test('a token verified twice is then answered from the cache: same frozen claims, no verification', async (t) => {
  const issuer = await issuerFor(t)
  const { ask } = await identityApp(t, { supabaseUrl: issuer.url })
  const token = issuer.sign()
  t.match(await ask(token), { status: 200, same: false, frozen: true })
  t.match(await ask(token), { status: 200, same: false, frozen: true }, 'seen once: verified again, now admitted')
  t.match(await ask(token), { status: 200, same: true, frozen: true }, 'the third answer comes from the cache')
  t.match(await ask(token), { status: 200, same: true, frozen: true })
  t.equal(issuer.jwksRequests, 1)
})

t.test('tokenCache: 0 turns the cache off', async (t) => {
  const issuer = await issuerFor(t)
  const { ask } = await identityApp(t, { supabaseUrl: issuer.url, tokenCache: 0 })
  const token = issuer.sign()
  for (let i = 0; i < 4; i++) t.match(await ask(token), { status: 200, same: false, frozen: true }, 'verified every time, claims still frozen')
})

t.test('the cache is bounded in entries, and tokens over 4 KiB are not kept', async (t) => {
  const issuer = await issuerFor(t)
  const { ask } = await identityApp(t, { supabaseUrl: issuer.url, tokenCache: 2 })
  const [a, b, c] = [issuer.sign(), issuer.sign(), issuer.sign()]
  for (const token of [a, a, b, b, c, c]) t.equal((await ask(token)).status, 200, 'verified twice: admitted')
  t.equal((await ask(a)).same, false, 'the oldest entry was evicted')
  t.equal((await ask(c)).same, true, 'the newest is kept')
  const big = issuer.sign({ user_metadata: { bio: 'x'.repeat(4000) } })
  t.ok(big.length > 4096)
  await ask(big)
  await ask(big)
  t.equal((await ask(big)).same, false, 'a long token is verified each time')
  const bushy = issuer.sign({ user_metadata: { list: Array.from({ length: 100 }, () => ({})) } })
  t.ok(bushy.length < 4096)
  await ask(bushy)
  await ask(bushy)
  t.equal((await ask(bushy)).same, false, 'claims with many objects are verified each time: their heap size is not bounded by the token length')
  const wide = issuer.sign({ user_metadata: Object.fromEntries(Array.from({ length: 200 }, (_, i) => [`k${i}`, 1])) })
  t.ok(wide.length < 4096, 'about 200 small keys fit in 4 KiB')
  await ask(wide)
  await ask(wide)
  t.equal((await ask(wide)).same, false, 'many keys without any object are not kept either: the bound counts members')
})

t.test('an entry never outlives the token exp', async (t) => {
  const issuer = await issuerFor(t)
  const { ask } = await identityApp(t, { supabaseUrl: issuer.url })
  const token = issuer.sign({ exp: Math.floor(Date.now() / 1000) + 2 })
  t.equal((await ask(token)).status, 200)
  t.equal((await ask(token)).status, 200)
  t.equal((await ask(token)).same, true)
  await sleep(3100 - (Date.now() % 1000))
  t.match(await ask(token), { status: 401, code: 'FST_SUPABASE_JWKS_TOKEN_EXPIRED' })
})

t.test('an entry never outlives the key that verified it: a refresh or a revocation purges it', async (t) => {
  const issuer = await issuerFor(t)
  const { app, ask } = await identityApp(t, { supabaseUrl: issuer.url })
  const old = issuer.currentKey
  const token = issuer.sign()
  await cached(t, ask, token)
  issuer.rotate()
  await app.supabaseJwks.refresh()
  t.equal((await ask(token)).same, false, 'after a refresh the token is verified again')
  issuer.unpublish(old.kid)
  await app.supabaseJwks.refresh()
  t.match(await ask(token), { status: 401, code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' }, 'the revoked key no longer lets it in')
})

t.test('a cached token does not skip the JWKS refresh when the key set expires', async (t) => {
  const issuer = await issuerFor(t)
  const { ask } = await identityApp(t, { supabaseUrl: issuer.url, cacheTtl: 0.2, timeout: 0.1 })
  const key = issuer.currentKey
  const token = issuer.sign()
  await cached(t, ask, token)
  issuer.rotate()
  issuer.unpublish(key.kid)
  await sleep(350)
  t.match(await ask(token), { status: 401, code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' }, 'revoked within the cache lifetime')
  t.equal(issuer.jwksRequests, 2)
})

t.test('TokenCache and deepFreeze', async (t) => {
  const key: CachedKey = { kid: 'k', algorithms: ['RS256'], checks: new Map() }
  const held = (candidate: CachedKey) => candidate === key
  const entry = (expiresIn = 60_000) => ({ claims: {}, key, expiresAt: Date.now() + expiresIn })
  const cache = new TokenCache(1)
  cache.set('token-one', entry(), 1)
  t.equal(cache.size, 0, 'a token seen once is not kept')
  cache.set('token-one', entry(), 1)
  t.equal(cache.size, 1)
  t.ok(cache.get('token-one', held))
  cache.set('token-one', entry(), 1)
  t.equal(cache.size, 1, 'setting a cached token again evicts nothing')
  t.equal(cache.get('token-one', () => false), undefined, 'a key no longer held retires the entry')
  t.equal(cache.size, 0)
  for (let i = 0; i < 2; i++) cache.set('token-two', entry(-1), 1)
  t.equal(cache.get('token-two', held), undefined, 'expired')
  for (let i = 0; i < 2; i++) cache.set('token-big', entry(), 129)
  t.equal(cache.size, 0, 'claims with more than 128 members are not kept')
  for (let i = 0; i < 2; i++) cache.set('token-three', entry(), 1)
  t.ok(cache.get('token-three', held))
  cache.clear()
  t.equal(cache.get('token-three', held), undefined)
  cache.set('token-three', entry(), 1)
  t.equal(cache.size, 0, 'clear() also forgets the tokens seen once')
  for (const name of ['token-a', 'token-b', 'token-c', 'token-d', 'token-e']) cache.set(name, entry(), 1)
  cache.set('token-three', entry(), 1)
  t.equal(cache.size, 0, 'the memory of tokens seen once is bounded (about max numbers), so token-three was forgotten')
  for (const name of ['token-f', 'token-f']) cache.set(name, entry(), 1)
  t.equal(cache.size, 1, 'back at once: admitted')
  // a token is admitted when it comes back within max / 2 to max distinct tokens, not later: past
  // that, each admission would evict an entry before its use (pure churn)
  const window = new TokenCache(3)
  for (const name of ['back', 'other-1', 'other-2', 'back']) window.set(name, entry(), 1)
  t.ok(window.get('back', held), 'back after 2 others (max 3): admitted')
  for (const name of ['late', 'other-3', 'other-4', 'other-5', 'other-6', 'other-7', 'other-8', 'late']) window.set(name, entry(), 1)
  t.equal(window.get('late', held), undefined, 'back after 6 others (2 x max): forgotten, not admitted')
  t.equal(window.size, 1, 'only the first was admitted')
  // the older generation still counts: a token seen just before a rotation is admitted just after it
  const generations = new TokenCache(4)
  for (const name of ['a', 'b', 'c', 'across', 'd', 'across']) generations.set(name, entry(), 1)
  t.ok(generations.get('across', held), 'seen in the older generation: admitted')
  // clear() forgets both generations
  const cleared = new TokenCache(1)
  for (const name of ['older', 'newer']) cleared.set(name, entry(), 1)
  cleared.clear()
  cleared.set('older', entry(), 1)
  t.equal(cleared.size, 0, 'after clear(), a token of the older generation is new again')
  const twins = new TokenCache(4)
  const tail = 'x'.repeat(16)
  for (let i = 0; i < 2; i++) twins.set(`first.${tail}`, entry(), 1)
  t.ok(twins.get(`first.${tail}`, held))
  t.equal(twins.get(`second.${tail}`, held), undefined, 'a token with the same signature end is not answered with another\'s entry')
  for (let i = 0; i < 2; i++) twins.set(`second.${tail}`, entry(), 1)
  t.equal(twins.size, 1, 'the two take turns in one entry')
  t.ok(twins.get(`second.${tail}`, held))
  t.equal(twins.get(`first.${tail}`, held), undefined)
  const once = new TokenCache(2)
  once.set('token-now', entry(), 1, true)
  t.ok(once.get('token-now', held), 'admitted on its first verification when asked (legacy tokens)')
  const off = new TokenCache(0)
  for (let i = 0; i < 3; i++) off.set('token-one', entry(), 1)
  t.equal(off.size, 0, 'max 0 keeps nothing')

  const claims = { a: { b: [1, { c: 2 }] }, d: null }
  t.equal(deepFreeze(claims), 10, 'four objects (claims, a, b, the object in b) and six properties or items (a, d, b, 1, that object, c)')
  t.ok(Object.isFrozen(claims.a.b[1]))
  t.equal(deepFreeze(claims), 3, 'freezing again walks only the top: itself and its two properties')
})
