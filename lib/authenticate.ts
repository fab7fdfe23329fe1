import type { FastifyReply, FastifyRequest } from 'fastify'
import {
  AuthUnavailableError, BadRequestError, errorCodes, type ErrorCode, ForbiddenError, KeysUnavailableError, RevocationUnavailableError, TokenRevokedError, MalformedTokenError, NoTokenError, OptionError, RouteConfigError, TokenInvalidError, isAuthError, type AuthError,
  InvalidApiKeyError, NoApiKeyError, SessionsUnavailableError
} from './errors'
import { admitsOthers, buildAdmission, buildPlans, USER, type SupabaseAuth } from './callers'
import { requirements, type Config, type Requirements } from './options'
import type { TokenVerifier } from './verify'
import { grants, requiredScopes } from './scope'
import { tokenFromSessionCookie } from './cookie'
import type { SupabaseUser } from './index'

/**
 * The access token that authenticated the request (from the header, the session cookie or
 * `extractToken`): what `request.supabase` sends on the caller's behalf. `null` otherwise.
 */
export const kAccessToken = Symbol('fastify-supabase-jwks.accessToken')

/** A request as `authenticate` leaves it: the verified caller's token beside `request.user`. */
type WithToken = FastifyRequest & { [kAccessToken]: string | null }

/** Where a request's token was looked for, named in the NO_TOKEN answer: the header alone unless configured. */
export const IN_HEADER = 'the Authorization header'

const SPACE = 0x20

/**
 * Where the token part of a Bearer header starts (scheme case-insensitive, RFC 6750 §2.1): just past
 * the space after the scheme, or the header's length for `Bearer` alone; -1 when the header is not a
 * Bearer one. Found by index, as every parse of request input here is: linear in the header's length.
 */
function bearerStart (header: string): number {
  // the usual spelling first: no lowercased copy of the scheme per request
  if (header.startsWith('Bearer ')) return 7
  if (header.length < 6 || (header.length > 6 && header.charCodeAt(6) !== SPACE) || header.slice(0, 6).toLowerCase() !== 'bearer') return -1
  return Math.min(header.length, 7)
}

/**
 * Takes the token from `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750 §2.1)
 * and checks its length: the only checks made before the token cache is asked.
 */
export function extractBearer (header: string | undefined, maxTokenLength: number): string {
  // Node keeps only the first of repeated Authorization headers: this is always a string or nothing
  if (header === undefined || header === '') throw new NoTokenError(IN_HEADER)
  let start = bearerStart(header)
  if (start === -1) throw new NoTokenError(IN_HEADER)
  // only spaces separate the scheme and the token (RFC 6750 §2.1: 1*SP), and only spaces around it are
  // dropped; a tab or any other whitespace left around or inside the token is a malformed header, never
  // trimmed into a valid one. Scanned by index: a regular-expression trim (/^ +| +$/g) is quadratic on
  // a run of spaces inside the header (about 250 ms for 16,000 of them)
  let end = header.length
  while (start < end && header.charCodeAt(start) === SPACE) start++
  while (end > start && header.charCodeAt(end - 1) === SPACE) end--
  const token = header.slice(start, end)
  if (token === '' || /\s/.test(token)) throw new BadRequestError()
  return bounded(token, maxTokenLength)
}

/** Whether the Authorization header is a Bearer one (well formed or not): then it alone is read. */
function isBearer (header: string | undefined): boolean {
  return header !== undefined && bearerStart(header) !== -1
}

/** Cookies of a request, by name. */
export type Cookies = Readonly<Record<string, string | undefined>>

/** A token given directly (not in a header): a non-empty string no longer than `maxTokenLength`. */
export function bounded (token: unknown, maxTokenLength: number, where = IN_HEADER): string {
  if (typeof token !== 'string' || token === '') throw new NoTokenError(where)
  if (token.length > maxTokenLength) throw new MalformedTokenError('it is longer than maxTokenLength')
  return token
}

/** Maps whatever verification threw to one of the plugin's answers: never a 500. */
export function toAuthError (err: unknown): AuthError {
  return isAuthError(err) ? err : new TokenInvalidError('the token could not be verified')
}

/**
 * Logs at warn an error that verification is not made to give (not one of the plugin's own):
 * a guard, since no input is known to cause one. The client still gets a 401.
 */
export function warnIfUnexpected (log: { warn (object: object, message: string): void }, err: unknown): void {
  if (isAuthError(err)) return
  log.warn({ err }, 'supabase-jwks: unexpected error while verifying a token')
}

/** The answer for whatever verification threw, logging at warn what it is not made to throw: shared by `authenticate` and `verify()`. */
export function answerFor (log: { warn (object: object, message: string): void }, err: unknown): AuthError {
  warnIfUnexpected(log, err)
  return toAuthError(err)
}

const DESCRIPTIONS: Record<string, string> = {
  FST_SUPABASE_JWKS_BAD_REQUEST: 'Malformed Authorization header',
  FST_SUPABASE_JWKS_MALFORMED_TOKEN: 'The token is malformed',
  FST_SUPABASE_JWKS_MALFORMED_COOKIE: 'The session cookie is malformed',
  FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED: 'The token algorithm is not allowed',
  FST_SUPABASE_JWKS_UNKNOWN_KID: 'The token was signed with an unknown key',
  FST_SUPABASE_JWKS_TOKEN_EXPIRED: 'The token has expired',
  FST_SUPABASE_JWKS_TOKEN_INVALID: 'The token is invalid',
  FST_SUPABASE_JWKS_TOKEN_REVOKED: 'The token has been revoked',
  FST_SUPABASE_JWKS_NO_SESSION: 'The token names no session that can be checked',
  FST_SUPABASE_JWKS_FORBIDDEN: 'The token does not grant access to this route'
}

/** The description of a 403 for want of scopes: the route's own requirement, not another one's. */
const SCOPE_DESCRIPTION = 'The token lacks a scope this route requires'

/**
 * The `WWW-Authenticate` challenge for an answer (RFC 6750 §3); fixed texts only, nothing from the
 * request. A refusal for want of scopes names them (`scope`, §3.1). With `resourceMetadata`, every
 * 401 and 403 names the metadata document (RFC 9728 §5.1; the MCP authorization spec asks it of
 * `insufficient_scope` too, where a client steps up), a 400 does not: it asks for a well-formed
 * request, not for a token from somewhere.
 */
export function challenge (realm: string, err: AuthError, resourceMetadata?: string): string {
  const metadata = resourceMetadata === undefined || err.statusCode === 400 ? '' : `, resource_metadata="${resourceMetadata}"`
  const base = `Bearer realm="${realm}"`
  if (err.code === 'FST_SUPABASE_JWKS_NO_TOKEN') return base + metadata
  const scope = (err as { scope?: string }).scope
  if (scope !== undefined) return `${base}, error="insufficient_scope", scope="${scope}", error_description="${SCOPE_DESCRIPTION}"${metadata}`
  const error = err.statusCode === 400 ? 'invalid_request' : err.statusCode === 403 ? 'insufficient_scope' : 'invalid_token'
  return `${base}, error="${error}", error_description="${DESCRIPTIONS[err.code]}"${metadata}`
}

/**
 * The challenges of one registration, each made once: by code, and for a refusal for want of
 * scopes by the scopes it names (one per route's requirement: as many as the app declares).
 */
export class Challenges {
  readonly #byCode = new Map<string, string>()
  readonly #byScope = new Map<string, string>()
  readonly #realm: string
  readonly #resourceMetadata: string | undefined

  constructor (config: Pick<Config, 'realm' | 'resourceMetadata'>) {
    this.#realm = config.realm
    this.#resourceMetadata = config.resourceMetadata?.url
  }

  of (err: AuthError): string {
    const scope = (err as { scope?: string }).scope
    const made = scope === undefined ? this.#byCode : this.#byScope
    const key = scope ?? err.code
    let text = made.get(key)
    if (text === undefined) {
      text = challenge(this.#realm, err, this.#resourceMetadata)
      made.set(key, text)
    }
    return text
  }
}

type User = Readonly<Record<string, unknown>>

/** The answers given so far, by `authenticate` and `verify()` alike: tokens accepted, and refusals by code. */
export class Answers {
  accepted = 0
  /** Requests let in by a publishable or secret key (requirement `auth`), and by `'none'`: no token accepted. */
  acceptedApiKeys = 0
  acceptedNone = 0
  readonly rejected = Object.fromEntries(Object.keys(errorCodes).map((code) => [code, 0])) as Record<ErrorCode, number>
}

/**
 * Asks the `isRevoked` option about verified claims: `true` is a 401, `false` lets them through,
 * anything else (a throw, another value) is a 503: never an accepted token.
 */
export async function checkRevoked (config: Config, claims: User, request: FastifyRequest | undefined, log: { warn (object: object, message: string): void }): Promise<void> {
  let revoked: unknown
  try {
    revoked = await config.isRevoked!(claims as unknown as SupabaseUser, request)
  } catch (err) {
    log.warn({ err }, 'supabase-jwks: isRevoked threw: answered 503')
    throw new RevocationUnavailableError()
  }
  if (revoked === true) throw new TokenRevokedError()
  if (revoked !== false) {
    log.warn({ answer: typeof revoked }, 'supabase-jwks: isRevoked did not answer a boolean: answered 503')
    throw new RevocationUnavailableError()
  }
}

/** Refuses (403) a verified user that the route's requirements do not let in. */
export async function authorize (user: User, request: FastifyRequest, required: Requirements): Promise<void> {
  if (required.aal === 'aal2' && user.aal !== 'aal2') throw new ForbiddenError('the route requires aal2 (multi-factor authentication)')
  if (required.anonymous === false && user.is_anonymous === true) throw new ForbiddenError('anonymous users are not allowed')
  if (required.issuers !== undefined && !required.issuers.includes(user.iss as string)) throw new ForbiddenError('the route does not accept tokens of this issuer')
  // a route without a scope requirement pays no lookup for it
  const scopes = required.scope === undefined ? null : requiredScopes(required)
  if (scopes !== null && !grants(user.scope, scopes.list)) {
    throw Object.assign(new ForbiddenError(`the token lacks a scope the route requires (${scopes.text})`), { scope: scopes.text })
  }
  if (required.check === undefined) return
  let allowed: unknown
  try {
    allowed = await required.check(user as unknown as SupabaseUser, request)
  } catch (err) {
    request.log.warn({ err }, 'supabase-jwks: a route check threw: answered 403')
    allowed = false
  }
  if (allowed !== true) throw new ForbiddenError('the route check refused the user')
}

/** The places a request's token is looked for, as the NO_TOKEN answer names them. */
function sources (cookieName: string | undefined, extractToken: boolean): string {
  const places = [IN_HEADER, ...(cookieName === undefined ? [] : [`the ${cookieName} cookie`]), ...(extractToken ? ['extractToken\'s result'] : [])]
  return places.length === 1 ? IN_HEADER : `${places.slice(0, -1).join(', ')} or ${places.at(-1)}`
}

/** Where a request's token comes from: `tokenOf(request)` for routes of users, and for the others (`auth`) `userTokenOf`. */
export interface TokenSource {
  (request: FastifyRequest): string | Promise<string>
  /**
   * The user token on a route that lets in other callers too: as `tokenOf`, but a bearer that is an
   * API key (`sb_…`, or the `apikey` header's own value: supabase-js sends its key so when nobody is
   * signed in, the legacy `anon` key too) is no user token, and none found is `undefined`, not an error.
   */
  userTokenOf (request: FastifyRequest, apikey: unknown): string | Promise<string | undefined> | undefined
  /** Every place looked in, as the NO_TOKEN answer names them. */
  where: string
}

/**
 * Takes the request's token: the `Authorization: Bearer` header when there is one; otherwise, as
 * configured, the session cookie, then `extractToken`. Without either option, the header alone.
 */
export function buildTokenSource (config: Config, cookiesOf: (request: FastifyRequest) => Cookies): TokenSource {
  const { maxTokenLength, cookieName, extractToken } = config
  /** Every place looked in, for the NO_TOKEN answer (the cookie's name is at most 128 characters). */
  const where = sources(cookieName, extractToken !== undefined)
  async function extracted (request: FastifyRequest): Promise<string> {
    let token: unknown
    try {
      token = await extractToken!(request)
    } catch (err) {
      // whatever it throws (even an error carrying one of the plugin's codes) is a 401, never a 500
      request.log.warn({ err }, 'supabase-jwks: extractToken threw: answered 401')
      throw new TokenInvalidError('extractToken failed')
    }
    if (token === undefined || token === null) throw new NoTokenError(where)
    return bounded(token, maxTokenLength, where)
  }
  /** The token from the session cookie, then `extractToken`, as configured. */
  function elsewhere (request: FastifyRequest): string | Promise<string> {
    if (cookieName !== undefined) {
      const token = tokenFromSessionCookie(cookiesOf(request), cookieName)
      if (token !== undefined) return bounded(token, maxTokenLength)
    }
    if (extractToken !== undefined) return extracted(request)
    throw new NoTokenError(where)
  }
  function tokenOf (request: FastifyRequest): string | Promise<string> {
    const header = request.headers.authorization
    if ((cookieName === undefined && extractToken === undefined) || isBearer(header)) return extractBearer(header, maxTokenLength)
    return elsewhere(request)
  }
  const absent = (err: unknown): undefined => {
    if (err instanceof NoTokenError) return undefined
    throw err
  }
  function userTokenOf (request: FastifyRequest, apikey: unknown): string | Promise<string | undefined> | undefined {
    const header = request.headers.authorization
    if (isBearer(header)) {
      const token = extractBearer(header, maxTokenLength)
      if (!token.startsWith('sb_') && token !== apikey) return token
    }
    // no exception thrown for the usual optional request (no token, nothing else configured)
    if (cookieName === undefined && extractToken === undefined) return undefined
    let token: string | Promise<string>
    try {
      token = elsewhere(request)
    } catch (err) {
      return absent(err)
    }
    return typeof token === 'string' ? token : token.catch(absent)
  }
  return Object.assign(tokenOf, { userTokenOf, where })
}

/** What `OptionError` puts before its detail: taken off, so that a route's answer says its own prefix. */
const OPTION_PREFIX = new OptionError('').message

/**
 * The requirements of a route whose `config.supabaseJwks` the plugin meets only now (declared before
 * it): checked as `onRoute` checks the others, or the message of the route's error when invalid.
 */
function routeRequirements (config: Config, request: FastifyRequest, own: unknown): Requirements | Invalid {
  if (typeof own !== 'object') return config.require
  const { method, url } = request.routeOptions
  const route = `${String(method)} ${url}`
  try {
    return { ...config.require, ...requirements(`config.supabaseJwks of ${route}`, own, config.knownIssuers, config.callers) }
  } catch (err) {
    // requirements() throws only OptionError: its detail, which names the route, for the log alone
    return { route, invalid: (err as Error).message.slice(OPTION_PREFIX.length) }
  }
}

/** Whether a route's requirements ask anything of its users: otherwise its requests pay nothing for them. */
function asksSomething (required: Requirements): boolean {
  return required.aal === 'aal2' || required.anonymous === false || required.check !== undefined || required.issuers !== undefined ||
    requiredScopes(required) !== null
}

/** A route whose requirements are invalid: the route (for its answers) and what is wrong (for the log). */
interface Invalid { route: string, invalid: string }

/**
 * Each route's requirements: the `require` option overridden key by key by the route's
 * `config.supabaseJwks`, worked out on the route's first request and kept (by its config object);
 * `null` when the route asks for nothing, which is then all a request pays. A route declared after
 * the plugin had them checked by `onRoute`; one declared before is checked here, and when invalid
 * keeps its error's message: logged once, answered 500 to every request.
 */
export function buildRequiredFor (config: Config): (request: FastifyRequest) => Requirements | null {
  const byRoute = new WeakMap<object, Requirements | Invalid | null>()
  return function requiredFor (request) {
    const routeConfig = request.routeOptions.config as { supabaseJwks?: unknown }
    let required = byRoute.get(routeConfig)
    if (required === undefined) {
      const merged = routeRequirements(config, request, routeConfig.supabaseJwks)
      required = 'invalid' in merged || asksSomething(merged) || admitsOthers(merged.auth) ? merged : null
      byRoute.set(routeConfig, required)
      if ('invalid' in merged) {
        request.log.error({ code: 'FST_SUPABASE_JWKS_ROUTE_CONFIG', route: merged.route, reason: merged.invalid },
          'supabase-jwks: a route declared before the plugin has invalid requirements: every request to it is answered 500 until it is fixed')
      }
    }
    if (required !== null && 'invalid' in required) throw new RouteConfigError(required.route)
    return required
  }
}

/**
 * The headers of an answer: `Retry-After` on a 503 (the time until the issuer's next fetch is
 * allowed; 1 s when a legacy token's call or `isRevoked` may answer at the next try), no header for a
 * server's mistake (it asks nothing of the client's credentials), else the `WWW-Authenticate` challenge.
 */
export function answerHeaders (challenges: Challenges, err: AuthError): Record<string, string> {
  if (err instanceof KeysUnavailableError) return { 'retry-after': String((err as { retryAfter?: number }).retryAfter) }
  if (err instanceof AuthUnavailableError || err instanceof RevocationUnavailableError || err instanceof SessionsUnavailableError) return { 'retry-after': '1' }
  // an API key is no HTTP authentication scheme: nothing to challenge with
  if (err instanceof RouteConfigError || err instanceof InvalidApiKeyError || err instanceof NoApiKeyError) return {}
  return { 'www-authenticate': challenges.of(err) }
}

/**
 * Verifies the request's token; decorates `request.user` (and `request.supabaseAuth`) or throws the
 * answer. A route whose `auth` lets in others than users is admitted by its plan (callers.ts).
 */
export function buildAuthenticate (config: Config, verifyToken: TokenVerifier, tokenOf: TokenSource, answers: Answers) {
  const challenges = new Challenges(config)
  const requiredFor = buildRequiredFor(config)
  const planOf = buildPlans(config.callers)
  /** The user of a route that admits others too: the same checks as below, in the same order. */
  async function acceptChecked (request: FastifyRequest, token: string, pending: ReturnType<TokenVerifier>, required: Requirements): Promise<void> {
    const claims = await pending
    if (config.isRevoked !== undefined) await checkRevoked(config, claims, request, request.log)
    await authorize(claims, request, required)
    request.user = claims as unknown as FastifyRequest['user'];
    (request as WithToken)[kAccessToken] = token
    answers.accepted++
  }
  /** As `acceptChecked`, at once (no promise) for a token the cache holds when there is nothing else to ask. */
  function acceptUser (request: FastifyRequest, token: string, required: Requirements): Promise<void> | undefined {
    const pending = verifyToken(token)
    if (pending instanceof Promise || config.isRevoked !== undefined || asksSomething(required)) return acceptChecked(request, token, pending, required)
    request.user = pending as unknown as FastifyRequest['user'];
    (request as WithToken)[kAccessToken] = token
    answers.accepted++
  }
  const admit = buildAdmission(tokenOf.userTokenOf, acceptUser, tokenOf.where)
  /** A caller let in by an API key or by `'none'`: no user. */
  function admitOther (request: FastifyRequest, caller: SupabaseAuth): void {
    (request as { user: unknown }).user = null;
    (request as WithToken)[kAccessToken] = null
    if (caller.mode === 'none') answers.acceptedNone++
    else answers.acceptedApiKeys++
  }
  return async function authenticate (request: FastifyRequest, reply: FastifyReply | undefined): Promise<void> {
    try {
      // the route first: a broken one is the app's mistake, answered alike whatever the request carries
      const required = requiredFor(request)
      if (required !== null && required.auth !== undefined) {
        const plan = planOf(required)
        if (plan !== null) {
          const admitted = admit(request, plan, required)
          const caller = admitted instanceof Promise ? await admitted : admitted
          if (caller !== USER) admitOther(request, caller)
          request.supabaseAuth = caller
          return
        }
      }
      const source = tokenOf(request)
      const token = typeof source === 'string' ? source : await source
      const pending = verifyToken(token)
      const claims = pending instanceof Promise ? await pending : pending
      if (config.isRevoked !== undefined) await checkRevoked(config, claims, request, request.log)
      if (required !== null) await authorize(claims, request, required)
      request.user = claims as unknown as FastifyRequest['user'];
      (request as WithToken)[kAccessToken] = token
      request.supabaseAuth = USER
      answers.accepted++
    } catch (error) {
      (request as { user: unknown }).user = null;
      (request as WithToken)[kAccessToken] = null
      request.supabaseAuth = null
      const err = answerFor(request.log, error)
      answers.rejected[err.code]++
      request.log.debug({ code: err.code, reason: err.message }, 'supabase-jwks: token rejected')
      // called from JavaScript without a reply (authenticate(request)): still the coded error, no headers
      if (reply === undefined) throw err
      reply.headers(answerHeaders(challenges, err))
      throw err
    }
  }
}
