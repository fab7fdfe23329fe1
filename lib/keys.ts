import { createPublicKey, type KeyObject } from 'node:crypto'
import buildGetJwks from 'get-jwks'
import { Agent } from 'undici'
import type { FastifyBaseLogger } from 'fastify'
import { KeysUnavailableError, TokenInvalidError, UnknownKeyError } from './errors'
import type { Algorithm, Config } from './options'

/*
 * The key resolver: get-jwks fetches the JWKS and picks the JWK by `kid` (and `alg`);
 * this module decides *when* it may fetch, and keeps each usable key converted once.
 *
 * Why a wrapper (see ../shared/FACTS.md): get-jwks has no cooldown for unknown kids,
 * ignores its timeout, rebuilds a PEM on every call, and replays stale or failed
 * lookups from its own caches. So get-jwks' caches are emptied before every call and
 * only ever asked to fetch; the cache policy lives here:
 *   - a key is trusted for `cacheTtl` after the fetch that returned it;
 *   - one fetch at a time; concurrent lookups wait for it instead of fetching again;
 *   - after a fetch that did not find its kid, or that failed, unknown kids are answered
 *     at once (401, or 503 after a failure) until `cooldown` has passed;
 *   - a fetch that fails keeps known keys verifying for `staleIfError` past their TTL;
 *   - a fetch that succeeds without the kid drops it at once (revocation).
 */

/** A key from the JWKS, fit for verifying, converted once. */
interface CachedKey {
  pem: string
  key: KeyObject
  algorithms: readonly string[]
  fetchedAt: number
}

/** Key activity, for logs or metrics. */
export interface KeyStats {
  /** JWKS fetches started. */
  fetches: number
  /** Fetches that failed (network, timeout, status, body). */
  failures: number
  /** Keys held now. */
  keys: number
  /** Time of the last fetch that succeeded, in ms since the epoch, or `null`. */
  lastSuccessAt: number | null
  /** Time of the last fetch that failed, in ms since the epoch, or `null`. */
  lastFailureAt: number | null
}

export interface KeyResolver {
  /** The PEM of the key `kid`, fit for `alg`: a string when cached, a promise when a fetch is needed. */
  getKey (kid: string, alg: string): string | Promise<string>
  /** Key activity so far. */
  stats (): KeyStats
  close (): Promise<void>
}

const MIN_RSA_BITS = 2048
const MAX_KEYS = 64
const EC_CURVES: Record<string, Algorithm> = { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' }
const RSA_ALGORITHMS: readonly Algorithm[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']

class UnusableKeyError extends Error {}

/** Checks a JWK is a public signing key fit for `alg` and converts it once (RFC 7517, RFC 7518). */
export function toCachedKey (jwk: Record<string, unknown>, now: number): CachedKey {
  if (jwk.use !== undefined && jwk.use !== 'sig') throw new UnusableKeyError('use is not "sig"')
  if (jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes('verify'))) {
    throw new UnusableKeyError('key_ops does not allow "verify"')
  }
  if ('d' in jwk) throw new UnusableKeyError('a private key is published')
  let algorithms: readonly string[]
  if (jwk.kty === 'RSA') algorithms = RSA_ALGORITHMS
  else if (jwk.kty === 'EC' && typeof jwk.crv === 'string' && Object.hasOwn(EC_CURVES, jwk.crv)) algorithms = [EC_CURVES[jwk.crv]!]
  else if (jwk.kty === 'OKP' && (jwk.crv === 'Ed25519' || jwk.crv === 'Ed448')) algorithms = ['EdDSA']
  else throw new UnusableKeyError('unsupported key type or curve')
  if (jwk.alg !== undefined) {
    if (!algorithms.includes(jwk.alg as string)) throw new UnusableKeyError('alg does not match the key type')
    algorithms = [jwk.alg as string]
  }
  let key: KeyObject
  try {
    key = createPublicKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' })
  } catch {
    throw new UnusableKeyError('not a valid public key')
  }
  if (jwk.kty === 'RSA' && (key.asymmetricKeyDetails?.modulusLength ?? 0) < MIN_RSA_BITS) {
    throw new UnusableKeyError(`RSA modulus under ${MIN_RSA_BITS} bits`)
  }
  return { pem: key.export({ type: 'spki', format: 'pem' }) as string, key, algorithms, fetchedAt: now }
}

function withTimeout<T> (promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`JWKS fetch timed out after ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

export function createKeyResolver (config: Config, log: FastifyBaseLogger): KeyResolver {
  const { cacheTtlMs, cooldownMs, staleIfErrorMs, timeoutMs } = config
  const jwksUrl = config.jwksUrl
  const domain = jwksUrl.origin
  const dispatcher = new Agent({
    connect: { timeout: timeoutMs },
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    maxResponseSize: config.maxResponseSize
  })
  const jwks = buildGetJwks({
    jwksPath: jwksUrl.pathname + jwksUrl.search,
    ttl: cacheTtlMs,
    fetchOptions: { dispatcher, redirect: 'error', headers: { accept: 'application/json' } } as unknown as RequestInit
  })
  // get-jwks' caches are LRU caches (lru-cache) under a narrower type
  const jwksCaches = [jwks.cache, jwks.staleCache] as unknown as Array<{ clear (): void }>

  const keys = new Map<string, CachedKey>()
  const stats: KeyStats = { fetches: 0, failures: 0, keys: 0, lastSuccessAt: null, lastFailureAt: null }
  let inflight: { kid: string, done: Promise<void> } | undefined
  let retryAt = 0
  let lastFetchFailed = false

  function usable (entry: CachedKey, alg: string): string {
    if (!entry.algorithms.includes(alg)) throw new TokenInvalidError('the algorithm does not match the key')
    return entry.pem
  }

  function staleOrUnavailable (entry: CachedKey | undefined, alg: string, now: number): string {
    if (entry !== undefined && now < entry.fetchedAt + cacheTtlMs + staleIfErrorMs) return usable(entry, alg)
    throw new KeysUnavailableError()
  }

  async function fetchKey (kid: string, alg: string): Promise<void> {
    stats.fetches++
    log.info({ jwksUrl: jwksUrl.href, kid }, 'supabase-jwks: fetching JWKS')
    for (const cache of jwksCaches) cache.clear() // the stale cache last: clearing the other fills it
    const lookup = jwks.getJwk({ domain, alg, kid })
    lookup.catch(() => {}) // settled later than the timeout: nothing left to tell
    try {
      const entry = toCachedKey(await withTimeout(lookup, timeoutMs), Date.now())
      if (keys.size >= MAX_KEYS && !keys.has(kid)) keys.delete(keys.keys().next().value!)
      keys.set(kid, entry)
      lastFetchFailed = false
      retryAt = 0
      stats.lastSuccessAt = entry.fetchedAt
    } catch (err) {
      const notFound = err instanceof UnusableKeyError || (err as { code?: string }).code === 'JWK_NOT_FOUND'
      retryAt = Date.now() + cooldownMs
      if (notFound) {
        keys.delete(kid)
        lastFetchFailed = false
        stats.lastSuccessAt = Date.now()
        log.debug({ kid, reason: (err as Error).message }, 'supabase-jwks: no usable key for kid')
      } else {
        lastFetchFailed = true
        stats.failures++
        stats.lastFailureAt = Date.now()
        // only the code and message: a GetJwksError also carries the response body
        log.warn({ jwksUrl: jwksUrl.href, code: (err as { code?: string }).code, reason: (err as Error).message },
          'supabase-jwks: JWKS fetch failed')
      }
    } finally {
      inflight = undefined
      stats.keys = keys.size
    }
  }

  /** What the last fetch for `kid` left: a key, stale or not, or the reason there is none. */
  function settle (kid: string, alg: string): string {
    const entry = keys.get(kid)
    const now = Date.now()
    if (entry !== undefined && now < entry.fetchedAt + cacheTtlMs) return usable(entry, alg)
    if (lastFetchFailed) return staleOrUnavailable(entry, alg, now)
    throw new UnknownKeyError()
  }

  async function lookup (kid: string, alg: string): Promise<string> {
    // Bounded: each turn waits for a fetch that is already running, or starts one.
    for (let turn = 0; turn < 3; turn++) {
      const running = inflight
      if (running !== undefined) {
        await running.done
        if (running.kid === kid) return settle(kid, alg)
        const entry = keys.get(kid)
        if (entry !== undefined && Date.now() < entry.fetchedAt + cacheTtlMs) return usable(entry, alg)
        continue
      }
      const entry = keys.get(kid)
      const now = Date.now()
      if (entry !== undefined && now < entry.fetchedAt + cacheTtlMs) return usable(entry, alg)
      if (now < retryAt) {
        if (lastFetchFailed) return staleOrUnavailable(entry, alg, now)
        // the last fetch missed another kid: a known kid may still refresh, an unknown one waits
        if (entry === undefined) throw new UnknownKeyError()
      }
      const done = fetchKey(kid, alg)
      inflight = { kid, done }
      await done
      return settle(kid, alg)
    }
    return settle(kid, alg)
  }

  return {
    getKey (kid, alg) {
      const entry = keys.get(kid)
      if (entry !== undefined && Date.now() < entry.fetchedAt + cacheTtlMs) return usable(entry, alg)
      return lookup(kid, alg)
    },
    stats () {
      return { ...stats }
    },
    async close () {
      await dispatcher.close()
    }
  }
}
