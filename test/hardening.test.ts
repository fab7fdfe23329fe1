import t from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { spawnSync } from 'node:child_process'
import type { ServerResponse } from 'node:http'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import fastifyJwt from '@fastify/jwt'
import supabaseJwks from '../lib/index'
import { toCachedKey } from '../lib/key-set'
import { createKeyResolver } from '../lib/keys'
import { normalizeOptions, SUPPORTED_ALGORITHMS as ALL } from '../lib/options'
import { generateTestKey } from '../lib/testing'
import { appFor, codeOf, getMe, issuerFor, loggedAppFor, serve } from './fixtures/helpers'

t.test('a JWK whose kid cannot become a string crashes nothing: the fetch is good, the key beside it verifies', async (t) => {
  const issuer = await issuerFor(t)
  serve(issuer, [{ kid: { toString: 1 } }, issuer.currentKey.jwk])
  const { app, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url, cooldown: 30 }, 'debug')
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'the good key beside it verifies')
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'forged-1' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'forged-2' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 2, 'the unknown-kid cooldown holds: the fetch counted as good')
  t.equal(app.supabaseJwks.stats().failures, 0)
  await t.resolves(app.supabaseJwks.refresh(), 'refresh() resolves')
  const skipped = entries().find((entry) => entry.msg === 'supabase-jwks: JWK skipped')!
  t.equal(skipped.kid, 'object', 'logged with a safe value')
})

t.test('null, numbers, strings and arrays as JWK entries: the same body gives the same key set, whatever the kid', async (t) => {
  const issuer = await issuerFor(t)
  serve(issuer, [null, 1, 'x', [], issuer.currentKey.jwk])
  const first = await appFor(t, { supabaseUrl: issuer.url })
  t.equal(codeOf(await getMe(first, issuer.sign({}, { header: { kid: 'forged' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'an unknown kid first: 401, not 503')
  t.equal((await first.inject({ url: '/me', headers: { authorization: `Bearer ${issuer.sign()}` } })).statusCode, 200, 'then the good key, from the same set')
  const second = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((await getMe(second, issuer.sign())).statusCode, 200, 'the good kid first')
  t.same([first.supabaseJwks.stats().failures, second.supabaseJwks.stats().failures], [0, 0])
  t.same([first.supabaseJwks.stats().keys, second.supabaseJwks.stats().keys], [1, 1])
})

t.test('during an outage held keys serve every request while a retry is in flight', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.1, cooldown: 0.1, timeout: 30 })
  const token = issuer.sign()
  t.equal((await getMe(app, token)).statusCode, 200)
  issuer.respondWith((_request, response) => { response.writeHead(500).end(); return true })
  await sleep(150)
  t.equal((await getMe(app, token)).statusCode, 200, 'the first failure is served stale')
  const held: ServerResponse[] = []
  issuer.respondWith((_request, response) => { held.push(response); return true })
  await sleep(150)
  let releasedByTimer = false
  const timer = setTimeout(() => { releasedByTimer = true; for (const response of held) response.destroy() }, 5000)
  const answers = await Promise.all(Array.from({ length: 6 }, () => getMe(app, token)))
  clearTimeout(timer)
  t.same(answers.map((answer) => answer.statusCode), [200, 200, 200, 200, 200, 200])
  t.equal(releasedByTimer, false, 'none of them waited for the hanging retry')
  await sleep(100)
  t.equal(held.length, 1, 'one retry in flight for all of them')
  for (const response of held) response.destroy()
})

t.test('a JWK with any private member is refused (RFC 7518 §6)', async (t) => {
  const rsa = generateTestKey('RS256').jwk
  for (const member of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']) {
    t.throws(() => toCachedKey({ ...rsa, [member]: 'AAAA' }, ALL), { message: `a private key is published (${member})` }, member)
  }
  const issuer = await issuerFor(t)
  issuer.currentKey.jwk.p = 'AAAA'
  issuer.currentKey.jwk.q = 'AAAA'
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal(codeOf(await getMe(app, issuer.sign())), 'FST_SUPABASE_JWKS_UNKNOWN_KID', 'p and q without d: refused all the same')
})

t.test('a cache-expiry fetch that finds its kid does not end the unknown-kid cooldown', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, cacheTtl: 0.2, cooldown: 30 })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'forged-1' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 2, 'the forged kid fetched once and started the cooldown')
  await sleep(250)
  t.equal((await getMe(app, issuer.sign())).statusCode, 200)
  await sleep(50) // the refresh ahead runs in the background
  t.equal(issuer.jwksRequests, 3, 'the expired set was fetched again for a known kid')
  t.equal(codeOf(await getMe(app, issuer.sign({}, { header: { kid: 'forged-2' } }))), 'FST_SUPABASE_JWKS_UNKNOWN_KID')
  t.equal(issuer.jwksRequests, 3, 'still within the cooldown: no fetch for another forged kid')
})

t.test('a fetch that rejects unexpectedly counts as a failure and rejects nothing', async (t) => {
  const issuer = await issuerFor(t)
  const warned: string[] = []
  const log = {
    info () { throw new Error('a logger that throws') },
    warn (_object: object, message: string) { warned.push(message) },
    debug () {}
  } as unknown as Parameters<typeof createKeyResolver>[1]
  const keys = createKeyResolver(normalizeOptions({ supabaseUrl: issuer.url }).issuers[0]!, log)
  t.teardown(() => keys.close())
  await t.resolves(keys.refresh())
  t.equal(keys.stats().failures, 1)
  t.same(warned, ['supabase-jwks: JWKS fetch failed'])
})

t.test('a JWKS with no key for the algorithms option, or no usable key, is logged at warn with what to change', async (t) => {
  const issuer = await issuerFor(t, { alg: 'ES256' })
  const { app, entries } = await loggedAppFor(t, { supabaseUrl: issuer.url }, 'warn')
  await app.supabaseJwks.refresh()
  const warning = entries().find((entry) => /no key for the algorithms option/.test(entry.msg))!
  t.equal(warning.level, 40)
  t.match(warning.msg, /\(RS256\); its keys sign with ES256: add those to algorithms/)
  const token = issuer.sign()
  t.equal((await getMe(app, token)).json().message, 'The token algorithm is not allowed: ES256 (not in the plugin\'s algorithms option)')

  issuer.currentKey.jwk.use = 'enc'
  await app.supabaseJwks.refresh()
  t.ok(entries().some((entry) => /no usable signing key/.test(entry.msg)), 'no usable key at all')

  serve(issuer, [])
  await t.rejects(app.supabaseJwks.refresh(), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE' })
  const empty = entries().find((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed')!
  t.match(empty.reason, /no keys: the project still signs with the legacy JWT secret/)
})

t.test('a failed fetch is logged with its HTTP status; an iss mismatch at debug with both values, never to the client', async (t) => {
  const issuer = await issuerFor(t)
  const { app, entries, lines } = await loggedAppFor(t, { supabaseUrl: issuer.url }, 'debug')
  const res = await getMe(app, issuer.sign({ iss: 'http://localhost:54321/auth/v1' }))
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.notOk(res.body.includes('localhost'), 'the received issuer is not sent back')
  const mismatch = entries().find((entry) => entry.msg === 'supabase-jwks: token iss is not an accepted issuer')!
  t.same(mismatch.expected, [issuer.issuer])
  t.equal(mismatch.received, 'http://localhost:54321/auth/v1')
  await getMe(app, issuer.sign({ iss: 42 }))
  t.ok(lines.some((line) => line.includes('"received":"number"')), 'a value that is not a string is logged by its type')
  issuer.respondWith((_request, response) => { response.writeHead(404).end('nope'); return true })
  await t.rejects(app.supabaseJwks.refresh(), { code: 'FST_SUPABASE_JWKS_KEYS_UNAVAILABLE', cause: { message: 'the JWKS answered HTTP 404' } })
  const failure = entries().find((entry) => entry.msg === 'supabase-jwks: JWKS fetch failed')!
  t.equal(failure.status, 404)
  t.match(failure.reason, /HTTP 404/)
})

t.test('registration errors are the plugin\'s own, and nothing of @fastify/jwt is reachable half-working', async (t) => {
  const issuer = await issuerFor(t)
  const twice = Fastify()
  t.teardown(() => twice.close())
  twice.register(supabaseJwks, { supabaseUrl: issuer.url })
  twice.register(supabaseJwks, { supabaseUrl: issuer.url })
  await t.rejects(async () => await twice.ready(), { code: 'FST_SUPABASE_JWKS_REGISTRATION', message: /fastify-supabase-jwks cannot be registered: it is already registered/ })

  const siblings = Fastify()
  t.teardown(() => siblings.close())
  siblings.register(async (child) => { await child.register(supabaseJwks, { supabaseUrl: issuer.url }) })
  siblings.register(async (child) => { await child.register(supabaseJwks, { supabaseUrl: issuer.url }) })
  await t.resolves(async () => await siblings.ready(), 'once per encapsulated context is fine')

  const nested = Fastify()
  t.teardown(() => nested.close())
  nested.register(supabaseJwks, { supabaseUrl: issuer.url })
  nested.register(async (child) => { await child.register(supabaseJwks, { supabaseUrl: issuer.url }) })
  await t.rejects(async () => await nested.ready(), { code: 'FST_SUPABASE_JWKS_REGISTRATION', message: /or an enclosing one/ }, 'inside a context that has it')

  // the @fastify/jwt recipe's own fastify.authenticate: Fastify would refuse the second one uncoded
  async function appAuthenticate () {}
  for (const awaited of [true, false]) {
    const recipe = Fastify()
    t.teardown(() => recipe.close())
    if (awaited) {
      recipe.decorate('authenticate', appAuthenticate)
      recipe.register(supabaseJwks, { supabaseUrl: issuer.url })
    } else {
      // not awaited: the plugin runs at ready(), after the app's decorator
      recipe.register(supabaseJwks, { supabaseUrl: issuer.url })
      recipe.decorate('authenticate', appAuthenticate)
    }
    await t.rejects(async () => await recipe.ready(), { code: 'FST_SUPABASE_JWKS_REGISTRATION', message: /fastify\.authenticate is already decorated in this context/ })
  }
  const loaded = Fastify()
  t.teardown(() => loaded.close())
  await loaded.register(supabaseJwks, { supabaseUrl: issuer.url })
  t.throws(() => loaded.decorate('authenticate', appAuthenticate), { code: 'FST_ERR_DEC_ALREADY_PRESENT' }, 'once the plugin has loaded, Fastify itself refuses')
  const shadowed = Fastify()
  t.teardown(() => shadowed.close())
  shadowed.decorate('authenticate', appAuthenticate)
  shadowed.register(async (child) => {
    await child.register(supabaseJwks, { supabaseUrl: issuer.url })
    child.get('/me', { preHandler: child.authenticate }, async (request) => request.user)
  })
  await shadowed.ready()
  t.equal((await getMe(shadowed, issuer.sign({ sub: 'u-3' }))).json().sub, 'u-3', 'in an encapsulated context of its own, beside the app\'s')
  t.equal(shadowed.authenticate, appAuthenticate as unknown, 'the app\'s own authenticate at the root is untouched')

  // @fastify/jwt's API is not a second, half-working way in: none of it is there
  const app = await appFor(t, { supabaseUrl: issuer.url })
  t.equal((app as unknown as { jwt?: unknown }).jwt, undefined, 'no fastify.jwt')
  t.notOk(app.hasRequestDecorator('supabaseJwtVerify'), 'no request.supabaseJwtVerify()')
  t.notOk(app.hasRequestDecorator('user'), 'request.user is not declared: an app\'s own @fastify/jwt may declare it, in any order')
  t.notOk(app.hasReplyDecorator('supabaseJwtSign'), 'no reply.supabaseJwtSign()')
})

for (const [order, namespace] of [['before', undefined], ['after', undefined], ['after', 'app'], ['before', 'app']] as const) {
  t.test(`an app's own @fastify/jwt ${namespace === undefined ? 'without' : 'with'} a namespace, registered ${order} the plugin: both kinds of token`, async (t) => {
    const issuer = await issuerFor(t)
    const app = Fastify()
    t.teardown(() => app.close())
    const own = { secret: 'the-app-own-secret-for-its-own-session-tokens', namespace }
    if (order === 'before') await app.register(fastifyJwt, own)
    await app.register(supabaseJwks, { supabaseUrl: issuer.url })
    if (order === 'after') await app.register(fastifyJwt, own)
    const name = namespace === undefined ? 'jwtVerify' : `${namespace}JwtVerify`
    app.get('/own', async (request) => {
      await (request as unknown as Record<string, () => Promise<unknown>>)[name]!()
      return request.user
    })
    app.get('/me', { preHandler: app.authenticate }, async (request) => request.user)
    app.get('/public', async (request) => ({ user: request.user }))
    await app.ready()
    const jwt = (app as unknown as { jwt: { sign (payload: object): string } & Record<string, { sign (payload: object): string }> }).jwt
    const token = (namespace === undefined ? jwt : jwt[namespace]!).sign({ session: 's-1' })
    const ownAnswer = await app.inject({ url: '/own', headers: { authorization: `Bearer ${token}` } })
    t.equal(ownAnswer.statusCode, 200)
    t.equal(ownAnswer.json().session, 's-1', 'the app\'s own token and request.user shape')
    const me = await getMe(app, issuer.sign({ sub: 'u-1' }))
    t.equal(me.statusCode, 200)
    t.equal(me.json().sub, 'u-1', 'Supabase claims on the plugin\'s routes')
    t.equal(me.json().aud, 'authenticated')
    t.equal(codeOf(await getMe(app, token)), 'FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED', 'the app\'s HS256 token is refused by the plugin')
    t.not((await app.inject({ url: '/own', headers: { authorization: `Bearer ${issuer.sign()}` } })).statusCode, 200,
      'a Supabase token is refused by the app\'s own verifier')
    t.same((await app.inject({ url: '/public' })).json(), { user: null }, '@fastify/jwt\'s decorator declares request.user')
    t.equal(issuer.jwksRequests, 1)
  })
}

t.test('an app\'s own @fastify/jwt registered after the plugin does not end the process (the built package, in a child process)', async (t) => {
  // before the fix, @fastify/jwt's synchronous FST_ERR_DEC_ALREADY_PRESENT escaped avvio and ended the process
  const source = `
    const app = require('fastify')()
    app.register(require('fastify-supabase-jwks'), { supabaseUrl: 'https://abcdefghijklmnopqrst.supabase.co', warmStart: false })
    app.register(require('@fastify/jwt'), { secret: 'the-app-own-secret-for-its-own-session-tokens' })
    app.ready().then(() => { console.log('ready:', typeof app.authenticate, typeof app.jwt.sign); return app.close() },
      (err) => { console.log('refused:', err.code); process.exitCode = 4 })`
  const run = spawnSync(process.execPath, ['-e', source], { encoding: 'utf8' })
  t.equal(run.status, 0, run.stderr)
  t.equal(run.stdout.trim(), 'ready: function function')
})

t.test('authenticate(request) without a reply, from JavaScript: still a coded 401', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url })
  const call = app.authenticate as unknown as (request: FastifyRequest, reply?: FastifyReply) => Promise<void>
  app.get('/soft', async (request) => {
    try {
      await call(request)
      return { user: request.user.sub }
    } catch (err) {
      return { code: (err as { code: string }).code, statusCode: (err as { statusCode: number }).statusCode, user: request.user }
    }
  })
  t.same((await app.inject({ url: '/soft' })).json(), { code: 'FST_SUPABASE_JWKS_NO_TOKEN', statusCode: 401, user: null })
  t.same((await app.inject({ url: '/soft', headers: { authorization: `Bearer ${issuer.sign({ sub: 'u-2' })}` } })).json(), { user: 'u-2' })
})

t.test('every documented import form works from ES modules and CommonJS (the built package)', async (t) => {
  const esm = `
    import plugin, { fastifySupabaseJwks } from 'fastify-supabase-jwks'
    import * as all from 'fastify-supabase-jwks'
    import { createTestIssuer } from 'fastify-supabase-jwks/testing'
    const cjs = (await import('node:module')).createRequire(import.meta.url)('fastify-supabase-jwks')
    if (plugin !== cjs || fastifySupabaseJwks !== cjs || all.default !== cjs || typeof createTestIssuer !== 'function') process.exit(3)
    console.log('esm ok')`
  const cjs = `
    const plugin = require('fastify-supabase-jwks')
    const { fastifySupabaseJwks, default: byDefault } = require('fastify-supabase-jwks')
    const { createTestIssuer } = require('fastify-supabase-jwks/testing')
    if (fastifySupabaseJwks !== plugin || byDefault !== plugin || typeof createTestIssuer !== 'function') process.exit(3)
    console.log('cjs ok')`
  for (const [type, source] of [['module', esm], ['commonjs', cjs]] as const) {
    const run = spawnSync(process.execPath, ['--input-type', type, '-e', source], { encoding: 'utf8' })
    t.equal(run.status, 0, `${type}: ${run.stderr}`)
    t.match(run.stdout, /ok/)
  }
})

t.test('beside an app-wide @fastify/jwt, the plugin in two encapsulated contexts: each verifies its own issuer', async (t) => {
  const first = await issuerFor(t)
  const second = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(fastifyJwt, { secret: 'the-app-own-secret-for-its-own-session-tokens' })
  for (const [prefix, issuer] of [['/a', first], ['/b', second]] as const) {
    app.register(async (child) => {
      await child.register(supabaseJwks, { supabaseUrl: issuer.url })
      child.get('/me', { preHandler: child.authenticate }, async (request) => request.user)
    }, { prefix })
  }
  app.get('/own', async (request) => {
    await request.jwtVerify()
    return request.user
  })
  await app.ready()
  const me = (url: string, token: string) => app.inject({ url, headers: { authorization: `Bearer ${token}` } })
  t.equal((await me('/a/me', first.sign({ sub: 'u-a' }))).json().sub, 'u-a')
  t.equal((await me('/b/me', second.sign({ sub: 'u-b' }))).json().sub, 'u-b')
  const crossed = await me('/a/me', second.sign())
  t.equal(codeOf(crossed), 'FST_SUPABASE_JWKS_TOKEN_INVALID', 'one context\'s issuer is not the other\'s')
  t.match(crossed.json().message, /iss/)
  t.equal(first.jwksRequests, 1, 'refused before any fetch')
  t.equal((await me('/own', app.jwt.sign({ session: 's-2' } as never))).json().session, 's-2')
})

t.test('claims nested too deeply are refused with a code, by authenticate and by verify()', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url })
  let nested: Record<string, unknown> = {}
  for (let i = 0; i < 40; i++) nested = { n: nested }
  const token = issuer.sign({ user_metadata: nested })
  const res = await getMe(app, token)
  t.equal(codeOf(res), 'FST_SUPABASE_JWKS_TOKEN_INVALID')
  t.match(res.json().message, /nested deeper than 32 levels/)
  await t.rejects(app.supabaseJwks.verify(token), { code: 'FST_SUPABASE_JWKS_TOKEN_INVALID', statusCode: 401 })
  let fine: Record<string, unknown> = {}
  for (let i = 0; i < 20; i++) fine = { n: fine }
  t.equal((await getMe(app, issuer.sign({ user_metadata: fine }))).statusCode, 200, '20 levels are fine')
})

t.test('a reset and its second try together never take longer than timeout', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { supabaseUrl: issuer.url, timeout: 2 })
  let first = true
  issuer.respondWith((request) => {
    if (first) {
      first = false
      setTimeout(() => request.socket.destroy(), 1800)
    }
    return true // the second try hangs
  })
  const started = Date.now()
  const res = await getMe(app, issuer.sign())
  t.equal(res.statusCode, 503)
  t.ok(Date.now() - started < 3000, `answered within timeout, not twice it (${Date.now() - started} ms)`)
})
