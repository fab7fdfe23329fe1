import { performance } from 'node:perf_hooks'
import type buildGetJwks from 'get-jwks'
import type { FastifyBaseLogger } from 'fastify'
import { KeysUnavailableError, UnknownKeyError } from './errors'
import type { Answer } from './http-get'
import { createKeyFetcher } from './key-fetch'
import { MAX_KEYS, readInlineKeySet, unusable, usableKeys, type CachedKey, type KeyEntry } from './key-set'
import type { Config, IssuerConfig } from './options'

export type { CachedKey } from './key-set'

/*
 * The key policy: when to ask for the key set (lib/key-fetch.ts gets it, bounded), and what to
 * trust meanwhile. The key of every token is what get-jwks answers for the token's own `kid` and
 * `alg` (see `Keyring`); this module decides which sets get-jwks holds, and when:
 *   - the key set from the last good fetch is trusted for `cacheTtl`; a kid it lacks is dropped
 *     at once (revocation), a kid it has needs no further fetch (a rotation's standby key);
 *   - one fetch at a time: concurrent lookups wait for it instead of fetching again;
 *   - a fetch that does not find the kid it was made for starts a `cooldown` during which other
 *     unknown kids are answered 401 at once, the set past `cacheTtl` or not; only its own clock (or
 *     `refresh()`) ends it;
 *   - a failed fetch is retried at most once per `cooldown`, in the background: held keys keep
 *     verifying for `staleIfError` past their TTL without waiting for it, and unknown kids are
 *     answered 503. A failed `refresh()` says so, and is retried by a timer with the same backoff;
 *   - one fetch is one failure at most, however many of its steps (discovery, JWKS) failed.
 * Why get-jwks does not fetch itself (get-jwks 11, read in its src/get-jwks.js): it has no cooldown
 * for unknown kids, passes a `timeout` that global fetch ignores, fetches the whole set again for
 * each new kid, has no size cap, and answers from its stale cache whenever a fetch fails, for as
 * long as that cache keeps the entry. So the plugin fetches each set itself and files every usable
 * key of it in get-jwks's cache, and asks `getJwk` only for what it filed from the current set.
 * A key set given inline (option `jwks`) is read and held as a fetched one is, at registration:
 *   - alone, it is the only set there will ever be: it never ages, nothing is fetched, and a kid it
 *     lacks is unknown at once;
 *   - beside a URL, it is held as if fetched at registration (trusted for `cacheTtl`, then refreshed
 *     ahead), and the first good fetch replaces it; the warm start fetches without being waited for.
 * One resolver per issuer: with several issuers, each has its own key set, cooldown and backoff.
 * Durations are measured on the monotonic clock: a wall-clock step cannot extend a key's life.
 */

/** `KeysUnavailableError`, with the seconds until the next fetch is allowed and the failure in `cause`. */
export type KeysUnavailable = InstanceType<typeof KeysUnavailableError> & { retryAfter: number, cause: Error }

export type KeyState = 'fresh' | 'refreshing' | 'stale' | 'unavailable'

/** Key activity, for logs or metrics. */
export interface KeyStats {
  /** JWKS fetches started. */
  fetches: number
  /**
   * Fetches that failed (network, timeout, status, size, body): one per fetch at most. With `discovery`, a
   * document that could not be read while the JWKS it named last answered is logged, not counted.
   */
  failures: number
  /** Usable keys held now. */
  keys: number
  /** Time of the last good fetch, in ms since the epoch, or `null`. */
  lastSuccessAt: number | null
  /** Time of the last failed fetch, in ms since the epoch, or `null`. */
  lastFailureAt: number | null
  /**
   * `fresh`: a good key set within `cacheTtl` (one given inline counts from registration, and alone
   * stays fresh); `refreshing`: a fetch is running while held keys
   * verify; `stale`: the last fetch failed (held keys verify within `staleIfError`), or the set is past
   * `cacheTtl` and the next request refreshes it; `unavailable`: no key can verify (not fetched yet,
   * or failing past the stale window). A readiness check answers 503 on `unavailable` only.
   */
  state: KeyState
  /** After a failed fetch: when the next one is allowed, in ms since the epoch; otherwise `null`. */
  nextRetryAt: number | null
  /** Signature checks made on the libuv thread pool, and on the event loop (the pool's share and the queue were full). */
  signaturesOffLoop: number
  signaturesOnLoop: number
}

export interface KeyResolver {
  /**
   * The key for a token's `kid` and `alg`, when the key set is fresh, has the kid, and get-jwks has
   * answered for that pair since the set was held: the fast path, no promise. A key that does not
   * verify `alg` is returned as it is, for the caller to refuse.
   */
  held (kid: string, alg: string): CachedKey | undefined
  /** The key for `kid` and `alg` when it is not held: fetches if the policy allows, or throws the answer. */
  resolve (kid: string, alg: string): Promise<CachedKey>
  /** Whether `key` is still the one a fresh set holds for its kid (a token cached with it may be answered from the cache). */
  current (key: CachedKey): boolean
  /**
   * Fetch the JWKS now, ignoring TTL and cooldown; a fetch already running is not reused. Resolves to
   * `undefined` when a key set was had, else to the error to answer with (never rejects); a failed
   * refresh is retried with the backoff by a timer until a fetch succeeds, which then ends the cooldown.
   * With keys given inline alone, there is nothing to fetch: `undefined` at once.
   */
  refresh (): Promise<KeysUnavailable | undefined>
  /**
   * The first fetch, at start: like a refresh ahead, it starts no unknown-kid cooldown. Beside keys given
   * inline, it is started and not waited for (they answer meanwhile); with them alone, there is none.
   */
  warm (): Promise<void>
  stats (): KeyStats
  close (): Promise<void>
}

/**
 * The key stats of several issuers as one: counts added up, the latest success and failure, the
 * earliest retry; `unavailable` only when no issuer can verify, `stale` while some issuer is stale
 * or unavailable, `refreshing` while some refreshes, else `fresh`.
 */
export function combineStats (list: readonly KeyStats[]): KeyStats {
  const sum = (field: 'fetches' | 'failures' | 'keys' | 'signaturesOffLoop' | 'signaturesOnLoop') =>
    list.reduce((total, stats) => total + stats[field], 0)
  const times = (field: 'lastSuccessAt' | 'lastFailureAt' | 'nextRetryAt') =>
    list.map((stats) => stats[field]).filter((time): time is number => time !== null)
  const latest = (field: 'lastSuccessAt' | 'lastFailureAt') => times(field).length === 0 ? null : Math.max(...times(field))
  const retries = times('nextRetryAt')
  const states = new Set(list.map((stats) => stats.state))
  const state: KeyState = states.size === 1
    ? list[0]!.state
    : states.has('stale') || states.has('unavailable') ? 'stale' : 'refreshing'
  return {
    fetches: sum('fetches'),
    failures: sum('failures'),
    keys: sum('keys'),
    lastSuccessAt: latest('lastSuccessAt'),
    lastFailureAt: latest('lastFailureAt'),
    state,
    nextRetryAt: retries.length === 0 ? null : Math.min(...retries),
    signaturesOffLoop: sum('signaturesOffLoop'),
    signaturesOnLoop: sum('signaturesOnLoop')
  }
}

/**
 * get-jwks, holding exactly the plugin's current key set. Each usable key is filed in get-jwks's
 * cache under `generateCacheKey(alg, kid, domain)` for every algorithm it may verify, the set's
 * previous entries deleted first (from its stale cache too: lru-cache's `dispose` copies an entry
 * there on every delete). A token's key is what `getJwk({ domain, alg, kid })` answers for the
 * token's own pair, asked once per set and pair, and only for a pair filed from the current set:
 * get-jwks answers from its cache, never by a fetch of its own (it is given a signal already aborted,
 * so that it could not fetch if it tried). Its answer is the JWK as filed; the plugin converted each
 * one to a KeyObject when it read the set, and any answer it did not file is no key.
 */
export class Keyring {
  readonly getJwks: ReturnType<typeof buildGetJwks>
  /** The current set: the domain it is filed under, and get-jwks's answers so far, by alg then kid. */
  #set = { domain: '', answered: new Map<string, Map<string, CachedKey>>() }
  /** What is filed now, by cache key: filed again if get-jwks let it expire. */
  readonly #filed = new Map<string, buildGetJwks.JWK>()
  /** Each filed JWK's key, converted when its set was read. */
  readonly #converted = new WeakMap<object, CachedKey>()

  /** `max`: entries a set may file (keys × algorithms); `ttlMs`: get-jwks's own TTL, a whole number of ms. */
  constructor (max: number, ttlMs: number) {
    // loaded with the first key set, not with the plugin: get-jwks loads jwk-to-pem at once (25-40 ms here),
    // which neither a require of the plugin nor a registration that never holds a key should pay
    const build: typeof buildGetJwks = require('get-jwks')
    this.getJwks = build({
      max,
      ttl: ttlMs,
      fetchOptions: { signal: AbortSignal.abort(new Error('get-jwks does not fetch here: the plugin fetches each key set itself')) }
    })
  }

  /** Files the usable keys of `entries` (one key set) under `source` (its URL, or the inline option's name), replacing the previous set. */
  seed (entries: readonly KeyEntry[], source: string): void {
    const { cache, staleCache, generateCacheKey } = this.getJwks
    for (const cacheKey of this.#filed.keys()) {
      cache.delete(cacheKey)
      staleCache.delete(cacheKey)
    }
    this.#filed.clear()
    // getJwk files under its domain with a trailing slash added when it has none: one here, so that both name the same entry
    const domain = `${source}/`
    for (const { jwk, key } of entries) {
      // a kid that is not well-formed Unicode is never looked up (verify.ts refuses it first), and the
      // cache key cannot hold it (encodeURIComponent throws on a lone surrogate): such a key is held, never filed
      if (key === undefined || !key.kid.isWellFormed()) continue
      for (const alg of key.checks.keys()) {
        const filed: buildGetJwks.JWK = Object.assign({}, jwk, { domain, alg, kid: key.kid })
        const cacheKey = generateCacheKey(alg, key.kid, domain)
        this.#converted.set(filed, key)
        this.#filed.set(cacheKey, filed)
        cache.set(cacheKey, filed)
      }
    }
    this.#set = { domain, answered: new Map() }
  }

  /** get-jwks's answer for `alg` and `kid` of the current set, if it was asked already. */
  answered (kid: string, alg: string): CachedKey | undefined {
    return this.#set.answered.get(alg)?.get(kid)
  }

  /** Asks get-jwks for `alg` and `kid`, which the current set must have filed (the resolver checks it). */
  async ask (kid: string, alg: string): Promise<CachedKey> {
    const set = this.#set
    const { cache, generateCacheKey, getJwk } = this.getJwks
    const cacheKey = generateCacheKey(alg, kid, set.domain)
    // past get-jwks's own TTL (a set given inline never ages): filed again, so that getJwk answers from its cache
    if (cache.get(cacheKey) === undefined) cache.set(cacheKey, this.#filed.get(cacheKey)!)
    const key = this.#converted.get(await getJwk({ domain: set.domain, alg, kid }))
    if (key === undefined) throw new UnknownKeyError()
    let byKid = set.answered.get(alg)
    if (byKid === undefined) set.answered.set(alg, byKid = new Map())
    byKid.set(kid, key)
    return key
  }
}

/** The first wait after a failed fetch, in ms (or cooldown / 16 if shorter); it doubles with each failure in a row, up to `cooldown`. */
const BACKOFF_START = 1000
const JITTER = 0.2

/** Why a fetch runs: a kid not held (may start the unknown-kid cooldown), refresh() (ends it), a refresh ahead or the warm start (neither). */
type FetchMode = 'lookup' | 'forced' | 'ahead' | 'warm'
/** What the `fetching JWKS` log line says of each mode (`reason`). */
const REASONS: Record<FetchMode, string> = { lookup: 'lookup', forced: 'refresh', ahead: 'refresh ahead', warm: 'warm start' }

/**
 * The key resolver for one issuer. `observe` (the `check` CLI) is told each complete answer
 * of the JWKS server, status and body as fetched.
 */
export function createKeyResolver (config: IssuerConfig, log: FastifyBaseLogger, observe?: (answer: Answer) => void): KeyResolver {
  const { cacheTtlMs, cooldownMs, staleIfErrorMs, timeoutMs } = config
  const clock = () => performance.now()
  const stats: Omit<KeyStats, 'state' | 'nextRetryAt'> = { fetches: 0, failures: 0, keys: 0, lastSuccessAt: null, lastFailureAt: null, signaturesOffLoop: 0, signaturesOnLoop: 0 }
  const fetcher = createKeyFetcher(config, log, stats, observe)
  // made at the first fetch (or the set given inline): every key of a set, under each algorithm it verifies;
  // get-jwks keeps an entry for at least as long as a fetched set may verify
  let keyring: Keyring | undefined

  let keys = new Map<string, CachedKey>()
  let setAt = Number.NEGATIVE_INFINITY // monotonic time of the last good fetch
  let retryAt = 0 // after a failed fetch: no retry before this (monotonic)
  let failuresInRow = 0 // for the backoff: 1 s, 2 s, 4 s ... up to cooldown
  let unknownUntil = 0 // the unknown-kid cooldown: ended by its own clock only (or by refresh())
  let lastFetchFailed = false
  let inflight: Promise<string | undefined> | undefined
  // a refresh() whose fetch has not succeeded yet: retried by `retryTimer` at `retryAt`, and the first good
  // fetch (the retry, or any other) does what the refresh was for, ending the unknown-kid cooldown
  let refreshPending = false
  let retryTimer: NodeJS.Timeout | undefined
  let closed = false
  /** Whether there is anywhere to fetch from: not with a key set given inline alone. */
  const fetching = config.jwksUrl !== undefined || config.discovery !== undefined

  /** Counts and logs a failed fetch (once per fetch), starts the backoff; returns the cause, for refresh(). */
  function failed (reason: string, extra: Record<string, unknown> = {}): string {
    lastFetchFailed = true
    failuresInRow++
    // backoff: 1 s doubling up to cooldown, with up to 20% jitter so that instances do not retry in step
    const wait = Math.min(cooldownMs, Math.min(BACKOFF_START, cooldownMs / 16) * 2 ** Math.min(failuresInRow - 1, 20))
    retryAt = clock() + wait * (1 + JITTER * Math.random())
    stats.failures++
    stats.lastFailureAt = Date.now()
    // the reason only: never what the server sent
    log.warn({ jwksUrl: fetcher.url()?.href, ...extra, reason }, 'supabase-jwks: JWKS fetch failed')
    if (refreshPending) retryRefresh(retryAt - clock())
    return typeof extra.code === 'string' ? `${reason} (${extra.code})` : reason
  }

  /**
   * A failed refresh() is retried by an unref'd timer at `retryAt`, not by the next request: the revocation
   * it was called for then applies as soon as the JWKS answers again, on a busy or a quiet server alike (a
   * request-driven retry would let requests verify with the held set until one comes after the wait, and
   * that one too). Again after each failure (with the backoff), until a good fetch or close().
   */
  function retryRefresh (wait: number): void {
    clearTimeout(retryTimer)
    if (closed) return
    retryTimer = setTimeout(() => { fetchOnce('', 'forced') }, wait).unref() // never rejects
  }

  /** After a good fetch: says at warn when the set holds no key that `algorithms` lets verify anything. */
  function warnIfUnusable (set: Map<string, CachedKey>, url: URL): void {
    const why = unusable(set.values(), config.algorithms)
    if (why === undefined) return
    log.warn({ jwksUrl: url.href, algorithms: config.algorithms, offered: why.offered },
      `supabase-jwks: the JWKS holds ${why.reason}${why.offered.length === 0 ? ': every token will be refused' : ''}`)
  }

  /** The keyring, made (and get-jwks loaded) the first time it is needed. */
  function filing (): Keyring {
    keyring ??= new Keyring(MAX_KEYS * config.algorithms.length, Math.ceil(cacheTtlMs + staleIfErrorMs + timeoutMs))
    return keyring
  }

  /** Holds the usable keys of `entries` as the key set, trusted for `cacheTtl` from now, and files them in get-jwks: a fetch's, or the one given inline (`source`: its URL, or the option). */
  function hold (entries: readonly KeyEntry[], source: string): Map<string, CachedKey> {
    keys = usableKeys(entries, log)
    filing().seed(entries, source)
    setAt = clock()
    stats.keys = keys.size
    return keys
  }

  /**
   * One fetch for `kid` (lib/key-fetch.ts: the discovery document when it is due, then the JWKS). The same
   * body always gives the same key set, whatever kid it was fetched for. A refresh (or, after it failed, the
   * first good fetch) ends the unknown-kid cooldown; a lookup that does not find its kid starts one.
   * Resolves to why the fetch failed (counted once, however many of its steps failed), or `undefined`.
   */
  async function fetchSet (kid: string, mode: FetchMode): Promise<string | undefined> {
    stats.fetches++
    // the kid only for a lookup: a refresh, a refresh ahead or the warm start is for no kid
    const pending = fetcher.fetch(mode === 'forced' || lastFetchFailed, { reason: REASONS[mode], ...(mode === 'lookup' ? { kid } : {}) })
    // the request is on its way: a cold start loads get-jwks while it waits for the answer, not after
    filing()
    const fetched = await pending
    if (fetched.failure !== undefined) return failed(fetched.failure, fetched.where)
    const set = hold(fetched.entries, fetched.url.href)
    lastFetchFailed = false
    failuresInRow = 0
    if (refreshPending) {
      // a refresh(), or the first good fetch since it failed (its retry or any other)
      refreshPending = false
      clearTimeout(retryTimer)
      unknownUntil = 0
    } else if (mode === 'lookup' && !set.has(kid)) {
      unknownUntil = Math.max(unknownUntil, setAt + cooldownMs)
    }
    stats.lastSuccessAt = Date.now()
    warnIfUnusable(set, fetched.url)
    return undefined
  }

  /** One fetch at a time: a fetch already running is joined. Resolves to why it failed, or `undefined`. */
  function fetchOnce (kid: string, mode: FetchMode = 'lookup'): Promise<string | undefined> {
    inflight ??= fetchSet(kid, mode).catch((err: unknown) =>
      // a guard: nothing a JWKS sends is known to get here, and a fetch must never reject
      failed(`unexpected error: ${String((err as Error)?.message)}`)
    ).finally(() => { inflight = undefined })
    return inflight
  }

  /** Whether the held set may still verify during an outage: within `cacheTtl + staleIfError` after the last good fetch. */
  function inStaleWindow (now: number): boolean {
    return now < setAt + cacheTtlMs + staleIfErrorMs
  }

  /** Key `kid` if held and still within the stale window. */
  function staleKey (kid: string, now: number): CachedKey | undefined {
    return inStaleWindow(now) ? keys.get(kid) : undefined
  }

  /** Seconds until the next fetch is allowed, for `Retry-After` (at least 1). */
  function retryAfter (): number {
    return Math.max(1, Math.ceil((retryAt - clock()) / 1000))
  }

  /** After a fetch: the key, a stale key while the JWKS fails, or the reason there is none. */
  function settle (kid: string): CachedKey {
    if (!lastFetchFailed) {
      const entry = keys.get(kid)
      if (entry === undefined) throw new UnknownKeyError()
      return entry
    }
    const stale = staleKey(kid, clock())
    // Retry-After: this issuer's own wait (with several issuers, another one's backoff is not this one's)
    if (stale === undefined) throw Object.assign(new KeysUnavailableError(), { retryAfter: retryAfter() })
    return stale
  }

  /**
   * The set's key for `kid`, if the set may still be trusted without a fetch. Refresh ahead: past
   * `cacheTtl`, the held set keeps verifying for up to `timeout` more while one background fetch
   * replaces it, so no request waits on a routine refresh (and a removed key verifies for at most
   * `cacheTtl + timeout`).
   */
  function heldKey (kid: string): CachedKey | undefined {
    const now = clock()
    if (now < setAt + cacheTtlMs) return keys.get(kid)
    if (lastFetchFailed || now >= setAt + cacheTtlMs + timeoutMs) return undefined
    const key = keys.get(kid)
    // only a kid the set has refreshes it ahead: an unknown kid goes to resolve(), under the unknown-kid cooldown
    if (key !== undefined && inflight === undefined) fetchOnce(kid, 'ahead') // never rejects
    return key
  }

  /**
   * The key get-jwks answers for `alg` and `key`'s kid (a key is held only once a set was, so the keyring is
   * there); a key that does not verify `alg` (nothing filed for it) as it is, for the caller to refuse.
   */
  function answer (key: CachedKey, alg: string): CachedKey | Promise<CachedKey> {
    return key.checks.has(alg) ? keyring!.answered(key.kid, alg) ?? keyring!.ask(key.kid, alg) : key
  }

  function held (kid: string, alg: string): CachedKey | undefined {
    const key = heldKey(kid)
    if (key === undefined || !key.checks.has(alg)) return key
    return keyring!.answered(kid, alg)
  }

  function state (now: number): KeyState {
    if (lastFetchFailed) return keys.size > 0 && inStaleWindow(now) ? 'stale' : 'unavailable'
    if (setAt === Number.NEGATIVE_INFINITY) return 'unavailable'
    if (inflight !== undefined) return 'refreshing'
    return now < setAt + cacheTtlMs ? 'fresh' : 'stale'
  }

  if (config.jwks !== undefined) hold(readInlineKeySet(config.jwks, config.algorithms, stats), config.jwks.option)
  if (!fetching) {
    // the inline set alone is all there will ever be: it never ages, and a kid it lacks is unknown at once, for ever
    setAt = Number.POSITIVE_INFINITY
    unknownUntil = Number.POSITIVE_INFINITY
  }

  /** The set's key for `kid`, once the policy allows: a fetch if due, a stale key in an outage, or the answer thrown. */
  async function resolveKid (kid: string): Promise<CachedKey> {
    const now = clock()
    if (lastFetchFailed) {
      // an outage: retry in the background once the wait is over; held keys serve every request meanwhile
      if (inflight === undefined && now >= retryAt) fetchOnce(kid) // never rejects
      const stale = staleKey(kid, now)
      if (stale !== undefined) return stale
    } else if (inflight === undefined) {
      // within the unknown-kid cooldown, a kid the held set lacks is refused at once, whether or not the set is
      // past cacheTtl: with a cacheTtl shorter than cooldown, each stale set would otherwise let one more unknown
      // kid fetch. A kid the stale set has still fetches, and so refreshes the set
      if (now < unknownUntil && !keys.has(kid)) throw new UnknownKeyError()
      fetchOnce(kid)
    }
    if (inflight !== undefined) await inflight
    return settle(kid)
  }

  async function resolve (kid: string, alg: string): Promise<CachedKey> {
    return answer(heldKey(kid) ?? await resolveKid(kid), alg)
  }

  return {
    held,
    resolve,
    current: (key) => heldKey(key.kid) === key,
    async refresh () {
      // keys given inline alone: nothing to fetch, and the held set is as current as it will ever be
      if (!fetching) return undefined
      if (inflight !== undefined) await inflight
      refreshPending = true
      const cause = await fetchOnce('', 'forced')
      if (cause === undefined) return undefined
      // the cause is the plugin's own words (a status, a network code, a timeout), never the server's body
      return Object.assign(new KeysUnavailableError({ cause: new Error(cause) }), { retryAfter: retryAfter() }) as KeysUnavailable
    },
    async warm () {
      if (!fetching) return
      const fetched = fetchOnce('', 'warm') // never rejects
      // keys given inline already answer: start-up does not wait on the network for their replacement
      if (config.jwks === undefined) await fetched
    },
    stats () {
      const now = clock()
      return {
        ...stats,
        state: state(now),
        nextRetryAt: lastFetchFailed ? Date.now() + Math.max(0, retryAt - now) : null
      }
    },
    async close () {
      closed = true
      clearTimeout(retryTimer)
      fetcher.close()
    }
  }
}

/**
 * One key resolver per issuer of a registration; with several issuers, each logs with its issuer. A
 * JWKS (or discovery document) fetched over plain http is said once, at warn.
 */
export function createResolvers (config: Config, log: FastifyBaseLogger): KeyResolver[] {
  return config.issuers.map((issuer) => {
    const issuerLog = config.routed ? log.child({ issuer: issuer.issuer![0] }) : log
    if (issuer.insecureJwksUrl) {
      issuerLog.warn({ jwksUrl: issuer.jwksUrl?.href, discoveryUrl: issuer.discovery?.urls[0]!.href }, 'supabase-jwks: the JWKS is fetched over plain http')
    }
    return createKeyResolver(issuer, issuerLog)
  })
}
