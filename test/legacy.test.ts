import t, { type Test } from 'tap'
import { setImmediate as turn, setTimeout as sleep } from 'node:timers/promises'
import { createServer, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import supabaseJwks from '../lib/index'
import { MIN_ACCEPTED } from '../lib/legacy'
import type { TestIssuer } from '../lib/testing'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor, registrationError } from './fixtures/helpers'

const inMinutes = (minutes: number) => new Date(Date.now() + minutes * 60_000)

/** The plugin's options for `issuer` with the legacy window open for an hour (or as `legacy` says). */
function legacyOptions (issuer: TestIssuer, legacy: Partial<supabaseJwks.LegacyTokensOptions> = {}, extra: Partial<supabaseJwks.SupabaseJwksOptions> = {}): supabaseJwks.SupabaseJwksOptions {
  return { supabaseUrl: issuer.url, legacyTokens: { until: inMinutes(60), apiKey: issuer.apiKey, ...legacy }, ...extra }
}

/** A payload segment replaced: the signature no longer matches. */
function tamper (token: string, claims: Record<string, unknown>): string {
  const [head, body, signature] = token.split('.')
  const payload = { ...JSON.parse(Buffer.from(body!, 'base64url').toString()), ...claims }
  return `${head}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${signature}`
}

t.test('without legacyTokens, HS256 is refused exactly as before, with no call to Supabase Auth', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const response = await getMe(app, issuer.signLegacy())
  t.equal(response.statusCode, 401)
  t.match(response.json(), { code: 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', message: /HS256 \(tokens signed with the legacy JWT secret are not accepted\)/ })
  t.equal(issuer.userRequests, 0)
  t.equal(app.supabaseJwks.stats().legacyCalls, undefined, 'no legacy counts without the option')
})

t.test('a legacy token is accepted through Supabase Auth, then served from the token cache: one call', async (t) => {
  const issuer = await issuerFor(t)
  const { app, entries } = await loggedAppFor(t, legacyOptions(issuer), 'info')
  const token = issuer.signLegacy({ email: 'ada@example.com' })
  const first = await getMe(app, token)
  t.equal(first.statusCode, 200)
  t.match(first.json(), { email: 'ada@example.com', aud: 'authenticated', iss: issuer.issuer })
  t.equal((await getMe(app, token)).statusCode, 200)
  t.equal(issuer.userRequests, 1, 'Auth asked once; the second request came from the token cache')
  t.match(app.supabaseJwks.stats(), { legacyCalls: 1, legacyAccepted: 2, legacyRefused: 0, legacyUnavailable: 0, cachedTokens: 1 })
  t.match(await app.supabaseJwks.verify(token), { email: 'ada@example.com' }, 'verify() takes the same path')
  t.equal(issuer.userRequests, 1)
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'asymmetric tokens verify as always')
  t.equal(issuer.jwksRequests, 1)
  const start = entries().find((entry) => /legacy HS256 tokens are accepted through Supabase Auth for 1 h more/.test(entry.msg))
  t.ok(start, 'a warning at start says how long the window stays open')
  t.equal(start?.level, 40)
})

t.test('concurrent requests with one legacy token share one call; a token without kid or with one both work', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, legacyOptions(issuer))
  const token = issuer.signLegacy({}, { header: { kid: 'legacy-kid' } })
  const answers = await Promise.all(Array.from({ length: 10 }, () => getMe(app, token)))
  t.same(answers.map((answer) => answer.statusCode), Array(10).fill(200))
  t.equal(issuer.userRequests, 1, 'one call in flight per distinct token')
  t.equal((await getMe(app, issuer.signLegacy())).statusCode, 200, 'no kid')
})

t.test('a tampered legacy token is refused by Supabase Auth: 401 TOKEN_INVALID, never cached', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, legacyOptions(issuer))
  const forged = tamper(issuer.signLegacy(), { role: 'service_role' })
  for (let i = 0; i < 2; i++) {
    const response = await getMe(app, forged)
    t.equal(response.statusCode, 401)
    t.match(response.json(), { code: 'FST_SUPABASE_JWKS_TOKEN_INVALID', message: /Supabase Auth did not accept the legacy token/ })
    t.match(response.headers['www-authenticate'], /error="invalid_token"/)
  }
  t.equal(issuer.userRequests, 2, 'a refused token is never cached')
  t.match(app.supabaseJwks.stats(), { legacyCalls: 2, legacyRefused: 2, legacyAccepted: 0, cachedTokens: 0 })
})

t.test('legacy tokens that fail a cheap check are refused with no call', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, legacyOptions(issuer))
  const cases: Array<[string, string, string]> = [
    ['expired', issuer.signLegacy({ exp: Math.floor(Date.now() / 1000) - 60 }), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED'],
    ['a foreign issuer', issuer.signLegacy({ iss: 'https://evil.example.com/auth/v1' }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['another audience', issuer.signLegacy({ aud: 'some-oauth-client' }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['the legacy anon key', issuer.signLegacy({ iss: 'supabase', role: 'anon', sub: undefined, aud: undefined }), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED'],
    ['no sub', issuer.signLegacy({ sub: undefined }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['a short signature', issuer.signLegacy().replace(/\.[^.]*$/, `.${'A'.repeat(40)}`), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['crit', issuer.signLegacy({}, { header: { crit: ['exp'] } }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['HS512', issuer.signLegacy({}, { header: { alg: 'HS512' } }), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED'],
    ['alg none', issuer.signLegacy({}, { header: { alg: 'none' } }).replace(/\.[^.]*$/, '.'), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED']
  ]
  for (const [name, token, code] of cases) {
    const response = await getMe(app, token)
    t.equal(response.statusCode, 401, name)
    t.equal(codeOf(response), code, name)
  }
  t.equal(issuer.userRequests, 0, 'none of them cost a call')
})

t.test('Supabase Auth failing, unreachable, slow, redirecting or too large: 503 AUTH_UNAVAILABLE with Retry-After, never its answer', async (t) => {
  const issuer = await issuerFor(t)
  const { app, entries } = await loggedAppFor(t, legacyOptions(issuer, {}, { timeout: 0.3, maxResponseSize: 1024 }), 'warn')
  const held: ServerResponse[] = []
  t.teardown(() => { for (const response of held) response.destroy() })
  const responders: Array<[string, (response: ServerResponse) => void]> = [
    ['500', (response) => { response.writeHead(500, { 'content-type': 'text/plain' }).end('database password is hunter2') }],
    ['a redirect', (response) => { response.writeHead(302, { location: `${issuer.url}/elsewhere` }).end() }],
    ['not JSON', (response) => { response.writeHead(200, { 'content-type': 'text/html' }).end('<html>') }],
    ['too large', (response) => { response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: 'x', pad: 'x'.repeat(4096) })) }],
    ['no answer', (response) => { held.push(response) }]
  ]
  for (const [name, respond] of responders) {
    issuer.respondToUserWith((_request, response) => { respond(response); return true })
    const response = await getMe(app, issuer.signLegacy())
    t.equal(response.statusCode, 503, name)
    t.equal(codeOf(response), 'FST_SUPABASE_JWKS_AUTH_UNAVAILABLE', name)
    t.equal(response.headers['retry-after'], '1', name)
    t.notMatch(response.body, /hunter2|html/, `${name}: nothing of Auth's answer reaches the client`)
  }
  t.equal(issuer.userRequests, 5, 'the redirect was not followed')
  t.equal(app.supabaseJwks.stats().legacyUnavailable, 5)
  t.match(entries().filter((entry) => entry.msg === 'supabase-jwks: Supabase Auth could not check a legacy token').map((entry) => entry.status ?? entry.reason), [
    500, 302, 200, /./, /./
  ])
  issuer.respondToUserWith(undefined)
  t.equal((await getMe(app, issuer.signLegacy())).statusCode, 200, 'Auth back: accepted again')
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'asymmetric tokens never needed Auth')
})

t.test('Auth refused at the network level: 503, logged with its code', async (t) => {
  const issuer = await issuerFor(t)
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const port = (closed.address() as AddressInfo).port
  await new Promise((resolve) => closed.close(resolve))
  const { app, entries } = await loggedAppFor(t, legacyOptions(issuer, { userUrl: `http://127.0.0.1:${port}/auth/v1/user` }), 'warn')
  const response = await getMe(app, issuer.signLegacy())
  t.equal(response.statusCode, 503)
  t.equal(codeOf(response), 'FST_SUPABASE_JWKS_AUTH_UNAVAILABLE')
  t.equal(entries().find((entry) => entry.msg === 'supabase-jwks: Supabase Auth could not check a legacy token')?.code, 'ECONNREFUSED')
})

t.test('Auth answering 403 refuses the token; 200 for another user refuses it; a refused apikey is a 503 that says so', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, legacyOptions(issuer))
  issuer.respondToUserWith((_request, response) => {
    response.writeHead(403, { 'content-type': 'application/json' }).end('{"code":403,"error_code":"session_not_found","msg":"Session from session_id claim in JWT does not exist"}')
    return true
  })
  t.equal(codeOf(await getMe(app, issuer.signLegacy())), 'FST_SUPABASE_JWKS_TOKEN_INVALID', '403: a logged-out session')
  issuer.respondToUserWith((_request, response) => { response.writeHead(401, { 'content-type': 'text/plain' }).end('Unauthorized'); return true })
  t.equal(codeOf(await getMe(app, issuer.signLegacy())), 'FST_SUPABASE_JWKS_TOKEN_INVALID', 'a 401 that is not the gateway\'s apikey answer')
  issuer.respondToUserWith((_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"someone-else"}')
    return true
  })
  const other = await getMe(app, issuer.signLegacy())
  t.match(other.json(), { code: 'FST_SUPABASE_JWKS_TOKEN_INVALID', message: /another user/ })
  t.equal(app.supabaseJwks.stats().legacyRefused, 3)
  issuer.respondToUserWith(undefined)
  const { app: wrongKey, entries } = await loggedAppFor(t, legacyOptions(issuer, { apiKey: 'sb_publishable_wrong' }), 'warn')
  const refused = await getMe(wrongKey, issuer.signLegacy())
  t.equal(refused.statusCode, 503, 'the gateway refusing the apikey is a misconfiguration, not a bad token')
  t.equal(wrongKey.supabaseJwks.stats().legacyRefused, 0)
  t.match(entries().find((entry) => entry.msg === 'supabase-jwks: Supabase Auth could not check a legacy token'),
    { status: 401, reason: /refused the apiKey: check legacyTokens.apiKey/ })
})

t.test('a flood of random HS256 tokens: calls stay under the caps, the rest get 503, asymmetric tokens keep verifying', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, legacyOptions(issuer, { maxCallsPerSecond: 5, maxConcurrentCalls: 2 }))
  const good = issuer.sign()
  t.equal((await getMe(app, good)).statusCode, 200)
  const started = Date.now()
  const flood = Array.from({ length: 60 }, (_, i) => tamper(issuer.signLegacy(), { n: i }))
  const answers = await Promise.all([...flood.map((token) => getMe(app, token)), ...Array.from({ length: 10 }, () => getMe(app, good))])
  const elapsed = (Date.now() - started) / 1000
  const codes = answers.slice(0, 60).map(codeOf)
  t.notOk(codes.includes(undefined as unknown as string) || answers.slice(0, 60).some((answer) => answer.statusCode === 200), 'no forged token accepted')
  t.ok(issuer.userRequests <= 2, `at most maxConcurrentCalls calls at once (${issuer.userRequests})`)
  t.ok(issuer.userRequests <= 5 + Math.ceil(elapsed * 5), 'within the rate cap')
  t.ok(codes.filter((code) => code === 'FST_SUPABASE_JWKS_AUTH_UNAVAILABLE').length >= 55, 'the rest: 503')
  t.same(answers.slice(60).map((answer) => answer.statusCode), Array(10).fill(200), 'asymmetric tokens verified meanwhile')
  // sequentially now: the rate cap (5 a second) is what refuses
  const before = issuer.userRequests
  const sequential: string[] = []
  for (let i = 0; i < 12; i++) sequential.push(codeOf(await getMe(app, tamper(issuer.signLegacy(), { m: i }))))
  const calls = issuer.userRequests - before
  t.ok(calls <= 5 + Math.ceil(((Date.now() - started) / 1000) * 5), `rate cap holds (${calls} calls)`)
  t.ok(sequential.includes('FST_SUPABASE_JWKS_AUTH_UNAVAILABLE'), 'past the rate cap: 503')
  t.ok(sequential.includes('FST_SUPABASE_JWKS_TOKEN_INVALID'), 'within it: Auth refused them')
})

t.test('the window: until is required, at most 7 days ahead, refused once passed; passing while running turns HS256 off', async (t) => {
  const issuer = await issuerFor(t)
  const base = { supabaseUrl: issuer.url }
  const cases: Array<[string, unknown, RegExp]> = [
    ['not an object', 'yes', /legacyTokens must be an object/],
    ['no until', { apiKey: issuer.apiKey }, /legacyTokens.until is required/],
    ['until not a date', { until: 'next week', apiKey: issuer.apiKey }, /legacyTokens.until is required/],
    ['until passed', { until: '2026-01-01T00:00:00Z', apiKey: issuer.apiKey }, /has passed: the migration window is over/],
    ['until a Date in the past', { until: new Date(Date.now() - 1000), apiKey: issuer.apiKey }, /migration window is over/],
    ['until too far', { until: inMinutes(8 * 24 * 60), apiKey: issuer.apiKey }, /more than 7 days ahead/],
    ['no apiKey', { until: inMinutes(60) }, /legacyTokens.apiKey is required/],
    ['a secret key', { until: inMinutes(60), apiKey: 'sb_secret_abc' }, /is a secret key: use the publishable/],
    ['a key read with its newline', { until: inMinutes(60), apiKey: `${issuer.apiKey}\n` }, /a character a header cannot carry: give the key alone/],
    ['the secret', { until: inMinutes(60), apiKey: issuer.apiKey, secret: 'x' }, /never takes the secret/],
    ['an unknown member', { until: inMinutes(60), apiKey: issuer.apiKey, jwtSecret: 'x' }, /unknown option legacyTokens.jwtSecret/],
    ['a bad rate', { until: inMinutes(60), apiKey: issuer.apiKey, maxCallsPerSecond: 0 }, /maxCallsPerSecond must be an integer/],
    ['userUrl plain http', { until: inMinutes(60), apiKey: issuer.apiKey, userUrl: 'http://auth.example.com/user' }, /plain http on a non-loopback host/],
    ['userUrl credentials', { until: inMinutes(60), apiKey: issuer.apiKey, userUrl: 'https://a:b@auth.example.com/user' }, /must not carry credentials/]
  ]
  for (const [name, legacyTokens, message] of cases) {
    const err = await registrationError({ ...base, legacyTokens })
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', name)
    t.match(err.message, message, name)
  }
  t.match((await registrationError({ jwksUrl: issuer.jwksUrl, issuer: issuer.issuer, legacyTokens: { until: inMinutes(60), apiKey: issuer.apiKey } })).message,
    /userUrl is required with jwksUrl alone/)
  t.match((await registrationError({ supabaseUrl: issuer.url, algorithms: ['HS256'] })).message, /algorithm HS256 is refused/, 'HS256 in algorithms stays refused')
  const selfHosted = await appFor(t, { jwksUrl: issuer.jwksUrl, issuer: issuer.issuer, legacyTokens: { until: inMinutes(60), apiKey: issuer.apiKey, userUrl: `${issuer.issuer}/user` } })
  t.equal((await getMe(selfHosted, issuer.signLegacy())).statusCode, 200, 'a self-hosted GoTrue with userUrl')

  const { app, entries } = await loggedAppFor(t, legacyOptions(issuer, { until: new Date(Date.now() + 1500).toISOString() }), 'warn')
  const token = issuer.signLegacy()
  t.equal((await getMe(app, token)).statusCode, 200, 'inside the window')
  t.match(entries()[0], { level: 40, msg: /for 1 min more/ })
  await sleep(1700)
  const after = await getMe(app, token)
  t.equal(after.statusCode, 401, 'past until, even the cached token is refused')
  t.equal(codeOf(after), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED')
  t.equal(issuer.userRequests, 2, 'no call once the window is over')
  t.ok(entries().some((entry) => /legacy-token window is over: HS256 tokens are refused now/.test(entry.msg)), 'the end is logged')
})

t.test('the reminder says the time left in hours or days', async (t) => {
  const issuer = await issuerFor(t)
  const hours = await loggedAppFor(t, legacyOptions(issuer, { until: inMinutes(5 * 60) }), 'warn')
  t.match(hours.entries()[0]?.msg, /for 5 h more/)
  const days = await loggedAppFor(t, legacyOptions(issuer, { until: inMinutes(6 * 24 * 60 + 3 * 60) }), 'warn')
  t.match(days.entries()[0]?.msg, /for 6 days 3 h more/)
})

t.test('algorithm confusion with legacyTokens on: an HS256 token keyed with the public key is refused by Supabase Auth', async (t) => {
  const { createHmac } = await import('node:crypto')
  const issuer = await issuerFor(t)
  const app = await appFor(t, legacyOptions(issuer))
  const pem = issuer.currentKey.publicKey.export({ type: 'spki', format: 'pem' })
  const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')
  const now = Math.floor(Date.now() / 1000)
  const input = `${b64({ alg: 'HS256', kid: issuer.currentKey.kid, typ: 'JWT' })}.${b64({ sub: 'attacker', aud: 'authenticated', iss: issuer.issuer, exp: now + 600, role: 'service_role' })}`
  const forged = `${input}.${createHmac('sha256', pem).update(input).digest('base64url')}`
  const response = await getMe(app, forged)
  t.equal(response.statusCode, 401)
  t.equal(codeOf(response), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.equal(issuer.userRequests, 1)
  t.equal(issuer.jwksRequests, 0, 'no JWKS fetch either')
})

t.test('a genuine legacy token the token cache does not keep still costs one call, not one per request', async (t) => {
  const issuer = await issuerFor(t)
  const big = await appFor(t, legacyOptions(issuer))
  const large = issuer.signLegacy({ user_metadata: { bio: 'x'.repeat(5000) } })
  for (let i = 0; i < 3; i++) t.equal((await getMe(big, large)).statusCode, 200, 'over 4 KiB: not in the token cache')
  t.equal(issuer.userRequests, 1)
  t.equal(big.supabaseJwks.stats().cachedTokens, 0)
  // claims of more than 128 members (counted once, before the call: not again after it, when only the top is left to freeze)
  const bushy = issuer.signLegacy({ user_metadata: { list: Array.from({ length: 70 }, () => ({})) } })
  t.ok(bushy.length < 4096)
  for (let i = 0; i < 2; i++) t.equal((await getMe(big, bushy)).statusCode, 200, 'many members: not in the token cache')
  t.equal(big.supabaseJwks.stats().cachedTokens, 0)
  t.equal(issuer.userRequests, 2, 'one call for it all the same')
  const off = await appFor(t, legacyOptions(issuer, {}, { tokenCache: 0 }))
  const token = issuer.signLegacy()
  for (let i = 0; i < 3; i++) t.equal((await getMe(off, token)).statusCode, 200, 'tokenCache: 0')
  t.equal(issuer.userRequests, 3)
  t.equal(off.supabaseJwks.stats().legacyAccepted, 3)
  const deep = issuer.signLegacy({ user_metadata: JSON.parse('{"a":'.repeat(40) + '1' + '}'.repeat(40)) })
  t.match((await getMe(off, deep)).json(), { code: 'FST_SUPABASE_JWKS_TOKEN_INVALID', message: /nested deeper/ })
  t.equal(issuer.userRequests, 3, 'claims nested too deep: refused with no call')
  t.equal(off.supabaseJwks.stats().legacyAccepted, 3)
})

t.test('a call cap reached is logged at warn, at most once per 10 s', async (t) => {
  const issuer = await issuerFor(t)
  const { app, entries } = await loggedAppFor(t, legacyOptions(issuer, { maxCallsPerSecond: 1 }), 'warn')
  const codes = []
  for (let i = 0; i < 4; i++) codes.push(codeOf(await getMe(app, tamper(issuer.signLegacy(), { i }))))
  t.same(codes, ['FST_SUPABASE_JWKS_TOKEN_INVALID', ...Array(3).fill('FST_SUPABASE_JWKS_AUTH_UNAVAILABLE')])
  const warnings = entries().filter((entry) => /too many legacy token checks a second: legacy tokens get 503; raise legacyTokens.maxCallsPerSecond/.test(entry.msg))
  t.equal(warnings.length, 1)
  t.match(warnings[0], { maxCallsPerSecond: 1, legacyUnavailable: 1 })
})

t.test('until passing during a call: the token Auth accepted is refused all the same', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, legacyOptions(issuer, { until: new Date(Date.now() + 400) }))
  issuer.respondToUserWith((request, response) => {
    // Auth accepts, but only after until has passed
    const sub = JSON.parse(Buffer.from(String(request.headers.authorization).split('.')[1]!, 'base64url').toString()).sub
    setTimeout(() => { response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: sub })) }, 600)
    return true
  })
  const token = issuer.signLegacy()
  const response = await getMe(app, token)
  t.equal(issuer.userRequests, 1)
  t.equal(codeOf(response), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', 'past until when the answer came')
  t.equal(app.supabaseJwks.stats().legacyAccepted, 0)
  t.equal(codeOf(await getMe(app, token)), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', 'and after: refused without a call')
  t.equal(issuer.userRequests, 1)
})

t.test('until needs an offset; a plain-http userUrl allowed by allowInsecureJwksUrl is logged at warn', async (t) => {
  const issuer = await issuerFor(t)
  const local = new Date(Date.now() + 3600_000).toISOString().slice(0, 19)
  const err = await registrationError(legacyOptions(issuer, { until: local }))
  t.match(err.message, /an ISO 8601 time with its offset/)
  const { entries } = await loggedAppFor(t, legacyOptions(issuer, { userUrl: 'http://auth.internal:9999/user' }, { allowInsecureJwksUrl: true }), 'warn')
  t.match(entries().find((entry) => entry.msg === 'supabase-jwks: legacy tokens are checked over plain http'), { userUrl: 'http://auth.internal:9999/user' })
})

t.test('the memory of accepted legacy tokens is bounded: the oldest is forgotten first', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, legacyOptions(issuer, { maxCallsPerSecond: 10_000, maxConcurrentCalls: 1000 }, { tokenCache: 0 }))
  const tokens = Array.from({ length: MIN_ACCEPTED + 1 }, (_, i) => issuer.signLegacy({ sub: `user-${i}` }))
  for (let i = 0; i < tokens.length; i += 100) {
    const batch = await Promise.all(tokens.slice(i, i + 100).map((token) => app.supabaseJwks.verify(token).then(() => 200, () => 401)))
    t.notOk(batch.includes(401), `batch ${i / 100}`)
  }
  t.equal(issuer.userRequests, MIN_ACCEPTED + 1)
  await app.supabaseJwks.verify(tokens.at(-1)!)
  t.equal(issuer.userRequests, MIN_ACCEPTED + 1, 'the newest is remembered')
  await app.supabaseJwks.verify(tokens[0]!)
  t.equal(issuer.userRequests, MIN_ACCEPTED + 2, 'the oldest was forgotten: one more call')
})

/**
 * A stand-in for Supabase Auth's `GET /auth/v1/user` on 127.0.0.1 that answers each token's own `sub`,
 * keeping connections alive, and destroys the socket of each request `reset` picks (its ordinal, from 1,
 * and whether it came on a connection already used): the client sees its kept-alive connection closed
 * under the request, as after a server or load balancer dropped it while idle.
 */
async function resettingAuth (t: Test, reset: (request: { ordinal: number, reused: boolean }) => boolean) {
  const server = createServer({ keepAliveTimeout: 60_000 })
  const served = new WeakSet<object>()
  const seen: Array<{ reused: boolean, reset: boolean }> = []
  server.on('request', (request, response) => {
    const reused = served.has(request.socket)
    served.add(request.socket)
    const destroy = reset({ ordinal: seen.length + 1, reused })
    seen.push({ reused, reset: destroy })
    if (destroy) return request.socket.destroy()
    const token = String(request.headers.authorization).slice('Bearer '.length)
    const { sub } = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { sub: string }
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: sub }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve) }))
  return { userUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/auth/v1/user`, seen }
}

t.test('a kept-alive connection to Auth reset under a call: tried once more at once, on a new connection; reset again, a 503 with no third try', async (t) => {
  const issuer = await issuerFor(t)
  // the second request (on the first connection, kept alive) is reset; so are the fourth (on the second one, kept alive) and the fifth
  const auth = await resettingAuth(t, ({ ordinal }) => ordinal === 2 || ordinal === 4 || ordinal === 5)
  const { app, entries } = await loggedAppFor(t, legacyOptions(issuer, { userUrl: auth.userUrl }, { tokenCache: 0 }), 'warn')
  t.equal((await getMe(app, issuer.signLegacy({ sub: 'user-1' }))).statusCode, 200, 'a first call: its connection kept alive')
  t.same(auth.seen, [{ reused: false, reset: false }])
  // a turn of the event loop: undici puts the connection back in its pool once the answer is read
  await turn()

  const second = await getMe(app, issuer.signLegacy({ sub: 'user-2' }))
  t.equal(second.statusCode, 200, 'accepted: the call tried again on a new connection')
  t.same(auth.seen.slice(1), [{ reused: true, reset: true }, { reused: false, reset: false }], 'two requests: the reset one and its new try')
  t.match(app.supabaseJwks.stats(), { legacyCalls: 2, legacyAccepted: 2, legacyUnavailable: 0 })
  await turn()

  const third = await getMe(app, issuer.signLegacy({ sub: 'user-3' }))
  t.equal(third.statusCode, 503, 'reset twice: unavailable')
  t.equal(codeOf(third), 'FST_SUPABASE_JWKS_AUTH_UNAVAILABLE')
  t.equal(auth.seen.length, 5, 'two requests for that call, no third try')
  t.match(entries().filter((entry) => entry.msg === 'supabase-jwks: Supabase Auth could not check a legacy token'), [{ code: /ECONNRESET|EPIPE|UND_ERR_SOCKET/ }])
})
