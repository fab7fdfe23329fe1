import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { FastifyJWTOptions } from '@fastify/jwt'
import { answerFor, answerHeaders, authorize, bounded, buildRequiredFor, checkRevoked } from './authenticate'
import { FastifyJwtUsageError, OptionError, type AuthError } from './errors'
import { createResolvers, type CachedKey } from './keys'
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
 * Every answer of these carries its `WWW-Authenticate` (or `Retry-After`) in `headers`, which
 * Fastify's error handling sets on the reply; what @fastify/jwt decides itself (no token, a bad
 * signature) keeps its codes.
 */

/** @fastify/jwt's options that `fastifyJwtOptions` takes beside the plugin's: all but `secret` (and `sign`: this registration verifies only). */
export type FastifyJwtExtraOptions = Omit<FastifyJWTOptions, 'secret' | 'sign'>

/** The plugin's options that have no meaning here, and what to use instead. */
const NOT_HERE: Record<string, string> = {
  cookie: 'read @supabase/ssr session cookies with the plugin\'s own authenticate (@fastify/jwt\'s cookie option reads a cookie holding the token itself)',
  extractToken: 'give @fastify/jwt\'s verify.extractToken in the second argument',
  hook: 'call request.jwtVerify() in your own hook',
  legacyTokens: 'the migration window needs the plugin\'s own authenticate',
  tokenCache: '@fastify/jwt checks every token\'s signature (its verify.cache option is its own token cache)'
}

/** fast-jwt verify options that the plugin's options set: given here, they would loosen what the plugin checks, or disagree with it. */
const OWNED_VERIFY = ['key', 'algorithms', 'allowedIss', 'allowedAud', 'requiredClaims', 'clockTolerance', 'clockTimestamp',
  'ignoreExpiration', 'ignoreNotBefore', 'complete']

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
    const owned = OWNED_VERIFY.find((name) => name in verify)
    if (owned !== undefined) {
      fail(`verify.${owned} is set from the plugin's options (algorithms, issuer, audience, clockTolerance): remove it`)
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

type Decorator = { lookupToken (request: FastifyRequest, options?: Record<string, unknown>): string }

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
 * close with it. Nothing is decorated by the plugin: @fastify/jwt decorates as it documents.
 */
export function fastifyJwtOptions (options: SupabaseJwksOptions, jwt: FastifyJwtExtraOptions = {}): (instance: FastifyInstance) => FastifyJWTOptions {
  const config = normalizeOptions(options)
  const unavailable = Object.keys(NOT_HERE).find((name) => (options as Record<string, unknown>)[name] !== undefined)
  if (unavailable !== undefined) fail(`${unavailable} is not available through @fastify/jwt: ${NOT_HERE[unavailable]}`)
  const extra = extraOptions(jwt)
  const { namespace, trusted: ownTrusted } = extra
  const ownExtract = extra.verify?.extractToken
  const issuers = config.issuers
  const every = <T> (pick: (issuer: typeof issuers[number]) => T[] | undefined): T[] | undefined =>
    issuers.every((issuer) => pick(issuer) !== undefined) ? [...new Set(issuers.flatMap((issuer) => pick(issuer)!))] : undefined
  const allowedIss = every((issuer) => issuer.issuer)
  const allowedAud = every((issuer) => issuer.audience)
  const { realm } = config

  /** The answer, with the headers Fastify sets from it. */
  function answer (log: FastifyRequest['log'], err: unknown): AuthError {
    const answered = answerFor(log, err)
    return Object.assign(answered, { headers: answerHeaders(realm, answered) })
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
    let decorator: Decorator | undefined

    function extractToken (request: FastifyRequest): string {
      try {
        // @fastify/jwt's own lookup (header, then its cookie option) with its own codes, or the app's extractToken
        decorator ??= (namespace === undefined ? instance.jwt : (instance.jwt as unknown as Record<string, unknown>)[namespace]) as Decorator
        const found = ownExtract === undefined ? decorator.lookupToken(request, { extractToken: null }) : ownExtract(request)
        // nothing found: @fastify/jwt answers it (400 FST_JWT_BAD_REQUEST)
        if (found === undefined || found === null || found === '') return found as unknown as string
        const token = bounded(found, config.maxTokenLength)
        // a compact JWS of JSON objects: fast-jwt's decoder, next, then fails on nothing
        checkStructure(token)
        const first = token.indexOf('.')
        jsonObject(token.slice(0, first), 'header')
        jsonObject(token.slice(first + 1, token.lastIndexOf('.')), 'payload')
        return token
      } catch (err) {
        // @fastify/jwt's own answers (no token, a malformed header or cookie) go through as they are
        const code = (err as { code?: unknown }).code
        if (typeof code === 'string' && code.startsWith('FST_JWT_')) throw err
        throw answer(request.log, err)
      }
    }

    /**
     * The key function: called by @fastify/jwt's request path as (request, decoded, callback), and by
     * fast-jwt itself, for `fastify.jwt.verify(token)`, as (decoded, callback).
     */
    function supabaseJwksKey (request: FastifyRequest, decoded: unknown): Promise<string> {
      if (typeof decoded === 'function') {
        // thrown synchronously: out of fastify.jwt.verify() itself, so that `if (app.jwt.verify(t))` cannot pass
        throw new FastifyJwtUsageError('fastify.jwt.verify() would return a Promise, which an `if` takes for true: ' +
          'verify with request.jwtVerify(), or, outside a request, with the plugin\'s fastify.supabaseJwks.verify()')
      }
      // decode.complete: the token exactly as @fastify/jwt looked it up and fast-jwt will verify it
      const { input, signature } = decoded as { input?: unknown, signature?: unknown }
      if (typeof input !== 'string' || typeof signature !== 'string') {
        return Promise.reject(new FastifyJwtUsageError('the token was decoded without decode.complete ' +
          '(request.jwtVerify() was given decode options): give decode options in fastifyJwtOptions\'s second argument'))
      }
      const token = `${input}.${signature}`
      try {
        const key = keyFor(token)
        if (!(key instanceof Promise)) return Promise.resolve(pemOf(key))
        return key.then(pemOf, (err: unknown) => { throw answer(request.log, err) })
      } catch (err) {
        return Promise.reject(answer(request.log, err))
      }
    }

    /** After the signature: `isRevoked`, the route requirements, then the app's own `trusted`. */
    function trusted (request: FastifyRequest, claims: Record<string, unknown>): boolean | Promise<boolean> {
      let required
      try {
        required = requiredFor(request)
      } catch (err) {
        return Promise.reject(answer(request.log, err))
      }
      if (config.isRevoked === undefined && required === null && ownTrusted === undefined) return true
      return (async () => {
        try {
          if (config.isRevoked !== undefined) await checkRevoked(config, claims, request, request.log)
          if (required !== null) await authorize(claims, request, required)
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
