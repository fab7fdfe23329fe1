import t from 'tap'
import fc from 'fast-check'
import { appFor, getMe, issuerFor } from './fixtures/helpers'
import { b64, parts } from './fixtures/craft'
import { errorCodes } from '../lib/errors'

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

// a short cooldown: even `npm run fuzz` (about 20 s) outlasts it many times
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
      fc.pre(token.replace(/^ +| +$/g, '') !== original)
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
