/*
 * request.sql: SQL as the caller, under Row Level Security. Each statement (or each transaction()) runs
 * in a transaction that sets the role and the claims transaction-locally, as PostgREST does
 * (`set_config('role', ..., true)`, `set_config('request.jwt.claims', ..., true)`), so `auth.uid()`,
 * `auth.jwt()` and the project's policies apply, and nothing of the caller stays on the pooled
 * connection once it ends.
 *
 * One round trip per statement: the setup and the statement pipelined (lib/pipeline.ts), each in the
 * extended protocol (one statement each, every value a bind parameter), in the one implicit transaction
 * PostgreSQL makes of what precedes a Sync. transaction(), a procedure (CALL) and a DO block: a
 * transaction block, BEGIN with the setup, each statement, COMMIT. Statements that would end the
 * transaction or change the session are refused before they run. Every setup also reads what the
 * connection was before it: one that SQL of an earlier use changed for the session, or whose ROLLBACK
 * failed, is destroyed, never returned.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ActingUsageError, DatabaseUnavailableError, IdentifierNotAllowedError, UnsupportedRoleError } from './errors'
import type { PostgresConfig, SqlPool, SqlPoolClient } from './acting-options'
import { actingRole, optionalPeer } from './acting'
import { pipeline, type PipelineError, type PipelineStep, type StepResult } from './pipeline'
import { connectWithin, ownPool, type ConnectError, type HeldConnection } from './pg-pool'

/** Rows of a statement, and how many rows it touched (`rowCount`: an UPDATE's or DELETE's too). */
export type SqlRows<Row> = Row[] & { rowCount: number | null }

/** An identifier checked against an allowlist by `sql.ident()`: the one thing a template inlines. */
export class SqlIdentifier {
  readonly #quoted: string
  /** @internal made by `sql.ident()` only */
  constructor (quoted: string) {
    this.#quoted = quoted
  }

  toString (): string {
    return this.#quoted
  }
}

/** SQL as one caller: a statement per call, each in a transaction of its own. */
export interface SqlStatements {
  /** `` sql`select * from notes where id = ${id}` ``: every value a bind parameter (`$1`), but `sql.ident()`'s. */
  <Row = Record<string, unknown>>(strings: TemplateStringsArray, ...values: unknown[]): Promise<SqlRows<Row>>
  /** A statement built as text, with its parameters (`$1`...): one statement, never several. */
  raw<Row = Record<string, unknown>>(text: string, params?: readonly unknown[]): Promise<SqlRows<Row>>
  /** An identifier (a column, a table) taken only if `allowed` lists it exactly, then quoted. */
  ident (name: string, allowed: readonly string[]): SqlIdentifier
}

/** `request.sql`: statements as the caller, and `transaction()` for several in one transaction. */
export interface Sql extends SqlStatements {
  /**
   * Runs `work` in one transaction as the caller: committed when it resolves, rolled back when it
   * throws (the error comes out). The `sql` it gets is good until then only.
   */
  transaction<T>(work: (sql: SqlStatements) => Promise<T>): Promise<T>
}

/** Who the statements run as: a role PostgREST would set, and the claims `auth.jwt()` reads. */
interface Caller {
  role: 'authenticated' | 'anon'
  claims: string
}

/** Statements that end the transaction or change the session: refused before they run. */
const LEAVING = new Set(['BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT', 'SAVEPOINT', 'RELEASE', 'PREPARE', 'SET', 'RESET', 'DISCARD', 'LISTEN', 'UNLISTEN'])
/**
 * Statements that may commit on their own (a procedure, a `DO` block) when no transaction block is
 * open, and run the rest as the pool's own role: always run in one (`BEGIN` … `COMMIT`), where
 * PostgreSQL refuses that.
 */
const BLOCK_ONLY = new Set(['CALL', 'DO'])
const BEGIN: PipelineStep = { text: 'BEGIN' }
/**
 * The caller's transaction, as PostgREST scopes a request: every setting transaction-local. Supabase's
 * `auth.uid()`, `auth.role()` and `auth.jwt()` read the older per-claim settings first
 * (`request.jwt.claim.sub`, `.role`, `request.jwt.claim`): emptied, so that only the caller's claims
 * count. The first columns read the connection as it was before (a target list is evaluated in
 * order): what its earlier uses left, checked by `#unchanged`.
 */
const SETUP = 'SELECT current_user AS role, nullif(current_setting(\'request.jwt.claims\', true), \'\') AS claims, ' +
  'concat(nullif(current_setting(\'request.jwt.claim.sub\', true), \'\'), \',\', nullif(current_setting(\'request.jwt.claim.role\', true), \'\'), \',\', ' +
  'nullif(current_setting(\'request.jwt.claim\', true), \'\')) AS legacy, ' +
  'set_config(\'statement_timeout\', $1, true), set_config(\'idle_in_transaction_session_timeout\', $2, true), ' +
  'set_config(\'request.jwt.claim.sub\', \'\', true), set_config(\'request.jwt.claim.role\', \'\', true), set_config(\'request.jwt.claim\', \'\', true), ' +
  'set_config(\'role\', $3, true), set_config(\'request.jwt.claims\', $4, true)'
const ANON_CLAIMS = JSON.stringify({ role: 'anon' })
const SQLSTATE = /^[0-9A-Z]{5}$/
/** SQLSTATE classes of a database that cannot answer now: connection (08), resources (53), operator intervention and timeouts (57). */
const UNAVAILABLE = /^(08|53|57)/

/** The role and claims of the caller `authenticate` let in; refused (never downgraded) when there is none to act as. */
function callerOf (request: FastifyRequest): Caller {
  const who = request.supabaseAuth
  if (who === null) {
    throw new ActingUsageError('request.sql runs as the caller authenticate let in: use it in a route that authenticate guards, after it ran (in the handler or a later hook)')
  }
  if (who.mode === 'secret') {
    throw new UnsupportedRoleError('a secret-key caller has no user to act as; run its SQL on your pool itself (which Row Level Security does not scope), knowingly')
  }
  if (who.mode !== 'user') return { role: 'anon', claims: ANON_CLAIMS }
  const claims = request.user as unknown as Record<string, unknown>
  return { role: actingRole(claims, 'request.sql'), claims: JSON.stringify(claims) }
}

/** A quoted identifier, if the allowlist holds exactly this name. */
function identifier (name: string, allowed: readonly string[]): SqlIdentifier {
  if (!Array.isArray(allowed) || allowed.some((entry) => typeof entry !== 'string')) {
    throw new ActingUsageError('sql.ident() takes an allowlist: an array of the names it may take')
  }
  // the name usually comes from the request (a column to sort by): the client's mistake, answered 400
  if (typeof name !== 'string' || !allowed.includes(name)) throw new IdentifierNotAllowedError()
  return new SqlIdentifier(`"${name.replaceAll('"', '""')}"`)
}

/** A template as one statement's text and parameters: `$n` for every value, the identifiers inlined. */
function statementOf (strings: TemplateStringsArray, values: readonly unknown[]): { text: string, params: unknown[] } {
  let text = strings[0]!
  const params: unknown[] = []
  for (let i = 0; i < values.length; i++) {
    const value = values[i]
    if (value instanceof SqlIdentifier) {
      text += value.toString()
    } else {
      params.push(value)
      text += `$${params.length}`
    }
    text += strings[i + 1]!
  }
  return { text, params }
}

/**
 * The first keyword of a statement, past blanks and comments as PostgreSQL's lexer reads them (a line
 * comment ends at a newline or a carriage return; block comments nest), scanned by index (linear in the
 * text): what the statement is before it runs.
 */
function firstKeyword (text: string): string {
  let at = 0
  while (at < text.length) {
    if (text.charCodeAt(at) <= 0x20) {
      at++
    } else if (text.startsWith('--', at)) {
      at += 2
      while (at < text.length && text[at] !== '\n' && text[at] !== '\r') at++
    } else if (text.startsWith('/*', at)) {
      at = pastBlockComment(text, at)
    } else {
      break
    }
  }
  let end = at
  while (end < text.length && /[a-z]/i.test(text[end]!)) end++
  return text.slice(at, end).toUpperCase()
}

/** Where the block comment at `start` ends, nested ones within it (the text's end if it never does). */
function pastBlockComment (text: string, start: number): number {
  let depth = 0
  let at = start
  do {
    if (text.startsWith('/*', at)) {
      depth++
      at += 2
    } else if (text.startsWith('*/', at)) {
      depth--
      at += 2
    } else {
      at++
    }
  } while (depth > 0 && at < text.length)
  return at
}

/**
 * A permission error's hint (SQLSTATE 42501): a missing grant (PostgreSQL's routine `aclcheck_error`),
 * or a row a policy refused (`WITH CHECK`).
 */
function withHint (err: Error & { code?: string, hint?: string, routine?: string }, role: string): Error {
  if (err.code !== '42501') return err
  const hint = err.routine === 'aclcheck_error'
    ? `request.sql ran as ${role}: grant it the privileges the statement needs (for example grant select, insert, update, delete on the table to ${role}, and usage on its schema)`
    : `request.sql ran as ${role}, with the caller's claims: a row-level security policy refused the row`
  if (err.hint === undefined) err.hint = hint
  err.message += ` (${hint})`
  return err
}

/** What a failure of the database itself answers (503), and what is the statement's own error (as it is). */
function answerOf (err: unknown, role: string): unknown {
  const code = String((err as { code?: unknown }).code)
  if (SQLSTATE.test(code) && !UNAVAILABLE.test(code)) return withHint(err as Error, role)
  // a SQLSTATE of those classes, or a connection that failed (pg gives no code): the cause says which
  return unavailable('PostgreSQL could not answer', err)
}

/**
 * A query on the caller's connection, its failure mapped where the database gave it: what the
 * handler throws of its own comes out as it is.
 */
async function query (client: SqlPoolClient, config: Parameters<SqlPoolClient['query']>[0], role: string): Promise<StepResult> {
  try {
    return await client.query(config)
  } catch (err) {
    throw answerOf(err, role)
  }
}

/**
 * The error of a pipeline that began with `opening` steps: a setup that failed for want of a role is
 * the pool role's to fix; the rest as the database gave it.
 */
function openingFailure (err: unknown, opening: number, role: string): unknown {
  if (err instanceof ActingUsageError) return err
  if ((err as PipelineError).step === opening - 1 && (err as { code?: unknown }).code === '42501') {
    return new ActingUsageError(`the pool's role cannot act as ${role}: grant it the roles request.sql sets (grant anon, authenticated to <the pool's role>, as Supabase grants them to authenticator)`)
  }
  return answerOf(err, role)
}

function unavailable (reason: string, cause?: unknown): Error {
  return Object.assign(new DatabaseUnavailableError(reason, { cause }), { headers: { 'retry-after': '1' } })
}

/** The pool of `request.sql`, its waits bounded. */
export class ScopedSql {
  readonly #pool: SqlPool
  readonly #config: PostgresConfig
  /** statement_timeout and idle_in_transaction_session_timeout, in milliseconds, as set_config takes them. */
  readonly #timeouts: [string, string]
  /** pg's own mapping of a value to its text (a Date, a Buffer, an array, an object as JSON). */
  readonly #prepareValue: (value: unknown) => unknown
  /** Each connection's role and claims outside request.sql, as its first use found them. */
  readonly #states = new WeakMap<SqlPoolClient, string>()
  #waiting = 0

  constructor (pool: SqlPool, config: PostgresConfig) {
    this.#pool = pool
    this.#config = config
    this.#timeouts = [String(config.statementTimeoutMs), String(config.idleInTransactionTimeoutMs)]
    this.#prepareValue = optionalPeer<{ prepareValue: (value: unknown) => unknown }>('pg/lib/utils', 'request.sql').prepareValue
  }

  /** A connection, within `connectionTimeout`, with at most `maxWaiting` statements waiting: else 503. */
  async #connect (): Promise<HeldConnection> {
    if (this.#waiting >= this.#config.maxWaiting) throw unavailable(`${this.#waiting} statements already wait for a connection`)
    this.#waiting++
    let connection: HeldConnection
    try {
      connection = await connectWithin(this.#pool, this.#config.connectionTimeoutMs)
    } catch (err) {
      this.#waiting--
      // no connection within connectionTimeout (no cause), or the pool's own error (its cause)
      const failure = err as ConnectError
      throw unavailable(failure.message, failure.cause)
    }
    this.#waiting--
    return connection
  }

  /** The setup of a transaction as `caller`: it also reads what the connection was before it. */
  #setupOf (caller: Caller): PipelineStep {
    return { text: SETUP, values: [this.#timeouts[0], this.#timeouts[1], caller.role, caller.claims], rows: true }
  }

  /**
   * The connection's role and claims before a setup, as it read them: what its first use found, or it
   * was changed for the session by SQL of an earlier use (`set_config(…, false)` in a statement) and is
   * destroyed once this use ends. Its first reading is what later ones must find.
   */
  #unchanged (request: FastifyRequest, client: SqlPoolClient, setup: StepResult): boolean {
    const { role, claims, legacy } = setup.rows[0] as { role: string, claims: string | null, legacy: string }
    const now = `${role}\n${claims}\n${legacy}`
    const first = this.#states.get(client)
    if (first === undefined) this.#states.set(client, now)
    else if (first !== now) {
      request.log.warn('supabase-jwks: a connection came back to request.sql in another role or with other claims than it first had (SQL of an earlier use changed them for the session): destroyed')
      return false
    }
    return true
  }

  /** After a failure in the caller's transaction: rolled back and the connection returned, or, if that fails, destroyed. */
  async #rollBack (client: SqlPoolClient, release: (destroy?: boolean) => void): Promise<void> {
    try {
      await client.query({ text: 'ROLLBACK' })
      release()
    } catch {
      release(true)
    }
  }

  /**
   * One statement as the caller, in one round trip: the setup and the statement pipelined, in the one
   * implicit transaction PostgreSQL makes of what precedes a Sync (committed together, or rolled back
   * together on an error), so the role and the claims end with it. A procedure or a `DO` block runs in
   * a transaction block instead (`run`).
   */
  async one (request: FastifyRequest, text: string, params: readonly unknown[], keyword: string): Promise<StepResult> {
    if (BLOCK_ONLY.has(keyword)) return this.run(request, (step) => step(text, params, keyword))
    const caller = callerOf(request)
    // mapped as pg maps them, before anything is sent: a value pg cannot send throws here
    const values = params.map((value) => this.#prepareValue(value))
    const { client, release } = await this.#connect()
    let results: StepResult[]
    try {
      results = await pipeline(client, [this.#setupOf(caller), { text, values, rows: true }])
    } catch (err) {
      const answer = openingFailure(err, 1, caller.role)
      // the implicit transaction ended with the error: the connection is clean, unless it failed
      release(answer instanceof DatabaseUnavailableError)
      throw answer
    }
    release(!this.#unchanged(request, client, results[0]!))
    // an empty statement (a comment alone) has no result
    return results[1] ?? { rows: [], rowCount: null, command: '' }
  }

  /** Runs `work` in one transaction block as the caller: `step` runs one statement in it. */
  async run<T>(request: FastifyRequest, work: (step: Step) => Promise<T>): Promise<T> {
    const caller = callerOf(request)
    const { client, release } = await this.#connect()
    let unchanged: boolean
    try {
      const [, setup] = await pipeline(client, [BEGIN, this.#setupOf(caller)])
      unchanged = this.#unchanged(request, client, setup!)
    } catch (err) {
      await this.#rollBack(client, release)
      throw openingFailure(err, 2, caller.role)
    }
    const step: Step = (text, params) => {
      const values = params.map((value) => this.#prepareValue(value))
      return query(client, { text, values, queryMode: 'extended' }, caller.role)
    }
    let result: T
    try {
      result = await work(step)
    } catch (err) {
      await this.#rollBack(client, release)
      throw err
    }
    try {
      await query(client, { text: 'COMMIT' }, caller.role)
    } catch (err) {
      release(true)
      throw err
    }
    release(!unchanged)
    return result
  }

  /** `request.sql` of one request. */
  for (request: FastifyRequest): Sql {
    const single = statementsOf((text, params, keyword) => this.one(request, text, params, keyword))
    const transaction = <T>(work: (sql: SqlStatements) => Promise<T>): Promise<T> => this.run(request, async (step) => {
      let open = true
      const inside = statementsOf((text, params, keyword) => open
        ? step(text, params, keyword)
        : Promise.reject(new ActingUsageError('this transaction\'s sql was used after transaction() ended')))
      try {
        return await work(inside)
      } finally {
        open = false
      }
    })
    return Object.assign(single, { transaction }) as Sql
  }
}

/** Runs one statement in the caller's transaction (its first keyword known). */
type Step = (text: string, params: readonly unknown[], keyword: string) => Promise<StepResult>

/** The tag, `raw` and `ident` over a way to run one statement; arguments checked before anything runs. */
function statementsOf (run: Step): SqlStatements {
  const raw = async <Row>(text: string, params: readonly unknown[] = []): Promise<SqlRows<Row>> => {
    if (typeof text !== 'string') throw new ActingUsageError('sql.raw() takes the statement as a string')
    if (!Array.isArray(params)) throw new ActingUsageError('sql.raw() takes the parameters as an array')
    const keyword = firstKeyword(text)
    if (LEAVING.has(keyword)) {
      throw new ActingUsageError(`request.sql refuses ${keyword}: it would end the caller's transaction or change the session; use sql.transaction() for several statements`)
    }
    const result = await run(text, params, keyword)
    return Object.assign(result.rows as Row[], { rowCount: result.rowCount })
  }
  const sql = <Row>(strings: TemplateStringsArray, ...values: unknown[]): Promise<SqlRows<Row>> => {
    if (!Array.isArray(strings) || !Array.isArray((strings as { raw?: unknown }).raw)) {
      return Promise.reject(new ActingUsageError('request.sql is a tag (request.sql`...`, each value in a placeholder); for text built at run time use sql.raw(text, params)'))
    }
    const { text, params } = statementOf(strings, values)
    return raw<Row>(text, params)
  }
  return Object.assign(sql, { raw, ident: identifier }) as SqlStatements
}

/** Decorates `request.sql` (and makes the pool of `connectionString`, ended on close). */
export function registerSql (fastify: FastifyInstance, config: PostgresConfig): void {
  let pool = config.pool
  if (pool === undefined) {
    pool = ownPool(fastify, 'postgres', { connectionString: config.connectionString!, max: config.max, connectionTimeoutMillis: config.connectionTimeoutMs })
  }
  const scoped = new ScopedSql(pool, config)
  fastify.decorateRequest('sql', {
    getter (this: FastifyRequest) {
      return scoped.for(this)
    }
  })
}
