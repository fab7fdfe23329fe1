// An SSR app's API: the browser's @supabase/ssr session cookie signs requests in, and
// state-changing routes also need a CSRF token. Without SUPABASE_URL it starts a local test issuer
// with a demo user (ada@example.com / correct horse).
//   node examples/ssr-cookie/server.mjs
import Fastify from 'fastify'
import fastifyCookie from '@fastify/cookie'
import fastifyCsrf from '@fastify/csrf-protection'
import { createServerClient } from '@supabase/ssr'
import WebSocket from 'ws'
import supabaseJwks from 'fastify-supabase-jwks'
import { createTestIssuer } from 'fastify-supabase-jwks/testing'

const issuer = process.env.SUPABASE_URL ? undefined : await createTestIssuer()
issuer?.addUser({ email: 'ada@example.com', password: 'correct horse', user_metadata: { name: 'Ada' } })
const supabaseUrl = process.env.SUPABASE_URL || issuer.url
// the publishable (or anon) key: public, what the browser client uses too
const publishableKey = process.env.SUPABASE_PUBLISHABLE_KEY || issuer?.apiKey
if (!publishableKey) {
  console.error('set SUPABASE_PUBLISHABLE_KEY to the project\'s publishable (sb_publishable_...) or anon key: it is public')
  process.exit(1)
}

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(fastifyCookie)
await app.register(fastifyCsrf) // its secret in a `_csrf` cookie (HttpOnly, SameSite=Strict)
await app.register(supabaseJwks, { supabaseUrl, cookie: true }) // reads sb-<ref>-auth-token

/** @supabase/ssr's server client, reading and writing this request's cookies. */
function supabaseFor (request, reply) {
  return createServerClient(supabaseUrl, publishableKey, {
    cookies: {
      getAll: () => Object.entries(request.cookies).map(([name, value]) => ({ name, value })),
      // the session cookies, and the headers @supabase/ssr asks for with them (Cache-Control: private,
      // no-store…): a cached answer must never hand one user's session to another
      setAll: (cookies, headers = {}) => {
        for (const { name, value, options } of cookies) reply.setCookie(name, value, options)
        reply.headers(headers)
      }
    },
    realtime: { transport: WebSocket } // Node 20 has no global WebSocket
  })
}

// sign-in: @supabase/ssr writes the session cookies (chunked when large) on the reply
app.post('/login', async (request, reply) => {
  const { email, password } = request.body ?? {}
  const { error } = await supabaseFor(request, reply).auth.signInWithPassword({ email, password })
  if (error) return reply.code(401).send({ error: 'invalid credentials' })
  return { ok: true }
})

// reads: the session cookie is enough (never change state on GET)
app.get('/api/me', { preHandler: app.authenticate }, async (request) => ({
  id: request.user.sub,
  email: request.user.email,
  name: request.user.user_metadata?.name
}))

// the page asks for a CSRF token and sends it back in `x-csrf-token` with each change
app.get('/api/csrf', { preHandler: app.authenticate }, async (request, reply) => ({ token: reply.generateCsrf() }))

// changes: the session cookie and a CSRF token (a cross-site form cannot read the token)
app.post('/api/notes', { onRequest: app.csrfProtection, preHandler: app.authenticate }, async (request, reply) =>
  reply.code(201).send({ by: request.user.sub, text: String(request.body?.text ?? '') }))

app.addHook('onClose', async () => { await issuer?.close() })
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { app.close() })

const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
if (issuer) {
  console.log(`sign in: curl -i -c jar -H 'content-type: application/json' -d '{"email":"ada@example.com","password":"correct horse"}' ${address}/login`)
  console.log(`then:    curl -b jar ${address}/api/me`)
}
