import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import buildGetJwks from 'get-jwks'
import { Agent, type Dispatcher } from 'undici'
import type { FastifyBaseLogger } from 'fastify'
import { KeysUnavailableError, OptionError, UnknownKeyError } from './errors'
import { isLoopback, type Algorithm, type Config, type DiscoveryConfig, type InlineKeySet, type IssuerConfig } from './options'
import { signatureCheck, type SignatureCheck, type SignatureCounts } from './signature'

/*
 * The key resolver. get-jwks fetches the JWKS and resolves the token's `kid` (and `alg`);
 * this module decides when it may fetch, and keeps every usable key of the set converted once.
 *
 * Why a wrapper (get-jwks 11, read in its src/get-jwks.js): it has no cooldown for unknown kids,
 * passes a `timeout` that global fetch ignores, rebuilds a PEM on every call, fetches the whole set
 * again for each new kid, and replays stale or failed lookups from its own caches. So its caches
 * are emptied before each call and it is only ever asked to fetch; the policy lives here:
 *   - the key set from the last good fetch is trusted for `cacheTtl`; a kid it lacks is dropped
 *     at once (revocation), a kid it has needs no further fetch (a rotation's standby key);
 *   - one fetch at a time: concurrent lookups wait for it instead of fetching again;
 *   - a fetch that does not find the kid it was made for starts a `cooldown` during which other
 *     unknown kids are answered 401 at once, the set past `cacheTtl` or not; only its own clock (or
 *     `refresh()`) ends it;
 *   - a failed fetch is retried at most once per `cooldown`, in the background: held keys keep
 *     verifying for `staleIfError` past their TTL without waiting for it, and unknown kids are
 *     answered 503. A failed `refresh()` says so, and is retried by a timer with the same backoff;
 *   - one fetch is one failure at most, however many of its steps (discovery, JWKS) failed;
 *   - each fetch is bounded: `timeout` from start to end (the request is aborted, not just
 *     abandoned), `maxResponseSize`, no compression (so the cap holds), no redirects, and only
 *     a 200 whose body is a JSON key set counts;
 *   - with `discovery`, the JWKS URL is read first from the issuer's discovery document, through
 *     the same agent and within the same `timeout`: again at the first fetch after `cacheTtl` and
 *     after a failure. The document must name the configured issuer and an https `jwks_uri`.
 * A key set given inline (option `jwks`) is read and held as a fetched one is, at registration:
 *   - alone, it is the only set there will ever be: it never ages, nothing is fetched, and a kid it
 *     lacks is unknown at once;
 *   - beside a URL, it is held as if fetched at registration (trusted for `cacheTtl`, then refreshed
 *     ahead), and the first good fetch replaces it; the warm start fetches without being waited for.
 * One resolver per issuer: with several issuers, each has its own key set, cooldown and backoff.
 * Durations are measured on the monotonic clock: a wall-clock step cannot extend a key's life.
 */

/**
 * A key from the JWKS, fit for verifying: converted once to a KeyObject, with one signature check
 * for each algorithm that both the key and the `algorithms` option allow, built when the set is fetched.
 */
export interface CachedKey {
  kid: string
  /** The algorithms the key may verify (from its `alg`, or its type and curve). */
  algorithms: readonly string[]
  /** A signature check per algorithm the key and the allowlist both accept. */
  checks: ReadonlyMap<string, SignatureCheck>
  /** The key itself (absent only from the placeholder legacy tokens are cached under). */
  publicKey?: KeyObject
}

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
  /** Key `kid` if the key set is fresh and has it: the fast path, no promise. */
  held (kid: string): CachedKey | undefined
  /** Key `kid` when it is not held: fetches if the policy allows, or throws the answer. */
  resolve (kid: string): Promise<CachedKey>
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

const MIN_RSA_BITS = 2048
export const MAX_KEYS = 100
const EC_CURVES: Record<string, Algorithm> = { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' }
const RSA_ALGORITHMS: readonly Algorithm[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']

/** JWK members that only private or symmetric keys have (RFC 7518 §6.2.2, §6.3.2, §6.4.1): any one of them refuses the key. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']

class UnusableKeyError extends Error {}

/** The first member of `jwk` that only a private or symmetric key has, or `undefined`. */
function privateMember (jwk: object): string | undefined {
  return PRIVATE_MEMBERS.find((member) => member in jwk)
}

/** Checks that a JWK is a public signing key (RFC 7517, RFC 7518) and builds its checks for the `allowed` algorithms. */
/** Counts for keys built outside a resolver (tests). */
const UNCOUNTED: SignatureCounts = { signaturesOffLoop: 0, signaturesOnLoop: 0 }

export function toCachedKey (jwk: Record<string, unknown>, allowed: readonly string[], counts = UNCOUNTED): CachedKey {
  if (typeof jwk.kid !== 'string' || jwk.kid === '') throw new UnusableKeyError('no kid')
  if (jwk.use !== undefined && jwk.use !== 'sig') throw new UnusableKeyError('use is not "sig"')
  if (jwk.key_ops !== undefined && !(Array.isArray(jwk.key_ops) && jwk.key_ops.includes('verify'))) {
    throw new UnusableKeyError('key_ops does not allow "verify"')
  }
  const secret = privateMember(jwk)
  if (secret !== undefined) throw new UnusableKeyError(`a private key is published (${secret})`)
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
    key = createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' })
  } catch {
    throw new UnusableKeyError('not a valid public key')
  }
  if (jwk.kty === 'RSA' && key.asymmetricKeyDetails!.modulusLength! < MIN_RSA_BITS) {
    throw new UnusableKeyError(`RSA modulus under ${MIN_RSA_BITS} bits`)
  }
  const checks = new Map<string, SignatureCheck>()
  for (const alg of algorithms) if (allowed.includes(alg)) checks.set(alg, signatureCheck(alg, key, counts))
  return { kid: jwk.kid, algorithms, checks, publicKey: key }
}

/** One entry of a JWKS as the plugin reads it: the key it verifies with, or why it is skipped. */
export interface KeyEntry {
  /** The entry as the JWKS sent it. */
  jwk: unknown
  key?: CachedKey
  /** Why the plugin does not use it. */
  skipped?: string
}

/**
 * Every entry of a JWKS body as the plugin reads it, in order, or `undefined` when the body is not a
 * JSON object with a `keys` list. Only the first `MAX_KEYS` entries are converted; the first of a duplicate kid wins.
 */
export function readKeySet (body: Buffer, allowed: readonly string[], counts = UNCOUNTED): KeyEntry[] | undefined {
  let document: unknown
  try {
    document = JSON.parse(body.toString('utf8'))
  } catch {
    return undefined
  }
  const list = (document as { keys?: unknown } | null)?.keys
  return Array.isArray(list) ? keyEntries(list, allowed, counts) : undefined
}

/** The entries of a key set's `keys` list, fetched or given inline: see `readKeySet`. */
function keyEntries (list: readonly unknown[], allowed: readonly string[], counts: SignatureCounts): KeyEntry[] {
  const kids = new Set<string>()
  return list.map((jwk, index): KeyEntry => {
    if (index >= MAX_KEYS) return { jwk, skipped: `past the first ${MAX_KEYS} keys of the set` }
    try {
      if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) throw new UnusableKeyError('not a JSON object')
      const key = toCachedKey(jwk as Record<string, unknown>, allowed, counts)
      if (kids.has(key.kid)) return { jwk, skipped: 'an earlier key of the set has the same kid' }
      kids.add(key.kid)
      return { jwk, key }
    } catch (err) {
      return { jwk, skipped: (err as Error).message }
    }
  })
}

/** The usable keys of a JWKS body, or `undefined` when it is not a JSON key set with at least one key. */
export function parseKeySet (body: Buffer, allowed: readonly string[], log: FastifyBaseLogger, counts = UNCOUNTED): Map<string, CachedKey> | undefined {
  const entries = readKeySet(body, allowed, counts)
  return entries === undefined || entries.length === 0 ? undefined : usableKeys(entries, log)
}

function usableKeys (entries: readonly KeyEntry[], log: FastifyBaseLogger): Map<string, CachedKey> {
  const keys = new Map<string, CachedKey>()
  // entries past MAX_KEYS are not even looked at: not logged either
  for (const { jwk, key, skipped } of entries.slice(0, MAX_KEYS)) {
    if (key !== undefined) {
      keys.set(key.kid, key)
    } else {
      // safe values only: whatever the JWKS sent may not even turn into a string
      const kid = (jwk as { kid?: unknown } | null)?.kid
      log.debug({ kid: typeof kid === 'string' ? kid.slice(0, 64) : typeof kid, reason: skipped }, 'supabase-jwks: JWK skipped')
    }
  }
  return keys
}

/**
 * Why no token can verify with `keys` (none usable, or none for `algorithms`), with the algorithms they
 * offer, or `undefined` when some key can: said of a fetched set at warn, and refusing one given inline.
 */
function unusable (keys: Iterable<CachedKey>, algorithms: readonly string[]): { reason: string, offered: string[] } | undefined {
  const list = [...keys]
  if (list.some((key) => key.checks.size > 0)) return undefined
  const offered = [...new Set(list.flatMap((key) => key.algorithms))]
  return {
    offered,
    reason: offered.length === 0
      ? 'no usable signing key'
      : `no key for the algorithms option (${algorithms.join(', ')}); its keys sign with ${offered.join(', ')}: add those to algorithms`
  }
}

/** How many refused entries a refusal of an inline key set names. */
const MAX_NAMED_ENTRIES = 3

/**
 * The entries of the key set given inline (option `jwks`), read as a fetched set's are. Refused with an
 * OptionError, which names entries by their index and never shows a key, when an entry is a private or
 * symmetric key (a fetched set's is skipped; here it is a secret in configuration), when there is no
 * key, or when no key can verify a token with `algorithms`.
 */
export function readInlineKeySet ({ option, keys: list }: InlineKeySet, algorithms: readonly string[], counts = UNCOUNTED): KeyEntry[] {
  for (const [index, jwk] of list.entries()) {
    const member = typeof jwk === 'object' && jwk !== null ? privateMember(jwk) : undefined
    if (member === 'k') {
      throw new OptionError(`${option}.keys[${index}] is a symmetric key (it has "k"): tokens are verified with public keys only, never with a shared secret`)
    }
    if (member !== undefined) {
      throw new OptionError(`${option}.keys[${index}] is a private key (it has "${member}"): give the public key set, as the JWKS URL serves it; ` +
        'a private key in the configuration lets whoever reads it sign tokens')
    }
  }
  if (list.length === 0) throw new OptionError(`${option} has no keys: give the set the JWKS URL serves (a project still on the legacy JWT secret serves none: rotate to asymmetric keys)`)
  const entries = keyEntries(list, algorithms, counts)
  const why = unusable(entries.flatMap(({ key }) => key === undefined ? [] : [key]), algorithms)
  if (why === undefined) return entries
  const skipped = entries.flatMap(({ skipped }, index) => skipped === undefined ? [] : [`keys[${index}]: ${skipped}`])
  if (skipped.length > MAX_NAMED_ENTRIES) skipped.splice(MAX_NAMED_ENTRIES, Infinity, `and ${skipped.length - MAX_NAMED_ENTRIES} more`)
  throw new OptionError(`${option} holds ${why.reason}, so every token would be refused${skipped.length === 0 ? '' : ` (${skipped.join('; ')})`}`)
}

/** Why a fetch of an empty key set fails: what a project still on the legacy JWT secret serves. */
export const EMPTY_SET = 'the JWKS has no keys: the project still signs with the legacy JWT secret (rotate to asymmetric keys)'

/** What the JWKS server answered to the last fetch: status and body (bounded by the agent's size cap). */
export interface Answer { status: number, body: Buffer }
const NO_ANSWER: Answer = { status: 0, body: Buffer.alloc(0) }
/** Network codes of a connection closed under a request: worth one immediate new try. */
export const TRANSIENT: ReadonlySet<unknown> = new Set<unknown>(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET'])
/** The first wait after a failed fetch, in ms (or cooldown / 16 if shorter); it doubles with each failure in a row, up to `cooldown`. */
const BACKOFF_START = 1000
const JITTER = 0.2

/**
 * An undici interceptor that hands each response's status and body to `onAnswer`, unchanged for
 * get-jwks: this is how the wrapper sees the whole key set of the fetch get-jwks makes. It also
 * aborts the request after `timeoutMs` (undici's body timeout only bounds the gap between chunks)
 * and refuses compressed bodies, which fetch would inflate past `maxResponseSize`.
 * (No `onRequestUpgrade`: a GET of a JWKS never upgrades.)
 */
function observeAnswers (timeoutMs: number, onAnswer: (answer: Answer) => void): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => function observedDispatch (options, handler) {
    const chunks: Buffer[] = []
    let status = 0
    let timer: NodeJS.Timeout | undefined
    return dispatch(options, {
      onRequestStart (controller, context) {
        timer = setTimeout(() => controller.abort(new Error(`JWKS fetch aborted after ${timeoutMs} ms`)), timeoutMs)
        timer.unref()
        return handler.onRequestStart?.(controller, context)
      },
      onResponseStart (controller, statusCode, headers, statusMessage) {
        status = statusCode
        const encoding = headers['content-encoding']
        if (encoding !== undefined && encoding !== 'identity') return controller.abort(new Error('compressed JWKS refused'))
        return handler.onResponseStart?.(controller, statusCode, headers, statusMessage)
      },
      onResponseData (controller, chunk) {
        chunks.push(chunk)
        return handler.onResponseData?.(controller, chunk)
      },
      onResponseEnd (controller, trailers) {
        clearTimeout(timer)
        onAnswer({ status, body: Buffer.concat(chunks) })
        return handler.onResponseEnd?.(controller, trailers)
      },
      onResponseError (controller, error) {
        clearTimeout(timer)
        return handler.onResponseError?.(controller, error)
      }
    })
  }
}

/** `promise`, or a rejection after `ms` (what is left of the fetch's `timeoutMs`, which the message names). */
function withTimeout<T> (promise: Promise<T>, ms: number, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`JWKS fetch timed out (timeout ${timeoutMs} ms)`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Why a fetch runs: a kid not held (may start the unknown-kid cooldown), refresh() (ends it), a refresh ahead or the warm start (neither). */
type FetchMode = 'lookup' | 'forced' | 'ahead' | 'warm'
/** What the `fetching JWKS` log line says of each mode (`reason`). */
const REASONS: Record<FetchMode, string> = { lookup: 'lookup', forced: 'refresh', ahead: 'refresh ahead', warm: 'warm start' }

/** Why the discovery document gave no JWKS URL, and where: logged, and counted only if the fetch fails as a whole. */
interface Refusal { reason: string, where: Record<string, unknown> }

/**
 * The key resolver for one issuer. `observe` (the `check` CLI) is told each complete answer
 * of the JWKS server, status and body as fetched.
 */
export function createKeyResolver (config: IssuerConfig, log: FastifyBaseLogger, observe?: (answer: Answer) => void): KeyResolver {
  const { cacheTtlMs, cooldownMs, staleIfErrorMs, timeoutMs } = config
  const clock = () => performance.now()
  const agent = new Agent({
    connect: { timeout: timeoutMs },
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    maxResponseSize: config.maxResponseSize,
    // one GET every few minutes: no idle connection kept for a server or load balancer to close under it
    pipelining: 0
  })
  /**
   * The fetch options of one request: every GET (the JWKS, a discovery document) goes through the
   * same bounded agent, with no redirects, and an interceptor of its own that aborts it at what is
   * left of the fetch's time and keeps its answer in this request's own slot (a request given up on
   * at the timeout can never answer for a later one).
   */
  function requestOptions (slot: { answer: Answer }, ms: number): RequestInit {
    const dispatcher = agent.compose(observeAnswers(ms, (observed) => {
      slot.answer = observed
      observe?.(observed)
    }))
    return { dispatcher, redirect: 'error', headers: { accept: 'application/json', 'accept-encoding': 'identity' } } as unknown as RequestInit
  }
  /** The JWKS URL: configured, or read from the discovery document (and then re-read once per `cacheTtl`). */
  let jwksUrl = config.jwksUrl
  let discoveredAt = Number.NEGATIVE_INFINITY
  let warnedInsecure: string | undefined

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
  const stats: Omit<KeyStats, 'state' | 'nextRetryAt'> = { fetches: 0, failures: 0, keys: 0, lastSuccessAt: null, lastFailureAt: null, signaturesOffLoop: 0, signaturesOnLoop: 0 }
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
    // the reason only: a GetJwksError also carries the response, which is not ours to log
    log.warn({ jwksUrl: jwksUrl?.href, ...extra, reason }, 'supabase-jwks: JWKS fetch failed')
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

  /** Why the discovery document gave no JWKS URL. */
  function refusal (reason: string, where: Record<string, unknown>): Refusal {
    return { reason, where }
  }

  /** After a good fetch: says at warn when the set holds no key that `algorithms` lets verify anything. */
  function warnIfUnusable (set: Map<string, CachedKey>, url: URL): void {
    const why = unusable(set.values(), config.algorithms)
    if (why === undefined) return
    log.warn({ jwksUrl: url.href, algorithms: config.algorithms, offered: why.offered },
      `supabase-jwks: the JWKS holds ${why.reason}${why.offered.length === 0 ? ': every token will be refused' : ''}`)
  }

  /** Holds the usable keys of `entries` as the key set, trusted for `cacheTtl` from now: a fetch's, or the one given inline. */
  function hold (entries: readonly KeyEntry[]): Map<string, CachedKey> {
    keys = usableKeys(entries, log)
    setAt = clock()
    stats.keys = keys.size
    return keys
  }

  /** One request (`run`, through the agent); what the server answered, as the interceptor saw it, and why not if nothing. */
  async function attempt (run: (options: RequestInit) => Promise<unknown>, ms: number): Promise<{ observed: Answer, code: unknown, error: unknown }> {
    const slot = { answer: NO_ANSWER }
    // get-jwks may throw before it returns a promise (it URI-encodes the kid): keep that inside the promise
    const pending = (async () => await run(requestOptions(slot, ms)))()
    pending.catch(() => {}) // settled after the timeout: nothing left to tell
    let error: unknown
    try {
      await withTimeout(pending, ms, timeoutMs)
    } catch (err) {
      error = err
    }
    // fetch puts the network code (ECONNRESET, ECONNREFUSED, UND_ERR_...) in `cause`
    return { observed: slot.answer, code: (error as { cause?: { code?: unknown } } | undefined)?.cause?.code, error }
  }

  /**
   * One bounded GET, with one more try after a reset connection: a kept-alive connection that the
   * server (or a load balancer) closed while idle. Both tries end by `deadline`.
   */
  async function get (run: (options: RequestInit) => Promise<unknown>, deadline: number): Promise<{ observed: Answer, code: unknown, error: unknown }> {
    const result = await attempt(run, Math.max(1, deadline - clock()))
    const left = deadline - clock()
    if (result.observed.status === 0 && TRANSIENT.has(result.code) && left >= 1) return attempt(run, left)
    return result
  }

  /** The `jwks_uri` of a discovery document, or why the document is not acceptable. */
  function jwksUriOf (body: Buffer, discovery: DiscoveryConfig, source: URL): URL | Refusal {
    const where = { discoveryUrl: source.href }
    let document: { issuer?: unknown, jwks_uri?: unknown } | null
    try {
      document = JSON.parse(body.toString('utf8')) as typeof document
    } catch {
      document = null
    }
    if (typeof document !== 'object' || document === null) return refusal('the discovery document is not a JSON object', where)
    if (document.issuer !== discovery.issuer) {
      // the configured issuer must be the document's, exactly (OpenID Connect Discovery 1.0 §4.3, RFC 8414 §3.3)
      const received = typeof document.issuer === 'string' ? document.issuer.slice(0, 200) : typeof document.issuer
      return refusal('the discovery document names another issuer: set issuer to exactly the one it names, or fix the URL',
        { ...where, issuer: discovery.issuer, documentIssuer: received })
    }
    let url: URL | undefined
    try {
      url = new URL(document.jwks_uri as string)
    } catch {}
    if (typeof document.jwks_uri !== 'string' || url === undefined || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
      return refusal('the discovery document has no jwks_uri that is an http(s) URL', where)
    }
    if (url.username || url.password || url.hash) return refusal('the discovery document\'s jwks_uri carries credentials or a fragment', where)
    if (url.protocol === 'http:' && !isLoopback(url.hostname) && !config.allowInsecure) {
      return refusal('the discovery document\'s jwks_uri is plain http on a non-loopback host: keys fetched so could be swapped on the way',
        { ...where, jwksUri: url.href })
    }
    if (url.protocol === 'http:' && !isLoopback(url.hostname) && url.href !== warnedInsecure) {
      // allowed by allowInsecureJwksUrl: said once per jwks_uri, as a configured plain http URL is at start
      warnedInsecure = url.href
      log.warn({ ...where, jwksUri: url.href }, 'supabase-jwks: the JWKS is fetched over plain http')
    }
    if (url.pathname === '/') return refusal('the discovery document\'s jwks_uri has no path: it must name the JWKS document', { ...where, jwksUri: url.href })
    return url
  }

  /** Reads the JWKS URL from the discovery document: the next URL only after a 404. */
  async function discover (discovery: DiscoveryConfig, deadline: number): Promise<URL | Refusal> {
    for (const source of discovery.urls) {
      const { observed, code, error } = await get((options) => fetch(source, options).then((response) => response.arrayBuffer()), deadline)
      if (observed.status === 404) continue
      if (observed.status === 0) return refusal(String((error as Error).message), { discoveryUrl: source.href, code })
      if (observed.status !== 200) return refusal(`the discovery document answered HTTP ${observed.status}`, { discoveryUrl: source.href, status: observed.status })
      return jwksUriOf(observed.body, discovery, source)
    }
    return refusal('no discovery document: every discovery URL answered HTTP 404', { discoveryUrls: discovery.urls.map((url) => url.href) })
  }

  /**
   * One fetch for `kid` (after the discovery document, when it is due). Its outcome is judged by what the server answered, seen by the
   * interceptor, never by get-jwks' own lookup (which throws on odd entries and depends on the
   * kid asked for): the same body always gives the same key set. A refresh (or, after it failed, the
   * first good fetch) ends the unknown-kid cooldown; a lookup that does not find its kid starts one.
   * Resolves to why the fetch failed (counted once, however many of its steps failed), or `undefined`.
   */
  async function fetchSet (kid: string, mode: FetchMode): Promise<string | undefined> {
    stats.fetches++
    const deadline = clock() + timeoutMs
    // the discovery document: read first, then again once per cacheTtl, after any failure, and at each refresh()
    if (config.discovery !== undefined && (jwksUrl === undefined || mode === 'forced' || lastFetchFailed || clock() >= discoveredAt + cacheTtlMs)) {
      const found = await discover(config.discovery, deadline)
      if (found instanceof URL) {
        jwksUrl = found
        discoveredAt = clock()
      } else if (jwksUrl === undefined || deadline - clock() < timeoutMs / 4) {
        // never read, or the document took (nearly) all of the time: the fetch has failed
        return failed(found.reason, found.where)
      } else {
        // a document that cannot be read now: the jwks_uri it named last is fetched, so that an outage of the
        // discovery endpoint alone is no outage of the keys. Logged here; the fetch counts as failed only if
        // that JWKS fails too (one fetch, one failure, one step of the backoff)
        log.warn({ jwksUrl: jwksUrl.href, ...found.where, reason: found.reason }, 'supabase-jwks: discovery document not read: fetching the jwks_uri it named last')
      }
    }
    const url = jwksUrl!
    // the kid only for a lookup: a refresh, a refresh ahead or the warm start is for no kid
    log.info({ jwksUrl: url.href, reason: REASONS[mode], ...(mode === 'lookup' ? { kid } : {}) }, 'supabase-jwks: fetching JWKS')
    const { observed, code, error } = await get((options) =>
      // a get-jwks of its own per request (its path fixed when built, its caches empty): its answer is judged here
      buildGetJwks({ jwksPath: url.pathname + url.search, ttl: cacheTtlMs, fetchOptions: options }).getJwk({ domain: url.origin, alg: undefined as unknown as string, kid }), deadline)
    if (observed.status === 0) {
      // no complete answer: refused, reset, timed out, too large, compressed, redirected
      return failed(String((error as Error).message), { code })
    }
    if (observed.status !== 200) return failed(`the JWKS answered HTTP ${observed.status}`, { status: observed.status })
    const entries = readKeySet(observed.body, config.algorithms, stats)
    if (entries === undefined || entries.length === 0) {
      return failed(entries === undefined ? 'the body is not a JSON key set' : EMPTY_SET, { status: 200 })
    }
    const set = hold(entries)
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
    warnIfUnusable(set, url)
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
   * Refresh ahead: past `cacheTtl`, the held set keeps verifying for up to `timeout` more while one
   * background fetch replaces it, so no request waits on a routine refresh (and a removed key
   * verifies for at most `cacheTtl + timeout`).
   */
  function held (kid: string): CachedKey | undefined {
    const now = clock()
    if (now < setAt + cacheTtlMs) return keys.get(kid)
    if (lastFetchFailed || now >= setAt + cacheTtlMs + timeoutMs) return undefined
    const key = keys.get(kid)
    // only a kid the set has refreshes it ahead: an unknown kid goes to resolve(), under the unknown-kid cooldown
    if (key !== undefined && inflight === undefined) fetchOnce(kid, 'ahead') // never rejects
    return key
  }

  function state (now: number): KeyState {
    if (lastFetchFailed) return keys.size > 0 && inStaleWindow(now) ? 'stale' : 'unavailable'
    if (setAt === Number.NEGATIVE_INFINITY) return 'unavailable'
    if (inflight !== undefined) return 'refreshing'
    return now < setAt + cacheTtlMs ? 'fresh' : 'stale'
  }

  if (config.jwks !== undefined) hold(readInlineKeySet(config.jwks, config.algorithms, stats))
  if (!fetching) {
    // the inline set alone is all there will ever be: it never ages, and a kid it lacks is unknown at once, for ever
    setAt = Number.POSITIVE_INFINITY
    unknownUntil = Number.POSITIVE_INFINITY
  }

  async function resolve (kid: string): Promise<CachedKey> {
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

  return {
    held,
    resolve,
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
      await agent.destroy()
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
