// Every route of /api needs a token (hook mode), except the ones that opt out; a browser app on
// another origin may call it (CORS). Without SUPABASE_URL it starts a local test issuer.
//   node examples/hook-cors/server.mjs
import Fastify from 'fastify'
import cors from '@fastify/cors'
import supabaseJwks from 'fastify-supabase-jwks'
import { createTestIssuer } from 'fastify-supabase-jwks/testing'

const issuer = process.env.SUPABASE_URL ? undefined : await createTestIssuer()
const supabaseUrl = process.env.SUPABASE_URL || issuer.url
const origins = (process.env.CORS_ORIGINS ?? 'http://localhost:5173').split(',')

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })

// At the root: its preflight route and headers serve every context, the protected one included.
// A preflight carries no token, and is answered here without one.
await app.register(cors, {
  origin: origins,
  methods: ['GET', 'POST', 'DELETE'],
  allowedHeaders: ['authorization', 'content-type'],
  exposedHeaders: ['www-authenticate'], // lets the browser app read why a request got 401 or 403
  maxAge: 600
})

app.get('/health', async () => ({ ok: true })) // outside the protected context: public

await app.register(async function api (api) {
  // default-deny: every route of this context, declared before or after, needs a valid token
  await api.register(supabaseJwks, { supabaseUrl, algorithms: ['RS256', 'ES256'], hook: 'onRequest' })

  api.get('/me', async (request) => ({ id: request.user.sub, email: request.user.email }))
  api.post('/posts', async (request, reply) => {
    reply.code(201)
    return { author: request.user.sub }
  })
  // a public route inside the protected context opts out
  api.get('/posts', { config: { supabaseJwks: false } }, async () => [{ id: 1, title: 'Hello' }])
}, { prefix: '/api' })

app.addHook('onClose', async () => { await issuer?.close() })
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { app.close() })

const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
if (issuer) console.log(`try: curl -i ${address}/api/me -H 'Authorization: Bearer ${issuer.sign()}'`)
