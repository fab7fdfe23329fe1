import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import fastifyJwt, { type JwtVerifyFunction } from '@fastify/jwt'
import { buildAuthenticate } from './authenticate'
import { errorCodes as codes } from './errors'
import { createKeyResolver, type KeyStats } from './keys'
import { normalizeOptions, type SupabaseJwksOptions as Options } from './options'
import type { SupabaseAccessTokenClaims, SupabaseAmrEntry } from './claims'
import { TokenCache } from './token-cache'
import { jwtOptions } from './verify'

async function fastifySupabaseJwks (fastify: FastifyInstance, options: Options): Promise<void> {
  const config = normalizeOptions(options)
  if (config.insecureJwksUrl) {
    fastify.log.warn({ jwksUrl: config.jwksUrl.href }, 'supabase-jwks: the JWKS is fetched over plain http')
  }
  const keys = createKeyResolver(config, fastify.log)
  fastify.addHook('onClose', async function closeSupabaseJwks () {
    await keys.close()
  })

  await fastify.register(fastifyJwt, jwtOptions(config, keys))

  const tokens = new TokenCache(config.tokenCache)
  const authenticate = buildAuthenticate(config, keys, tokens)
  fastify.decorate('authenticate', authenticate)
  fastify.decorate('supabaseJwks', {
    refresh: async () => {
      tokens.clear()
      await keys.refresh()
    },
    stats: () => keys.stats()
  })

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

declare namespace fastifySupabaseJwks {
  export type SupabaseJwksOptions = Options
  export type { SupabaseAccessTokenClaims, SupabaseAmrEntry, KeyStats }
  /**
   * Your own claims (for example from a custom access token hook), added by declaration merging:
   * ```ts
   * declare module 'fastify-supabase-jwks' {
   *   interface SupabaseCustomClaims { tenant_id: string }
   * }
   * ```
   */
  export interface SupabaseCustomClaims {}
  /** What `request.user` holds after `authenticate` succeeded. */
  export type SupabaseUser = SupabaseAccessTokenClaims & SupabaseCustomClaims
  /** The codes a request can be answered with, and their HTTP statuses. */
  export type ErrorCode = keyof typeof codes
  /** The plugin's controls, at `fastify.supabaseJwks`. */
  export interface SupabaseJwksDecorator {
    /**
     * Fetches the JWKS now, ignoring the cache lifetime and the cooldown (Supabase asks verifiers
     * to offer a purge). Resolves when the fetch is over, whether or not it succeeded.
     */
    refresh (): Promise<void>
    /** Key activity so far: fetches, failures, keys held. */
    stats (): KeyStats
  }
  export { fastifySupabaseJwks as default, fastifySupabaseJwks }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** Verifies the bearer token: use as a route's `preHandler` (or `onRequest`). */
    authenticate (request: FastifyRequest, reply: FastifyReply): Promise<void>
    supabaseJwks: fastifySupabaseJwks.SupabaseJwksDecorator
  }
  interface FastifyRequest {
    supabaseJwtVerify: JwtVerifyFunction
  }
  interface FastifyContextConfig {
    /** `false` exempts the route from the `hook` option's authentication. */
    supabaseJwks?: boolean
  }
}

declare module '@fastify/jwt' {
  interface FastifyJWT {
    payload: fastifySupabaseJwks.SupabaseUser
    user: fastifySupabaseJwks.SupabaseUser
  }
}

export = fastifySupabaseJwks
