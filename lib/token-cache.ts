import { TokenInvalidError } from './errors'
import type { CachedKey } from './key-set'

/** A verified token: its claims, the key that verified them, and when the token expires. */
export interface VerifiedToken {
  claims: Readonly<Record<string, unknown>>
  key: CachedKey
  /** `exp` in ms since the epoch. */
  expiresAt: number
}

/** Tokens longer than this are verified every time, never cached: they would cost more memory than they save. */
export const MAX_CACHED_TOKEN_LENGTH = 4096
/**
 * Claims with more members than this (objects, arrays and their properties or items, counted by
 * `deepFreeze`) are not cached either: in 4 KiB a user can fill `user_metadata` with hundreds of
 * tiny keys or objects that take far more heap than the token's length (about 19 KB for 240 keys).
 * A Supabase access token has 30 to 40.
 */
export const MAX_CACHED_CLAIM_MEMBERS = 128
/** How many characters of the signature's end identify a token (the signature is random-looking). */
const ID_CHARS = 16

/** A 30-bit number from the end of a token: its signature's last characters. */
function tokenId (token: string): number {
  let id = 0
  for (let i = Math.max(0, token.length - ID_CHARS); i < token.length; i++) id = (id * 31 + token.charCodeAt(i)) & 0x3fffffff
  return id
}

/**
 * Verified tokens, bounded in entries (and so in memory: at most `max` x (4 KiB of token + at
 * most 128 claim members)). When full, the oldest entry goes. An entry is used only while the
 * token has not expired and the key set still holds the very key that verified it, so a refresh,
 * a revocation or a new key set retires entries without a sweep.
 *
 * Entries are found by a number taken from the end of the signature and then compared with the
 * whole token: a lookup costs no hash of a long string. Two tokens with the same number take
 * turns in one entry; a token is never answered with another's claims.
 *
 * A token is admitted on its second verification, not its first: under a stream of distinct
 * tokens (each seen once) the cache would only churn, holding every token and its claims long
 * enough to reach the old generation of the heap, and cost memory and GC time for nothing.
 * Nor is a token admitted when it comes back only after more distinct tokens than the cache
 * holds (see #admit). What is remembered of a token seen once is that number.
 */
export class TokenCache {
  readonly #max: number
  /** How many numbers of tokens verified each generation of the admission filter holds. */
  readonly #generation: number
  readonly #entries = new Map<number, VerifiedToken & { token: string }>()
  #seen = new Set<number>()
  #seenBefore = new Set<number>()
  /** Lookups answered from the cache, and lookups that found nothing usable. */
  hits = 0
  misses = 0

  constructor (max: number) {
    this.#max = max
    this.#generation = Math.max(1, Math.ceil(max / 2))
  }

  get size (): number {
    return this.#entries.size
  }

  /** The entry for `token` if it may still be used: unexpired, and `current` says its key (of the issuer of its claims) still verifies. */
  get (token: string, current: (key: CachedKey, claims: VerifiedToken['claims']) => boolean): VerifiedToken | undefined {
    if (this.#entries.size !== 0) {
      const id = tokenId(token)
      const entry = this.#entries.get(id)
      if (entry !== undefined && entry.token === token) {
        if (Date.now() < entry.expiresAt && current(entry.key, entry.claims)) {
          this.hits++
          return entry
        }
        this.#entries.delete(id)
      }
    }
    this.misses++
    return undefined
  }

  /**
   * Remembers a verified token; `members` is how many members its claims hold (from `deepFreeze`).
   * `now` admits it on this first verification (a legacy token, whose check is a call to Supabase Auth).
   */
  set (token: string, entry: VerifiedToken, members: number, now = false): void {
    if (this.#max === 0 || token.length > MAX_CACHED_TOKEN_LENGTH || members > MAX_CACHED_CLAIM_MEMBERS) return
    const id = tokenId(token)
    if (!now && !this.#admit(id)) return
    if (!this.#entries.has(id) && this.#entries.size >= this.#max) this.#entries.delete(this.#entries.keys().next().value!)
    this.#entries.set(id, { ...entry, token })
  }

  clear (): void {
    this.#entries.clear()
    this.#seen.clear()
    this.#seenBefore.clear()
  }

  /**
   * Whether the token numbered `id` was verified before, among roughly the last `max / 2` to `max`
   * distinct tokens verified; remembers it either way. Each admission evicts the oldest entry, so a
   * token that comes back only after more distinct tokens than the cache holds would be evicted
   * before its next use: admitting it would only churn the cache (a stream of 20,000 tokens, each
   * back after the 19,999 others, would evict every entry unused). So the numbers are kept in two
   * generations of `max / 2` each; when the newer is full, the older is forgotten.
   */
  #admit (id: number): boolean {
    if (this.#seen.has(id)) return true
    const known = this.#seenBefore.has(id)
    if (this.#seen.size >= this.#generation) {
      this.#seenBefore = this.#seen
      this.#seen = new Set()
    }
    this.#seen.add(id)
    return known
  }
}

/** Claims nested deeper than this are refused: no real token comes close, and walking them could overflow the stack. */
export const MAX_CLAIM_DEPTH = 32

/**
 * Freezes the claims and everything in them (one object may serve many requests); returns how many
 * members that was: one for each object or array, one for each of their properties or items.
 */
export function deepFreeze (value: object, depth = 0): number {
  if (depth > MAX_CLAIM_DEPTH) throw new TokenInvalidError(`the claims are nested deeper than ${MAX_CLAIM_DEPTH} levels`)
  Object.freeze(value)
  // JSON.parse gives plain objects and arrays: their own keys are all there is (and cheaper to walk than for...in)
  const keys = Object.keys(value)
  let members = 1 + keys.length
  for (let i = 0; i < keys.length; i++) {
    const item = (value as Record<string, unknown>)[keys[i]!]
    if (typeof item === 'object' && item !== null && !Object.isFrozen(item)) members += deepFreeze(item, depth + 1)
  }
  return members
}
