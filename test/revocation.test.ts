import t from 'tap'
import type { FastifyRequest } from 'fastify'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor, registrationError } from './fixtures/helpers'

t.test('isRevoked: a session_id denylist signs a user out everywhere, token-cache hits included', async (t) => {
  const issuer = await issuerFor(t)
  const signedOut = new Set<string>()
  const requests: Array<FastifyRequest | undefined> = []
  const app = await appFor(t, {
    supabaseUrl: issuer.url,
    isRevoked: (claims, request) => { requests.push(request); return signedOut.has(claims.session_id as string) }
  })
  const token = issuer.sign({ session_id: 'session-1' })
  for (let i = 0; i < 3; i++) t.equal((await getMe(app, token)).statusCode, 200)
  t.ok(app.supabaseJwks.stats().tokenCacheHits >= 1, 'the token is served from the token cache')
  signedOut.add('session-1')
  const hits = app.supabaseJwks.stats().tokenCacheHits
  const response = await getMe(app, token)
  t.equal(response.statusCode, 401)
  t.equal(codeOf(response), 'FST_SUPABASE_JWKS_TOKEN_REVOKED')
  t.equal(response.headers['www-authenticate'], 'Bearer realm="api", error="invalid_token", error_description="The token has been revoked"')
  t.equal(app.supabaseJwks.stats().tokenCacheHits, hits + 1, 'refused although it was a token-cache hit')
  t.equal((await getMe(app, issuer.sign({ session_id: 'session-2' }))).statusCode, 200, 'other sessions are not affected')
  await t.rejects(app.supabaseJwks.verify(token), { code: 'FST_SUPABASE_JWKS_TOKEN_REVOKED', statusCode: 401 }, 'verify() asks it too')
  t.equal(requests.at(-1), undefined, 'verify() passes no request')
  t.ok(requests[0] !== undefined && typeof requests[0].headers === 'object', 'authenticate passes the request')
})

t.test('isRevoked async, throwing or not answering a boolean: never an accepted token', async (t) => {
  const issuer = await issuerFor(t)
  let answer: () => unknown = async () => true
  const { app, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url, isRevoked: (() => answer()) as () => Promise<boolean> }, 'warn')
  t.equal(codeOf(await getMe(app, issuer.sign())), 'FST_SUPABASE_JWKS_TOKEN_REVOKED', 'async true')
  answer = async () => { throw new Error('the denylist store is down') }
  const down = await getMe(app, issuer.sign())
  t.equal(down.statusCode, 503)
  t.equal(codeOf(down), 'FST_SUPABASE_JWKS_REVOCATION_UNAVAILABLE')
  t.equal(down.headers['retry-after'], '1')
  t.notMatch(down.body, /denylist store/, 'the error stays in the log')
  answer = () => 'no'
  t.equal(codeOf(await getMe(app, issuer.sign())), 'FST_SUPABASE_JWKS_REVOCATION_UNAVAILABLE', 'not a boolean')
  answer = () => false
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.same(entries().map((entry) => entry.msg).filter((msg) => msg.startsWith('supabase-jwks: isRevoked')), [
    'supabase-jwks: isRevoked threw: answered 503',
    'supabase-jwks: isRevoked did not answer a boolean: answered 503'
  ])
  t.match((await registrationError({ supabaseUrl: issuer.url, isRevoked: true })).message, /isRevoked must be a function/)
})
