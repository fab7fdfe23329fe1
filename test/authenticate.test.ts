import t, { type Test } from 'tap'
import { createHmac } from 'node:crypto'
import Fastify from 'fastify'
import supabaseJwks from '../lib/index'
import { signJwt, generateTestKey, signInput } from '../lib/testing'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor } from './fixtures/helpers'
import { toAuthError, warnIfUnexpected } from '../lib/authenticate'

const now = () => Math.floor(Date.now() / 1000)
const b64 = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')

function hs256 (header: Record<string, unknown>, payload: Record<string, unknown>, secret: string | Buffer) {
  const input = `${b64(header)}.${b64(payload)}`
  return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
}

/** Asserts an answer: status, code and (for 4xx) the WWW-Authenticate challenge. */
function rejected (t: Test, res: Awaited<ReturnType<typeof getMe>>, status: number, code: string, challenge?: RegExp) {
  t.equal(res.statusCode, status, `${code}: status`)
  t.equal(codeOf(res), code, 'code')
  if (challenge) t.match(res.headers['www-authenticate'], challenge, 'WWW-Authenticate')
  t.notOk(/eyJ/.test(res.body), 'the answer carries no token')
  t.notOk(/\bat\b.*\.(ts|js):\d+/.test(res.body), 'no stack trace')
}

const INVALID = /^Bearer realm="api", error="invalid_token", error_description="[^"]+"$/

t.test('a valid RS256 token is accepted with its claims, and the key fetched once', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const res = await getMe(app, issuer.sign({ email: 'ada@example.com', sub: '9f1c0bd4-1b1e-4a63-9d6b-0d0c3f8b1d11' }))
  t.equal(res.statusCode, 200)
  t.match(res.json(), {
    sub: '9f1c0bd4-1b1e-4a63-9d6b-0d0c3f8b1d11',
    email: 'ada@example.com',
    aud: 'authenticated',
    iss: issuer.issuer,
    role: 'authenticated',
    aal: 'aal1',
    is_anonymous: false,
    app_metadata: { provider: 'email' },
    amr: [{ method: 'password' }]
  })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.equal(issuer.jwksRequests, 1, 'the key is cached')
  t.equal(app.supabaseJwks.stats().fetches, 1)
  t.equal(app.supabaseJwks.stats().keys, 1)
})

t.test('ES256 is accepted only when opted in', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const strict = await appFor(t, { supabaseUrl: issuer.url })
  const token = issuer.sign()
  rejected(t, await getMe(strict, token), 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
  t.equal(issuer.jwksRequests, 0, 'refused before any key lookup')
  const es = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['ES256'] })
  const res = await getMe(es, token)
  t.equal(res.statusCode, 200)
  t.equal(res.json().sub.length, 36)
})

t.test('every opted-in asymmetric algorithm verifies', async (t) => {
  for (const alg of ['RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES384', 'ES512', 'EdDSA'] as const) {
    const issuer = await issuerFor(t, { alg })
    const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: [alg] })
    t.equal((await getMe(app, issuer.sign())).statusCode, 200, alg)
  }
})

t.test('claims', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['expired', { exp: now() - 60 }, 'FST_SUPABASE_JWKS_TOKEN_EXPIRED'],
    ['not yet valid', { nbf: now() + 600 }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['wrong iss', { iss: 'https://evil.supabase.co/auth/v1' }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['iss without /auth/v1', { iss: issuer.url }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['missing iss', { iss: undefined }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['wrong aud (an OIDC ID token)', { aud: 'my-oauth-client-id' }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['missing aud', { aud: undefined }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['missing exp', { exp: undefined }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['exp a string', { exp: String(now() + 600) }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['missing sub', { sub: undefined }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['sub not a string', { sub: 42 }, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['sub empty', { sub: '' }, 'FST_SUPABASE_JWKS_TOKEN_INVALID']
  ]
  for (const [name, claims, code] of cases) {
    const res = await getMe(app, issuer.sign(claims))
    t.equal(res.statusCode, 401, `${name}: 401`)
    t.equal(codeOf(res), code, `${name}: ${code}`)
    t.match(res.headers['www-authenticate'], INVALID, `${name}: challenge`)
  }
  const expired = await getMe(app, issuer.sign({ exp: now() - 60 }))
  t.equal(expired.headers['www-authenticate'], 'Bearer realm="api", error="invalid_token", error_description="The token has expired"')
  t.match(codeOf(await getMe(app, issuer.sign({ iss: 'https://evil.example' }))), 'TOKEN_INVALID')
  t.match((await getMe(app, issuer.sign({ aud: undefined }))).json().message, /aud claim is required/)
  t.match((await getMe(app, issuer.sign({ iss: 'x' }))).json().message, /iss claim value is not allowed/)
  t.equal(issuer.jwksRequests, 0, 'claims are checked before the key: their failures cause no fetch at all')
})

t.test('exp: an infinite value is refused', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const key = issuer.currentKey
  const header = `${b64({ alg: 'RS256', kid: key.kid, typ: 'JWT' })}`
  const payload = b64(`{"sub":"u","aud":"authenticated","iss":"${issuer.issuer}","exp":1e999}`)
  const token = `${header}.${payload}.${signInput('RS256', key.privateKey, `${header}.${payload}`)}`
  const res = await getMe(app, token)
  t.equal(res.statusCode, 401)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.match(res.json().message, /exp is not a finite number/)
})

t.test('clockTolerance lets a token expired a moment ago through', async (t) => {
  const issuer = await issuerFor(t)
  const token = issuer.sign({ exp: now() - 5 })
  const strict = await appFor(t, { supabaseUrl: issuer.url })
  t.equal(codeOf(await getMe(strict, token)), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED')
  const tolerant = await appFor(t, { supabaseUrl: issuer.url, clockTolerance: 30 })
  t.equal((await getMe(tolerant, token)).statusCode, 200)
  t.equal(codeOf(await getMe(tolerant, issuer.sign({ exp: now() - 60 }))), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED')
})

t.test('an iss mismatch says which issuer was expected (configured values only, a few, cut short), never the token\'s own', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  // the local CLI's usual mix-up: the token of http://localhost:<port> against a project URL of 127.0.0.1
  const localhost = issuer.issuer.replace('127.0.0.1', 'localhost')
  const res = await getMe(app, issuer.sign({ iss: localhost }))
  rejected(t, res, 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)
  t.equal(res.json().message, `The token is invalid: the iss claim value is not allowed (expected "${issuer.issuer}")`)
  t.notMatch(res.body, /localhost/, 'the token\'s own iss is not echoed')
  t.equal(res.headers['www-authenticate'], 'Bearer realm="api", error="invalid_token", error_description="The token is invalid"',
    'the challenge keeps its fixed text')
  const huge = await getMe(app, issuer.sign({ iss: `https://attacker.example/${'x'.repeat(10_000)}` }))
  t.notMatch(huge.body, /attacker/, 'nothing of a long forged iss either')
  t.ok(huge.body.length < 300, `the answer stays short: ${huge.body.length} characters`)
  t.match((await getMe(app, issuer.sign({ iss: 42 }))).json().message, /the iss claim must be a string$/, 'a wrong type keeps its own reason')

  const long = `https://${'a'.repeat(200)}.example/auth/v1`
  const many = await appFor(t, { supabaseUrl: issuer.url, issuer: [long, 'https://b.example/auth/v1', 'https://c.example/auth/v1', 'https://d.example/auth/v1', issuer.issuer] })
  const message = (await getMe(many, issuer.sign({ iss: localhost }))).json().message as string
  t.equal(message, `The token is invalid: the iss claim value is not allowed (expected "https://${'a'.repeat(112)}...", ` +
    '"https://b.example/auth/v1", "https://c.example/auth/v1" or 2 more)', 'at most three issuers named, each cut to 120 characters')
  const two = await appFor(t, { supabaseUrl: issuer.url, issuer: ['https://b.example/auth/v1', issuer.issuer] })
  t.equal((await getMe(two, issuer.sign({ iss: localhost }))).json().message,
    `The token is invalid: the iss claim value is not allowed (expected "https://b.example/auth/v1" or "${issuer.issuer}")`)
})

t.test('issuer and audience: lists, and false to skip (self-hosted GoTrue without iss)', async (t) => {
  const issuer = await issuerFor(t)
  const selfHosted = await appFor(t, { jwksUrl: `${issuer.url}/.well-known/jwks.json`, issuer: false })
  t.equal((await getMe(selfHosted, issuer.sign({ iss: undefined }))).statusCode, 200, 'no iss accepted when the check is off')
  t.equal(codeOf(await getMe(selfHosted, issuer.sign({ aud: 'other' }))), 'FST_SUPABASE_JWKS_TOKEN_INVALID', 'aud still checked')
  const lists = await appFor(t, { supabaseUrl: issuer.url, issuer: ['https://other', issuer.issuer], audience: ['authenticated', 'extra'] })
  t.equal((await getMe(lists, issuer.sign({ aud: 'extra' }))).statusCode, 200)
  t.equal((await getMe(lists, issuer.sign({ aud: ['x', 'authenticated'] }))).statusCode, 200)
  t.equal(codeOf(await getMe(lists, issuer.sign({ iss: 'https://third' }))), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  const noAud = await appFor(t, { supabaseUrl: issuer.url, audience: false })
  t.equal((await getMe(noAud, issuer.sign({ aud: undefined }))).statusCode, 200)
})

t.test('signatures and algorithms', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const key = issuer.currentKey
  const token = issuer.sign()
  const [head, body, sig] = token.split('.') as [string, string, string]

  const flipped = sig.slice(0, 10) + (sig[10] === 'A' ? 'B' : 'A') + sig.slice(11)
  rejected(t, await getMe(app, `${head}.${body}.${flipped}`), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)

  const claims = JSON.parse(Buffer.from(body, 'base64url').toString())
  const tampered = b64({ ...claims, role: 'service_role' })
  rejected(t, await getMe(app, `${head}.${tampered}.${sig}`), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)

  rejected(t, await getMe(app, `${head}.${body}.`), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)
  t.match((await getMe(app, `${head}.${body}.`)).json().message, /signature is missing/)

  const noneHeader = b64({ alg: 'none', kid: key.kid, typ: 'JWT' })
  rejected(t, await getMe(app, `${noneHeader}.${body}.`), 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
  rejected(t, await getMe(app, `${noneHeader}.${body}.${sig}`), 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)

  const pem = key.publicKey.export({ type: 'spki', format: 'pem' }) as string
  const hs = hs256({ alg: 'HS256', kid: key.kid, typ: 'JWT' }, claims, pem)
  rejected(t, await getMe(app, hs), 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
  t.equal((await getMe(app, hs)).json().message, 'The token algorithm is not allowed: HS256 (tokens signed with the legacy JWT secret are not accepted)')
  const odd = `${b64({ alg: 'XY1', kid: key.kid })}.${body}.${sig}`
  t.equal((await getMe(app, odd)).json().message, 'The token algorithm is not allowed: XY1', 'a plain unknown alg is named, without advice')

  for (const alg of ['RS384', 'PS256']) {
    const other = signJwt({ alg, kid: key.kid, typ: 'JWT' }, claims, key.privateKey)
    const res = await getMe(app, other)
    rejected(t, res, 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
    t.equal(res.json().message, `The token algorithm is not allowed: ${alg} (not in the plugin's algorithms option)`)
  }
  const weird = signJwt({ alg: 'RS256', kid: key.kid }, claims, key.privateKey).replace(/^[^.]+/, b64({ alg: '"><script>', kid: key.kid }))
  const res = await getMe(app, weird)
  t.equal(res.json().message, 'The token algorithm is not allowed: missing or invalid', 'an odd alg is not echoed')

  const stranger = generateTestKey('RS256', key.kid)
  rejected(t, await getMe(app, signJwt({ alg: 'RS256', kid: key.kid }, claims, stranger.privateKey)), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)
  t.equal(issuer.jwksRequests, 1, 'none of these fetched the JWKS again')
})

t.test('an allowed algorithm that does not fit the key is refused', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['RS256', 'ES256'] })
  const es = generateTestKey('ES256')
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  const res = await getMe(app, issuer.sign({}, { header: { alg: 'ES256' } }).replace(/\.[^.]+$/, '.AAAA'))
  t.equal(res.statusCode, 401)
  const forged = signJwt({ alg: 'ES256', kid: issuer.currentKey.kid }, { sub: 'x', exp: now() + 600, iss: issuer.issuer, aud: 'authenticated' }, es.privateKey)
  const answer = await getMe(app, forged)
  t.equal(codeOf(answer), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.match(answer.json().message, /algorithm does not match the key/)
})

t.test('unknown or missing kid', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  rejected(t, await getMe(app, issuer.sign({}, { header: { kid: 'not-published' } })), 401, 'FST_SUPABASE_JWKS_UNKNOWN_KID', INVALID)
  t.equal(issuer.jwksRequests, 1)
  for (const kid of [undefined, '', 42, 'k'.repeat(257)]) {
    rejected(t, await getMe(app, issuer.sign({}, { header: { kid } })), 401, 'FST_SUPABASE_JWKS_UNKNOWN_KID', INVALID)
  }
  t.equal(issuer.jwksRequests, 1, 'a missing or absurd kid never fetches')
})

t.test('the Authorization header', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const token = issuer.sign()

  const none = await getMe(app)
  rejected(t, none, 401, 'FST_SUPABASE_JWKS_NO_TOKEN')
  t.equal(none.headers['www-authenticate'], 'Bearer realm="api"', 'no error code when no credentials were sent')
  t.equal(none.json().message, 'Missing bearer token in the Authorization header', 'the header alone is named when it is the only place')
  for (const value of ['', `Basic ${Buffer.from('a:b').toString('base64')}`, `Token ${token}`, `Bearer${token}`]) {
    const res = await getMe(app, undefined, value)
    t.equal(res.statusCode, 401, `${value.slice(0, 12)}: 401`)
    t.equal(res.headers['www-authenticate'], 'Bearer realm="api"')
  }
  const BAD = 'Bearer realm="api", error="invalid_request", error_description="Malformed Authorization header"'
  for (const value of ['Bearer', 'Bearer ', `Bearer ${token} ${token}`, `Bearer ${token}\t${token}`]) {
    const res = await getMe(app, undefined, value)
    rejected(t, res, 400, 'FST_SUPABASE_JWKS_BAD_REQUEST')
    t.equal(res.headers['www-authenticate'], BAD)
  }
  for (const value of [`bearer ${token}`, `BEARER ${token}`, `Bearer   ${token}  `]) {
    t.equal((await getMe(app, undefined, value)).statusCode, 200, `accepted: ${value.slice(0, 9)}`)
  }
  const query = await app.inject({ method: 'GET', url: `/me?access_token=${token}` })
  t.equal(query.statusCode, 401, 'a token in the query string is not accepted')
  t.equal(codeOf(query), 'FST_SUPABASE_JWKS_NO_TOKEN')
})

t.test('malformed tokens are refused before any key lookup', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, maxTokenLength: 4096 })
  const token = issuer.sign()
  const [head, body, sig] = token.split('.') as [string, string, string]
  const MALFORMED = 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'
  const cases: Array<[string, string, string]> = [
    ['one segment', 'abc', MALFORMED],
    ['two segments', `${head}.${body}`, MALFORMED],
    ['four segments', `${token}.${sig}`, MALFORMED],
    ['standard base64', `${head}.${body}.${sig}+/==`, MALFORMED],
    ['non-ASCII', `${head}.${body}é.${sig}`, MALFORMED],
    ['too long', `${head}.${'A'.repeat(5000)}.${sig}`, MALFORMED],
    ['an sb_ API key', 'sb_publishable_abcDEF123', MALFORMED],
    ['header not JSON', `${b64('nope')}.${body}.${sig}`, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['header an array', `${b64([1])}.${body}.${sig}`, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['payload a number', `${head}.${b64(42)}.${sig}`, 'FST_SUPABASE_JWKS_TOKEN_INVALID']
  ]
  for (const [name, value, code] of cases) {
    const res = await getMe(app, value)
    t.equal(res.statusCode, 401, `${name}: 401`)
    t.equal(codeOf(res), code, `${name}: ${code}`)
  }
  t.match((await getMe(app, 'sb_secret_abc')).json().message, /sb_publishable_\/sb_secret_ API key is not a user access token/)
  t.equal(issuer.jwksRequests, 0, 'no fetch for any of them')
})

t.test('a legacy anon / service_role key (HS256, iss "supabase") gets a clear 401', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const anon = hs256({ alg: 'HS256', typ: 'JWT' }, { iss: 'supabase', ref: 'abc', role: 'anon', iat: now(), exp: now() + 3600 }, 'legacy-secret')
  const res = await getMe(app, anon)
  rejected(t, res, 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
  t.equal(res.json().message, 'The token algorithm is not allowed: HS256 (a legacy anon or service_role API key is not a user access token)')
  t.equal(issuer.jwksRequests, 0)
})

t.test('rejections are logged at debug with their reason, never the token', async (t) => {
  const issuer = await issuerFor(t)
  const { app, lines, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url }, 'debug')
  await app.inject({ url: '/me', headers: { authorization: `Bearer ${issuer.sign()}` } })
  const token = issuer.sign({ exp: now() - 100 })
  await app.inject({ url: '/me', headers: { authorization: `Bearer ${token}` } })
  const rejection = entries().find((entry) => entry.msg === 'supabase-jwks: token rejected')!
  t.equal(rejection.level, 20)
  t.equal(rejection.code, 'FST_SUPABASE_JWKS_TOKEN_EXPIRED')
  const fetch = entries().find((entry) => entry.msg === 'supabase-jwks: fetching JWKS')!
  t.equal(fetch.level, 30, 'each key fetch at info')
  t.notOk(lines.some((line) => line.includes(token.split('.')[2]!)), 'the token is never logged')
})

t.test('request.user is null when authentication failed, even after an earlier success', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url })
  app.get('/soft', async (request, reply) => {
    await app.authenticate(request, reply)
    const first = request.user.sub
    request.headers.authorization = 'Bearer a.b.c'
    try {
      await app.authenticate(request, reply)
    } catch (err) {
      return { first, user: request.user, code: (err as { code: string }).code }
    }
  })
  const res = await app.inject({ url: '/soft', headers: { authorization: `Bearer ${issuer.sign({ sub: 'u-1' })}` } })
  t.same(res.json(), { first: 'u-1', user: null, code: 'FST_SUPABASE_JWKS_MALFORMED_TOKEN' })
})

t.test('an error verification is not made to give is logged at warn, and still answered 401', async (t) => {
  const logged: string[] = []
  const log = { warn: (_object: object, message: string) => { logged.push(message) } }
  warnIfUnexpected(log, new TypeError('boom'))
  warnIfUnexpected(log, null)
  warnIfUnexpected(log, Object.assign(new Error('a coded error, not ours'), { code: 'FST_JWT_AUTHORIZATION_TOKEN_INVALID' }))
  for (const code of ['FST_SUPABASE_JWKS_UNKNOWN_KID', 'FST_SUPABASE_JWKS_TOKEN_INVALID']) {
    warnIfUnexpected(log, Object.assign(new Error('expected'), { code }))
  }
  t.same(logged, Array(3).fill('supabase-jwks: unexpected error while verifying a token'), 'only the plugin\'s own codes are expected')
  t.equal(toAuthError(new TypeError('boom')).statusCode, 401)
  t.equal(toAuthError(new TypeError('boom')).code, 'FST_SUPABASE_JWKS_TOKEN_INVALID')
})
