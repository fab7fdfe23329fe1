/*
 * The sessions of the test issuer (lib/testing.ts), kept as Supabase Auth (GoTrue) keeps them, and,
 * given a database, written into `auth.users` and `auth.sessions` as GoTrue writes them (read in
 * supabase/auth: internal/models/sessions.go, user.go, internal/api/logout.go, admin.go,
 * internal/tokens/service.go):
 *
 * - a sign-in opens a session (a UUID: the access token's `session_id`) with one refresh token;
 * - a refresh keeps the session, rotates its refresh token and sets `refreshed_at`;
 * - a sign-out deletes the rows of the sessions it ends (`local`: the token's own, `global`: every
 *   session of its user, `others`: every other one), and their refresh tokens with them;
 * - a ban sets `auth.users.banned_until` and ends no session (GoTrue's `User.Ban` updates that column
 *   only): sign-ins and refreshes are refused until it passes;
 * - a hard delete of the user cascades to its sessions.
 *
 * Each change is written before it is made in memory, so a database that fails changes nothing (as
 * GoTrue's transaction would), and changes run one at a time, so a refresh token is never used twice.
 * No `pg` import: the database is whatever has a `query(text, values)` (a `pg` Pool or Client).
 */
import { randomBytes, randomUUID } from 'node:crypto'

/** A database the test issuer writes into: a `pg` Pool or Client, or anything with their `query`. */
export interface TestDatabase {
  query (text: string, values?: unknown[]): Promise<unknown>
}

/** Which sessions a sign-out ends: all of the user's (`global`), the token's own (`local`), or the other ones. */
export type SignOutScope = 'global' | 'local' | 'others'

const SCOPES: readonly string[] = ['global', 'local', 'others'] satisfies SignOutScope[]

/** A refusal of Supabase Auth's API: its HTTP status and its `error_code`, with its message. */
export class TestAuthError extends Error {
  readonly status: number
  readonly code: string
  constructor (status: number, code: string, message: string, options?: ErrorOptions) {
    super(message, options)
    this.name = 'TestAuthError'
    this.status = status
    this.code = code
  }

  /** The body GoTrue answers with. */
  get body (): { code: number, error_code: string, msg: string } {
    return { code: this.status, error_code: this.code, msg: this.message }
  }
}

/** What the issuer writes into `auth.users.encrypted_password`: a non-null value that no password matches. */
export const PASSWORD_PLACEHOLDER = 'test-issuer: not a password hash'

/**
 * What GoTrue writes for each event, every value a bind parameter. Times come from the issuer's clock,
 * as GoTrue's come from its own. `refreshed_at` is a `timestamp without time zone` that GoTrue fills
 * with UTC: an ISO string gives it the UTC time (PostgreSQL ignores a zone in a literal of that type).
 */
const WRITES = {
  signIn: [
    'insert into auth.users (id, email, encrypted_password) values ($1, $2, $3) on conflict (id) do update set email = excluded.email, updated_at = $4',
    'insert into auth.sessions (id, user_id, created_at, updated_at, aal) values ($1, $2, $3, $3, \'aal1\')'
  ],
  refresh: 'update auth.sessions set refreshed_at = $2, updated_at = $3 where id = $1',
  signOut: {
    local: 'delete from auth.sessions where id = $1',
    global: 'delete from auth.sessions where user_id = $1',
    others: 'delete from auth.sessions where user_id = $1 and id <> $2'
  },
  ban: 'update auth.users set banned_until = $2, updated_at = $3 where id = $1',
  deleteUser: 'delete from auth.users where id = $1'
} as const

/** The least the sessions need of a user. */
export interface SessionUser {
  id: string
  email: string
}

/** A live session: what `auth.sessions` holds of it, and its refresh tokens. */
export interface LiveSession<User extends SessionUser> {
  readonly id: string
  readonly user: User
  readonly createdAt: Date
  refreshedAt: Date | undefined
  readonly refreshTokens: Set<string>
}

/** A session and the refresh token just issued for it. */
export interface Issued<User extends SessionUser> {
  session: LiveSession<User>
  refreshToken: string
}

export interface SessionBook<User extends SessionUser> {
  /** A sign-in in memory only: never written to the database. */
  open (user: User): Issued<User>
  /** A sign-in, written to the database first. */
  signIn (user: User): Promise<Issued<User>>
  /** A `refresh_token` grant: the same session, a new refresh token; the one used is spent. */
  refresh (refreshToken: string): Promise<Issued<User>>
  /** The live session `id`, if any. */
  find (id: string): LiveSession<User> | undefined
  /** Ends the sessions `scope` names; without `sessionId` (a token with no `session_id`), all of the user's. */
  signOut (userId: string, sessionId: string | undefined, scope: SignOutScope): Promise<void>
  /** Bans the user for `seconds` from now; `0` lifts the ban. */
  ban (userId: string, seconds: number): Promise<void>
  /** Whether a ban of the user runs now. */
  banned (userId: string): boolean
  /** Forgets the user's sessions and refresh tokens; the database deletes the user, and its sessions by cascade. */
  deleteUser (userId: string): Promise<void>
  /** Ids of the live sessions, of one user or of all, oldest first. */
  ids (userId?: string): string[]
}

/** `scope` if it is one GoTrue takes; a 400 as GoTrue's otherwise. */
export function signOutScope (scope: string | null | undefined): SignOutScope {
  if (scope === null || scope === undefined || scope === '') return 'global'
  if (SCOPES.includes(scope)) return scope as SignOutScope
  throw new TestAuthError(400, 'validation_failed', `Unsupported logout scope ${JSON.stringify(scope)}`)
}

export function createSessionBook<User extends SessionUser> (database: TestDatabase | undefined): SessionBook<User> {
  const sessions = new Map<string, LiveSession<User>>()
  const refreshTokens = new Map<string, LiveSession<User>>()
  const bans = new Map<string, Date>()
  let last: Promise<unknown> = Promise.resolve()

  /** Runs `change` once every change before it has ended: one at a time, as GoTrue's row locks make them. */
  function inTurn<T> (change: () => Promise<T>): Promise<T> {
    const result = last.then(change)
    last = result.catch(() => {})
    return result
  }

  /** Runs the statements in order; a database error becomes GoTrue's 500 with `message`. */
  async function write (message: string, statements: ReadonlyArray<[string, unknown[]]>): Promise<void> {
    if (database === undefined) return
    try {
      for (const [text, values] of statements) await database.query(text, values)
    } catch (error) {
      throw new TestAuthError(500, 'unexpected_failure', message, { cause: error })
    }
  }

  function issue (session: LiveSession<User>): Issued<User> {
    const refreshToken = randomBytes(12).toString('base64url')
    session.refreshTokens.add(refreshToken)
    refreshTokens.set(refreshToken, session)
    return { session, refreshToken }
  }

  function banned (userId: string): boolean {
    const until = bans.get(userId)
    return until !== undefined && until.getTime() > Date.now()
  }

  function refuseBanned (userId: string, message: string): void {
    if (banned(userId)) throw new TestAuthError(400, 'user_banned', message)
  }

  function newSession (user: User): LiveSession<User> {
    refuseBanned(user.id, 'User is banned')
    return { id: randomUUID(), user, createdAt: new Date(), refreshedAt: undefined, refreshTokens: new Set() }
  }

  function open (user: User): Issued<User> {
    const session = newSession(user)
    sessions.set(session.id, session)
    return issue(session)
  }

  function end (session: LiveSession<User>): void {
    sessions.delete(session.id)
    for (const token of session.refreshTokens) refreshTokens.delete(token)
  }

  /** The sessions a sign-out of `scope` ends, as GoTrue's DELETE selects them. */
  function ending (userId: string, sessionId: string | undefined, scope: SignOutScope): Array<LiveSession<User>> {
    return [...sessions.values()].filter((session) => scope === 'local'
      ? session.id === sessionId
      : session.user.id === userId && (scope === 'global' || session.id !== sessionId))
  }

  return {
    open,
    signIn: (user) => inTurn(async () => {
      const session = newSession(user)
      const at = session.createdAt.toISOString()
      await write('Database error creating new session', [
        [WRITES.signIn[0], [user.id, user.email, PASSWORD_PLACEHOLDER, at]],
        [WRITES.signIn[1], [session.id, user.id, at]]
      ])
      sessions.set(session.id, session)
      return issue(session)
    }),
    refresh: (refreshToken) => inTurn(async () => {
      const session = refreshTokens.get(refreshToken)
      if (session === undefined) {
        throw new TestAuthError(400, 'refresh_token_not_found', 'Invalid Refresh Token: Refresh Token Not Found')
      }
      refuseBanned(session.user.id, 'Invalid Refresh Token: User Banned')
      const at = new Date()
      await write('failed to update session information', [[WRITES.refresh, [session.id, at.toISOString(), at.toISOString()]]])
      session.refreshedAt = at
      session.refreshTokens.delete(refreshToken)
      refreshTokens.delete(refreshToken)
      return issue(session)
    }),
    find: (id) => sessions.get(id),
    signOut: (userId, sessionId, scope) => inTurn(async () => {
      // GoTrue: a token without a session ends every session of its user, whatever the scope
      const effective = sessionId === undefined ? 'global' : scope
      const values = effective === 'local' ? [sessionId] : effective === 'global' ? [userId] : [userId, sessionId]
      await write('Error logging out user', [[WRITES.signOut[effective], values]])
      for (const session of ending(userId, sessionId, effective)) end(session)
    }),
    ban: (userId, seconds) => inTurn(async () => {
      if (!Number.isFinite(seconds)) throw new TypeError(`banUser: seconds must be a finite number (0 lifts the ban), not ${seconds}`)
      const now = new Date()
      const until = seconds === 0 ? undefined : new Date(now.getTime() + seconds * 1000)
      await write('Error updating user', [[WRITES.ban, [userId, until?.toISOString() ?? null, now.toISOString()]]])
      if (until === undefined) bans.delete(userId)
      else bans.set(userId, until)
    }),
    banned,
    deleteUser: (userId) => inTurn(async () => {
      await write('Database error deleting user', [[WRITES.deleteUser, [userId]]])
      for (const session of ending(userId, undefined, 'global')) end(session)
      bans.delete(userId)
    }),
    ids: (userId) => [...sessions.values()].filter((session) => userId === undefined || session.user.id === userId).map((session) => session.id)
  }
}
