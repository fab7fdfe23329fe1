'use strict'

// The demo: an API on 127.0.0.1 whose /me route needs a Supabase access token.
// Without SUPABASE_URL it runs against the package's local test issuer and prints a token.
//   npm start                                  (local issuer)
//   SUPABASE_URL=https://<ref>.supabase.co npm start   (your project; ES256 and RS256 allowed)

const Fastify = require('fastify')
const supabaseJwks = require('fastify-supabase-jwks')
const { createTestIssuer } = require('fastify-supabase-jwks/testing')

const HOST = '127.0.0.1'
const PORT = Number(process.env.PORT ?? 3000)

async function main () {
  const issuer = process.env.SUPABASE_URL ? undefined : await createTestIssuer()
  const supabaseUrl = process.env.SUPABASE_URL || issuer.url

  const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
  await app.register(supabaseJwks, { supabaseUrl, algorithms: ['RS256', 'ES256'] })

  app.get('/', async () => ({ hello: 'world', protected: '/me' }))
  app.get('/me', { preHandler: app.authenticate }, async (request) => ({
    id: request.user.sub,
    email: request.user.email,
    role: request.user.role,
    aal: request.user.aal
  }))

  app.addHook('onClose', async () => { await issuer?.close() })
  for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { app.close() })

  const address = await app.listen({ host: HOST, port: PORT })
  console.log(`listening on ${address}`)
  if (issuer) {
    const token = issuer.sign({ email: 'demo@example.com' })
    const [head, body, signature] = token.split('.')
    const claims = JSON.parse(Buffer.from(body, 'base64url').toString())
    const tampered = `${head}.${Buffer.from(JSON.stringify({ ...claims, role: 'service_role' })).toString('base64url')}.${signature}`
    console.log(`
Local issuer: ${issuer.url} (JWKS at ${issuer.jwksUrl})
A token for demo@example.com, valid for an hour:

${token}

Accepted (200):
  curl -i ${address}/me -H 'Authorization: Bearer ${token}'

No token (401):
  curl -i ${address}/me

Tampered payload, role changed to service_role (401):
  curl -i ${address}/me -H 'Authorization: Bearer ${tampered}'
`)
  } else {
    console.log(`\nVerifying tokens of ${supabaseUrl}: curl -i ${address}/me -H "Authorization: Bearer $ACCESS_TOKEN"\n`)
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
