import { setMaxListeners } from 'node:events'
import http from 'node:http'
import type { Agent, ClientRequest, IncomingHttpHeaders, RequestOptions } from 'node:http'
import { performance } from 'node:perf_hooks'

/*
 * One bounded GET, on Node's own http and https: the JWKS fetch, its discovery document and the
 * legacy-token call to Supabase Auth all go through it. The bounds:
 *   - time: one deadline from start to end (DNS, connect, TLS, headers, body); when it runs out the
 *     request is destroyed, not just abandoned, so a server that drips bytes keeps no connection;
 *   - size: the body is counted as it arrives and the request destroyed past `maxResponseSize` (a
 *     `content-length` over it is refused before any byte of the body);
 *   - no compression: `identity` is asked for and any other `content-encoding` refused (a
 *     compressed body could inflate past the cap), and nothing is ever inflated;
 *   - no redirects: a 3xx is an answer like any other status, its `location` never followed.
 * A connection closed under the request before the answer ended (a kept-alive one the server or a
 * load balancer closed while idle) is tried once more at once, on a new connection, by the same deadline.
 * https is loaded at the first https URL only: a start with keys given inline loads no TLS.
 */

/** What the server answered: status and body (at most `maxResponseSize` bytes). */
export interface Answer { status: number, body: Buffer }

/** Why no answer: the message, and a code (the network or TLS code, or one of this module's) for logs. */
export type GetError = Error & { code?: string }

export interface GetOptions {
  /** The whole GET's time, both tries, in ms. */
  timeoutMs: number
  maxResponseSize: number
  /** The error when the time runs out: "JWKS fetch timed out (timeout 5000 ms)". */
  timeoutMessage: string
  headers?: Record<string, string>
  /** A keep-alive agent; by default each GET has a connection of its own, closed after it. */
  agent?: Agent
  /** Aborts the GET (its owner closed). */
  signal?: AbortSignal
}

/** Network codes of a connection closed under a request: worth one immediate new try. */
const TRANSIENT: ReadonlySet<unknown> = new Set<unknown>(['ECONNRESET', 'EPIPE'])

type Transport = Pick<typeof http, 'request' | 'Agent'>
let https: Transport | undefined

/** `http`, or `https` (loaded the first time it is needed, by require: a dynamic import fails in some test runners' sandboxes). */
export function transportFor (url: URL): Transport {
  if (url.protocol !== 'https:') return http
  https ??= require('node:https') as Transport
  return https
}

/**
 * An AbortSignal that closes every GET of its owner: each GET in flight listens to it, so Node's
 * warning at 11 listeners would be a false alarm under `maxConcurrentCalls`.
 */
export function closingSignal (): AbortController {
  const controller = new AbortController()
  setMaxListeners(0, controller.signal)
  return controller
}

function codeError (message: string, code: string): GetError {
  return Object.assign(new Error(message), { code })
}

/** The content-encoding of an answer, when it is not identity. */
function encodingOf (headers: IncomingHttpHeaders): string | undefined {
  const encoding = headers['content-encoding']
  return encoding === undefined || encoding === 'identity' ? undefined : encoding.slice(0, 40)
}

/** One try, within `ms`; `agent`: the options' (the first try), or `false` (a new connection, for the retry). */
function once (url: URL, options: GetOptions, ms: number, agent: Agent | false | undefined): Promise<Answer> {
  const { maxResponseSize } = options
  const request: RequestOptions = {
    method: 'GET',
    headers: { accept: 'application/json', ...options.headers, 'accept-encoding': 'identity' },
    agent: agent ?? false
  }
  return new Promise((resolve, reject) => {
    let settled = false
    let req: ClientRequest | undefined
    const timer = setTimeout(() => fail(new Error(options.timeoutMessage)), ms)
    timer.unref()
    const abort = () => fail(new Error('aborted: closed'))
    /** Whether this is the first outcome: then the timer and the close listener are done with. */
    function settle (): boolean {
      if (settled) return false
      settled = true
      clearTimeout(timer)
      options.signal?.removeEventListener('abort', abort)
      return true
    }
    function fail (error: GetError): void {
      if (!settle()) return
      req?.destroy()
      reject(error)
    }
    try {
      req = transportFor(url).request(url, request, (response) => {
        const encoding = encodingOf(response.headers)
        if (encoding !== undefined) return fail(codeError(`a compressed answer is refused (content-encoding ${encoding})`, 'COMPRESSED'))
        const tooLarge = () => codeError(`the answer is larger than maxResponseSize (${maxResponseSize} bytes)`, 'RESPONSE_TOO_LARGE')
        if (Number(response.headers['content-length']) > maxResponseSize) return fail(tooLarge())
        const chunks: Buffer[] = []
        let size = 0
        response.on('data', (chunk: Buffer) => {
          size += chunk.length
          if (size > maxResponseSize) return fail(tooLarge())
          chunks.push(chunk)
        })
        response.on('end', () => {
          if (settle()) resolve({ status: response.statusCode!, body: Buffer.concat(chunks) })
        })
        response.on('error', fail)
        // closed before its end: the body was cut (no 'error' is promised for that on every Node.js)
        response.on('close', () => fail(codeError('the connection closed before the answer ended', 'ECONNRESET')))
      })
      req.on('error', fail)
    } catch (error) {
      // Node refuses some requests before sending anything (a header value with a line break): an answer like any failure
      return fail(error as GetError)
    }
    if (options.signal?.aborted === true) abort()
    else options.signal?.addEventListener('abort', abort)
    req.end()
  })
}

/** One bounded GET (see above): the answer, whatever its status, or rejects with why there is none. */
export async function boundedGet (url: URL, options: GetOptions): Promise<Answer> {
  const deadline = performance.now() + options.timeoutMs
  try {
    return await once(url, options, options.timeoutMs, options.agent)
  } catch (error) {
    const left = Math.floor(deadline - performance.now())
    if (!TRANSIENT.has((error as GetError).code) || left < 1) throw error
    return once(url, options, left, false)
  }
}
