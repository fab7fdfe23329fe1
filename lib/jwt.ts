import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { FastifyJWTOptions } from '@fastify/jwt'
import { answerFor, answerHeaders, authorize, bounded, buildRequiredFor, Challenges, checkRevoked } from './authenticate'
import { FastifyJwtUsageError, OptionError, RegistrationError, type AuthError } from './errors'
import { readInlineKeySet, type CachedKey } from './key-set'
import { createResolvers } from './keys'
import { normalizeOptions, routeRequirementsCheck, type SupabaseJwksOptions } from './options'
import { checkStructure, createKeyFinder, jsonObject } from './verify'

/*
 * @fastify/jwt verifying Supabase tokens with the project's keys: `fastifyJwtOptions()` gives
 * @fastify/jwt its registration options, so that an app on `secret: SUPABASE_JWT_SECRET` keeps its
 * `request.jwtVerify()` and `request.user`. The plugin's own path does every check before the
 * signature, in three places @fastify/jwt offers:
 *   - `verify.extractToken`: the token is looked up by @fastify/jwt itself (its header and cookie
 *     rules and codes), then checked to be a compact JWS of JSON objects, so that fast-jwt's decoder,
 *     which runs next, cannot fail with an error @fastify/jwt does not map (a 500);
 *   - `secret.public`, a key function: given the token decoded whole (`decode.complete`, so exactly
 *     the token fast-jwt verifies next), the header, the issuer and the claims (verify.ts steps 2-4),
 *     then the key named by `kid` from the plugin's resolver (its cache, bounds and outage rules),
 *     handed back as a PEM string exported once per key: @fastify/jwt keeps one fast-jwt verifier per
 *     key string, so a request builds none;
 *   - `trusted`: after fast-jwt checked the signature, `isRevoked` and the route requirements.
 * `fastify.jwt.verify()`, which cannot answer synchronously with a key function, is replaced as soon
 * as @fastify/jwt has loaded by one that throws.
 * Every answer of these carries its `WWW-Authenticate` (or `Retry-After`) in `headers`, which
 * Fastify's error handling sets on the reply; what @fastify/jwt decides itself (no token, a bad
 * signature) keeps its codes.
 */

type JwtVerifyOptions = NonNullable<FastifyJWTOptions['verify']>

/**
 * @fastify/jwt's options that `fastifyJwtOptions` takes beside the plugin's: all but `secret` and
 * `sign` (this registration verifies only), `decode` without `complete`, and of `verify` only what
 * the plugin does not set.
 */
export type FastifyJwtExtraOptions = Omit<FastifyJWTOptions, 'secret' | 'sign' | 'decode' | 'verify'> & {
  decode?: Omit<NonNullable<FastifyJWTOptions['decode']>, 'complete'>
  verify?: Pick<JwtVerifyOptions, 'extractToken' | 'allowedSub'> & {
    /** @fastify/jwt reads the token from its `cookie` only, never from the `Authorization` header. */
    onlyCookie?: boolean
  }
}

/** Why only users get in here: `auth` modes other than `'user'`, and the API keys they take, are refused. */
const API_KEYS = '@fastify/jwt verifies user tokens only: a route that lets in API keys or callers without a credential (requirement auth) ' +
  'needs the plugin\'s own authenticate'

/** The plugin's options that have no meaning here, and what to use instead. */
const NOT_HERE: Record<string, string> = {
  cookie: 'read @supabase/ssr session cookies with the plugin\'s own authenticate (@fastify/jwt\'s cookie option reads a cookie holding the token itself)',
  extractToken: 'give @fastify/jwt\'s verify.extractToken in the second argument',
  hook: 'call request.jwtVerify() in your own hook',
  legacyTokens: 'the migration window needs the plugin\'s own authenticate',
  resourceMetadata: 'the document is served by the plugin\'s own registration, and @fastify/jwt\'s own 401s (no token, a bad signature) ' +
    'carry no challenge to name it in: register the plugin and protect the routes OAuth clients call with its authenticate',
  publishableKeys: 'routes that take API keys (requirement auth) need the plugin\'s own authenticate',
  secretKeys: 'routes that take API keys (requirement auth) need the plugin\'s own authenticate',
  sessions: 'the sessions check needs the plugin\'s own authenticate (or verify())',
  tokenCache: 'the token cache needs the plugin\'s own authenticate (@fastify/jwt checks every token\'s signature here)'
}

/*
 * The verify options (@fastify/jwt's and fast-jwt's) an app may still give. Every other is refused:
 * those the plugin's options set (key, algorithms, issuer, audience, claims, clock) would loosen what
 * it checks or disagree with it; fast-jwt's token cache (cache, cacheTTL, errorCacheTTL) would keep
 * accepting a token after its key left the JWKS, or repeat a 503; and fast-jwt checks the rest
 * (checkTyp, allowedJti, allowedNonce, maxAge, allowedCritHeaders) with errors @fastify/jwt does not
 * map, so that a genuine token would get a 500.
 */
const APP_VERIFY = new Set(['extractToken', 'onlyCookie', 'allowedSub'])
const PLUGIN_VERIFY = new Set(['key', 'algorithms', 'allowedIss', 'allowedAud', 'requiredClaims', 'clockTolerance', 'clockTimestamp',
  'ignoreExpiration', 'ignoreNotBefore', 'complete'])

function fail (message: string): never {
  throw new OptionError(message)
}

/** Checks the second argument of `fastifyJwtOptions`. */
function extraOptions (jwt: unknown): FastifyJwtExtraOptions {
  if (jwt === null || typeof jwt !== 'object') fail('fastifyJwtOptions\'s second argument (@fastify/jwt options) must be an object')
  const extra = jwt as Record<string, unknown>
  if ('secret' in extra) fail('secret is what fastifyJwtOptions gives @fastify/jwt (the project\'s public keys): remove it')
  if ('sign' in extra) {
    fail('this @fastify/jwt registration verifies Supabase tokens only: sign your own tokens with another registration (a namespace)')
  }
  const decode = extra.decode
  if (decode !== undefined && (decode === null || typeof decode !== 'object' || 'complete' in decode)) {
    fail('decode must be an object without complete (the key function needs the whole token: request.jwtDecode() gives { header, payload, signature, input })')
  }
  const verify = extra.verify
  if (verify !== undefined) {
    if (verify === null || typeof verify !== 'object') fail('verify must be an object')
    const refused = Object.keys(verify).find((name) => !APP_VERIFY.has(name))
    if (refused !== undefined) {
      fail(PLUGIN_VERIFY.has(refused)
        ? `verify.${refused} is set from the plugin's options (algorithms, issuer, audience, clockTolerance): remove it`
        : `verify.${refused} is not supported with fastifyJwtOptions (verify takes extractToken, onlyCookie and allowedSub)`)
    }
    const extract = (verify as { extractToken?: unknown }).extractToken
    if (extract !== undefined && typeof extract !== 'function') fail('verify.extractToken must be a function')
  }
  if (extra.trusted !== undefined && typeof extra.trusted !== 'function') fail('trusted must be a function')
  if (extra.namespace !== undefined && typeof extra.namespace !== 'string') fail('namespace must be a string')
  return extra as FastifyJwtExtraOptions
}

/** A key as @fastify/jwt caches verifiers for it: its PEM text, exported once per key. */
const pems = new WeakMap<CachedKey, string>()
function pemOf (key: CachedKey): string {
  let pem = pems.get(key)
  if (pem === undefined) {
    pem = key.publicKey!.export({ type: 'spki', format: 'pem' }) as string
    pems.set(key, pem)
  }
  return pem
}

/** What this registration uses of @fastify/jwt's decorator (`fastify.jwt`, or `fastify.jwt[namespace]`). */
interface Decorator {
  lookupToken (request: FastifyRequest, options?: Record<string, unknown>): string
  verify: (...args: unknown[]) => unknown
  options?: { verify?: { extractToken?: unknown } }
}

/**
 * `fastify.jwt.verify()` of this registration. @fastify/jwt's would return a Promise whenever the key
 * is a function: for a token fast-jwt cannot decode (`'garbage'`, a number) even before the key
 * function is asked, a rejected Promise, which `if (fastify.jwt.verify(t))` takes for true and
 * `fastify.jwt.verify(t, callback)` hands its callback as the result, without an error. Thrown
 * synchronously, whatever the token: never an accepted one.
 */
function refuseVerify (): never {
  throw new FastifyJwtUsageError('fastify.jwt.verify() would return a Promise, which an `if` takes for true: ' +
    'verify with request.jwtVerify(), or, outside a request, with the plugin\'s fastify.supabaseJwks.verify()')
}

/**
 * @fastify/jwt's registration options for the plugin's issuers: `request.jwtVerify()` then verifies
 * Supabase tokens with the project's JWKS, by `kid`, with the plugin's checks and answers.
 *
 * ```js
 * app.register(require('@fastify/jwt'), fastifyJwtOptions({ supabaseUrl: process.env.SUPABASE_URL }))
 * ```
 *
 * The plugin's options are checked here (a mistake throws at once); `jwt` takes @fastify/jwt's other
 * options (`namespace`, `formatUser`, `trusted`, `cookie`, `messages`, `decode`, `verify` but for what
 * the plugin sets). It returns a function Fastify calls with the registering instance: the key
 * resolvers belong to that instance, fetch the keys at its `ready()` (the `warmStart` option), and
 * close with it. Give it to @fastify/jwt's own registration (not to a plugin that registers
 * @fastify/jwt itself: start-up fails). Nothing is decorated by the plugin: @fastify/jwt decorates as it
 * documents, but `fastify.jwt.verify()` throws FST_SUPABASE_JWKS_FASTIFY_JWT_USAGE.
 */
export function fastifyJwtOptions (options: SupabaseJwksOptions, jwt: FastifyJwtExtraOptions = {}): (instance: FastifyInstance) => FastifyJWTOptions {
  const config = normalizeOptions(options, API_KEYS)
  // keys given inline are judged here too: thrown from the function Fastify calls below, a refusal would escape the registration
  for (const issuer of config.issuers) if (issuer.jwks !== undefined) readInlineKeySet(issuer.jwks, issuer.algorithms)
  // sessions in an entry of issuers too (its top-level form goes with one issuer only)
  const unavailable = Object.keys(NOT_HERE).find((name) => (options as Record<string, unknown>)[name] !== undefined) ??
    (config.issuers.some((issuer) => issuer.sessions !== undefined) ? 'sessions' : undefined)
  if (unavailable !== undefined) fail(`${unavailable} is not available through @fastify/jwt: ${NOT_HERE[unavailable]}`)
  const extra = extraOptions(jwt)
  const { namespace, trusted: ownTrusted } = extra
  const ownExtract = extra.verify?.extractToken
  const issuers = config.issuers
  const every = <T> (pick: (issuer: typeof issuers[number]) => T[] | undefined): T[] | undefined =>
    issuers.every((issuer) => pick(issuer) !== undefined) ? [...new Set(issuers.flatMap((issuer) => pick(issuer)!))] : undefined
  const allowedIss = every((issuer) => issuer.issuer)
  const allowedAud = every((issuer) => issuer.audience)
  const challenges = new Challenges(config)

  /** The answer, with the headers Fastify sets from it. */
  function answer (log: FastifyRequest['log'], err: unknown): AuthError {
    const answered = answerFor(log, err)
    return Object.assign(answered, { headers: answerHeaders(challenges, answered) })
  }

  return function supabaseJwtOptions (instance) {
    const resolvers = createResolvers(config, instance.log)
    instance.addHook('onClose', async function closeSupabaseJwks () {
      await Promise.all(resolvers.map((keys) => keys.close()))
    })
    if (config.warmStart) {
      instance.addHook('onReady', async function warmSupabaseJwks () {
        await Promise.all(resolvers.map((keys) => keys.warm()))
      })
    }
    instance.addHook('onRoute', routeRequirementsCheck(config))
    const keyFor = createKeyFinder(config, resolvers, instance.log)
    const requiredFor = buildRequiredFor(config)
    /** This registration's decorator: set once @fastify/jwt has loaded (before any request). */
    let decorator: Decorator
    /** The token `extractToken` checked, by request: the only one the key function answers for. */
    const checked = new WeakMap<FastifyRequest, string>()
    /** The claims of the token the key function answered for (decoded by @fastify/jwt), by request. */
    const claimsOf = new WeakMap<FastifyRequest, Record<string, unknown>>()

    // @fastify/jwt is the plugin loading now: `after` runs once it has loaded (never if it failed), before
    // any plugin registered after it, so that one keeping `fastify.jwt.verify` keeps `refuseVerify`
    instance.after(async function guardFastifyJwtVerify () {
      const jwt = instance.jwt as unknown as Record<string, unknown> | undefined
      const found = (namespace === undefined ? jwt : jwt?.[namespace]) as Decorator | undefined
      if (found?.options?.verify?.extractToken !== extractToken) {
        // given to another plugin, which registers @fastify/jwt itself (or not at all): not decorated yet, here
        throw new RegistrationError('fastifyJwtOptions() must be @fastify/jwt\'s own registration options: ' +
          'app.register(require(\'@fastify/jwt\'), fastifyJwtOptions({ supabaseUrl })), not another plugin\'s')
      }
      decorator = found
      found.verify = refuseVerify
    })

    function extractToken (request: FastifyRequest): string {
      try {
        // @fastify/jwt's own lookup (header, then its cookie option) with its own codes, or the app's extractToken
        const found = ownExtract === undefined ? decorator.lookupToken(request, { extractToken: null }) : ownExtract(request)
        // nothing found: @fastify/jwt answers it (400 FST_JWT_BAD_REQUEST)
        if (found === undefined || found === null || found === '') return found as unknown as string
        const token = bounded(found, config.maxTokenLength)
        // a compact JWS of JSON objects: fast-jwt's decoder, next, then fails on nothing
        checkStructure(token)
        const first = token.indexOf('.')
        jsonObject(token.slice(0, first), 'header')
        jsonObject(token.slice(first + 1, token.lastIndexOf('.')), 'payload')
        checked.set(request, token)
        return token
      } catch (err) {
        // @fastify/jwt's own answers (no token, a malformed header or cookie) go through as they are
        const code = (err as { code?: unknown }).code
        if (typeof code === 'string' && code.startsWith('FST_JWT_')) throw err
        throw answer(request.log, err)
      }
    }

    /**
     * The key function, called by @fastify/jwt's request path as (request, decoded, callback): fast-jwt
     * calls it directly only from `fastify.jwt.verify()`, which is `refuseVerify` here.
     */
    function supabaseJwksKey (request: FastifyRequest, decoded: unknown): Promise<string> {
      // decode.complete: the token exactly as extractToken checked it and fast-jwt will verify it. Local
      // options of request.jwtVerify() can change that (decode without complete, another verify.extractToken)
      const { input, signature } = decoded as { input?: unknown, signature?: unknown }
      const token = `${String(input)}.${String(signature)}`
      if (typeof input !== 'string' || typeof signature !== 'string' || checked.get(request) !== token) {
        return Promise.reject(new FastifyJwtUsageError('the token was not decoded whole as the registration\'s extractToken ' +
          'gave it (request.jwtVerify() was given decode or extractToken options): give options in fastifyJwtOptions\'s second argument'))
      }
      claimsOf.set(request, (decoded as { payload: Record<string, unknown> }).payload)
      try {
        const key = keyFor(token)
        if (!(key instanceof Promise)) return Promise.resolve(pemOf(key))
        return key.then(pemOf, (err: unknown) => { throw answer(request.log, err) })
      } catch (err) {
        return Promise.reject(answer(request.log, err))
      }
    }

    /**
     * After the signature: `isRevoked` and the route requirements, given the claims the key function
     * checked, then the app's own `trusted`. fast-jwt's result must be those claims (their `exp` and
     * `sub`, which the checks required): with `request.jwtVerify({ complete: true })` it is the whole
     * token, whose top level has neither, and which the app would read as the user.
     */
    function trusted (request: FastifyRequest, claims: Record<string, unknown>): boolean | Promise<boolean> {
      const verified = claimsOf.get(request)
      if (verified === undefined || claims.exp !== verified.exp || claims.sub !== verified.sub) {
        return Promise.reject(new FastifyJwtUsageError('request.jwtVerify() was given options that change its result (complete): ' +
          'call it without options, and read the header with request.jwtDecode()'))
      }
      let required
      try {
        required = requiredFor(request)
      } catch (err) {
        return Promise.reject(answer(request.log, err))
      }
      if (config.isRevoked === undefined && required === null && ownTrusted === undefined) return true
      return (async () => {
        try {
          if (config.isRevoked !== undefined) await checkRevoked(config, verified, request, request.log)
          if (required !== null) await authorize(verified, request, required)
        } catch (err) {
          throw answer(request.log, err)
        }
        return ownTrusted === undefined ? true : ownTrusted(request, claims)
      })()
    }

    return {
      ...extra,
      secret: { public: supabaseJwksKey },
      decode: { ...extra.decode, complete: true },
      verify: {
        ...extra.verify,
        algorithms: [...new Set(issuers.flatMap((issuer) => issuer.algorithms))],
        ...(allowedIss === undefined ? {} : { allowedIss }),
        ...(allowedAud === undefined ? {} : { allowedAud }),
        requiredClaims: ['exp', 'sub', ...(allowedIss === undefined ? [] : ['iss']), ...(allowedAud === undefined ? [] : ['aud'])],
        clockTolerance: Math.max(...issuers.map((issuer) => issuer.clockToleranceMs)),
        extractToken
      },
      trusted
    } as FastifyJWTOptions
  }
}
