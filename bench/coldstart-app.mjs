// One cold start, in a process of its own: `node bench/coldstart-app.mjs <variant>`, configured by the
// COLDSTART environment variable (JSON: the issuer's URL, its iss, its key set). It loads what the
// variant needs, builds the same app (GET /me answers the verified sub), listens on 127.0.0.1 and
// prints its port: bench/coldstart.mjs then asks for /me with a token and times the first 200.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const variant = process.argv[2]
const { url, issuer, jwks } = JSON.parse(process.env.COLDSTART)

const { default: Fastify } = await import('fastify')
const app = Fastify()
if (variant === 'fastify') {
  // the floor: the same app, its route unguarded
  app.get('/me', async () => ({ sub: null }))
} else if (variant.startsWith('plugin')) {
  const supabaseJwks = require('../dist/index.js')
  // inline: the key set given in configuration, no fetch (docs/inline-keys.md)
  await app.register(supabaseJwks, variant === 'plugin-jwks' ? { supabaseUrl: url } : { jwks, issuer, audience: 'authenticated' })
  app.get('/me', { preHandler: app.authenticate }, async (request) => ({ sub: request.user.sub }))
} else {
  const { createLocalJWKSet, createRemoteJWKSet, jwtVerify } = await import('jose')
  const keys = variant === 'jose-jwks' ? createRemoteJWKSet(new URL(`${issuer}/.well-known/jwks.json`)) : createLocalJWKSet(jwks)
  app.get('/me', async (request, reply) => {
    try {
      const { payload } = await jwtVerify(String(request.headers.authorization).slice(7), keys, { issuer, audience: 'authenticated', algorithms: ['RS256'] })
      return { sub: payload.sub }
    } catch {
      return reply.code(401).send({ sub: null })
    }
  })
}
await app.listen({ port: 0, host: '127.0.0.1' })
process.stdout.write(`${app.server.address().port}\n`)
