/*
 * The options of acting as the caller: `supabase` (supabase-js clients) and `postgres` (request.sql),
 * checked once at registration. Keys are never repeated in a message.
 */
import { fail, integer, parseUrl, seconds } from './options'

/** Option `supabase`: the project's API URL and keys for supabase-js clients. */
export interface SupabaseClientOptions {
  /** The project URL (`https://<ref>.supabase.co`). Default: `supabaseUrl` (the issuer's, with `issuers`). */
  url?: string
  /** The publishable key (`sb_publishable_…`, or the legacy `anon` key): what `request.supabase` sends as `apikey`. */
  publishableKey: string
  /**
   * The secret key (`sb_secret_…`, or the legacy `service_role` key): only `fastify.supabaseAdmin`
   * uses it, never `request.supabase`. Default: none (no `supabaseAdmin`).
   */
  secretKey?: string
}

/** The option `supabase` checked: where the clients point and with which keys. */
export interface SupabaseClientConfig {
  /** The option's name, for messages: `supabase`, or `issuers[1].supabase`. */
  option: string
  url: string
  publishableKey: string
  secretKey: string | undefined
}

/** What `request.sql` needs of a `pg` pool (pg's `Pool`, or `fastify.pg.pool` of @fastify/postgres). */
export interface SqlPool {
  connect (callback: (err: Error | undefined, client: SqlPoolClient | undefined, release: (err?: Error | boolean) => void) => void): void
  /** Callers waiting for a connection (pg's Pool counts them). */
  readonly waitingCount?: number
}

/** What `request.sql` needs of a pooled `pg` client. */
export interface SqlPoolClient {
  query (config: { text: string, values?: unknown[], queryMode?: 'extended' }): Promise<{ rows: unknown[], rowCount: number | null, command: string }>
  on (event: 'error', listener: (err: Error) => void): unknown
  removeListener (event: 'error', listener: (err: Error) => void): unknown
}

/** Option `postgres`: where `request.sql` runs, and its bounds. Durations in seconds. */
export interface PostgresOptions {
  /** A `pg` Pool (or @fastify/postgres's `fastify.pg.pool`): the plugin never ends it. */
  pool?: SqlPool
  /** A connection string: the plugin makes a pool of its own (`pg` needed) and ends it on close. */
  connectionString?: string
  /** Most connections of the plugin's own pool (with `connectionString`). Default 10. */
  max?: number
  /** How long a statement waits for a connection before the request gets 503 with Retry-After. Default 5. */
  connectionTimeout?: number
  /** How many statements may wait for a connection at once; more get 503 at once. Default 100. */
  maxWaiting?: number
  /** `statement_timeout` of each scoped transaction (transaction-local). Default 10. */
  statementTimeout?: number
  /** `idle_in_transaction_session_timeout` of each scoped transaction (transaction-local). Default 30. */
  idleInTransactionTimeout?: number
}

/** The option `postgres` checked, durations in milliseconds. */
export interface PostgresConfig {
  pool: SqlPool | undefined
  connectionString: string | undefined
  max: number
  connectionTimeoutMs: number
  maxWaiting: number
  statementTimeoutMs: number
  idleInTransactionTimeoutMs: number
}

export const DEFAULT_POOL_MAX = 10
export const DEFAULT_CONNECTION_TIMEOUT = 5
export const DEFAULT_MAX_WAITING = 100
export const DEFAULT_STATEMENT_TIMEOUT = 10
export const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT = 30
const MAX_DB_TIMEOUT = 3600

const SUPABASE_KEYS = new Set(['url', 'publishableKey', 'secretKey'])
const POSTGRES_KEYS = new Set(['pool', 'connectionString', 'max', 'connectionTimeout', 'maxWaiting', 'statementTimeout', 'idleInTransactionTimeout'])

export function objectOption (name: string, value: unknown, known: ReadonlySet<string>, shape: string): Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail(`${name} must be an object ${shape}`)
  for (const key of Object.keys(value)) {
    if (!known.has(key)) fail(`unknown option ${name}.${key} (known: ${[...known].join(', ')})`)
  }
  return value as Record<string, unknown>
}

/** An API key of `supabase`: a non-empty string without whitespace; the message never shows it. */
function apiKey (name: string, value: unknown): string {
  if (typeof value !== 'string' || value === '' || /\s/.test(value)) fail(`${name} must be the key itself: a non-empty string without whitespace`)
  return value
}

/**
 * The option `supabase` (top level, or an `issuers` entry's): `url` defaults to the issuer's project
 * URL. `undefined` when not given.
 */
export function supabaseOption (name: string, value: unknown, projectUrl: string | undefined): SupabaseClientConfig | undefined {
  if (value === undefined) return undefined
  const own = objectOption(name, value, SUPABASE_KEYS, '{ url?, publishableKey, secretKey? }')
  const url = own.url === undefined ? projectUrl : parseUrl(`${name}.url`, own.url).origin
  if (url === undefined) fail(`${name}.url is required here: the project URL (https://<ref>.supabase.co), since no supabaseUrl gives it`)
  const publishableKey = apiKey(`${name}.publishableKey`, own.publishableKey)
  const secretKey = own.secretKey === undefined ? undefined : apiKey(`${name}.secretKey`, own.secretKey)
  if (secretKey === publishableKey) fail(`${name}.secretKey and ${name}.publishableKey are the same key: the publishable key goes to every caller's client, the secret key only to supabaseAdmin`)
  if (publishableKey.startsWith('sb_secret_')) fail(`${name}.publishableKey is a secret key (sb_secret_…): request.supabase would bypass Row Level Security for every caller. Give the publishable key (sb_publishable_…)`)
  return { option: name, url, publishableKey, secretKey }
}

/** Where an option's connections come from: exactly one of a `pg` Pool and a connection string. */
export function poolOption (name: string, own: Record<string, unknown>, pool: string, instead = ''): { pool: SqlPool | undefined, connectionString: string | undefined } {
  const given = own.pool as SqlPool | undefined
  const connectionString = own.connectionString
  if ((given === undefined) === (connectionString === undefined)) fail(`${name} needs exactly one of pool ${pool} and connectionString`)
  if (given !== undefined && typeof (given as { connect?: unknown }).connect !== 'function') fail(`${name}.pool must be a pg Pool${instead}`)
  if (connectionString !== undefined && (typeof connectionString !== 'string' || connectionString === '')) fail(`${name}.connectionString must be a non-empty string`)
  return { pool: given, connectionString: connectionString as string | undefined }
}

/** The option `postgres`: a pool or a connection string, and the bounds. `undefined` when not given. */
export function postgresOption (value: unknown): PostgresConfig | undefined {
  if (value === undefined) return undefined
  const own = objectOption('postgres', value, POSTGRES_KEYS, '{ pool } or { connectionString }')
  const { pool, connectionString } = poolOption('postgres', own, '(a pg Pool, or fastify.pg.pool)', ' (for @fastify/postgres, fastify.pg.pool)')
  if (pool !== undefined && own.max !== undefined) fail('postgres.max sizes the plugin\'s own pool (with connectionString): size your pool where you make it')
  return {
    pool,
    connectionString,
    max: integer('postgres.max', own.max, DEFAULT_POOL_MAX, 1, 1000),
    connectionTimeoutMs: seconds('postgres.connectionTimeout', own.connectionTimeout, DEFAULT_CONNECTION_TIMEOUT, 0.001, MAX_DB_TIMEOUT),
    maxWaiting: integer('postgres.maxWaiting', own.maxWaiting, DEFAULT_MAX_WAITING, 1, 100_000),
    statementTimeoutMs: seconds('postgres.statementTimeout', own.statementTimeout, DEFAULT_STATEMENT_TIMEOUT, 0.001, MAX_DB_TIMEOUT),
    idleInTransactionTimeoutMs: seconds('postgres.idleInTransactionTimeout', own.idleInTransactionTimeout, DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT, 0.001, MAX_DB_TIMEOUT)
  }
}
