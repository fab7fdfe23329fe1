import { performance } from 'node:perf_hooks'
import type { FastifyBaseLogger } from 'fastify'
import { boundedGet, closingSignal, type Answer, type GetError } from './http-get'
import { EMPTY_SET, readKeySet, type KeyEntry } from './key-set'
import { isLoopback, type DiscoveryConfig, type IssuerConfig } from './options'
import type { SignatureCounts } from './signature'

/*
 * Getting one issuer's key set, or saying why not: the transport half of the key resolver (the
 * policy, when to ask and what to trust meanwhile, is lib/keys.ts). One fetch is:
 *   - with `discovery`, the JWKS URL read first from the issuer's discovery document: again at the
 *     first fetch after `cacheTtl`, after a failure, and at each refresh(). The document must name
 *     the configured issuer and an https `jwks_uri` (http on loopback, or with allowInsecureJwksUrl);
 *     a document that cannot be read while the jwks_uri it named last is known is logged, and that
 *     JWKS fetched, so that an outage of the discovery endpoint alone is no outage of the keys;
 *   - then the JWKS: only a 200 whose body is a JSON key set with at least one entry is a key set.
 * Every GET is bounded by lib/http-get.ts (time, size, no compression, no redirects), and the
 * document and the JWKS share one `timeout`. The answer's body never reaches a log: only its status,
 * the network code, or the plugin's own words.
 */

/** Why a step gave nothing, and where (for the log): the plugin's own words, never what the server sent. */
interface Failure { failure: string, where: Record<string, unknown> }

/** A fetch's outcome: the set's entries and where they came from, or why there is none (counted as one failure). */
export type Fetched = { entries: KeyEntry[], url: URL, failure?: undefined } | Failure

export interface KeyFetcher {
  /**
   * One fetch. `again` reads the discovery document even within `cacheTtl` (refresh(), and after a
   * failed fetch); `context` is logged with the `fetching JWKS` line.
   */
  fetch (again: boolean, context: Record<string, unknown>): Promise<Fetched>
  /** The JWKS URL: configured, or the one the discovery document named last. */
  url (): URL | undefined
  /** Aborts every GET in flight, and every one after. */
  close (): void
}

/** Why a GET gave no answer, for the log: its message and, when it has one, its network code. */
function noAnswer (error: unknown): Failure {
  const { message, code } = error as GetError
  return { failure: String(message), where: code === undefined ? {} : { code } }
}

/**
 * The fetcher of one issuer. `counts` are the resolver's signature counts (the keys' checks add to them);
 * `observe` (the `check` CLI) is told each complete answer of the JWKS server, status and body as fetched.
 */
export function createKeyFetcher (config: IssuerConfig, log: FastifyBaseLogger, counts: SignatureCounts, observe?: (answer: Answer) => void): KeyFetcher {
  const { timeoutMs, cacheTtlMs } = config
  const clock = () => performance.now()
  let jwksUrl = config.jwksUrl
  let discoveredAt = Number.NEGATIVE_INFINITY
  let warnedInsecure: string | undefined
  const closed = closingSignal()

  /** One GET within what is left of the fetch's `timeout`: the answer, or why none. */
  async function get (url: URL, deadline: number): Promise<Answer | Failure> {
    try {
      return await boundedGet(url, {
        timeoutMs: Math.max(1, deadline - clock()),
        timeoutMessage: `JWKS fetch timed out (timeout ${timeoutMs} ms)`,
        maxResponseSize: config.maxResponseSize,
        signal: closed.signal
      })
    } catch (error) {
      return noAnswer(error)
    }
  }

  /** The `jwks_uri` of a discovery document, or why the document is not acceptable. */
  function jwksUriOf (body: Buffer, discovery: DiscoveryConfig, source: URL): URL | Failure {
    const where = { discoveryUrl: source.href }
    const refuse = (failure: string, extra: Record<string, unknown> = {}): Failure => ({ failure, where: { ...where, ...extra } })
    let document: { issuer?: unknown, jwks_uri?: unknown } | null
    try {
      document = JSON.parse(body.toString('utf8')) as typeof document
    } catch {
      document = null
    }
    if (typeof document !== 'object' || document === null) return refuse('the discovery document is not a JSON object')
    if (document.issuer !== discovery.issuer) {
      // the configured issuer must be the document's, exactly (OpenID Connect Discovery 1.0 §4.3, RFC 8414 §3.3)
      const received = typeof document.issuer === 'string' ? document.issuer.slice(0, 200) : typeof document.issuer
      return refuse('the discovery document names another issuer: set issuer to exactly the one it names, or fix the URL',
        { issuer: discovery.issuer, documentIssuer: received })
    }
    let url: URL | undefined
    try {
      url = new URL(document.jwks_uri as string)
    } catch {}
    if (typeof document.jwks_uri !== 'string' || url === undefined || (url.protocol !== 'https:' && url.protocol !== 'http:')) {
      return refuse('the discovery document has no jwks_uri that is an http(s) URL')
    }
    if (url.username || url.password || url.hash) return refuse('the discovery document\'s jwks_uri carries credentials or a fragment')
    const insecure = url.protocol === 'http:' && !isLoopback(url.hostname)
    if (insecure && !config.allowInsecure) {
      return refuse('the discovery document\'s jwks_uri is plain http on a non-loopback host: keys fetched so could be swapped on the way', { jwksUri: url.href })
    }
    if (insecure && url.href !== warnedInsecure) {
      // allowed by allowInsecureJwksUrl: said once per jwks_uri, as a configured plain http URL is at start
      warnedInsecure = url.href
      log.warn({ ...where, jwksUri: url.href }, 'supabase-jwks: the JWKS is fetched over plain http')
    }
    if (url.pathname === '/') return refuse('the discovery document\'s jwks_uri has no path: it must name the JWKS document', { jwksUri: url.href })
    return url
  }

  /** Reads the JWKS URL from the discovery document: the next URL only after a 404. */
  async function discover (discovery: DiscoveryConfig, deadline: number): Promise<URL | Failure> {
    for (const source of discovery.urls) {
      const answer = await get(source, deadline)
      if ('failure' in answer) return { failure: answer.failure, where: { discoveryUrl: source.href, ...answer.where } }
      if (answer.status === 404) continue
      if (answer.status !== 200) return { failure: `the discovery document answered HTTP ${answer.status}`, where: { discoveryUrl: source.href, status: answer.status } }
      return jwksUriOf(answer.body, discovery, source)
    }
    return { failure: 'no discovery document: every discovery URL answered HTTP 404', where: { discoveryUrls: discovery.urls.map((url) => url.href) } }
  }

  return {
    url: () => jwksUrl,
    close: () => closed.abort(),
    async fetch (again, context) {
      const deadline = clock() + timeoutMs
      if (config.discovery !== undefined && (jwksUrl === undefined || again || clock() >= discoveredAt + cacheTtlMs)) {
        const found = await discover(config.discovery, deadline)
        if (found instanceof URL) {
          jwksUrl = found
          discoveredAt = clock()
        } else if (jwksUrl === undefined || deadline - clock() < timeoutMs / 4) {
          // never read, or the document took (nearly) all of the time: the fetch has failed
          return found
        } else {
          // the jwks_uri it named last is fetched: the fetch counts as failed only if that JWKS fails too
          // (one fetch, one failure, one step of the backoff)
          log.warn({ jwksUrl: jwksUrl.href, ...found.where, reason: found.failure }, 'supabase-jwks: discovery document not read: fetching the jwks_uri it named last')
        }
      }
      const url = jwksUrl!
      log.info({ jwksUrl: url.href, ...context }, 'supabase-jwks: fetching JWKS')
      const answer = await get(url, deadline)
      // no complete answer: refused, reset twice, timed out, too large, compressed
      if ('failure' in answer) return answer
      observe?.(answer)
      if (answer.status !== 200) return { failure: `the JWKS answered HTTP ${answer.status}`, where: { status: answer.status } }
      const entries = readKeySet(answer.body, config.algorithms, counts)
      if (entries === undefined || entries.length === 0) {
        return { failure: entries === undefined ? 'the body is not a JSON key set' : EMPTY_SET, where: { status: 200 } }
      }
      return { entries, url }
    }
  }
}
