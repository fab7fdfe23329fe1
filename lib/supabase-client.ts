/*
 * request.supabase and fastify.supabaseAdmin: supabase-js clients as the caller, and with the secret key.
 *
 * A user's client carries the access token that authenticated the request through supabase-js's
 * `accessToken` option (supabase-js sends it as `Authorization: Bearer` on every PostgREST, Storage and
 * Functions call, with the publishable key as `apikey`; it has no auth client, so it never stores,
 * persists or refreshes a session). Making one costs more than verifying the token (about 70-200 µs),
 * so clients are kept by token, a bounded few, each until its token's `exp`.
 *
 * The anonymous client (callers with no user) is one client shared by every such request: it gets an
 * `accessToken` that answers null (so it sends the publishable key as its bearer, as an anonymous
 * supabase-js client does) and therefore no auth client either, since a session signed in on a shared
 * client would be sent for every later anonymous caller.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { SupabaseClientOptions } from '@supabase/supabase-js'
import { ActingUsageError, UnsupportedRoleError } from './errors'
import { actingRole, optionalPeer } from './acting'
import { kAccessToken } from './authenticate'
import type { Config } from './options'
import type { SupabaseClientConfig } from './acting-options'
import type { SupabaseClientType as Client } from './index'

type CreateClient = (url: string, key: string, options: SupabaseClientOptions<'public'>) => Client
type Transport = NonNullable<NonNullable<SupabaseClientOptions<'public'>['realtime']>['transport']>

/**
 * Most user clients kept. One weighs about 8.5 KB of heap plus its token (measured with supabase-js
 * 2.119 on Node 20): 1000 are some 10 MB, and cover the callers active at once of most backends; past
 * that, a caller's client is made again (70-200 µs), which is what the cache saves and all it saves.
 */
export const MAX_CLIENTS = 1000

/** The request's client, made when first read. */
const kClient = Symbol('fastify-supabase-jwks.supabaseClient')
type WithClient = FastifyRequest & { [kClient]: Client | null, [kAccessToken]: string | null }

/**
 * User clients by token, the least recently used going first when full. An entry is handed out only
 * before its token's `exp`, so a client never outlives the token it carries.
 */
export class ClientCache {
  readonly #max: number
  readonly #entries = new Map<string, { client: Client, expiresAt: number }>()

  constructor (max: number) {
    this.#max = max
  }

  get size (): number {
    return this.#entries.size
  }

  get (token: string): Client | undefined {
    const entry = this.#entries.get(token)
    if (entry === undefined) return undefined
    this.#entries.delete(token)
    if (!(Date.now() < entry.expiresAt)) return undefined
    this.#entries.set(token, entry)
    return entry.client
  }

  /** Keeps `client` until `expiresAt` (ms), unless the cache is off or the token has expired (within the clock tolerance). */
  set (token: string, client: Client, expiresAt: number): void {
    if (this.#max === 0 || !(Date.now() < expiresAt)) return
    if (this.#entries.size >= this.#max) this.#entries.delete(this.#entries.keys().next().value!)
    this.#entries.set(token, { client, expiresAt })
  }
}

/** The issuers' client settings by `iss` (with several issuers), and the option to name when one has none. */
function projectsByIssuer (config: Config): Map<string, { project: SupabaseClientConfig | undefined, option: string }> {
  return new Map(config.issuers.map((issuer, index) => [issuer.issuer![0]!, { project: issuer.supabase, option: `issuers[${index}].supabase` }]))
}

/** Decorates `request.supabase` (and `fastify.supabaseAdmin` with a secret key); returns its stats. */
export function registerSupabaseClients (fastify: FastifyInstance, config: Config): { stats (): { supabaseClients: number } } {
  const { createClient } = optionalPeer<{ createClient: CreateClient }>('@supabase/supabase-js', 'the option supabase')
  // Node 20 has no WebSocket, and supabase-js will not make a client without one (for its realtime client)
  const transport = globalThis.WebSocket === undefined ? optionalPeer<Transport>('ws', 'the option supabase on Node.js 20') : undefined
  const realtime = transport === undefined ? {} : { realtime: { transport } }
  const clients = new ClientCache(Math.min(config.tokenCache, MAX_CLIENTS))
  const byIssuer = config.routed ? projectsByIssuer(config) : undefined
  const anonymousProject = config.supabase
  let anonymous: Client | undefined

  /** The project of a user's token: the single one, or with several issuers the one of its `iss`. */
  function projectOf (claims: Record<string, unknown>): SupabaseClientConfig {
    if (byIssuer === undefined) return config.issuers[0]!.supabase!
    const { project, option } = byIssuer.get(claims.iss as string)!
    if (project === undefined) throw new ActingUsageError(`request.supabase has no client for this caller's issuer: set ${option} (or a top-level supabase)`)
    return project
  }

  function userClient (request: WithClient): Client {
    const token = request[kAccessToken]
    if (token === null) throw new ActingUsageError('request.supabase found no access token beside a user caller: let authenticate set request.supabaseAuth')
    const claims = request.user as unknown as Record<string, unknown>
    actingRole(claims, 'request.supabase')
    const kept = clients.get(token)
    if (kept !== undefined) return kept
    const project = projectOf(claims)
    const client = createClient(project.url, project.publishableKey, { accessToken: async () => token, ...realtime })
    clients.set(token, client, (claims.exp as number) * 1000)
    return client
  }

  function anonymousClient (): Client {
    if (anonymousProject === undefined) {
      throw new ActingUsageError('request.supabase has no anonymous client: with issuers, give the top-level supabase a url (the project of callers without a user)')
    }
    anonymous ??= createClient(anonymousProject.url, anonymousProject.publishableKey, { accessToken: async () => null, ...realtime })
    return anonymous
  }

  function clientOf (request: WithClient): Client {
    const caller = request.supabaseAuth
    if (caller === null) {
      throw new ActingUsageError('request.supabase acts as the caller authenticate let in: read it in a route that authenticate guards, after it ran ' +
        '(in the handler or a later hook; with @fastify/jwt\'s request.jwtVerify() there is no such caller)')
    }
    if (caller.mode === 'secret') throw new UnsupportedRoleError('a secret-key caller has no user to act as: use fastify.supabaseAdmin')
    return caller.mode === 'user' ? userClient(request) : anonymousClient()
  }

  fastify.decorateRequest(kClient, null)
  fastify.decorateRequest('supabase', {
    getter (this: FastifyRequest) {
      const request = this as WithClient
      request[kClient] ??= clientOf(request)
      return request[kClient]
    }
  })
  const admin = config.supabase
  if (admin?.secretKey !== undefined) {
    fastify.decorate('supabaseAdmin', createClient(admin.url, admin.secretKey, {
      auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      ...realtime
    }))
  }
  return { stats: () => ({ supabaseClients: clients.size }) }
}
