import type { CachedKey } from './keys'

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
 * Verified tokens, keyed by the whole token, bounded in entries (and so in memory: at most
 * `max` x (4 KiB of token + its claims)). When full, the oldest entry goes. An entry is used only
 * while the token has not expired and the key set still holds the very key that verified it, so
 * a refresh, a revocation or a new key set retires entries without a sweep.
 */
export class TokenCache {
  readonly #max: number
  readonly #entries = new Map<string, VerifiedToken>()

  constructor (max: number) {
    this.#max = max
  }

  get size (): number {
    return this.#entries.size
  }

  /** The entry for `token` if it may still be used, given the key now held for its kid. */
  get (token: string, held: (kid: string) => CachedKey | undefined): VerifiedToken | undefined {
    const entry = this.#entries.get(token)
    if (entry === undefined) return undefined
    if (Date.now() < entry.expiresAt && held(entry.key.kid) === entry.key) return entry
    this.#entries.delete(token)
    return undefined
  }

  set (token: string, entry: VerifiedToken): void {
    if (this.#max === 0 || token.length > MAX_CACHED_TOKEN_LENGTH) return
    if (this.#entries.size >= this.#max) this.#entries.delete(this.#entries.keys().next().value!)
    this.#entries.set(token, entry)
  }

  clear (): void {
    this.#entries.clear()
  }
}

/** Freezes the claims and everything in them: one object may serve many requests. */
export function deepFreeze<T extends object> (value: T): T {
  Object.freeze(value)
  for (const key in value) {
    const item = value[key]
    if (typeof item === 'object' && item !== null && !Object.isFrozen(item)) deepFreeze(item)
  }
  return value
}
