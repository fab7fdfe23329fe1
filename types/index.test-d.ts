import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt'
import { expectAssignable, expectError, expectType } from 'tsd'
import supabaseJwks, { fastifyJwtOptions, hasScopes, type AuthMode, type FastifyJwtExtraOptions, type IssuerOptions, type ResourceMetadataOptions, type SupabaseAuth, type SupabaseJwksOptions, type SupabaseUser, type KeyStats } from '..'
import { createTestIssuer, generateTestKey, signJwt, type SigningKey, type TestIssuer } from '../dist/testing'

declare module '..' {
  interface SupabaseCustomClaims {
    tenant_id?: string
    user_role?: 'admin' | 'member'
  }
}

const app = Fastify()
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co' })
app.register(supabaseJwks, { jwksUrl: 'https://auth.example.com/.well-known/jwks.json', issuer: false, algorithms: ['ES256', 'RS256'] })
app.register(supabaseJwks.fastifySupabaseJwks, { supabaseUrl: 'https://abc.supabase.co', hook: 'onRequest' })
app.register(supabaseJwks.default, { supabaseUrl: 'https://abc.supabase.co', cacheTtl: 600, cooldown: 30 })

// options are checked: no shared secret, no HS256, durations are numbers
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', algorithms: ['HS256'] }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', secret: 'shh' }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', cacheTtl: '10m' }))
expectAssignable<SupabaseJwksOptions>({ supabaseUrl: 'x', audience: ['authenticated', 'other'], issuer: ['a', 'b'] })

expectType<(request: FastifyRequest, reply: FastifyReply) => Promise<void>>(app.authenticate)
expectAssignable<KeyStats>(app.supabaseJwks.stats())
expectType<number>(app.supabaseJwks.stats().tokenCacheHits)
expectType<number | undefined>(app.supabaseJwks.stats().legacyAccepted)
expectType<'fresh' | 'refreshing' | 'stale' | 'unavailable'>(app.supabaseJwks.stats().state)
expectType<number | null>(app.supabaseJwks.stats().nextRetryAt)
expectType<number>(app.supabaseJwks.stats().signaturesOffLoop)
expectType<number>(app.supabaseJwks.stats().accepted)
expectType<number>(app.supabaseJwks.stats().rejected.FST_SUPABASE_JWKS_MALFORMED_COOKIE)
expectError(app.supabaseJwks.stats().rejected.FST_NOPE)
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', cookie: true })
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', cookie: { name: 'sb-abc-auth-token' } })
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', cookie: 'sb-abc-auth-token' }))
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', extractToken: (request) => (request.query as { t?: string }).t })
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', extractToken: async () => null })
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', extractToken: () => 42 }))
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', warmStart: false })
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', require: { aal: 'aal2', anonymous: false, check: async (user, request) => user.sub !== '' && request.method === 'GET' } })
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', require: { aal: 'aal3' } }))
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', isRevoked: async (claims, request) => claims.session_id === 'x' && request !== undefined })
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', isRevoked: true }))
// route checks and isRevoked get the claims as request.user has them: your custom claims included
app.register(supabaseJwks, {
  supabaseUrl: 'https://abc.supabase.co',
  require: {
    check: (user) => {
      expectType<Readonly<SupabaseUser>>(user)
      expectType<'admin' | 'member' | undefined>(user.user_role)
      return user.tenant_id === 't1'
    }
  },
  isRevoked: (claims, request) => {
    expectType<Readonly<SupabaseUser>>(claims)
    expectType<FastifyRequest | undefined>(request)
    expectType<string | undefined>(claims.tenant_id)
    return claims.user_role === 'member'
  }
})
app.delete('/posts/:id', { preHandler: app.authenticate, config: { supabaseJwks: { check: (user) => user.user_role === 'admin' } } }, async () => 'ok')
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', require: { check: (user) => user.nope === 1 } }))
expectError(app.get('/nope', { config: { supabaseJwks: { check: (user) => user.nope === 'admin' } } }, async () => 'ok'))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', isRevoked: (claims) => claims.nope === true }))
app.get('/mfa', { preHandler: app.authenticate, config: { supabaseJwks: { aal: 'aal2' } } }, async () => 'ok')
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', legacyTokens: { until: '2026-12-08T00:00:00Z', apiKey: 'sb_publishable_x' } })
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', legacyTokens: { until: new Date(), apiKey: 'k', maxCallsPerSecond: 10, maxConcurrentCalls: 4 } })
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', legacyTokens: { apiKey: 'k' } }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', legacyTokens: { until: new Date(), apiKey: 'k', secret: 'shh' } }))
expectType<Promise<SupabaseUser>>(app.supabaseJwks.verify('token'))

// any OpenID Connect issuer: discovery, and several issuers in one registration
app.register(supabaseJwks, { discovery: true, issuer: 'https://tenant.eu.auth0.com/', audience: 'https://api.example.com' })
app.register(supabaseJwks, {
  audience: 'https://api.example.com',
  cacheTtl: 300,
  issuers: [
    { supabaseUrl: 'https://prod.supabase.co', algorithms: ['ES256'] },
    { supabaseUrl: 'https://staging.supabase.co', cooldown: 60 },
    { issuer: 'https://keycloak.example.com/realms/api', discovery: true, audience: 'account' },
    { issuer: 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc', jwksUrl: 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/.well-known/jwks.json', audience: false }
  ],
  require: { issuers: ['https://prod.supabase.co/auth/v1'] }
})
expectAssignable<IssuerOptions>({ issuer: 'https://id.example.com', jwksUrl: 'https://id.example.com/jwks', audience: ['a', 'b'], clockTolerance: 5, staleIfError: 0, timeout: 2, maxResponseSize: 1000 })
expectError(app.register(supabaseJwks, { issuers: [{ issuer: false, supabaseUrl: 'https://prod.supabase.co' }] }))
expectError(app.register(supabaseJwks, { issuers: [{ supabaseUrl: 'https://prod.supabase.co', hook: 'onRequest' }] }))
expectError(app.register(supabaseJwks, { discovery: 'yes', issuer: 'https://id.example.com', audience: 'a' }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', require: { issuers: 'https://abc.supabase.co/auth/v1' } }))
app.get('/prod', { preHandler: app.authenticate, config: { supabaseJwks: { issuers: ['https://prod.supabase.co/auth/v1'] } } }, async () => 'ok')
expectType<Record<string, KeyStats> | undefined>(app.supabaseJwks.stats().issuers)

// keys given inline: the JWKS document, or its JSON text (an environment variable); node:crypto's JsonWebKey fits
app.register(supabaseJwks, { jwks: process.env.SUPABASE_JWKS ?? '', issuer: 'https://abc.supabase.co/auth/v1', algorithms: ['ES256'] })
app.register(supabaseJwks, {
  supabaseUrl: 'https://abc.supabase.co',
  jwks: { keys: [{ kty: 'EC', kid: 'k1', crv: 'P-256', x: 'x', y: 'y', alg: 'ES256', use: 'sig', key_ops: ['verify'] }] }
})
app.register(supabaseJwks, { jwks: { keys: [generateTestKey().publicKey.export({ format: 'jwk' })] }, issuer: false })
expectAssignable<SupabaseJwksOptions['jwks']>(JSON.parse('{"keys":[]}') as { keys: Array<Record<string, unknown>> })
expectAssignable<IssuerOptions>({ issuer: 'https://abc.supabase.co/auth/v1', audience: 'authenticated', jwks: '{"keys":[]}' })
expectError(app.register(supabaseJwks, { issuer: 'https://abc.supabase.co/auth/v1', jwks: [{ kty: 'EC' }] }))
expectError(app.register(supabaseJwks, { issuer: 'https://abc.supabase.co/auth/v1', jwks: { keys: 'k1' } }))
expectError(app.register(supabaseJwks, { issuer: 'https://abc.supabase.co/auth/v1', jwks: { keys: [{ kty: 1 }] } }))
expectError(app.register(supabaseJwks, { issuer: 'https://abc.supabase.co/auth/v1', jwks: true }))

app.get('/me', { preHandler: app.authenticate }, async (request) => {
  expectType<SupabaseUser>(request.user)
  expectType<string>(request.user.sub)
  expectType<number>(request.user.exp)
  expectType<'aal1' | 'aal2' | undefined>(request.user.aal)
  expectType<boolean | undefined>(request.user.is_anonymous)
  expectType<string | undefined>(request.user.tenant_id)
  expectError(request.user.nope)
  return request.user
})

app.get('/public', { config: { supabaseJwks: false } }, async () => 'ok')

// OAuth scopes and the protected-resource metadata (RFC 9728)
app.register(supabaseJwks, {
  supabaseUrl: 'https://abc.supabase.co',
  require: { scope: 'mcp:tools' },
  resourceMetadata: { resource: 'https://api.example.com/mcp', scopesSupported: ['mcp:tools'], authorizationServers: ['https://abc.supabase.co/auth/v1'] }
})
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', require: { scope: ['read', 'write'] }, resourceMetadata: { resource: 'https://api.example.com' } })
app.get('/tools', { preHandler: app.authenticate, config: { supabaseJwks: { scope: ['mcp:tools', 'mcp:read'] } } }, async () => 'ok')
app.get('/any', { preHandler: app.authenticate, config: { supabaseJwks: { scope: [] } } }, async () => 'ok')
expectError(app.get('/bad', { config: { supabaseJwks: { scope: 42 } } }, async () => 'ok'))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', require: { scopes: 'read' } }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', resourceMetadata: { scopesSupported: ['a'] } }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', resourceMetadata: { resource: 'https://api.example.com', scopesSupported: 'a' } }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', resourceMetadata: 'https://api.example.com' }))
expectAssignable<ResourceMetadataOptions>({ resource: 'https://api.example.com' })
expectType<string | undefined>(({} as SupabaseUser).scope)
expectType<string | undefined>(({} as SupabaseUser).client_id)
expectType<boolean>(hasScopes({} as SupabaseUser, 'mcp:tools'))
expectType<boolean>(hasScopes({} as SupabaseUser, ['mcp:tools', 'read']))
expectType<typeof hasScopes>(supabaseJwks.hasScopes)
expectError(hasScopes({} as SupabaseUser, 42))

// who may call a route (auth): API keys by set, one or named; modes alone or in a list
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', publishableKeys: 'sb_publishable_x', secretKeys: { default: 'sb_secret_x', cron: 'sb_secret_y' } })
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', secretKeys: { cron: 'sb_secret_y' }, require: { auth: ['user', 'secret:cron'] } })
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', secretKeys: 42 }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', publishableKeys: ['sb_publishable_x'] }))
expectAssignable<AuthMode[]>(['user', 'publishable', 'secret', 'none', 'publishable:web', 'secret:*'])
expectError(app.get('/x', { config: { supabaseJwks: { auth: 'public' } } }, async () => 'ok'))
expectError(app.get('/x', { config: { supabaseJwks: { auth: ['user', 'anyone'] } } }, async () => 'ok'))
expectType<number>(app.supabaseJwks.stats().acceptedApiKeys)
expectType<number>(app.supabaseJwks.stats().acceptedNone)
expectType<number>(app.supabaseJwks.stats().rejected.FST_SUPABASE_JWKS_INVALID_API_KEY)
app.get('/feed', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'secret', 'none'] } } }, async (request) => {
  expectType<SupabaseAuth | null>(request.supabaseAuth)
  // a mixed route narrows by mode: the user only in 'user', the key's name only in a key mode
  const user = request.supabaseAuth?.mode === 'user' ? request.user : null
  expectType<SupabaseUser | null>(user)
  if (request.supabaseAuth?.mode === 'secret') expectType<string>(request.supabaseAuth.keyName)
  if (request.supabaseAuth?.mode === 'none') expectError(request.supabaseAuth.keyName)
  return user?.sub ?? null
})

// @fastify/jwt verifying Supabase tokens: fastifyJwtOptions gives its registration options (a function of the instance)
expectType<(instance: FastifyInstance) => FastifyJWTOptions>(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }))
expectType<typeof fastifyJwtOptions>(supabaseJwks.fastifyJwtOptions)
app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }))
app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co', algorithms: ['ES256'] }, { namespace: 'supabase' }))
app.register(fastifyJwt, fastifyJwtOptions({ issuers: [{ supabaseUrl: 'https://prod.supabase.co' }], require: { aal: 'aal2' }, isRevoked: (claims) => claims.sub === 'x' }, {
  namespace: 'supabase',
  jwtVerify: 'jwtVerify',
  trusted: async (request, payload) => request.method === 'GET' && payload !== null,
  verify: { extractToken: (request) => request.headers['x-token'] as string },
  cookie: { cookieName: 'token', signed: false }
}))
expectAssignable<FastifyJwtExtraOptions>({ namespace: 'supabase', formatUser: (payload: SupabaseUser) => payload })
// what this registration gives @fastify/jwt itself, and sign options (it cannot sign), are type errors; so are the plugin's bad options
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { secret: 'shh' }))
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { namespace: 'supabase', secret: { public: 'pem' } }))
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { sign: { expiresIn: '1h' } }))
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { decode: { complete: false } }))
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { verify: { algorithms: ['HS256'] } }))
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { verify: { cache: true } }))
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co' }, { verify: { maxAge: '1h' } }))
expectAssignable<FastifyJwtExtraOptions>({ verify: { onlyCookie: true, allowedSub: 'x' }, decode: { checkTyp: 'JWT' } })
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co', algorithms: ['HS256'] }))
expectError(fastifyJwtOptions({ supabaseUrl: 'https://abc.supabase.co', secret: 'shh' }))
expectError(fastifyJwtOptions())
app.get('/jwt', async (request) => {
  await request.jwtVerify()
  expectType<SupabaseUser>(request.user)
  expectType<'aal1' | 'aal2' | undefined>(request.user.aal)
  expectType<string | undefined>(request.user.tenant_id)
  return request.user.sub
})

async function issuerTypes (): Promise<void> {
  const issuer = await createTestIssuer({ alg: 'ES256' })
  expectType<TestIssuer>(issuer)
  expectType<string>(issuer.sign({ role: 'service_role' }, { header: { typ: 'at+jwt' } }))
  expectType<number>(issuer.jwksRequests)
  expectType<string>(issuer.signLegacy({ sub: 'u' }))
  expectType<number>(issuer.userRequests)
  expectError(createTestIssuer({ alg: 'HS256' }))
  // signJwt: a private KeyObject, or an HS* secret as a string, a Buffer or a secret KeyObject
  expectType<string>(signJwt({ alg: 'ES256' }, { sub: 'u' }, generateTestKey('ES256').privateKey))
  expectType<string>(signJwt({ alg: 'HS256' }, { sub: 'u' }, issuer.legacySecret))
  expectType<string>(signJwt({ alg: 'HS512' }, { sub: 'u' }, Buffer.from('secret')))
  expectAssignable<SigningKey>('secret')
  expectError(signJwt({ alg: 'HS256' }, { sub: 'u' }, 42))
}
issuerTypes().catch(() => {})

// requirements take readonly lists (`as const`)
const ownerModes = ['user', 'secret:cron'] as const
const toolScopes = ['mcp:tools', 'mcp:read'] as const
expectAssignable<supabaseJwks.Requirements>({ auth: ownerModes, scope: toolScopes })

// request.supabase and fastify.supabaseAdmin: the app's own supabase-js client, typed with its Database
// by merging SupabaseTypes (unmerged, they are SupabaseClientLike: the pack test compiles that without supabase-js)
interface Database {
  public: {
    Tables: {
      notes: {
        Row: { id: number, body: string }
        Insert: { id?: number, body: string }
        Update: { id?: number, body?: string }
        Relationships: []
      }
    }
    Views: {}
    Functions: { mine: { Args: { since: number }, Returns: number } }
    Enums: {}
    CompositeTypes: {}
  }
}
declare module '..' {
  interface SupabaseTypes {
    client: import('@supabase/supabase-js').SupabaseClient<Database>
  }
}
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', supabase: { publishableKey: 'sb_publishable_x', secretKey: 'sb_secret_y' } })
app.register(supabaseJwks, {
  issuers: [{ supabaseUrl: 'https://a.supabase.co', supabase: { publishableKey: 'sb_publishable_a' } }],
  supabase: { url: 'https://a.supabase.co', publishableKey: 'sb_publishable_a' }
})
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', supabase: { url: 'https://abc.supabase.co' } }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', supabase: { publishableKey: 'k', serviceRoleKey: 'k' } }))
expectType<import('@supabase/supabase-js').SupabaseClient<Database>>(app.supabaseAdmin)
expectAssignable<supabaseJwks.SupabaseClientLike>(app.supabaseAdmin)
expectType<number | undefined>(app.supabaseJwks.stats().supabaseClients)
app.get('/notes', { preHandler: app.authenticate }, async (request) => {
  expectType<import('@supabase/supabase-js').SupabaseClient<Database>>(request.supabase)
  const { data } = await request.supabase.from('notes').select('id, body')
  expectType<Array<{ id: number, body: string }> | null>(data)
  expectType<number | null>((await request.supabase.rpc('mine', { since: 1 })).data)
  expectError(request.supabase.from('nope'))
  expectError(request.supabase = app.supabaseAdmin)
  return data
})

// sign-out on every instance (option sessions)
declare const sessionsPool: import('pg').Pool
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', sessions: { connectionString: 'postgres://supabase_jwks_sessions@db/postgres', every: 5, onUnavailable: 'refuse' } })
app.register(supabaseJwks, { issuers: [{ supabaseUrl: 'https://a.supabase.co', sessions: { pool: sessionsPool, lastKnownFor: 30, maxSessions: 1000, timeout: 2 } }] })
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', sessions: { connectionString: 'x', onUnavailable: 'accept' } }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', sessions: { connectionString: 'x', often: 5 } }))
expectType<supabaseJwks.SessionStats | undefined>(app.supabaseJwks.stats().sessions)
expectType<number | undefined>(app.supabaseJwks.stats().sessions?.checks)
app.supabaseJwks.verify('token').then((user) => {
  const stop = app.supabaseJwks.watchSession(user, (err) => { expectType<Error>(err) })
  expectType<() => void>(stop)
  expectError(app.supabaseJwks.watchSession(user))
})
