// Route tests with node:test and the package's test issuer: real keys, a real JWKS on 127.0.0.1,
// requests through app.inject(). Run: node --test
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { createTestIssuer } from 'fastify-supabase-jwks/testing'
import { build } from './app.mjs'

let issuer
let app

before(async () => {
  issuer = await createTestIssuer()
  app = await build({ supabaseUrl: issuer.url })
})

after(async () => {
  await app.close()
  await issuer.close()
})

const bearer = (token) => ({ authorization: `Bearer ${token}` })

test('GET /me answers with the caller', async () => {
  const res = await app.inject({ url: '/me', headers: bearer(issuer.sign({ sub: 'user-1', email: 'ada@example.com' })) })
  assert.equal(res.statusCode, 200)
  assert.deepEqual(res.json(), { id: 'user-1', email: 'ada@example.com' })
})

test('POST /notes belongs to the token\'s user', async () => {
  const res = await app.inject({
    method: 'POST',
    url: '/notes',
    headers: bearer(issuer.sign({ sub: 'user-2' })),
    payload: { text: 'hello' }
  })
  assert.equal(res.statusCode, 201)
  assert.deepEqual(res.json(), { owner: 'user-2', text: 'hello' })
})

test('no token, an expired token, a forged one: 401 with a code', async () => {
  const now = Math.floor(Date.now() / 1000)
  const stolenKey = issuer.addKey({ publish: false }) // a key the project never published
  for (const [headers, code] of [
    [{}, 'FST_SUPABASE_JWKS_NO_TOKEN'],
    [bearer(issuer.sign({ exp: now - 60 })), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED'],
    [bearer(issuer.sign({}, { kid: stolenKey.kid })), 'FST_SUPABASE_JWKS_UNKNOWN_KID']
  ]) {
    const res = await app.inject({ url: '/me', headers })
    assert.equal(res.statusCode, 401)
    assert.equal(res.json().code, code)
  }
})
