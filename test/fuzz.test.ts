import t from 'tap'
import fc from 'fast-check'
import { appFor, getMe, issuerFor } from './fixtures/helpers'
import { b64, parts } from './fixtures/craft'
import { FST_JWT, appIn } from './fixtures/modes'
import { errorCodes } from '../lib/errors'
import { generateTestKey, signInput, type SigningKey } from '../lib/testing'

/*
 * Property: no mutation of a valid token is accepted, and none gets a 5xx.
 * `npm test` runs a fixed seed; `npm run fuzz` runs many more with a random seed
 * (FUZZ_RUNS and FUZZ_SEED override both).
 */

const RUNS = Number(process.env.FUZZ_RUNS ?? 400)
const SEED = process.env.FUZZ_SEED === 'random' ? Date.now() : Number(process.env.FUZZ_SEED ?? 20261128)

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const odd = fc.constantFrom('.', '+', '/', '=', ' ', '\t', '%', '\u00e9', '\u0000', '"', '\\', '\u{1F600}')
const char = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...ALPHABET) }, { weight: 1, arbitrary: odd })
const segment = fc.string({ unit: fc.constantFrom(...ALPHABET), maxLength: 400 })
const fieldValue = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom('none', 'HS256', 'RS384', 'ES256', 'EdDSA', '', 'RS256 ', 'rs256', 1e308, -1, null, true)
)

/** One way of damaging a token: position or field choices come from fast-check. */
type Mutation = (token: string) => string

const byteMutation: fc.Arbitrary<Mutation> = fc.tuple(fc.nat(), char, fc.constantFrom('replace', 'insert', 'delete'))
  .map(([at, c, kind]) => (token: string) => {
    const i = at % token.length
    if (kind === 'insert') return token.slice(0, i) + c + token.slice(i)
    if (kind === 'delete') return token.slice(0, i) + token.slice(i + 1)
    return token.slice(0, i) + c + token.slice(i + 1)
  })

const segmentMutation: fc.Arbitrary<Mutation> = fc.tuple(fc.constantFrom('swap', 'drop', 'duplicate', 'replace', 'empty'), fc.nat(2), fc.nat(2), segment)
  .map(([kind, i, j, text]) => (token: string) => {
    const segs = token.split('.')
    if (kind === 'swap') [segs[i], segs[j]] = [segs[j]!, segs[i]!]
    if (kind === 'drop') segs.splice(i, 1)
    if (kind === 'duplicate') segs.splice(i, 0, segs[i]!)
    if (kind === 'replace') segs[i] = text
    if (kind === 'empty') segs[i] = ''
    return segs.join('.')
  })

const headerKeys = fc.constantFrom('alg', 'kid', 'typ', 'crit', 'jku', 'jwk', 'x5u', 'b64', 'cty', 'zip')
const claimKeys = fc.constantFrom('exp', 'iat', 'nbf', 'iss', 'aud', 'sub', 'role', 'aal', 'is_anonymous', '__proto__')

function fieldMutation (where: 'header' | 'claims'): fc.Arbitrary<Mutation> {
  return fc.tuple(where === 'header' ? headerKeys : claimKeys, fc.option(fieldValue, { nil: undefined }))
    .map(([key, value]) => (token: string) => {
      let p: ReturnType<typeof parts>
      try {
        p = parts(token)
      } catch {
        return token + key // an earlier mutation broke the JSON: damage it some more
      }
      const object = { ...(where === 'header' ? p.header : p.claims) }
      if (value === undefined) delete object[key]
      else object[key] = value
      return where === 'header' ? `${b64(object)}.${p.body}.${p.sig}` : `${p.head}.${b64(object)}.${p.sig}`
    })
}

const mutation = fc.oneof(byteMutation, segmentMutation, fieldMutation('header'), fieldMutation('claims'))

/** `value` without the spaces (only U+0020) at its ends, by index: what separates a token from "Bearer". */
function spacesTrimmed (value: string): string {
  let start = 0
  let end = value.length
  while (start < end && value[start] === ' ') start++
  while (end > start && value[end - 1] === ' ') end--
  return value.slice(start, end)
}

/*
 * Padded headers: the token (whole or mutated) with runs of spaces, tabs, both mixed, or other
 * whitespace after the scheme, around it and inside it, the header up to near Node's 16 KiB limit.
 * A run of spaces inside the header once made a regular-expression trim quadratic.
 */
const MAX_HEADER = 16 * 1024 - 64
const padUnit = fc.constantFrom(' ', ' ', ' ', '\t', ' \t', '\t ', '  \t', '\u00a0', '\u000b')
const padLength = fc.oneof({ weight: 3, arbitrary: fc.integer({ min: 0, max: 4 }) }, { weight: 2, arbitrary: fc.integer({ min: 0, max: MAX_HEADER }) })
const pad = fc.tuple(padUnit, padLength).map(([unit, length]) => unit.repeat(Math.ceil(length / unit.length)).slice(0, length))
const paddedHeader = fc.record({
  scheme: fc.constantFrom('Bearer', 'bearer', 'BEARER'),
  // mostly the space that makes it a Bearer header, then the padding
  separator: fc.constantFrom(' ', ' ', ' ', '', '\t'),
  before: pad,
  inside: fc.option(fc.tuple(fc.nat(), pad), { nil: undefined }),
  after: pad,
  mutate: fc.oneof({ weight: 2, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: mutation })
})

/** The header of a padded case, its pads shrunk in proportion to keep it within MAX_HEADER. */
function padded (original: string, { scheme, separator, before, inside, after, mutate }: typeof paddedHeader extends fc.Arbitrary<infer T> ? T : never): string {
  const token = mutate === undefined ? original : mutate(original)
  const pads = [before, inside?.[1] ?? '', after]
  const room = MAX_HEADER - scheme.length - separator.length - token.length
  const total = pads.reduce((sum, run) => sum + run.length, 0)
  const [lead, middle, trail] = total <= room ? pads : pads.map((run) => run.slice(0, Math.floor(run.length * room / total)))
  const at = inside === undefined ? token.length : inside[0] % (token.length + 1)
  return `${scheme}${separator}${lead}${token.slice(0, at)}${middle}${token.slice(at)}${trail}`
}

/**
 * What a padded header must get (RFC 6750 §2.1: 1*SP between scheme and token): a space after the
 * scheme makes it a Bearer header; spaces around the token are dropped; anything else (a tab, other
 * whitespace, whitespace inside) is a 400, never trimmed into the valid token; only the original
 * token with spaces alone around it is accepted.
 */
function expectedFor (header: string, scheme: string, original: string): { status: number[], code?: string } {
  const rest = header.slice(scheme.length)
  if (rest === '') return { status: [400], code: 'FST_SUPABASE_JWKS_BAD_REQUEST' }
  if (!rest.startsWith(' ')) return { status: [401], code: 'FST_SUPABASE_JWKS_NO_TOKEN' }
  const token = spacesTrimmed(rest)
  if (token === original) return { status: [200] }
  if (token === '' || /\s/.test(token)) return { status: [400], code: 'FST_SUPABASE_JWKS_BAD_REQUEST' }
  return { status: [401] }
}

// a short cooldown: even `npm run fuzz` (tens of seconds) outlasts it many times
const cooldown = 2

for (const several of [false, true]) {
  const setup = several ? ', with several issuers' : ''
  t.test(`fuzz: ${RUNS} mutated tokens (seed ${SEED}) are never accepted and never get a 5xx${setup}`, async (t) => {
    const issuer = await issuerFor(t)
    const other = await issuerFor(t)
    const app = await appFor(t, several
      ? { issuers: [{ supabaseUrl: other.url }, { supabaseUrl: issuer.url, algorithms: ['RS256', 'ES256'] }], cooldown }
      : { supabaseUrl: issuer.url, algorithms: ['RS256', 'ES256'], cooldown })
    const original = issuer.sign()
    t.equal((await getMe(app, original)).statusCode, 200)
    const started = Date.now()
    const codes = new Set(Object.keys(errorCodes))
    const seen = new Map<string, number>()
    await fc.assert(fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 3 }), async (mutations) => {
      const token = mutations.reduce((value, mutate) => mutate(value), original)
      // spaces around the token only separate it from "Bearer" (RFC 6750 §2.1: 1*SP): not a mutation of it
      fc.pre(spacesTrimmed(token) !== original)
      const res = await getMe(app, undefined, `Bearer ${token}`)
      const code = (res.json() as { code?: string }).code ?? ''
      seen.set(code, (seen.get(code) ?? 0) + 1)
      const ok = (res.statusCode === 400 || res.statusCode === 401) && codes.has(code)
      if (!ok) t.comment(`failing answer after ${Date.now() - started} ms to ${token} (original ${original}): ${res.statusCode} ${res.body.slice(0, 300)}; stats ${JSON.stringify(app.supabaseJwks.stats())}`)
      return ok
    }), { seed: SEED, numRuns: RUNS })
    t.ok(seen.size >= 4, `the mutations reached several checks: ${[...seen].map(([code, n]) => `${code.replace('FST_SUPABASE_JWKS_', '')}=${n}`).join(' ')}`)
    // the fetch for the valid token, the first mutated kid, then at most one per cooldown
    const allowed = 2 + Math.floor((Date.now() - started) / (cooldown * 1000))
    t.ok(issuer.jwksRequests <= allowed, `mutated kids cost at most one fetch per cooldown: ${issuer.jwksRequests} of at most ${allowed}`)
    t.ok(other.jwksRequests <= allowed - 1, `the other issuer is asked only for tokens claiming it: ${other.jwksRequests}`)
  })
}

t.test(`fuzz: ${RUNS} headers padded with whitespace (seed ${SEED}) get what RFC 6750 says, never a 5xx`, async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['RS256', 'ES256'], cooldown })
  const original = issuer.sign()
  const codes = new Set(Object.keys(errorCodes))
  const seen = new Map<string, number>()
  let longest = 0
  await fc.assert(fc.asyncProperty(paddedHeader, async (parts) => {
    const header = padded(original, parts)
    longest = Math.max(longest, header.length)
    const expected = expectedFor(header, parts.scheme, original)
    const res = await getMe(app, undefined, header)
    const code = res.statusCode === 200 ? 'OK' : (res.json() as { code?: string }).code ?? ''
    seen.set(code, (seen.get(code) ?? 0) + 1)
    const ok = expected.status.includes(res.statusCode) && (res.statusCode === 200 || codes.has(code)) &&
      (expected.code === undefined || expected.code === code)
    if (!ok) t.comment(`failing answer to a header of ${header.length} characters ${JSON.stringify(header.slice(0, 200))}: ${res.statusCode} ${res.body.slice(0, 300)}`)
    return ok
  }), { seed: SEED, numRuns: RUNS })
  t.ok(['OK', 'FST_SUPABASE_JWKS_BAD_REQUEST', 'FST_SUPABASE_JWKS_NO_TOKEN'].every((code) => seen.has(code)),
    `accepted, malformed and no-token headers were all reached: ${[...seen].map(([code, n]) => `${code.replace('FST_SUPABASE_JWKS_', '')}=${n}`).join(' ')}`)
  t.ok(longest > 8 * 1024, `headers up to ${longest} characters`)
})

/*
 * The same hostile input against @fastify/jwt registered with fastifyJwtOptions: mutated tokens,
 * the same re-signed as an attacker can (HS* keyed with the issuer's public key, the attacker's own
 * keys, alg none), and padded headers. The header is @fastify/jwt's to read (fastifyJwtLookup); a
 * token it takes is accepted only if it is the issuer's, else refused with a 401 and a stable code.
 */

/** @fastify/jwt's own reading of the Authorization header (its lookupToken): the token it takes, or its answer. */
function fastifyJwtLookup (header: string): { token: string } | { status: number, code: string } {
  if (!/^Bearer\s/i.test(header)) return { status: 401, code: FST_JWT.NO_HEADER }
  const split = header.split(' ')
  return split.length === 2 && split[1] !== '' ? { token: split[1]! } : { status: 400, code: FST_JWT.BAD_REQUEST }
}

/** A (mutated) token signed again by someone other than the issuer: its header's `alg` set when it is a JSON object. */
function resigned (token: string, alg: string, key: SigningKey): string {
  const [head = '', body = ''] = token.split('.')
  let header: unknown
  try {
    header = JSON.parse(Buffer.from(head, 'base64url').toString())
  } catch {}
  const input = `${typeof header === 'object' && header !== null && !Array.isArray(header) ? b64({ ...header, alg }) : head}.${body}`
  return `${input}.${alg === 'none' ? '' : signInput(alg, key, input)}`
}

t.test(`fuzz: ${RUNS} hostile tokens and headers (seed ${SEED}) to @fastify/jwt with fastifyJwtOptions: never accepted unless the issuer's, never a 5xx`, async (t) => {
  const issuer = await issuerFor(t)
  const app = await appIn(t, '@fastify/jwt', { supabaseUrl: issuer.url, algorithms: ['RS256', 'ES256'], cooldown })
  const original = issuer.sign()
  t.equal((await getMe(app, original)).statusCode, 200)
  const pem = issuer.currentKey.publicKey.export({ type: 'spki', format: 'pem' }) as string
  const rsa = generateTestKey('RS256').privateKey
  const ec = generateTestKey('ES256').privateKey
  const forgery = fc.constantFrom<[string, SigningKey]>(['HS256', pem], ['HS384', pem], ['HS512', pem], ['RS256', rsa], ['ES256', ec], ['none', ''])
  const mutated = fc.tuple(fc.array(mutation, { minLength: 1, maxLength: 3 }), fc.option(forgery, { nil: undefined, freq: 2 }))
    .map(([mutations, forged]) => {
      const token = mutations.reduce((value, mutate) => mutate(value), original)
      return `Bearer ${forged === undefined ? token : resigned(token, ...forged)}`
    })
  const header = fc.oneof({ weight: 2, arbitrary: mutated }, { weight: 1, arbitrary: paddedHeader.map((pads) => padded(original, pads)) })
  const codes = new Set([...Object.keys(errorCodes), FST_JWT.INVALID])
  const seen = new Map<string, number>()
  const started = Date.now()
  await fc.assert(fc.asyncProperty(header, async (authorization) => {
    const res = await getMe(app, undefined, authorization)
    const code = res.statusCode === 200 ? 'OK' : (res.json() as { code?: string }).code ?? ''
    seen.set(code, (seen.get(code) ?? 0) + 1)
    const lookup = fastifyJwtLookup(authorization)
    const ok = 'status' in lookup
      ? res.statusCode === lookup.status && code === lookup.code
      : lookup.token === original ? res.statusCode === 200 : res.statusCode === 401 && codes.has(code)
    if (!ok) t.comment(`failing answer to ${JSON.stringify(authorization.slice(0, 300))}: ${res.statusCode} ${res.body.slice(0, 300)}`)
    return ok
  }), { seed: SEED, numRuns: RUNS })
  t.ok(['OK', FST_JWT.NO_HEADER, FST_JWT.BAD_REQUEST, FST_JWT.INVALID, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', 'FST_SUPABASE_JWKS_MALFORMED_TOKEN']
    .every((code) => seen.has(code)), `@fastify/jwt's answers and the plugin's were all reached: ${[...seen].map(([code, n]) => `${code.replace('FST_SUPABASE_JWKS_', '')}=${n}`).join(' ')}`)
  const allowed = 2 + Math.floor((Date.now() - started) / (cooldown * 1000))
  t.ok(issuer.jwksRequests <= allowed, `mutated kids cost at most one fetch per cooldown: ${issuer.jwksRequests} of at most ${allowed}`)
})
