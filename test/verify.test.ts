import t from 'tap'
import { signJwt } from '../lib/testing'
import { appFor, codeOf, getMe, issuerFor } from './fixtures/helpers'

const now = () => Math.floor(Date.now() / 1000)

t.test('fastify.supabaseJwks.verify(token): the claims, or the coded error a request would get', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, maxTokenLength: 4096 })
  const claims = await app.supabaseJwks.verify(issuer.sign({ sub: 'u-1', email: 'ada@example.com' }))
  t.equal(claims.sub, 'u-1')
  t.equal(claims.email, 'ada@example.com')
  t.ok(Object.isFrozen(claims) && Object.isFrozen(claims.app_metadata), 'frozen, as request.user is')
  const cases: Array<[string, unknown, string, number]> = [
    ['expired', issuer.sign({ exp: now() - 60 }), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED', 401],
    ['unknown kid', issuer.sign({}, { header: { kid: 'nope' } }), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 401],
    ['malformed', 'a.b', 'FST_SUPABASE_JWKS_MALFORMED_TOKEN', 401],
    ['too long', 'a'.repeat(5000), 'FST_SUPABASE_JWKS_MALFORMED_TOKEN', 401],
    ['empty', '', 'FST_SUPABASE_JWKS_NO_TOKEN', 401],
    ['not a string', 42, 'FST_SUPABASE_JWKS_NO_TOKEN', 401]
  ]
  for (const [name, token, code, statusCode] of cases) {
    await t.rejects(app.supabaseJwks.verify(token as string), { code, statusCode }, name)
  }
  await t.rejects(app.supabaseJwks.verify(''), { message: 'Missing bearer token in verify()\'s argument' }, 'no header is named: verify() reads none')
})

t.test('authenticate and verify() share one path and one token cache', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const token = issuer.sign()
  t.equal((await getMe(app, token)).statusCode, 200)
  t.equal((await getMe(app, token)).statusCode, 200, 'admitted to the token cache on its second verification')
  const first = await app.supabaseJwks.verify(token)
  t.equal(await app.supabaseJwks.verify(token), first, 'verify() is answered from the entry the requests made')
  t.match(app.supabaseJwks.stats(), { cachedTokens: 1, tokenCacheHits: 2, tokenCacheMisses: 2, fetches: 1 })

  const uncached = await appFor(t, { supabaseUrl: issuer.url, tokenCache: 0 })
  for (let i = 0; i < 2; i++) await getMe(uncached, token)
  t.not(await uncached.supabaseJwks.verify(token), await uncached.supabaseJwks.verify(token), 'without the cache, each call verifies')
})

t.test('claim types and lists', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const reasons: Array<[string, Record<string, unknown>, RegExp]> = [
    ['aud a list without a string', { aud: [1] }, /aud claim must be a string or an array of strings/],
    ['aud an empty list', { aud: [] }, /aud claim value is not allowed/],
    ['aud a number', { aud: 7 }, /aud claim must be a string or an array of strings/],
    ['iss a list', { iss: [issuer.issuer] }, /iss claim must be a string$/],
    ['nbf a string', { nbf: String(now()) }, /nbf claim must be a number/],
    ['exp a string', { exp: String(now() + 60) }, /exp claim must be a number/],
    ['nbf in the future', { nbf: now() + 600 }, /not valid yet \(nbf\)/],
    ['a bad signature', {}, /signature is invalid/]
  ]
  for (const [name, claims, reason] of reasons) {
    let token = issuer.sign(claims)
    if (name === 'a bad signature') token = token.slice(0, -10) + (token.at(-10) === 'A' ? 'B' : 'A') + token.slice(-9)
    const res = await getMe(app, token)
    t.equal(codeOf(res), 'FST_SUPABASE_JWKS_TOKEN_INVALID', name)
    t.match(res.json().message, reason, `${name}: reason`)
  }
  t.equal((await getMe(app, issuer.sign({ nbf: now() - 1 }))).statusCode, 200, 'an nbf in the past is fine')
})

t.test('a key whose JWK says RS256 verifies no PS256 token, even with PS256 allowed', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, algorithms: ['RS256', 'PS256'] })
  const key = issuer.currentKey
  const pss = signJwt({ alg: 'PS256', kid: key.kid }, { sub: 'x', aud: 'authenticated', iss: issuer.issuer, exp: now() + 60 }, key.privateKey)
  const res = await getMe(app, pss)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.match(res.json().message, /algorithm does not match the key/)
})

t.test('many distinct verified headers: each still verifies, and a forged token under a known header still fails', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, tokenCache: 0 })
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 20; i++) {
      t.equal((await getMe(app, issuer.sign({ sub: `u-${i}` }, { header: { n: i } }))).statusCode, 200, `header ${i}, round ${round}`)
    }
  }
  const token = issuer.sign({}, { header: { n: 3 } })
  const forged = token.slice(0, -10) + (token.at(-10) === 'A' ? 'B' : 'A') + token.slice(-9)
  t.equal(codeOf(await getMe(app, forged)), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.equal(issuer.jwksRequests, 1)
})
