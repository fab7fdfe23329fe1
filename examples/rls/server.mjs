// Notes under Row Level Security: request.sql runs each statement as the caller (authenticated, or
// anon with no user), so the table's policies decide what each one sees. Needs a PostgreSQL with
// Supabase's roles and the notes table (README.md); without SUPABASE_URL it starts a local test issuer.
//   DATABASE_URL=postgres://app_sql:<password>@127.0.0.1:5432/postgres node examples/rls/server.mjs
import Fastify from 'fastify'
import supabaseJwks from 'fastify-supabase-jwks'
import { createTestIssuer } from 'fastify-supabase-jwks/testing'

const connectionString = process.env.DATABASE_URL
if (!connectionString) {
  console.error('set DATABASE_URL to a connection string of a role that may only SET ROLE to anon and authenticated (README.md)')
  process.exit(1)
}
const issuer = process.env.SUPABASE_URL ? undefined : await createTestIssuer()
const supabaseUrl = process.env.SUPABASE_URL || issuer.url

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(supabaseJwks, {
  supabaseUrl,
  algorithms: ['RS256', 'ES256'],
  postgres: { connectionString } // never logged by the plugin; its pool is ended on close
})

const signedInOrNot = { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'none'] } } }

// a user gets their own notes; a caller without a token runs as anon, whom no policy admits: []
app.get('/notes', signedInOrNot, async (request) => request.sql`select id, body from notes order by id`)

// users only (401 without a token); user_id defaults to auth.uid(), and the policy checks it
app.post('/notes', {
  preHandler: app.authenticate,
  schema: { body: { type: 'object', required: ['body'], properties: { body: { type: 'string', maxLength: 1000 } } } }
}, async (request, reply) => {
  const [note] = await request.sql`insert into notes (body) values (${request.body.body}) returning id, body, user_id`
  return reply.code(201).send(note)
})

// readable by everyone, signed in or not
app.get('/posts', signedInOrNot, async (request) => request.sql`select id, title from public_posts order by id`)

app.addHook('onClose', async () => { await issuer?.close() })
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { app.close() })

const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
if (issuer) {
  console.log(`add a note: curl -i -X POST ${address}/notes -H 'Content-Type: application/json' -d '{"body":"hello"}' -H 'Authorization: Bearer ${issuer.sign()}'`)
  console.log(`as nobody:  curl -i ${address}/notes`)
}
