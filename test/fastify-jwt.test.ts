import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import fastifyJwt, { type FastifyJWTOptions, type JWT } from '@fastify/jwt'
import fastifyCookie from '@fastify/cookie'
import fp from 'fastify-plugin'
import { fastifyJwtOptions } from '../lib/index'
import { signInput, signJwt, type TestIssuer } from '../lib/testing'
import { codeOf, issuerFor } from './fixtures/helpers'
import { b64, hmac, parts } from './fixtures/craft'

/*
 * @fastify/jwt registered with fastifyJwtOptions(): the real @fastify/jwt, the real plugin, a real
 * JWKS server on 127.0.0.1. An app on `secret: SUPABASE_JWT_SECRET` changes its registration only.
 */

const now = () => Math.floor(Date.now() / 1000)

/** What `app.register(fastifyJwt, ...)` is given: options, or (as fastifyJwtOptions returns) a function of the instance. */
type Registration = FastifyJWTOptions | ((instance: FastifyInstance) => FastifyJWTOptions)
type Response = Awaited<ReturnType<FastifyInstance['inject']>>

/**
 * An app as @fastify/jwt's README writes one: its own `authenticate` decorator around
 * `request.jwtVerify()`, routes reading `request.user`. Only its registration options come from
 * outside; `routes` adds routes before it starts.
 */
async function appOf (t: Test, registration: Registration, routes?: (app: FastifyInstance) => void): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyJwt, registration as FastifyJWTOptions)
  app.decorate('authenticate', async function authenticate (request: FastifyRequest, reply: FastifyReply) {
    try {
      await request.jwtVerify()
    } catch (err) {
      reply.send(err)
    }
  })
  app.get('/me', { onRequest: [app.authenticate] }, async (request) => request.user)
  app.get('/whoami', async (request) => {
    await request.jwtVerify()
    return { sub: request.user.sub }
  })
  routes?.(app)
  await app.ready()
  return app
}

/** `GET url`, with `Authorization: Bearer <token>` when a token is given, and any other headers. */
function get (app: FastifyInstance, url: string, token?: string, headers: Record<string, string> = {}): Promise<Response> {
  return app.inject({ method: 'GET', url, headers: token === undefined ? headers : { authorization: `Bearer ${token}`, ...headers } })
}

const INVALID = /^Bearer realm="api", error="invalid_token", error_description="[^"]+"$/

/** Asserts a refusal: status, code and, for the plugin's own 401/403, the `WWW-Authenticate` challenge. */
function refused (t: Test, res: Response, status: number, code: string, challenge?: RegExp | string) {
  t.equal(res.statusCode, status, `${code}: ${status}`)
  t.equal(codeOf(res), code, code)
  if (challenge !== undefined) t.match(res.headers['www-authenticate'], challenge, `${code}: WWW-Authenticate`)
  t.notMatch(res.body, /eyJ/, 'the answer carries no token')
}

/** The registration options fastifyJwtOptions gives @fastify/jwt, kept for a test to call its functions. */
function captured (make: (instance: FastifyInstance) => FastifyJWTOptions) {
  const seen: { options?: FastifyJWTOptions } = {}
  return {
    register: (instance: FastifyInstance) => (seen.options = make(instance)),
    get options () { return seen.options! }
  }
}

/** The key function fastifyJwtOptions hands @fastify/jwt (its `secret.public`). */
type KeyFunction = (request: FastifyRequest, decoded: unknown) => Promise<string>

t.test('an app on `secret` switches to the JWKS with only its registration changed', async (t) => {
  const issuer = await issuerFor(t)
  const user = '9f1c0bd4-1b1e-4a63-9d6b-0d0c3f8b1d11'

  /** The same assertions against either registration. */
  async function works (t: Test, app: FastifyInstance, token: string) {
    const me = await get(app, '/me', token)
    t.equal(me.statusCode, 200, 'the app\'s authenticate lets the token in')
    t.match(me.json(), { sub: user, email: 'ada@example.com', role: 'authenticated', aud: 'authenticated', iss: issuer.issuer },
      'request.user holds the claims')
    const whoami = await get(app, '/whoami', token)
    t.same([whoami.statusCode, whoami.json()], [200, { sub: user }], 'request.user.sub after request.jwtVerify()')
    refused(t, await get(app, '/me'), 401, 'FST_JWT_NO_AUTHORIZATION_IN_HEADER')
    refused(t, await get(app, '/whoami'), 401, 'FST_JWT_NO_AUTHORIZATION_IN_HEADER')
  }

  // before: the project's legacy JWT secret (SUPABASE_JWT_SECRET, 32+ characters) and HS256 tokens
  t.ok(issuer.legacySecret.length >= 32)
  const legacyToken = issuer.signLegacy({ sub: user, email: 'ada@example.com' })
  await t.test('with secret', async (t) => {
    const app = await appOf(t, { secret: issuer.legacySecret })
    await works(t, app, legacyToken)
    t.equal(issuer.jwksRequests, 0, 'no JWKS in this mode')
  })
  // after: the one line
  await t.test('with fastifyJwtOptions({ supabaseUrl })', async (t) => {
    const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url }))
    t.equal(issuer.jwksRequests, 1, 'the keys were fetched at start')
    await works(t, app, issuer.sign({ sub: user, email: 'ada@example.com' }))
    t.equal(issuer.jwksRequests, 1, 'and held')
    const res = await get(app, '/me', legacyToken)
    refused(t, res, 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
    t.equal(res.json().message, 'The token algorithm is not allowed: HS256 (tokens signed with the legacy JWT secret are not accepted)')
    refused(t, await get(app, '/whoami', legacyToken), 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
  })
})

/**
 * The hostile and broken tokens answered before the signature, each with the code and challenge
 * the plugin answers it with.
 */
function refusals (issuer: TestIssuer, maxTokenLength: number): Array<[name: string, token: string, code: string]> {
  const key = issuer.currentKey
  const { head, body, sig, claims } = parts(issuer.sign())
  const pem = key.publicKey.export({ type: 'spki', format: 'pem' }) as string
  // a 2048-bit RSA signature is 342 characters: the last one's 4 low bits are unused (0 when canonical),
  // and the next character of the alphabet decodes to the same bytes
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
  const loose = `${sig.slice(0, -1)}${alphabet[alphabet.indexOf(sig.at(-1)!) + 1]}`
  const arrayPayload = `${head}.${b64([1])}`
  return [
    ['expired', issuer.sign({ exp: now() - 60 }), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED'],
    ['nbf in the future', issuer.sign({ nbf: now() + 600 }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['wrong aud', issuer.sign({ aud: 'my-oauth-client-id' }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['wrong iss', issuer.sign({ iss: 'https://evil.supabase.co/auth/v1' }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['missing sub', issuer.sign({ sub: undefined }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['alg RS384 (not allowed)', signJwt({ alg: 'RS384', kid: key.kid, typ: 'JWT' }, claims, key.privateKey), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED'],
    ['alg none', `${b64({ alg: 'none', kid: key.kid, typ: 'JWT' })}.${body}.`, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED'],
    ['HS256 with the public key as secret', hmac('HS256', { alg: 'HS256', kid: key.kid, typ: 'JWT' }, claims, pem), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED'],
    ['unknown kid', issuer.sign({}, { header: { kid: 'forged-kid' } }), 'FST_SUPABASE_JWKS_UNKNOWN_KID'],
    ['crit header', issuer.sign({}, { header: { crit: ['x-ext'], 'x-ext': true } }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['exp a string', issuer.sign({ exp: String(now() + 600) }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['aud a number', issuer.sign({ aud: 42 }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['iss an array', issuer.sign({ iss: [issuer.issuer] }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['payload [1]', `${arrayPayload}.${signInput('RS256', key.privateKey, arrayPayload)}`, 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['signature with bad characters', `${head}.${body}.${sig.slice(0, 20)}!${sig.slice(21)}`, 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'],
    ['signature not canonical', `${head}.${body}.${loose}`, 'FST_SUPABASE_JWKS_MALFORMED_TOKEN'],
    ['over maxTokenLength', issuer.sign({ padding: 'x'.repeat(maxTokenLength) }), 'FST_SUPABASE_JWKS_MALFORMED_TOKEN']
  ]
}

/** Where a naive @fastify/jwt setup (a static key, or a key function ignoring `kid`) answers 500: fast-jwt errors @fastify/jwt does not map. */
const NAIVE_500 = ['nbf in the future', 'alg RS384 (not allowed)', 'HS256 with the public key as secret', 'crit header', 'exp a string',
  'aud a number', 'payload [1]', 'signature with bad characters']

t.test('every refusal before the signature is the plugin\'s, with its challenge, and never a 500 (where a naive setup answers 500)', async (t) => {
  const issuer = await issuerFor(t)
  const pem = issuer.currentKey.publicKey.export({ type: 'spki', format: 'pem' }) as string
  const strict = { algorithms: ['RS256'], allowedIss: issuer.issuer, allowedAud: 'authenticated', requiredClaims: ['exp', 'sub'] }
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url, maxTokenLength: 2048 }))
  const naive = {
    'a static key': await appOf(t, { secret: { public: pem }, verify: strict } as FastifyJWTOptions),
    'a key function': await appOf(t, { secret: async () => pem, verify: strict } as unknown as FastifyJWTOptions)
  }
  const cases = refusals(issuer, 2048)
  t.equal(parts(issuer.sign()).sig.length, 342, 'the non-canonical spelling is of a 342-character signature')
  t.equal(cases.filter(([name]) => NAIVE_500.includes(name)).length, NAIVE_500.length)
  for (const [name, token, code] of cases) {
    for (const url of ['/me', '/whoami']) {
      const res = await get(app, url, token)
      t.ok(res.statusCode < 500, `${name} (${url}): ${res.statusCode}`)
      refused(t, res, 401, code, INVALID)
    }
    for (const [setup, other] of Object.entries(naive)) {
      const res = await get(other, '/me', token)
      if (NAIVE_500.includes(name)) t.equal(res.statusCode, 500, `${name}: 500 from @fastify/jwt with ${setup}`)
      else t.not(res.statusCode, 500, `${name}: no 500 from @fastify/jwt with ${setup} either`)
    }
  }
  t.equal(issuer.jwksRequests, 2, 'the warm start and the unknown kid\'s fetch: nothing else refused here cost a fetch')
})

t.test('what @fastify/jwt decides itself keeps its own codes', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url }))
  refused(t, await get(app, '/me'), 401, 'FST_JWT_NO_AUTHORIZATION_IN_HEADER')
  refused(t, await get(app, '/me', undefined, { authorization: 'Basic dXNlcjpwYXNz' }), 401, 'FST_JWT_NO_AUTHORIZATION_IN_HEADER')
  refused(t, await get(app, '/me', undefined, { authorization: 'Bearer a b' }), 400, 'FST_JWT_BAD_REQUEST')
  refused(t, await get(app, '/me', undefined, { authorization: 'Bearer ' }), 400, 'FST_JWT_BAD_REQUEST')
  const { head, body, sig } = parts(issuer.sign())
  const flipped = `${head}.${body}.${sig.slice(0, 10)}${sig[10] === 'A' ? 'B' : 'A'}${sig.slice(11)}`
  const res = await get(app, '/me', flipped)
  refused(t, res, 401, 'FST_JWT_AUTHORIZATION_TOKEN_INVALID')
  t.equal(res.json().message, 'Authorization token is invalid: The token signature is invalid.')
  const tampered = `${head}.${b64({ ...parts(issuer.sign()).claims, role: 'service_role' })}.${sig}`
  refused(t, await get(app, '/me', tampered), 401, 'FST_JWT_AUTHORIZATION_TOKEN_INVALID')
  t.equal((await get(app, '/me', issuer.sign())).statusCode, 200, 'a good token still passes')
})

t.test('keys: a rotation verifies after one fetch, by kid', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url }))
  const before = issuer.sign()
  t.equal((await get(app, '/me', before)).statusCode, 200)
  t.equal(issuer.jwksRequests, 1)
  const next = issuer.rotate()
  const after = issuer.sign()
  t.equal(parts(after).header.kid, next.kid)
  t.equal((await get(app, '/me', after)).statusCode, 200, 'the new kid verifies')
  t.equal(issuer.jwksRequests, 2, 'after one fetch')
  t.equal((await get(app, '/me', issuer.sign())).statusCode, 200)
  t.equal((await get(app, '/me', before)).statusCode, 200, 'the previous key still verifies')
  t.equal(issuer.jwksRequests, 2, 'both held')
})

t.test('keys: a JWKS down at start is a 503 with Retry-After', async (t) => {
  const issuer = await issuerFor(t)
  issuer.respondWith((_request, response) => { response.writeHead(500).end(); return true })
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url }))
  t.equal(issuer.jwksRequests, 1, 'the warm start tried, and start-up went on')
  const res = await get(app, '/me', issuer.sign())
  refused(t, res, 503, 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE')
  t.match(res.headers['retry-after'], /^[1-9]\d*$/, `Retry-After: ${res.headers['retry-after']}`)
  t.equal(res.headers['www-authenticate'], undefined, 'no challenge: the token is not at fault')
})

t.test('keys: the warm start fetches at ready(), before any request; without it, the first request does', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url }))
  t.equal(issuer.jwksRequests, 0, 'registered: nothing fetched yet')
  await app.ready()
  t.equal(issuer.jwksRequests, 1, 'fetched at ready()')
  await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url, warmStart: false }))
  t.equal(issuer.jwksRequests, 1, 'warmStart: false fetches nothing at ready()')
})

t.test('keys: close() closes the resolver: no fetch after it', async (t) => {
  const issuer = await issuerFor(t)
  const registration = captured(fastifyJwtOptions({ supabaseUrl: issuer.url }))
  const app = await appOf(t, registration.register)
  t.equal(issuer.jwksRequests, 1)
  const fresh = issuer.addKey()
  const token = issuer.sign({}, { kid: fresh.kid })
  await app.close()
  // @fastify/jwt's request path, by hand: extractToken, then the key function, as a request after close() would
  const request = { headers: { authorization: `Bearer ${token}` }, log: app.log } as unknown as FastifyRequest
  t.equal(registration.options.verify!.extractToken!(request), token)
  const keyFn = (registration.options.secret as { public: KeyFunction }).public
  await t.rejects(keyFn(request, app.jwt.decode(token, { complete: true })), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', statusCode: 503 })
  t.equal(issuer.jwksRequests, 1, 'the kid not held caused no fetch')
})

t.test('keys: the same PEM string for a kid, every time', async (t) => {
  const issuer = await issuerFor(t)
  const registration = captured(fastifyJwtOptions({ supabaseUrl: issuer.url }))
  const app = await appOf(t, registration.register)
  const keyFn = (registration.options.secret as { public: KeyFunction }).public
  async function keyOf (token: string): Promise<string> {
    const request = { headers: { authorization: `Bearer ${token}` }, log: app.log } as unknown as FastifyRequest
    registration.options.verify!.extractToken!(request)
    return await keyFn(request, app.jwt.decode(token, { complete: true }))
  }
  const first = await keyOf(issuer.sign())
  const second = await keyOf(issuer.sign({ email: 'other@example.com' }))
  t.equal(typeof first, 'string', 'a string: @fastify/jwt caches one verifier per key string')
  t.match(first, /^-----BEGIN PUBLIC KEY-----\n/)
  t.equal(second, first, 'the same string for the same kid')
  t.equal(first, issuer.currentKey.publicKey.export({ type: 'spki', format: 'pem' }), 'the kid\'s own key')
  const rotated = issuer.rotate()
  const third = await keyOf(issuer.sign())
  t.equal(third, rotated.publicKey.export({ type: 'spki', format: 'pem' }), 'another kid, its own key')
  t.not(third, first)
})

t.test('keys: two registrations in two encapsulated contexts have their own resolvers', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  for (const prefix of ['/a', '/b']) {
    app.register(async (child) => {
      await child.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url, warmStart: false }))
      child.get('/me', async (request) => { await request.jwtVerify(); return request.user })
    }, { prefix })
  }
  await app.ready()
  const token = issuer.sign()
  t.equal((await get(app, '/a/me', token)).statusCode, 200)
  t.equal(issuer.jwksRequests, 1)
  t.equal((await get(app, '/a/me', token)).statusCode, 200)
  t.equal(issuer.jwksRequests, 1, 'a holds its keys')
  t.equal((await get(app, '/b/me', token)).statusCode, 200)
  t.equal(issuer.jwksRequests, 2, 'b fetched its own')
  await app.close()
  t.equal(issuer.jwksRequests, 2)
})

t.test('traps: fastify.jwt.verify() throws synchronously, whatever the token, so no `if` takes a Promise for true', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url }))
  const usage = { code: 'FST_SUPABASE_JWKS_FASTIFY_JWT_USAGE', statusCode: 500, message: /would return a Promise, which an `if` takes for true/ }
  // a Promise (a rejected one, for a token fast-jwt cannot decode) is what @fastify/jwt's own verify() returns with a key function
  const tokens: unknown[] = [issuer.sign(), issuer.sign({ exp: now() - 60 }), 'garbage', 'a.b.c', `${b64({ alg: 'RS256' })}.${b64([1])}.AAAA`, 42]
  for (const token of tokens) {
    let accepted = false
    t.throws(() => { if (app.jwt.verify(token as string)) accepted = true }, usage, `if (verify(${String(token).slice(0, 12)}))`)
    t.notOk(accepted)
    await t.rejects(async () => await app.jwt.verify(token as string), usage, 'await verify()')
    let called = false
    t.throws(() => app.jwt.verify(token as string, () => { called = true }), usage, 'verify(token, callback)')
    t.throws(() => app.jwt.verify(token as string, {}, () => { called = true }), usage, 'verify(token, options, callback)')
    t.notOk(called, 'the callback is never called')
  }
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(issuer.jwksRequests, 1, 'and it asks for no key')
})

t.test('traps: sign() and reply.jwtSign() throw in this verify-only registration', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url }), (app) => {
    app.post('/token', async (_request, reply) => ({ token: await reply.jwtSign({ sub: 'u' } as never) }))
  })
  t.throws(() => app.jwt.sign({ sub: 'u' } as never), { message: 'unable to sign: secret is configured in verify mode' })
  const res = await app.inject({ method: 'POST', url: '/token' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().message, 'unable to sign: secret is configured in verify mode')
  t.notMatch(res.body, /eyJ/, 'no token signed')
})

t.test('traps: Supabase verification in one namespace, the app\'s own signing in another: each refuses the other\'s tokens', async (t) => {
  const issuer = await issuerFor(t)
  const ownSecret = 'the-app-own-signing-secret-32-chars-long!'
  type Namespaced = FastifyRequest & Record<'supabaseJwtVerify' | 'ownJwtVerify', () => Promise<Record<string, unknown>>>
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url }, { namespace: 'supabase' }))
  await app.register(fastifyJwt, { secret: ownSecret, namespace: 'own', sign: { expiresIn: '5m' } })
  app.get('/supabase', async (request) => ({ sub: (await (request as Namespaced).supabaseJwtVerify()).sub }))
  app.get('/own', async (request) => ({ sub: (await (request as Namespaced).ownJwtVerify()).sub }))
  app.post('/session', async (_request, reply) => ({
    token: await (reply as FastifyReply & { ownJwtSign (payload: object): Promise<string> }).ownJwtSign({ sub: 'own-user' })
  }))
  await app.ready()
  const jwt = app.jwt as unknown as Record<'supabase' | 'own', JWT>

  const supabaseToken = issuer.sign({ sub: 'supabase-user' })
  const ownToken = (await app.inject({ method: 'POST', url: '/session' })).json().token as string
  t.equal(parts(ownToken).header.alg, 'HS256', 'the app signs its own tokens')
  t.same((await get(app, '/supabase', supabaseToken)).json(), { sub: 'supabase-user' })
  t.same((await get(app, '/own', ownToken)).json(), { sub: 'own-user' })
  t.match(jwt.own.verify(ownToken), { sub: 'own-user' }, 'the own namespace verifies synchronously, as before')
  t.throws(() => jwt.supabase.verify(supabaseToken), { code: 'FST_SUPABASE_JWKS_FASTIFY_JWT_USAGE' }, 'the Supabase one never does')
  t.throws(() => jwt.supabase.sign({ sub: 'x' } as never), { message: /verify mode/ })

  refused(t, await get(app, '/supabase', ownToken), 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
  // @fastify/jwt's own answer, with the app's registration: refused all the same (a naive registration's 500)
  const foreign = await get(app, '/own', supabaseToken)
  t.equal(foreign.statusCode, 500)
  t.equal(codeOf(foreign), 'FAST_JWT_INVALID_ALGORITHM')
  t.throws(() => jwt.own.verify(supabaseToken), { code: 'FAST_JWT_INVALID_ALGORITHM' })
})

t.test('traps: request.jwtVerify() options that change which token is checked are a usage error, never an accepted token', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url }), (app) => {
    app.get('/payload-only', async (request) => await request.jwtVerify({ decode: { complete: false }, verify: {} }))
    app.get('/other-extractor', async (request) => await request.jwtVerify({
      decode: {},
      // @fastify/jwt reads a local verify.extractToken, which its types do not name
      verify: { extractToken: (req: FastifyRequest) => req.headers['x-token'] as string } as never
    }))
  })
  const usage = 'FST_SUPABASE_JWKS_FASTIFY_JWT_USAGE'
  const token = issuer.sign()
  refused(t, await get(app, '/payload-only', token), 500, usage)
  // claims named like the parts of a whole decoded token: still not the token extractToken checked
  const { head, body, sig } = parts(issuer.sign())
  const lookalike = issuer.sign({ input: `${head}.${body}`, signature: sig })
  refused(t, await get(app, '/payload-only', lookalike), 500, usage)
  t.match((await get(app, '/payload-only', lookalike)).json().message, /not decoded whole as the registration's extractToken gave it/)
  refused(t, await get(app, '/other-extractor', undefined, { 'x-token': token }), 500, usage)
  refused(t, await get(app, '/other-extractor', token, { 'x-token': issuer.sign() }), 500, usage, undefined)
  t.equal((await get(app, '/me', lookalike)).statusCode, 200, 'the registration\'s own options verify the same token')
})

t.test('traps: request.jwtVerify() options that change its result (complete) are a usage error, so isRevoked and requirements never see the wrong object', async (t) => {
  const issuer = await issuerFor(t)
  const revokedSeen: unknown[] = []
  const registrations = [
    fastifyJwtOptions({
      supabaseUrl: issuer.url,
      require: { anonymous: false },
      isRevoked: (user) => { revokedSeen.push(user.session_id); return user.session_id === 'revoked' }
    }),
    fastifyJwtOptions({ supabaseUrl: issuer.url })
  ]
  for (const [index, registration] of registrations.entries()) {
    const app = await appOf(t, registration, (app) => {
      app.get('/complete', async (request) => await request.jwtVerify({ complete: true }))
      app.get('/verify-complete', async (request) => await request.jwtVerify({ verify: { complete: true } } as never))
    })
    const token = issuer.sign({ session_id: 'revoked', is_anonymous: true })
    if (index === 0) refused(t, await get(app, '/me', token), 401, 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
    for (const url of ['/complete', '/verify-complete']) {
      const res = await get(app, url, token)
      refused(t, res, 500, 'FST_SUPABASE_JWKS_FASTIFY_JWT_USAGE')
      t.match(res.json().message, /request\.jwtVerify\(\) was given options that change its result \(complete\)/)
    }
    t.equal((await get(app, '/me', issuer.sign())).statusCode, 200, 'without options, the same registration verifies')
  }
  t.equal(revokedSeen.length, 2, 'isRevoked was asked for the two tokens /me verified, not for those of /complete')
  t.match(revokedSeen, ['revoked', /^[0-9a-f-]{36}$/], 'and saw their claims')
})

const FORBIDDEN = 'Bearer realm="api", error="insufficient_scope", error_description="The token does not grant access to this route"'

t.test('requirements: the require option and a route\'s config.supabaseJwks answer 403 with insufficient_scope', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url, require: { aal: 'aal2' } }), (app) => {
    app.get('/relaxed', { onRequest: [app.authenticate], config: { supabaseJwks: { aal: 'aal1' } } }, async (request) => request.user)
    app.get('/named', { onRequest: [app.authenticate], config: { supabaseJwks: { anonymous: false } } }, async (request) => request.user)
    app.get('/checked', {
      onRequest: [app.authenticate],
      config: { supabaseJwks: { aal: 'aal1', check: (user) => user.email === 'ada@example.com' } }
    }, async (request) => request.user)
  })
  const aal1 = issuer.sign()
  const res = await get(app, '/me', aal1)
  refused(t, res, 403, 'FST_SUPABASE_JWKS_FORBIDDEN', FORBIDDEN)
  t.equal(res.json().message, 'The token does not grant access to this route: the route requires aal2 (multi-factor authentication)')
  refused(t, await get(app, '/whoami', aal1), 403, 'FST_SUPABASE_JWKS_FORBIDDEN', FORBIDDEN)
  t.equal((await get(app, '/me', issuer.sign({ aal: 'aal2' }))).statusCode, 200, 'aal2 passes')
  t.equal((await get(app, '/relaxed', aal1)).statusCode, 200, 'the route overrides the option')
  refused(t, await get(app, '/named', issuer.sign({ aal: 'aal2', is_anonymous: true })), 403, 'FST_SUPABASE_JWKS_FORBIDDEN', FORBIDDEN)
  t.equal((await get(app, '/named', issuer.sign({ aal: 'aal2' }))).statusCode, 200, 'the route keeps the option\'s aal2 beside its own key')
  refused(t, await get(app, '/named', aal1), 403, 'FST_SUPABASE_JWKS_FORBIDDEN', FORBIDDEN)
  t.equal((await get(app, '/checked', issuer.sign({ email: 'ada@example.com' }))).statusCode, 200)
  refused(t, await get(app, '/checked', aal1), 403, 'FST_SUPABASE_JWKS_FORBIDDEN', FORBIDDEN)
})

t.test('requirements: an invalid route config fails at its declaration after the registration, at its requests before it', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  app.get('/early', { config: { supabaseJwks: { aal: 'aal3' as 'aal2' } } }, async (request) => { await request.jwtVerify(); return request.user })
  await app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url }))
  t.throws(() => app.get('/late', { config: { supabaseJwks: { aal: 'aal3' as 'aal2' } } }, async () => 'never'),
    { code: 'FST_SUPABASE_JWKS_OPTION', message: /config\.supabaseJwks of GET \/late/ })
  app.get('/fine', { config: { supabaseJwks: { aal: 'aal1' } } }, async (request) => { await request.jwtVerify(); return request.user })
  await app.ready()
  t.equal((await get(app, '/fine', issuer.sign())).statusCode, 200)
  const res = await get(app, '/early', issuer.sign())
  t.equal(res.statusCode, 500, 'the app\'s mistake, said as such')
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_ROUTE_CONFIG')
  t.equal(res.headers['www-authenticate'], undefined, 'nothing asked of the client')
  t.equal(codeOf(await get(app, '/early', issuer.sign())), 'FST_SUPABASE_JWKS_ROUTE_CONFIG', 'every request to it')
})

t.test('revocation: isRevoked true is 401 TOKEN_REVOKED, a throw 503 with Retry-After: 1', async (t) => {
  const issuer = await issuerFor(t)
  const revoked = new Set<string>()
  const seen: string[] = []
  const app = await appOf(t, fastifyJwtOptions({
    supabaseUrl: issuer.url,
    isRevoked: (claims, request) => {
      seen.push(request!.url)
      if (claims.session_id === 'broken') throw new Error('the denylist is down')
      return revoked.has(claims.session_id as string)
    }
  }))
  const token = issuer.sign({ session_id: 'a' })
  t.equal((await get(app, '/me', token)).statusCode, 200)
  revoked.add('a')
  const res = await get(app, '/me', token)
  refused(t, res, 401, 'FST_SUPABASE_JWKS_TOKEN_REVOKED', 'Bearer realm="api", error="invalid_token", error_description="The token has been revoked"')
  refused(t, await get(app, '/whoami', token), 401, 'FST_SUPABASE_JWKS_TOKEN_REVOKED', INVALID)
  const down = await get(app, '/me', issuer.sign({ session_id: 'broken' }))
  refused(t, down, 503, 'FST_SUPABASE_JWKS_REVOCATION_UNAVAILABLE')
  t.equal(down.headers['retry-after'], '1')
  t.same(seen, ['/me', '/me', '/whoami', '/me'], 'asked with the request, once per verification')
  t.equal((await get(app, '/me', issuer.sign({ exp: now() - 1 }))).statusCode, 401)
  t.equal(seen.length, 4, 'never for a token refused before')
})

t.test('trusted: the app\'s own still applies, after isRevoked and the requirements', async (t) => {
  const issuer = await issuerFor(t)
  const calls: string[] = []
  const app = await appOf(t, fastifyJwtOptions({
    supabaseUrl: issuer.url,
    isRevoked: (claims) => { calls.push('isRevoked'); return claims.session_id === 'revoked' }
  }, {
    trusted: (_request, claims) => { calls.push('trusted'); return claims.email !== 'banned@example.com' }
  }), (app) => {
    app.get('/mfa', { onRequest: [app.authenticate], config: { supabaseJwks: { aal: 'aal2' } } }, async (request) => request.user)
  })
  t.equal((await get(app, '/me', issuer.sign())).statusCode, 200)
  t.same(calls.splice(0), ['isRevoked', 'trusted'])
  refused(t, await get(app, '/me', issuer.sign({ email: 'banned@example.com' })), 401, 'FST_JWT_AUTHORIZATION_TOKEN_UNTRUSTED')
  t.same(calls.splice(0), ['isRevoked', 'trusted'])
  refused(t, await get(app, '/me', issuer.sign({ session_id: 'revoked', email: 'banned@example.com' })), 401, 'FST_SUPABASE_JWKS_TOKEN_REVOKED', INVALID)
  refused(t, await get(app, '/mfa', issuer.sign({ email: 'banned@example.com' })), 403, 'FST_SUPABASE_JWKS_FORBIDDEN', FORBIDDEN)
  t.same(calls.splice(0), ['isRevoked', 'isRevoked'], 'the app\'s trusted is not asked about a token already refused')

  // trusted alone, as a Promise
  const only = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url }, { trusted: async (_request, claims) => claims.aal === 'aal2' }))
  refused(t, await get(only, '/me', issuer.sign()), 401, 'FST_JWT_AUTHORIZATION_TOKEN_UNTRUSTED')
  t.equal((await get(only, '/me', issuer.sign({ aal: 'aal2' }))).statusCode, 200)
})

t.test('several issuers: a token goes to the issuer of its iss, with that issuer\'s keys and rules', async (t) => {
  const a = await issuerFor(t)
  const b = await issuerFor(t, { alg: 'ES256' })
  const app = await appOf(t, fastifyJwtOptions({
    issuers: [{ supabaseUrl: a.url }, { supabaseUrl: b.url, algorithms: ['ES256'], audience: false }],
    warmStart: false
  }))
  t.match((await get(app, '/me', a.sign())).json(), { iss: a.issuer })
  t.match((await get(app, '/me', b.sign())).json(), { iss: b.issuer })
  t.same([a.jwksRequests, b.jwksRequests], [1, 1], 'each from its own JWKS')
  t.equal((await get(app, '/me', b.sign({ aud: undefined }))).statusCode, 200, 'b checks no aud')
  refused(t, await get(app, '/me', a.sign({ aud: undefined })), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)
  // b's key, b's kid, a's iss: a's keys are asked, which do not have it
  refused(t, await get(app, '/me', b.sign({ iss: a.issuer })), 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
  const forged = signJwt({ alg: 'RS256', kid: b.currentKey.kid, typ: 'JWT' }, parts(a.sign()).claims, a.currentKey.privateKey)
  refused(t, await get(app, '/me', forged), 401, 'FST_SUPABASE_JWKS_UNKNOWN_KID', INVALID)
  refused(t, await get(app, '/me', a.sign({ iss: 'https://elsewhere.supabase.co/auth/v1' })), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)
  t.same([a.jwksRequests, b.jwksRequests], [2, 1], 'only the forged kid cost a fetch, of a\'s JWKS')
})

t.test('issuer: false and audience: false leave those claims unchecked by fast-jwt too (a self-hosted GoTrue)', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appOf(t, fastifyJwtOptions({ jwksUrl: issuer.jwksUrl, issuer: false, audience: false }))
  t.equal((await get(app, '/me', issuer.sign({ iss: undefined, aud: undefined }))).statusCode, 200)
  t.equal((await get(app, '/me', issuer.sign({ iss: 'anything', aud: 'anyone' }))).statusCode, 200)
  refused(t, await get(app, '/me', issuer.sign({ sub: undefined })), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)
})

t.test('clockTolerance is fast-jwt\'s too, in milliseconds', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url, clockTolerance: 30 }))
  t.equal((await get(app, '/me', issuer.sign({ exp: now() - 5 }))).statusCode, 200, 'expired 5 s ago, within 30 s')
  t.equal((await get(app, '/me', issuer.sign({ nbf: now() + 5 }))).statusCode, 200, 'valid in 5 s')
  refused(t, await get(app, '/me', issuer.sign({ exp: now() - 60 })), 401, 'FST_SUPABASE_JWKS_TOKEN_EXPIRED', INVALID)
})

t.test('options fastifyJwtOptions refuses, at the call', async (t) => {
  const supabaseUrl = 'https://abc.supabase.co'
  const refusedOption = (options: unknown, jwt: unknown, message: RegExp) =>
    t.throws(() => fastifyJwtOptions(options as never, jwt as never), { code: 'FST_SUPABASE_JWKS_OPTION', message }, String(message))
  // the plugin's own checks
  refusedOption({}, undefined, /supabaseUrl or jwksUrl is required/)
  refusedOption({ supabaseUrl, secret: 'x' }, undefined, /a shared secret is never used/)
  // the plugin's options that have no meaning here
  refusedOption({ supabaseUrl, cookie: true }, undefined, /cookie is not available through @fastify\/jwt: read @supabase\/ssr session cookies/)
  refusedOption({ supabaseUrl, extractToken: () => 'x' }, undefined, /extractToken is not available through @fastify\/jwt: give @fastify\/jwt's verify\.extractToken/)
  refusedOption({ supabaseUrl, hook: 'onRequest' }, undefined, /hook is not available through @fastify\/jwt/)
  refusedOption({ supabaseUrl, legacyTokens: { until: new Date(Date.now() + 3600_000), apiKey: 'sb_publishable_x' } }, undefined, /legacyTokens is not available/)
  refusedOption({ supabaseUrl, tokenCache: 0 }, undefined, /tokenCache is not available/)
  // @fastify/jwt's options that the plugin's set
  refusedOption({ supabaseUrl }, null, /second argument \(@fastify\/jwt options\) must be an object/)
  refusedOption({ supabaseUrl }, 'x', /must be an object/)
  refusedOption({ supabaseUrl }, { secret: 'x' }, /secret is what fastifyJwtOptions gives @fastify\/jwt/)
  refusedOption({ supabaseUrl }, { sign: {} }, /verifies Supabase tokens only: sign your own tokens with another registration/)
  refusedOption({ supabaseUrl }, { decode: { complete: false } }, /decode must be an object without complete/)
  refusedOption({ supabaseUrl }, { decode: null }, /decode must be an object/)
  refusedOption({ supabaseUrl }, { decode: 'x' }, /decode must be an object/)
  refusedOption({ supabaseUrl }, { verify: null }, /verify must be an object/)
  refusedOption({ supabaseUrl }, { verify: 'x' }, /verify must be an object/)
  for (const name of ['key', 'algorithms', 'allowedIss', 'allowedAud', 'requiredClaims', 'clockTolerance', 'clockTimestamp',
    'ignoreExpiration', 'ignoreNotBefore', 'complete']) {
    refusedOption({ supabaseUrl }, { verify: { [name]: undefined } }, new RegExp(`verify\\.${name} is set from the plugin's options`))
  }
  // fast-jwt's token cache (it would outlive a revoked key) and the checks whose errors @fastify/jwt does not map (500s)
  for (const name of ['cache', 'cacheTTL', 'errorCacheTTL', 'cacheKeyBuilder', 'checkTyp', 'allowedJti', 'allowedNonce', 'maxAge',
    'allowedCritHeaders']) {
    refusedOption({ supabaseUrl }, { verify: { [name]: undefined } }, new RegExp(`verify\\.${name} is not supported with fastifyJwtOptions \\(verify takes extractToken, onlyCookie and allowedSub\\)`))
  }
  refusedOption({ supabaseUrl }, { verify: { extractToken: 'authorization' } }, /verify\.extractToken must be a function/)
  refusedOption({ supabaseUrl }, { trusted: true }, /trusted must be a function/)
  refusedOption({ supabaseUrl }, { namespace: 42 }, /namespace must be a string/)
  // what it takes
  t.type(fastifyJwtOptions({ supabaseUrl }, {
    namespace: 'supabase', decode: { checkTyp: 'JWT' }, verify: { extractToken: () => 'x', onlyCookie: false, allowedSub: 'u' }, trusted: () => true, formatUser: (user) => user, messages: {}
  }), 'function')
  t.type(fastifyJwtOptions({ supabaseUrl }, { cookie: { cookieName: 'token', signed: false } }), 'function', '@fastify/jwt\'s own cookie option')
})

t.test('the app\'s verify.extractToken is used, and its token checked like any other', async (t) => {
  const issuer = await issuerFor(t)
  const given = new Map<string, unknown>([['undefined', undefined], ['null', null], ['empty', '']])
  const app = await appOf(t, fastifyJwtOptions({ supabaseUrl: issuer.url, maxTokenLength: 2048 }, {
    verify: {
      extractToken: (request) => {
        const token = request.headers['x-token'] as string | undefined
        if (token === 'throw') throw new Error('the extractor broke')
        return (given.has(token!) ? given.get(token!) : token) as string
      }
    }
  }))
  t.equal((await get(app, '/me', undefined, { 'x-token': issuer.sign() })).statusCode, 200, 'read from x-token')
  refused(t, await get(app, '/me', issuer.sign()), 400, 'FST_JWT_BAD_REQUEST')
  for (const name of given.keys()) refused(t, await get(app, '/me', undefined, { 'x-token': name }), 400, 'FST_JWT_BAD_REQUEST')
  refused(t, await get(app, '/me', undefined, { 'x-token': 'throw' }), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)
  refused(t, await get(app, '/me', undefined, { 'x-token': 'not a jwt' }), 401, 'FST_SUPABASE_JWKS_MALFORMED_TOKEN', INVALID)
  refused(t, await get(app, '/me', undefined, { 'x-token': issuer.sign({ padding: 'x'.repeat(2048) }) }), 401, 'FST_SUPABASE_JWKS_MALFORMED_TOKEN', INVALID)
  refused(t, await get(app, '/me', undefined, { 'x-token': `${b64('{')}.${b64({})}.AAAA` }), 401, 'FST_SUPABASE_JWKS_TOKEN_INVALID', INVALID)
})

t.test('@fastify/jwt\'s cookie option still works: a raw JWT in a cookie, with @fastify/cookie', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyCookie)
  await app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url }, { cookie: { cookieName: 'token', signed: false } }))
  app.get('/me', async (request) => { await request.jwtVerify(); return request.user })
  await app.ready()
  const cookie = (token: string) => ({ cookie: `token=${token}` })
  t.match((await get(app, '/me', undefined, cookie(issuer.sign({ sub: 'from-cookie' })))).json(), { sub: 'from-cookie' })
  t.equal((await get(app, '/me', issuer.sign())).statusCode, 200, 'a Bearer header still works')
  refused(t, await get(app, '/me'), 401, 'FST_JWT_NO_AUTHORIZATION_IN_COOKIE')
  refused(t, await get(app, '/me', undefined, cookie(issuer.sign({ exp: now() - 60 }))), 401, 'FST_SUPABASE_JWKS_TOKEN_EXPIRED', INVALID)
  refused(t, await get(app, '/me', undefined, cookie(issuer.signLegacy())), 401, 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', INVALID)
})

t.test('fastifyJwtOptions() given to another plugin than @fastify/jwt fails at start, as does a registration @fastify/jwt refuses', async (t) => {
  const issuer = await issuerFor(t)
  const secret = 'the-app-own-signing-secret-32-chars-long!'
  // a plugin of the app's that registers @fastify/jwt with its own options: decorated after the guard looked, or in its own context
  const wrappers = {
    shared: fp(async (instance, options: FastifyJWTOptions) => { await instance.register(fastifyJwt, options) }),
    encapsulated: async (instance: FastifyInstance, options: FastifyJWTOptions) => { await instance.register(fastifyJwt, options) }
  }
  for (const [name, wrapper] of Object.entries(wrappers)) {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(wrapper, fastifyJwtOptions({ supabaseUrl: issuer.url }) as never)
    await t.rejects(async () => await app.ready(), { code: 'FST_SUPABASE_JWKS_REGISTRATION', message: /must be @fastify\/jwt's own registration options/ }, name)
  }

  const taken = Fastify()
  t.teardown(() => taken.close())
  await taken.register(fastifyJwt, { secret, namespace: 'supabase' })
  taken.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url }, { namespace: 'supabase' }))
  await t.rejects(async () => await taken.ready(), { message: 'JWT namespace already used "supabase"' })
  const own = (taken.jwt as unknown as Record<string, JWT>).supabase!
  t.match(own.verify(own.sign({ sub: 'u' } as never)), { sub: 'u' }, 'the namespace\'s owner verifies as before')
})

t.test('registered without await, @fastify/jwt gets the same guard, before any plugin registered after it', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url }))
  let kept: JWT['verify'] | undefined
  // a plugin of the app's that keeps fastify.jwt.verify at its registration
  app.register(async (child) => { kept = child.jwt.verify })
  app.get('/me', async (request) => { await request.jwtVerify(); return request.user })
  await app.ready()
  t.throws(() => kept!('garbage'), { code: 'FST_SUPABASE_JWKS_FASTIFY_JWT_USAGE' })
  t.equal((await get(app, '/me', issuer.sign())).statusCode, 200)
})
