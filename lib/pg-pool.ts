/*
 * What request.sql and the sessions check share about a `pg` pool: a connection within a time bound,
 * listened to while held, and the pool the plugin makes of a connection string.
 */
import type { FastifyInstance } from 'fastify'
import type { SqlPool, SqlPoolClient } from './acting-options'
import { optionalPeer } from './acting'

/** A connection held: `release(true)` destroys it rather than returning it to the pool. */
export interface HeldConnection {
  client: SqlPoolClient
  release: (destroy?: boolean) => void
}

/** Why no connection came: none within the time (no cause), or the pool's own error (its cause). */
export class ConnectError extends Error {
  constructor (message: string, cause?: unknown) {
    super(message, { cause })
  }
}

/**
 * A connection while held: PostgreSQL ending it meanwhile is an 'error' event on the client, which
 * nothing else listens to while it is checked out (unheard, it would end the process). The next query
 * on it fails, and it is destroyed then. Returned, it is the pool's to watch again.
 */
function held (client: SqlPoolClient, release: (err?: Error | boolean) => void): HeldConnection {
  const lost = (): void => {}
  client.on('error', lost)
  return {
    client,
    release (destroy) {
      // a destroyed connection keeps the listener: its socket may still report on its way out
      if (destroy !== true) client.removeListener('error', lost)
      release(destroy)
    }
  }
}

/** A connection of `pool` within `ms`, or a `ConnectError`: one that comes later goes back to the pool unused. */
export function connectWithin (pool: SqlPool, ms: number): Promise<HeldConnection> {
  return new Promise((resolve, reject) => {
    let settled = false
    const timer = setTimeout(() => {
      settled = true
      reject(new ConnectError(`no connection within ${ms / 1000} s`))
    }, ms)
    pool.connect((err, client, release) => {
      // too late: back to the pool at once, unused
      if (settled) {
        if (client !== undefined) release()
        return
      }
      settled = true
      clearTimeout(timer)
      if (err !== undefined && err !== null) reject(new ConnectError('cannot connect', err))
      else resolve(held(client!, release))
    })
  })
}

/** The pool the plugin makes of `connectionString` (`pg` needed), ended when the app closes, after `beforeEnd`. */
export function ownPool (fastify: FastifyInstance, option: string, settings: { connectionString: string, max: number, connectionTimeoutMillis: number, idleTimeoutMillis?: number },
  beforeEnd?: () => void): SqlPool {
  const { Pool } = optionalPeer<typeof import('pg')>('pg', `the option ${option}.connectionString`)
  const own = new Pool(settings)
  // an idle connection PostgreSQL ended is an 'error' event: unheard, it would end the process
  own.on('error', (err) => fastify.log.warn({ code: (err as { code?: string }).code, option }, 'supabase-jwks: an idle PostgreSQL connection failed'))
  fastify.addHook('onClose', () => {
    beforeEnd?.()
    return own.end()
  })
  return own as unknown as SqlPool
}
