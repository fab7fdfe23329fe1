// The package's ES module entry (dist/esm.mjs, what `import` loads through package.json "exports";
// this folder's package.json makes these files ESM): the default and the named exports.
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt'
import { expectError, expectType } from 'tsd'
import supabaseJwks, { fastifyJwtOptions, fastifySupabaseJwks, hasScopes } from '../../dist/esm.mjs'
import type { SupabaseUser } from '../../dist/index.js'

expectType<typeof supabaseJwks>(fastifySupabaseJwks)
expectType<(instance: FastifyInstance) => FastifyJWTOptions>(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }))
expectType<typeof fastifyJwtOptions>(supabaseJwks.fastifyJwtOptions)
expectType<typeof hasScopes>(supabaseJwks.hasScopes)
expectType<boolean>(hasScopes({ scope: 'openid mcp:tools' }, 'mcp:tools'))

const app = Fastify()
await app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { namespace: 'supabase', jwtVerify: 'jwtVerify' }))
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { secret: 'shh' }))
app.get('/me', async (request) => {
  await request.jwtVerify()
  expectType<SupabaseUser>(request.user)
  return request.user.sub
})
