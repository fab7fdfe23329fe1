import t from 'tap'
import Fastify from 'fastify'
import { createTestIssuer, generateTestKey, signJwt } from '../lib/testing'
import { appFor, codeOf, getMe, issuerFor } from './fixtures/helpers'

t.test('the issuer serves the JWKS at GoTrue paths with GoTrue headers and counts requests', async (t) => {
  const issuer = await issuerFor(t)
  t.match(issuer.url, /^http:\/\/127\.0\.0\.1:\d+$/)
  t.equal(issuer.issuer, `${issuer.url}/auth/v1`)
  t.equal(issuer.jwksUrl, `${issuer.url}/auth/v1/.well-known/jwks.json`)
  for (const path of ['/auth/v1/.well-known/jwks.json', '/.well-known/jwks.json?x=1']) {
    const res = await fetch(`${issuer.url}${path}`)
    t.equal(res.status, 200)
    t.equal(res.headers.get('cache-control'), 'public, max-age=600')
    t.equal(res.headers.get('content-type'), 'application/json')
    const body = await res.json() as { keys: Array<Record<string, unknown>> }
    t.equal(body.keys.length, 1)
    t.match(body.keys[0], { kid: issuer.currentKey.kid, alg: 'RS256', use: 'sig', key_ops: ['verify'], kty: 'RSA', e: 'AQAB' })
    t.notOk('d' in body.keys[0]!, 'no private part')
  }
  t.equal(issuer.jwksRequests, 2)
  const missing = await fetch(`${issuer.url}/nope`)
  t.equal(missing.status, 404)
  await missing.arrayBuffer()
  t.equal(issuer.jwksRequests, 2, 'other paths are not counted')
})

t.test('tokens carry Supabase claims and header; claims and header can be overridden or removed', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const token = issuer.sign({ email: undefined, role: 'service_role' }, { header: { typ: 'at+jwt' } })
  const [head, body, sig] = token.split('.') as [string, string, string]
  const header = JSON.parse(Buffer.from(head, 'base64url').toString())
  const claims = JSON.parse(Buffer.from(body, 'base64url').toString())
  t.same(header, { alg: 'ES256', kid: issuer.currentKey.kid, typ: 'at+jwt' })
  t.equal(Buffer.from(sig, 'base64url').length, 64, 'ES256 signatures are r||s, 64 bytes')
  t.match(claims, {
    aud: 'authenticated', iss: issuer.issuer, role: 'service_role', aal: 'aal1', is_anonymous: false, phone: ''
  })
  t.notOk('email' in claims)
  for (const claim of ['sub', 'exp', 'iat', 'session_id', 'app_metadata', 'user_metadata', 'amr']) t.ok(claim in claims, claim)
  t.equal(claims.exp - claims.iat, 3600)
})

t.test('keys: add, publish, unpublish, rotate', async (t) => {
  const issuer = await issuerFor(t)
  const first = issuer.currentKey
  const standby = issuer.addKey({ publish: false })
  t.equal(issuer.jwks().keys.length, 1)
  issuer.publish(standby.kid)
  t.same(issuer.jwks().keys.map((key) => key.kid), [first.kid, standby.kid])
  t.equal(issuer.currentKey.kid, first.kid, 'a published standby key does not sign')
  const next = issuer.rotate('ES256')
  t.equal(issuer.currentKey.kid, next.kid)
  t.equal(next.alg, 'ES256')
  t.equal(issuer.keys.length, 3)
  issuer.unpublish(first.kid)
  t.same(issuer.jwks().keys.map((key) => key.kid), [standby.kid, next.kid])
  t.ok(issuer.sign({}, { kid: first.kid }), 'an unpublished key still signs')
  t.throws(() => issuer.sign({}, { kid: 'nope' }), /no test key nope/)
  t.throws(() => issuer.publish('nope'), /no test key nope/)
})

t.test('respondWith answers JWKS requests instead of the issuer', async (t) => {
  const issuer = await issuerFor(t)
  issuer.respondWith((_request, response) => { response.writeHead(503).end(); return true })
  t.equal((await fetch(issuer.jwksUrl)).status, 503)
  issuer.respondWith(() => false)
  t.equal((await fetch(issuer.jwksUrl)).status, 200, 'a responder can pass')
  issuer.respondWith(undefined)
  t.equal((await fetch(issuer.jwksUrl)).status, 200)
  t.equal(issuer.jwksRequests, 3)
})

t.test('signJwt signs any header and payload; generateTestKey makes each kind of key', async (t) => {
  for (const alg of ['RS256', 'PS512', 'ES384', 'ES512', 'EdDSA'] as const) {
    const key = generateTestKey(alg, `kid-${alg}`)
    t.equal(key.jwk.kid, `kid-${alg}`)
    const token = signJwt({ alg, kid: key.kid }, { sub: 'x' }, key.privateKey)
    t.equal(token.split('.').length, 3)
  }
  t.match(generateTestKey().jwk, { alg: 'RS256', kty: 'RSA' })
})

t.test('signJwt signs HS256, HS384 and HS512 with a secret: a string, a Buffer or a secret KeyObject', async (t) => {
  const { createHmac, createSecretKey, timingSafeEqual } = await import('node:crypto')
  const payload = { sub: 'user-1', exp: Math.floor(Date.now() / 1000) + 60 }
  const secrets = { string: 'super-secret-jwt-token-with-at-least-32-characters', buffer: Buffer.from('0123456789abcdef0123456789abcdef') }
  for (const [alg, bytes] of [['HS256', 32], ['HS384', 48], ['HS512', 64]] as const) {
    for (const [kind, secret] of [['string', secrets.string], ['Buffer', secrets.buffer], ['secret KeyObject', createSecretKey(secrets.buffer)]] as const) {
      const token = signJwt({ alg, typ: 'JWT' }, payload, secret)
      const [head, body, signature] = token.split('.') as [string, string, string]
      t.same(JSON.parse(Buffer.from(head, 'base64url').toString()), { alg, typ: 'JWT' }, `${alg} with a ${kind}: the header`)
      t.same(JSON.parse(Buffer.from(body, 'base64url').toString()), payload, `${alg} with a ${kind}: the payload`)
      // the signature is the HMAC of header.payload under the secret's bytes (RFC 7518 §3.2)
      const expected = createHmac(`sha${alg.slice(2)}`, kind === 'string' ? Buffer.from(secrets.string) : secrets.buffer).update(`${head}.${body}`).digest()
      const given = Buffer.from(signature, 'base64url')
      t.equal(given.length, bytes, `${alg} with a ${kind}: ${bytes} bytes`)
      t.ok(timingSafeEqual(given, expected), `${alg} with a ${kind}: the HMAC of the signing input`)
    }
  }
  // an asymmetric algorithm wants a private key: a secret is a mistake, said so
  t.throws(() => signJwt({ alg: 'RS256' }, payload, secrets.string), { name: 'TypeError', message: /RS256 signs with a private KeyObject/ })
  t.throws(() => signJwt({ alg: 'ES256' }, payload, secrets.buffer), { name: 'TypeError' })
})

t.test('an HS256 token from signJwt: refused by default as ALGORITHM_NOT_ALLOWED; with legacyTokens, checked by the issuer\'s Auth', async (t) => {
  const issuer = await issuerFor(t)
  const now = Math.floor(Date.now() / 1000)
  const claims = { sub: 'user-1', aud: 'authenticated', iss: issuer.issuer, exp: now + 600, iat: now, role: 'authenticated' }
  const legacy = signJwt({ alg: 'HS256', typ: 'JWT' }, claims, issuer.legacySecret)
  const forged = signJwt({ alg: 'HS256', typ: 'JWT' }, claims, 'not-the-project-secret')

  const app = await appFor(t, { supabaseUrl: issuer.url })
  for (const token of [legacy, forged]) {
    const response = await getMe(app, token)
    t.equal(response.statusCode, 401)
    t.equal(codeOf(response), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED')
    t.match(response.json().message, /HS256 \(tokens signed with the legacy JWT secret are not accepted\)/)
  }
  t.equal(issuer.userRequests, 0, 'no call to Supabase Auth without the window')

  const until = new Date(Date.now() + 3_600_000).toISOString()
  const migrating = await appFor(t, { supabaseUrl: issuer.url, legacyTokens: { until, apiKey: issuer.apiKey } }, Fastify())
  const accepted = await getMe(migrating, legacy)
  t.equal(accepted.statusCode, 200, 'signed with the project\'s legacy secret: Supabase Auth accepts it')
  t.match(accepted.json(), { sub: 'user-1', iss: issuer.issuer })
  const refused = await getMe(migrating, forged)
  t.equal(refused.statusCode, 401, 'another secret: Supabase Auth refuses it')
  t.equal(codeOf(refused), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.equal(issuer.userRequests, 2)
})

t.test('a fixed port', async (t) => {
  const probe = await createTestIssuer()
  const port = Number(new URL(probe.url).port)
  await probe.close()
  const issuer = await createTestIssuer({ port })
  t.teardown(() => issuer.close())
  t.equal(issuer.url, `http://127.0.0.1:${port}`)
})

t.test('GET /auth/v1/user answers as the gateway and GoTrue do: apikey required, 200 with the user for a genuine legacy token, 401 otherwise', async (t) => {
  const { createHmac } = await import('node:crypto')
  const issuer = await issuerFor(t)
  const user = (headers: Record<string, string>) => fetch(`${issuer.url}/auth/v1/user`, { headers })
  const hmac = (input: string) => `${input}.${createHmac('sha256', issuer.legacySecret).update(input).digest('base64url')}`
  const b64 = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')
  const token = issuer.signLegacy({ sub: 'user-1', email: 'ada@example.com' })
  t.match(JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()), { alg: 'HS256', typ: 'JWT' })
  t.match(await (await user({ authorization: `Bearer ${token}` })).json(), { message: 'No API key found in request' })
  t.equal((await user({ apikey: 'sb_publishable_wrong', authorization: `Bearer ${token}` })).status, 401)
  const ok = await user({ apikey: issuer.apiKey, authorization: `Bearer ${token}` })
  t.equal(ok.status, 200)
  t.match(await ok.json(), { id: 'user-1', email: 'ada@example.com', aud: 'authenticated', role: 'authenticated' })
  const refused: Array<[string, Record<string, string>]> = [
    ['no bearer', { apikey: issuer.apiKey }],
    ['not a JWT', { apikey: issuer.apiKey, authorization: 'Bearer abc' }],
    ['signed with another key', { apikey: issuer.apiKey, authorization: `Bearer ${signJwt({ alg: 'RS256', kid: issuer.currentKey.kid }, { exp: 2e9 }, generateTestKey().privateKey)}` }],
    ['expired', { apikey: issuer.apiKey, authorization: `Bearer ${issuer.signLegacy({ exp: 1 })}` }],
    ['a header that is not JSON', { apikey: issuer.apiKey, authorization: `Bearer ${hmac(`${b64('nope')}.${b64({ exp: 2e9 })}`)}` }],
    ['another alg', { apikey: issuer.apiKey, authorization: `Bearer ${hmac(`${b64({ alg: 'HS512' })}.${b64({ exp: 2e9 })}`)}` }]
  ]
  for (const [name, headers] of refused) {
    const response = await user(headers)
    t.equal(response.status, 401, name)
    t.match(await response.json(), { error_code: 'bad_jwt' }, name)
  }
  t.equal(issuer.userRequests, 3 + refused.length)
  issuer.respondToUserWith((_request, response) => { response.writeHead(500).end(); return true })
  t.equal((await user({ apikey: issuer.apiKey })).status, 500, 'respondToUserWith answers instead')
  issuer.respondToUserWith(undefined)
})

t.test('a client that goes away in the middle of a sign-in does not stop the issuer', async (t) => {
  const { connect } = await import('node:net')
  const issuer = await issuerFor(t)
  const port = Number(new URL(issuer.url).port)
  const socket = connect(port, '127.0.0.1')
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write(`POST /auth/v1/token?grant_type=password HTTP/1.1\r\nhost: 127.0.0.1\r\napikey: ${issuer.apiKey}\r\ncontent-length: 100\r\n\r\n{"email":`)
  for (let i = 0; i < 1000 && issuer.tokenRequests === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.equal(issuer.tokenRequests, 1)
  socket.destroy()
  t.equal((await fetch(issuer.jwksUrl)).status, 200, 'still serving')
})

t.test('supabase-js signs in, refreshes, reads the user and signs out against the issuer', async (t) => {
  const { createClient } = await import('@supabase/supabase-js')
  const { default: WebSocket } = await import('ws')
  const issuer = await issuerFor(t)
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw', user_metadata: { name: 'Ada' } })
  const supabase = createClient(issuer.url, issuer.apiKey, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: WebSocket as never }
  })
  const wrong = await supabase.auth.signInWithPassword({ email: 'ada@example.com', password: 'nope' })
  t.equal(wrong.error?.status, 400)
  t.equal(wrong.error?.code, 'invalid_credentials')
  const { data, error } = await supabase.auth.signInWithPassword({ email: 'ada@example.com', password: 'pw' })
  t.error(error)
  t.equal(data.user?.id, ada.id)
  t.same(data.user?.user_metadata, { name: 'Ada' })
  const claims = JSON.parse(Buffer.from(data.session!.access_token.split('.')[1]!, 'base64url').toString())
  t.match(claims, { sub: ada.id, email: 'ada@example.com', iss: issuer.issuer, aud: 'authenticated', user_metadata: { name: 'Ada' } })
  const got = await supabase.auth.getUser()
  t.equal(got.data.user?.email, 'ada@example.com', 'GET /auth/v1/user with the access token')
  const refreshed = await supabase.auth.refreshSession()
  t.error(refreshed.error)
  t.not(refreshed.data.session?.refresh_token, data.session?.refresh_token, 'refresh tokens rotate')
  const reused = await supabase.auth.refreshSession({ refresh_token: data.session!.refresh_token })
  t.equal(reused.error?.code, 'refresh_token_not_found', 'a used refresh token is refused')
  t.error((await supabase.auth.signOut()).error)
  t.equal(issuer.tokenRequests, 4)
})

t.test('the token endpoint and /user refuse what GoTrue refuses', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const user = issuer.addUser({ email: 'u@example.com', password: 'pw' })
  const post = async (query: string, body: string, apikey = issuer.apiKey) => {
    const response = await fetch(`${issuer.url}/auth/v1/token${query}`, { method: 'POST', headers: { apikey, 'content-type': 'application/json' }, body })
    return { status: response.status, json: async () => await response.json() as Record<string, unknown> }
  }
  t.equal((await post('?grant_type=password', '{}', 'wrong')).status, 401, 'no apikey, no sign-in')
  t.equal((await (await post('?grant_type=magic', '{}')).json()).error_code, 'unsupported_grant_type')
  t.equal((await (await post('?grant_type=password', 'not json')).json()).error_code, 'invalid_credentials')
  t.equal((await (await post('?grant_type=password', '"a string"')).json()).error_code, 'invalid_credentials')
  t.equal((await (await post('?grant_type=password', 'x'.repeat(70_000))).json()).error_code, 'invalid_credentials', 'a body over 64 KiB')
  t.equal((await (await post('?grant_type=refresh_token', '{}')).json()).error_code, 'refresh_token_not_found')

  const session = issuer.session(user, { aal: 'aal2' })
  t.match(session, { token_type: 'bearer', user: { id: user.id, email: 'u@example.com' } })
  t.ok(session.expires_in > 3500 && session.expires_at > Date.now() / 1000)
  const getUser = async (token: string) => {
    const response = await fetch(`${issuer.url}/auth/v1/user`, { headers: { apikey: issuer.apiKey, authorization: `Bearer ${token}` } })
    return { status: response.status, body: await response.json() as Record<string, unknown> }
  }
  t.equal((await getUser(session.access_token)).body.id, user.id)
  t.same((await getUser(issuer.sign({ sub: 'not-a-user', email: 'x@example.com' }))).body,
    { id: 'not-a-user', aud: 'authenticated', role: 'authenticated', email: 'x@example.com' }, 'a token of no added user')
  const [head, body] = session.access_token.split('.')
  const other = issuer.addKey({ publish: false })
  const refused: Array<[string, string]> = [
    ['expired', issuer.sign({ sub: user.id, exp: 1 })],
    ['bad signature', `${head}.${body}.${'A'.repeat(86)}`],
    ['no signature', `${head}.${body}`],
    ['unknown kid', issuer.sign({}, { header: { kid: 'nope' } })],
    ['an unpublished key', issuer.sign({}, { kid: other.kid })],
    ['kid of another alg', issuer.sign({}, { header: { alg: 'ES384' } })],
    ['no JSON', 'abc.def.ghi']
  ]
  for (const [what, token] of refused) t.equal((await getUser(token)).status, 401, what)
})
