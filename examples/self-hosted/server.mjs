// An API that verifies the tokens of a self-hosted GoTrue with its public keys. It is given two
// URLs, the JWKS and the issuer, and no secret. Without SUPABASE_JWKS_URL it starts a local test
// issuer (which also serves its JWKS at the root, as a bare GoTrue does).
//   node examples/self-hosted/server.mjs
//   SUPABASE_JWKS_URL=http://localhost:9999/.well-known/jwks.json SUPABASE_ISSUER=http://localhost:9999 node examples/self-hosted/server.mjs
import Fastify from 'fastify'
import supabaseJwks from 'fastify-supabase-jwks'
import { createTestIssuer } from 'fastify-supabase-jwks/testing'

const issuer = process.env.SUPABASE_JWKS_URL ? undefined : await createTestIssuer({ alg: 'ES256' })

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(supabaseJwks, {
  // a bare GoTrue serves its JWKS at its own root, not under /auth/v1
  jwksUrl: process.env.SUPABASE_JWKS_URL || `${issuer.url}/.well-known/jwks.json`,
  // GOTRUE_JWT_ISSUER; required with jwksUrl (set it to false only if GoTrue sets none)
  issuer: process.env.SUPABASE_ISSUER || issuer?.issuer,
  algorithms: ['ES256'], // the algorithm of the key in GOTRUE_JWT_KEYS
  // plain http to a host other than loopback (the compose network's "auth") is refused unless allowed
  allowInsecureJwksUrl: process.env.ALLOW_INSECURE_JWKS_URL === 'true'
})

app.get('/me', { preHandler: app.authenticate }, async (request) => ({
  id: request.user.sub,
  email: request.user.email,
  role: request.user.role
}))

app.addHook('onClose', async () => { await issuer?.close() })
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { app.close() })

// HOST is 0.0.0.0 inside the container only; docker-compose.yml publishes the port on 127.0.0.1
const address = await app.listen({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
if (issuer) console.log(`try: curl -i ${address}/me -H 'Authorization: Bearer ${issuer.sign()}'`)
