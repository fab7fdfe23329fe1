import { hash, timingSafeEqual } from 'node:crypto'
import { OptionError } from './errors'

/*
 * The project's API keys (options `publishableKeys` and `secretKeys`), as a route in a key mode
 * (`auth: 'secret'`, ...) compares the request's `apikey` header with them. A key is held only as
 * its SHA-256 digest: a request's value is hashed once and compared with each digest by
 * `timingSafeEqual`, two buffers of 32 bytes whatever was sent, so that how long a comparison takes
 * says nothing about how much of a key a guess got right. A key never reaches a log line, a message
 * or an answer: messages name keys by their names only.
 */

/** Shorter than this, a value is no real API key (an `sb_publishable_`/`sb_secret_` key has 40 or more characters; a legacy key is a JWT). */
export const MIN_API_KEY_LENGTH = 32
/** An `apikey` header longer than this matches no key, and is not even hashed: no API key is this long. */
export const MAX_API_KEY_LENGTH = 1024
/** The key a string option stands for, and the one bare `'publishable'` / `'secret'` modes match. */
export const DEFAULT_KEY_NAME = 'default'
const MAX_KEY_NAME_LENGTH = 64

export type KeySetName = 'publishable' | 'secret'

/** Who a request in a key mode is, as `request.supabaseAuth` says: one frozen object per key. */
export interface KeyCaller {
  readonly mode: KeySetName
  readonly keyName: string
}

/** One configured key: its name and its SHA-256 digest (never the key itself). */
export interface ApiKey {
  readonly name: string
  readonly digest: Buffer
  /** What `request.supabaseAuth` is set to when this key matched. */
  readonly caller: KeyCaller
}

/** The configured keys, by set; `userOnly` refuses every mode but `'user'` (with @fastify/jwt), saying why. */
export interface Callers {
  publishable: readonly ApiKey[] | undefined
  secret: readonly ApiKey[] | undefined
  userOnly?: string
}

function fail (message: string): never {
  throw new OptionError(message)
}

/** The payload's `role` of a value shaped as a JWT (a legacy `anon` / `service_role` key), or `undefined`. */
function legacyRole (key: string): unknown {
  const parts = key.split('.')
  if (parts.length !== 3) return undefined
  try {
    return (JSON.parse(Buffer.from(parts[1]!, 'base64url').toString()) as { role?: unknown }).role
  } catch {
    return undefined
  }
}

/**
 * Refuses a key of the other set: a publishable key (public by design) among the secret keys would
 * let anyone in where only servers may go; a secret key among the publishable ones is a key that
 * ships to browsers. Told by the new keys' prefix, or by a legacy JWT key's `role`.
 */
function checkKind (option: string, name: string, key: string, set: KeySetName): void {
  const role = legacyRole(key)
  if (set === 'secret' && (key.startsWith('sb_publishable_') || role === 'anon')) {
    fail(`${option}.${name} is a publishable (anon) key, which anyone may hold: give a secret key (sb_secret_… or service_role), ` +
      'or move it to publishableKeys')
  }
  if (set === 'publishable' && (key.startsWith('sb_secret_') || role === 'service_role')) {
    fail(`${option}.${name} is a secret (service_role) key: move it to secretKeys, and keep it out of anything you ship`)
  }
}

/** One key of a set, checked: a string long enough to be an API key, which the header can carry as it is. */
function checkKey (option: string, name: string, key: unknown, set: KeySetName): string {
  if (typeof key !== 'string') {
    fail(`${option}.${name} must be a string (the API key); it is ${key === null ? 'null' : typeof key}: is its environment variable set?`)
  }
  if (key.length < MIN_API_KEY_LENGTH) {
    fail(`${option}.${name} is too short to be a real API key (under ${MIN_API_KEY_LENGTH} characters): give the key itself, ` +
      'as the dashboard shows it (Project Settings, API Keys)')
  }
  if (key.length > MAX_API_KEY_LENGTH) fail(`${option}.${name} is longer than any API key (over ${MAX_API_KEY_LENGTH} characters)`)
  // a header's value loses the whitespace around it: a key read from a file with its newline would never match
  if (!/^[\x21-\x7e]+$/.test(key)) {
    fail(`${option}.${name} holds whitespace or a character outside printable ASCII (a newline read from a file?): an API key has none`)
  }
  checkKind(option, name, key, set)
  return key
}

/**
 * Whether a name or a mode as written could be a key put in its place (an `sb_` key, or a legacy
 * JWT key): a refusal then never repeats it.
 */
export function looksLikeKey (text: string): boolean {
  return text.startsWith('sb_') || text.startsWith('eyJ')
}

/** A key's name: what `request.supabaseAuth.keyName` and the modes `'secret:<name>'` say. */
function checkName (option: string, name: string): void {
  if (looksLikeKey(name)) {
    fail(`${option} has a key name that looks like an API key (it is not repeated here): a name is a label such as default or cron, ` +
      'and the key its value ({ cron: process.env.CRON_SECRET_KEY })')
  }
  if (name === '' || name === '*' || name.includes(':') || name.length > MAX_KEY_NAME_LENGTH) {
    const shown = name.length > MAX_KEY_NAME_LENGTH ? `named with ${name.length} characters` : `named ${JSON.stringify(name)}`
    fail(`${option} has a key ${shown}: a name is 1 to ${MAX_KEY_NAME_LENGTH} characters, ` +
      'without \':\', and not \'*\' (which stands for any key of the set)')
  }
}

/**
 * The option `publishableKeys` or `secretKeys`: one key (named `default`) or an object of named
 * keys. Each key is checked, then kept as its digest only.
 */
function keySet (option: string, value: unknown, set: KeySetName): ApiKey[] | undefined {
  if (value === undefined) return undefined
  let entries: Array<[string, unknown]>
  if (typeof value === 'string') {
    entries = [[DEFAULT_KEY_NAME, value]]
  } else if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    entries = Object.entries(value)
    if (entries.length === 0) fail(`${option} names no key: give one key (a string), or { default: ..., <name>: ... }`)
  } else {
    fail(`${option} must be an API key (a string, the key named default) or an object of named keys ({ default: ..., cron: ... })`)
  }
  return entries.map(([name, key]) => {
    checkName(option, name)
    const checked = checkKey(option, name, key, set)
    return { name, digest: digestOf(checked), caller: Object.freeze({ mode: set, keyName: name }) }
  })
}

/** Refuses a key given twice (under two names, or in both sets): which name would answer for it? */
function checkDistinct (keys: ReadonlyArray<{ option: string, key: ApiKey }>): void {
  for (let i = 0; i < keys.length; i++) {
    for (let j = i + 1; j < keys.length; j++) {
      if (keys[i]!.key.digest.equals(keys[j]!.key.digest)) {
        fail(`${keys[i]!.option}.${keys[i]!.key.name} and ${keys[j]!.option}.${keys[j]!.key.name} are the same key: give each key once`)
      }
    }
  }
}

/** The options `publishableKeys` and `secretKeys`, checked at registration. */
export function apiKeys (options: { publishableKeys?: unknown, secretKeys?: unknown }, userOnly?: string): Callers {
  const publishable = keySet('publishableKeys', options.publishableKeys, 'publishable')
  const secret = keySet('secretKeys', options.secretKeys, 'secret')
  checkDistinct([
    ...(publishable ?? []).map((key) => ({ option: 'publishableKeys', key })),
    ...(secret ?? []).map((key) => ({ option: 'secretKeys', key }))
  ])
  return userOnly === undefined ? { publishable, secret } : { publishable, secret, userOnly }
}

/** SHA-256 of a string (as UTF-8): 32 bytes, whatever its length. */
function digestOf (value: string): Buffer {
  return hash('sha256', value, 'buffer')
}

/**
 * The digest of a request's `apikey` header, or `undefined` when it can match no key: not a single
 * string (a repeated header), or longer than any key (never hashed: the cost stays bounded).
 */
export function presentedDigest (apikey: unknown): Buffer | undefined {
  if (typeof apikey !== 'string' || apikey.length > MAX_API_KEY_LENGTH) return undefined
  return digestOf(apikey)
}

/**
 * The key of `keys` whose digest is `digest`, or `undefined`. Every key is compared, the match or
 * not: the time taken depends on how many keys the mode has, never on which one matched.
 */
export function matchKey (digest: Buffer, keys: readonly ApiKey[]): ApiKey | undefined {
  let found: ApiKey | undefined
  for (const key of keys) {
    if (timingSafeEqual(digest, key.digest)) found = key
  }
  return found
}
