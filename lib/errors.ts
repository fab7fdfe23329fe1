import createError from '@fastify/error'

/*
 * Every answer the plugin gives, made once. Codes are stable: clients and
 * logs can switch on them. Messages never carry the token, a stack trace or
 * anything the JWKS server sent.
 */

/**
 * No credentials, or a scheme other than Bearer: 401 without an error code (RFC 6750 §3.1). The
 * message names where the token was looked for (the header, and the session cookie and `extractToken`
 * when configured): `new NoTokenError('the Authorization header')`.
 */
export const NoTokenError = createError(
  'FST_SUPABASE_JWKS_NO_TOKEN', 'Missing bearer token in %s', 401)

/** The Authorization header is malformed: 400 `invalid_request`. */
export const BadRequestError = createError(
  'FST_SUPABASE_JWKS_BAD_REQUEST', 'Malformed Authorization header: expected "Bearer <token>"', 400)

/** Not a JWS in compact form (three base64url segments), or larger than `maxTokenLength`. */
export const MalformedTokenError = createError(
  'FST_SUPABASE_JWKS_MALFORMED_TOKEN', 'The token is malformed: %s', 401)

/**
 * The session cookie (option `cookie`) is there but holds no session with an access token:
 * malformed, partial (a chunk missing or from another write), oversized, or not base64url/JSON.
 */
export const MalformedCookieError = createError(
  'FST_SUPABASE_JWKS_MALFORMED_COOKIE', 'The session cookie is malformed: %s', 401)

/** Signed with an algorithm outside the allowlist (`none`, every HS* and every unlisted one). */
export const AlgorithmNotAllowedError = createError(
  'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', 'The token algorithm is not allowed: %s', 401)

/** The token names no `kid`, or one the JWKS does not publish as a usable signing key. */
export const UnknownKeyError = createError(
  'FST_SUPABASE_JWKS_UNKNOWN_KID', 'The token was signed with an unknown key', 401)

/** `exp` is in the past (beyond the clock tolerance): the client should refresh its session. */
export const TokenExpiredError = createError(
  'FST_SUPABASE_JWKS_TOKEN_EXPIRED', 'The token has expired', 401)

/** Bad signature, or a claim missing, of the wrong type or with a value that is not accepted. */
export const TokenInvalidError = createError(
  'FST_SUPABASE_JWKS_TOKEN_INVALID', 'The token is invalid: %s', 401)

/** The token verified, but the `isRevoked` option says it is revoked (its session was signed out). */
export const TokenRevokedError = createError(
  'FST_SUPABASE_JWKS_TOKEN_REVOKED', 'The token has been revoked', 401)

/**
 * The token verified, but its session no longer stands in the project's database (option `sessions`):
 * signed out, its user deleted or banned, or past its `not_after`. 401, the same code as a revoked token.
 */
export const SessionEndedError = createError(
  'FST_SUPABASE_JWKS_TOKEN_REVOKED', 'The token has been revoked: %s', 401)

/**
 * With the option `sessions`, a user token that names no session the check can look up: no
 * `session_id` claim, or one (or a `sub`) that is not a UUID. Refused before any query: 401.
 */
export const NoSessionError = createError(
  'FST_SUPABASE_JWKS_NO_SESSION', 'The token names no session that can be checked: %s', 401)

/**
 * With the option `sessions`, whether the token's session stands cannot be read now (the database
 * cannot answer in time) and the failure policy does not answer from the last known state: 503 with
 * `Retry-After: 1`.
 */
export const SessionsUnavailableError = createError(
  'FST_SUPABASE_JWKS_SESSIONS_UNAVAILABLE', 'Whether the token\'s session stands cannot be checked now: %s', 503)

/** `isRevoked` threw or did not answer a boolean: the token cannot be accepted now. 503 with `Retry-After: 1`. */
export const RevocationUnavailableError = createError(
  'FST_SUPABASE_JWKS_REVOCATION_UNAVAILABLE', 'Whether the token is revoked cannot be checked now', 503)

/**
 * The token verified, but the route's requirements (`aal`, `anonymous`, `check`) refuse its user:
 * 403 with `error="insufficient_scope"` (RFC 6750 §3.1).
 */
export const ForbiddenError = createError(
  'FST_SUPABASE_JWKS_FORBIDDEN', 'The token does not grant access to this route: %s', 403)

/** The signing keys cannot be had (JWKS unreachable and no usable cached key): 503 with Retry-After. */
export const KeysUnavailableError = createError(
  'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', 'The signing keys are temporarily unavailable', 503)

/**
 * A legacy HS256 token could not be checked by Supabase Auth (unreachable, failing, or the call caps
 * reached): 503 with `Retry-After: 1`. Only while `legacyTokens` is on.
 */
export const AuthUnavailableError = createError(
  'FST_SUPABASE_JWKS_AUTH_UNAVAILABLE', 'Supabase Auth cannot check this legacy token now: %s', 503)

/**
 * A route that lets in API keys (requirement `auth`: `'publishable'`, `'secret'`, a named key) got
 * an `apikey` header that matches none of the keys of its modes: 401, without a challenge (an API
 * key is no HTTP authentication scheme). The message never repeats the key.
 */
export const InvalidApiKeyError = createError(
  'FST_SUPABASE_JWKS_INVALID_API_KEY', 'Invalid API key: the apikey header holds no key this route accepts', 401)

/** A route that lets in API keys only (no `'user'`, no `'none'` among its `auth` modes) got no `apikey` header: 401, without a challenge. */
export const NoApiKeyError = createError(
  'FST_SUPABASE_JWKS_NO_API_KEY', 'Missing API key in the apikey header', 401)

/** A bad plugin option: registration fails and `ready()` rejects with it. */
export const OptionError = createError(
  'FST_SUPABASE_JWKS_OPTION', 'Invalid fastify-supabase-jwks option: %s', 500)

/** The plugin cannot be registered here (for example twice in one context): `ready()` rejects with it. */
export const RegistrationError = createError(
  'FST_SUPABASE_JWKS_REGISTRATION', 'fastify-supabase-jwks cannot be registered: %s', 500)

/**
 * A route's `config.supabaseJwks` is invalid, and the plugin met it only at a request (the route was
 * declared before the plugin, so `onRoute` never saw it): the app's mistake, not the client's. Every
 * request to that route is answered 500 with this code (token or not). The answer names the route only;
 * what is wrong is the app's configuration, said once in the plugin's log, never to a client.
 */
export const RouteConfigError = createError(
  'FST_SUPABASE_JWKS_ROUTE_CONFIG', 'Invalid route requirements of %s: the server log says what is wrong', 500)

/**
 * @fastify/jwt, registered with `fastifyJwtOptions`, was asked for something that cannot verify a
 * Supabase token safely: `fastify.jwt.verify()` (thrown synchronously, since its result would be a
 * Promise that an `if` takes for true), or a `request.jwtVerify()` whose token did not come through
 * the plugin's `extractToken`. The app's mistake: never an accepted token.
 */
export const FastifyJwtUsageError = createError(
  'FST_SUPABASE_JWKS_FASTIFY_JWT_USAGE', 'This @fastify/jwt registration cannot verify a Supabase token here: %s', 500)

/**
 * `request.sql` or `request.supabase` cannot act as this caller: a token whose `role` is `service_role`
 * or any role but `authenticated` and `anon`, or a secret-key caller. Refused, never downgraded (a wrong
 * role returns zero rows, which nobody can debug): 403.
 */
export const UnsupportedRoleError = createError(
  'FST_SUPABASE_JWKS_UNSUPPORTED_ROLE', 'This caller cannot act on the database as itself: %s', 403)

/**
 * `request.sql` could not get a connection in time (the pool is busy or its wait list is full), or
 * PostgreSQL cannot be reached or ended the connection: 503 with `Retry-After: 1`.
 */
export const DatabaseUnavailableError = createError(
  'FST_SUPABASE_JWKS_DATABASE_UNAVAILABLE', 'The database is temporarily unavailable: %s', 503)

/**
 * `request.sql` or `request.supabase` used where it cannot act as the caller: on a route `authenticate`
 * does not guard, before it ran, without the option it needs, or with SQL that would leave its
 * transaction. The app's mistake: 500, and nothing runs as anybody.
 */
export const ActingUsageError = createError(
  'FST_SUPABASE_JWKS_USAGE', '%s', 500)

/**
 * `request.sql.ident(name, allowlist)` got a name its allowlist does not hold (a column to sort by,
 * taken from the request): 400, and nothing runs. The message never repeats the name.
 */
export const IdentifierNotAllowedError = createError(
  'FST_SUPABASE_JWKS_IDENTIFIER_NOT_ALLOWED', 'The name is not one this request may use', 400)

/** The codes the handler's `request.sql` and `request.supabase` can throw (not answered by `authenticate`). */
export const actingErrorCodes = {
  FST_SUPABASE_JWKS_UNSUPPORTED_ROLE: 403,
  FST_SUPABASE_JWKS_IDENTIFIER_NOT_ALLOWED: 400,
  FST_SUPABASE_JWKS_DATABASE_UNAVAILABLE: 503,
  FST_SUPABASE_JWKS_USAGE: 500
} as const

/** The codes a request can be answered with, and their HTTP statuses. */
export const errorCodes = {
  FST_SUPABASE_JWKS_NO_TOKEN: 401,
  FST_SUPABASE_JWKS_BAD_REQUEST: 400,
  FST_SUPABASE_JWKS_MALFORMED_TOKEN: 401,
  FST_SUPABASE_JWKS_MALFORMED_COOKIE: 401,
  FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED: 401,
  FST_SUPABASE_JWKS_UNKNOWN_KID: 401,
  FST_SUPABASE_JWKS_TOKEN_EXPIRED: 401,
  FST_SUPABASE_JWKS_TOKEN_INVALID: 401,
  FST_SUPABASE_JWKS_TOKEN_REVOKED: 401,
  FST_SUPABASE_JWKS_FORBIDDEN: 403,
  FST_SUPABASE_JWKS_REVOCATION_UNAVAILABLE: 503,
  FST_SUPABASE_JWKS_NO_SESSION: 401,
  FST_SUPABASE_JWKS_SESSIONS_UNAVAILABLE: 503,
  FST_SUPABASE_JWKS_KEYS_UNAVAILABLE: 503,
  FST_SUPABASE_JWKS_AUTH_UNAVAILABLE: 503,
  FST_SUPABASE_JWKS_ROUTE_CONFIG: 500,
  FST_SUPABASE_JWKS_INVALID_API_KEY: 401,
  FST_SUPABASE_JWKS_NO_API_KEY: 401
} as const

export type ErrorCode = keyof typeof errorCodes

/** An error the plugin answers a request with. */
export interface AuthError extends Error {
  code: ErrorCode
  statusCode: number
}

export function isAuthError (err: unknown): err is AuthError {
  return err instanceof Error && Object.hasOwn(errorCodes, (err as { code?: unknown }).code as string)
}

/** An `alg` value safe to repeat in a message. */
const PRINTABLE_ALG = /^[A-Za-z0-9-]{1,16}$/

const ASYMMETRIC = /^(RS|PS|ES)(256|384|512)$|^EdDSA$/

/**
 * The answer to an algorithm outside the allowlist, naming it only if it is short and plain, and
 * saying why: an asymmetric one is not in the `algorithms` option; an HS* one is a legacy token
 * (a legacy `anon`/`service_role` API key when its `iss` is "supabase").
 */
export function algorithmNotAllowed (alg: unknown, claims: Record<string, unknown>): AuthError {
  if (typeof alg !== 'string' || !PRINTABLE_ALG.test(alg)) return new AlgorithmNotAllowedError('missing or invalid')
  if (/^HS/i.test(alg)) {
    return new AlgorithmNotAllowedError(claims.iss === 'supabase'
      ? `${alg} (a legacy anon or service_role API key is not a user access token)`
      : `${alg} (tokens signed with the legacy JWT secret are not accepted)`)
  }
  if (ASYMMETRIC.test(alg)) return new AlgorithmNotAllowedError(`${alg} (not in the plugin's algorithms option)`)
  return new AlgorithmNotAllowedError(alg)
}
