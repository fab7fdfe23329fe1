import { sessionsOption, type SessionsConfig, type SessionsOptions } from './sessions'
import { postgresOption, supabaseOption, type PostgresConfig, type PostgresOptions, type SupabaseClientConfig, type SupabaseClientOptions } from './acting-options'
import type { FastifyRequest } from 'fastify'
import type { SupabaseUser } from './index'
import { COOKIE_NAME, sessionCookieName } from './cookie'
import { OptionError } from './errors'
import { SCOPE_TOKEN } from './scope'
import { apiKeys, type Callers } from './api-keys'
import { authPlan, type AuthMode } from './callers'

/** Asymmetric algorithms the plugin can verify. HS* and `none` are never accepted. */
export const SUPPORTED_ALGORITHMS = [
  'RS256', 'RS384', 'RS512',
  'PS256', 'PS384', 'PS512',
  'ES256', 'ES384', 'ES512',
  'EdDSA'
] as const

export type Algorithm = typeof SUPPORTED_ALGORITHMS[number]

export const DEFAULT_ALGORITHMS: Algorithm[] = ['RS256']
export const DEFAULT_AUDIENCE = 'authenticated'
export const DEFAULT_CLOCK_TOLERANCE = 0
export const DEFAULT_CACHE_TTL = 600
export const DEFAULT_COOLDOWN = 30
export const DEFAULT_STALE_IF_ERROR = 3600
export const DEFAULT_TIMEOUT = 5
export const DEFAULT_MAX_RESPONSE_SIZE = 64 * 1024
export const DEFAULT_MAX_TOKEN_LENGTH = 16 * 1024
export const DEFAULT_REALM = 'api'
export const DEFAULT_TOKEN_CACHE = 10_000
export const MAX_TOKEN_CACHE = 100_000
/** Upper bounds of the durations, in seconds: past them a value is far more likely milliseconds than meant. */
export const MAX_CLOCK_TOLERANCE = 300
export const MAX_CACHE_TTL = 86_400
export const MAX_COOLDOWN = 3600
export const MAX_STALE_IF_ERROR = 7 * 86_400
export const MAX_TIMEOUT = 60
/** The longest legacy-token window a registration may open: the migration takes about one token lifetime. */
export const MAX_LEGACY_WINDOW_DAYS = 7
export const DEFAULT_LEGACY_CALLS_PER_SECOND = 50
export const DEFAULT_LEGACY_CONCURRENT_CALLS = 16

/**
 * The migration off the legacy JWT secret: HS256 tokens verified by Supabase Auth
 * (`GET /auth/v1/user`) instead of with the secret, until a set time.
 */
export interface LegacyTokensOptions {
  /**
   * When legacy tokens stop being accepted: an ISO 8601 time with its offset (`Z` or `+hh:mm`) or a
   * Date, at most 7 days after registration. A start after it fails: remove `legacyTokens` by then.
   */
  until: string | Date
  /** The project's publishable (`sb_publishable_...`) or anon key, sent as `apikey`: public, not a secret. */
  apiKey: string
  /**
   * Supabase Auth's user endpoint. Default `${supabaseUrl}/auth/v1/user`; required with `jwksUrl`
   * alone (for a self-hosted GoTrue, `<GOTRUE_URL>/user`).
   */
  userUrl?: string
  /** Calls to Supabase Auth allowed per second (and in one burst); past it, 503. Default `50`. */
  maxCallsPerSecond?: number
  /** Calls to Supabase Auth in flight at once; past it, 503. Default `16`. */
  maxConcurrentCalls?: number
}

/** The legacy-token window after validation. */
export interface LegacyConfig {
  /** ms since the epoch. */
  until: number
  /** `userUrl` is plain http on a non-loopback host (allowed by `allowInsecureJwksUrl`). */
  insecure: boolean
  apiKey: string
  userUrl: URL
  maxCallsPerSecond: number
  maxConcurrentCalls: number
}

/**
 * What a verified token's user must satisfy on a route (plugin option `require`, route config
 * `config.supabaseJwks`): otherwise 403 `FST_SUPABASE_JWKS_FORBIDDEN`.
 */
export interface Requirements {
  /** `'aal2'`: the session must have passed MFA (the `aal` claim is `aal2`). `'aal1'` asks nothing. */
  aal?: 'aal1' | 'aal2'
  /** `false`: anonymous users (`is_anonymous: true`) are refused. `true` (the default) lets them in. */
  anonymous?: boolean
  /**
   * Your own rule, given the verified claims (your `SupabaseCustomClaims` included) and the request:
   * `true` lets the request in; `false`, any other value, a rejection or a throw is a 403.
   */
  check?: (user: Readonly<SupabaseUser>, request: FastifyRequest) => boolean | Promise<boolean>
  /**
   * The issuers whose tokens the route accepts (their exact `iss`, as configured): a token another
   * configured issuer verified is a 403. Each must be a configured issuer. Default: every one.
   */
  issuers?: string[]
  /**
   * OAuth scopes the token must have been granted, all of them (its space-delimited `scope` claim,
   * as Supabase Auth's OAuth 2.1 server issues it): one scope or a list. A token without them is a
   * 403 whose challenge names them (`error="insufficient_scope", scope="..."`). `[]` asks nothing
   * (to relax a `require` default).
   */
  scope?: string | readonly string[]
  /**
   * Who may call the route: one mode, or a list tried in order (the first credential present
   * decides). `'user'` (the default): a user's access token. `'publishable'` / `'secret'`: the key
   * named `default` of `publishableKeys` / `secretKeys` in the `apikey` header; `'secret:<name>'` one
   * named key, `'secret:*'` any key of the set (the same for `publishable`). `'none'`: anyone (last in
   * a list: `['user', 'none']` is optional authentication). The other requirements apply to users only.
   */
  auth?: AuthMode | readonly AuthMode[]
}

/**
 * The OAuth 2.0 Protected Resource Metadata (RFC 9728) the plugin serves, for OAuth clients (MCP
 * clients among them) to find where to get a token.
 */
export interface ResourceMetadataOptions {
  /**
   * The resource identifier: the public URL of your API (or MCP endpoint), e.g.
   * `https://api.example.com/mcp`. https (http only on a loopback host), no query, no fragment.
   * The document is served at `/.well-known/oauth-protected-resource`, and, when this has a path,
   * at `/.well-known/oauth-protected-resource<path>` too, at the server's root.
   */
  resource: string
  /** The scopes to advertise (`scopes_supported`). Default: none listed. */
  scopesSupported?: string[]
  /** The authorization servers' issuer URLs (`authorization_servers`). Default: every configured `iss` (`${supabaseUrl}/auth/v1`). */
  authorizationServers?: string[]
}

/** The `resourceMetadata` option after validation. */
export interface ResourceMetadataConfig {
  /** As given: the document's `resource` must be the identifier itself (RFC 9728 §3.3). */
  resource: string
  scopesSupported: string[] | undefined
  authorizationServers: string[]
  /** The resource's path, `''` for none (`/` alone counts as none, RFC 9728 §3.1). */
  path: string
  /** The absolute URL of the document, path-suffixed when the resource has a path: what challenges name. */
  url: string
}

/**
 * One issuer of the `issuers` option: a Supabase project (`supabaseUrl`), or any OpenID Connect /
 * OAuth 2.0 issuer (`issuer` with `jwksUrl` or `discovery`). Options it does not set come from the
 * top level. Every duration is in seconds.
 */
export interface IssuerOptions extends Pick<SupabaseJwksOptions, 'supabaseUrl' | 'jwksUrl' | 'discovery' | 'audience' | 'algorithms' |
'clockTolerance' | 'cacheTtl' | 'cooldown' | 'staleIfError' | 'timeout' | 'maxResponseSize' | 'jwks' | 'supabase' | 'sessions'> {
  /**
   * The exact `iss` of this issuer's tokens: what tokens are routed by (one string). Default with
   * `supabaseUrl`: `${supabaseUrl}/auth/v1`; required otherwise.
   */
  issuer?: string
}

/**
 * A JSON Web Key as a JWKS lists it (RFC 7517): `kty`, `kid` (required by the plugin), `alg`, `use`,
 * `key_ops` and the public members; node:crypto's `JsonWebKey` fits.
 */
export interface InlineJwk {
  kty?: string
  kid?: string
  [member: string]: unknown
}

/** A key set given in configuration (the `jwks` option): the JWKS document itself. */
export interface InlineJwks {
  keys: InlineJwk[]
}

/** Options of `fastify.register(supabaseJwks, options)`. Every duration is in seconds. */
export interface SupabaseJwksOptions {
  /**
   * The Supabase project URL, e.g. `https://<ref>.supabase.co` or `http://127.0.0.1:54321` (CLI).
   * The JWKS is read from `${supabaseUrl}/auth/v1/.well-known/jwks.json` and the issuer is
   * `${supabaseUrl}/auth/v1`. One of `supabaseUrl` and `jwksUrl` is required, unless `jwks` is given alone.
   */
  supabaseUrl?: string
  /**
   * An explicit JWKS URL, e.g. `https://auth.example.com/.well-known/jwks.json` for a self-hosted
   * GoTrue. Takes precedence over the one derived from `supabaseUrl`. Always from configuration,
   * never from the token.
   */
  jwksUrl?: string
  /**
   * Accepted `iss` values; `false` skips the check (a self-hosted GoTrue without
   * `GOTRUE_JWT_ISSUER` sends no `iss`). Default: `${supabaseUrl}/auth/v1`; required with `jwksUrl` or `jwks` alone.
   * When set, a token without `iss` is rejected.
   */
  issuer?: string | string[] | false
  /**
   * `true`: the JWKS URL is read from the issuer's discovery document,
   * `${issuer}/.well-known/openid-configuration` (on a 404, the RFC 8414 forms), fetched like the
   * JWKS and re-read with it once per `cacheTtl`. Needs `issuer` as one string (not with
   * `jwksUrl`), and `audience`. The document's `issuer` must equal it, and its `jwks_uri` must be
   * https (or loopback): otherwise no key is had (503) and a warning says why. Default `false`.
   */
  discovery?: boolean
  /**
   * The key set given in configuration: a JWKS document `{ keys: [...] }`, or its JSON text (e.g.
   * `process.env.SUPABASE_JWKS`), as `${supabaseUrl}/auth/v1/.well-known/jwks.json` serves it. Its keys
   * are judged as a fetched set's are; a private or symmetric key, or no key usable with `algorithms`,
   * fails registration. Alone (with `issuer`), nothing is ever fetched: a rotation needs a redeploy with
   * the new set. Beside `supabaseUrl`, `jwksUrl` or `discovery`, it answers until the first good fetch,
   * whose set alone is trusted from then on. Default: none.
   */
  jwks?: string | InlineJwks
  /**
   * Several issuers in one registration, each with its own key set, cache, cooldown and claim
   * rules; a token goes to the entry configured for exactly its `iss` (any other `iss` is a 401,
   * with no fetch). Not with `supabaseUrl`, `jwksUrl`, `issuer`, `discovery` or `legacyTokens` at
   * the top level, whose other per-issuer options are then the entries' defaults.
   */
  issuers?: IssuerOptions[]
  /**
   * Accepted `aud` values; `false` skips the check. Default `'authenticated'` (Supabase user
   * access tokens): set it for any other issuer (required with `discovery` and in `issuers` entries
   * other than Supabase projects). When set, a token without `aud` is rejected: this keeps OIDC ID tokens out.
   */
  audience?: string | string[] | false
  /**
   * Accepted signing algorithms. Default `['RS256']`. Opt into `ES256` if your project signs with
   * P-256 keys (the CLI default and Supabase's recommendation). `none` and HS* are refused.
   */
  algorithms?: Algorithm[]
  /** Leeway for `exp` and `nbf`, in seconds. Default `0`. */
  clockTolerance?: number
  /** How long fetched keys are trusted before the JWKS is read again, in seconds. Default `600` (Supabase's `max-age`). */
  cacheTtl?: number
  /**
   * Minimum time between JWKS fetches caused by unknown `kid`s or by failed fetches, in seconds.
   * Default `30`. Bounds the load a flood of forged `kid`s can put on the JWKS endpoint.
   */
  cooldown?: number
  /**
   * How long a cached key keeps verifying after `cacheTtl` while the JWKS endpoint fails, in seconds.
   * Default `3600`. `0` disables stale use: an outage then means 503 as soon as the cache expires.
   * A key that a successful fetch no longer lists is dropped at once, whatever this says.
   */
  staleIfError?: number
  /** Time allowed for one JWKS fetch (connect, headers and body together), in seconds. Default `5`. */
  timeout?: number
  /** Largest JWKS response accepted, in bytes. Default `65536`. */
  maxResponseSize?: number
  /** Longest token accepted, in characters; longer ones are refused before any parsing. Default `16384`. */
  maxTokenLength?: number
  /**
   * How many verified tokens to remember, so that a token seen again skips the signature check
   * (a token is admitted on its second verification, when it comes back soon enough to be used).
   * Default `10000` (about 2 KB of heap per typical Supabase token, 7.5 KB at worst: some 20 MB
   * when full, 75 MB at worst); `0` turns the cache off.
   * An entry is used only until the token's `exp` and while the key that verified it is still in
   * the held key set (younger than `cacheTtl`, or up to `timeout` more while the refresh ahead
   * runs: as long as the key verifies a token in full); tokens over 4 KiB are not kept.
   */
  tokenCache?: number
  /**
   * Run `authenticate` as a hook for every route of the registering context instead of
   * per route. Default: `false` (use `preHandler: fastify.authenticate` on each route).
   * A route opts out with `config: { supabaseJwks: false }`.
   */
  hook?: false | 'onRequest' | 'preHandler'
  /** The `realm` of `WWW-Authenticate` challenges. Default `'api'`. */
  realm?: string
  /**
   * Allow a JWKS URL with `http://` on a host that is not loopback. Default `false`: keys fetched
   * over plain HTTP can be swapped by anyone on the path. Loopback (the Supabase CLI) is always allowed.
   */
  allowInsecureJwksUrl?: boolean
  /**
   * Called with the claims of every verified token (a `SupabaseUser`: your `SupabaseCustomClaims`
   * included), token-cache hits included, and with the request (`undefined` for `verify()`): `true`
   * answers 401 `FST_SUPABASE_JWKS_TOKEN_REVOKED`, `false` lets it through; a throw or any other
   * value is a 503. For a `session_id` denylist ("sign out everywhere").
   */
  isRevoked?: (claims: Readonly<SupabaseUser>, request: FastifyRequest | undefined) => boolean | Promise<boolean>
  /** Requirements for every route; a route's `config.supabaseJwks` overrides them key by key. Default: none. */
  require?: Requirements
  /**
   * Fetch the JWKS when the server starts (`onReady`), so that the first request finds the keys
   * held. A JWKS down at start does not fail start-up: it is logged, and requests retry. Default `true`.
   */
  warmStart?: boolean
  /**
   * Off by default. During the move off the legacy JWT secret, accept HS256 tokens until `until` by
   * asking Supabase Auth whether each is genuine: the secret itself is never needed.
   */
  legacyTokens?: LegacyTokensOptions
  /**
   * Also read the token from the session cookie that @supabase/ssr writes, through @fastify/cookie's
   * `request.cookies` (register @fastify/cookie too). `true`: the project's cookie,
   * `sb-<ref>-auth-token` (<ref>: the first DNS label of `supabaseUrl`'s host), chunks
   * (`.0`, `.1`, …) joined; `{ name }` for another storage key. An `Authorization: Bearer` header wins.
   * Cookies bring CSRF into play: see docs/session-cookies.md. Default `false`.
   */
  cookie?: boolean | { name: string }
  /**
   * Where else a token may come from, asked when there is no `Authorization: Bearer` header (and no
   * session cookie, with `cookie`): return the token, or `undefined`/`null` for none (401 NO_TOKEN).
   * A throw is a 401 and is logged at warn. Default: none.
   */
  extractToken?: (request: FastifyRequest) => string | undefined | null | Promise<string | undefined | null>
  /**
   * Serve the OAuth 2.0 Protected Resource Metadata (RFC 9728) of this API, at the server's root
   * whatever the prefix, outside `hook` and `require`, and name it in every 401 and 403 challenge
   * (`resource_metadata="..."`): what an MCP client needs to find where to log in. One registration
   * per server may serve it. Not with `fastifyJwtOptions`. Default: off.
   */
  resourceMetadata?: ResourceMetadataOptions
  /**
   * The project's publishable keys (`sb_publishable_…`, or the legacy `anon` key), which routes in the
   * modes `'publishable'` accept in the `apikey` header: one key (named `default`) or named keys
   * (`{ default: ..., web: ... }`). Each at least 32 characters; never logged. Default: none.
   */
  publishableKeys?: string | Record<string, string>
  /**
   * The project's secret keys (`sb_secret_…`, or the legacy `service_role` key), which routes in the
   * modes `'secret'` accept in the `apikey` header: one key (named `default`) or named keys
   * (`{ default: process.env.SUPABASE_SECRET_KEY, cron: ... }`). Each at least 32 characters; compared
   * in constant time, never logged. Default: none.
   */
  secretKeys?: string | Record<string, string>
  /**
   * The project's API URL and keys for supabase-js clients: `request.supabase` (the caller's token and
   * the publishable key, under Row Level Security) and, with `secretKey`, `fastify.supabaseAdmin`.
   * Needs `@supabase/supabase-js` (and `ws` on Node 20). With `issuers`, per issuer too. Default: off.
   */
  supabase?: SupabaseClientOptions
  /**
   * A PostgreSQL pool for `request.sql`: SQL as the caller, in a transaction with the caller's role and
   * claims set as PostgREST sets them, so Row Level Security applies. Needs `pg`. Default: off.
   */
  postgres?: PostgresOptions
  /**
   * Sign-out that reaches every instance: refuses (401 `FST_SUPABASE_JWKS_TOKEN_REVOKED`) a token whose
   * session is gone from the project's `auth.sessions` (signed out), or whose user is deleted or
   * banned, at most `every` seconds after it happened, reading the project's database with a role of
   * its own. Needs `pg` with `connectionString`. With `issuers`, per issuer only. Default: off.
   */
  sessions?: SessionsOptions
}

/** Where an issuer's discovery document is: the OIDC form first, then the RFC 8414 forms (each tried on a 404 of the one before). */
export interface DiscoveryConfig {
  /** The configured issuer: the document's `issuer` must equal it. */
  issuer: string
  urls: URL[]
}

/** One issuer's options after validation, in the units the code uses. */
export interface IssuerConfig {
  /** The JWKS URL; `undefined` with discovery (the document names it). */
  jwksUrl: URL | undefined
  discovery: DiscoveryConfig | undefined
  /** `${supabaseUrl}/auth/v1` when the issuer is a Supabase project. */
  authBase: string | undefined
  issuer: string[] | undefined
  audience: string[] | undefined
  algorithms: Algorithm[]
  clockToleranceMs: number
  cacheTtlMs: number
  cooldownMs: number
  staleIfErrorMs: number
  timeoutMs: number
  maxResponseSize: number
  /** The JWKS URL (or the discovery document's) is plain http on a non-loopback host. */
  insecureJwksUrl: boolean
  /** `allowInsecureJwksUrl`: a discovered `jwks_uri` may be plain http too. */
  allowInsecure: boolean
  /** The key set given inline (option `jwks`), its keys not judged yet: the key resolver does, as it does a fetched set's. */
  jwks: InlineKeySet | undefined
  /** The supabase-js clients of this issuer's users (option `supabase`, the entry's or the top level's). */
  supabase: SupabaseClientConfig | undefined
  /** Whether this issuer's sessions stand, read in its project's database (option `sessions`, the entry's own). */
  sessions: SessionsConfig | undefined
}

/** The `jwks` option read: the entries of its `keys`, as given, and the option's name for messages. */
export interface InlineKeySet {
  option: string
  keys: unknown[]
}

/** The options after validation, in the units the code uses. */
export interface Config {
  /** One entry, or with the `issuers` option one per issuer (each with exactly one `issuer`). */
  issuers: IssuerConfig[]
  /** The `issuers` option: tokens are routed to an entry by their exact `iss`. */
  routed: boolean
  /** Every `iss` value accepted: what `issuers` requirements may name. */
  knownIssuers: ReadonlySet<string>
  maxTokenLength: number
  tokenCache: number
  hook: false | 'onRequest' | 'preHandler'
  realm: string
  legacy: LegacyConfig | undefined
  warmStart: boolean
  require: Requirements
  isRevoked: SupabaseJwksOptions['isRevoked']
  /** The session cookie's name (option `cookie`), or `undefined` when cookies are not read. */
  cookieName: string | undefined
  extractToken: SupabaseJwksOptions['extractToken']
  resourceMetadata: ResourceMetadataConfig | undefined
  /** The API keys (options `publishableKeys`, `secretKeys`), which `auth` modes may name. */
  callers: Callers
  /** The top-level option `supabase`: the client of callers with no user (and, with one issuer, of users). */
  supabase: SupabaseClientConfig | undefined
  /** The option `postgres`, for `request.sql`. */
  postgres: PostgresConfig | undefined
}

/** The options each issuer has: at the top level, or per entry of `issuers`. */
const ISSUER_OPTIONS = new Set<string>([
  'supabaseUrl', 'jwksUrl', 'issuer', 'discovery', 'audience', 'algorithms', 'clockTolerance', 'cacheTtl',
  'cooldown', 'staleIfError', 'timeout', 'maxResponseSize', 'jwks', 'supabase', 'sessions'
])
/** Where the keys come from: per entry only once there are `issuers`. */
const SOURCE_OPTIONS = ['supabaseUrl', 'jwksUrl', 'issuer', 'discovery', 'jwks']
const KNOWN_OPTIONS = new Set<string>([
  // what Fastify itself may pass to a plugin
  'prefix', 'logLevel', 'logSerializers',
  ...ISSUER_OPTIONS, 'issuers', 'maxTokenLength', 'tokenCache', 'hook', 'realm',
  'allowInsecureJwksUrl', 'legacyTokens', 'warmStart', 'require', 'isRevoked', 'cookie', 'extractToken',
  'resourceMetadata', 'publishableKeys', 'secretKeys', 'postgres'
])
/** More issuers than this in one registration is a configuration generated by mistake. */
export const MAX_ISSUERS = 50
const LEGACY_OPTIONS = new Set(['until', 'apiKey', 'userUrl', 'maxCallsPerSecond', 'maxConcurrentCalls'])
const REQUIREMENTS = ['aal', 'anonymous', 'check', 'issuers', 'scope', 'auth']
const RESOURCE_METADATA = new Set(['resource', 'scopesSupported', 'authorizationServers'])
/** Where RFC 9728 puts the document: this, then the resource's path (§3.1). */
export const RESOURCE_METADATA_PATH = '/.well-known/oauth-protected-resource'
/** What a resource's path may hold: it becomes a route's path, where `:` and `*` would be parameters and wildcards. */
const RESOURCE_PATH = /^[\w.~/-]*$/

export function fail (message: string): never {
  throw new OptionError(message)
}

/**
 * `value` read with the scheme it lacks (`abc.supabase.co` as `https://abc.supabase.co`, a loopback
 * host such as the CLI's `127.0.0.1:54321` as `http://`), or `undefined` when it has a scheme or
 * names no host even so: what a message can offer to set instead.
 */
function withScheme (value: string): URL | undefined {
  if (value.includes('://')) return undefined
  let url: URL
  try {
    url = new URL(`https://${value}`)
  } catch {
    return undefined
  }
  if (!url.hostname.includes('.') && url.hostname !== 'localhost') return undefined
  if (isLoopback(url.hostname)) url.protocol = 'http:'
  return url
}

/**
 * An http(s) URL. Without its scheme, it is refused with the value to set: `value` with the scheme,
 * or what `fix` makes of the URL read with it.
 */
export function parseUrl (name: string, value: unknown, fix?: (url: URL) => string): URL {
  if (typeof value !== 'string' || value === '') fail(`${name} must be a non-empty string URL`)
  const schemeless = withScheme(value)
  if (schemeless !== undefined) {
    fail(`${name} has no scheme (https://, or http:// on a loopback host): set ${fix?.(schemeless) ?? `${schemeless.protocol}//${value}`}`)
  }
  let url: URL
  try {
    url = new URL(value)
  } catch {
    fail(`${name} is not a valid URL: ${value}`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') fail(`${name} must be an http(s) URL`)
  return url
}

/** An address on supabase.com: the dashboard's or the Management API's, never a project's (`https://<ref>.supabase.co`). */
function onSupabaseCom (url: URL): boolean {
  return url.hostname === 'supabase.com' || url.hostname.endsWith('.supabase.com')
}

/**
 * The project URL that `url` stands for: its origin; for a supabase.com address, the project of the
 * dashboard page it shows (`https://supabase.com/dashboard/project/<ref>`, or the older
 * `https://app.supabase.com/project/<ref>`), `https://<ref>.supabase.co`.
 */
function projectUrlOf (url: URL): string {
  if (!onSupabaseCom(url)) return url.origin
  const segments = url.pathname.split('/')
  const at = segments.indexOf('project')
  const ref = at === -1 ? undefined : segments[at + 1]
  return `https://${ref !== undefined && /^[a-z0-9]+$/.test(ref) ? ref : '<ref>'}.supabase.co`
}

/** A name lowercased without `_` and `-`: `jwks_url`, `jwksURL` and `jwksUrl` are one. */
function folded (name: string): string {
  return name.toLowerCase().replaceAll('_', '').replaceAll('-', '')
}

/** Edits (insert, delete, substitute) from `a` to `b` (Levenshtein), on two rows: O(|a| x |b|) time. */
function editDistance (a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const next = [i]
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    row = next
  }
  return row[b.length]!
}

/**
 * The known name that `given` most likely misspells (`jwksURL`: `jwksUrl`; `cacheTTL`: `cacheTtl`;
 * `audiences`: `audience`), or `undefined`: at most a third of its letters apart, and 3. A name past
 * 64 characters is no typo of an option (and is not compared: the cost stays bounded).
 */
export function closestName (given: string, known: Iterable<string>): string | undefined {
  if (given.length > 64) return undefined
  const name = folded(given)
  let best: string | undefined
  let bestDistance = Math.min(3, Math.floor(name.length / 3)) + 1
  for (const candidate of known) {
    const distance = editDistance(name, folded(candidate))
    if (distance < bestDistance) {
      best = candidate
      bestDistance = distance
    }
  }
  return best
}

/** Refuses an unknown key (`message` names it), saying which known one it resembles, if one does. */
function unknownKey (message: string, key: string, known: Iterable<string>): never {
  const near = closestName(key, known)
  fail(near === undefined ? message : `${message}: did you mean ${near}?`)
}

export function isLoopback (hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127(\.\d{1,3}){3}$/.test(hostname)
}

function stringList (name: string, value: unknown, fallback: string | undefined): string[] | undefined {
  if (value === false) return undefined
  if (value === undefined) {
    if (fallback === undefined) fail(`${name} is required with jwksUrl alone (or set it to false to skip the check)`)
    return [fallback]
  }
  const list = Array.isArray(value) ? value : [value]
  if (list.length === 0 || !list.every((v) => typeof v === 'string' && v !== '')) {
    fail(`${name} must be a non-empty string, a list of them, or false`)
  }
  return list
}

export function seconds (name: string, value: unknown, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback * 1000
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
    fail(`${name} must be a finite number of seconds >= ${min}`)
  }
  if (value > max) fail(`${name} is ${value} seconds, more than the ${max} allowed: durations are in seconds, were milliseconds meant?`)
  return value * 1000
}

export function integer (name: string, value: unknown, fallback: number, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max) {
    fail(`${name} must be an integer from ${min} to ${max}`)
  }
  return value as number
}

/**
 * Checks a `Requirements` object (the `require` option or a route's `config.supabaseJwks`); `issuers`
 * may name only `known` ones, `auth` only configured keys.
 */
export function requirements (name: string, value: unknown, known: ReadonlySet<string>, callers: Callers): Requirements {
  if (value === undefined) return {}
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail(`${name} must be an object { aal, anonymous, check, issuers, scope, auth }`)
  const given = value as Record<string, unknown>
  for (const key of Object.keys(given)) if (!REQUIREMENTS.includes(key)) unknownKey(`unknown requirement ${name}.${key}`, key, REQUIREMENTS)
  if (given.issuers !== undefined) {
    const list = given.issuers
    if (!Array.isArray(list) || list.length === 0 || !list.every((item) => typeof item === 'string')) {
      fail(`${name}.issuers must be a non-empty array of issuer strings`)
    }
    const unknown = list.find((item) => !known.has(item))
    if (unknown !== undefined) {
      fail(`${name}.issuers names ${JSON.stringify(unknown)}, which is not a configured issuer` +
        (known.size === 0 ? ' (no issuer is checked)' : ` (${[...known].join(', ')})`))
    }
  }
  if (given.aal !== undefined && given.aal !== 'aal1' && given.aal !== 'aal2') fail(`${name}.aal must be 'aal1' or 'aal2'`)
  if (given.anonymous !== undefined && typeof given.anonymous !== 'boolean') fail(`${name}.anonymous must be a boolean`)
  if (given.check !== undefined && typeof given.check !== 'function') fail(`${name}.check must be a function (user, request) => boolean`)
  if (given.scope !== undefined) scopeRequirement(`${name}.scope`, given.scope)
  authPlan(`${name}.auth`, given.auth, callers)
  return given as Requirements
}

/** A `scope` requirement: one scope-token (RFC 6749 §3.3), or an array of them (`[]` asks nothing). */
function scopeRequirement (name: string, value: unknown): void {
  const list = Array.isArray(value) ? value : [value]
  for (const scope of list) {
    if (typeof scope === 'string' && scope.includes(' ') && SCOPE_TOKEN.test(scope.replaceAll(' ', ''))) {
      fail(`${name} names one scope per string: give several as an array (${JSON.stringify(scope.split(' ').filter(Boolean))})`)
    }
    if (typeof scope !== 'string' || !SCOPE_TOKEN.test(scope)) {
      fail(`${name} must be a scope or an array of scopes, each a non-empty string of printable ASCII without spaces, " or \\ (RFC 6749 §3.3)`)
    }
  }
}

/** An https URL (http only on a loopback host) without credentials or a fragment: a resource's or an authorization server's. */
function secureUrl (name: string, value: unknown): URL {
  const url = parseUrl(name, value)
  if (url.protocol === 'http:' && !isLoopback(url.hostname)) fail(`${name} ${url.href} must use https (http only on a loopback host)`)
  if (url.username || url.password || url.hash || (value as string).includes('#')) fail(`${name} must not carry credentials or a fragment`)
  return url
}

/**
 * The `resourceMetadata` option (RFC 9728): the resource's URL and the document's lists, checked;
 * the authorization servers default to the configured issuers (`known`), which must then be URLs.
 */
function resourceMetadataOption (value: unknown, known: ReadonlySet<string>): ResourceMetadataConfig | undefined {
  if (value === undefined) return undefined
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail('resourceMetadata must be an object { resource, scopesSupported, authorizationServers }')
  const given = value as Record<string, unknown>
  for (const key of Object.keys(given)) if (!RESOURCE_METADATA.has(key)) unknownKey(`unknown option resourceMetadata.${key}`, key, RESOURCE_METADATA)
  const url = secureUrl('resourceMetadata.resource', given.resource)
  // the document is found by inserting the well-known path before the resource's path: a query has no route
  if (url.search || (given.resource as string).includes('?')) fail('resourceMetadata.resource must not carry a query string: the metadata document\'s URL is made from its path (RFC 9728 §3.1)')
  if (!RESOURCE_PATH.test(url.pathname)) {
    fail(`resourceMetadata.resource has a path (${url.pathname}) with characters other than letters, digits, -, ., _, ~ and /: the path becomes a route of the server`)
  }
  // the document's resource must be the identifier clients compare (RFC 9728 §3.3), and the challenges name its normalized form
  const written = given.resource as string
  if (url.href !== written && url.href !== `${written}/`) {
    fail(`resourceMetadata.resource must be written in its normal form, as clients compare it (RFC 9728 §3.3): ${url.href}`)
  }
  const path = url.pathname === '/' ? '' : url.pathname
  let scopesSupported: string[] | undefined
  if (given.scopesSupported !== undefined) {
    const list = given.scopesSupported
    if (!Array.isArray(list) || list.length === 0) fail('resourceMetadata.scopesSupported must be a non-empty array of scopes (or left out)')
    scopeRequirement('resourceMetadata.scopesSupported', list)
    scopesSupported = [...new Set(list as string[])]
  }
  let authorizationServers: string[]
  if (given.authorizationServers === undefined) {
    if (known.size === 0) fail('resourceMetadata.authorizationServers is required when no issuer is configured (issuer: false): the issuer URLs where clients get tokens')
    authorizationServers = [...known]
    for (const issuer of authorizationServers) secureUrl(`resourceMetadata.authorizationServers (the configured issuer ${JSON.stringify(issuer)})`, issuer)
  } else {
    const list = given.authorizationServers
    if (!Array.isArray(list) || list.length === 0) fail('resourceMetadata.authorizationServers must be a non-empty array of issuer URLs (or left out: the configured issuers)')
    authorizationServers = [...new Set(list.map((server, index) => { secureUrl(`resourceMetadata.authorizationServers[${index}]`, server); return server as string }))]
  }
  return { resource: given.resource as string, scopesSupported, authorizationServers, path, url: `${url.origin}${RESOURCE_METADATA_PATH}${path}` }
}

/** An optional function option. */
function functionOption<F> (name: string, value: unknown, shape: string): F | undefined {
  if (value !== undefined && typeof value !== 'function') fail(`${name} must be a function ${shape}`)
  return value as F | undefined
}

/** The session cookie's name: derived from the project URL, or given. */
function cookieOption (value: unknown, supabaseUrl: URL | undefined): string | undefined {
  if (value === undefined || value === false) return undefined
  if (value === true) {
    if (supabaseUrl === undefined) {
      fail('cookie: true derives the cookie name from supabaseUrl: without it (jwksUrl alone, or issuers), give cookie: { name: \'sb-<ref>-auth-token\' }')
    }
    return sessionCookieName(supabaseUrl)
  }
  const name = value !== null && typeof value === 'object' && Object.keys(value).every((key) => key === 'name')
    ? (value as { name?: unknown }).name
    : undefined
  if (typeof name !== 'string' || !COOKIE_NAME.test(name)) {
    fail('cookie must be true, false or { name } with a cookie name (letters, digits and !#$%&\'*+-.^_`|~)')
  }
  return name
}

function boolean (name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback
  if (typeof value !== 'boolean') fail(`${name} must be a boolean`)
  return value
}

function algorithmList (name: string, value: unknown): Algorithm[] {
  if (value === undefined) return [...DEFAULT_ALGORITHMS]
  if (!Array.isArray(value) || value.length === 0) fail(`${name} must be a non-empty array`)
  for (const alg of value) {
    if (typeof alg === 'string' && (/^HS/i.test(alg) || alg.toLowerCase() === 'none')) {
      fail(`algorithm ${alg} is refused: this plugin verifies only asymmetric signatures ` +
        '(HS* needs a shared secret, and "none" is no signature at all)')
    }
    if (!(SUPPORTED_ALGORITHMS as readonly unknown[]).includes(alg)) {
      fail(`unknown algorithm ${String(alg)}; supported: ${SUPPORTED_ALGORITHMS.join(', ')}`)
    }
  }
  return [...new Set(value as Algorithm[])]
}

/** An ISO 8601 date and time with an explicit offset: no local-time guesses. */
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/

/** The legacy-token window: off unless asked for, and always closed by a time at most 7 days ahead. */
function legacyWindow (value: unknown, authBase: string | undefined, allowInsecure: boolean): LegacyConfig | undefined {
  if (value === undefined) return undefined
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail('legacyTokens must be an object { until, apiKey }')
  const legacy = value as Record<string, unknown>
  if ('secret' in legacy) fail('legacyTokens never takes the secret: Supabase Auth checks each legacy token')
  for (const name of Object.keys(legacy)) if (!LEGACY_OPTIONS.has(name)) unknownKey(`unknown option legacyTokens.${name}`, name, LEGACY_OPTIONS)
  const until = legacy.until instanceof Date
    ? legacy.until.getTime()
    : typeof legacy.until === 'string' && ISO_TIME.test(legacy.until) ? Date.parse(legacy.until) : NaN
  if (!Number.isFinite(until)) {
    fail('legacyTokens.until is required: an ISO 8601 time with its offset (e.g. "2026-12-08T00:00:00Z") or a Date')
  }
  const now = Date.now()
  if (until <= now) {
    fail(`legacyTokens.until (${new Date(until).toISOString()}) has passed: the migration window is over. ` +
      'Remove legacyTokens (HS256 tokens are refused without it), or set a new until if the rotation is not done')
  }
  if (until > now + MAX_LEGACY_WINDOW_DAYS * 86_400_000) {
    fail(`legacyTokens.until is more than ${MAX_LEGACY_WINDOW_DAYS} days ahead: the window is for the switch ` +
      '(about one token lifetime after the rotation), not a way to keep legacy tokens')
  }
  if (typeof legacy.apiKey !== 'string' || legacy.apiKey === '') {
    fail('legacyTokens.apiKey is required: the project\'s publishable or anon key (public), sent as apikey')
  }
  if (legacy.apiKey.startsWith('sb_secret_')) fail('legacyTokens.apiKey is a secret key: use the publishable (or anon) key')
  // sent as a header: a line break (a key read from a file with its newline) or a space is no key
  if (/[^\x21-\x7E]/.test(legacy.apiKey)) fail('legacyTokens.apiKey holds a space, a line break or a character a header cannot carry: give the key alone')
  let userUrl: URL
  if (legacy.userUrl !== undefined) {
    userUrl = parseUrl('legacyTokens.userUrl', legacy.userUrl)
  } else {
    if (authBase === undefined) fail('legacyTokens.userUrl is required with jwksUrl alone (e.g. https://auth.example.com/user)')
    userUrl = new URL(`${authBase}/user`)
  }
  if (userUrl.username || userUrl.password || userUrl.hash) fail('legacyTokens.userUrl must not carry credentials or a fragment')
  if (userUrl.protocol === 'http:' && !isLoopback(userUrl.hostname) && !allowInsecure) {
    fail(`legacyTokens.userUrl ${userUrl.href} uses plain http on a non-loopback host: tokens would travel in clear; use https`)
  }
  return {
    until,
    insecure: userUrl.protocol === 'http:' && !isLoopback(userUrl.hostname),
    apiKey: legacy.apiKey,
    userUrl,
    maxCallsPerSecond: integer('legacyTokens.maxCallsPerSecond', legacy.maxCallsPerSecond, DEFAULT_LEGACY_CALLS_PER_SECOND, 1, 10_000),
    maxConcurrentCalls: integer('legacyTokens.maxConcurrentCalls', legacy.maxConcurrentCalls, DEFAULT_LEGACY_CONCURRENT_CALLS, 1, 1000)
  }
}

/** The discovery documents of `issuer`: the OIDC form, then RFC 8414's (`oauth-authorization-server`, and `openid-configuration` after the host for an issuer with a path). */
function discoveryUrls (name: string, issuer: string, allowInsecure: boolean): { discovery: DiscoveryConfig, insecure: boolean } {
  const url = parseUrl(name, issuer)
  if (url.search || url.hash || /[?#]/.test(issuer) || url.username || url.password) {
    fail(`${name} must not carry a query string, a fragment or credentials for discovery (OpenID Connect Discovery 1.0 §4)`)
  }
  const insecure = url.protocol === 'http:' && !isLoopback(url.hostname)
  if (insecure && !allowInsecure) {
    fail(`${name} ${issuer} uses plain http on a non-loopback host: its discovery document and keys could be swapped on the way; use https`)
  }
  const path = url.pathname.replace(/\/$/, '')
  const urls = [new URL(`${url.origin}${path}/.well-known/openid-configuration`), new URL(`${url.origin}/.well-known/oauth-authorization-server${path}`)]
  if (path !== '') urls.push(new URL(`${url.origin}/.well-known/openid-configuration${path}`))
  return { discovery: { issuer, urls }, insecure }
}

/**
 * One issuer's options: `own` are the entry's (the top-level options themselves without `issuers`),
 * `defaults` the top-level ones it falls back on. `prefix` names the entry in messages.
 */
function issuerConfig (prefix: string, own: Record<string, unknown>, defaults: Record<string, unknown>, allowInsecure: boolean, routed: boolean): IssuerConfig {
  const name = (key: string): string => prefix + key
  /** A per-issuer value: the entry's own, else the top level's (named where it was given; the entry's when neither was). */
  const pick = (key: string): [string, unknown] => defaults[key] === undefined || own[key] !== undefined ? [name(key), own[key]] : [key, defaults[key]]

  let jwksUrl: URL | undefined
  let authBase: string | undefined
  if (own.supabaseUrl !== undefined) {
    const base = parseUrl(name('supabaseUrl'), own.supabaseUrl, projectUrlOf)
    // the dashboard's address is what the browser shows while one looks for the project URL
    if (onSupabaseCom(base)) {
      fail(`${name('supabaseUrl')} is a supabase.com address (the dashboard's or the Management API's), not the project URL: set ${projectUrlOf(base)}`)
    }
    if (base.search || base.hash || /[?#]/.test(own.supabaseUrl as string)) {
      fail(`${name('supabaseUrl')} must not carry a query string or a fragment: use the project URL (e.g. ${base.origin})`)
    }
    if (/\/auth\/v1\/?$/.test(base.pathname)) {
      fail(`${name('supabaseUrl')} is the project URL, without /auth/v1 (e.g. ${base.origin}): the plugin adds it`)
    }
    if (base.pathname !== '/') {
      fail(`${name('supabaseUrl')} is the project URL without a path (e.g. ${base.origin}): the plugin adds /auth/v1. ` +
        'For a JWKS at another place (a self-hosted GoTrue), set jwksUrl and issuer instead')
    }
    authBase = `${base.origin}/auth/v1`
    jwksUrl = new URL(`${authBase}/.well-known/jwks.json`)
  }
  const discovery = boolean(name('discovery'), own.discovery, false)
  const jwks = inlineKeySet(name('jwks'), own.jwks)
  if (own.jwksUrl !== undefined) {
    if (discovery) fail(`${name('discovery')} reads the JWKS URL from the issuer's discovery document: remove ${name('jwksUrl')}, or discovery`)
    jwksUrl = parseUrl(name('jwksUrl'), own.jwksUrl)
  } else if (authBase === undefined && !discovery && jwks === undefined) {
    fail(routed
      ? `${prefix}supabaseUrl, ${prefix}jwksUrl or ${prefix}discovery is required (or ${prefix}jwks, the key set itself)`
      : 'supabaseUrl or jwksUrl is required (or jwks, the key set itself, with issuer)')
  }
  if (jwksUrl?.username || jwksUrl?.password) fail(`${name('jwksUrl')} must not carry credentials`)
  if (jwksUrl?.hash) fail(`${name('jwksUrl')} must not carry a fragment`)
  // get-jwks would fetch /.well-known/jwks.json for a bare origin: the URL of the document itself, always
  if (jwksUrl?.pathname === '/') fail(`${name('jwksUrl')} has no path: give the JWKS document's URL (e.g. ${jwksUrl.origin}/.well-known/jwks.json)`)
  let insecureJwksUrl = jwksUrl !== undefined && jwksUrl.protocol === 'http:' && !isLoopback(jwksUrl.hostname)
  if (insecureJwksUrl && !allowInsecure) {
    fail(`the JWKS URL ${jwksUrl!.href} uses plain http on a non-loopback host; use https, ` +
      'or set allowInsecureJwksUrl: true if the network path is trusted')
  }

  // tokens are routed by their exact iss, and a discovery document is found (and checked) by it: one string
  const single = routed || discovery
  if (single && own.issuer !== undefined && (typeof own.issuer !== 'string' || own.issuer === '')) {
    fail(`${name('issuer')} must be one non-empty string ${routed
      ? 'in an issuers entry: tokens are routed to the entry configured for exactly their iss'
      : 'with discovery: its discovery document is found by it and must name it'}`)
  }
  if (single && own.issuer === undefined && authBase === undefined) {
    fail(`${name('issuer')} is required ${routed ? 'in an issuers entry without supabaseUrl' : 'with discovery'}: the exact iss of the tokens`)
  }
  if (own.issuer === undefined && jwksUrl === undefined && !discovery) {
    // jwks alone (an issuers entry without supabaseUrl was refused above): no URL to derive the issuer from
    fail(`${name('issuer')} is required with jwks alone: the exact iss of the tokens (for a Supabase project, https://<ref>.supabase.co/auth/v1), or false to skip the check`)
  }
  const issuer = stringList(name('issuer'), own.issuer, authBase)
  let discoveryConfig: DiscoveryConfig | undefined
  if (discovery) {
    const found = discoveryUrls(name('issuer'), issuer![0]!, allowInsecure)
    discoveryConfig = found.discovery
    insecureJwksUrl = found.insecure
  }

  // 'authenticated' is Supabase's audience: any other issuer's tokens need theirs named
  const [audienceName, audienceValue] = pick('audience')
  if (audienceValue === undefined && authBase === undefined && single) {
    fail(`${audienceName} is required for an issuer that is not a Supabase project (the 'authenticated' default is Supabase's): ` +
      'the aud your API\'s tokens carry (e.g. https://api.example.com), or false to skip the check')
  }
  return {
    jwksUrl,
    discovery: discoveryConfig,
    authBase,
    issuer,
    audience: stringList(audienceName, audienceValue, DEFAULT_AUDIENCE),
    algorithms: algorithmList(...pick('algorithms')),
    clockToleranceMs: seconds(...pick('clockTolerance'), DEFAULT_CLOCK_TOLERANCE, 0, MAX_CLOCK_TOLERANCE),
    cacheTtlMs: seconds(...pick('cacheTtl'), DEFAULT_CACHE_TTL, 0.001, MAX_CACHE_TTL),
    cooldownMs: seconds(...pick('cooldown'), DEFAULT_COOLDOWN, 0, MAX_COOLDOWN),
    staleIfErrorMs: seconds(...pick('staleIfError'), DEFAULT_STALE_IF_ERROR, 0, MAX_STALE_IF_ERROR),
    timeoutMs: seconds(...pick('timeout'), DEFAULT_TIMEOUT, 0.001, MAX_TIMEOUT),
    maxResponseSize: integer(...pick('maxResponseSize'), DEFAULT_MAX_RESPONSE_SIZE),
    insecureJwksUrl,
    allowInsecure,
    jwks,
    supabase: supabaseOption(...pick('supabase'), authBase === undefined ? undefined : authBase.slice(0, -'/auth/v1'.length)),
    sessions: sessionsOption(name('sessions'), own.sessions)
  }
}

/**
 * The `jwks` option: a key set as an object, or its JSON text (`process.env.SUPABASE_JWKS`). Only its
 * shape is checked here; its keys are judged by the key resolver. A message never shows the value,
 * which may hold a private key given by mistake.
 */
function inlineKeySet (name: string, value: unknown): InlineKeySet | undefined {
  if (value === undefined) return undefined
  let document = value
  if (typeof value === 'string') {
    try {
      document = JSON.parse(value)
    } catch {
      // not even JSON.parse's message: it quotes the text
      fail(`${name} is a string that is not JSON: give the JWKS document itself, { "keys": [...] }, as the JWKS URL serves it`)
    }
  }
  if (Array.isArray(document)) fail(`${name} is a list: give the key set, { "keys": [...] }, not its list of keys`)
  const keys = (document as { keys?: unknown } | null)?.keys
  if (typeof document !== 'object' || !Array.isArray(keys)) {
    fail(`${name} is not a key set: give the JWKS document itself, { "keys": [...] }, as the JWKS URL serves it (or its JSON text)`)
  }
  return { option: name, keys }
}

/** The `issuers` option: at least one entry, each a distinct issuer. */
function issuerList (options: Record<string, unknown>, allowInsecure: boolean): IssuerConfig[] {
  for (const key of SOURCE_OPTIONS) {
    if (options[key] !== undefined) fail(`${key} does not go with issuers: give each issuer its own entry in issuers`)
  }
  if (options.sessions !== undefined) {
    fail('sessions does not go with issuers at the top level: each issuer\'s sessions are in its own project\'s database; give sessions in its entry of issuers')
  }
  if (options.legacyTokens !== undefined) {
    fail('legacyTokens does not go with issuers: it is for one Supabase project\'s move off the legacy secret; register the plugin for that project alone meanwhile')
  }
  const list = options.issuers
  if (!Array.isArray(list) || list.length === 0) fail('issuers must be a non-empty array of issuer entries ({ supabaseUrl } or { issuer, jwksUrl | discovery, audience })')
  if (list.length > MAX_ISSUERS) fail(`issuers has ${list.length} entries, more than the ${MAX_ISSUERS} allowed`)
  const seen = new Set<string>()
  return list.map((entry: unknown, index) => {
    const prefix = `issuers[${index}].`
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) fail(`issuers[${index}] must be an object`)
    for (const key of Object.keys(entry)) if (!ISSUER_OPTIONS.has(key)) unknownKey(`unknown option ${prefix}${key}`, key, ISSUER_OPTIONS)
    if ((entry as { supabase?: { secretKey?: unknown } }).supabase?.secretKey !== undefined) {
      fail(`${prefix}supabase.secretKey is never used: fastify.supabaseAdmin is one client, of the top-level supabase (give it url and secretKey)`)
    }
    const config = issuerConfig(prefix, entry as Record<string, unknown>, options, allowInsecure, true)
    const iss = config.issuer![0]!
    if (seen.has(iss)) fail(`${prefix}issuer ${iss} is configured twice: each entry of issuers is a distinct issuer`)
    seen.add(iss)
    return config
  })
}

/**
 * With `issuers`, the top-level `supabase`: each entry's default, and with its own `url` the client of
 * callers without a user and `supabaseAdmin`. A `secretKey` without a `url` would make no client.
 */
function topLevelSupabase (value: unknown): ReturnType<typeof supabaseOption> {
  const own = value as { url?: unknown, secretKey?: unknown } | undefined
  if (own?.url !== undefined) return supabaseOption('supabase', value, undefined)
  if (own?.secretKey !== undefined) fail('supabase.secretKey needs supabase.url with issuers: fastify.supabaseAdmin is a client of one project, the one url names')
  return undefined
}

/**
 * Validates the options once, at registration, and turns them into a Config. `userOnly`: why only
 * user tokens can be verified here (with @fastify/jwt), refusing every other `auth` mode.
 */
export function normalizeOptions (input: unknown, userOnly?: string): Config {
  if (input === null || typeof input !== 'object') fail('options must be an object')
  const options = input as Record<string, unknown>
  if ('secret' in options || 'jwtSecret' in options) {
    fail('a shared secret is never used: this plugin verifies Supabase tokens with the public keys of ' +
      'the project JWKS. Remove the secret and set supabaseUrl (or jwksUrl)')
  }
  for (const name of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(name)) unknownKey(`unknown option ${name}`, name, KNOWN_OPTIONS)
  }
  const opts = options as SupabaseJwksOptions
  const allowInsecure = boolean('allowInsecureJwksUrl', opts.allowInsecureJwksUrl, false)
  const routed = opts.issuers !== undefined
  const issuers = routed ? issuerList(options, allowInsecure) : [issuerConfig('', options, options, allowInsecure, false)]
  const knownIssuers = new Set(issuers.flatMap((entry) => entry.issuer ?? []))

  const hook = opts.hook ?? false
  if (hook !== false && hook !== 'onRequest' && hook !== 'preHandler') {
    fail('hook must be false, "onRequest" or "preHandler"')
  }
  const callers = apiKeys(opts, userOnly)
  const realm = opts.realm ?? DEFAULT_REALM
  if (typeof realm !== 'string' || !/^[\x20-\x7e]*$/.test(realm) || /["\\]/.test(realm)) {
    fail('realm must be a printable ASCII string without quotes or backslashes')
  }

  return {
    issuers,
    routed,
    knownIssuers,
    maxTokenLength: integer('maxTokenLength', opts.maxTokenLength, DEFAULT_MAX_TOKEN_LENGTH),
    tokenCache: integer('tokenCache', opts.tokenCache, DEFAULT_TOKEN_CACHE, 0, MAX_TOKEN_CACHE),
    hook,
    realm,
    legacy: legacyWindow(opts.legacyTokens, issuers[0]!.authBase, allowInsecure),
    warmStart: boolean('warmStart', opts.warmStart, true),
    require: requirements('require', opts.require, knownIssuers, callers),
    isRevoked: functionOption('isRevoked', opts.isRevoked, '(claims, request) => boolean'),
    // supabaseUrl was checked with the issuer above; with issuers, the cookie's name is given
    cookieName: cookieOption(opts.cookie, routed || opts.supabaseUrl === undefined ? undefined : new URL(opts.supabaseUrl)),
    extractToken: functionOption('extractToken', opts.extractToken, '(request) => string | undefined'),
    resourceMetadata: resourceMetadataOption(opts.resourceMetadata, knownIssuers),
    callers,
    // with issuers, the top level's supabase is each entry's default, and the anonymous client only with its own url
    supabase: routed ? topLevelSupabase(opts.supabase) : issuers[0]!.supabase,
    postgres: apart(postgresOption(opts.postgres), issuers)
  }
}

/**
 * The option `postgres`, which runs users' SQL, checked apart from every `sessions`: the check reads
 * Supabase Auth's tables with a role of its own, never on a connection that users' SQL runs on.
 */
function apart (postgres: PostgresConfig | undefined, issuers: readonly IssuerConfig[]): PostgresConfig | undefined {
  for (const { sessions } of issuers) {
    if (postgres === undefined || sessions === undefined) continue
    if ((sessions.pool !== undefined && sessions.pool === postgres.pool) || (sessions.connectionString !== undefined && sessions.connectionString === postgres.connectionString)) {
      fail(`${sessions.option} and postgres are the same ${sessions.pool === undefined ? 'connection string' : 'pool'}: the sessions check reads auth.sessions and auth.users ` +
        'with a role of its own, which may read only what it needs; users\' SQL never runs there (docs/sessions.md gives the grants)')
    }
  }
  return postgres
}

/**
 * The `onRoute` hook that checks a route's requirements (`config.supabaseJwks`) when it is declared:
 * an invalid one fails the route's declaration (routes declared before the plugin: their first request).
 */
export function routeRequirementsCheck (config: Config) {
  return function checkSupabaseJwksRequirements (route: { method: string | string[], url: string, config?: unknown }): void {
    const own = (route.config as { supabaseJwks?: unknown } | undefined)?.supabaseJwks
    if (typeof own === 'object') requirements(`config.supabaseJwks of ${String(route.method)} ${route.url}`, own, config.knownIssuers, config.callers)
  }
}
