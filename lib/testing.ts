/**
 * A local Supabase Auth issuer for tests and demos: an HTTP server on 127.0.0.1 that serves
 * a JWKS the way GoTrue does, holds key pairs, and mints Supabase-shaped access tokens.
 *
 * ```ts
 * import { createTestIssuer } from 'fastify-supabase-jwks/testing'
 * const issuer = await createTestIssuer()
 * app.register(supabaseJwks, { supabaseUrl: issuer.url })
 * const token = issuer.sign({ email: 'ada@example.com' })
 * ```
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createHmac, generateKeyPairSync, randomBytes, randomUUID, sign as cryptoSign, verify as cryptoVerify, timingSafeEqual, type KeyObject } from 'node:crypto'
import type { AddressInfo } from 'node:net'
import { hashOf, keyInput } from './signature'
import { createSessionBook, signOutScope, TestAuthError, type Issued, type SignOutScope, type TestDatabase } from './testing-sessions'

export { TestAuthError, type SignOutScope, type TestDatabase } from './testing-sessions'

export type TestAlgorithm = 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512' | 'ES256' | 'ES384' | 'ES512' | 'EdDSA'

/** A key pair of the issuer. */
export interface TestKey {
  kid: string
  alg: TestAlgorithm
  privateKey: KeyObject
  publicKey: KeyObject
  /** The public JWK as the JWKS serves it (with `kid`, `alg`, `use`, `key_ops`). */
  jwk: Record<string, unknown>
}

export interface TestIssuerOptions {
  /** Algorithm of the first key. Default `'RS256'`. */
  alg?: TestAlgorithm
  /** Port on 127.0.0.1. Default `0` (any free port). */
  port?: number
  /** How long the server keeps an idle connection open, in ms (Node's default: 5000). */
  keepAliveTimeout?: number
  /**
   * A database to keep the sessions in as Supabase Auth does, for tests of what reads them: a `pg`
   * Pool or Client (anything with its `query(text, values)`) connected as a role that may write
   * `auth.users` and `auth.sessions`. A sign-in upserts the user (`id`, `email`, a placeholder
   * `encrypted_password`) and inserts the session, a refresh sets `refreshed_at`, a sign-out deletes
   * the rows of the sessions it ends, `banUser` sets `banned_until`, `deleteUser` deletes the user
   * (its sessions by cascade): each written before the request is answered. A database error answers
   * 500 `unexpected_failure` (the programmatic call rejects) and changes nothing. Users' ids must then
   * be UUIDs (`addUser`'s default). Default: none, sessions kept in memory only.
   */
  database?: TestDatabase
}

export interface SignOptions {
  /** Sign with this key (by kid). Default: the current key. */
  kid?: string
  /** Header fields to add or override (`undefined` removes one). */
  header?: Record<string, unknown>
}

/** A user of the issuer that supabase-js can sign in as (`signInWithPassword`). */
export interface TestUser {
  id: string
  email: string
  password: string
  user_metadata: Record<string, unknown>
  app_metadata: Record<string, unknown>
}

/** A session as Supabase Auth returns it from `POST /auth/v1/token` (and supabase-js stores it). */
export interface TestSession {
  access_token: string
  token_type: 'bearer'
  expires_in: number
  expires_at: number
  refresh_token: string
  user: Record<string, unknown>
}

/** Answers a JWKS request instead of the issuer, to simulate outages; return `true` when handled. */
export type JwksResponder = (request: IncomingMessage, response: ServerResponse) => boolean
/** Answers a `GET /auth/v1/user` request instead of the issuer; return `true` when handled. */
export type UserResponder = JwksResponder

export interface TestIssuer {
  /** The project URL to give the plugin as `supabaseUrl`, e.g. `http://127.0.0.1:54321`. */
  readonly url: string
  /** The `iss` of minted tokens: `${url}/auth/v1`. */
  readonly issuer: string
  /** `${url}/auth/v1/.well-known/jwks.json` (also served at `${url}/.well-known/jwks.json`, as bare GoTrue). */
  readonly jwksUrl: string
  /** JWKS requests served (or answered by a responder) so far. */
  readonly jwksRequests: number
  /** TCP connections accepted so far. */
  readonly connections: number
  /** The key that signs by default. */
  readonly currentKey: TestKey
  /** Every key held, published or not. */
  readonly keys: readonly TestKey[]
  /** Mints an access token; `claims` override the defaults (`undefined` removes a claim). */
  sign (claims?: Record<string, unknown>, options?: SignOptions): string
  /** Creates a key; published unless `publish: false`; becomes current with `current: true`. */
  addKey (options?: { alg?: TestAlgorithm, kid?: string, publish?: boolean, current?: boolean }): TestKey
  /** Adds `kid` to the JWKS. */
  publish (kid: string): void
  /** Removes `kid` from the JWKS (revocation); the key can still sign, as an attacker's copy could. */
  unpublish (kid: string): void
  /** Supabase-style rotation: a new key becomes current; the previous one stays published. */
  rotate (alg?: TestAlgorithm): TestKey
  /** Serves JWKS requests through `responder` (or normally again with `undefined`). */
  respondWith (responder: JwksResponder | undefined): void
  /** The project's legacy HS256 JWT secret (what `legacyTokens` lets a backend do without). */
  readonly legacySecret: string
  /** The publishable key that `GET /auth/v1/user` wants as `apikey`. */
  readonly apiKey: string
  /** `GET /auth/v1/user` requests received so far (answered or not). */
  readonly userRequests: number
  /** Mints a legacy access token: HS256 with the legacy secret, the same claims as `sign`. */
  signLegacy (claims?: Record<string, unknown>, options?: Pick<SignOptions, 'header'>): string
  /** Serves `GET /auth/v1/user` through `responder` (or normally again with `undefined`). */
  respondToUserWith (responder: UserResponder | undefined): void
  /**
   * Adds a user that can sign in by password, as supabase-js's `signInWithPassword` (and
   * @supabase/ssr's server client) does: `POST /auth/v1/token?grant_type=password`, then
   * `refresh_token` grants, `GET /auth/v1/user` and `POST /auth/v1/logout`. Tokens are signed
   * with the current key. Default id: a random UUID; metadata: `{}` and the email provider.
   */
  addUser (user: { email: string, password: string, id?: string, user_metadata?: Record<string, unknown>, app_metadata?: Record<string, unknown> }): TestUser
  /**
   * Signs `user` (one `addUser` returned) in as the token endpoint does, without HTTP: a new session,
   * whose access token carries its `session_id` (`claims` override the access token's claims). Kept
   * in memory only, never written to `database`: use `signIn` for a session the database holds.
   * Throws a `TestAuthError` (400 `user_banned`) while the user is banned.
   */
  session (user: TestUser, claims?: Record<string, unknown>): TestSession
  /**
   * Signs `user` in as `POST /auth/v1/token?grant_type=password` does, without HTTP: a new session,
   * written to `database` (when given) before it resolves. Rejects with a `TestAuthError`: 400
   * `user_banned` while the user is banned, 500 `unexpected_failure` when the database fails.
   */
  signIn (user: TestUser, claims?: Record<string, unknown>): Promise<TestSession>
  /**
   * Signs out as `POST /auth/v1/logout?scope=` does (supabase-js's `signOut({ scope })`), with an
   * access token of the issuer: `'local'` ends the token's own session, `'global'` (the default, as
   * GoTrue's and supabase-js's) every session of its user, `'others'` every other one. Ended sessions'
   * rows are deleted from `database` and their refresh tokens refused. Rejects with a `TestAuthError`
   * as GoTrue answers: 403 `bad_jwt` (not a genuine unexpired token of the issuer), `user_not_found`,
   * `session_not_found` (its session has already ended), `user_banned`; 500 when the database fails.
   */
  signOut (accessToken: string, scope?: SignOutScope): Promise<void>
  /**
   * Bans the user for `seconds` from now, as Supabase Auth's admin API does (`ban_duration`): sets
   * `auth.users.banned_until` in `database`; `0` lifts the ban. As in GoTrue, a ban ends no session:
   * the user's sign-ins and refreshes are refused (400 `user_banned`) until it passes, and its access
   * tokens stay valid until they expire.
   */
  banUser (id: string, seconds: number): Promise<void>
  /**
   * Deletes the user as Supabase Auth's admin API does (a hard delete): from `auth.users` in
   * `database`, which deletes its sessions by cascade. The issuer forgets the user, its sessions and
   * their refresh tokens.
   */
  deleteUser (id: string): Promise<void>
  /** Ids of the live sessions (the access tokens' `session_id`), of one user or of all, oldest first. */
  sessions (userId?: string): string[]
  /** Sign-ins and refreshes answered by `POST /auth/v1/token` so far (successful or not). */
  readonly tokenRequests: number
  /** `POST /auth/v1/logout` requests received so far (answered 204 or refused). */
  readonly logoutRequests: number
  /** The JWKS document served now. */
  jwks (): { keys: Array<Record<string, unknown>> }
  /**
   * The authorization server metadata, as Supabase Auth's OAuth 2.1 server publishes it at
   * `${url}/.well-known/oauth-authorization-server/auth/v1` (RFC 8414) and
   * `${issuer}/.well-known/openid-configuration` (OpenID Connect Discovery), where the issuer serves
   * it too: for OAuth and MCP clients' discovery. It names the OAuth endpoints; the issuer does not serve them.
   */
  authorizationServerMetadata (): Record<string, unknown>
  close (): Promise<void>
}

const CURVES: Record<string, string> = { ES256: 'P-256', ES384: 'P-384', ES512: 'P-521' }
const UUID = /^[\da-f]{8}-[\da-f]{4}-[\da-f]{4}-[\da-f]{4}-[\da-f]{12}$/i

function base64url (input: Buffer | string): string {
  return Buffer.from(input).toString('base64url')
}

/** Generates a key pair for `alg` and its public JWK. */
export function generateTestKey (alg: TestAlgorithm = 'RS256', kid: string = randomUUID()): TestKey {
  const kind = alg.slice(0, 2)
  const pair = kind === 'ES'
    ? generateKeyPairSync('ec', { namedCurve: CURVES[alg]! })
    : kind === 'Ed'
      ? generateKeyPairSync('ed25519')
      : generateKeyPairSync('rsa', { modulusLength: 2048 })
  const jwk = { ...pair.publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig', key_ops: ['verify'] }
  return { kid, alg, privateKey: pair.privateKey, publicKey: pair.publicKey, jwk }
}

/**
 * A key `signJwt` signs with: a private `KeyObject` for the asymmetric algorithms (RS*, PS*, ES*,
 * EdDSA); for HS256, HS384 and HS512 the shared secret, as a string (its UTF-8 bytes, as Supabase's
 * legacy JWT secret is used), a `Buffer` or a secret `KeyObject`.
 */
export type SigningKey = KeyObject | string | Buffer

/** Signs `header.payload` with `key` the way `alg` says (RFC 7518); returns the base64url signature. */
export function signInput (alg: string, key: SigningKey, input: string): string {
  // HS*: an HMAC with the secret (RFC 7518 §3.2); node:crypto refuses a key of the wrong kind
  if (alg.startsWith('HS')) return base64url(createHmac(`sha${alg.slice(2)}`, key).update(input).digest())
  if (typeof key === 'string' || Buffer.isBuffer(key)) {
    throw new TypeError(`signJwt: ${alg} signs with a private KeyObject (generateTestKey(alg).privateKey); a string or a Buffer is an HS256/HS384/HS512 secret`)
  }
  return base64url(cryptoSign(hashOf(alg), Buffer.from(input), keyInput(alg, key)))
}

/**
 * Encodes and signs a JWT from any header and payload, by `header.alg`: for crafting tokens in
 * tests. `key` is a private `KeyObject`, or for HS* the secret (`signJwt({ alg: 'HS256', typ: 'JWT' },
 * claims, issuer.legacySecret)` signs a legacy token as `signLegacy` does).
 */
export function signJwt (header: Record<string, unknown>, payload: Record<string, unknown>, key: SigningKey): string {
  const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(payload))}`
  return `${input}.${signInput(String(header.alg), key, input)}`
}

function withoutUndefined (input: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(input).filter(([, value]) => value !== undefined))
}

/** Starts a local issuer on 127.0.0.1. */
export async function createTestIssuer (options: TestIssuerOptions = {}): Promise<TestIssuer> {
  const keys: TestKey[] = [generateTestKey(options.alg ?? 'RS256')]
  const published = new Set<string>([keys[0]!.kid])
  let current = keys[0]!
  let jwksRequests = 0
  let responder: JwksResponder | undefined
  let userResponder: UserResponder | undefined
  let userRequests = 0
  const legacySecret = randomBytes(32).toString('base64url')
  const apiKey = `sb_publishable_${randomBytes(16).toString('base64url')}`

  function jwks () {
    return { keys: keys.filter((key) => published.has(key.kid)).map((key) => key.jwk) }
  }

  function json (response: ServerResponse, status: number, body: unknown): void {
    response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
  }

  /** The payload of a genuine, unexpired legacy token, or `undefined`. */
  function legacyPayload (token: string): Record<string, unknown> | undefined {
    const [head, body, signature] = token.split('.')
    if (signature === undefined) return undefined
    const expected = createHmac('sha256', legacySecret).update(`${head}.${body}`).digest()
    const given = Buffer.from(signature, 'base64url')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined
    try {
      const header = JSON.parse(Buffer.from(head!, 'base64url').toString()) as Record<string, unknown>
      const payload = JSON.parse(Buffer.from(body!, 'base64url').toString()) as Record<string, unknown>
      return header.alg === 'HS256' && typeof payload.exp === 'number' && payload.exp * 1000 > Date.now() ? payload : undefined
    } catch {
      return undefined
    }
  }

  /** The hosted gateway's refusal of a request without the project's API key as `apikey`. */
  function apiKeyRefusal (request: IncomingMessage): { message: string } | undefined {
    if (request.headers.apikey === undefined) return { message: 'No API key found in request' }
    if (request.headers.apikey !== apiKey) return { message: 'Invalid API key' }
    return undefined
  }

  function bearerOf (request: IncomingMessage): string | undefined {
    return /^Bearer (.+)$/i.exec(request.headers.authorization ?? '')?.[1]
  }

  /** `GET /auth/v1/user` as the hosted gateway and GoTrue answer it. */
  function user (request: IncomingMessage, response: ServerResponse): void {
    userRequests++
    if (userResponder?.(request, response)) return
    const refusal = apiKeyRefusal(request)
    if (refusal !== undefined) return json(response, 401, refusal)
    const bearer = bearerOf(request)
    const signedIn = bearer === undefined ? undefined : accessUser(bearer)
    if (signedIn !== undefined) return json(response, 200, signedIn)
    const payload = bearer === undefined ? undefined : legacyPayload(bearer)
    if (payload === undefined) {
      return json(response, 401, { code: 401, error_code: 'bad_jwt', msg: 'invalid JWT: unable to parse or verify signature' })
    }
    json(response, 200, {
      id: payload.sub,
      aud: payload.aud,
      role: payload.role,
      email: payload.email,
      phone: payload.phone,
      app_metadata: payload.app_metadata,
      user_metadata: payload.user_metadata,
      is_anonymous: payload.is_anonymous
    })
  }

  const users = new Map<string, TestUser>()
  const book = createSessionBook<TestUser>(options.database)
  let tokenRequests = 0
  let logoutRequests = 0

  /** The user as GoTrue's API shows it. */
  function userJson (account: TestUser): Record<string, unknown> {
    const at = new Date().toISOString()
    return {
      id: account.id,
      aud: 'authenticated',
      role: 'authenticated',
      email: account.email,
      email_confirmed_at: at,
      phone: '',
      confirmed_at: at,
      last_sign_in_at: at,
      app_metadata: account.app_metadata,
      user_metadata: account.user_metadata,
      identities: [],
      created_at: at,
      updated_at: at,
      is_anonymous: false
    }
  }

  /** The token endpoint's answer for a session just issued: an access token of that session. */
  function tokenResponse ({ session: { id, user: account }, refreshToken }: Issued<TestUser>, claims: Record<string, unknown> = {}): TestSession {
    const token = sign({
      sub: account.id,
      email: account.email,
      app_metadata: account.app_metadata,
      user_metadata: account.user_metadata,
      session_id: id,
      ...claims
    })
    const exp = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).exp as number
    return {
      access_token: token,
      token_type: 'bearer',
      expires_in: exp - Math.floor(Date.now() / 1000),
      expires_at: exp,
      refresh_token: refreshToken,
      user: userJson(account)
    }
  }

  function session (account: TestUser, claims?: Record<string, unknown>): TestSession {
    return tokenResponse(book.open(account), claims)
  }

  async function signIn (account: TestUser, claims?: Record<string, unknown>): Promise<TestSession> {
    return tokenResponse(await book.signIn(account), claims)
  }

  /** A request body as JSON (at most 64 KiB), or `undefined`. */
  async function jsonBody (request: IncomingMessage): Promise<Record<string, unknown> | undefined> {
    let body = ''
    for await (const chunk of request) {
      body += String(chunk)
      if (body.length > 65_536) return undefined
    }
    try {
      const value: unknown = JSON.parse(body)
      return value !== null && typeof value === 'object' ? value as Record<string, unknown> : undefined
    } catch {
      return undefined
    }
  }

  /** `POST /auth/v1/token?grant_type=password|refresh_token`, as GoTrue answers it. */
  async function token (request: IncomingMessage, response: ServerResponse): Promise<void> {
    tokenRequests++
    const refusal = apiKeyRefusal(request)
    if (refusal !== undefined) return json(response, 401, refusal)
    const grant = new URL(String(request.url), url).searchParams.get('grant_type')
    const body = await jsonBody(request)
    if (grant === 'password') {
      const account = [...users.values()].find((candidate) => candidate.email === body?.email)
      if (account === undefined || account.password !== body?.password) {
        return json(response, 400, { code: 400, error_code: 'invalid_credentials', msg: 'Invalid login credentials' })
      }
      return json(response, 200, await signIn(account))
    }
    if (grant === 'refresh_token') return json(response, 200, tokenResponse(await book.refresh(String(body?.refresh_token))))
    json(response, 400, { code: 400, error_code: 'unsupported_grant_type', msg: 'unsupported_grant_type' })
  }

  /** The payload of a genuine, unexpired access token signed by one of the issuer's published keys, or `undefined`. */
  function accessPayload (bearer: string): Record<string, unknown> | undefined {
    const [head, body, signature] = bearer.split('.')
    try {
      const header = JSON.parse(Buffer.from(head!, 'base64url').toString()) as Record<string, unknown>
      const key = keys.find((candidate) => candidate.kid === header.kid && candidate.alg === header.alg && published.has(candidate.kid))
      if (key === undefined || signature === undefined) return undefined
      if (!cryptoVerify(hashOf(key.alg), Buffer.from(`${head}.${body}`), keyInput(key.alg, key.publicKey), Buffer.from(signature, 'base64url'))) return undefined
      const payload = JSON.parse(Buffer.from(body!, 'base64url').toString()) as Record<string, unknown>
      return typeof payload.exp === 'number' && payload.exp * 1000 > Date.now() ? payload : undefined
    } catch {
      return undefined
    }
  }

  /** The user of a genuine, unexpired access token signed by one of the issuer's published keys. */
  function accessUser (bearer: string): Record<string, unknown> | undefined {
    const payload = accessPayload(bearer)
    if (payload === undefined) return undefined
    const account = users.get(payload.sub as string)
    return account === undefined ? { id: payload.sub, aud: payload.aud, role: payload.role, email: payload.email } : userJson(account)
  }

  /**
   * The user and session of a bearer token, or GoTrue's refusal, as its `requireAuthentication` makes
   * them (supabase/auth internal/api/auth.go): a genuine unexpired token (or a legacy HS256 one) of a
   * user that exists, whose `session_id`, when it has one, names a live session, of a user not banned.
   */
  function authenticated (bearer: string | undefined): { account: TestUser, sessionId: string | undefined } {
    if (bearer === undefined) throw new TestAuthError(401, 'no_authorization', 'This endpoint requires a valid Bearer token')
    const payload = accessPayload(bearer) ?? legacyPayload(bearer)
    if (payload === undefined) throw new TestAuthError(403, 'bad_jwt', 'invalid JWT: unable to parse or verify signature')
    const account = users.get(String(payload.sub))
    if (account === undefined) throw new TestAuthError(403, 'user_not_found', 'User from sub claim in JWT does not exist')
    const sessionId = payload.session_id === '' ? undefined : payload.session_id
    if (sessionId !== undefined && (typeof sessionId !== 'string' || !UUID.test(sessionId))) {
      throw new TestAuthError(403, 'bad_jwt', 'invalid claim: session_id claim must be a UUID')
    }
    if (sessionId !== undefined && book.find(sessionId) === undefined) {
      throw new TestAuthError(403, 'session_not_found', 'Session from session_id claim in JWT does not exist')
    }
    if (book.banned(account.id)) throw new TestAuthError(403, 'user_banned', 'User is banned')
    return { account, sessionId }
  }

  async function signOut (bearer: string | undefined, scope: string | null | undefined): Promise<void> {
    const { account, sessionId } = authenticated(bearer)
    await book.signOut(account.id, sessionId, signOutScope(scope))
  }

  /** `POST /auth/v1/logout?scope=global|local|others`, as the hosted gateway and GoTrue answer it. */
  async function logout (request: IncomingMessage, response: ServerResponse): Promise<void> {
    logoutRequests++
    request.resume()
    const refusal = apiKeyRefusal(request)
    if (refusal !== undefined) return json(response, 401, refusal)
    await signOut(bearerOf(request), new URL(String(request.url), url).searchParams.get('scope'))
    response.writeHead(204).end()
  }

  /** Answers what `work` refuses as GoTrue does; any other failure (a client gone mid-body) drops the connection, and the server goes on. */
  function answering (response: ServerResponse, work: Promise<void>): void {
    work.catch((error: unknown) => {
      if (error instanceof TestAuthError) json(response, error.status, error.body)
      else response.destroy()
    })
  }

  function authorizationServerMetadata (): Record<string, unknown> {
    return {
      issuer,
      authorization_endpoint: `${issuer}/oauth/authorize`,
      token_endpoint: `${issuer}/oauth/token`,
      jwks_uri: `${issuer}/.well-known/jwks.json`,
      response_types_supported: ['code'],
      grant_types_supported: ['authorization_code', 'refresh_token'],
      code_challenge_methods_supported: ['S256'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: [...new Set(jwks().keys.map((key) => key.alg))]
    }
  }

  const server = createServer((request, response) => {
    const path = String(request.url).split('?')[0]
    if (path === '/.well-known/oauth-authorization-server/auth/v1' || path === '/auth/v1/.well-known/openid-configuration') {
      return json(response, 200, authorizationServerMetadata())
    }
    if (path === '/auth/v1/user' && request.method === 'GET') return user(request, response)
    if (path === '/auth/v1/token' && request.method === 'POST') return answering(response, token(request, response))
    if (path === '/auth/v1/logout' && request.method === 'POST') return answering(response, logout(request, response))
    if (path !== '/auth/v1/.well-known/jwks.json' && path !== '/.well-known/jwks.json') {
      response.writeHead(404, { 'content-type': 'application/json' }).end('{"code":404,"msg":"not found"}')
      return
    }
    jwksRequests++
    if (responder?.(request, response)) return
    response.writeHead(200, {
      'content-type': 'application/json',
      'cache-control': 'public, max-age=600'
    }).end(JSON.stringify(jwks()))
  })
  if (options.keepAliveTimeout !== undefined) server.keepAliveTimeout = options.keepAliveTimeout
  let connections = 0
  server.on('connection', () => { connections++ })
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const issuer = `${url}/auth/v1`

  function findKey (kid: string): TestKey {
    const key = keys.find((candidate) => candidate.kid === kid)
    if (key === undefined) throw new Error(`no test key ${kid}`)
    return key
  }

  /** Supabase-shaped access-token claims; `claims` override the defaults (`undefined` removes one). */
  function accessClaims (claims: Record<string, unknown>): Record<string, unknown> {
    const now = Math.floor(Date.now() / 1000)
    return withoutUndefined({
      aud: 'authenticated',
      exp: now + 3600,
      iat: now,
      iss: issuer,
      sub: randomUUID(),
      email: 'user@example.com',
      phone: '',
      app_metadata: { provider: 'email', providers: ['email'] },
      user_metadata: { email_verified: true },
      role: 'authenticated',
      aal: 'aal1',
      amr: [{ method: 'password', timestamp: now }],
      session_id: randomUUID(),
      is_anonymous: false,
      ...claims
    })
  }

  function addKey ({ alg = current.alg, kid, publish = true, current: makeCurrent = false }:
  { alg?: TestAlgorithm, kid?: string, publish?: boolean, current?: boolean } = {}): TestKey {
    const key = generateTestKey(alg, kid)
    keys.push(key)
    if (publish) published.add(key.kid)
    if (makeCurrent) current = key
    return key
  }

  function sign (claims: Record<string, unknown> = {}, signOptions: SignOptions = {}): string {
    const key = signOptions.kid === undefined ? current : findKey(signOptions.kid)
    const header = withoutUndefined({ alg: key.alg, kid: key.kid, typ: 'JWT', ...signOptions.header })
    return signJwt(header, accessClaims(claims), key.privateKey)
  }

  return {
    url,
    issuer,
    jwksUrl: `${issuer}/.well-known/jwks.json`,
    get jwksRequests () { return jwksRequests },
    get connections () { return connections },
    get currentKey () { return current },
    get keys () { return [...keys] },
    sign,
    addUser ({ email, password, id = randomUUID(), user_metadata: userMetadata = {}, app_metadata: appMetadata = { provider: 'email', providers: ['email'] } }) {
      const account = { id, email, password, user_metadata: userMetadata, app_metadata: appMetadata }
      users.set(id, account)
      return account
    },
    session,
    signIn,
    signOut,
    banUser: (id, seconds) => book.ban(id, seconds),
    async deleteUser (id) {
      await book.deleteUser(id)
      users.delete(id)
    },
    sessions: (userId) => book.ids(userId),
    get tokenRequests () { return tokenRequests },
    get logoutRequests () { return logoutRequests },
    legacySecret,
    apiKey,
    get userRequests () { return userRequests },
    signLegacy (claims = {}, signOptions = {}) {
      // HS256 whatever the header says: a header may claim another alg, as a forged token would
      const header = withoutUndefined({ alg: 'HS256', typ: 'JWT', ...signOptions.header })
      const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(accessClaims(claims)))}`
      return `${input}.${signInput('HS256', legacySecret, input)}`
    },
    respondToUserWith (next) { userResponder = next },
    addKey,
    publish (kid) { published.add(findKey(kid).kid) },
    unpublish (kid) { published.delete(kid) },
    rotate (alg) { return addKey({ alg, current: true }) },
    respondWith (next) { responder = next },
    jwks,
    authorizationServerMetadata,
    close () {
      server.closeAllConnections()
      return new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
