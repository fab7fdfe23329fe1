import { MalformedCookieError } from './errors'

/*
 * The session cookie that @supabase/ssr writes (read in @supabase/ssr 0.12 and supabase-js 2 sources):
 * - its name is supabase-js's storage key, `sb-<ref>-auth-token`, where <ref> is the first DNS label
 *   of the project URL's host (`sb-127-auth-token` for the CLI's http://127.0.0.1:54321);
 * - its value is the session JSON, either as is (`cookieEncoding: 'raw'`) or, by default, `base64-`
 *   followed by the base64url of the JSON; the access token is the JSON's `access_token`;
 * - a value longer than 3180 characters (URI-encoded) is split into `<name>.0`, `<name>.1`, …, and
 *   readers join them in order up to the first gap; an unsuffixed cookie, when present, wins.
 * Chunks from different writes can mix: a value that does not decode to a session is refused here
 * (@supabase/ssr treats it as no session; for a request, that is a 401 either way).
 */

const BASE64_PREFIX = 'base64-'
/** Longest session accepted, all chunks joined, in characters: refused before any decoding. */
export const MAX_SESSION_COOKIE_LENGTH = 64 * 1024
/** Most chunks read: Node's 16 KiB header limit allows about five of @supabase/ssr's. */
export const MAX_SESSION_COOKIE_CHUNKS = 32
/** A cookie name (RFC 6265 §4.1.1: an RFC 7230 token). */
export const COOKIE_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}$/

/** The name @supabase/ssr gives a project's session cookie. */
export function sessionCookieName (supabaseUrl: URL): string {
  return `sb-${supabaseUrl.hostname.split('.')[0]}-auth-token`
}

type Cookies = Readonly<Record<string, string | undefined>>

/** The joined value of the session cookie, or `undefined` when the request has none. */
function joined (cookies: Cookies, name: string): string | undefined {
  const whole = own(cookies, name)
  if (whole !== '') return whole
  let value = ''
  for (let i = 0; i <= MAX_SESSION_COOKIE_CHUNKS; i++) {
    const chunk = own(cookies, `${name}.${i}`)
    if (chunk === '') return value === '' ? undefined : value
    if (i === MAX_SESSION_COOKIE_CHUNKS) break
    value += chunk
    if (value.length > MAX_SESSION_COOKIE_LENGTH) throw new MalformedCookieError('it is too large')
  }
  throw new MalformedCookieError('it has too many chunks')
}

/** A cookie's value, `''` when there is none: only the object's own string members count (not `constructor`). */
function own (cookies: Cookies, name: string): string {
  const value = Object.hasOwn(cookies, name) ? cookies[name] : undefined
  return typeof value === 'string' ? value : ''
}

/**
 * The access token of the session cookie `name`, or `undefined` when there is no such cookie.
 * A cookie that is there but does not hold a session with an access token is refused: never
 * passed on as no cookie, so a broken session is told apart from a signed-out one.
 */
export function tokenFromSessionCookie (cookies: Cookies, name: string): string | undefined {
  const value = joined(cookies, name)
  if (value === undefined) return undefined
  if (value.length > MAX_SESSION_COOKIE_LENGTH) throw new MalformedCookieError('it is too large')
  let json = value
  if (value.startsWith(BASE64_PREFIX)) {
    const encoded = value.slice(BASE64_PREFIX.length)
    // Buffer skips what is not base64url: a value with anything else in it is refused, not half read
    if (!/^[A-Za-z0-9_-]*$/.test(encoded)) throw new MalformedCookieError('it is not base64url')
    json = Buffer.from(encoded, 'base64url').toString('utf8')
  }
  let session: unknown
  try {
    session = JSON.parse(json)
  } catch {
    throw new MalformedCookieError('it is not a session (a chunk may be missing or from another write)')
  }
  const token = session !== null && typeof session === 'object' ? (session as { access_token?: unknown }).access_token : undefined
  if (typeof token !== 'string' || token === '') throw new MalformedCookieError('it holds no access_token')
  return token
}
