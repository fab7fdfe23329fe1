/** One entry of `amr`: how and when the user authenticated. */
export interface SupabaseAmrEntry {
  method: string
  timestamp: number
}

/**
 * The claims of a Supabase Auth (GoTrue) access token. `sub`, `exp` and (unless their checks
 * are turned off) `iss` and `aud` are guaranteed by verification; the rest are as GoTrue sends them.
 */
export interface SupabaseAccessTokenClaims {
  /** The user id (UUID). */
  sub: string
  /** `"authenticated"` for user access tokens. */
  aud: string | string[]
  /** Expiry, in seconds since the epoch. */
  exp: number
  /** Issue time, in seconds since the epoch. */
  iat?: number
  /** `https://<ref>.supabase.co/auth/v1`; absent on a self-hosted GoTrue without `GOTRUE_JWT_ISSUER`. */
  iss?: string
  email?: string
  phone?: string
  /** Provider data set by the server; not editable by the user. */
  app_metadata?: Record<string, unknown> & { provider?: string, providers?: string[] }
  /** Data the user can edit themselves: never base authorization on it. */
  user_metadata?: Record<string, unknown>
  /** The Postgres role: `authenticated` for signed-in users (also anonymous ones). */
  role?: string
  /** Authenticator assurance level: `aal1`, or `aal2` after MFA. */
  aal?: 'aal1' | 'aal2'
  amr?: SupabaseAmrEntry[]
  session_id?: string
  is_anonymous?: boolean
  /** OAuth-server sessions only. */
  client_id?: string
  /** OAuth-server sessions only. */
  scope?: string
}
