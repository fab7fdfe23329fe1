// One benchmark server, in its own process: `node bench/server.mjs <variant>`, configured by the
// parent over IPC (sql-*: with the URL of the run's PostgreSQL). Answers 'stats' messages with its CPU
// time, RSS, heap after GC and (plugin, sql-*) its stats().
import { createPublicKey } from 'node:crypto'
import { createRequire } from 'node:module'
import Fastify from 'fastify'

const require = createRequire(import.meta.url)
const variant = process.argv[2]

function send (message) {
  process.send(message)
}

/**
 * The practical floor: split, one crypto.verify with a prebuilt key object, parse, check exp/iss/aud.
 * `async`: crypto.verify's callback form, on the libuv thread pool (unbounded).
 */
function limitVerifier ({ jwk, alg, issuer }, async = false) {
  const { verify } = require('node:crypto')
  const key = createPublicKey({ key: jwk, format: 'jwk' })
  const hash = 'sha256'
  const options = alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key
  const check = async
    ? (data, signature) => new Promise((resolve) => verify(hash, data, options, signature, (err, valid) => resolve(!err && valid)))
    : (data, signature) => verify(hash, data, options, signature)
  return async function limit (request, reply) {
    const header = request.headers.authorization
    if (header === undefined || !header.startsWith('Bearer ')) return reply.code(401).send()
    const token = header.slice(7)
    const dot = token.lastIndexOf('.')
    const ok = await check(Buffer.from(token.slice(0, dot)), Buffer.from(token.slice(dot + 1), 'base64url'))
    if (!ok) return reply.code(401).send()
    const claims = JSON.parse(Buffer.from(token.slice(token.indexOf('.') + 1, dot), 'base64url').toString())
    if (!(claims.exp * 1000 > Date.now()) || claims.iss !== issuer || claims.aud !== 'authenticated') return reply.code(401).send()
    request.user = claims
  }
}

/** The route's answer: the caller's sub, or (supabase-*) the rows of one PostgREST call. */
let handler = async (request) => ({ sub: request.user?.sub ?? null })

/** A handler that reads `notes` through `clientOf(request)` and answers its rows. */
function notesThrough (clientOf) {
  return async function notes (request) {
    const { data, error } = await clientOf(request).from('notes').select('*')
    if (error !== null) throw new Error(error.message)
    return data
  }
}

/** The plugin's token cache figures, for the stats message. */
function pluginStats (app) {
  return () => {
    const { fetches, cachedTokens, tokenCacheHits, tokenCacheMisses } = app.supabaseJwks.stats()
    return { fetches, cachedTokens, tokenCacheHits, tokenCacheMisses }
  }
}

/*
 * The sql-* variants: the plugin with `postgres: { pool }` (a pg Pool as authenticator, max 10) and the
 * route behind app.authenticate; `scoped`, the query through request.sql (a transaction as the caller:
 * the setup and the statement pipelined in one implicit transaction: 1 round trip), else the same query on the same kind of
 * pool, alone (1 round trip). The trivial query reads one post; the realistic one the caller's notes,
 * 20 of 10,000, by the index on user_id: under RLS the policy filters them, unscoped a WHERE does.
 */
const SQL_QUERIES = {
  trivial: {
    scoped: (request) => request.sql`select id, title from public_posts where id = ${1}`,
    unscoped: { text: 'select id, title from public_posts where id = $1', values: () => [1] }
  },
  realistic: {
    scoped: (request) => request.sql`select id, body from notes order by id`,
    unscoped: { text: 'select id, body from notes where user_id = $1 order by id', values: (request) => [request.user.sub] }
  }
}

async function sqlRoute (app, config) {
  const { Pool } = require('pg')
  const pool = new Pool({ connectionString: config.postgres.authenticatorUrl, max: 10 })
  pool.on('error', (err) => console.error(`${variant}: an idle PostgreSQL connection failed: ${err.message}`))
  app.addHook('onClose', () => pool.end())
  const supabaseJwks = require('fastify-supabase-jwks')
  await app.register(supabaseJwks, { jwksUrl: config.jwksUrl, issuer: config.issuer, algorithms: [config.alg], postgres: { pool }, ...config.pluginOptions })
  const query = SQL_QUERIES[variant.endsWith('-realistic') ? 'realistic' : 'trivial']
  const handler = variant.startsWith('sql-scoped')
    ? async (request) => query.scoped(request)
    : async (request) => (await pool.query({ text: query.unscoped.text, values: query.unscoped.values(request) })).rows
  return { preHandler: app.authenticate, handler }
}

async function main (config) {
  const app = Fastify({ logger: false })
  let cacheStats = () => ({})
  let preHandler
  if (variant.startsWith('supabase')) {
    // supabase-user: request.supabase (the caller's token, the client kept by token); supabase-anon: the
    // same plugin and authentication, the call through one anonymous client made once: what acting as the caller costs
    const supabaseJwks = require('fastify-supabase-jwks')
    const supabase = { url: config.standIn, publishableKey: config.publishableKey }
    await app.register(supabaseJwks, { jwksUrl: config.jwksUrl, issuer: config.issuer, algorithms: [config.alg], supabase, ...config.pluginOptions })
    preHandler = app.authenticate
    if (variant === 'supabase-user') {
      handler = notesThrough((request) => request.supabase)
    } else {
      const { createClient } = require('@supabase/supabase-js')
      const anonymous = createClient(supabase.url, supabase.publishableKey, {
        auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
        realtime: { transport: require('ws') }
      })
      handler = notesThrough(() => anonymous)
    }
    cacheStats = () => {
      const { cachedTokens, tokenCacheHits, tokenCacheMisses, supabaseClients } = app.supabaseJwks.stats()
      return { cachedTokens, tokenCacheHits, tokenCacheMisses, supabaseClients }
    }
  } else if (variant === 'public') {
    preHandler = undefined
  } else if (variant === 'public-hook') {
    // a route preHandler that does nothing: what the hook alone costs
    preHandler = async function noop () {}
  } else if (variant.startsWith('limit')) {
    preHandler = limitVerifier(config, variant.startsWith('limit-async'))
  } else if (variant.startsWith('reglimit')) {
    // the limit's body in a server with the plugin registered (and never called): what registering costs
    const supabaseJwks = require('fastify-supabase-jwks')
    await app.register(supabaseJwks, { jwksUrl: config.jwksUrl, issuer: config.issuer, algorithms: [config.alg], ...config.pluginOptions })
    preHandler = limitVerifier(config, variant.startsWith('reglimit-async'))
  } else if (variant.startsWith('plugin')) {
    const supabaseJwks = require('fastify-supabase-jwks')
    await app.register(supabaseJwks, { jwksUrl: config.jwksUrl, issuer: config.issuer, algorithms: [config.alg], ...config.pluginOptions })
    preHandler = app.authenticate
    cacheStats = pluginStats(app)
  } else if (variant.startsWith('fastifyjwt')) {
    // @fastify/jwt verifying with the plugin's keys and checks (fastifyJwtOptions): its request path, and request.jwtVerify()
    const { fastifyJwtOptions } = require('fastify-supabase-jwks')
    await app.register(require('@fastify/jwt'), fastifyJwtOptions({ jwksUrl: config.jwksUrl, issuer: config.issuer, algorithms: [config.alg], ...config.pluginOptions }))
    preHandler = async function jwtVerify (request) {
      await request.jwtVerify()
    }
  } else if (variant.startsWith('fastjwt')) {
    const { createVerifier } = require('fast-jwt')
    const pem = createPublicKey({ key: config.jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' })
    const verify = createVerifier({ key: pem, algorithms: [config.alg], allowedIss: [config.issuer], allowedAud: ['authenticated'], requiredClaims: ['exp', 'sub', 'iss', 'aud'] })
    preHandler = async function fastJwt (request, reply) {
      const header = request.headers.authorization
      if (header === undefined || !header.startsWith('Bearer ')) return reply.code(401).send()
      try {
        request.user = verify(header.slice(7))
      } catch {
        return reply.code(401).send()
      }
    }
  } else if (variant.startsWith('jose')) {
    const { createRemoteJWKSet, jwtVerify } = await import('jose')
    const jwks = createRemoteJWKSet(new URL(config.jwksUrl))
    preHandler = async function joseVerify (request, reply) {
      const header = request.headers.authorization
      if (header === undefined || !header.startsWith('Bearer ')) return reply.code(401).send()
      try {
        const { payload } = await jwtVerify(header.slice(7), jwks, { issuer: config.issuer, audience: 'authenticated', algorithms: [config.alg] })
        request.user = payload
      } catch {
        return reply.code(401).send()
      }
    }
  } else if (variant.startsWith('sql')) {
    ;({ preHandler, handler } = await sqlRoute(app, config))
    cacheStats = pluginStats(app)
  } else {
    throw new Error(`unknown variant ${variant}`)
  }
  // a route's requirements (plugin-secretkey, plugin-optional: its auth modes)
  const routeConfig = config.route === undefined ? {} : { config: { supabaseJwks: config.route } }
  app.get('/me', preHandler ? { preHandler, ...routeConfig } : {}, handler)
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  process.on('message', (message) => {
    if (message.type === 'stats') {
      const cpu = process.cpuUsage()
      const memory = process.memoryUsage()
      // the heap after a full GC (started with --expose-gc), measured after the CPU time so that it is not counted
      if (message.gc) globalThis.gc?.()
      send({ type: 'stats', cpuMicros: cpu.user + cpu.system, rss: memory.rss, heapUsed: memory.heapUsed, heapTotal: memory.heapTotal, heapAfterGc: process.memoryUsage().heapUsed, ...cacheStats() })
    } else if (message.type === 'close') {
      app.close().then(() => process.exit(0))
    }
  })
  send({ type: 'ready', address })
}

process.once('message', (message) => {
  main(message.config).catch((err) => {
    console.error(err)
    process.exit(1)
  })
})
