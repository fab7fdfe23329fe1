import t from 'tap'
import { spawn, type StdioOptions } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough, Readable } from 'node:stream'
import { main, HELP, type CliIO, type Report } from '../lib/check'
import { generateTestKey, signJwt, type TestIssuer } from '../lib/testing'
import { b64, parts, signRaw } from './fixtures/craft'
import { appFor, codeOf, getMe, issuerFor, serve } from './fixtures/helpers'

/** Runs the CLI in-process; `stdin` is piped text, or a terminal when left out; `io` replaces any of the streams. */
async function cli (argv: string[], stdin?: string, io: Partial<CliIO> = {}) {
  let stdout = ''
  let stderr = ''
  const code = await main(argv, {
    stdin: Readable.from(stdin === undefined ? [] : [Buffer.from(stdin)], { objectMode: false }),
    stdinIsPipe: stdin !== undefined,
    stdout: { write: (text: string) => { stdout += text } },
    stderr: { write: (text: string) => { stderr += text } },
    ...io
  })
  return { code, stdout, stderr }
}

/** Runs the CLI with --json and parses its report. */
async function report (argv: string[], stdin?: string): Promise<Report & { code: number, stderr: string }> {
  const run = await cli([...argv, '--json'], stdin)
  return { ...(JSON.parse(run.stdout) as Report), code: run.code, stderr: run.stderr }
}

const codes = (r: Report) => r.warnings.map((warning) => warning.code)
const now = () => Math.floor(Date.now() / 1000)
/** The signature segment of a token. */
const signatureOf = (token: string) => token.slice(token.lastIndexOf('.') + 1)
/** JSON text of arrays nested `depth` deep: JSON.parse reads it, JSON.stringify could never write it back. */
const nested = (depth: number) => `${'['.repeat(depth)}${']'.repeat(depth)}`
/** A token of `issuer`'s current key with its default claims, `extra` (raw JSON text) added to the claims or the header. */
function rawToken (issuer: TestIssuer, extra: { claims?: string, header?: string }): string {
  const { claims } = parts(issuer.sign())
  const key = issuer.currentKey
  const header = JSON.stringify({ alg: 'RS256', kid: key.kid, typ: 'JWT' })
  const add = (json: string, more: string | undefined) => more === undefined ? json : `${json.slice(0, -1)},${more}}`
  return signRaw('RS256', add(header, extra.header), add(JSON.stringify(claims), extra.claims), key.privateKey)
}

t.test('keys listing: each key with its kid, alg, type, size or curve and use; exit 0; one fetch', async (t) => {
  const issuer = await issuerFor(t)
  const second = issuer.rotate()
  const run = await cli(['check', issuer.url])
  t.equal(run.code, 0, run.stderr)
  t.equal(run.stderr, '')
  t.match(run.stdout, `JWKS        ${issuer.jwksUrl}`)
  t.match(run.stdout, `issuer      ${issuer.issuer}`)
  t.match(run.stdout, /fetched {5}HTTP 200, \d+ bytes \(\d+% of maxResponseSize 65536\), 2 keys/)
  for (const key of issuer.keys) t.match(run.stdout, new RegExp(`${key.kid} +RS256 +RSA 2048 +sig +used \\(RS256\\)`))
  t.notMatch(run.stdout, 'Warnings')
  t.equal(issuer.jwksRequests, 1)

  const json = await report(['check', issuer.url])
  t.equal(json.code, 0)
  t.equal(json.exitCode, 0)
  t.same(json.fetch, { ok: true, status: 200, bytes: JSON.stringify(issuer.jwks()).length })
  t.same(json.issuer, [issuer.issuer])
  t.same(json.audience, ['authenticated'])
  t.same(json.algorithms, ['RS256'])
  t.same(json.keys[1], { kid: second.kid, alg: 'RS256', kty: 'RSA', size: 2048, curve: null, use: 'sig', used: true, algorithms: ['RS256'] })
  t.same(json.warnings, [])
})

t.test('a JWKS URL is taken as it is: ending in .json, or with /.well-known/ in it', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  for (const url of [issuer.jwksUrl, `${issuer.url}/.well-known/jwks.json`, `${issuer.url}/.well-known/jwks.json?x=1`]) {
    const json = await report(['check', url, '--alg', 'ES256'])
    t.equal(json.code, 0, url)
    t.equal(json.jwksUrl, url)
    t.equal(json.issuer, false, 'no token: the issuer does not matter')
    t.match(json.keys, [{ kty: 'EC', curve: 'P-256', size: null, used: true, algorithms: ['ES256'] }])
  }
  t.match((await cli(['check', issuer.jwksUrl, '--alg', 'ES256'])).stdout, 'issuer      (not checked)')
})

t.test('warning: ES256 keys while only RS256 is allowed (exit 1), gone with --alg', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const json = await report(['check', issuer.url])
  t.equal(json.code, 1)
  t.same(codes(json), ['algorithm-not-allowed', 'no-usable-key'])
  t.match(json.warnings[0]!.message, 'signs with ES256, which the allowed algorithms (RS256) leave out')
  t.match(json.warnings[0]!.message, '--alg RS256,ES256')
  t.match(json.keys[0], { used: false, reason: 'ES256 not in the allowed algorithms (RS256)' })
  const text = await cli(['check', issuer.url])
  t.equal(text.code, 1)
  t.match(text.stdout, /Warnings\n {2}- key .* signs with ES256.*\[algorithm-not-allowed\]/)
  t.match(text.stdout, 'not used: ES256 not in the allowed algorithms (RS256)')
  t.equal((await cli(['check', issuer.url, '--alg', 'ES256,RS256'])).code, 0)
  t.equal((await cli(['check', issuer.url, '--alg', 'ES256', '--alg', 'RS256'])).code, 0, '--alg repeated')
})

t.test('warning: an RSA key without alg while only ES256 is allowed: RS256 suggested, the other RSA algorithms named', async (t) => {
  const issuer = await issuerFor(t)
  const { alg: _alg, ...noAlg } = issuer.currentKey.jwk
  serve(issuer, [noAlg])
  const json = await report(['check', issuer.url, '--alg', 'ES256'])
  t.equal(json.code, 1)
  t.same(codes(json), ['algorithm-not-allowed', 'no-usable-key'])
  const { message } = json.warnings[0]!
  t.match(message, 'set algorithms: ["ES256","RS256"] (--alg ES256,RS256), if its tokens use RS256 (the usual one; the JWK has no alg), ' +
    'else the one of RS384, RS512, PS256, PS384, PS512 they use')
  t.notMatch(message, /--alg [^ ]*RS384/, 'not all six')
})

t.test('warning: an empty key set (the project is still on the legacy secret); a token then gets 503', async (t) => {
  const issuer = await issuerFor(t)
  const token = issuer.sign()
  issuer.unpublish(issuer.currentKey.kid)
  const json = await report(['check', issuer.url, '--token', token])
  t.equal(json.code, 1)
  t.same(json.fetch, { ok: true, status: 200, bytes: '{"keys":[]}'.length })
  t.same(codes(json), ['empty-key-set'])
  t.match(json.warnings[0]!.message, 'the project still signs with the legacy JWT secret')
  t.match(json.token, { accepted: false, statusCode: 503, code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE' })
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const res = await getMe(app, token)
  t.same([json.token!.statusCode, json.token!.code], [res.statusCode, codeOf(res)], 'what the plugin answers')
})

t.test('warning: plain http off loopback (the plugin refuses it without allowInsecureJwksUrl)', async (t) => {
  const issuer = await issuerFor(t)
  // 0.0.0.0 is not a loopback name for the plugin, yet Linux connects it to 127.0.0.1: the test stays on this machine
  const url = issuer.url.replace('127.0.0.1', '0.0.0.0')
  const json = await report(['check', url])
  t.equal(json.code, 1)
  t.same(codes(json), ['insecure-url'])
  t.match(json.warnings[0]!.message, 'allowInsecureJwksUrl')
  t.equal(json.keys.length, 1, 'the keys are listed all the same')
  t.same(codes(await report(['check', issuer.url.replace('127.0.0.1', 'localhost')])), [], 'localhost is loopback')
})

t.test('warning: a set near maxResponseSize; past it, a fetch error', async (t) => {
  const issuer = await issuerFor(t)
  const bytes = JSON.stringify(issuer.jwks()).length
  const near = await report(['check', issuer.url, '--max-response-size', String(Math.ceil(bytes / 0.8))])
  t.equal(near.code, 1)
  t.same(codes(near), ['near-max-response-size'])
  t.match(near.warnings[0]!.message, `the JWKS is ${bytes} bytes, 80% of maxResponseSize`)
  t.same(codes(await report(['check', issuer.url, '--max-response-size', String(Math.ceil(bytes / 0.7))])), [], 'at 70%: no warning')
  const over = await cli(['check', issuer.url, '--max-response-size', String(bytes - 1)])
  t.equal(over.code, 2)
  t.match(over.stderr, `the JWKS could not be fetched: the answer is larger than maxResponseSize (${bytes - 1} bytes) (RESPONSE_TOO_LARGE)`)
})

t.test('warning: each key the plugin skips, with the reason; the first 100 keys only', async (t) => {
  const issuer = await issuerFor(t)
  const good = issuer.currentKey.jwk
  const rsa1024 = generateTestKey('RS256', 'short')
  const { kid: _kid, ...noKid } = good
  serve(issuer, [
    good,
    { ...good, kid: 'private', d: 'AAAA' },
    { ...good, kid: 'enc', use: 'enc' },
    { ...good, kid: 'broken', n: 'AAAA' },
    { ...rsa1024.jwk, n: (await import('node:crypto')).generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' }).n },
    { kty: 'oct', kid: 'symmetric', k: 'c2VjcmV0' },
    { kty: 'RSA', kid: 42 },
    noKid,
    good,
    'x',
    { ...good, kid: 'spoof\u202e\u0007' + 'k'.repeat(300) },
    { ...good, kid: 'lone\ud800' }
  ])
  const json = await report(['check', issuer.url])
  t.equal(json.code, 1)
  const refused = ': the plugin refuses every token that names it (UNKNOWN_KID)'
  t.same(json.keys.map((key) => key.reason), [
    undefined, 'a private key is published (d)', 'use is not "sig"', 'RSA modulus under 2048 bits', 'RSA modulus under 2048 bits',
    'a private key is published (k)', 'no kid', 'no kid', 'an earlier key of the set has the same kid', 'not a JSON object',
    `the kid is longer than 256 characters${refused}`, `the kid is not well-formed Unicode (a lone surrogate)${refused}`
  ])
  t.same(json.keys.map((key) => key.size), [2048, 2048, 2048, 0, 1024, null, null, 2048, 2048, null, 2048, 2048])
  t.same(json.keys[6], { kid: '42', alg: null, kty: 'RSA', size: null, curve: null, use: null, used: false, algorithms: [], reason: 'no kid' })
  t.match(json.keys.slice(10), [{ used: false, algorithms: [] }, { kid: 'lone\\ud800', used: false, algorithms: [] }], 'held by the plugin, yet never used')
  t.same(codes(json), Array(11).fill('unusable-key'))
  t.match(json.warnings[5]!.message, 'key 42 is skipped by the plugin: no kid')
  t.match(json.warnings[6]!.message, 'key #8 is skipped by the plugin: no kid', 'a key without kid: by its place')
  const spoof = json.keys[10]!.kid!
  t.ok(spoof.startsWith('spoof\\u202e\\u0007kkk') && spoof.endsWith('k…'), 'direction and control characters escaped, long values cut')
  const text = await cli(['check', issuer.url])
  t.notOk(text.stdout.includes('\u0007') || text.stdout.includes('\u202e'), 'nothing from the JWKS can drive the terminal')
  t.match(text.stdout, /\n {2}- +- +- +- +not used: not a JSON object\n/, 'a value that is not a key: dashes')
  t.match(text.stdout, /symmetric +- +oct +- +not used/)
  // a token beside the skipped keys: the good one verifies it; a skipped key's kid is unknown, to the plugin too
  t.match((await report(['check', issuer.url, '--token', issuer.sign()])).token, { accepted: true, statusCode: 200 })
  const enc = issuer.sign({}, { header: { kid: 'enc' } })
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const res = await getMe(app, enc)
  t.same([res.statusCode, codeOf(res)], [401, 'FST_SUPABASE_JWKS_UNKNOWN_KID'])
  t.match((await report(['check', issuer.url, '--token', enc])).token, { accepted: false, statusCode: 401, code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' })

  serve(issuer, Array.from({ length: 101 }, (_, i) => ({ ...good, kid: `k${i}` })))
  const many = await report(['check', issuer.url])
  t.equal(many.keys.length, 100, 'the first 100 keys are listed')
  t.same(codes(many), ['unusable-key'])
  t.match(many.warnings[0]!.message, 'the set has 101 keys: the plugin reads the first 100 only')
})

t.test('fetch errors: exit 2 with the reason, nothing the server sent; a token then gets 503 as from the plugin', async (t) => {
  const issuer = await issuerFor(t)
  const token = issuer.sign()
  issuer.respondWith((_request, response) => { response.writeHead(500).end('internal-marker'); return true })
  const down = await cli(['check', issuer.url, '--token', token])
  t.equal(down.code, 2)
  t.match(down.stderr, 'the JWKS could not be fetched: the JWKS answered HTTP 500')
  t.notMatch(down.stdout + down.stderr, 'internal-marker')
  t.notMatch(down.stdout, 'fetched')
  t.match(down.stdout, 'answer      503 FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')

  issuer.respondWith((_request, response) => { response.writeHead(200, { 'content-type': 'text/html' }).end('<html>'); return true })
  const html = await report(['check', issuer.url])
  t.equal(html.code, 2)
  t.same(html.fetch, { ok: false, error: 'the body is not a JSON key set' })
  t.equal(html.stderr, '', 'with --json, the error is in the report')

  issuer.respondWith((_request, response) => { response.writeHead(302, { location: '/elsewhere' }).end(); return true })
  t.match((await report(['check', issuer.url])).fetch, { ok: false, error: /HTTP 302|redirect/ }, 'no redirect is followed')

  const url = issuer.url
  await issuer.close()
  const refused = await report(['check', url])
  t.equal(refused.code, 2)
  t.match(refused.fetch.error, 'ECONNREFUSED')
})

/** The tokens of every rejection, with the check that fails and what the plugin answers. */
function rejections (issuer: TestIssuer) {
  const stranger = issuer.addKey({ publish: false })
  const ps = issuer.addKey({ alg: 'PS256' })
  // published keys whose kid the plugin refuses in a token before any lookup
  const long = issuer.addKey({ kid: 'k'.repeat(257) })
  const lone = issuer.addKey({ kid: 'lone\ud800' })
  const kid = issuer.currentKey.kid
  const valid = issuer.sign()
  return [
    { name: 'claims nested 5000 deep', token: rawToken(issuer, { claims: `"deep":${nested(5000)}` }), step: 'structure', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'a kid longer than 256 characters', token: issuer.sign({}, { kid: long.kid }), step: 'kid', code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' },
    { name: 'a kid not well-formed', token: issuer.sign({}, { kid: lone.kid }), step: 'kid', code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' },
    { name: 'an aud list with a number', token: issuer.sign({ aud: ['authenticated', 5] }), step: 'aud', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'an iss that is not a string', token: issuer.sign({ iss: 5 }), step: 'iss', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'not a JWS', token: 'not-a-token', step: 'structure', code: 'FST_SUPABASE_JWKS_MALFORMED_TOKEN' },
    { name: 'a publishable key', token: issuer.apiKey, step: 'structure', code: 'FST_SUPABASE_JWKS_MALFORMED_TOKEN' },
    { name: 'too long', token: `${valid}${'A'.repeat(16_384)}`, step: 'structure', code: 'FST_SUPABASE_JWKS_MALFORMED_TOKEN' },
    { name: 'a header that is not JSON', token: `bm90LWpzb24.${valid.split('.')[1]!}.${signatureOf(valid)}`, step: 'structure', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'a crit header', token: issuer.sign({}, { header: { crit: ['exp'] } }), step: 'structure', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'a malformed Bearer value', token: 'Bearer a\tb', step: 'structure', code: 'FST_SUPABASE_JWKS_BAD_REQUEST', status: 400 },
    { name: 'a legacy HS256 token', token: issuer.signLegacy(), step: 'algorithm', code: 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED' },
    { name: 'no alg', token: `${b64({ kid, typ: 'JWT' })}.${valid.split('.')[1]!}.${signatureOf(valid)}`, step: 'algorithm', code: 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED' },
    { name: 'a key not published', token: issuer.sign({}, { kid: stranger.kid }), step: 'kid', code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' },
    { name: 'no kid', token: issuer.sign({}, { header: { kid: undefined } }), step: 'kid', code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' },
    { name: 'a forged signature', token: signJwt({ alg: 'RS256', kid, typ: 'JWT' }, JSON.parse(Buffer.from(valid.split('.')[1]!, 'base64url').toString()), stranger.privateKey), step: 'signature', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'a signature cut short', token: `${valid.slice(0, valid.lastIndexOf('.'))}.AAAA`, step: 'signature', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'an algorithm the key does not verify', token: issuer.sign({}, { kid: ps.kid, header: { alg: 'RS256' } }), step: 'signature', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'expired', token: issuer.sign({ exp: now() - 7200 }), step: 'exp', code: 'FST_SUPABASE_JWKS_TOKEN_EXPIRED' },
    { name: 'expired long ago', token: issuer.sign({ exp: 1000 }), step: 'exp', code: 'FST_SUPABASE_JWKS_TOKEN_EXPIRED' },
    { name: 'no exp', token: issuer.sign({ exp: undefined }), step: 'exp', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'exp not a number', token: issuer.sign({ exp: 'soon' }), step: 'exp', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'not valid yet', token: issuer.sign({ nbf: now() + 5 * 3600 }), step: 'nbf', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'nbf not a number', token: issuer.sign({ nbf: 'now' }), step: 'nbf', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'another issuer', token: issuer.sign({ iss: 'https://other.supabase.co/auth/v1' }), step: 'iss', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'no iss', token: issuer.sign({ iss: undefined }), step: 'iss', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'an ID token audience', token: issuer.sign({ aud: ['client-id'] }), step: 'aud', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'no sub', token: issuer.sign({ sub: undefined }), step: 'sub', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' },
    { name: 'an empty sub', token: issuer.sign({ sub: '' }), step: 'sub', code: 'FST_SUPABASE_JWKS_TOKEN_INVALID' }
  ]
}

t.test('each rejection: exit 1, the failing check named, and the very answer the plugin gives', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['RS256', 'PS256'] })
  for (const { name, token, step, code, status = 401 } of rejections(issuer)) {
    const json = await report(['check', issuer.url, '--alg', 'RS256,PS256', '--token', token])
    const res = token.startsWith('Bearer ') ? await getMe(app, undefined, token) : await getMe(app, token)
    t.equal(json.code, 1, name)
    t.same([json.token!.statusCode, json.token!.code], [res.statusCode, codeOf(res)], `${name}: what the plugin answers`)
    t.same([json.token!.statusCode, json.token!.code], [status, code], name)
    t.equal(json.token!.message, (res.json() as { message: string }).message, `${name}: the same message`)
    t.ok(json.token!.steps.some((s) => s.check === step && s.result === 'fail'), `${name}: ${step} fails`)
    t.same(json.token!.steps.map((s) => s.check), ['structure', 'algorithm', 'kid', 'signature', 'exp', 'nbf', 'iss', 'aud', 'sub'])
  }
})

t.test('the walk agrees with the verdict: accepted exactly when no check fails', async (t) => {
  const issuer = await issuerFor(t)
  const tokens = rejections(issuer).map(({ name, token }) => ({ name, token, good: false }))
  const ps = issuer.keys.find((key) => key.alg === 'PS256')!
  tokens.push(
    { name: 'a good token', token: issuer.sign(), good: true },
    { name: 'a good PS256 token', token: issuer.sign({}, { kid: ps.kid }), good: true },
    { name: 'an aud list with one accepted', token: issuer.sign({ aud: ['other', 'authenticated'] }), good: true },
    { name: 'a header field nested 5000 deep (the plugin reads the header shallow)', token: rawToken(issuer, { header: `"x":${nested(5000)}` }), good: true }
  )
  for (const { name, token, good } of tokens) {
    const json = await report(['check', issuer.url, '--alg', 'RS256,PS256', '--token', token])
    const failed = json.token!.steps.filter((step) => step.result === 'fail').map((step) => step.check)
    t.equal(json.token!.accepted, good, `${name}: the verdict`)
    t.equal(json.token!.accepted, failed.length === 0, `${name}: accepted exactly when no check fails (${failed.join(', ')})`)
  }
})

t.test('one fetch, one set: a token of a kid the set lacks costs no second fetch; the walk, the verdict and the listing agree', async (t) => {
  const issuer = await issuerFor(t)
  const later = issuer.addKey({ publish: false })
  const token = issuer.sign({}, { kid: later.kid })
  // the first answer lacks the token's kid, every later one has it: a second fetch would find it
  issuer.respondWith((_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(issuer.jwks()))
    issuer.publish(later.kid)
    issuer.respondWith(undefined)
    return true
  })
  const json = await report(['check', issuer.url, '--token', token])
  t.equal(issuer.jwksRequests, 1, 'one JWKS fetch')
  t.same(json.keys.map((key) => key.kid), [issuer.currentKey.kid], 'the set fetched lacks the kid')
  t.match(json.token, { accepted: false, statusCode: 401, code: 'FST_SUPABASE_JWKS_UNKNOWN_KID' }, 'the verdict from that set')
  t.match(json.token!.steps.find((step) => step.check === 'kid'), { result: 'fail', detail: `no key ${later.kid} in the key set` }, 'the walk from that set')
  t.same(json.token!.steps.filter((step) => step.result === 'fail').map((step) => step.check), ['kid'], 'refused for the kid alone')
  t.equal(json.code, 1)

  // a known kid: one fetch too, accepted, every step passed
  const known = await report(['check', issuer.url, '--token', issuer.sign()])
  t.equal(issuer.jwksRequests, 2, 'one more fetch for the second run')
  t.match(known.token, { accepted: true, statusCode: 200 })
  t.same(known.token!.steps.filter((step) => step.result !== 'pass'), [])
})

t.test('values nested thousands deep, in the JWKS or a token: shown a few levels deep, never a stack overflow', async (t) => {
  const issuer = await issuerFor(t)
  const good = JSON.stringify(issuer.currentKey.jwk)
  // 60 KB, under the 64 KB cap
  issuer.respondWith((_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' }).end(`{"keys":[${good},{"kty":"RSA","kid":${nested(30_000)}}]}`)
    return true
  })
  const keys = await cli(['check', issuer.url])
  t.equal(keys.code, 1, keys.stderr)
  t.equal(keys.stderr, '')
  t.match(keys.stdout, '[[[[\\"(nested)\\"]]]]')
  t.match(keys.stdout, 'not used: no kid')
  const keysJson = await report(['check', issuer.url])
  t.equal(keysJson.code, 1)
  t.match(keysJson.keys[1], { kid: '[[[[\\"(nested)\\"]]]]', used: false, reason: 'no kid' })
  t.same(codes(keysJson), ['unusable-key', 'near-max-response-size'])
  issuer.respondWith(undefined)

  // within maxTokenLength (16 KiB)
  const token = rawToken(issuer, { claims: `"deep":${nested(5000)}`, header: `"x":${nested(500)}` })
  const text = await cli(['check', issuer.url, '--token', token])
  t.equal(text.code, 1, text.stderr)
  t.equal(text.stderr, '')
  t.match(text.stdout, /\n {2}FAIL +structure +The token is invalid: the claims are nested deeper than 32 levels\n/)
  t.match(text.stdout, /\n {2}deep +\[\[\["\(nested\)"\]\]\]\n/)
  t.match(text.stdout, /\n {2}x +\[\[\["\(nested\)"\]\]\]\n/)
  t.match(text.stdout, 'answer      401 FST_SUPABASE_JWKS_TOKEN_INVALID: The token is invalid: the claims are nested deeper than 32 levels')
  const json = await report(['check', issuer.url, '--token', token])
  t.equal(json.code, 1)
  t.match(json.token, { accepted: false, code: 'FST_SUPABASE_JWKS_TOKEN_INVALID', header: { x: [[['(nested)']]] }, claims: { deep: [[['(nested)']]], sub: String } })
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const res = await getMe(app, token)
  t.same([res.statusCode, codeOf(res)], [401, 'FST_SUPABASE_JWKS_TOKEN_INVALID'], 'what the plugin answers')
})

t.test('an unexpected error: one line on stderr, never the token, exit 2', async (t) => {
  const issuer = await issuerFor(t)
  const token = issuer.sign()
  const broken = (message: string) => ({ write () { throw new Error(`${message}\n    at write (node:internal)`) } })
  const write = await cli(['check', issuer.url, '--token', token], undefined, { stdout: broken(`EPIPE while writing ${token}`) })
  t.equal(write.code, 2)
  t.match(write.stderr, /^fastify-supabase-jwks: unexpected error: Error: EPIPE while writing eyJ[^\n]{0,20}…\n$/)
  for (const output of [write.stderr, write.stdout]) {
    t.notMatch(output, token, 'not the token')
    t.notMatch(output, signatureOf(token), 'not its signature')
  }
  const stdin = new Readable({ read () { this.destroy(new Error('EIO: i/o error, read')) } })
  const read = await cli(['check', issuer.url, '--token', '-'], undefined, { stdin })
  t.same([read.code, read.stdout, read.stderr], [2, '', 'fastify-supabase-jwks: unexpected error: Error: EIO: i/o error, read\n'])
  // main rejects only if stderr fails too
  await t.rejects(main(['check', issuer.url], { stdin: Readable.from([]), stdinIsPipe: false, stdout: broken('EPIPE'), stderr: broken('EPIPE') }))
})

t.test('an accepted token: exit 0, every check passed, claims shown but user_metadata values, never the token', async (t) => {
  const issuer = await issuerFor(t)
  const token = issuer.sign({ user_metadata: { full_name: 'secret-name-marker', avatar: 'x' }, nbf: now() - 60 })
  const text = await cli(['check', issuer.url, '--token', token])
  t.equal(text.code, 0, text.stdout)
  for (const check of ['structure', 'algorithm', 'kid', 'signature', 'exp', 'nbf', 'iss', 'aud', 'sub']) {
    t.match(text.stdout, new RegExp(`\\n {2}pass +${check} `), check)
  }
  t.match(text.stdout, /exp +".*Z, 60 min from now"|exp +\d+/)
  t.match(text.stdout, /nbf +\d{4}-.*, 1 min ago/)
  t.match(text.stdout, /user_metadata +\{"full_name":"\(hidden\)","avatar":"\(hidden\)"\}/)
  t.match(text.stdout, 'email          "user@example.com"')
  t.match(text.stdout, '\nanswer      200: accepted\n')
  const json = await report(['check', issuer.url, '--token', token])
  t.equal(json.code, 0)
  t.match(json.token, { accepted: true, statusCode: 200, header: { alg: 'RS256', kid: issuer.currentKey.kid }, claims: { user_metadata: { full_name: '(hidden)' } } })
  t.ok(json.token!.steps.every((step) => step.result === 'pass'))
  for (const output of [text.stdout + text.stderr, JSON.stringify(json)]) {
    t.notMatch(output, token, 'not the token')
    t.notMatch(output, signatureOf(token), 'not its signature')
    t.notMatch(output, 'secret-name-marker', 'not the user_metadata values')
  }
  t.match((await report(['check', issuer.url, '--token', issuer.sign({ user_metadata: 'odd' })])).token, { accepted: true, claims: { user_metadata: '(hidden)' } })
  t.notOk('user_metadata' in (await report(['check', issuer.url, '--token', issuer.sign({ user_metadata: undefined, exp: 1e13 })])).token!.claims!)
})

t.test('the token from stdin, from "--token -", or as a pasted Bearer header', async (t) => {
  const issuer = await issuerFor(t)
  const token = issuer.sign()
  t.equal((await cli(['check', issuer.url], `${token}\n`)).code, 0, 'piped')
  // a terminal or a socket nobody writes to (ssh, a spawn's default stdio) is not read without "--token -"
  const open = new PassThrough()
  const socket = await report(['check', issuer.url], undefined)
  t.same([socket.code, socket.token], [0, undefined])
  const waiting = await cli(['check', issuer.url, '--json'], undefined, { stdin: open, stdinIsPipe: false })
  t.equal(waiting.code, 0, 'an open stream that is no pipe: never read, the keys listed')
  t.equal((JSON.parse(waiting.stdout) as Report).token, undefined)
  open.end(token)
  t.equal((await cli(['check', issuer.url, '--token', '-'], undefined, { stdin: Readable.from([token]), stdinIsPipe: false })).code, 0, '--token - reads any stdin')
  t.equal((await cli(['check', issuer.url, '--token', '-'], token)).code, 0, '--token -')
  t.equal((await cli(['check', issuer.url], `Bearer ${token}`)).code, 0, 'Bearer <token>')
  const empty = await report(['check', issuer.url], '\n')
  t.equal(empty.code, 0)
  t.equal(empty.token, undefined, 'an empty stdin is no token')
  const flood = await report(['check', issuer.url], 'A'.repeat(2 * 1024 * 1024))
  t.match(flood.token, { code: 'FST_SUPABASE_JWKS_MALFORMED_TOKEN', message: /longer than maxTokenLength/ }, 'stdin is read up to a bound')
})

t.test('--issuer, --audience (false skips a check) and --timeout', async (t) => {
  const issuer = await issuerFor(t)
  const other = issuer.sign({ iss: 'https://auth.example.com', aud: ['a', 'b'] })
  t.match((await report(['check', issuer.url, '--token', other])).token, { accepted: false })
  const json = await report(['check', issuer.jwksUrl, '--issuer', 'https://auth.example.com', '--audience', 'x', '--audience', 'b', '--timeout', '10', '--token', other])
  t.equal(json.code, 0)
  t.same([json.issuer, json.audience], [['https://auth.example.com'], ['x', 'b']])
  const off = await report(['check', issuer.url, '--issuer', 'false', '--audience', 'false', '--token', issuer.sign({ iss: undefined, aud: undefined })])
  t.equal(off.code, 0)
  t.same([off.issuer, off.audience], [false, false])
  t.match(off.token!.steps.slice(6), [{ check: 'iss', result: 'skip' }, { check: 'aud', result: 'skip' }])
  t.match((await cli(['check', issuer.url, '--issuer', 'false', '--audience', 'false'])).stdout, 'audience    (not checked)')
})

t.test('usage errors: exit 2 with the reason on stderr, nothing fetched', async (t) => {
  const issuer = await issuerFor(t)
  const cases: Array<[string[], RegExp | string]> = [
    [[], 'a command is required: check'],
    [['verify', issuer.url], 'unknown command "verify"'],
    [['check'], 'check takes one URL'],
    [['check', issuer.url, issuer.url], 'check takes one URL'],
    [['check', issuer.url, '--nope'], "Unknown option '--nope'"],
    [['check', 'not a url'], 'supabaseUrl is not a valid URL'],
    [['check', `${issuer.url}/auth/v1`], 'without /auth/v1'],
    [['check', issuer.url, '--alg', 'HS256'], 'algorithm HS256 is refused'],
    [['check', issuer.url, '--alg', ','], 'algorithms must be a non-empty array'],
    [['check', issuer.url, '--timeout', 'soon'], 'timeout must be a finite number'],
    [['check', issuer.url, '--token', ''], '--token needs a token'],
    [['check', issuer.jwksUrl, '--token', issuer.sign()], '--issuer is required with a jwksUrl and a token'],
    // what the user gave is quoted by its first 12 characters at most: it may be a token or a key
    [['a-long-command-name', issuer.url], 'unknown command "a-long-comma…": the command is check'],
    [['check', 'abc.supabase.co'], 'supabaseUrl has no scheme (https://, or http:// on a loopback host): set https://abc.supabase…'],
    [['check', issuer.url, '--alg', 'RS256,sb_secret_0123456789abcdef'], 'unknown algorithm sb_secret_01…;'],
    [['check', issuer.url, '--sb_secret_0123456789abcdef'], "Unknown option '--sb_secret_…'"]
  ]
  for (const [argv, message] of cases) {
    const run = await cli(argv)
    t.equal(run.code, 2, String(message))
    t.match(run.stderr, message)
    t.match(run.stderr, 'Run fastify-supabase-jwks --help')
    t.notMatch(run.stderr, 'Invalid fastify-supabase-jwks option')
    t.notMatch(run.stderr, /abc\.supabase\.co|a-long-command-name|0123456789abcdef/, 'no value in full')
    t.equal(run.stdout, '')
  }
  // a token where the command or the URL goes: said so, never printed
  const token = issuer.sign()
  for (const argv of [[token], ['check', token], ['check', issuer.url, token], ['check', `Bearer ${token}`], ['check', issuer.url, '--issuer', token], [token, '--token', token]]) {
    const run = await cli(argv)
    t.equal(run.code, 2)
    t.equal(run.stdout, '')
    t.match(run.stderr, 'an argument looks like a token: pass it with --token or on stdin (it is never printed)')
    t.notMatch(run.stderr, token, 'not the token')
    t.notMatch(run.stderr, signatureOf(token), 'not its signature')
  }
  t.equal(issuer.jwksRequests, 0)
  for (const argv of [['--help'], ['check', '-h'], ['help']]) {
    const run = await cli(argv)
    t.same([run.code, run.stdout], [0, HELP], argv.join(' '))
  }
})

t.test('the built bin runs: keys listing, the token on stdin (a pipe, a file, "--token -"), an open stdin never waited on, exit codes', async (t) => {
  const issuer = await issuerFor(t)
  const bin = join(__dirname, '..', 'dist', 'cli.js')
  /**
   * Runs `command`; `input` is written to its stdin (spawn's default: a socket) and ended, or the stdin is left open.
   * A run past 20 s is killed: a hang fails here rather than at the suite's timeout.
   */
  const exec = (command: string, args: string[], input?: string, options: { env?: NodeJS.ProcessEnv, stdio?: StdioOptions } = {}) =>
    new Promise<{ code: number | null, stdout: string }>((resolve) => {
      const child = spawn(command, args, options)
      let stdout = ''
      const timer = setTimeout(() => child.kill(), 20_000)
      child.stdout!.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
      child.on('exit', () => child.stdin?.destroy())
      child.on('close', (code) => {
        clearTimeout(timer)
        resolve({ code, stdout })
      })
      if (input !== undefined) child.stdin!.end(input)
    })
  const run = (args: string[], input?: string) => exec(process.execPath, [bin, ...args], input)

  const open = await run(['check', issuer.url])
  t.equal(open.code, 0, 'stdin a socket left open, no --token: the keys listed, no wait')
  t.match(open.stdout, `${issuer.currentKey.kid}  RS256  RSA 2048  sig  used (RS256)`)
  t.notMatch(open.stdout, 'Token')
  const accepted = await run(['check', issuer.url, '--token', '-'], issuer.sign())
  t.equal(accepted.code, 0)
  t.match(accepted.stdout, 'answer      200: accepted')
  const expired = await run(['check', issuer.url, '--json', '--token', '-'], issuer.sign({ exp: now() - 60 }))
  t.equal(expired.code, 1)
  t.match(JSON.parse(expired.stdout), { token: { code: 'FST_SUPABASE_JWKS_TOKEN_EXPIRED' } })
  t.equal((await run([], '')).code, 2)

  // a shell pipe (a FIFO) is read without --token; the token goes by the environment, never on a command line
  const piped = await exec('/bin/sh', ['-c', 'printf %s "$TOKEN" | "$0" "$@"', process.execPath, bin, 'check', issuer.url], undefined,
    { env: { ...process.env, TOKEN: issuer.sign() } })
  t.equal(piped.code, 0)
  t.match(piped.stdout, 'answer      200: accepted', 'a FIFO is read')
  // and so is a file
  const dir = mkdtempSync(join(tmpdir(), 'cli-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'token'), `${issuer.sign({ exp: now() - 60 })}\n`)
  const fd = openSync(join(dir, 'token'), 'r')
  const file = await exec(process.execPath, [bin, 'check', issuer.url], undefined, { stdio: [fd, 'pipe', 'pipe'] })
  closeSync(fd)
  t.equal(file.code, 1)
  t.match(file.stdout, 'answer      401 FST_SUPABASE_JWKS_TOKEN_EXPIRED', 'a file is read')

  // should main ever reject (it does only when stderr throws too), the bin exits 2
  const broken = 'process.stdout.write = process.stderr.write = () => { throw new Error("EPIPE") }; require(process.argv[1])'
  t.equal((await exec(process.execPath, ['-e', broken, bin, 'check', issuer.url], '')).code, 2)
})
