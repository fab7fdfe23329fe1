import t from 'tap'
import { randomBytes } from 'node:crypto'
import Fastify from 'fastify'
import fastifyJwt, { type FastifyJWTOptions } from '@fastify/jwt'
import supabaseJwks, { fastifyJwtOptions } from '../lib/index'
import { apiKeys, matchKey, MAX_API_KEY_LENGTH, presentedDigest } from '../lib/api-keys'
import { appWithEarlyRoute, issuerFor, registrationError } from './fixtures/helpers'

/*
 * The options publishableKeys and secretKeys: what registration refuses (never repeating a key),
 * how keys are held and compared, and that no log line of the plugin carries one.
 */

const key = (prefix: string) => `${prefix}${randomBytes(24).toString('base64url')}`
const PUBLISHABLE = key('sb_publishable_')
const SECRET = key('sb_secret_')

/** A legacy API key: an HS256 JWT with `iss: "supabase"` and a role, as the dashboard shows them. */
function legacyKey (role: string): string {
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url')
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ iss: 'supabase', ref: 'abcdefghijklmnopqrst', role, iat: 1700000000, exp: 2000000000 })}.${randomBytes(32).toString('base64url')}`
}

t.test('keys are refused at registration when they cannot be real API keys, without repeating them', async (t) => {
  const issuer = await issuerFor(t)
  const short = 'sb_secret_tooShort'
  const cases: Array<[Record<string, unknown>, RegExp, string?]> = [
    [{ secretKeys: short }, /^Invalid fastify-supabase-jwks option: secretKeys.default is too short to be a real API key \(under 32 characters\)/, short],
    [{ publishableKeys: { default: PUBLISHABLE, web: 'x'.repeat(31) } }, /publishableKeys.web is too short to be a real API key/, 'x'.repeat(31)],
    [{ secretKeys: { cron: undefined } }, /secretKeys.cron must be a string \(the API key\); it is undefined: is its environment variable set\?/],
    [{ secretKeys: { cron: null } }, /secretKeys.cron must be a string \(the API key\); it is null/],
    [{ secretKeys: 42 }, /secretKeys must be an API key \(a string, the key named default\) or an object of named keys/],
    [{ secretKeys: [SECRET] }, /secretKeys must be an API key/, SECRET],
    [{ secretKeys: {} }, /secretKeys names no key/],
    [{ secretKeys: { '': SECRET } }, /secretKeys has a key named "": a name is 1 to 64 characters, without ':', and not '\*'/, SECRET],
    [{ secretKeys: { 'a:b': SECRET } }, /secretKeys has a key named "a:b"/, SECRET],
    [{ secretKeys: { '*': SECRET } }, /secretKeys has a key named "\*"/, SECRET],
    [{ secretKeys: { ['n'.repeat(65)]: SECRET } }, /secretKeys has a key named with 65 characters: a name is 1 to 64 characters/, 'n'.repeat(65)],
    // a key put where its name belongs, or in a mode: never repeated
    [{ secretKeys: { [SECRET]: 'cron' } }, /secretKeys has a key name that looks like an API key \(it is not repeated here\)/, SECRET],
    [{ publishableKeys: { [legacyKey('anon')]: PUBLISHABLE } }, /publishableKeys has a key name that looks like an API key/, 'eyJ'],
    [{ secretKeys: SECRET, require: { auth: SECRET } }, /require.auth has a mode that looks like an API key \(it is not repeated here\)/, SECRET],
    [{ secretKeys: SECRET, require: { auth: ['user', `secret:${SECRET}`] } }, /require.auth has a mode that looks like an API key/, SECRET],
    [{ secretKeys: 'x'.repeat(MAX_API_KEY_LENGTH + 1) }, /secretKeys.default is longer than any API key \(over 1024 characters\)/, 'x'.repeat(40)],
    [{ secretKeys: `${SECRET}\n` }, /secretKeys.default holds whitespace or a character outside printable ASCII \(a newline read from a file\?\)/, SECRET],
    [{ secretKeys: `${SECRET}é` }, /outside printable ASCII/, SECRET],
    [{ secretKeys: { default: SECRET, web: PUBLISHABLE } }, /secretKeys.web is a publishable \(anon\) key, which anyone may hold: give a secret key/, PUBLISHABLE],
    [{ secretKeys: legacyKey('anon') }, /secretKeys.default is a publishable \(anon\) key/, 'eyJ'],
    [{ publishableKeys: SECRET }, /publishableKeys.default is a secret \(service_role\) key: move it to secretKeys/, SECRET],
    [{ publishableKeys: legacyKey('service_role') }, /publishableKeys.default is a secret \(service_role\) key/, 'eyJ'],
    [{ secretKeys: { default: SECRET, cron: SECRET } }, /secretKeys.default and secretKeys.cron are the same key: give each key once/, SECRET],
    [{ require: { auth: 'secret' } }, /require.auth names 'secret', but no secretKeys are configured/],
    [{ secretKeys: { cron: SECRET }, require: { auth: ['user', 'secret:night'] } }, /require.auth names 'secret:night', but secretKeys has no key named night \(it has cron\)/, SECRET],
    [{ secretKeys: SECRET, publishableKeyz: PUBLISHABLE }, /unknown option publishableKeyz: did you mean publishableKeys\?/]
  ]
  for (const [options, message, leaked] of cases) {
    const err = await registrationError({ supabaseUrl: issuer.url, ...options })
    t.equal(err.code, 'FST_SUPABASE_JWKS_OPTION', String(message))
    t.match(err.message, message)
    if (leaked !== undefined) t.notOk(err.message.includes(leaked), 'the message does not repeat the key')
  }
})

t.test('the same key in both sets is refused; legacy keys of the right roles are accepted', async (t) => {
  const issuer = await issuerFor(t)
  const shared = legacyKey('other')
  const both = await registrationError({ supabaseUrl: issuer.url, publishableKeys: shared, secretKeys: { admin: shared } })
  t.match(both.message, /publishableKeys.default and secretKeys.admin are the same key/)
  t.notOk(both.message.includes(shared))
  const app = Fastify()
  t.teardown(() => app.close())
  const anon = legacyKey('anon')
  const serviceRole = legacyKey('service_role')
  // three dot-separated parts that are no JWT: a key all the same (its kind unknown)
  const dotted = `${'a'.repeat(12)}.${'b'.repeat(12)}.${'c'.repeat(12)}`
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, publishableKeys: anon, secretKeys: { default: serviceRole, dotted } })
  app.get('/admin', { preHandler: app.authenticate, config: { supabaseJwks: { auth: 'secret' } } }, async (request) => request.supabaseAuth)
  t.same((await app.inject({ url: '/admin', headers: { apikey: serviceRole, authorization: `Bearer ${serviceRole}` } })).json(), { mode: 'secret', keyName: 'default' })
  t.equal((await app.inject({ url: '/admin', headers: { apikey: anon } })).json().code, 'FST_SUPABASE_JWKS_INVALID_API_KEY')
  t.equal((await app.inject({ url: '/admin', headers: { apikey: dotted } })).json().code, 'FST_SUPABASE_JWKS_INVALID_API_KEY', 'secret:dotted is not bare secret')
})

t.test('keys are held as digests of one length and every key is compared: nothing of a key is in the config', async (t) => {
  const callers = apiKeys({ publishableKeys: PUBLISHABLE, secretKeys: { default: SECRET, cron: key('sb_secret_'), ops: key('sb_secret_') } })
  const held = [...callers.publishable!, ...callers.secret!]
  t.same(held.map((k) => k.digest.length), [32, 32, 32, 32], 'SHA-256 digests, 32 bytes each')
  const config = JSON.stringify(held, (name, value) => Buffer.isBuffer(value) || (value?.type === 'Buffer') ? '<digest>' : value)
  t.notOk(config.includes(SECRET) || config.includes(PUBLISHABLE) || config.includes(SECRET.slice(10, 30)), 'no key, nor a part of one, is held')
  // whatever is presented, one digest of the same length is compared: its length says nothing of the keys
  for (const presented of ['x', SECRET, SECRET.slice(0, -1), 'y'.repeat(MAX_API_KEY_LENGTH)]) {
    t.equal(presentedDigest(presented)?.length, 32, `a value of ${presented.length} characters`)
  }
  t.equal(presentedDigest('y'.repeat(MAX_API_KEY_LENGTH + 1)), undefined, 'too long: no match, and never hashed')
  t.equal(presentedDigest(['a', 'b']), undefined, 'a repeated header: no match')
  t.equal(matchKey(presentedDigest(SECRET)!, callers.secret!)?.name, 'default')
  t.equal(matchKey(presentedDigest(PUBLISHABLE)!, callers.secret!), undefined)
  // the last key of the set matches too: no key ends the comparisons early
  const last = callers.secret!.at(-1)!
  t.equal(matchKey(last.digest, callers.secret!), last)
})

t.test('no log line of the plugin carries a key, at debug level', async (t) => {
  const issuer = await issuerFor(t)
  const lines: string[] = []
  const app = Fastify({ logger: { level: 'trace', stream: { write: (line: string) => { lines.push(line) } } } })
  t.teardown(() => app.close())
  const cron = key('sb_secret_')
  const wrong = key('sb_secret_')
  await app.register(supabaseJwks, { supabaseUrl: issuer.url, warmStart: false, publishableKeys: PUBLISHABLE, secretKeys: { default: SECRET, cron } })
  app.get('/jobs', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'secret:*'] } } }, async () => 'ok')
  app.get('/feed', { preHandler: app.authenticate, config: { supabaseJwks: { auth: ['user', 'publishable', 'none'] } } }, async () => 'ok')
  const calls: Array<[string, Record<string, string>, number]> = [
    ['/jobs', { apikey: SECRET }, 200],
    ['/jobs', { apikey: cron, authorization: `Bearer ${cron}` }, 200],
    ['/jobs', { apikey: wrong }, 401],
    ['/jobs', { authorization: `Bearer ${SECRET}` }, 401],
    ['/jobs', { apikey: PUBLISHABLE }, 401],
    ['/feed', { apikey: PUBLISHABLE, authorization: `Bearer ${PUBLISHABLE}` }, 200],
    ['/feed', { apikey: wrong }, 200],
    ['/jobs', {}, 401]
  ]
  for (const [url, headers, status] of calls) t.equal((await app.inject({ url, headers })).statusCode, status, url)
  const log = lines.join('\n')
  t.ok(lines.some((line) => line.includes('supabase-jwks: token rejected')), 'the plugin logged its refusals at debug')
  t.ok(lines.some((line) => line.includes('FST_SUPABASE_JWKS_INVALID_API_KEY')))
  for (const secret of [SECRET, cron, wrong, PUBLISHABLE]) {
    t.notOk(log.includes(secret) || log.includes(secret.slice(-20)), 'no key in the log, nor its end')
  }
})

t.test('@fastify/jwt verifies users only: API keys and modes that let others in are refused', async (t) => {
  const issuer = await issuerFor(t)
  t.throws(() => fastifyJwtOptions({ supabaseUrl: issuer.url, secretKeys: SECRET }),
    { code: 'FST_SUPABASE_JWKS_OPTION', message: /secretKeys is not available through @fastify\/jwt: routes that take API keys \(requirement auth\) need the plugin's own authenticate/ })
  t.throws(() => fastifyJwtOptions({ supabaseUrl: issuer.url, publishableKeys: PUBLISHABLE }), { message: /publishableKeys is not available through @fastify\/jwt/ })
  t.throws(() => fastifyJwtOptions({ supabaseUrl: issuer.url, require: { auth: ['user', 'none'] } }),
    { code: 'FST_SUPABASE_JWKS_OPTION', message: /require.auth is \["user","none"\]: @fastify\/jwt verifies user tokens only/ })
  t.throws(() => fastifyJwtOptions({ supabaseUrl: issuer.url, require: { auth: 'secret' } }), { message: /@fastify\/jwt verifies user tokens only/ })
  t.throws(() => fastifyJwtOptions({ supabaseUrl: issuer.url, require: { auth: 'admin' as 'user' } }), { message: /require.auth has 'admin': a mode is/ })
  t.doesNotThrow(() => fastifyJwtOptions({ supabaseUrl: issuer.url, require: { auth: ['user'] } }))

  const app = Fastify()
  t.teardown(() => app.close())
  // a route declared before @fastify/jwt: its onRoute check never saw it, its first request does
  app.get('/early', { config: { supabaseJwks: { auth: ['user', 'none'] } } }, async (request) => {
    await request.jwtVerify()
    return request.user
  })
  await app.register(fastifyJwt, fastifyJwtOptions({ supabaseUrl: issuer.url, warmStart: false }) as unknown as FastifyJWTOptions)
  t.throws(() => app.get('/late', { config: { supabaseJwks: { auth: 'none' } } }, async () => 'x'),
    { code: 'FST_SUPABASE_JWKS_OPTION', message: /config.supabaseJwks of GET \/late.auth is "none": @fastify\/jwt verifies user tokens only/ })
  app.get('/user', { config: { supabaseJwks: { auth: 'user' } } }, async (request) => {
    await request.jwtVerify()
    return { sub: request.user.sub }
  })
  const early = await app.inject({ url: '/early', headers: { authorization: `Bearer ${issuer.sign()}` } })
  t.same([early.statusCode, early.json().code], [500, 'FST_SUPABASE_JWKS_ROUTE_CONFIG'])
  t.same((await app.inject({ url: '/user', headers: { authorization: `Bearer ${issuer.sign({ sub: 'ada' })}` } })).json(), { sub: 'ada' })
})

t.test('a route declared before the plugin with an auth naming no configured key: a coded 500', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appWithEarlyRoute(t, { auth: 'secret:cron' }, { supabaseUrl: issuer.url, secretKeys: SECRET })
  const response = await app.inject({ url: '/early', headers: { apikey: SECRET } })
  t.same([response.statusCode, response.json().code], [500, 'FST_SUPABASE_JWKS_ROUTE_CONFIG'])
})
