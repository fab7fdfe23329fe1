// The ES module face of the package: the same plugin object as `require('fastify-supabase-jwks')`,
// with the named export the types promise (Node's ESM cannot see the names that fastify-plugin
// sets on the CommonJS export at run time).
import plugin from './index.js'

export default plugin
export const fastifySupabaseJwks = plugin
export const fastifyJwtOptions = plugin.fastifyJwtOptions
export const hasScopes = plugin.hasScopes
