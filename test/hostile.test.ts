import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance } from 'fastify'
import supabaseJwks from '../lib/index'
import { generateTestKey, signJwt, type JwksResponder, type TestIssuer } from '../lib/testing'
import { codeOf, getMe, issuerFor } from './fixtures/helpers'
import { b64, hmac, parts, signRaw } from './fixtures/craft'
import { FST_JWT, MODES, appIn, codeIn, loggedAppIn, type Code, type Mode } from './fixtures/modes'

/*
 * The adversarial suite: every class of crafted token from the threat model in SECURITY.md,
 * each with the status and error code it must get, and the JWKS fetches it may cause. It runs
 * against the plugin's `authenticate` and against @fastify/jwt registered with
 * `fastifyJwtOptions` (the app's own `request.jwtVerify()`): everything decided before the
 * signature gets the plugin's code and challenge in both; what @fastify/jwt decides itself (the
 * header's form, the signature) keeps its own code in its mode.
 */

const ALG = 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED'
const KID = 'FST_SUPABASE_JWKS_UNKNOWN_KID'
const INVALID = 'FST_SUPABASE_JWKS_TOKEN_INVALID'
const EXPIRED = 'FST_SUPABASE_JWKS_TOKEN_EXPIRED'
const MALFORMED = 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'
const BAD_REQUEST = 'FST_SUPABASE_JWKS_BAD_REQUEST'
const NO_TOKEN = 'FST_SUPABASE_JWKS_NO_TOKEN'
const UNAVAILABLE = 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE'
/** A signature that does not verify: the plugin's own check, or fast-jwt's under @fastify/jwt. */
const SIGNATURE: Code = { authenticate: INVALID, '@fastify/jwt': FST_JWT.INVALID }

const now = () => Math.floor(Date.now() / 1000)
/** An attacker's own RSA key pair (one for the file: generating one costs more than a test). */
const attacker = generateTestKey('RS256')

type Case = [name: string, token: string, status: number, code: Code]
type Response = Awaited<ReturnType<typeof getMe>>

/** The suite's tests, once per mode. */
function each (name: string, fn: (t: Test, mode: Mode) => Promise<void>): void {
  for (const mode of MODES) t.test(`${name} [${mode}]`, (t) => fn(t, mode))
}

/**
 * The plugin's answer carries its headers in either mode: the challenge (RFC 6750 §3) on a 400 or
 * 401, `Retry-After` on a 503. @fastify/jwt's own answers are its business.
 */
function expectHeaders (t: Test, res: Response, name: string): void {
  const code = codeOf(res)
  if (!code.startsWith('FST_SUPABASE_JWKS_')) return
  if (res.statusCode === 503) {
    t.match(res.headers['retry-after'], /^[1-9]\d*$/, `${name}: Retry-After`)
    return
  }
  const challenge = code === NO_TOKEN ? /^Bearer realm="api"$/ : res.statusCode === 400 ? /^Bearer realm="api", error="invalid_request"/ : /^Bearer realm="api", error="invalid_token"/
  t.match(res.headers['www-authenticate'], challenge, `${name}: WWW-Authenticate`)
}

/** Checks each case's status, code (the mode's own) and headers, and the JWKS fetches they cause together (`null`: not counted). */
function expecter (t: Test, mode: Mode, app: FastifyInstance, issuer: TestIssuer) {
  return async function expectAll (cases: Case[], fetches: number | null = 0) {
    const before = issuer.jwksRequests
    for (const [name, token, status, expected] of cases) {
      const res = await getMe(app, token)
      const code = codeIn(mode, expected)
      t.equal(res.statusCode, status, `${name}: ${status}`)
      t.equal(codeOf(res), code, `${name}: ${code}`)
      expectHeaders(t, res, name)
    }
    if (fetches !== null) t.equal(issuer.jwksRequests - before, fetches, `JWKS fetches caused: ${fetches}`)
  }
}

/** A warmed-up app (the key is cached) in `mode`, its issuer, and `expectAll` for its cases. */
async function setup (t: Test, mode: Mode, algorithms?: supabaseJwks.SupabaseJwksOptions['algorithms']) {
  const issuer = await issuerFor(t, { alg: algorithms?.[0] === 'ES256' ? 'ES256' : 'RS256' })
  const app = await appIn(t, mode, { supabaseUrl: issuer.url, ...(algorithms ? { algorithms } : {}) })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'warm-up')
  t.equal(issuer.jwksRequests, 1)
  return { issuer, app, expectAll: expecter(t, mode, app, issuer) }
}

each('alg: none in every casing, with and without a signature', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode)
  const { body, sig } = parts(issuer.sign())
  const cases: Case[] = []
  for (const alg of ['none', 'None', 'NONE', 'nOnE', '']) {
    const head = b64({ alg, kid: issuer.currentKey.kid, typ: 'JWT' })
    cases.push([`${alg || 'empty'} unsigned`, `${head}.${body}.`, 401, ALG])
    cases.push([`${alg || 'empty'} signed`, `${head}.${body}.${sig}`, 401, ALG])
  }
  cases.push(['no alg', `${b64({ kid: issuer.currentKey.kid })}.${body}.${sig}`, 401, ALG])
  cases.push(['alg a number', `${b64({ alg: 256, kid: issuer.currentKey.kid })}.${body}.${sig}`, 401, ALG])
  await expectAll(cases)
})

each('alg: HS256/384/512 keyed with the public key in every encoding', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode)
  const key = issuer.currentKey
  const { claims } = parts(issuer.sign())
  const jwk = key.publicKey.export({ format: 'jwk' })
  const secrets: Record<string, string | Buffer> = {
    'SPKI PEM': key.publicKey.export({ type: 'spki', format: 'pem' }) as string,
    'PKCS#1 PEM': key.publicKey.export({ type: 'pkcs1', format: 'pem' }) as string,
    DER: key.publicKey.export({ type: 'spki', format: 'der' }),
    'JWK JSON': JSON.stringify(jwk),
    'JWKS JSON': JSON.stringify(issuer.jwks()),
    'raw modulus': Buffer.from(jwk.n!, 'base64url'),
    'modulus base64url': jwk.n!
  }
  const cases: Case[] = []
  for (const alg of ['HS256', 'HS384', 'HS512'] as const) {
    for (const [encoding, secret] of Object.entries(secrets)) {
      cases.push([`${alg} with ${encoding}`, hmac(alg, { alg, kid: key.kid, typ: 'JWT' }, claims, secret), 401, ALG])
    }
  }
  await expectAll(cases)
})

each('alg: HS* is refused even when several asymmetric algorithms are allowed', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode, ['RS256', 'ES256', 'EdDSA'])
  const pem = issuer.currentKey.publicKey.export({ type: 'spki', format: 'pem' }) as string
  const forged = hmac('HS256', { alg: 'HS256', kid: issuer.currentKey.kid }, parts(issuer.sign()).claims, pem)
  await expectAll([['HS256 with the PEM', forged, 401, ALG]])
})

each('alg: algorithms outside the allowlist, signed with the right key', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode)
  const key = issuer.currentKey
  const { claims } = parts(issuer.sign())
  const cases: Case[] = ['RS384', 'RS512', 'PS256', 'PS384', 'PS512'].map((alg) =>
    [alg, signJwt({ alg, kid: key.kid, typ: 'JWT' }, claims, key.privateKey), 401, ALG])
  const es = issuer.addKey({ alg: 'ES256' })
  cases.push(['ES256 with a published ES256 key', issuer.sign({}, { kid: es.kid }), 401, ALG])
  await expectAll(cases)
})

each('alg: a held kid under an allowed algorithm its key does not verify is refused before the signature', async (t, mode) => {
  const { issuer, app, expectAll } = await setup(t, mode, ['ES256', 'RS256', 'EdDSA'])
  const kid = issuer.currentKey.kid
  const { claims } = parts(issuer.sign())
  await expectAll([
    ['RS256 over the ES256 key\'s kid', signJwt({ alg: 'RS256', kid }, claims, attacker.privateKey), 401, INVALID],
    ['EdDSA over the ES256 key\'s kid', signJwt({ alg: 'EdDSA', kid }, claims, generateTestKey('EdDSA').privateKey), 401, INVALID]
  ])
  t.match((await getMe(app, signJwt({ alg: 'RS256', kid }, claims, attacker.privateKey))).json().message, /algorithm does not match the key/)
})

each('alg: a header with alg twice is read as JSON.parse reads it, the last one wins (RFC 7515 §4)', async (t, mode) => {
  const { issuer, app, expectAll } = await setup(t, mode)
  const key = issuer.currentKey
  const payload = JSON.stringify(parts(issuer.sign()).claims)
  const lastNone = signRaw('RS256', `{"alg":"RS256","alg":"none","kid":"${key.kid}"}`, payload, key.privateKey)
  const lastHs = signRaw('RS256', `{"alg":"RS256","kid":"${key.kid}","alg":"HS256"}`, payload, key.privateKey)
  await expectAll([
    ['RS256 then none', lastNone, 401, ALG],
    ['RS256 then HS256', lastHs, 401, ALG]
  ])
  const lastRs = signRaw('RS256', `{"alg":"none","alg":"RS256","kid":"${key.kid}"}`, payload, key.privateKey)
  t.equal((await getMe(app, lastRs)).statusCode, 200, 'none then RS256 is an RS256 token, checked as one')
})

each('header tricks: jku, x5u, x5c and jwk never bring in an attacker key; the attacker is never contacted', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode)
  const attacker = await issuerFor(t)
  const evil = attacker.currentKey
  const { claims } = parts(issuer.sign())
  const legitKid = issuer.currentKey.kid
  const x5c = [evil.publicKey.export({ type: 'spki', format: 'der' }).toString('base64')]
  const forge = (header: Record<string, unknown>) => signJwt({ alg: 'RS256', typ: 'JWT', ...header }, claims, evil.privateKey)
  await expectAll([
    ['jku to the attacker, legit kid', forge({ kid: legitKid, jku: attacker.jwksUrl }), 401, SIGNATURE],
    ['x5u to the attacker, legit kid', forge({ kid: legitKid, x5u: attacker.jwksUrl }), 401, SIGNATURE],
    ['x5c with the attacker key, legit kid', forge({ kid: legitKid, x5c }), 401, SIGNATURE],
    ['embedded jwk, legit kid', forge({ kid: legitKid, jwk: evil.jwk }), 401, SIGNATURE]
  ])
  await expectAll([
    ['jku to the attacker, attacker kid', forge({ kid: evil.kid, jku: attacker.jwksUrl }), 401, KID],
    ['embedded jwk, attacker kid', forge({ kid: evil.kid, jwk: evil.jwk }), 401, KID],
    ['x5u, attacker kid', forge({ kid: evil.kid, x5u: attacker.jwksUrl }), 401, KID],
    ['x5c, attacker kid', forge({ kid: evil.kid, x5c }), 401, KID]
  ], 1)
  t.equal(attacker.jwksRequests, 0, 'the attacker server was never contacted')
})

each('header tricks: crit and b64 are refused before any key lookup', async (t, mode) => {
  const { issuer, app, expectAll } = await setup(t, mode)
  const sign = (header: Record<string, unknown>) => issuer.sign({}, { header })
  await expectAll([
    ['crit with an unknown extension', sign({ crit: ['x-unknown'], 'x-unknown': 1 }), 401, INVALID],
    ['crit listing exp', sign({ crit: ['exp'] }), 401, INVALID],
    ['crit empty', sign({ crit: [] }), 401, INVALID],
    ['b64 false', sign({ b64: false, crit: ['b64'] }), 401, INVALID],
    ['b64 false without crit', sign({ b64: false }), 401, INVALID],
    ['crit with an unknown kid', sign({ crit: ['x'], kid: 'fresh-kid' }), 401, INVALID]
  ])
  t.match((await getMe(app, sign({ crit: ['x'] }))).json().message, /crit and b64 headers are not supported/)
})

each('header tricks: odd kids never fetch, hostile-looking ones cost at most one fetch per cooldown', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode)
  const sign = (kid: unknown) => issuer.sign({}, { header: { kid } })
  await expectAll([
    ['kid missing', sign(undefined), 401, KID],
    ['kid empty', sign(''), 401, KID],
    ['kid 10 KB', sign('k'.repeat(10 * 1024)), 401, KID],
    ['kid a number', sign(1), 401, KID],
    ['kid an object', sign({ $ne: null }), 401, KID],
    ['kid an array', sign([issuer.currentKey.kid]), 401, KID],
    ['kid null', sign(null), 401, KID]
  ])
  await expectAll([
    ['kid a path', sign('../../../../etc/passwd'), 401, KID],
    ['kid SQL', sign("' OR '1'='1' --"), 401, KID],
    ['kid shell', sign('$(curl http://127.0.0.1:9/x); rm -rf /'), 401, KID],
    ['kid a URL', sign('http://127.0.0.1:9/jwks.json'), 401, KID],
    ['kid a prototype key', sign('__proto__'), 401, KID],
    ['kid toString', sign('toString'), 401, KID]
  ], 1)
})

each('header tricks: a flood of forged kids, concurrent then one by one, costs one fetch per cooldown', async (t, mode) => {
  const { issuer, app } = await setup(t, mode)
  const forged = Array.from({ length: 100 }, (_, i) => issuer.sign({}, { header: { kid: `forged-${i}` } }))
  const answers = new Map<string, number>()
  const tally = (res: Response) => {
    const key = `${res.statusCode} ${codeOf(res)} ${res.headers['www-authenticate']}`
    answers.set(key, (answers.get(key) ?? 0) + 1)
  }
  // the first half at once: they wait for the one fetch the first of them starts
  for (const res of await Promise.all(forged.slice(0, 50).map((token) => getMe(app, token)))) tally(res)
  for (const token of forged.slice(50)) tally(await getMe(app, token))
  t.same(Object.fromEntries(answers), {
    [`401 ${KID} Bearer realm="api", error="invalid_token", error_description="The token was signed with an unknown key"`]: 100
  }, 'every forged kid: 401 UNKNOWN_KID with its challenge')
  t.equal(issuer.jwksRequests, 2, 'one fetch for the whole flood: the cooldown refuses the rest at once')
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'the held key still verifies')
})

each('signatures: empty, truncated, flipped, padded, zeroed, re-encoded', async (t, mode) => {
  const { issuer, app, expectAll } = await setup(t, mode)
  const { head, body, sig, signature } = parts(issuer.sign())
  const withSig = (bytes: Buffer) => `${head}.${body}.${b64(bytes)}`
  const flipped = Buffer.from(signature)
  flipped[100]! ^= 0x01
  const lastChar = sig.charAt(sig.length - 1)
  const tail = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  const sibling = tail[tail.indexOf(lastChar) + 1]!
  await expectAll([
    ['empty', `${head}.${body}.`, 401, INVALID],
    ['truncated by 10 bytes', withSig(signature.subarray(0, -10)), 401, INVALID],
    ['truncated to 1 byte', withSig(signature.subarray(0, 1)), 401, INVALID],
    ['one bit flipped', withSig(flipped), 401, SIGNATURE],
    ['a trailing byte', withSig(Buffer.concat([signature, Buffer.from([0])])), 401, SIGNATURE],
    ['a leading zero byte', withSig(Buffer.concat([Buffer.from([0]), signature])), 401, SIGNATURE],
    ['all zeros', withSig(Buffer.alloc(signature.length)), 401, SIGNATURE],
    ['all ones', withSig(Buffer.alloc(signature.length, 0xff)), 401, SIGNATURE],
    ['standard base64 (+/=)', `${head}.${body}.${signature.toString('base64')}`, 401, MALFORMED],
    ['padded base64url', `${head}.${body}.${sig}==`, 401, MALFORMED],
    ['same bytes, non-canonical last character', `${head}.${body}.${sig.slice(0, -1)}${sibling}`, 401, MALFORMED],
    ['a signature of 1 character', `${head}.${body}.A`, 401, MALFORMED]
  ])
  // under @fastify/jwt, a space makes a header of three parts (its 400); a newline stays in the token, malformed (RFC 6750 §3.1: invalid_token)
  const spaced: Array<[string, string, Record<Mode, [number, string]>]> = [
    ['whitespace inside', `${head}.${body}. ${sig}`, { authenticate: [400, BAD_REQUEST], '@fastify/jwt': [400, FST_JWT.BAD_REQUEST] }],
    ['a newline inside', `${head}.\n${body}.${sig}`, { authenticate: [400, BAD_REQUEST], '@fastify/jwt': [401, MALFORMED] }]
  ]
  for (const [name, value, answers] of spaced) {
    const res = await getMe(app, undefined, `Bearer ${value}`)
    t.equal(res.statusCode, answers[mode][0], name)
    t.equal(codeOf(res), answers[mode][1], name)
    expectHeaders(t, res, name)
  }
})

each('signatures of the wrong length, and kids that are not well-formed strings, never reach the key lookup', async (t, mode) => {
  const { issuer, app, expectAll } = await setup(t, mode, ['ES256', 'RS256'])
  const es = parts(issuer.sign({}, { header: { kid: 'not-held-1' } }))
  const rs = parts(signJwt({ alg: 'RS256', kid: 'not-held-2' }, es.claims, generateTestKey('RS256').privateKey))
  const der = Buffer.concat([Buffer.from([0x30, 0x44, 0x02, 0x20]), es.signature.subarray(0, 32), Buffer.from([0x02, 0x20]), es.signature.subarray(32)])
  const key = issuer.currentKey
  const payload = JSON.stringify(es.claims)
  await expectAll([
    ['ES256, empty signature, unknown kid', `${es.head}.${es.body}.`, 401, INVALID],
    ['ES256, 2-byte signature, unknown kid', `${es.head}.${es.body}.${b64(Buffer.from([1, 2]))}`, 401, INVALID],
    ['ES256, DER signature, unknown kid', `${es.head}.${es.body}.${b64(der)}`, 401, INVALID],
    ['RS256, 128-byte signature, unknown kid', `${rs.head}.${rs.body}.${b64(rs.signature.subarray(0, 128))}`, 401, INVALID],
    ['kid with a lone surrogate', signRaw('ES256', '{"alg":"ES256","kid":"\\ud800"}', payload, key.privateKey), 401, KID],
    ['kid with a lone low surrogate', signRaw('ES256', '{"alg":"ES256","kid":"a\\udc00b"}', payload, key.privateKey), 401, KID]
  ])
  t.match((await getMe(app, `${es.head}.${es.body}.`)).json().message, /signature is missing or has the wrong length/)
})

each('signatures (ES256 enabled): DER-encoded, r = 0, s = 0, wrong length', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode, ['ES256'])
  const { head, body, signature } = parts(issuer.sign())
  const r = signature.subarray(0, 32)
  const s = signature.subarray(32)
  const int = (value: Buffer) => {
    const bytes = value[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), value]) : value
    return Buffer.concat([Buffer.from([0x02, bytes.length]), bytes])
  }
  const seq = Buffer.concat([int(r), int(s)])
  const der = Buffer.concat([Buffer.from([0x30, seq.length]), seq])
  const withSig = (bytes: Buffer) => `${head}.${body}.${b64(bytes)}`
  await expectAll([
    ['DER-encoded', withSig(der), 401, INVALID],
    ['r = 0', withSig(Buffer.concat([Buffer.alloc(32), s])), 401, SIGNATURE],
    ['s = 0', withSig(Buffer.concat([r, Buffer.alloc(32)])), 401, SIGNATURE],
    ['r = s = 0', withSig(Buffer.alloc(64)), 401, SIGNATURE],
    ['63 bytes', withSig(signature.subarray(1)), 401, INVALID],
    ['65 bytes', withSig(Buffer.concat([signature, Buffer.from([1])])), 401, INVALID]
  ])
})

each('structure: segments, base64url, JSON, size, bytes', async (t, mode) => {
  const { issuer, app, expectAll } = await setup(t, mode)
  const { head, body, sig, claims } = parts(issuer.sign())
  const key = issuer.currentKey
  const signed = (headerJson: string, payloadJson: string) => signRaw('RS256', headerJson, payloadJson, key.privateKey)
  const header = JSON.stringify({ alg: 'RS256', kid: key.kid, typ: 'JWT' })
  const payload = JSON.stringify(claims)
  await expectAll([
    ['two segments', `${head}.${body}`, 401, MALFORMED],
    ['four segments', `${head}.${body}.${sig}.${sig}`, 401, MALFORMED],
    ['five segments (JWE)', `${head}.${body}.${sig}.${sig}.${sig}`, 401, MALFORMED],
    ['an empty header segment', `.${body}.${sig}`, 401, MALFORMED],
    ['an empty payload segment', `${head}..${sig}`, 401, MALFORMED],
    ['invalid base64url (*)', `${head}.${body}*.${sig}`, 401, MALFORMED],
    ['invalid base64url (%)', `${head}.%41${body}.${sig}`, 401, MALFORMED],
    ['non-ASCII bytes', `${head}.${body}\u00e9\u4e2d.${sig}`, 401, MALFORMED],
    ['a 100 KB token', `${head}.${'A'.repeat(100 * 1024)}.${sig}`, 401, MALFORMED],
    ['a 1 MB token', `${head}.${'A'.repeat(1024 * 1024)}.${sig}`, 401, MALFORMED],
    ['header an array', signed(`[${header}]`, payload), 401, INVALID],
    ['header a number', signed('42', payload), 401, INVALID],
    ['header a string', signed('"RS256"', payload), 401, INVALID],
    ['header null', signed('null', payload), 401, INVALID],
    ['header invalid JSON', signed('{"alg":"RS256",', payload), 401, INVALID],
    ['payload an array', signed(header, `[${payload}]`), 401, INVALID],
    ['payload a number', signed(header, '42'), 401, INVALID],
    ['payload a string', signed(header, '"sub"'), 401, INVALID],
    ['payload null', signed(header, 'null'), 401, INVALID],
    ['payload invalid JSON', signed(header, '{"sub":'), 401, INVALID]
  ])
  const empty = await getMe(app, undefined, 'Bearer ')
  t.equal(empty.statusCode, 400, 'an empty token')
  t.equal(codeOf(empty), codeIn(mode, { authenticate: BAD_REQUEST, '@fastify/jwt': FST_JWT.BAD_REQUEST }))
})

each('structure: a huge token is refused before anything else runs', async (t, mode) => {
  const { issuer } = await setup(t, mode)
  const { app, lines } = await loggedAppIn(t, mode, { supabaseUrl: issuer.url }, 'debug')
  const { head, sig } = parts(issuer.sign({}, { header: { kid: 'never-seen' } }))
  const res = await app.inject({ url: '/me', headers: { authorization: `Bearer ${head}.${'A'.repeat(1024 * 1024)}.${sig}` } })
  t.equal(res.statusCode, 401)
  t.equal(codeOf(res), MALFORMED)
  expectHeaders(t, res, 'a huge token')
  t.match(res.json().message, /longer than maxTokenLength/)
  t.equal(issuer.jwksRequests, 1, 'an unknown kid inside it caused no fetch')
  t.notOk(lines.some((line) => line.includes('fetching JWKS')))
})

each('over real HTTP, a header larger than Node accepts is a 431, not a 500', async (t, mode) => {
  const { issuer } = await setup(t, mode)
  const app = await appIn(t, mode, { supabaseUrl: issuer.url })
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  const res = await fetch(`${address}/me`, { headers: { authorization: `Bearer ${'A'.repeat(100 * 1024)}.A.A` } })
  await res.arrayBuffer()
  t.equal(res.status, 431)
  const ok = await fetch(`${address}/me`, { headers: { authorization: `Bearer ${issuer.sign()}` } })
  t.equal(ok.status, 200, 'the server is unharmed')
  await ok.arrayBuffer()
})

each('claims: exp, nbf, iss, aud, sub of every wrong shape', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode)
  const key = issuer.currentKey
  const header = JSON.stringify({ alg: 'RS256', kid: key.kid, typ: 'JWT' })
  const base = `"sub":"u","aud":"authenticated","iss":"${issuer.issuer}"`
  const sign = (claims: Record<string, unknown>) => issuer.sign(claims)
  await expectAll([
    ['exp missing', sign({ exp: undefined }), 401, INVALID],
    ['exp in the past', sign({ exp: now() - 1 }), 401, EXPIRED],
    ['exp long past', sign({ exp: 0 }), 401, EXPIRED],
    ['exp a string', sign({ exp: 'tomorrow' }), 401, INVALID],
    ['exp a numeric string', sign({ exp: String(now() + 3600) }), 401, INVALID],
    ['exp null', sign({ exp: null }), 401, INVALID],
    ['exp an array', sign({ exp: [now() + 3600] }), 401, INVALID],
    ['exp 1e999 (Infinity)', signRaw('RS256', header, `{${base},"exp":1e999}`, key.privateKey), 401, INVALID],
    ['exp -1e999', signRaw('RS256', header, `{${base},"exp":-1e999}`, key.privateKey), 401, INVALID],
    ['nbf in the future', sign({ nbf: now() + 3600 }), 401, INVALID],
    ['nbf a string', sign({ nbf: 'now' }), 401, INVALID],
    ['iss wrong', sign({ iss: 'https://evil.supabase.co/auth/v1' }), 401, INVALID],
    ['iss missing', sign({ iss: undefined }), 401, INVALID],
    ['iss a number', sign({ iss: 1 }), 401, INVALID],
    ['iss an array holding the right one', sign({ iss: [issuer.issuer] }), 401, INVALID],
    ['iss an object', sign({ iss: { toString: issuer.issuer } }), 401, INVALID],
    ['aud wrong', sign({ aud: 'service_role' }), 401, INVALID],
    ['aud missing', sign({ aud: undefined }), 401, INVALID],
    ['aud a number', sign({ aud: 1 }), 401, INVALID],
    ['aud an object', sign({ aud: { authenticated: true } }), 401, INVALID],
    ['aud an empty list', sign({ aud: [] }), 401, INVALID],
    ['sub missing', sign({ sub: undefined }), 401, INVALID],
    ['sub a number', sign({ sub: 7 }), 401, INVALID],
    ['sub an object', sign({ sub: { id: 'u' } }), 401, INVALID],
    ['sub null', sign({ sub: null }), 401, INVALID]
  ])
})

each('legacy anon / service_role keys and opaque sb_ keys sent as the bearer', async (t, mode) => {
  const { app, expectAll } = await setup(t, mode)
  const legacy = (role: string) => hmac('HS256', { alg: 'HS256', typ: 'JWT' },
    { iss: 'supabase', ref: 'abcdefghijklmnopqrst', role, iat: now(), exp: now() + 10 * 365 * 86400 }, 'super-secret-jwt-token-with-at-least-32-characters')
  await expectAll([
    ['legacy anon key', legacy('anon'), 401, ALG],
    ['legacy service_role key', legacy('service_role'), 401, ALG],
    ['sb_publishable_ key', 'sb_publishable_1234567890abcdefghij_ABCDEFGH', 401, MALFORMED],
    ['sb_secret_ key', 'sb_secret_1234567890abcdefghij_ABCDEFGH', 401, MALFORMED]
  ])
  t.match((await getMe(app, 'sb_secret_1234567890')).json().message, /not a user access token/)
})

each('requests: schemes, case, spaces, two tokens, query string', async (t, mode) => {
  const { issuer, app } = await setup(t, mode)
  const token = issuer.sign()
  // the header's form is @fastify/jwt's to judge in its mode: /^Bearer\s/i, then exactly one space before the token
  type Answer = [status: number, code: string | null]
  const noHeader: Answer = [401, FST_JWT.NO_HEADER]
  const badRequest: Answer = [400, FST_JWT.BAD_REQUEST]
  const cases: Array<[name: string, authorization: string, plugin: Answer, fastifyJwt?: Answer]> = [
    ['Basic', `Basic ${Buffer.from('user:pass').toString('base64')}`, [401, NO_TOKEN], noHeader],
    ['Digest', 'Digest username="a"', [401, NO_TOKEN], noHeader],
    ['a bare token', token, [401, NO_TOKEN], noHeader],
    ['lowercase bearer', `bearer ${token}`, [200, null]],
    ['mixed case', `BeArEr ${token}`, [200, null]],
    ['extra spaces', `Bearer    ${token}   `, [200, null], badRequest],
    ['a tab', `Bearer\t${token}`, [401, NO_TOKEN], badRequest],
    ['a space and a tab (found by the fuzz)', `Bearer \t${token}`, [400, BAD_REQUEST], [401, MALFORMED]],
    ['a tab after the token', `Bearer ${token}\t `, [400, BAD_REQUEST], badRequest],
    ['two tokens', `Bearer ${token} ${token}`, [400, BAD_REQUEST], badRequest],
    ['two tokens, comma', `Bearer ${token}, Bearer ${token}`, [400, BAD_REQUEST], badRequest],
    ['scheme only', 'Bearer', [400, BAD_REQUEST], noHeader]
  ]
  for (const [name, authorization, plugin, fastifyJwt = plugin] of cases) {
    const [status, code] = mode === 'authenticate' ? plugin : fastifyJwt
    const res = await getMe(app, undefined, authorization)
    t.equal(res.statusCode, status, `${name}: ${status}`)
    if (code) {
      t.equal(codeOf(res), code, `${name}: ${code}`)
      expectHeaders(t, res, name)
    }
  }
  const none = codeIn(mode, { authenticate: NO_TOKEN, '@fastify/jwt': FST_JWT.NO_HEADER })
  for (const url of [`/me?access_token=${token}`, `/me?token=${token}`]) {
    const res = await app.inject({ url })
    t.equal(res.statusCode, 401, `query string ${url.slice(4, 16)}: 401`)
    t.equal(codeOf(res), none)
  }
  const cookie = await app.inject({ url: '/me', headers: { cookie: `sb-access-token=${token}` } })
  t.equal(cookie.statusCode, 401, 'a cookie is not a bearer token')
  t.equal(codeOf(cookie), none)
  t.equal(issuer.jwksRequests, 1)
})

each('a key that signs for one issuer does not verify for another', async (t, mode) => {
  const { issuer, expectAll } = await setup(t, mode)
  const other = generateTestKey('RS256', issuer.currentKey.kid)
  const token = signJwt({ alg: 'RS256', kid: other.kid }, parts(issuer.sign()).claims, other.privateKey)
  await expectAll([['same kid, another key pair', token, 401, SIGNATURE]])
})

/*
 * JWKS outages: whatever the JWKS server does, a token is accepted only by a held key, within
 * staleIfError; a token that needs a key not held gets 503 with Retry-After, in either mode.
 * ES256 issuers (Supabase's recommendation), whose keys are quick to make.
 */
const OUTAGE = { algorithms: ['ES256'] as supabaseJwks.SupabaseJwksOptions['algorithms'], cacheTtl: 0.2, timeout: 0.2, maxResponseSize: 10_000 }
const attackerEc = generateTestKey('ES256')
const outages: Array<[name: string, responder: (issuer: TestIssuer) => JwksResponder]> = [
  ['a 500', () => (_request, response) => {
    response.writeHead(500, { 'content-type': 'application/json' }).end('{"keys":[]}')
    return true
  }],
  ['a hang past the timeout', () => () => true],
  ['a body past maxResponseSize', (issuer) => (_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ...issuer.jwks(), padding: 'x'.repeat(2 * OUTAGE.maxResponseSize) }))
    return true
  }],
  ['garbage JSON', () => (_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' }).end('{"keys": [{"kty":')
    return true
  }]
]

/** Tokens an attacker can make for an ES256 `issuer`: its own kid over another key, and HS256 keyed with its public key. */
function forgeries (issuer: TestIssuer) {
  const { claims } = parts(issuer.sign())
  const kid = issuer.currentKey.kid
  const pem = issuer.currentKey.publicKey.export({ type: 'spki', format: 'pem' }) as string
  return {
    otherKey: signJwt({ alg: 'ES256', kid, typ: 'JWT' }, claims, attackerEc.privateKey),
    hmac: hmac('HS256', { alg: 'HS256', kid, typ: 'JWT' }, claims, pem)
  }
}

for (const [name, responder] of outages) {
  each(`outage (${name}) before any key is held: 503 with Retry-After, one fetch per backoff, nothing accepted`, async (t, mode) => {
    const issuer = await issuerFor(t, { alg: 'ES256' })
    issuer.respondWith(responder(issuer))
    const app = await appIn(t, mode, { supabaseUrl: issuer.url, ...OUTAGE })
    const forged = forgeries(issuer)
    // the first fetch fails; the others come within its backoff (1 s with the default cooldown): no fetch
    await expecter(t, mode, app, issuer)([
      ['the issuer\'s own token', issuer.sign(), 503, UNAVAILABLE],
      ['its kid over another key', forged.otherKey, 503, UNAVAILABLE],
      ['a forged kid', issuer.sign({}, { header: { kid: 'forged' } }), 503, UNAVAILABLE],
      ['HS256 keyed with its public key', forged.hmac, 401, ALG],
      ['alg none', `${b64({ alg: 'none', kid: issuer.currentKey.kid })}.${parts(issuer.sign()).body}.`, 401, ALG]
    ], 1)
  })

  each(`outage (${name}) with a key held: it keeps verifying (stale if error), a kid not held gets 503, nothing forged is accepted`, async (t, mode) => {
    const issuer = await issuerFor(t, { alg: 'ES256' })
    const app = await appIn(t, mode, { supabaseUrl: issuer.url, ...OUTAGE })
    const token = issuer.sign()
    t.equal((await getMe(app, token)).statusCode, 200)
    const forged = forgeries(issuer)
    const later = issuer.addKey() // published once the outage has begun: never fetched
    issuer.respondWith(responder(issuer))
    await sleep(250) // past cacheTtl
    t.equal((await getMe(app, token)).statusCode, 200, 'past cacheTtl, the held key verifies while the set is refreshed')
    // the refresh started above fails (a kid not held waits for it): fetches are counted at the end
    await expecter(t, mode, app, issuer)([
      ['a key published during the outage', issuer.sign({}, { kid: later.kid }), 503, UNAVAILABLE],
      ['a forged kid', issuer.sign({}, { header: { kid: 'forged' } }), 503, UNAVAILABLE],
      ['the held kid over another key', forged.otherKey, 401, SIGNATURE],
      ['HS256 keyed with the held public key', forged.hmac, 401, ALG]
    ], null)
    t.equal((await getMe(app, token)).statusCode, 200, 'the held key keeps verifying within staleIfError')
    t.equal(issuer.jwksRequests, 2, 'one failed refresh, no retry within its backoff')
  })
}

/*
 * fast-jwt checks some verify options of the app's own after the signature, and @fastify/jwt maps
 * none of their errors (FAST_JWT_INVALID_TYPE, FAST_JWT_INVALID_CLAIM_TYPE): a genuine token must
 * still get a 401, or the option be refused at fastifyJwtOptions' call, never a 500.
 */
t.test('@fastify/jwt mode: verify options left to the app never turn the issuer\'s token into a 500', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const cases: Array<[name: string, verify: Record<string, unknown>, claims: Record<string, unknown>]> = [
    ['checkTyp at+jwt (RFC 9068), a Supabase token (typ JWT)', { checkTyp: 'at+jwt' }, {}],
    ['allowedNonce, nonce a number', { allowedNonce: 'n' }, { nonce: 1 }],
    ['allowedJti, jti a number', { allowedJti: 'j' }, { jti: 1 }],
    ['maxAge, iat a string', { maxAge: 3600 }, { iat: 'x' }],
    ['allowedSub, sub a number', { allowedSub: 'u' }, { sub: 1 }],
    ['allowedSub, another sub', { allowedSub: 'u' }, { sub: 'v' }]
  ]
  for (const [name, verify, claims] of cases) {
    const answer = await appIn(t, '@fastify/jwt', { supabaseUrl: issuer.url, algorithms: ['ES256'] }, Fastify(), { verify })
      .then((app) => getMe(app, issuer.sign(claims)), (err: unknown) => err as Error & { code?: string })
    if (answer instanceof Error) t.equal(answer.code, 'FST_SUPABASE_JWKS_OPTION', `${name}: refused at the call`)
    else t.equal(answer.statusCode, 401, `${name}: 401, not ${answer.statusCode} ${answer.body.slice(0, 120)}`)
  }
})
