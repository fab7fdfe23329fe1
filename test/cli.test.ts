import t from 'tap'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { main, HELP, type Report } from '../lib/check'
import { generateTestKey, signJwt, type TestIssuer } from '../lib/testing'
import { b64 } from './fixtures/craft'
import { appFor, codeOf, getMe, issuerFor, serve } from './fixtures/helpers'

/** Runs the CLI in-process; `stdin` is piped text, or a terminal when left out. */
async function cli (argv: string[], stdin?: string) {
  let stdout = ''
  let stderr = ''
  const input = stdin === undefined ? Object.assign(Readable.from([]), { isTTY: true }) : Readable.from([Buffer.from(stdin)], { objectMode: false })
  const code = await main(argv, {
    stdin: input,
    stdout: { write: (text: string) => { stdout += text } },
    stderr: { write: (text: string) => { stderr += text } }
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
  t.match(over.stderr, /the JWKS could not be fetched: .*UND_ERR_RES_EXCEEDED_MAX_SIZE/)
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
    { ...good, kid: 'spoof\u202e\u0007' + 'k'.repeat(300) }
  ])
  const json = await report(['check', issuer.url])
  t.equal(json.code, 1)
  t.same(json.keys.map((key) => key.reason), [
    undefined, 'a private key is published (d)', 'use is not "sig"', 'RSA modulus under 2048 bits', 'RSA modulus under 2048 bits',
    'a private key is published (k)', 'no kid', 'no kid', 'an earlier key of the set has the same kid', 'not a JSON object', undefined
  ])
  t.same(json.keys.map((key) => key.size), [2048, 2048, 2048, 0, 1024, null, null, 2048, 2048, null, 2048])
  t.same(json.keys[6], { kid: '42', alg: null, kty: 'RSA', size: null, curve: null, use: null, used: false, algorithms: [], reason: 'no kid' })
  t.same(codes(json), Array(9).fill('unusable-key'))
  t.match(json.warnings[5]!.message, 'key 42 is skipped by the plugin: no kid')
  t.match(json.warnings[6]!.message, 'key #8 is skipped by the plugin: no kid', 'a key without kid: by its place')
  const spoof = json.keys[10]!.kid!
  t.ok(spoof.startsWith('spoof\\u202e\\u0007kkk') && spoof.endsWith('k…'), 'direction and control characters escaped, long values cut')
  const text = await cli(['check', issuer.url])
  t.notOk(text.stdout.includes('\u0007') || text.stdout.includes('\u202e'), 'nothing from the JWKS can drive the terminal')
  t.match(text.stdout, /\n {2}- +- +- +- +not used: not a JSON object\n/, 'a value that is not a key: dashes')
  t.match(text.stdout, /symmetric +- +oct +- +not used/)

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
  const kid = issuer.currentKey.kid
  const valid = issuer.sign()
  return [
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
    [['check', issuer.jwksUrl, '--token', issuer.sign()], '--issuer is required with a jwksUrl and a token']
  ]
  for (const [argv, message] of cases) {
    const run = await cli(argv)
    t.equal(run.code, 2, String(message))
    t.match(run.stderr, message)
    t.match(run.stderr, 'Run fastify-supabase-jwks --help')
    t.notMatch(run.stderr, 'Invalid fastify-supabase-jwks option')
    t.equal(run.stdout, '')
  }
  t.equal(issuer.jwksRequests, 0)
  for (const argv of [['--help'], ['check', '-h'], ['help']]) {
    const run = await cli(argv)
    t.same([run.code, run.stdout], [0, HELP], argv.join(' '))
  }
})

t.test('the built bin runs: keys listing, a token on stdin, exit codes', async (t) => {
  const issuer = await issuerFor(t)
  const bin = join(__dirname, '..', 'dist', 'cli.js')
  const run = (args: string[], input: string) => new Promise<{ code: number | null, stdout: string }>((resolve) => {
    const child = spawn(process.execPath, [bin, ...args])
    let stdout = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    child.on('close', (code) => resolve({ code, stdout }))
    child.stdin.end(input)
  })
  const accepted = await run(['check', issuer.url], issuer.sign())
  t.equal(accepted.code, 0)
  t.match(accepted.stdout, 'answer      200: accepted')
  const expired = await run(['check', issuer.url, '--json'], issuer.sign({ exp: now() - 60 }))
  t.equal(expired.code, 1)
  t.match(JSON.parse(expired.stdout), { token: { code: 'FST_SUPABASE_JWKS_TOKEN_EXPIRED' } })
  t.equal((await run([], '')).code, 2)
})
