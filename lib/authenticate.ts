import type { FastifyReply, FastifyRequest } from 'fastify'
import {
  BadRequestError, KeysUnavailableError, MalformedTokenError, NoTokenError,
  TokenExpiredError, TokenInvalidError, isAuthError, type AuthError
} from './errors'
import type { KeyResolver } from './keys'
import type { Config } from './options'
import { deepFreeze, type TokenCache } from './token-cache'
import { kKey, kToken, type VerifyingRequest } from './verify'

/**
 * A compact JWS: three base64url segments. The signature may be empty here so that an `alg: none`
 * token gets the clearer ALGORITHM_NOT_ALLOWED; the key callback refuses an empty signature for
 * every allowed algorithm before any key lookup.
 */
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/**
 * Takes the token from `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1)
 * and checks its length: the only checks made before the token cache is asked.
 */
export function extractBearer (header: string | undefined, maxTokenLength: number): string {
  // Node keeps only the first of repeated Authorization headers: this is always a string or nothing
  if (header === undefined || header === '') throw new NoTokenError()
  const space = header.indexOf(' ')
  const scheme = space === -1 ? header : header.slice(0, space)
  if (scheme.toLowerCase() !== 'bearer') throw new NoTokenError()
  const token = space === -1 ? '' : header.slice(space + 1).trim()
  if (token === '' || /\s/.test(token)) throw new BadRequestError()
  if (token.length > maxTokenLength) throw new MalformedTokenError('it is longer than maxTokenLength')
  return token
}

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

/** Maps whatever verification threw to one of the plugin's answers: never a 500. */
export function toAuthError (err: unknown): AuthError {
  if (isAuthError(err)) return err
  switch ((err as { code?: unknown } | null)?.code) {
    case 'FST_JWT_AUTHORIZATION_TOKEN_EXPIRED':
      return new TokenExpiredError()
    case 'FST_JWT_AUTHORIZATION_TOKEN_INVALID':
    case 'FAST_JWT_INVALID_CLAIM_TYPE':
      // fast-jwt's messages name the check that failed, never the token's content
      return new TokenInvalidError(lowerFirst((err as Error).message))
    case 'FAST_JWT_INACTIVE':
      return new TokenInvalidError('the token is not valid yet (nbf)')
    default:
      return new TokenInvalidError('the token could not be verified')
  }
}

/**
 * Logs at warn an error that verification is not made to give (not the plugin's own, @fastify/jwt's
 * or fast-jwt's): a guard, since no input is known to cause one. The client still gets a 401.
 */
export function warnIfUnexpected (log: { warn (object: object, message: string): void }, err: unknown): void {
  const code = (err as { code?: unknown } | null)?.code
  if (typeof code === 'string' && /^(FST_SUPABASE_JWKS_|FST_JWT_|FAST_JWT_)/.test(code)) return
  log.warn({ err }, 'supabase-jwks: unexpected error while verifying a token')
}

function lowerFirst (message: string): string {
  const text = message.replace(/\.$/, '')
  return text.charAt(0).toLowerCase() + text.slice(1)
}

const DESCRIPTIONS: Record<string, string> = {
  FST_SUPABASE_JWKS_BAD_REQUEST: 'Malformed Authorization header',
  FST_SUPABASE_JWKS_MALFORMED_TOKEN: 'The token is malformed',
  FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED: 'The token algorithm is not allowed',
  FST_SUPABASE_JWKS_UNKNOWN_KID: 'The token was signed with an unknown key',
  FST_SUPABASE_JWKS_TOKEN_EXPIRED: 'The token has expired',
  FST_SUPABASE_JWKS_TOKEN_INVALID: 'The token is invalid'
}

/** The `WWW-Authenticate` challenge for an answer (RFC 6750 §3); fixed texts only, nothing from the request. */
export function challenge (realm: string, err: AuthError): string {
  const base = `Bearer realm="${realm}"`
  if (err.code === 'FST_SUPABASE_JWKS_NO_TOKEN') return base
  const error = err.statusCode === 400 ? 'invalid_request' : 'invalid_token'
  return `${base}, error="${error}", error_description="${DESCRIPTIONS[err.code]}"`
}

/** Verifies the request's bearer token; decorates `request.user` or throws the answer. */
export function buildAuthenticate (config: Config, keys: KeyResolver, cache: TokenCache) {
  const { maxTokenLength, realm } = config
  const retryAfter = String(Math.max(1, Math.ceil(config.cooldownMs / 1000)))
  return async function authenticate (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const verifying = request as VerifyingRequest
    try {
      const token = extractBearer(request.headers.authorization, maxTokenLength)
      const hit = cache.get(token, keys.held)
      if (hit !== undefined) {
        request.user = hit.claims as unknown as FastifyRequest['user']
        return
      }
      checkStructure(token)
      verifying[kToken] = token
      const claims = await request.supabaseJwtVerify<Record<string, unknown>>()
      if (typeof claims.sub !== 'string' || claims.sub === '') throw new TokenInvalidError('sub is not a non-empty string')
      if (!Number.isFinite(claims.exp)) throw new TokenInvalidError('exp is not a finite number')
      const objects = deepFreeze(claims)
      cache.set(token, { claims, key: verifying[kKey]!, expiresAt: (claims.exp as number) * 1000 }, objects)
    } catch (error) {
      (request as { user: unknown }).user = null
      const err = toAuthError(error)
      warnIfUnexpected(request.log, error)
      request.log.debug({ code: err.code, reason: err.message }, 'supabase-jwks: token rejected')
      if (err instanceof KeysUnavailableError) {
        reply.header('retry-after', retryAfter)
      } else {
        reply.header('www-authenticate', challenge(realm, err))
      }
      throw err
    }
  }
}
