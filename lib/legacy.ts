import { createHash } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import type { Agent } from 'node:http'
import type { FastifyBaseLogger } from 'fastify'
import { AuthUnavailableError, TokenInvalidError } from './errors'
import { boundedGet, closingSignal, transportFor, type Answer, type GetError } from './http-get'
import type { IssuerConfig, LegacyConfig } from './options'

/*
 * The migration off the legacy JWT secret (the `legacyTokens` option). Supabase's own
 * `auth.getClaims()` verifies a legacy HS256 token by asking Supabase Auth, `GET /auth/v1/user`
 * with the token as bearer: a 200 means Auth signed it and the session is live. This does the same,
 * so no backend needs the secret even during the switch. Every call is bounded: one in flight per
 * distinct token, at most `maxConcurrentCalls` at once and `maxCallsPerSecond` (a token bucket):
 * a flood of random HS256 tokens gets 503s, never more calls. Each call is bounded as the JWKS
 * fetch is (lib/http-get.ts: `timeout`, `maxResponseSize`, no redirects, no compression), on
 * connections kept alive between calls, and its answer never reaches the client.
 */

/** Legacy-token activity, for logs or metrics. */
export interface LegacyStats {
  /** Calls made to Supabase Auth. */
  legacyCalls: number
  /** Requests (and `verify()` calls) accepted with a legacy token, from Auth or the token cache. */
  legacyAccepted: number
  /** Legacy tokens Supabase Auth refused (401/403). */
  legacyRefused: number
  /** Legacy tokens answered 503: Auth unreachable or failing, or a call cap reached. */
  legacyUnavailable: number
}

export interface LegacyChecker {
  /** Whether the window is still open: HS256 tokens are refused once `until` has passed. */
  active (): boolean
  /**
   * Resolves when Supabase Auth says the token is genuine and belongs to `sub` (or said so before,
   * and `exp`, in seconds, has not passed); throws the answer otherwise.
   */
  check (token: string, sub: string, exp: number): Promise<void>
  /** Counts a request accepted with a legacy token. */
  accepted (): void
  stats (): LegacyStats
  close (): Promise<void>
}

const HOUR = 3_600_000
/** Legacy tokens remembered as accepted by Auth (a digest and `exp` each): `tokenCache`, and at least this many. */
export const MIN_ACCEPTED = 1000
/** At most one warning per this long that a call cap refused a legacy token. */
const CAP_WARNING_INTERVAL = 10_000

/** How long is left, for people: "2 days 3 h", "41 min". */
function timeLeft (ms: number): string {
  const minutes = Math.max(1, Math.round(ms / 60_000))
  if (minutes < 60) return `${minutes} min`
  const hours = Math.round(minutes / 60)
  return hours < 48 ? `${hours} h` : `${Math.floor(hours / 24)} days ${hours % 24} h`
}

/** Whether a 401 is the API gateway refusing the `apikey` (`{"message": "Invalid API key"}`) rather than Auth refusing the token. */
function apiKeyRefused (body: string): boolean {
  try {
    const message = (JSON.parse(body) as { message?: unknown } | null)?.message
    return typeof message === 'string' && /api key/i.test(message)
  } catch {
    return false
  }
}

/** `config`: the project's (legacy tokens need exactly one issuer); `tokenCache`: the option, which sizes the memory of accepted tokens. */
export function createLegacyChecker (config: IssuerConfig, tokenCache: number, legacy: LegacyConfig, log: FastifyBaseLogger): LegacyChecker {
  const { timeoutMs } = config
  // kept-alive connections to Auth, made at the first call (https loaded then, if the URL is https)
  let agent: Agent | undefined
  const closed = closingSignal()
  const inflight = new Map<string, Promise<void>>()
  const stats: LegacyStats = { legacyCalls: 0, legacyAccepted: 0, legacyRefused: 0, legacyUnavailable: 0 }
  // the rate cap: a bucket of `maxCallsPerSecond` calls, refilled continuously (monotonic clock:
  // a wall clock stepped back must not empty it)
  let allowance = legacy.maxCallsPerSecond
  let filledAt = performance.now()
  let capWarnedAt = Number.NEGATIVE_INFINITY
  /*
   * Tokens Auth accepted, by SHA-256 digest, until their `exp`: a token the token cache does not
   * keep (over 4 KiB, many claims, `tokenCache: 0`, evicted) still costs one call, not one per request.
   */
  const accepted = new Map<string, number>()
  const maxAccepted = Math.max(MIN_ACCEPTED, tokenCache)

  // said at start, then every hour and when the window closes: an operator must not forget it is open
  let timer: NodeJS.Timeout | undefined
  function remind (): void {
    const left = legacy.until - Date.now()
    if (left <= 0) {
      log.warn({ until: new Date(legacy.until).toISOString(), ...stats },
        'supabase-jwks: the legacy-token window is over: HS256 tokens are refused now. Remove legacyTokens: ' +
        'with an until in the past, the next start of this service fails')
      return
    }
    log.warn({ until: new Date(legacy.until).toISOString(), left: timeLeft(left), ...stats },
      `supabase-jwks: legacy HS256 tokens are accepted through Supabase Auth for ${timeLeft(left)} more; ` +
      'remove legacyTokens once stats().legacyAccepted stops growing')
    timer = setTimeout(remind, Math.min(HOUR, left))
    timer.unref()
  }
  remind()

  function unavailable (reason: string, extra: Record<string, unknown>): never {
    stats.legacyUnavailable++
    log.warn({ userUrl: legacy.userUrl.href, ...extra, reason }, 'supabase-jwks: Supabase Auth could not check a legacy token')
    throw new AuthUnavailableError('Supabase Auth did not answer')
  }

  /** A legacy token refused by a call cap: 503, and a warning at most every 10 s that the cap may be too low. */
  function capped (reason: string): Promise<never> {
    stats.legacyUnavailable++
    const now = performance.now()
    if (now - capWarnedAt >= CAP_WARNING_INTERVAL) {
      capWarnedAt = now
      log.warn({ maxCallsPerSecond: legacy.maxCallsPerSecond, maxConcurrentCalls: legacy.maxConcurrentCalls, ...stats },
        `supabase-jwks: ${reason}: legacy tokens get 503; raise legacyTokens.maxCallsPerSecond or maxConcurrentCalls if this is real traffic`)
    }
    return Promise.reject(new AuthUnavailableError(reason))
  }

  function takeAllowance (): boolean {
    const now = performance.now()
    allowance = Math.min(legacy.maxCallsPerSecond, allowance + (now - filledAt) * legacy.maxCallsPerSecond / 1000)
    filledAt = now
    if (allowance < 1) return false
    allowance--
    return true
  }

  async function call (token: string, sub: string): Promise<void> {
    stats.legacyCalls++
    agent ??= new (transportFor(legacy.userUrl).Agent)({ keepAlive: true })
    let answer: Answer
    try {
      // a kept-alive connection that Auth (or a load balancer) closed while idle is tried once more at once, within the timeout
      answer = await boundedGet(legacy.userUrl, {
        timeoutMs,
        maxResponseSize: config.maxResponseSize,
        timeoutMessage: `Supabase Auth did not answer within the timeout (${timeoutMs} ms)`,
        headers: { authorization: `Bearer ${token}`, apikey: legacy.apiKey },
        agent,
        signal: closed.signal
      })
    } catch (error) {
      // the network or TLS code (ECONNREFUSED, ECONNRESET, ...), or the bound that refused the answer; a timeout has none
      return unavailable(String((error as GetError).message), { code: (error as GetError).code })
    }
    const { status } = answer
    const body = answer.body.toString('utf8')
    if (status === 401 || status === 403) {
      // the gateway's answer to a missing or wrong apikey: a misconfiguration, not a bad token
      if (apiKeyRefused(body)) return unavailable('Supabase Auth refused the apiKey: check legacyTokens.apiKey', { status })
      stats.legacyRefused++
      throw new TokenInvalidError('Supabase Auth did not accept the legacy token')
    }
    if (status !== 200) return unavailable(`Supabase Auth answered HTTP ${status}`, { status })
    let user: unknown
    try {
      user = JSON.parse(body)
    } catch {
      return unavailable('the answer is not JSON', { status })
    }
    // the answer is the session's user: it must be the token's own subject
    if ((user as { id?: unknown } | null)?.id !== sub) {
      stats.legacyRefused++
      throw new TokenInvalidError('Supabase Auth answered for another user')
    }
  }

  return {
    active: () => Date.now() < legacy.until,
    check (token, sub, exp) {
      const digest = createHash('sha256').update(token).digest('base64')
      if ((accepted.get(digest) ?? 0) > Date.now()) return Promise.resolve()
      const running = inflight.get(token)
      if (running !== undefined) return running
      if (inflight.size >= legacy.maxConcurrentCalls) return capped('too many legacy token checks in flight')
      if (!takeAllowance()) return capped('too many legacy token checks a second')
      const pending = call(token, sub).then(() => {
        if (accepted.size >= maxAccepted) accepted.delete(accepted.keys().next().value!)
        accepted.set(digest, exp * 1000)
      }).finally(() => inflight.delete(token))
      inflight.set(token, pending)
      return pending
    },
    accepted () {
      stats.legacyAccepted++
    },
    stats: () => ({ ...stats }),
    async close () {
      clearTimeout(timer)
      accepted.clear()
      closed.abort()
      agent?.destroy()
    }
  }
}
