import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { readKeySet } from '../lib/key-set'
import { Keyring, createKeyResolver } from '../lib/keys'
import { normalizeOptions } from '../lib/options'
import { generateTestKey } from '../lib/testing'
import { issuerFor } from './fixtures/helpers'

/*
 * get-jwks holds the plugin's key set and answers each token's key (lib/keys.ts, Keyring): these
 * tests read its real cache, and check that it never fetches on its own.
 */

const RSA = generateTestKey('RS256', 'rsa-key')
const BARE = generateTestKey('RS256', 'bare-key') // no alg: it may verify every RSA algorithm allowed
const EC = generateTestKey('ES256', 'ec-key')
const ALLOWED = ['RS256', 'PS256', 'ES256']
const DOMAIN = 'https://project.supabase.co/auth/v1/.well-known/jwks.json'

function entriesOf (...jwks: Array<Record<string, unknown>>) {
  return readKeySet(Buffer.from(JSON.stringify({ keys: jwks })), ALLOWED)!
}

t.test('each usable key is filed in get-jwks under every algorithm it verifies, and getJwk answers the token\'s own pair', async (t) => {
  const keyring = new Keyring(300, 60_000)
  const bare = BARE.jwk
  const entries = entriesOf(RSA.jwk, { ...bare, alg: undefined }, EC.jwk, { kty: 'oct', kid: 'secret', k: 'AAAA' })
  keyring.seed(entries, DOMAIN)
  const { cache, generateCacheKey } = keyring.getJwks
  const domain = `${DOMAIN}/`
  const filed = (alg: string, kid: string) => cache.get(generateCacheKey(alg, kid, domain))
  t.match(filed('RS256', 'rsa-key'), { kid: 'rsa-key', alg: 'RS256', n: RSA.jwk.n, e: 'AQAB', domain })
  t.equal(filed('PS256', 'rsa-key'), undefined, 'a key whose alg is RS256 is filed under RS256 only')
  t.match(filed('RS256', 'bare-key'), { kid: 'bare-key', alg: 'RS256', n: bare.n })
  t.match(filed('PS256', 'bare-key'), { kid: 'bare-key', alg: 'PS256', n: bare.n }, 'a key without alg: each allowed algorithm of its type')
  t.equal(filed('RS384', 'bare-key'), undefined, 'never an algorithm the allowlist refuses')
  t.match(filed('ES256', 'ec-key'), { kid: 'ec-key', crv: 'P-256', x: EC.jwk.x })
  t.equal(filed('RS256', 'secret'), undefined, 'a skipped entry is not filed')

  t.equal(keyring.answered('rsa-key', 'RS256'), undefined, 'nothing answered before a token asks')
  const key = await keyring.ask('rsa-key', 'RS256')
  t.equal(key, entries[0]!.key, 'the answer is the key converted when the set was read')
  t.equal(keyring.answered('rsa-key', 'RS256'), key, 'asked once per set and pair: the next token has it at once')
  t.equal(await keyring.ask('bare-key', 'PS256'), entries[1]!.key)
  t.equal(keyring.answered('bare-key', 'RS256'), undefined, 'each pair is its own answer')
})

t.test('a new set replaces the old one in get-jwks\'s cache and in its stale cache, and forgets the answers', async (t) => {
  const keyring = new Keyring(300, 60_000)
  keyring.seed(entriesOf(RSA.jwk, EC.jwk), DOMAIN)
  await keyring.ask('rsa-key', 'RS256')
  const { cache, staleCache, generateCacheKey } = keyring.getJwks
  const old = generateCacheKey('RS256', 'rsa-key', `${DOMAIN}/`)
  const next = generateTestKey('RS256', 'next-key')
  keyring.seed(entriesOf(next.jwk), 'https://other.example/jwks')
  t.equal(cache.get(old), undefined, 'the removed key is gone from the cache')
  t.equal(staleCache.get(old), undefined, 'and from the stale cache lru-cache\'s dispose copied it into')
  t.equal(keyring.answered('rsa-key', 'RS256'), undefined, 'no answer of the old set is kept')
  t.match(cache.get(generateCacheKey('RS256', 'next-key', 'https://other.example/jwks/')), { kid: 'next-key', n: next.jwk.n })
})

t.test('only what the plugin filed answers: any other entry of get-jwks\'s cache is no key', async (t) => {
  const keyring = new Keyring(300, 60_000)
  keyring.seed(entriesOf(RSA.jwk), DOMAIN)
  const { cache, generateCacheKey } = keyring.getJwks
  const forged = generateTestKey('RS256', 'rsa-key')
  cache.set(generateCacheKey('RS256', 'rsa-key', `${DOMAIN}/`), { ...forged.jwk, domain: `${DOMAIN}/`, alg: 'RS256', kid: 'rsa-key' })
  await t.rejects(keyring.ask('rsa-key', 'RS256'), { code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' })
  t.equal(keyring.answered('rsa-key', 'RS256'), undefined)
})

t.test('an entry past get-jwks\'s own TTL is filed again: getJwk answers from its cache, never by a fetch', async (t) => {
  const issuer = await issuerFor(t)
  const keyring = new Keyring(300, 30)
  // filed under the issuer's real URL: a fetch by get-jwks would reach it, and be counted
  keyring.seed(entriesOf(RSA.jwk), issuer.url)
  await sleep(60)
  const key = await keyring.ask('rsa-key', 'RS256')
  t.equal(key.kid, 'rsa-key')
  // what get-jwks would do for a pair never filed: its signal is aborted before it could fetch
  await t.rejects(keyring.getJwks.getJwk({ domain: issuer.url, alg: 'RS256', kid: 'never-filed' }), /get-jwks does not fetch here/)
  t.equal(issuer.jwksRequests, 0, 'get-jwks made no request')
})

t.test('the resolver: a token\'s key is get-jwks\'s answer, asked once per set and pair; a rotation needs no fetch', async (t) => {
  const issuer = await issuerFor(t)
  const standby = issuer.addKey({ alg: 'RS256', publish: true })
  const config = normalizeOptions({ supabaseUrl: issuer.url }).issuers[0]!
  const log = { info () {}, debug () {}, warn () {}, error () {}, child () { return log } } as unknown as Parameters<typeof createKeyResolver>[1]
  const keys = createKeyResolver(config, log)
  t.teardown(() => keys.close())
  const first = issuer.keys[0]!
  t.equal(keys.held(first.kid, 'RS256'), undefined, 'nothing before the first fetch')
  const key = await keys.resolve(first.kid, 'RS256')
  t.equal(key.kid, first.kid)
  t.equal(keys.held(first.kid, 'RS256'), key, 'then held at once: the answer is kept')
  t.ok(keys.current(key))
  t.equal(keys.held(standby.kid, 'RS256'), undefined, 'the standby key is in the set, not answered yet')
  t.equal((await keys.resolve(standby.kid, 'RS256')).kid, standby.kid, 'get-jwks answers it')
  t.equal(issuer.jwksRequests, 1, 'one fetch for both')
  t.equal(keys.held(first.kid, 'PS256'), key, 'an algorithm the key does not verify: the key as it is, for the caller to refuse')
  await keys.refresh()
  t.equal(issuer.jwksRequests, 2)
  t.notOk(keys.current(key), 'after a new set, a key of the old one is not current')
  t.equal(keys.held(first.kid, 'RS256'), undefined, 'the new set answers anew')
  t.not(await keys.resolve(first.kid, 'RS256'), key)
  t.equal(issuer.jwksRequests, 2, 'asking get-jwks is no fetch')
})
