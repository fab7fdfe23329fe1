// Authorization on verified claims: no anonymous users by default, MFA for billing, a role for
// deleting posts. Without SUPABASE_URL it starts a local test issuer.
//   node examples/authorization/server.mjs
import Fastify from 'fastify'
import supabaseJwks from 'fastify-supabase-jwks'
import { createTestIssuer } from 'fastify-supabase-jwks/testing'

const issuer = process.env.SUPABASE_URL ? undefined : await createTestIssuer()
const supabaseUrl = process.env.SUPABASE_URL || issuer.url

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(supabaseJwks, {
  supabaseUrl,
  algorithms: ['RS256', 'ES256'],
  require: { anonymous: false } // every route: users signed in anonymously get 403
})

app.get('/me', { preHandler: app.authenticate }, async (request) => ({ id: request.user.sub }))

// a route's requirements override the plugin's key by key: anonymous users welcome here
app.get('/cart', {
  preHandler: app.authenticate,
  config: { supabaseJwks: { anonymous: true } }
}, async (request) => ({ owner: request.user.sub, anonymous: request.user.is_anonymous }))

// only sessions that passed multi-factor authentication (aal2)
app.get('/billing', {
  preHandler: app.authenticate,
  config: { supabaseJwks: { aal: 'aal2' } }
}, async () => ({ plan: 'pro' }))

// a role from the `user_role` claim that a Supabase custom access token hook adds
app.delete('/posts/:id', {
  preHandler: app.authenticate,
  config: { supabaseJwks: { check: (user) => user.user_role === 'admin' } }
}, async (request, reply) => reply.code(204).send())

app.addHook('onClose', async () => { await issuer?.close() })
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { app.close() })

const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
if (issuer) {
  console.log(`an aal2 admin: curl -i -X DELETE ${address}/posts/1 -H 'Authorization: Bearer ${issuer.sign({ aal: 'aal2', user_role: 'admin' })}'`)
  console.log(`an anonymous user: curl -i ${address}/me -H 'Authorization: Bearer ${issuer.sign({ is_anonymous: true })}'`)
}
