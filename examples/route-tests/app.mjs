// The app, built by a function so that tests can build it against a test issuer.
import Fastify from 'fastify'
import supabaseJwks from 'fastify-supabase-jwks'

export async function build ({ supabaseUrl, logger = false }) {
  const app = Fastify({ logger })
  await app.register(supabaseJwks, { supabaseUrl, algorithms: ['RS256', 'ES256'] })

  app.get('/me', { preHandler: app.authenticate }, async (request) => ({
    id: request.user.sub,
    email: request.user.email
  }))

  app.post('/notes', {
    preHandler: app.authenticate,
    schema: { body: { type: 'object', required: ['text'], properties: { text: { type: 'string' } } } }
  }, async (request, reply) => {
    reply.code(201)
    return { owner: request.user.sub, text: request.body.text }
  })

  return app
}
