/*
 * Sign-out that reaches every instance (option `sessions`). An access token outlives its session:
 * after a sign-out (this device, every device, or the others), a deleted user or a ban, the token
 * keeps verifying until `exp`. Supabase Auth keeps the truth in the project's own database: a
 * sign-out deletes the session's row of `auth.sessions` (deleting a user cascades to them), a ban is
 * `auth.users.banned_until` (supabase/auth's migrations). This module reads it, so that every
 * instance refuses such a token at most `every` seconds after it happened:
 *   - a session is read by a check at most `every` seconds old, or its token was issued less than
 *     `every` seconds ago (the session stood then: it cannot have ended longer ago than that);
 *     otherwise the request waits for the next check, which reads it (a session this instance never
 *     saw waits once);
 *   - one query reads every session due, never one per request or per session: a check every
 *     `every` seconds of every session in use, and between them one for the sessions that wait (one
 *     query in flight at most; the ones that arrive meanwhile wait for the next). Token-cache hits
 *     are checked alike: the check follows the verification;
 *   - when the database cannot answer, the sessions read before answer from what was read, for
 *     `lastKnownFor` seconds (`onUnavailable: 'last-known'`, the default), or not at all
 *     (`'refuse'`); the others get 503 with Retry-After. Never an unbounded wait: a check that takes
 *     longer than `timeout` fails, its connection destroyed.
 */
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import { objectOption, poolOption, type SqlPool } from './acting-options'
import { connectWithin, ownPool } from './pg-pool'
import { pipeline, type StepResult } from './pipeline'
import { ActingUsageError, NoSessionError, SessionEndedError, SessionsUnavailableError } from './errors'
import { fail, integer, seconds, type Config } from './options'
import type { Claims, TokenVerifier } from './verify'

/** Option `sessions`: where the check reads Supabase Auth's sessions, and how often. Durations in seconds. */
export interface SessionsOptions {
  /**
   * A `pg` Pool of a role that may read only what the check needs (see the guide's grants): never the
   * pool of `postgres`, which runs users' SQL. The plugin never ends it.
   */
  pool?: SqlPool
  /** A connection string of that role: the plugin makes a pool of one connection (`pg` needed) and ends it on close. */
  connectionString?: string
  /** How long after a sign-out, a deleted user or a ban its tokens may still be accepted. Default 10. */
  every?: number
  /** The longest a check (its connection and its query) may take, and a request waits for one: at most `every`. Default 5 (or `every`, when shorter). */
  timeout?: number
  /**
   * When the database cannot answer: `'last-known'` (default) answers sessions read before from what
   * was read, for `lastKnownFor` seconds past their last check's `every`; `'refuse'` answers 503 with
   * Retry-After as soon as a session's last check is older than `every`. A session never read is 503
   * either way.
   */
  onUnavailable?: 'last-known' | 'refuse'
  /** With `onUnavailable: 'last-known'`: how long, past `every`, a session read before answers from what was read. Default 60. */
  lastKnownFor?: number
  /** Most sessions held at once, watched ones apart (each about 200 bytes); past it the oldest is forgotten, and read again when it comes back. Default 100000. */
  maxSessions?: number
}

/** The option `sessions` checked, durations in milliseconds. */
export interface SessionsConfig {
  option: string
  pool: SqlPool | undefined
  connectionString: string | undefined
  everyMs: number
  timeoutMs: number
  lastKnownMs: number
  maxSessions: number
}

export const DEFAULT_EVERY = 10
export const DEFAULT_SESSIONS_TIMEOUT = 5
export const DEFAULT_LAST_KNOWN_FOR = 60
export const DEFAULT_MAX_SESSIONS = 100_000
const SESSIONS_KEYS = new Set(['pool', 'connectionString', 'every', 'timeout', 'onUnavailable', 'lastKnownFor', 'maxSessions'])

/** The option `sessions` (top level, or an `issuers` entry's). `undefined` when not given. */
export function sessionsOption (name: string, value: unknown): SessionsConfig | undefined {
  if (value === undefined) return undefined
  const own = objectOption(name, value, SESSIONS_KEYS, '{ pool } or { connectionString }, with every?')
  const { pool, connectionString } = poolOption(name, own, '(a pg Pool of a role that may read only what the check needs)')
  const everyMs = seconds(`${name}.every`, own.every, DEFAULT_EVERY, 0.05, 3600)
  const policy = own.onUnavailable ?? 'last-known'
  if (policy !== 'last-known' && policy !== 'refuse') fail(`${name}.onUnavailable must be 'last-known' or 'refuse'`)
  return {
    option: name,
    pool,
    connectionString,
    everyMs,
    timeoutMs: timeoutOf(name, own.timeout, everyMs),
    lastKnownMs: policy === 'refuse' ? 0 : seconds(`${name}.lastKnownFor`, own.lastKnownFor, DEFAULT_LAST_KNOWN_FOR, 0, 86_400),
    maxSessions: integer(`${name}.maxSessions`, own.maxSessions, DEFAULT_MAX_SESSIONS, 1, 10_000_000)
  }
}

/**
 * A check's `timeout`: at most `every` (default 5 s, or `every` when shorter). A check that took longer
 * would read the database as it was more than `every` before its answer.
 */
function timeoutOf (name: string, value: unknown, everyMs: number): number {
  if (value === undefined) return Math.min(DEFAULT_SESSIONS_TIMEOUT * 1000, everyMs)
  const ms = seconds(`${name}.timeout`, value, DEFAULT_SESSIONS_TIMEOUT, 0.01, 60)
  if (ms > everyMs) fail(`${name}.timeout (${ms / 1000} s) is longer than ${name}.every (${everyMs / 1000} s): a check would read the database as it was longer ago than every`)
  return ms
}

/**
 * The check's one query: of the sessions given (with the user each token names), those that no longer
 * stand, and why. Only the ended ones come back, so a check of 100,000 sessions in use returns a few
 * rows. It reads `auth.sessions (id, user_id, not_after)` and `auth.users (id, deleted_at,
 * banned_until)`: the columns the guide grants. No named statement: a transaction pooler keeps working.
 */
export const SESSIONS_QUERY = `select q.id::text as id, case
    when s.id is null or s.user_id <> q.user_id then 'signed out'
    when u.id is null or u.deleted_at is not null then 'user deleted'
    when u.banned_until > now() then 'user banned'
    else 'past not_after' end as ended
  from unnest($1::uuid[], $2::uuid[]) as q (id, user_id)
  left join auth.sessions s on s.id = q.id
  left join auth.users u on u.id = s.user_id
  where s.id is null or s.user_id <> q.user_id or u.id is null or u.deleted_at is not null
    or u.banned_until > now() or s.not_after <= now()`

/** A UUID as Supabase Auth writes session and user ids (any version, lowercase or not). */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Why a session no longer stands, as the query says it. */
type Ended = 'signed out' | 'user deleted' | 'user banned' | 'past not_after'

/** What a session's end is told to: a `watch` callback. */
export type SessionEndListener = (err: Error) => void

/** A session in use on this instance. */
interface Session {
  readonly id: string
  /** The user its first token named: a token of another user with this session_id is refused. */
  readonly userId: string
  /** `unchecked` until a check read it; then `live`, or why it ended, as of `checkedAt`. */
  state: 'unchecked' | 'live' | Ended
  /** When the check that read `state` started (its query saw the database as of then or later). */
  checkedAt: number
  /** The latest `exp` of its tokens seen (ms): held until then, unless watched. */
  expiresAt: number
  /** The check in flight that reads it. */
  round: Promise<void> | undefined
  watchers: Set<SessionEndListener> | undefined
  /** Forgotten to hold a newer one (`maxSessions`): a request that waited for it gets 503. */
  forgotten: boolean
}

/** The checks' counts, for `stats()`. */
export interface SessionStats {
  /** Sessions held now (read, or waiting to be). */
  tracked: number
  /** Queries made so far (each reads every session due). */
  checks: number
  /** Checks that failed (no connection, an error, or past `timeout`). */
  failures: number
  /** When the last check succeeded, or failed (ms since the epoch); 0 before any. */
  lastCheckAt: number
  lastFailureAt: number
}

/** After a failed check, how long before the next may start: a database that is down is not asked in a loop. */
const RETRY_MS = 1000

/**
 * The check's own bounds, set transaction-locally before its query in the same round trip: a query
 * past its time is cancelled by PostgreSQL itself, not only given up on by the client (whose
 * connection is then destroyed), so no check of an earlier round still runs on the server.
 */
const BOUNDS = 'select set_config(\'statement_timeout\', $1, true), set_config(\'lock_timeout\', $1, true)'

/** The sessions of one issuer's tokens, checked against its project's database. */
export class SessionChecker {
  readonly #config: SessionsConfig
  readonly #pool: SqlPool
  readonly #log: FastifyBaseLogger
  readonly #toleranceMs: number
  /** Sessions nobody watches, oldest first: the first is forgotten when `maxSessions` are held. */
  readonly #held = new Map<string, Session>()
  /** Watched sessions: held while watched, outside `maxSessions`. */
  readonly #watched = new Map<string, Session>()
  #inFlight: Promise<void> | undefined
  /** A check asked for while one is in flight: it starts when that one ends. */
  #queued: { promise: Promise<void>, resolve: () => void } | undefined
  #timer: NodeJS.Timeout | undefined
  #failedAt = 0
  #closed = false
  readonly #stats = { checks: 0, failures: 0, lastCheckAt: 0, lastFailureAt: 0 }

  constructor (config: SessionsConfig, pool: SqlPool, log: FastifyBaseLogger, clockToleranceMs: number) {
    this.#config = config
    this.#pool = pool
    this.#log = log
    this.#toleranceMs = clockToleranceMs
  }

  /**
   * Whether a verified token's session stands: nothing (at once) when it does, a promise when a check
   * must read it first; throws (or rejects with) the answer otherwise.
   */
  check (claims: Claims): void | Promise<void> {
    const session = this.#sessionOf(claims)
    if (this.#stands(session, claims, Date.now())) return
    return this.#wait(session, claims)
  }

  /**
   * Tells `onEnded` when a check finds the session of `claims` ended (a WebSocket authenticated once):
   * the session is checked every `every` seconds while watched, whatever its tokens' `exp`. Returns
   * the function that stops watching.
   */
  watch (claims: Claims, onEnded: SessionEndListener): () => void {
    const session = this.#sessionOf(claims)
    if (session.state !== 'unchecked' && session.state !== 'live') {
      const ended = new SessionEndedError(`the session ended (${session.state})`)
      queueMicrotask(() => this.#tell(onEnded, ended))
      return () => {}
    }
    if (session.watchers === undefined) {
      session.watchers = new Set()
      this.#held.delete(session.id)
      this.#watched.set(session.id, session)
    }
    // each watch its own entry: the same function watched twice is stopped once per stop
    const watcher: SessionEndListener = (err) => onEnded(err)
    session.watchers.add(watcher)
    return () => {
      session.watchers?.delete(watcher)
      if (session.watchers?.size === 0) this.#unwatch(session)
    }
  }

  stats (): SessionStats {
    return { tracked: this.#held.size + this.#watched.size, ...this.#stats }
  }

  /** Stops checking; a check in flight ends on its own (its connection is given back or destroyed). */
  close (): void {
    this.#closed = true
    clearInterval(this.#timer)
    this.#timer = undefined
  }

  /** The session a verified token names, held from now on: refused when it names none that can be looked up. */
  #sessionOf (claims: Claims): Session {
    const id = claims.session_id
    const expiresAt = (claims.exp as number) * 1000 + this.#toleranceMs
    // the usual token: its session held under the id as written, of the same user, both checked when it was first held
    const known = typeof id === 'string' ? this.#held.get(id) ?? this.#watched.get(id) : undefined
    if (known !== undefined && known.userId === claims.sub) return this.#lasting(known, expiresAt)
    if (id === undefined) throw new NoSessionError('it has no session_id claim (the option sessions needs one in every user token)')
    if (typeof id !== 'string' || !UUID.test(id)) throw new NoSessionError('its session_id claim is not a UUID')
    // verify.ts has checked sub is a non-empty string
    const userId = claims.sub as string
    if (!UUID.test(userId)) throw new NoSessionError('its sub claim is not a user id (a UUID)')
    const key = id.toLowerCase()
    const session = this.#held.get(key) ?? this.#watched.get(key)
    if (session === undefined) {
      const made: Session = { id: key, userId: userId.toLowerCase(), state: 'unchecked', checkedAt: 0, expiresAt, round: undefined, watchers: undefined, forgotten: false }
      this.#hold(made)
      return made
    }
    if (session.userId !== userId.toLowerCase()) throw new SessionEndedError('the session is another user\'s')
    return this.#lasting(session, expiresAt)
  }

  /** A session held, kept at least until `expiresAt` (the `exp` of a token of it just seen). */
  #lasting (session: Session, expiresAt: number): Session {
    if (expiresAt > session.expiresAt) session.expiresAt = expiresAt
    return session
  }

  /** Holds a session nobody watches, forgetting the oldest when `maxSessions` are held; starts the checks. */
  #hold (session: Session): void {
    if (this.#held.size >= this.#config.maxSessions) {
      const [oldest] = this.#held.values()
      oldest!.forgotten = true
      this.#held.delete(oldest!.id)
    }
    this.#held.set(session.id, session)
    if (this.#timer === undefined && !this.#closed) {
      this.#timer = setInterval(() => this.#tick(), this.#config.everyMs).unref()
    }
  }

  /** A session nobody watches any more: held as the others are. */
  #unwatch (session: Session): void {
    session.watchers = undefined
    if (this.#watched.delete(session.id)) this.#hold(session)
  }

  /** Whether the session stands now: read at most `every` ago, or the token issued less than `every` ago. Throws when it ended. */
  #stands (session: Session, claims: Claims, now: number): boolean {
    const { state } = session
    if (state !== 'live' && state !== 'unchecked') throw new SessionEndedError(`the session ended (${state})`)
    if (state === 'live' && now - session.checkedAt < this.#config.everyMs) return true
    // the session stood when the token was issued: it cannot have ended longer ago than that. An
    // `iat` ahead of this clock by more than its one-second grain and the clock tolerance is no proof
    const iat = claims.iat
    if (typeof iat !== 'number') return false
    const age = now - iat * 1000
    return age < this.#config.everyMs && age > -(1000 + this.#toleranceMs)
  }

  /** Whether the failure policy answers the session from what the last check read: only while checks fail. */
  #lastKnown (session: Session, now: number): boolean {
    return this.#failedAt !== 0 && session.state === 'live' && now - session.checkedAt < this.#config.everyMs + this.#config.lastKnownMs
  }

  /**
   * A session whose last check is too old: read by the check in flight or the next, waited for at
   * most `timeout`; meanwhile, while checks fail, the failure policy.
   */
  #wait (session: Session, claims: Claims): void | Promise<void> {
    if (this.#lastKnown(session, Date.now())) {
      // answered from what was read; a check is asked meanwhile, which tells when the database is back
      this.#next()
      return
    }
    const round = session.round ?? this.#next()
    if (round === undefined) throw this.#unavailable(session)
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<void>((resolve) => { timer = setTimeout(resolve, this.#config.timeoutMs) })
    return Promise.race([round, late]).then(() => {
      clearTimeout(timer)
      const now = Date.now()
      if (!this.#stands(session, claims, now) && !this.#lastKnown(session, now)) throw this.#unavailable(session)
    })
  }

  #unavailable (session: Session): Error {
    if (session.forgotten) return new SessionsUnavailableError(`more sessions are in use than maxSessions (${this.#config.maxSessions}): this one was forgotten while it waited`)
    return new SessionsUnavailableError(session.state === 'unchecked' ? 'the session was never read, and the database cannot answer now' : 'the database cannot answer now')
  }

  /** Whether the last check failed less than a second ago: no check starts then. */
  #coolingDown (now: number): boolean {
    return this.#failedAt !== 0 && now - this.#failedAt < Math.min(RETRY_MS, this.#config.everyMs)
  }

  /** The next check of the sessions due: now, after the one in flight, or none while the last failure is recent. */
  #next (): Promise<void> | undefined {
    if (this.#inFlight === undefined) return this.#coolingDown(Date.now()) ? undefined : this.#run(false)
    if (this.#queued === undefined) {
      let done!: () => void
      const promise = new Promise<void>((resolve) => { done = resolve })
      this.#queued = { promise, resolve: done }
    }
    return this.#queued.promise
  }

  /** Every `every` seconds: forgets the sessions whose tokens all expired, and checks the others (all of them). */
  #tick (): void {
    const now = Date.now()
    for (const [id, session] of this.#held) {
      if (session.expiresAt < now) this.#held.delete(id)
    }
    if (this.#held.size + this.#watched.size === 0) {
      clearInterval(this.#timer)
      this.#timer = undefined
      return
    }
    if (this.#inFlight === undefined && !this.#coolingDown(now)) this.#run(true)
  }

  /**
   * One check: every session held (`all`), or those due: never read, or read half of `every` ago or
   * more (ended and watched ones too: a lifted ban is seen, a watcher told). A check a request asked
   * for this way also reads what the periodic one, which it may delay by a period, would have.
   * Resolves when it ended, whatever its outcome.
   */
  #run (all: boolean): Promise<void> {
    const started = Date.now()
    const half = this.#config.everyMs / 2
    const batch: Session[] = []
    for (const held of [this.#held, this.#watched]) {
      for (const session of held.values()) {
        if (all || session.state === 'unchecked' || started - session.checkedAt >= half) batch.push(session)
      }
    }
    const round = this.#query(batch).then(
      (ended) => this.#record(batch, ended, started),
      (err: unknown) => this.#failed(err)
    ).finally(() => this.#ended(batch, round))
    for (const session of batch) session.round = round
    this.#inFlight = round
    return round
  }

  /** What a check read: the sessions it names ended, every other one of the batch stands as of when it started. */
  #record (batch: readonly Session[], ended: ReadonlyMap<string, Ended>, started: number): void {
    this.#failedAt = 0
    this.#stats.lastCheckAt = Date.now()
    for (const session of batch) {
      const reason = ended.get(session.id)
      session.state = reason ?? 'live'
      session.checkedAt = started
      if (reason !== undefined && session.watchers !== undefined) {
        const err = new SessionEndedError(`the session ended (${reason})`)
        for (const watcher of session.watchers) this.#tell(watcher, err)
        this.#unwatch(session)
      }
    }
  }

  /** Calls a watcher: what it throws, or the promise it returns rejects with, is logged, never left unhandled. */
  #tell (watcher: SessionEndListener, err: Error): void {
    const logged = (error: unknown): void => this.#log.warn({ err: error }, 'supabase-jwks: a session watcher failed')
    try {
      const result = watcher(err) as unknown
      if (result instanceof Promise) result.catch(logged)
    } catch (error) {
      logged(error)
    }
  }

  #failed (err: unknown): void {
    this.#failedAt = this.#stats.lastFailureAt = Date.now()
    this.#stats.failures++
    this.#log.warn({ err, option: this.#config.option }, 'supabase-jwks: the sessions check failed: sessions read before answer from the last check, others get 503')
  }

  /** A check ended: the next one asked meanwhile starts now (or, after a failure, its waiters take the failure policy). */
  #ended (batch: readonly Session[], round: Promise<void>): void {
    for (const session of batch) if (session.round === round) session.round = undefined
    this.#inFlight = undefined
    const queued = this.#queued
    if (queued === undefined) return
    this.#queued = undefined
    const next = this.#next()
    if (next === undefined) queued.resolve()
    else next.then(queued.resolve)
  }

  #query (batch: readonly Session[]): Promise<Map<string, Ended>> {
    this.#stats.checks++
    return readEnded(this.#pool, batch, this.#config.timeoutMs)
  }
}

/**
 * One check: of `batch`, the sessions that ended, by id. Within `timeoutMs` (its connection included),
 * its own bounds set first in the same round trip.
 */
export async function readEnded (pool: SqlPool, batch: ReadonlyArray<{ id: string, userId: string }>, timeoutMs: number): Promise<Map<string, Ended>> {
  const deadline = Date.now() + timeoutMs
  const { client, release } = await connectWithin(pool, timeoutMs)
  const ids = `{${batch.map((session) => session.id).join(',')}}`
  const users = `{${batch.map((session) => session.userId).join(',')}}`
  let results: StepResult[]
  try {
    // whole milliseconds: an older PostgreSQL refuses a fraction in statement_timeout
    const left = Math.max(1, Math.ceil(deadline - Date.now()))
    const steps = [{ text: BOUNDS, values: [String(left)], rows: true }, { text: SESSIONS_QUERY, values: [ids, users], rows: true }]
    results = await within(pipeline(client, steps), left, `the sessions query took longer than ${timeoutMs / 1000} s`)
  } catch (err) {
    // a query past its time (or failed) may still be on the connection: destroyed, never reused
    release(true)
    throw err
  }
  release()
  return new Map((results[1]!.rows as Array<{ id: string, ended: Ended }>).map((row) => [row.id, row.ended]))
}

/** `promise`, or a rejection with `message` once `ms` passed. */
function within<T> (promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer!: NodeJS.Timeout
  const late = new Promise<never>((resolve, reject) => { timer = setTimeout(() => reject(new Error(message)), ms) })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

/** What a registration's `sessions` options give the plugin: the check after verification, the watch, the counts. */
export interface SessionChecks {
  /** `verify`, followed by the check of the token's session (for the issuers whose `sessions` is set). */
  after (verify: TokenVerifier): TokenVerifier
  watch (claims: Claims, onEnded: SessionEndListener): () => void
  stats (): SessionStats
}

/**
 * The checks of every issuer whose option `sessions` is set (`undefined` when none is), each on its
 * own pool (made of `connectionString`, or given), stopped when the app closes.
 */
export function createSessionChecks (fastify: FastifyInstance, config: Config): SessionChecks | undefined {
  if (config.issuers.every((issuer) => issuer.sessions === undefined)) return undefined
  const checkers: Array<SessionChecker | undefined> = []
  fastify.addHook('onClose', async function closeSupabaseJwksSessions () {
    for (const checker of checkers) checker?.close()
  })
  for (const issuer of config.issuers) {
    const sessions = issuer.sessions
    if (sessions === undefined) {
      checkers.push(undefined)
      continue
    }
    // one connection, kept between checks (pg's default closes it after 10 s idle: every check would reconnect)
    const settings = { connectionString: sessions.connectionString!, max: 1, connectionTimeoutMillis: sessions.timeoutMs, idleTimeoutMillis: Math.max(30_000, 3 * sessions.everyMs) }
    // the checks stop before the pool ends: none starts on an ended pool (called at close, once checker is made)
    const pool = sessions.pool ?? ownPool(fastify, sessions.option, settings, () => checker.close())
    const checker = new SessionChecker(sessions, pool, fastify.log, issuer.clockToleranceMs)
    checkers.push(checker)
  }
  const byIssuer = config.routed ? new Map(config.issuers.map((issuer, index) => [issuer.issuer![0]!, checkers[index]])) : undefined
  /** The check of a verified token's issuer: the only one, or by its exact `iss` (verification routed it so). */
  const checkerOf = (claims: Claims): SessionChecker | undefined => byIssuer === undefined ? checkers[0] : byIssuer.get(claims.iss as string)
  function checked (claims: Claims): Claims | Promise<Claims> {
    const pending = checkerOf(claims)?.check(claims)
    return pending === undefined ? claims : pending.then(() => claims)
  }
  return {
    after (verify) {
      return function verifyToken (token) {
        const claims = verify(token)
        return claims instanceof Promise ? claims.then(checked) : checked(claims)
      }
    },
    watch (claims, onEnded) {
      const checker = checkerOf(claims)
      if (checker === undefined) throw new ActingUsageError('watchSession() needs the option sessions for the token\'s issuer')
      if (typeof onEnded !== 'function') throw new ActingUsageError('watchSession(user, onEnded): onEnded must be a function')
      return checker.watch(claims, onEnded)
    },
    stats () {
      const each = checkers.flatMap((checker) => checker === undefined ? [] : [checker.stats()])
      return {
        tracked: sum(each, 'tracked'),
        checks: sum(each, 'checks'),
        failures: sum(each, 'failures'),
        lastCheckAt: Math.max(...each.map((stats) => stats.lastCheckAt)),
        lastFailureAt: Math.max(...each.map((stats) => stats.lastFailureAt))
      }
    }
  }
}

function sum (each: readonly SessionStats[], key: 'tracked' | 'checks' | 'failures'): number {
  return each.reduce((total, stats) => total + stats[key], 0)
}
