// Heap per token-cache entry: `node --expose-gc bench/token-cache-memory.mjs`. Fills a TokenCache of
// 10,000 entries with tokens of several shapes (each string held by the cache alone, as after its
// request) and prints the heap after GC per entry: the token (as sliced from its header) and its
// frozen claims.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { TokenCache, deepFreeze } = require('../dist/token-cache.js')
const { createTestIssuer } = require('fastify-supabase-jwks/testing')
if (typeof globalThis.gc !== 'function') throw new Error('run with node --expose-gc')
const ENTRIES = 10_000
const metadata = (count, value) => Object.fromEntries(Array.from({ length: count }, (_, k) => [`k${k}`, value()]))
const SHAPES = [
  ['a typical token', () => ({})],
  ['50 empty objects in user_metadata', () => ({ user_metadata: metadata(50, () => ({})) })],
  ['47 empty arrays in user_metadata', () => ({ user_metadata: metadata(47, () => []) })],
  ['90 small keys in user_metadata', () => ({ user_metadata: metadata(90, () => 1) })],
  ['one long string (a token just under 4 KiB, the longest kept)', (fill) => ({ user_metadata: { bio: 'x'.repeat(fill) } })]
]

for (const alg of ['RS256', 'ES256']) {
  const issuer = await createTestIssuer({ alg })
  // the string that brings a token to just under 4,096 characters (base64url: 4 characters per 3 bytes)
  const fill = Math.floor((4090 - issuer.sign({ sub: 'user-0000', user_metadata: { bio: '' } }).length) * 3 / 4)
  for (const [name, claims] of SHAPES) {
    const cache = new TokenCache(ENTRIES)
    const key = {}
    globalThis.gc()
    const before = process.memoryUsage().heapUsed
    let length = 0
    for (let i = 0; i < ENTRIES; i++) {
      const token = `Bearer ${issuer.sign({ sub: `user-${i}`, ...claims(fill) })}`.slice(7)
      length = token.length
      const payload = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString())
      const members = deepFreeze(payload)
      for (let seen = 0; seen < 2; seen++) cache.set(token, { claims: payload, key, expiresAt: Date.now() + 3_600_000 }, members)
    }
    globalThis.gc()
    const perEntry = (process.memoryUsage().heapUsed - before) / cache.size
    console.log(`${alg} ${name}: token ${length} characters, ${cache.size} entries, ${(perEntry / 1024).toFixed(1)} KB each`)
  }
  await issuer.close()
}
