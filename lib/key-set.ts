import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { OptionError } from './errors'
import type { Algorithm, InlineKeySet } from './options'
import { signatureCheck, type SignatureCheck, type SignatureCounts } from './signature'

/*
 * Reading a key set: which entries of a JWKS (fetched, or given inline) are public signing keys the
 * plugin may verify with, each converted once to a KeyObject with its signature checks. No I/O and
 * no policy: lib/key-fetch.ts gets the set, lib/keys.ts decides when and what to trust.
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

/** Counts for keys built outside a resolver (tests). */
const UNCOUNTED: SignatureCounts = { signaturesOffLoop: 0, signaturesOnLoop: 0 }

/** Checks that a JWK is a public signing key (RFC 7517, RFC 7518) and builds its checks for the `allowed` algorithms. */
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

export function usableKeys (entries: readonly KeyEntry[], log: FastifyBaseLogger): Map<string, CachedKey> {
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
export function unusable (keys: Iterable<CachedKey>, algorithms: readonly string[]): { reason: string, offered: string[] } | undefined {
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
