/*
 * request.supabase and fastify.supabaseAdmin: supabase-js clients as the caller, and with the secret key.
 * (Being written: see issue 27.)
 */
import type { FastifyInstance } from 'fastify'
import type { Config } from './options'

/** Decorates `request.supabase` (and `fastify.supabaseAdmin` with a secret key). */
export function registerSupabaseClients (fastify: FastifyInstance, config: Config): void {
  fastify.log.trace({ issuers: config.issuers.length }, 'supabase-jwks: supabase clients not built yet')
}
