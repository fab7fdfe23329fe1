import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import { appFor, codeOf, issuerFor } from './fixtures/helpers'
import { b64 } from './fixtures/craft'

/*
 * Every parse of request input is linear in its length: the Authorization header, the session
 * cookie, the token itself and what extractToken returns. Each case sends an input padded with a
 * pattern that makes a backtracking regular expression super-linear (a run of spaces, tabs, dots,
 * JSON whitespace…) and a control of the same length without it, in the same run, and compares the
 * two: a ratio of medians, never an absolute time. The old `/^ +| +$/g` trim of the Bearer header
 * took about 250 ms on `Bearer  a<16,000 spaces>b` against well under 1 ms for the control.
 */

/** Lengths of the padding: small, middling, and near Node's 16 KiB header limit. */
const SIZES = [2048, 8192, 15_000]
/** Interleaved samples per input, each the time of BATCH requests in a row: the median is kept. */
const REPEATS = 15
const BATCH = 2
/** Requests with each input before any is timed: the code paths are compiled by then. */
const WARM_UP = 3
/** A linear parse keeps the padded input within this factor of the control (measured: about 1). */
const MAX_RATIO = 4

type Answer = Awaited<ReturnType<FastifyInstance['inject']>>
type Send = (input: string) => Promise<Answer>

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

/**
 * The ratio of the padded input's time to the control's: BATCH requests with one, then BATCH with the
 * other (the order alternating), REPEATS times after a warm-up; the median of these paired ratios. Each
 * pair is measured back to back, so a slow spell of the host (2 cores, shared) weighs on both alike.
 */
async function pairedRatio (send: Send, padded: string, control: string): Promise<{ ratio: number, padded: number, control: number }> {
  for (let round = 0; round < WARM_UP; round++) {
    await send(padded)
    await send(control)
  }
  const timeOf = async (input: string) => {
    const started = process.hrtime.bigint()
    for (let b = 0; b < BATCH; b++) await send(input)
    return Number(process.hrtime.bigint() - started) / BATCH
  }
  const ratios: number[] = []
  const times: [number[], number[]] = [[], []]
  for (let round = 0; round < REPEATS; round++) {
    const first = round % 2 === 0 ? await timeOf(padded) : 0
    const other = await timeOf(control)
    const pad = round % 2 === 0 ? first : await timeOf(padded)
    ratios.push(pad / other)
    times[0].push(pad)
    times[1].push(other)
  }
  return { ratio: median(ratios), padded: median(times[0]), control: median(times[1]) }
}

interface Case {
  name: string
  /** The padded input for a padding of `size` characters. */
  padded (size: number): string
  /** An input without the padding pattern, longer as `k` grows: the runner picks `k` for the padded input's length. */
  control (k: number): string
  /** The answers expected (status and code, or 200), checked once per size. */
  expect: { padded: string, control: string }
}

/** The answer as `'200'` or its error code. */
function outcome (res: Answer): string {
  return res.statusCode === 200 ? '200' : codeOf(res)
}

/** The control as long as the padded input: the least `k` that makes it at least that long. */
function controlFor (length: number, control: Case['control']): string {
  let low = 0
  let high = length
  while (low < high) {
    const mid = (low + high) >>> 1
    if (control(mid).length < length) low = mid + 1
    else high = mid
  }
  return control(low)
}

/** Runs each case at every size: the answers as expected, and the padded input within MAX_RATIO of the control. */
async function linear (t: Test, send: Send, cases: Case[]): Promise<void> {
  for (const { name, padded, control, expect } of cases) {
    for (const size of SIZES) {
      const input = padded(size)
      const inputs = [input, controlFor(input.length, control)]
      t.equal(inputs[0]!.length, inputs[1]!.length, `${name}, ${size}: the control has the padded input's length`)
      t.equal(outcome(await send(inputs[0]!)), expect.padded, `${name}, ${size}: the padded input gets ${expect.padded}`)
      t.equal(outcome(await send(inputs[1]!)), expect.control, `${name}, ${size}: the control gets ${expect.control}`)
      const { ratio, padded: padTime, control: controlTime } = await pairedRatio(send, inputs[0]!, inputs[1]!)
      t.ok(ratio < MAX_RATIO, `${name}, ${size}: padded ${(padTime / 1000).toFixed(0)} µs, control ` +
        `${(controlTime / 1000).toFixed(0)} µs a request: ratio ${ratio.toFixed(2)} (< ${MAX_RATIO})`)
    }
  }
}

const BAD_REQUEST = 'FST_SUPABASE_JWKS_BAD_REQUEST'
const MALFORMED_TOKEN = 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'
const MALFORMED_COOKIE = 'FST_SUPABASE_JWKS_MALFORMED_COOKIE'
const TOKEN_INVALID = 'FST_SUPABASE_JWKS_TOKEN_INVALID'

t.test('the Authorization header is parsed in linear time: runs of spaces, tabs or both, around and inside the token', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const token = issuer.sign()
  const send: Send = (authorization) => app.inject({ method: 'GET', url: '/me', headers: { authorization } })
  await linear(t, send, [
    {
      // the issue's attack: the old trim's ` +$` scanned the rest of the run from every space
      name: 'spaces inside the token',
      padded: (n) => `Bearer  a${' '.repeat(n)}b`,
      control: (k) => `Bearer  a${'x'.repeat(k)}b`,
      expect: { padded: BAD_REQUEST, control: MALFORMED_TOKEN }
    },
    {
      name: 'spaces, then a tab, after the token',
      padded: (n) => `Bearer  ${token}${' '.repeat(n)}\t`,
      control: (k) => `Bearer  ${token}${'A'.repeat(k)}.`,
      expect: { padded: BAD_REQUEST, control: MALFORMED_TOKEN }
    },
    {
      name: 'spaces and tabs mixed around the token',
      padded: (n) => `Bearer  ${'\t '.repeat(n / 4)}${token}${' '.repeat(n / 2)}\t`,
      control: (k) => `Bearer  ${token}${'A'.repeat(k)}`,
      expect: { padded: BAD_REQUEST, control: TOKEN_INVALID }
    },
    {
      // only spaces around the token: trimmed, and the token is accepted
      name: 'spaces around a valid token',
      padded: (n) => `Bearer ${' '.repeat(n / 2)}${token}${' '.repeat(n / 2)}`,
      control: (k) => `Bearer ${token}${'A'.repeat(k)}`,
      expect: { padded: '200', control: TOKEN_INVALID }
    }
  ])
})

t.test('the session cookie is parsed in linear time (@fastify/cookie, cookie: true)', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  await app.register(fastifyCookie)
  await appFor(t, { supabaseUrl: issuer.url, cookie: true }, app)
  const token = issuer.sign()
  const name = 'sb-127-auth-token'
  const base64 = (json: string) => `base64-${Buffer.from(json).toString('base64url')}`
  const session = base64(JSON.stringify({ access_token: token }))
  const send: Send = (cookie) => app.inject({ method: 'GET', url: '/me', headers: { cookie } })
  await linear(t, send, [
    {
      name: 'runs of spaces and semicolons between cookies',
      padded: (n) => `a=1${'; '.repeat(n / 2)}${name}=${session}`,
      control: (k) => `a=1${'x'.repeat(k)}; ${name}=${session}`,
      expect: { padded: '200', control: '200' }
    },
    {
      name: 'whitespace inside the session JSON (raw encoding)',
      padded: (n) => `${name}=${encodeURIComponent(`{"access_token":"${token}"${' \t\n'.repeat(n / 9)}}`)}`,
      control: (k) => `${name}=${encodeURIComponent(`{"access_token":"${token}","p":"${'x'.repeat(k)}"}`)}`,
      expect: { padded: '200', control: '200' }
    },
    {
      name: 'whitespace inside the session JSON (base64url encoding)',
      padded: (n) => `${name}=${base64(`{"access_token":"${token}"${' '.repeat(n)}}`)}`,
      control: (k) => `${name}=${base64(`{"access_token":"${token}","p":"${'x'.repeat(k)}"}`)}`,
      expect: { padded: '200', control: '200' }
    },
    {
      name: 'a run of dashes and underscores after the base64 prefix',
      padded: (n) => `${name}=base64-${'-_'.repeat(n / 2)}!`,
      control: (k) => `${name}=base64-${'A'.repeat(k)}!`,
      expect: { padded: MALFORMED_COOKIE, control: MALFORMED_COOKIE }
    }
  ])
})

t.test('the token itself is parsed in linear time: dots, base64url runs, JSON whitespace', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, maxTokenLength: 32 * 1024 })
  const token = issuer.sign()
  const [head, body, sig] = token.split('.') as [string, string, string]
  const header = JSON.parse(Buffer.from(head, 'base64url').toString()) as Record<string, unknown>
  const send: Send = (value) => app.inject({ method: 'GET', url: '/me', headers: { authorization: `Bearer ${value}` } })
  await linear(t, send, [
    {
      // the three-segment check: a segment that ends where a dot is wanted
      name: 'one long segment, then a character outside base64url',
      padded: (n) => `${'a'.repeat(n)}!`,
      control: (k) => `!${'a'.repeat(k)}`,
      expect: { padded: MALFORMED_TOKEN, control: MALFORMED_TOKEN }
    },
    {
      name: 'a run of dots',
      padded: (n) => `a${'.a'.repeat(n / 2)}`,
      control: (k) => `a.${'a'.repeat(k)}.a`,
      expect: { padded: MALFORMED_TOKEN, control: MALFORMED_TOKEN }
    },
    {
      name: 'base64 padding after the signature',
      padded: (n) => `${token}${'='.repeat(n)}`,
      control: (k) => `${token}${'A'.repeat(k)}`,
      expect: { padded: MALFORMED_TOKEN, control: TOKEN_INVALID }
    },
    {
      name: 'whitespace inside the header JSON',
      padded: (n) => `${b64(`{${' '.repeat(n)}${JSON.stringify(header).slice(1)}`)}.${body}.${sig}`,
      control: (k) => `${b64(`{"p":"${'x'.repeat(k)}",${JSON.stringify(header).slice(1)}`)}.${body}.${sig}`,
      expect: { padded: TOKEN_INVALID, control: TOKEN_INVALID }
    }
  ])
})

t.test('what extractToken returns is parsed in linear time', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, extractToken: (request) => request.headers['x-token'] as string | undefined })
  const token = issuer.sign()
  const send: Send = (value) => app.inject({ method: 'GET', url: '/me', headers: { 'x-token': value } })
  await linear(t, send, [
    {
      // never trimmed: spaces anywhere make it no token of three segments
      name: 'spaces inside',
      padded: (n) => `a${' '.repeat(n)}b`,
      control: (k) => `a${'x'.repeat(k)}b`,
      expect: { padded: MALFORMED_TOKEN, control: MALFORMED_TOKEN }
    },
    {
      name: 'spaces and tabs after a valid token',
      padded: (n) => `${token}${' \t'.repeat(n / 2)}`,
      control: (k) => `${token}${'A'.repeat(k)}`,
      expect: { padded: MALFORMED_TOKEN, control: TOKEN_INVALID }
    }
  ])
})
