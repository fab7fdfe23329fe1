import t from 'tap'
import { appFor, codeOf, getMe, issuerFor } from './fixtures/helpers'

t.test('a valid RS256 token is accepted with its claims', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const token = issuer.sign({ email: 'ada@example.com' })
  const res = await getMe(app, token)
  t.equal(res.statusCode, 200)
  const user = res.json()
  t.equal(user.email, 'ada@example.com')
  t.equal(user.aud, 'authenticated')
  t.equal(user.iss, issuer.issuer)
  t.equal(issuer.jwksRequests, 1)
  const again = await getMe(app, issuer.sign())
  t.equal(again.statusCode, 200)
  t.equal(issuer.jwksRequests, 1, 'the key is cached')
})

t.test('expired', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  const res = await getMe(app, issuer.sign({ exp: Math.floor(Date.now() / 1000) - 60 }))
  t.equal(res.statusCode, 401)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED')
})
