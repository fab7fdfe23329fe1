// request.user is typed by @fastify/jwt (FastifyJWT): consumers of the declarations need its types loaded
/// <reference types="@fastify/jwt" preserve="true" />
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Answers, answerFor, bounded, buildAuthenticate, buildTokenSource, checkRevoked, kAccessToken, type Cookies } from './authenticate'
import { ActingUsageError, KeysUnavailableError, RegistrationError, errorCodes as codes } from './errors'
import { createSessionChecks, type SessionsOptions, type SessionStats } from './sessions'
import { combineStats, createResolvers, type KeyStats, type KeysUnavailable } from './keys'
import { createLegacyChecker, type LegacyStats } from './legacy'
import { normalizeOptions, routeRequirementsCheck, type IssuerOptions, type LegacyTokensOptions, type Requirements, type ResourceMetadataOptions, type SupabaseJwksOptions as Options } from './options'
import type { SupabaseAccessTokenClaims, SupabaseAmrEntry } from './claims'
import { TokenCache } from './token-cache'
import { createTokenVerifier } from './verify'
import { fastifyJwtOptions, type FastifyJwtExtraOptions } from './jwt'
import { resourceMetadataRoutes } from './resource-metadata'
import { hasScopes } from './scope'
import type { AuthMode, SupabaseAuth } from './callers'
import { registerSql, type Sql, type SqlStatements, type SqlRows, type SqlIdentifier } from './sql'
import type { PostgresOptions, SqlPool, SqlPoolClient, SupabaseClientOptions } from './acting-options'
import { registerSupabaseClients } from './supabase-client'

/** How many failed issuers a failed refresh() names. */
const MAX_NAMED = 3

async function fastifySupabaseJwks (fastify: FastifyInstance, options: Options): Promise<void> {
  if (fastify.hasDecorator('supabaseJwks')) {
    throw new RegistrationError('it is already registered in this context (or an enclosing one); register it once, ' +
      'or in separate encapsulated contexts (for example one per issuer)')
  }
  // Fastify refuses a decorator already on this instance: say so as the plugin, with the way out
  if (Object.hasOwn(fastify, 'authenticate')) {
    throw new RegistrationError('fastify.authenticate is already decorated in this context (by the app or another plugin; ' +
      '@fastify/jwt\'s own recipe decorates one): give yours another name, or register this plugin in an encapsulated context')
  }
  const config = normalizeOptions(options)
  const resolvers = createResolvers(config, fastify.log)
  if (config.legacy?.insecure) {
    fastify.log.warn({ userUrl: config.legacy.userUrl.href }, 'supabase-jwks: legacy tokens are checked over plain http')
  }
  const legacy = config.legacy && createLegacyChecker(config.issuers[0]!, config.tokenCache, config.legacy, fastify.log)
  fastify.addHook('onClose', async function closeSupabaseJwks () {
    await Promise.all(resolvers.map((keys) => keys.close()))
    await legacy?.close()
  })
  /**
   * A refresh() of several issuers that failed for some: one KeysUnavailableError whose cause names
   * them (the first few, bounded) with their causes, and the longest Retry-After (every retry is then due).
   */
  function refreshFailure (failed: ReadonlyArray<{ error: KeysUnavailable, issuer: string | undefined }>): KeysUnavailable {
    const named = failed.slice(0, MAX_NAMED).map(({ error, issuer }) => `${String(issuer).slice(0, 200)}: ${error.cause.message}`)
    if (failed.length > MAX_NAMED) named.push(`and ${failed.length - MAX_NAMED} more`)
    const cause = new Error(`the JWKS of ${failed.length} of ${resolvers.length} issuers could not be fetched: ${named.join('; ')}`)
    return Object.assign(new KeysUnavailableError({ cause }), { retryAfter: Math.max(...failed.map(({ error }) => error.retryAfter)) }) as KeysUnavailable
  }

  /** Key stats: the one issuer's, or with several the sums and each issuer's own. */
  function keyStats (): KeyStats & { issuers?: Record<string, KeyStats> } {
    if (!config.routed) return resolvers[0]!.stats()
    const each = resolvers.map((keys) => keys.stats())
    return { ...combineStats(each), issuers: Object.fromEntries(config.issuers.map((issuer, index) => [issuer.issuer![0]!, each[index]!])) }
  }

  /*
   * @fastify/jwt types `request.user` (FastifyJWT, below), and when the app registers it for its own
   * tokens, its decorator declares it. The plugin registers nothing of it and declares neither `user` nor
   * `jwt`: @fastify/jwt without a namespace decorates both unconditionally, so either one declared here
   * would make an app's own @fastify/jwt registered after this plugin throw FST_ERR_DEC_ALREADY_PRESENT
   * out of its plugin function, which avvio does not catch (the process exits).
   */
  const tokens = new TokenCache(config.tokenCache)
  // a token's session is checked after its verification, token-cache hits included (option sessions)
  const sessions = createSessionChecks(fastify, config)
  const verified = createTokenVerifier(config, resolvers, tokens, fastify.log, legacy)
  const verifyToken = sessions === undefined ? verified : sessions.after(verified)
  // the session cookie is read through @fastify/cookie: request.cookies once its hook has run, else its parser
  let parseCookie: ((header: string) => Cookies) | undefined
  if (config.cookieName !== undefined) {
    fastify.addHook('onReady', async function checkSupabaseJwksCookie () {
      parseCookie = (fastify as unknown as { parseCookie?: (header: string) => Cookies }).parseCookie
      if (typeof parseCookie !== 'function') {
        throw new RegistrationError('the cookie option reads the session cookie through @fastify/cookie, which is not ' +
          'registered in the same or an enclosing context: add app.register(require(\'@fastify/cookie\')) (npm install @fastify/cookie)')
      }
    })
  }
  const tokenOf = buildTokenSource(config, function cookiesOf (request) {
    return (request as { cookies?: Cookies | null }).cookies ?? parseCookie!(request.headers.cookie ?? '')
  })
  const answers = new Answers()
  const authenticate = buildAuthenticate(config, verifyToken, tokenOf, answers)
  // warm start: the first request finds the keys held; a JWKS down now is logged, and start-up goes on
  if (config.warmStart) {
    fastify.addHook('onReady', async function warmSupabaseJwks () {
      await Promise.all(resolvers.map((keys) => keys.warm()))
    })
  }
  fastify.decorate('authenticate', authenticate)
  // who called (requirement auth): the plugin's own name, set by authenticate, null until then
  fastify.decorateRequest('supabaseAuth', null)
  fastify.decorateRequest(kAccessToken, null)
  // acting as the caller: only what is configured is decorated
  if (config.postgres !== undefined) registerSql(fastify, config.postgres)
  const supabaseClients = config.supabase !== undefined || config.issuers.some((issuer) => issuer.supabase !== undefined) ? registerSupabaseClients(fastify, config) : undefined
  fastify.decorate('supabaseJwks', {
    verify: async (token: string) => {
      try {
        const claims = await verifyToken(bounded(token, config.maxTokenLength, 'verify()\'s argument'))
        if (config.isRevoked !== undefined) await checkRevoked(config, claims, undefined, fastify.log)
        answers.accepted++
        return claims as unknown as fastifySupabaseJwks.SupabaseUser
      } catch (error) {
        const err = answerFor(fastify.log, error)
        answers.rejected[err.code]++
        throw err
      }
    },
    watchSession: (user: fastifySupabaseJwks.SupabaseUser, onEnded: (err: Error) => void) => {
      if (sessions === undefined) throw new ActingUsageError('watchSession() needs the option sessions')
      if (user === null || typeof user !== 'object') throw new ActingUsageError('watchSession(user, onEnded): user must be the claims verify() resolved to')
      return sessions.watch(user as unknown as Readonly<Record<string, unknown>>, onEnded)
    },
    refresh: async () => {
      tokens.clear()
      const outcomes = await Promise.all(resolvers.map((keys) => keys.refresh()))
      const failed = outcomes.flatMap((error, index) => error === undefined ? [] : [{ error, issuer: config.issuers[index]!.issuer?.[0] }])
      if (failed.length === 0) return
      throw config.routed ? refreshFailure(failed) : failed[0]!.error
    },
    stats: () => ({
      ...keyStats(),
      cachedTokens: tokens.size,
      tokenCacheHits: tokens.hits,
      tokenCacheMisses: tokens.misses,
      accepted: answers.accepted,
      acceptedApiKeys: answers.acceptedApiKeys,
      acceptedNone: answers.acceptedNone,
      rejected: { ...answers.rejected },
      ...legacy?.stats(),
      ...supabaseClients?.stats(),
      ...(sessions === undefined ? {} : { sessions: sessions.stats() })
    })
  })

  fastify.addHook('onRoute', routeRequirementsCheck(config))
  if (config.resourceMetadata !== undefined) fastify.register(resourceMetadataRoutes(config.resourceMetadata))

  if (config.hook) {
    fastify.addHook(config.hook, function supabaseJwksHook (request: FastifyRequest, reply: FastifyReply) {
      if ((request.routeOptions.config as { supabaseJwks?: unknown }).supabaseJwks === false) return Promise.resolve()
      return authenticate(request, reply)
    })
  }
}

// fastify-plugin marks the function in place and sets `.default` and `.fastifySupabaseJwks` on it:
// with `export =` below, require() and import both get the plugin itself
fp(fastifySupabaseJwks, { fastify: '5.x', name: 'fastify-supabase-jwks' })
Object.assign(fastifySupabaseJwks, { fastifyJwtOptions, hasScopes })

declare namespace fastifySupabaseJwks {
  export type SupabaseJwksOptions = Options
  export type { SupabaseAccessTokenClaims, SupabaseAmrEntry, KeyStats, LegacyStats, LegacyTokensOptions, IssuerOptions, Requirements, ResourceMetadataOptions, AuthMode, SupabaseAuth }
  export type { PostgresOptions, SqlPool, SqlPoolClient, SupabaseClientOptions, Sql, SqlStatements, SqlRows, SqlIdentifier }
  export type { SessionsOptions, SessionStats }
  /**
   * Your supabase-js client type, by declaration merging, so that `request.supabase` and
   * `fastify.supabaseAdmin` are typed with your project's `Database` types:
   * ```ts
   * import type { SupabaseClient } from '@supabase/supabase-js'
   * declare module 'fastify-supabase-jwks' {
   *   interface SupabaseTypes { client: SupabaseClient<Database> }
   * }
   * ```
   * Without it they are `SupabaseClientLike`: the plugin's types do not require supabase-js.
   */
  export interface SupabaseTypes {}
  /** What `request.supabase` is typed as until `SupabaseTypes` gives your client type. */
  export interface SupabaseClientLike {
    from (relation: string): unknown
    rpc (fn: string, args?: object, options?: object): unknown
    schema (schema: string): unknown
    readonly storage: unknown
    readonly functions: unknown
  }
  /** `request.supabase`'s type: `SupabaseTypes['client']` when merged, else `SupabaseClientLike`. */
  export type SupabaseClientType = SupabaseTypes extends { client: infer Client } ? Client : SupabaseClientLike
  /**
   * What `fastify.supabaseJwks.stats()` returns; the legacy counts only while `legacyTokens` is on.
   * With the `issuers` option, the key fields add up every issuer's (see `issuers` for each).
   */
  export interface Stats extends KeyStats, Partial<LegacyStats> {
    /**
     * Only with the `issuers` option: each issuer's key stats, by its `iss`. The top-level counts
     * are their sums, `lastSuccessAt` / `lastFailureAt` the latest, `nextRetryAt` the earliest;
     * `state` is `unavailable` only when no issuer can verify, `stale` when some issuer is stale or
     * unavailable, `refreshing` when some refreshes, else `fresh`.
     */
    issuers?: Record<string, KeyStats>
    /** Verified tokens held by the token cache now. */
    cachedTokens: number
    /** Verifications answered from the token cache. */
    tokenCacheHits: number
    /** Verifications the token cache could not answer (the token was then verified in full, or refused). */
    tokenCacheMisses: number
    /** Tokens accepted so far, by `authenticate` (route requirements met) and `verify()`. */
    accepted: number
    /** Requests let in by a publishable or secret key so far (requirement `auth`): not counted in `accepted`. */
    acceptedApiKeys: number
    /** Requests let in with no credential by the mode `'none'` so far (requirement `auth`): not counted in `accepted`. */
    acceptedNone: number
    /** Refusals so far by code (every code present, from 0), by `authenticate` and `verify()`. */
    rejected: Record<ErrorCode, number>
    /**
     * Only with the option `supabase`: the users' `request.supabase` clients held now (by token, each
     * until its `exp`; at most `tokenCache` and 1000).
     */
    supabaseClients?: number
    /** Only with the option `sessions`: the sessions held and the checks made (every issuer's, summed). */
    sessions?: SessionStats
  }
  /**
   * Your own claims (for example from a custom access token hook), added by declaration merging:
   * ```ts
   * declare module 'fastify-supabase-jwks' {
   *   interface SupabaseCustomClaims { tenant_id: string }
   * }
   * ```
   */
  export interface SupabaseCustomClaims {}
  /** `fastify.authenticate`: verifies the request's bearer token and sets `request.user`, or throws the answer. */
  export type Authenticate = (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  /** What `request.user` holds after `authenticate` succeeded. */
  export type SupabaseUser = SupabaseAccessTokenClaims & SupabaseCustomClaims
  /** The codes a request can be answered with, and their HTTP statuses. */
  export type ErrorCode = keyof typeof codes
  /** The plugin's controls, at `fastify.supabaseJwks`. */
  export interface SupabaseJwksDecorator {
    /**
     * Verifies a token outside a request's `Authorization` header (a WebSocket's first message, a
     * job): the same checks and token cache as `authenticate`. Resolves to the frozen claims, or
     * rejects with the coded error a request would get (`code`, `statusCode`).
     */
    verify (token: string): Promise<SupabaseUser>
    /**
     * Fetches the JWKS now, ignoring the cache lifetime and the cooldown (Supabase asks verifiers
     * to offer a purge), and empties the token cache. Resolves once a key set was fetched (a key it
     * no longer lists stops verifying then). Rejects when the fetch failed, with the code
     * `FST_SUPABASE_JWKS_KEYS_UNAVAILABLE` (`statusCode` 503, `retryAfter` in seconds, and the
     * failure in `cause`: a status, a network code or a timeout, never the server's body): the held
     * keys keep verifying meanwhile, and the fetch is retried in the background with the backoff
     * (after `retryAfter`, then doubling up to `cooldown`), with no further call, until one
     * succeeds. With several issuers, every issuer is fetched, and it rejects if any failed: the
     * `cause` names them (the first three) and `retryAfter` is the longest of their waits. Await it
     * or `.catch()` it: a floating call that fails is an unhandled rejection. Keys given inline alone
     * (`jwks` without a URL) have nothing to fetch: it resolves at once.
     */
    refresh (): Promise<void>
    /**
     * With the option `sessions`: calls `onEnded` (with the `FST_SUPABASE_JWKS_TOKEN_REVOKED` error) when
     * a check finds the session of `user` (claims from `verify()`) ended: signed out, its user deleted or
     * banned. The session is read every `every` seconds while watched, whatever its tokens' `exp`;
     * `onEnded` is called at most once. Returns the function that stops watching: call it when the
     * socket closes. Throws `FST_SUPABASE_JWKS_USAGE` without the option for the user's issuer, and what
     * `verify()` would answer for the session (`FST_SUPABASE_JWKS_NO_SESSION`, `FST_SUPABASE_JWKS_TOKEN_REVOKED`).
     */
    watchSession (user: SupabaseUser, onEnded: (err: Error) => void): () => void
    /** Activity so far: JWKS fetches, failures, keys held (per issuer too, with `issuers`), and the token cache's size and hits. */
    stats (): Stats
  }
  export type { FastifyJwtExtraOptions }
  /**
   * @fastify/jwt's registration options for Supabase tokens, verified with the project's JWKS by
   * `kid` through the plugin's key resolver and checks: for apps already on @fastify/jwt.
   * `app.register(require('@fastify/jwt'), fastifyJwtOptions({ supabaseUrl }))`
   */
  export const fastifyJwtOptions: typeof import('./jwt').fastifyJwtOptions
  /**
   * Whether verified claims grant every scope given (their space-delimited `scope` claim, as Supabase
   * Auth's OAuth 2.1 server issues it), as a route's `scope` requirement checks it: for the claims of
   * `fastify.supabaseJwks.verify()` (a WebSocket, a job). `hasScopes(user, ['mcp:tools', 'read'])`.
   */
  export const hasScopes: typeof import('./scope').hasScopes
  export { fastifySupabaseJwks as default, fastifySupabaseJwks }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Verifies the bearer token: use as a route's `preHandler` (or `onRequest`). */
    authenticate: fastifySupabaseJwks.Authenticate
    supabaseJwks: fastifySupabaseJwks.SupabaseJwksDecorator
    /**
     * A supabase-js client with the secret key (option `supabase.secretKey`): it bypasses Row Level
     * Security, so every use is written where it can be seen. Only on the instance, never per request.
     */
    supabaseAdmin: fastifySupabaseJwks.SupabaseClientType
  }
  interface FastifyRequest {
    /**
     * Who called, once `authenticate` let the request in: `{ mode: 'user' }` (then `request.user` holds
     * the claims), `{ mode: 'publishable' | 'secret', keyName }` or `{ mode: 'none' }` (then
     * `request.user` is `null`) on routes whose requirement `auth` admits them. `null` before
     * `authenticate` ran, after it refused, and on routes it does not guard.
     */
    supabaseAuth: fastifySupabaseJwks.SupabaseAuth | null
    /**
     * A supabase-js client as the caller (option `supabase`): the caller's verified access token and the
     * publishable key, so PostgREST, Storage and RPC calls run under Row Level Security as that user; the
     * anonymous client on a route where no user authenticated. Made when first read; never holds the
     * secret key, never persists or refreshes a session.
     */
    readonly supabase: fastifySupabaseJwks.SupabaseClientType
    /**
     * SQL as the caller under Row Level Security (option `postgres`): `` await request.sql`select * from
     * notes where id = ${id}` `` runs in a transaction with the role (`authenticated`, or `anon` with no
     * user) and the claims set as PostgREST sets them.
     */
    readonly sql: fastifySupabaseJwks.Sql
  }
  interface FastifyContextConfig {
    /**
     * `false` exempts the route from the `hook` option's authentication; an object sets what its
     * users must satisfy (overriding the `require` option key by key): otherwise 403.
     */
    supabaseJwks?: boolean | fastifySupabaseJwks.Requirements
  }
}

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: fastifySupabaseJwks.SupabaseUser
    user: fastifySupabaseJwks.SupabaseUser
  }
}

export = fastifySupabaseJwks
