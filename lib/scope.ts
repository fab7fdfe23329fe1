/*
 * OAuth scopes: the `scope` requirement of a route, and the check of a verified token's `scope`
 * claim against it. Supabase Auth's OAuth 2.1 server puts the scopes it granted a client in that
 * claim, space-delimited (RFC 6749 §3.3, RFC 9068 §2.2.3).
 */
import type { Requirements } from './options'

/** One scope-token (RFC 6749 §3.3): `%x21 / %x23-5B / %x5D-7E`, printable ASCII but space, `"` and `\`. */
export const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]+$/

/** The scopes a route requires: the list, and its space-delimited form (the challenge's `scope`). */
export interface RequiredScopes {
  readonly list: readonly string[]
  readonly text: string
}

/** A requirement's `scope` as a list: a string is one scope, an array several, absent none. */
function scopeList (scope: string | readonly string[] | undefined): readonly string[] {
  return scope === undefined ? [] : typeof scope === 'string' ? [scope] : scope
}

/** The required scopes of a requirements object, by the object (a route's, or the `require` option): worked out once each. */
const byRequirements = new WeakMap<Requirements, RequiredScopes | null>()

/** What `required` asks of the token's `scope` claim, or `null` when nothing (no `scope`, or `scope: []`). */
export function requiredScopes (required: Requirements): RequiredScopes | null {
  let scopes = byRequirements.get(required)
  if (scopes === undefined) {
    const list = [...new Set(scopeList(required.scope))]
    scopes = list.length === 0 ? null : { list, text: list.join(' ') }
    byRequirements.set(required, scopes)
  }
  return scopes
}

const SPACE = 0x20

/** Whether `scope` is one of the space-delimited entries of `claim`: whole, never a prefix or a part of one. */
function listed (claim: string, scope: string): boolean {
  let at = claim.indexOf(scope)
  while (at !== -1) {
    const end = at + scope.length
    if ((at === 0 || claim.charCodeAt(at - 1) === SPACE) && (end === claim.length || claim.charCodeAt(end) === SPACE)) return true
    at = claim.indexOf(scope, at + 1)
  }
  return false
}

/**
 * Whether the `scope` claim grants every scope of `list`; a claim that is absent or not a string
 * grants nothing. Entries are delimited by spaces (the RFC's only delimiter: a run of them only makes
 * empty entries, which no scope equals) and matched whole: `read` is not granted by `read:all`.
 * Searched in place, nothing allocated: each scope costs at most the claim's length times its own
 * (a configured scope, short), and the claim is bounded by `maxTokenLength`.
 */
export function grants (claim: unknown, list: readonly string[]): boolean {
  if (typeof claim !== 'string') return false
  for (const scope of list) if (!listed(claim, scope)) return false
  return true
}

/**
 * Whether verified claims (from `fastify.supabaseJwks.verify()`, a WebSocket's or a job's) grant
 * every scope given, as a route's `scope` requirement would: for checks outside a route.
 * `scopes` is one scope or a list; a scope that is not a scope-token (empty, with a space) throws.
 */
export function hasScopes (claims: { readonly scope?: unknown }, scopes: string | readonly string[]): boolean {
  const list = scopeList(scopes)
  for (const scope of list) {
    if (typeof scope !== 'string' || !SCOPE_TOKEN.test(scope)) {
      throw new TypeError(`hasScopes: ${JSON.stringify(scope)} is not a scope (a non-empty string of printable ASCII without spaces, " or \\)`)
    }
  }
  return grants(claims.scope, list)
}
