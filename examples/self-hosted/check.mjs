// Run by test/examples.test.ts: the API given a bare-GoTrue JWKS URL and an issuer (no secret),
// and the keys that generate-keys.mjs makes for GoTrue.
import { createPrivateKey, createPublicKey } from 'node:crypto'
import { once } from 'node:events'
import { createServer } from 'node:http'
import { signJwt } from 'fastify-supabase-jwks/testing'

export const issuerOptions = { alg: 'ES256' }

export default async function check (t, { issuer, start, node }) {
  const env = { SUPABASE_URL: undefined, SUPABASE_JWKS_URL: `${issuer.url}/.well-known/jwks.json`, SUPABASE_ISSUER: issuer.issuer }
  const api = await start('server.mjs', env)

  const me = await api.request('/me', { token: issuer.sign({ email: 'ada@example.com' }) })
  t.equal(me.status, 200, 'an ES256 token of the configured issuer: 200')
  t.equal(me.json().email, 'ada@example.com')

  for (const [label, token, code] of [
    ['no token', undefined, 'FST_SUPABASE_JWKS_NO_TOKEN'],
    ['another issuer', issuer.sign({ iss: 'http://elsewhere.example' }), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['an RS256 key, not allowed', issuer.sign({}, { kid: issuer.addKey({ alg: 'RS256' }).kid }), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED']
  ]) {
    const res = await api.request('/me', { token })
    t.equal(res.status, 401, `${label}: 401`)
    t.equal(res.json().code, code)
  }

  await t.rejects(start('server.mjs', { ...env, SUPABASE_ISSUER: undefined }), /issuer is required with jwksUrl alone/,
    'a JWKS URL without the issuer fails at start, with the reason')

  const generated = await node(['generate-keys.mjs'])
  t.equal(generated.code, 0, generated.stderr)
  const vars = Object.fromEntries(generated.stdout.split('\n').filter((line) => /^[A-Z_]+=/.test(line)).map((line) => {
    const at = line.indexOf('=')
    return [line.slice(0, at), line.slice(at + 1)]
  }))
  t.same(Object.keys(vars).sort(), ['GOTRUE_JWT_KEYS', 'GOTRUE_JWT_SECRET', 'POSTGRES_PASSWORD'])
  t.match(vars.GOTRUE_JWT_KEYS, /^'\[.*\]'$/, 'GOTRUE_JWT_KEYS is single-quoted: docker compose reads the JSON as is')
  const keys = JSON.parse(vars.GOTRUE_JWT_KEYS.slice(1, -1))
  t.equal(keys.filter((key) => key.key_ops.includes('sign')).length, 1, 'exactly one signing key, as GoTrue requires')
  t.match(keys[0], { kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig', kid: /^[0-9a-f-]{36}$/, d: /^[\w-]{43}$/ })
  t.equal(createPrivateKey({ key: keys[0], format: 'jwk' }).asymmetricKeyType, 'ec', 'a private key Node can load')
  t.ok(vars.GOTRUE_JWT_SECRET.length >= 32, 'GoTrue\'s required secret is long and random')

  // the generated key end to end: its public half served as GoTrue serves it (internal/api/jwks.go:
  // the public key of each entry, use "sig", key_ops ["verify"]), a token signed with the private one
  const { kid, alg } = keys[0]
  const privateKey = createPrivateKey({ key: keys[0], format: 'jwk' })
  const jwks = JSON.stringify({ keys: [{ ...createPublicKey(privateKey).export({ format: 'jwk' }), kid, alg, use: 'sig', key_ops: ['verify'] }] })
  const gotrue = createServer((request, response) => {
    response.writeHead(request.url === '/.well-known/jwks.json' ? 200 : 404, { 'content-type': 'application/json' }).end(jwks)
  }).listen(0, '127.0.0.1')
  await once(gotrue, 'listening')
  t.teardown(() => new Promise((resolve) => { gotrue.closeAllConnections(); gotrue.close(resolve) }))
  const gotrueUrl = `http://127.0.0.1:${gotrue.address().port}`
  const withKeys = await start('server.mjs', { ...env, SUPABASE_JWKS_URL: `${gotrueUrl}/.well-known/jwks.json`, SUPABASE_ISSUER: gotrueUrl })
  const now = Math.floor(Date.now() / 1000)
  const token = signJwt({ alg, kid, typ: 'JWT' }, { sub: 'user-3', aud: 'authenticated', role: 'authenticated', iss: gotrueUrl, iat: now, exp: now + 3600 }, privateKey)
  const verified = await withKeys.request('/me', { token })
  t.equal(verified.status, 200, 'a token signed with the generated GOTRUE_JWT_KEYS verifies with its published half')
  t.equal(verified.json().id, 'user-3')
}
