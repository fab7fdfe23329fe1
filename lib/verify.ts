import type { FastifyBaseLogger } from 'fastify'
import { MalformedTokenError, TokenExpiredError, TokenInvalidError, UnknownKeyError, algorithmNotAllowed } from './errors'
import type { CachedKey } from './key-set'
import type { KeyResolver } from './keys'
import type { SignatureCheck } from './signature'
import type { LegacyChecker } from './legacy'
import type { Config, IssuerConfig } from './options'
import { deepFreeze, type TokenCache } from './token-cache'

/*
 * The one verification path: a token in, its claims out (or a coded error thrown). `authenticate`
 * and `fastify.supabaseJwks.verify` both call it. In order:
 *   1. the token cache: a token verified before, by a key still held, is answered at once;
 *   2. structure: three base64url segments, a canonical signature, a JSON header (decoded once per
 *      distinct verified header) and payload;
 *   3. cheap header checks, before any key lookup: algorithm allowlist, kid, no extensions,
 *      a signature of the algorithm's length;
 *   4. the claims, which need no signature: exp, nbf, iss, aud, sub (an expired or foreign token
 *      costs no key lookup, no fetch and no signature check). With several issuers, the token's
 *      `iss` first picks the issuer configured for exactly it (an `iss` not configured is refused
 *      here), whose algorithms, claim rules and keys then apply: no key set is ever chosen by
 *      anything but that exact match;
 *   5. the held key's signature check, built once when the key set was fetched (a key not held is
 *      resolved first, which may fetch the JWKS), on the libuv thread pool while it has room
 *      (see signature.ts);
 *   6. the claims are frozen and offered to the token cache.
 * While `legacyTokens` is on, an HS256 token takes a branch after step 4: Supabase Auth in place
 * of step 5 (so an expired or foreign token costs no call), then step 6, its claims cached at once,
 * until `exp` and while the window is open.
 */

/** Claims of a verified token, frozen: one object may serve many requests. */
export type Claims = Readonly<Record<string, unknown>>

/** Verifies a token: at once from the token cache, else once the key is resolved and the pool has checked the signature. */
export type TokenVerifier = (token: string) => Claims | Promise<Claims>

/**
 * A compact JWS: three base64url segments. The signature may be empty here so that an `alg: none`
 * token gets the clearer ALGORITHM_NOT_ALLOWED; the length check refuses an empty signature for
 * every allowed algorithm before any key lookup.
 */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const MAX_KID_LENGTH = 256
/** Base64url length of a signature for each algorithm (RSA: at least 2048 bits, the minimum key size). */
const SIGNATURE_LENGTH: Record<string, [min: number, max: number]> = {
  ES256: [86, 86],
  ES384: [128, 128],
  ES512: [176, 176],
  EdDSA: [86, 152],
  RS: [342, 1366],
  PS: [342, 1366],
  HS: [43, 43] // HS256 only (legacy tokens)
}

/** How many distinct verified headers are remembered decoded (an issuer has one per key and algorithm). */
const MAX_KNOWN_HEADERS = 16

/** Checks the token is a compact JWS with a canonical signature; nothing is decoded. */
export function checkStructure (token: string): void {
  if (!COMPACT_JWS.test(token)) {
    throw new MalformedTokenError(token.startsWith('sb_')
      ? 'an sb_publishable_/sb_secret_ API key is not a user access token'
      : 'not three base64url segments')
  }
  if (!canonicalTail(token)) throw new MalformedTokenError('the signature is not canonical base64url')
}

/**
 * Whether the signature segment is canonical base64url (RFC 4648 §3.5): its length is not 1 mod 4
 * and the unused low bits of its last character are zero. Otherwise several spellings would decode
 * to the same signature bytes, and a changed token could still verify.
 */
function canonicalTail (token: string): boolean {
  const start = token.lastIndexOf('.') + 1
  const length = token.length - start
  const rest = length % 4
  if (rest === 0) return true
  if (rest === 1) return false
  const bits = BASE64URL.indexOf(token.charAt(token.length - 1))
  return bits % (rest === 2 ? 16 : 4) === 0
}

/** A base64url segment that must be a JSON object (RFC 7515 §5.2, RFC 7519 §7.2). */
export function jsonObject (segment: string, name: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'))
  } catch {
    throw new TokenInvalidError(`the ${name} is not base64url-encoded JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TokenInvalidError(`the ${name} is not a JSON object`)
  return value as Record<string, unknown>
}

export function plausibleSignature (alg: string, length: number): boolean {
  const [min, max] = SIGNATURE_LENGTH[alg] ?? SIGNATURE_LENGTH[alg.slice(0, 2)]!
  return length >= min && length <= max
}

/** Most configured issuers an answer names, and the most characters of each: the message stays short. */
const MAX_NAMED_ISSUERS = 3
const MAX_NAMED_LENGTH = 120

/**
 * The configured issuers, for the answer to a token whose `iss` is not one of them (the usual
 * misconfiguration: `localhost` against `127.0.0.1`, a path): at most a few, each cut short. Only
 * configured values: never anything of the token's own.
 */
export function expectedIssuers (issuers: readonly string[]): string {
  const named = issuers.slice(0, MAX_NAMED_ISSUERS).map((issuer) =>
    JSON.stringify(issuer.length > MAX_NAMED_LENGTH ? `${issuer.slice(0, MAX_NAMED_LENGTH)}...` : issuer))
  const more = issuers.length - named.length
  if (more > 0) return `${named.join(', ')} or ${more} more`
  return named.length > 1 ? `${named.slice(0, -1).join(', ')} or ${named.at(-1)}` : named[0]!
}

/** A claim that must be one of `allowed`: a string, or for `aud` also a list of strings holding one. */
function checkAllowed (claim: string, value: unknown, allowed: ReadonlySet<string>, list: boolean, expected = ''): void {
  const values: unknown[] = list && Array.isArray(value) ? value : [value]
  if (!values.every((item) => typeof item === 'string')) {
    throw new TokenInvalidError(`the ${claim} claim must be a string${list ? ' or an array of strings' : ''}`)
  }
  if (!values.some((item) => allowed.has(item as string))) throw new TokenInvalidError(`the ${claim} claim value is not allowed${expected}`)
}

/** One issuer's part of the path: its claim rules and its keys. */
interface Route {
  algorithms: ReadonlySet<string>
  keys: KeyResolver
  checkClaims (claims: Record<string, unknown>): void
}

/** The claim checks of one issuer (RFC 7519 §4.1, RFC 8725 §3.8-3.9). */
function claimChecks (config: IssuerConfig, log: FastifyBaseLogger): Route['checkClaims'] {
  const issuers = config.issuer && new Set(config.issuer)
  const audiences = config.audience && new Set(config.audience)
  const required = ['exp', 'sub', ...(issuers ? ['iss'] : []), ...(audiences ? ['aud'] : [])]
  /** Said in the answer to an `iss` mismatch: the configured values only. */
  const expected = config.issuer ? ` (expected ${expectedIssuers(config.issuer)})` : ''
  const tolerance = config.clockToleranceMs
  return function checkClaims (claims) {
    for (const claim of required) if (!(claim in claims)) throw new TokenInvalidError(`the ${claim} claim is required`)
    const now = Date.now()
    if ('nbf' in claims) {
      if (typeof claims.nbf !== 'number') throw new TokenInvalidError('the nbf claim must be a number')
      if (now < claims.nbf * 1000 - tolerance) throw new TokenInvalidError('the token is not valid yet (nbf)')
    }
    if (typeof claims.exp !== 'number') throw new TokenInvalidError('the exp claim must be a number')
    if (!Number.isFinite(claims.exp)) throw new TokenInvalidError('exp is not a finite number')
    if (now > claims.exp * 1000 + tolerance) throw new TokenExpiredError()
    if (audiences) checkAllowed('aud', claims.aud, audiences, true)
    if (issuers && !(typeof claims.iss === 'string' && issuers.has(claims.iss))) {
      // an issuer mismatch is the usual misconfiguration (localhost vs 127.0.0.1, a path): the answer names
      // the expected issuer; what the token claimed goes only to the debug log, never back to the client
      const received = typeof claims.iss === 'string' ? claims.iss.slice(0, 200) : typeof claims.iss
      log.debug({ expected: config.issuer, received }, 'supabase-jwks: token iss is not an accepted issuer')
      checkAllowed('iss', claims.iss, issuers, false, expected)
    }
    if (typeof claims.sub !== 'string' || claims.sub === '') throw new TokenInvalidError('sub is not a non-empty string')
  }
}

/** A token decoded and checked up to its signature (steps 2-4): what its signature check needs. */
interface Checked {
  head: string
  header: Readonly<Record<string, unknown>>
  payload: Record<string, unknown>
  alg: string
  kid: string
  route: Route
}

/**
 * Steps 2-4 of one registration, shared by the verifier and the key finder: `keys` are the resolvers
 * of `config.issuers`, in order. `check` throws the answer, or gives the token's parts; a legacy
 * token (only when `legacy` says its window is open) stops after step 4 with `kid` empty.
 */
function createChecks (config: Config, keys: readonly KeyResolver[], log: FastifyBaseLogger, legacy?: LegacyChecker) {
  const routes: Route[] = config.issuers.map((issuer, index) => ({
    algorithms: new Set(issuer.algorithms),
    keys: keys[index]!,
    checkClaims: claimChecks(issuer, log)
  }))
  /** With several issuers: each by its exact `iss`. */
  const byIssuer = config.routed ? new Map(config.issuers.map((issuer, index) => [issuer.issuer![0]!, routes[index]!])) : undefined
  /** Said in the answer to an `iss` no issuer is configured for: the configured values only. */
  const expected = byIssuer === undefined ? '' : ` (expected ${expectedIssuers([...byIssuer.keys()])})`
  /** Step 3 asks for an algorithm some issuer allows; the issuer's own list is asked once the token is routed. */
  const algorithms = new Set(routes.flatMap((route) => [...route.algorithms]))

  /** The issuer a token goes to: the only one, or the one configured for exactly its `iss` (else a 401, before any key lookup). */
  function routeOf (payload: Readonly<Record<string, unknown>>): Route {
    if (byIssuer === undefined) return routes[0]!
    const iss = payload.iss
    const route = typeof iss === 'string' ? byIssuer.get(iss) : undefined
    if (route !== undefined) return route
    if (!('iss' in payload)) throw new TokenInvalidError('the iss claim is required')
    if (typeof iss !== 'string') throw new TokenInvalidError('the iss claim must be a string')
    log.debug({ expected: [...byIssuer.keys()], received: iss.slice(0, 200) }, 'supabase-jwks: token iss is not a configured issuer')
    throw new TokenInvalidError(`the iss claim value is not allowed${expected}`)
  }

  /*
   * The header segment of an issuer's tokens is the same for every token of a key: decoded once,
   * the first time a token with it verifies, and kept (a few of them) frozen. Only verified headers
   * are kept, so a stream of forged headers cannot fill or churn the map.
   */
  const knownHeaders = new Map<string, Readonly<Record<string, unknown>>>()

  /** Remembers a verified token's header, decoded. */
  function remember (head: string, header: Readonly<Record<string, unknown>>): void {
    if (knownHeaders.has(head)) return
    if (knownHeaders.size >= MAX_KNOWN_HEADERS) knownHeaders.clear()
    knownHeaders.set(head, Object.freeze(header))
  }

  /** Steps 2-4. */
  function check (token: string): Checked {
    checkStructure(token)
    const first = token.indexOf('.')
    const head = token.slice(0, first)
    const header = knownHeaders.get(head) ?? jsonObject(head, 'header')
    const payload = jsonObject(token.slice(first + 1, token.lastIndexOf('.')), 'payload')
    const { alg, kid } = header
    // a legacy anon/service_role API key (iss "supabase") is no user token: it keeps its own answer
    const isLegacy = alg === 'HS256' && legacy !== undefined && legacy.active() && payload.iss !== 'supabase'
    if (!isLegacy && (typeof alg !== 'string' || !algorithms.has(alg))) throw algorithmNotAllowed(alg, payload)
    // a legacy token needs no kid: Supabase Auth finds its secret
    if (!isLegacy && (typeof kid !== 'string' || kid === '' || kid.length > MAX_KID_LENGTH || !kid.isWellFormed())) throw new UnknownKeyError()
    // no extension is understood (RFC 7515 §4.1.11, RFC 7797): refused before any key lookup
    if ('crit' in header || 'b64' in header) throw new TokenInvalidError('crit and b64 headers are not supported')
    if (!plausibleSignature(alg as string, token.length - token.lastIndexOf('.') - 1)) {
      throw new TokenInvalidError('the signature is missing or has the wrong length')
    }
    // the issuer (several: by exact iss, with its own algorithms), then the claims, which need no
    // signature: an expired or foreign token costs no key lookup, fetch or signature check
    const route = routeOf(payload)
    if (byIssuer !== undefined && !route.algorithms.has(alg as string)) throw algorithmNotAllowed(alg, payload)
    route.checkClaims(payload)
    return { head, header, payload, alg: alg as string, kid: isLegacy ? '' : kid as string, route }
  }

  return { check, routeOf, remember }
}

/** The key named by a checked token's `kid` and `alg`: held at once, or resolved (which may fetch the JWKS). */
function keyOf ({ route, kid, alg }: Checked): CachedKey | Promise<CachedKey> {
  return route.keys.held(kid, alg) ?? route.keys.resolve(kid, alg)
}

/** The key's signature check for the token's algorithm, or the answer when the key does not verify that algorithm. */
function checkFor (key: CachedKey, alg: string): SignatureCheck {
  const check = key.checks.get(alg)
  if (check === undefined) throw new TokenInvalidError('the algorithm does not match the key')
  return check
}

/**
 * Steps 2-5 up to the signature check itself, for a verifier outside the plugin (@fastify/jwt's, see
 * jwt.ts): the key that will verify the token, once every check that needs no signature has passed
 * and the key is known to verify the token's algorithm. Throws (or rejects with) the answer.
 */
export function createKeyFinder (config: Config, keys: readonly KeyResolver[], log: FastifyBaseLogger): (token: string) => CachedKey | Promise<CachedKey> {
  const { check } = createChecks(config, keys, log)
  return function keyFor (token) {
    const checked = check(token)
    const key = keyOf(checked)
    if (!(key instanceof Promise)) {
      checkFor(key, checked.alg)
      return key
    }
    return key.then((resolved) => {
      checkFor(resolved, checked.alg)
      return resolved
    })
  }
}

/** Builds the verification path for one registration: `keys` are the resolvers of `config.issuers`, in order. */
export function createTokenVerifier (config: Config, keys: readonly KeyResolver[], cache: TokenCache, log: FastifyBaseLogger,
  legacy?: LegacyChecker): TokenVerifier {
  const { check, routeOf, remember } = createChecks(config, keys, log, legacy)

  /** What the token cache holds legacy tokens under: usable only while the window is open. */
  const legacyKey: CachedKey = { kid: '', algorithms: ['HS256'], checks: new Map() }
  /** Whether a cached token's key still verifies: a key its issuer still holds fresh, or the open legacy window. */
  function current (key: CachedKey, claims: Claims): boolean {
    return key === legacyKey ? legacy!.active() : routeOf(claims).keys.current(key)
  }

  /** Step 6: the claims frozen, offered to the token cache (a legacy token at once), the header remembered. */
  function keep (token: string, { head, header, payload }: Checked, key: CachedKey, members = deepFreeze(payload)): Claims {
    cache.set(token, { claims: payload, key, expiresAt: (payload.exp as number) * 1000 }, members, key === legacyKey)
    remember(head, header)
    return payload
  }

  /** Steps 5 and 6, once the key named by the token is at hand: the signature (on the thread pool), then keep. */
  function finish (token: string, checked: Checked, key: CachedKey): Claims | Promise<Claims> {
    const check = checkFor(key, checked.alg)
    const dot = token.lastIndexOf('.')
    const valid = check(Buffer.from(token.slice(0, dot)), Buffer.from(token.slice(dot + 1), 'base64url'))
    if (valid === true) return keep(token, checked, key)
    if (valid === false) throw new TokenInvalidError('the token signature is invalid')
    return valid.then((ok) => {
      if (!ok) throw new TokenInvalidError('the token signature is invalid')
      return keep(token, checked, key)
    })
  }

  /** The legacy branch: every check that costs nothing first, then Supabase Auth in place of the signature. */
  async function verifyLegacy (token: string, checked: Checked): Promise<Claims> {
    const { payload } = checked
    const members = deepFreeze(payload) // claims nested too deep are refused before any call
    await legacy!.check(token, payload.sub as string, payload.exp as number)
    // the window may have closed during the call
    if (!legacy!.active()) throw algorithmNotAllowed('HS256', payload)
    const claims = keep(token, checked, legacyKey, members)
    legacy!.accepted()
    return claims
  }

  return function verifyToken (token: string): Claims | Promise<Claims> {
    const hit = cache.get(token, current)
    if (hit !== undefined) {
      if (hit.key === legacyKey) legacy!.accepted()
      return hit.claims
    }
    const checked = check(token)
    if (checked.kid === '') return verifyLegacy(token, checked)
    const key = keyOf(checked)
    if (!(key instanceof Promise)) return finish(token, checked, key)
    return key.then((resolved) => finish(token, checked, resolved))
  }
}
