// The benchmark: `npm run bench` (full) or `npm run bench -- --quick`; `-- --only=public,plugin-rs256`
// runs some variants (add plugin-nocache-rs256 / -es256 to see the plugin without its token cache),
// `-- --scenarios=unique,hot` some scenarios.
// BENCH_NODE_FLAGS adds node flags to the servers (e.g. --single-threaded-gc); reglimit-rs256 and
// reglimit-async-es256 (extra) run the limit body in a server with the plugin registered: what
// registering alone costs; public-hook (extra) is public with a preHandler that does nothing.
// Variants: public (no authentication: the ceiling), limit (a hand-written minimal verifier: split,
// crypto.verify with a prebuilt key object, parse, check exp/iss/aud: the floor of the work),
// limit-async (the same with crypto.verify's callback form: the signature on the libuv thread pool,
// unbounded: the thread-pool floor),
// plugin, jose (createRemoteJWKSet + jwtVerify), fastjwt (fast-jwt alone, one verifier per key:
// what verification costs without @fastify/jwt's request path), fastifyjwt (@fastify/jwt registered
// with fastifyJwtOptions, the route's preHandler `await request.jwtVerify()`: the plugin's keys and
// checks through @fastify/jwt's request path, with no token cache), plugin-secretkey (a route with
// auth: 'secret', called with the secret key in the apikey header) and plugin-optional (a route with
// auth: ['user', 'none'], called without a credential): the key and optional modes, beside public;
// supabase-user (the route's handler makes one PostgREST call through request.supabase: the caller's
// token, a client kept by token) and supabase-anon (the same plugin, authentication and call, through
// one anonymous supabase-js client made once), against a PostgREST stand-in (bench/postgrest.mjs).
// sql-scoped, sql-unscoped (hot only; need PostgreSQL's server binaries, as the tests do): the plugin
// with `postgres: { pool }` (a pg Pool as Supabase's `authenticator`, max 10), the route behind
// app.authenticate; sql-scoped runs `request.sql\`select id, title from public_posts where id = ${1}\``
// (a transaction as the caller: the setup and the statement, 1 round trip), sql-unscoped the same query on the same kind of pool
// directly (pool.query, 1 round trip): a trivial query, the worst case for request.sql.
// sql-scoped-realistic, sql-unscoped-realistic: the caller's 20 notes of 10,000 (500 users, spread over
// the table), by an index on user_id; under RLS the policy filters them, unscoped a WHERE user_id = $1.
// Their PostgreSQL (test/fixtures/postgres.ts, via bench/postgres.ts) starts once per run, only when
// a sql-* variant is selected, on loopback, pinned with the servers (BENCH_PIN_POSTGRES=0: on any
// core); its CPU time per request is reported beside the server's. Each sql-* server must answer the
// expected rows before it is measured.
// Then (a run without --only or --scenarios; --quick passed on) bench/sessions.ts, the option
// `sessions`' one query for 1,000 to 100,000 sessions on a PostgreSQL of its own: it writes
// bench/results/sessions.json (quick: sessions-quick.json); `npm run bench:sessions` runs it alone.
// Last, bench/coldstart.mjs: from process start to the first verified 200, on this plugin and on jose
// (bench/results/coldstart.json; `npm run bench:coldstart` runs it alone).
// Scenarios: unique (every request a token not seen recently: the signature check every time),
// hot (one token again and again: the token cache), zipf (ZIPF_USERS users whose tokens recur with
// Zipf popularity, s = 1, as real traffic does: the token cache's hit rate at tokenCache 0, 1,000
// and 10,000, and the heap each cached entry costs).
// Servers run in child processes on 127.0.0.1, started anew for each scenario (so that one
// scenario's token cache and heap high-water mark never show in another's figures); load comes
// from autocannon in this process; within a scenario rounds are interleaved (A B C C B A ...)
// and the median of each (variant, scenario) is reported. The
// machine is shared and noisy: compare ratios within one run, not absolute figures.
import { probeMachine as machineCheck } from './machine.mjs'
import { execFileSync, fork } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { get } from 'node:http'
import { availableParallelism } from 'node:os'
import { writeFileSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { createRequire } from 'node:module'
import autocannon from 'autocannon'

const require = createRequire(import.meta.url)
const { createTestIssuer } = require('fastify-supabase-jwks/testing')
const here = dirname(fileURLToPath(import.meta.url))

const quick = process.argv.includes('--quick')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? (quick ? 1 : 7))
const DURATION = Number(process.env.BENCH_DURATION ?? 2) // seconds per measurement
const WARM_UP = 1 // seconds of unmeasured load before each measurement
const CONNECTIONS = 50
const POOL = 20_000 // distinct tokens for `unique`: far more than the token cache holds
const ZIPF_USERS = 10_000
const ZIPF_S = 1
const ZIPF_SEQUENCE = 500_000 // requests drawn in advance, then cycled
/*
 * The load generator and the servers under test on separate cores (Linux, with taskset): this
 * process on core 0, every server (all its threads, the libuv pool's too) on the others. Sharing
 * cores, autocannon and the server steal time from each other at random, and one variant's req/s
 * moved by up to 30% from round to round. BENCH_PIN=0 turns it off.
 */
const CORES = availableParallelism()
const PIN = process.env.BENCH_PIN !== '0' && process.platform === 'linux' && CORES >= 2 && (() => {
  try {
    execFileSync('taskset', ['-a', '-cp', '0', String(process.pid)], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
})()
const SERVER_CORES = CORES === 2 ? '1' : `1-${CORES - 1}`
/*
 * The sql-* variants' PostgreSQL on the servers' cores too: off the load generator's, but on 2 cores it
 * shares the one core with the server, so a request's figure is the server's CPU plus the database's.
 * BENCH_PIN_POSTGRES=0 lets it run on any core (as a database on another host would not take the
 * server's): noisier, since it then competes with autocannon.
 */
const PIN_POSTGRES = PIN && process.env.BENCH_PIN_POSTGRES !== '0'
const only = process.argv.find((arg) => arg.startsWith('--only='))?.slice(7).split(',')

const UNIQUE_HOT = ['unique', 'hot']
/** The secret key of plugin-secretkey: what its requests carry in the apikey header. */
const SECRET_KEY = `sb_secret_${randomBytes(24).toString('base64url')}`
/** The publishable key of the supabase-* variants' clients. */
const PUBLISHABLE_KEY = `sb_publishable_${randomBytes(24).toString('base64url')}`
const ALL = ['unique', 'hot', 'zipf']
const VARIANTS = [
  { name: 'public', alg: 'RS256', scenarios: ALL },
  { name: 'limit-rs256', alg: 'RS256', scenarios: ALL },
  { name: 'plugin-rs256', alg: 'RS256', scenarios: ALL },
  { name: 'limit-async-rs256', alg: 'RS256', scenarios: ['unique'] },
  { name: 'jose-rs256', alg: 'RS256', scenarios: UNIQUE_HOT },
  { name: 'fastjwt-rs256', alg: 'RS256', scenarios: UNIQUE_HOT },
  { name: 'fastifyjwt-rs256', alg: 'RS256', scenarios: UNIQUE_HOT },
  { name: 'limit-es256', alg: 'ES256', scenarios: ALL },
  { name: 'plugin-es256', alg: 'ES256', scenarios: ALL },
  { name: 'limit-async-es256', alg: 'ES256', scenarios: ['unique'] },
  { name: 'jose-es256', alg: 'ES256', scenarios: UNIQUE_HOT },
  { name: 'fastjwt-es256', alg: 'ES256', scenarios: UNIQUE_HOT },
  { name: 'fastifyjwt-es256', alg: 'ES256', scenarios: UNIQUE_HOT },
  { name: 'plugin-tc0-rs256', alg: 'RS256', scenarios: ['zipf'], pluginOptions: { tokenCache: 0 } },
  { name: 'plugin-tc1k-rs256', alg: 'RS256', scenarios: ['zipf'], pluginOptions: { tokenCache: 1000 } },
  { name: 'plugin-tc0-es256', alg: 'ES256', scenarios: ['zipf'], pluginOptions: { tokenCache: 0 } },
  { name: 'plugin-tc1k-es256', alg: 'ES256', scenarios: ['zipf'], pluginOptions: { tokenCache: 1000 } },
  { name: 'plugin-secretkey', alg: 'RS256', scenarios: ['hot'], pluginOptions: { secretKeys: SECRET_KEY }, route: { auth: 'secret' }, credential: 'apikey' },
  { name: 'plugin-optional', alg: 'RS256', scenarios: ['hot'], route: { auth: ['user', 'none'] }, credential: 'none' },
  { name: 'supabase-user', alg: 'RS256', scenarios: UNIQUE_HOT, standIn: true },
  { name: 'supabase-anon', alg: 'RS256', scenarios: UNIQUE_HOT, standIn: true },
  { name: 'sql-scoped', alg: 'RS256', tokens: 'SQL', scenarios: ['hot'] },
  { name: 'sql-unscoped', alg: 'RS256', tokens: 'SQL', scenarios: ['hot'] },
  { name: 'sql-scoped-realistic', alg: 'RS256', tokens: 'SQL', scenarios: ['hot'] },
  { name: 'sql-unscoped-realistic', alg: 'RS256', tokens: 'SQL', scenarios: ['hot'] },
  { name: 'plugin-nocache-rs256', alg: 'RS256', scenarios: UNIQUE_HOT, extra: true, pluginOptions: { tokenCache: 0 } },
  { name: 'plugin-nocache-es256', alg: 'ES256', scenarios: UNIQUE_HOT, extra: true, pluginOptions: { tokenCache: 0 } },
  { name: 'plugin-tc2k-rs256', alg: 'RS256', scenarios: ALL, extra: true, pluginOptions: { tokenCache: 2000 } },
  { name: 'public-hook', alg: 'RS256', scenarios: UNIQUE_HOT, extra: true },
  { name: 'reglimit-rs256', alg: 'RS256', scenarios: UNIQUE_HOT, extra: true },
  { name: 'reglimit-async-es256', alg: 'ES256', scenarios: ['unique'], extra: true },
  { name: 'plugin-tc5k-rs256', alg: 'RS256', scenarios: ALL, extra: true, pluginOptions: { tokenCache: 5000 } }
].filter((variant) => only ? only.includes(variant.name) : !variant.extra)
const onlyScenarios = process.argv.find((arg) => arg.startsWith('--scenarios='))?.slice(12).split(',')
const SQL = VARIANTS.some((variant) => variant.name.startsWith('sql'))
const SCENARIOS = ['unique', 'hot', 'zipf'].filter((scenario) => (onlyScenarios === undefined || onlyScenarios.includes(scenario)) &&
  VARIANTS.some((variant) => variant.scenarios.includes(scenario)))

/** The tokens of a variant: its algorithm's, or (sql-*) those of the seeded users, whose sub is a uuid as auth.uid() wants. */
const tokenSet = (variant) => variant.tokens ?? variant.alg

/** A deterministic sequence of user indexes with Zipf popularity: P(rank k) ~ 1 / k^s. */
function zipfSequence (users, s, length) {
  const cdf = new Float64Array(users)
  let total = 0
  for (let k = 0; k < users; k++) cdf[k] = total += 1 / (k + 1) ** s
  let seed = 0x2545f491
  const random = () => {
    seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5
    return (seed >>> 0) / 2 ** 32
  }
  const sequence = new Uint32Array(length)
  for (let i = 0; i < length; i++) {
    const target = random() * total
    let low = 0
    let high = users - 1
    while (low < high) {
      const mid = (low + high) >> 1
      if (cdf[mid] < target) low = mid + 1
      else high = mid
    }
    sequence[i] = low
  }
  return sequence
}

const median = (values) => {
  // a round without a 2xx answer has no p99 (NaN): left out, never sorted among numbers
  const sorted = values.filter((value) => !Number.isNaN(value)).sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

function startServer (variant, config) {
  return new Promise((resolve, reject) => {
    const child = fork(join(here, 'server.mjs'), [variant.name], { execArgv: ['--expose-gc', ...(process.env.BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean)], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    if (PIN) execFileSync('taskset', ['-a', '-cp', SERVER_CORES, String(child.pid)], { stdio: 'ignore' })
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`${variant.name} exited with ${code}`)))
    child.once('message', (message) => {
      child.removeAllListeners('exit')
      resolve({ child, address: message.address })
    })
    child.send({ type: 'config', config })
  })
}

/** The PostgREST stand-in of the supabase-* variants, in a process of its own on the load generator's core (forked from it). */
function startStandIn () {
  return new Promise((resolve, reject) => {
    const child = fork(join(here, 'postgrest.mjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    child.once('error', reject)
    child.once('message', (message) => resolve({ child, address: message.address }))
  })
}

function stopServer (child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once('exit', resolve)
    child.send({ type: 'close' })
  })
}

/**
 * The PostgreSQL of the sql-* variants: test/fixtures/postgres.ts's throwaway server, started by
 * bench/postgres.ts in a child run with tap's TypeScript loader (as tap runs the tests), pinned to the
 * servers' cores before it starts the server (which inherits the pinning). Resolves with its URLs and
 * the seeded users; the child stops the server when told, or when this process goes away.
 */
function startDatabase () {
  return new Promise((resolve, reject) => {
    const child = fork(join(here, 'postgres.ts'), [], {
      execArgv: ['--import', import.meta.resolve('@tapjs/typescript/import')],
      env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1', TS_NODE_PROJECT: join(here, '..', 'tsconfig.json') },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    // unpinned, it would inherit this process's core: every core then
    if (PIN) execFileSync('taskset', ['-a', '-cp', PIN_POSTGRES ? SERVER_CORES : `0-${CORES - 1}`, String(child.pid)], { stdio: 'ignore' })
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`bench/postgres.ts exited with ${code}`)))
    child.once('message', (message) => {
      child.removeAllListeners('exit')
      resolve({ child, ...message })
    })
    child.send({ type: 'start' })
  })
}

/**
 * bench/sessions.ts, in a child run with tap's TypeScript loader (as bench/postgres.ts is), which pins
 * itself and its PostgreSQL, and stops that server when it ends, fails, or this process goes away.
 */
function runSessions () {
  return new Promise((resolve, reject) => {
    const child = fork(join(here, 'sessions.ts'), quick ? ['--quick'] : [], {
      execArgv: ['--import', import.meta.resolve('@tapjs/typescript/import')],
      env: { ...process.env, TS_NODE_TRANSPILE_ONLY: '1', TS_NODE_PROJECT: join(here, '..', 'tsconfig.json') },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    child.once('error', reject)
    child.once('exit', (code) => code === 0 ? resolve() : reject(new Error(`bench/sessions.ts exited with ${code}`)))
  })
}

/** bench/coldstart.mjs: from process start to the first verified 200, this plugin against jose. */
function runColdstart () {
  return new Promise((resolve, reject) => {
    const child = fork(join(here, 'coldstart.mjs'), quick ? ['--quick'] : [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    child.once('error', reject)
    child.once('exit', (code) => code === 0 ? resolve() : reject(new Error(`bench/coldstart.mjs exited with ${code}`)))
  })
}

/** The CPU time of the PostgreSQL server (all its processes) in µs. */
function databaseCpu (database) {
  return new Promise((resolve) => {
    database.child.once('message', (message) => resolve(message.cpuMicros))
    database.child.send({ type: 'stats' })
  })
}

/** What the sql-* variants answer the answer check's user: the rows, read as the superuser (no RLS). */
async function expectedRows (database, sub) {
  const { Client } = require('pg')
  const client = new Client({ connectionString: database.superuserUrl })
  await client.connect()
  try {
    const post = await client.query('select id, title from public_posts where id = 1')
    const notes = await client.query('select id, body from notes where user_id = $1 order by id', [sub])
    if (notes.rows.length !== 20) throw new Error(`the seeded user ${sub} has ${notes.rows.length} notes, not 20`)
    return { trivial: JSON.stringify(post.rows), realistic: JSON.stringify(notes.rows) }
  } finally {
    await client.end()
  }
}

/** The server's stats; with `gc`, it also collects garbage (after reading its CPU time) to report the live heap. */
function ask (child, gc = false) {
  return new Promise((resolve) => {
    child.once('message', resolve)
    child.send({ type: 'stats', gc })
  })
}

/** What a request of each variant carries: a token as the bearer, the secret key, or nothing. */
const CREDENTIALS = {
  bearer: (token) => ({ authorization: `Bearer ${token}` }),
  apikey: () => ({ apikey: SECRET_KEY }),
  none: () => ({})
}

/**
 * Loads a server for `duration` s; `cursor.next` is where in `tokens` to go on (kept across rounds, so
 * a round never repeats the last one's tokens); `credential` says how a request carries it.
 */
function load (address, tokens, duration, cursor = { next: 0 }, credential = 'bearer') {
  const headersOf = CREDENTIALS[credential]
  const instance = autocannon({
    url: `${address}/me`,
    connections: CONNECTIONS,
    duration,
    requests: [{
      method: 'GET',
      setupRequest (request) {
        request.headers = headersOf(tokens[cursor.next++ % tokens.length])
        return request
      }
    }]
  })
  // autocannon's own histogram keeps whole milliseconds, too coarse for a ratio of p99s near 12 ms:
  // each 2xx answer's time is kept here as measured (a float, in ms)
  const latencies = []
  instance.on('response', (client, statusCode, bytes, ms) => {
    if (statusCode >= 200 && statusCode < 300) latencies.push(ms)
  })
  return instance.then((result) => {
    const sorted = Float64Array.from(latencies).sort()
    return { ...result, p99: sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * 0.99) - 1)] }
  })
}

/** The status of one GET /me with `headers`, on a connection of its own (`body`: and its body). */
function statusOf (address, headers, body = false) {
  return new Promise((resolve, reject) => {
    get(`${address}/me`, { agent: false, headers }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => { text += chunk })
      res.once('end', () => resolve(body ? { status: res.statusCode, body: text } : res.statusCode))
    }).once('error', reject)
  })
}

/**
 * Throws unless the server answers 200 to `valid`, and 401 to `tampered` and to no token; in the key
 * mode, 200 to the key and 401 to another key and to none; on the optional route, 200 to no credential;
 * sql-*: and `valid`'s rows are `expected` (a query that failed, or saw other rows, would measure nothing).
 */
async function checkAnswers (server, { valid, tampered }, expected) {
  const bearer = CREDENTIALS.bearer
  const cases = server.variant.credential === 'apikey'
    ? [['the key', { apikey: SECRET_KEY }, 200], ['another key', { apikey: `sb_secret_${randomBytes(24).toString('base64url')}` }, 401], ['none', {}, 401]]
    : [['a valid token', bearer(valid), 200], ['a tampered one', bearer(tampered), 401], ['none', {}, server.variant.credential === 'none' ? 200 : 401]]
  const got = []
  for (const [, headers] of cases) got.push(await statusOf(server.address, headers))
  if (got.join() !== cases.map(([, , status]) => status).join()) {
    throw new Error(`${server.variant.name} answered ${got.join(', ')} to ${cases.map(([what]) => what).join(', ')} (expected ${cases.map(([, , status]) => status).join(', ')})`)
  }
  if (expected !== undefined) {
    const { body } = await statusOf(server.address, bearer(valid), true)
    if (body !== expected) throw new Error(`${server.variant.name} answered ${body.slice(0, 200)} to a valid token (expected ${expected.slice(0, 200)})`)
  }
}

/** The machine check (bench/machine.mjs), in a child pinned as the servers are. */
function probeMachine () {
  return machineCheck(PIN ? SERVER_CORES : undefined)
}

/** The sql-* variants' PostgreSQL (bench/postgres.ts), once started: stopped at the end, and on failure. */
let database

function stopDatabase ({ child }) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once('exit', resolve)
    child.send({ type: 'stop' })
  })
}

async function main () {
  const probeBefore = probeMachine()
  console.log(`machine check: a fixed hash loop took ${probeBefore.minMs} to ${probeBefore.maxMs} ms (median ${probeBefore.medianMs})`)
  const issuer = await createTestIssuer({ alg: 'RS256' })
  const es = issuer.addKey({ alg: 'ES256' })
  const rs = issuer.currentKey
  // count JWKS fetches per server (variant and scenario): each server gets its own query string
  const fetchesBy = new Map()
  issuer.respondWith((request) => {
    const name = new URL(request.url, 'http://x').searchParams.get('server')
    fetchesBy.set(name, (fetchesBy.get(name) ?? 0) + 1)
    return false
  })

  console.log(`minting ${POOL} RS256 and ${POOL} ES256 tokens...`)
  const pools = { RS256: [], ES256: [] }
  for (let i = 0; i < POOL; i++) {
    pools.RS256.push(issuer.sign({ sub: `user-${i}` }, { kid: rs.kid }))
    pools.ES256.push(issuer.sign({ sub: `user-${i}` }, { kid: es.kid }))
  }
  const warmUp = { RS256: [], ES256: [] }
  for (let i = 0; i < 100; i++) {
    warmUp.RS256.push(issuer.sign({ sub: `warm-up-${i}` }, { kid: rs.kid }))
    warmUp.ES256.push(issuer.sign({ sub: `warm-up-${i}` }, { kid: es.kid }))
  }
  // the answer check's tokens: a valid one, one with a signature changed in its middle, none
  const answerCheck = {}
  for (const [alg, kid] of [['RS256', rs.kid], ['ES256', es.kid]]) {
    const valid = issuer.sign({ sub: 'answer-check' }, { kid })
    const at = valid.length - 10
    answerCheck[alg] = { valid, tampered: valid.slice(0, at) + (valid[at] === 'A' ? 'B' : 'A') + valid.slice(at + 1) }
  }
  // sql-*: a PostgreSQL started for this run; hot's token is the first seeded user's (20 notes), the
  // warm-up's the next 100 users', the answer check's the first user's again
  let expected
  if (SQL) {
    database = await startDatabase()
    const [first, ...others] = database.users
    pools.SQL = [issuer.sign({ sub: first }, { kid: rs.kid })]
    warmUp.SQL = others.slice(0, 100).map((sub) => issuer.sign({ sub }, { kid: rs.kid }))
    const valid = issuer.sign({ sub: first }, { kid: rs.kid })
    const at = valid.length - 10
    answerCheck.SQL = { valid, tampered: valid.slice(0, at) + (valid[at] === 'A' ? 'B' : 'A') + valid.slice(at + 1) }
    expected = await expectedRows(database, first)
  }
  // zipf: the first ZIPF_USERS tokens of each pool are the users (one token each), requested in this order
  const zipf = zipfSequence(ZIPF_USERS, ZIPF_S, ZIPF_SEQUENCE)
  const zipfTokens = (pool) => Array.from(zipf, (user) => pool[user])
  const standIn = VARIANTS.some((variant) => variant.standIn) ? await startStandIn() : undefined

  /** Starts a server for each variant that runs `scenario`, each counted apart by the JWKS server. */
  async function startServers (scenario) {
    const servers = []
    for (const variant of VARIANTS) {
      if (!variant.scenarios.includes(scenario)) continue
      const key = variant.alg === 'ES256' ? es : rs
      const config = { alg: variant.alg, jwk: key.jwk, issuer: issuer.issuer, jwksUrl: `${issuer.jwksUrl}?server=${variant.name}|${scenario}`, pluginOptions: variant.pluginOptions, route: variant.route, standIn: standIn?.address, publishableKey: PUBLISHABLE_KEY, postgres: database && { authenticatorUrl: database.authenticatorUrl } }
      servers.push({ variant, cursor: { next: 0 }, ...(await startServer(variant, config)) })
    }
    // every verifier answers 200 to a valid token and 401 to a bad one: a variant that let every token through would measure nothing
    try {
      for (const server of servers) {
        const rows = !server.variant.name.startsWith('sql') ? undefined : expected[server.variant.name.endsWith('-realistic') ? 'realistic' : 'trivial']
        if (!server.variant.name.startsWith('public')) await checkAnswers(server, answerCheck[tokenSet(server.variant)], rows)
      }
    } catch (err) {
      await Promise.all(servers.map((server) => stopServer(server.child)))
      throw err
    }
    // warm-up: every server once, short, with tokens of its own (never requested again)
    for (const server of servers) await load(server.address, warmUp[tokenSet(server.variant)], 1, undefined, server.variant.credential)
    return servers
  }

  const samples = new Map()
  const record = (key, value) => samples.set(key, [...(samples.get(key) ?? []), value])
  const tokensFor = { unique: (pool) => pool, hot: (pool) => [pool[0]], zipf: zipfTokens }
  // each scenario on servers of its own, started for it: no scenario's token cache, admissions or
  // heap high-water mark (RSS) carries into another's figures
  for (const scenario of SCENARIOS) {
    const servers = await startServers(scenario)
    for (let round = 1; round <= ROUNDS; round++) {
      // every other round in reverse order: no variant is always measured first, or just after another
      for (const server of round % 2 === 1 ? servers : [...servers].reverse()) {
        const tokens = tokensFor[scenario](pools[tokenSet(server.variant)])
        // a second of the same load first, not measured: a server left idle while the others ran
        // (half a minute in a full run) has had its heap shrunk and its code aged, and would spend
        // the round's first moments getting them back, the more so the more code it runs
        await load(server.address, tokens, WARM_UP, server.cursor, server.variant.credential)
        // sql-*: the database's CPU time too (every other server idle meanwhile, its share is this one's)
        const sql = server.variant.name.startsWith('sql')
        const dbBefore = sql && await databaseCpu(database)
        const before = await ask(server.child)
        const result = await load(server.address, tokens, DURATION, server.cursor, server.variant.credential)
        const after = await ask(server.child, true)
        const dbAfter = sql && await databaseCpu(database)
        const requests = result.requests.total
        const key = `${server.variant.name}|${scenario}`
        record(`${key}|rps`, result.requests.average)
        record(`${key}|p99`, result.p99)
        const cpu = (after.cpuMicros - before.cpuMicros) / requests
        record(`${key}|cpu`, cpu)
        if (sql) record(`${key}|dbCpu`, (dbAfter - dbBefore) / requests)
        record(`${key}|rss`, after.rss / 2 ** 20)
        record(`${key}|errors`, result.non2xx + result.errors)
        if (after.tokenCacheHits !== undefined) {
          const lookups = after.tokenCacheHits + after.tokenCacheMisses - before.tokenCacheHits - before.tokenCacheMisses
          record(`${key}|hitRate`, (after.tokenCacheHits - before.tokenCacheHits) / lookups)
          record(`${key}|entries`, after.cachedTokens)
          record(`${key}|heap`, after.heapAfterGc / 2 ** 20)
        }
        process.stdout.write(`round ${round} ${scenario} ${server.variant.name}: ${Math.round(result.requests.average)} req/s, ${cpu.toFixed(1)} CPU µs/req${sql ? ` (+ ${((dbAfter - dbBefore) / requests).toFixed(1)} in PostgreSQL)` : ''}, RSS ${(after.rss / 2 ** 20).toFixed(1)} MB, heap ${(after.heapTotal / 2 ** 20).toFixed(1)} MB\n`)
      }
    }
    await Promise.all(servers.map((server) => stopServer(server.child)))
  }

  const rows = []
  for (const scenario of SCENARIOS) {
    const base = median(samples.get(`public|${scenario}|rps`) ?? [NaN])
    for (const variant of VARIANTS) {
      if (!variant.scenarios.includes(scenario)) continue
      const key = `${variant.name}|${scenario}`
      const rps = median(samples.get(`${key}|rps`))
      const cached = samples.has(`${key}|hitRate`)
      rows.push({
        scenario,
        variant: variant.name,
        rps: Math.round(rps),
        ratioToPublic: +(rps / base).toFixed(3),
        p99ms: +median(samples.get(`${key}|p99`)).toFixed(1),
        cpuMicrosPerRequest: +median(samples.get(`${key}|cpu`)).toFixed(1),
        dbCpuMicrosPerRequest: samples.has(`${key}|dbCpu`) ? +median(samples.get(`${key}|dbCpu`)).toFixed(1) : null,
        rssMB: +median(samples.get(`${key}|rss`)).toFixed(1),
        non2xx: Math.max(...samples.get(`${key}|errors`)),
        jwksFetches: fetchesBy.get(key) ?? 0, // counted by the JWKS server itself
        tokenCacheHitRate: cached ? +median(samples.get(`${key}|hitRate`)).toFixed(3) : null,
        cachedTokens: cached ? median(samples.get(`${key}|entries`)) : null,
        heapAfterGcMB: cached ? +median(samples.get(`${key}|heap`)).toFixed(1) : null
      })
    }
  }
  /*
   * A target compares two variants within one run: the ratio (for RSS, the difference) of their
   * medians in the table, as the issues define them. Beside it, the same taken per round and then
   * the median over rounds (each round measures the two a few seconds apart, and the order of the
   * servers is reversed every other round): meant to cancel a slow spell of the machine, which
   * moves both figures of a round alike. Over three full runs it spread more than the ratio of the
   * medians for p99 and hot, less for RSS: it is for reference.
   */
  const ofMedians = (field, combine, digits) => (a, b, scenario) => {
    const get = (name) => rows.find((row) => row.variant === name && row.scenario === scenario)?.[field]
    return +combine(get(a), get(b)).toFixed(digits)
  }
  const paired = (figure, combine, digits) => (a, b, scenario) => {
    const first = samples.get(`${a}|${scenario}|${figure}`)
    const second = samples.get(`${b}|${scenario}|${figure}`)
    if (first === undefined || second === undefined) return NaN
    return +median(first.map((value, round) => combine(value, second[round]))).toFixed(digits)
  }
  const divide = (a, b) => a / b
  const subtract = (a, b) => a - b
  /** Heap per cached entry: the heap after GC above the same algorithm's tokenCache: 0 server, per entry held. */
  const perEntry = (name, alg) => {
    const row = rows.find((candidate) => candidate.variant === name && candidate.scenario === 'zipf')
    const none = rows.find((candidate) => candidate.variant === `plugin-tc0-${alg}` && candidate.scenario === 'zipf')
    return row && none && row.cachedTokens ? Math.round((row.heapAfterGcMB - none.heapAfterGcMB) * 2 ** 20 / row.cachedTokens) : null
  }
  const targetsBy = ({ ratio, cpu, dbCpu, p99, rss }) => ({
    'plugin-rs256 / limit-rs256 (unique, >= 0.9)': ratio('plugin-rs256', 'limit-rs256', 'unique'),
    'plugin-es256 / limit-es256 (unique, >= 0.9)': ratio('plugin-es256', 'limit-es256', 'unique'),
    'CPU plugin-rs256 / limit-rs256 (unique, <= 1.1)': cpu('plugin-rs256', 'limit-rs256', 'unique'),
    'CPU plugin-es256 / limit-es256 (unique, <= 1.1)': cpu('plugin-es256', 'limit-es256', 'unique'),
    'RSS MB plugin-rs256 - public (unique, <= 25)': rss('plugin-rs256', 'public', 'unique'),
    'RSS MB plugin-es256 - public (unique, <= 25)': rss('plugin-es256', 'public', 'unique'),
    'fastjwt-rs256 / limit-rs256 (unique, reference: fast-jwt alone)': ratio('fastjwt-rs256', 'limit-rs256', 'unique'),
    'fastjwt-es256 / limit-es256 (unique, reference: fast-jwt alone)': ratio('fastjwt-es256', 'limit-es256', 'unique'),
    'fastifyjwt-rs256 / plugin-rs256 (unique, reference: the request path of @fastify/jwt)': ratio('fastifyjwt-rs256', 'plugin-rs256', 'unique'),
    'CPU fastifyjwt-rs256 / plugin-rs256 (unique, reference)': cpu('fastifyjwt-rs256', 'plugin-rs256', 'unique'),
    'fastifyjwt-es256 / plugin-es256 (unique, reference)': ratio('fastifyjwt-es256', 'plugin-es256', 'unique'),
    'CPU fastifyjwt-es256 / plugin-es256 (unique, reference)': cpu('fastifyjwt-es256', 'plugin-es256', 'unique'),
    'fastifyjwt-rs256 / plugin-rs256 (hot, reference: no token cache)': ratio('fastifyjwt-rs256', 'plugin-rs256', 'hot'),
    'CPU fastifyjwt-rs256 / plugin-rs256 (hot, reference)': cpu('fastifyjwt-rs256', 'plugin-rs256', 'hot'),
    'fastifyjwt-es256 / plugin-es256 (hot, reference)': ratio('fastifyjwt-es256', 'plugin-es256', 'hot'),
    'CPU fastifyjwt-es256 / plugin-es256 (hot, reference)': cpu('fastifyjwt-es256', 'plugin-es256', 'hot'),
    'plugin-es256 / limit-async-es256 (unique, >= 0.9)': ratio('plugin-es256', 'limit-async-es256', 'unique'),
    'plugin-es256 / jose-es256 (unique, >= 1.1)': ratio('plugin-es256', 'jose-es256', 'unique'),
    'p99 plugin-es256 / limit-async-es256 (unique, <= 1.2)': p99('plugin-es256', 'limit-async-es256', 'unique'),
    'plugin-rs256 / limit-async-rs256 (unique, reference: RSA on the pool)': ratio('plugin-rs256', 'limit-async-rs256', 'unique'),
    'plugin-rs256 / public (hot, >= 0.85)': ratio('plugin-rs256', 'public', 'hot'),
    'plugin-es256 / public (hot, >= 0.85)': ratio('plugin-es256', 'public', 'hot'),
    'plugin-secretkey / public (a key mode, the secret key in apikey, >= 0.9)': ratio('plugin-secretkey', 'public', 'hot'),
    'CPU plugin-secretkey / public (reference)': cpu('plugin-secretkey', 'public', 'hot'),
    'plugin-optional / public (auth: [user, none], no credential, >= 0.95)': ratio('plugin-optional', 'public', 'hot'),
    'CPU plugin-optional / public (reference)': cpu('plugin-optional', 'public', 'hot'),
    'supabase-user / supabase-anon (hot: request.supabase against one anonymous client, >= 0.85)': ratio('supabase-user', 'supabase-anon', 'hot'),
    'supabase-user / supabase-anon (unique, >= 0.6)': ratio('supabase-user', 'supabase-anon', 'unique'),
    'CPU supabase-user / supabase-anon (hot, reference)': cpu('supabase-user', 'supabase-anon', 'hot'),
    'CPU supabase-user / supabase-anon (unique, reference)': cpu('supabase-user', 'supabase-anon', 'unique'),
    'sql-scoped / sql-unscoped (hot, a trivial query: the worst case, >= 0.5)': ratio('sql-scoped', 'sql-unscoped', 'hot'),
    'CPU sql-scoped / sql-unscoped (hot, the server\'s, reference)': cpu('sql-scoped', 'sql-unscoped', 'hot'),
    'PostgreSQL CPU sql-scoped / sql-unscoped (hot, reference)': dbCpu('sql-scoped', 'sql-unscoped', 'hot'),
    'sql-scoped-realistic / sql-unscoped-realistic (hot, the caller\'s 20 of 10,000 notes under RLS, reference)': ratio('sql-scoped-realistic', 'sql-unscoped-realistic', 'hot'),
    'CPU sql-scoped-realistic / sql-unscoped-realistic (hot, the server\'s, reference)': cpu('sql-scoped-realistic', 'sql-unscoped-realistic', 'hot'),
    'PostgreSQL CPU sql-scoped-realistic / sql-unscoped-realistic (hot, reference)': dbCpu('sql-scoped-realistic', 'sql-unscoped-realistic', 'hot'),
    'zipf x public, tokenCache 0 / 1,000 / 10,000 (default) (RS256)': ['plugin-tc0-rs256', 'plugin-tc1k-rs256', 'plugin-rs256'].map((name) => ratio(name, 'public', 'zipf')).join(' / '),
    'zipf x public, tokenCache 0 / 1,000 / 10,000 (default) (ES256)': ['plugin-tc0-es256', 'plugin-tc1k-es256', 'plugin-es256'].map((name) => ratio(name, 'public', 'zipf')).join(' / '),
    'heap bytes per cached token (1,000 / 10,000, RS256)': `${perEntry('plugin-tc1k-rs256', 'rs256')} / ${perEntry('plugin-rs256', 'rs256')}`,
    'heap bytes per cached token (1,000 / 10,000, ES256)': `${perEntry('plugin-tc1k-es256', 'es256')} / ${perEntry('plugin-es256', 'es256')}`
  })
  const targets = targetsBy({ ratio: ofMedians('rps', divide, 3), cpu: ofMedians('cpuMicrosPerRequest', divide, 3), dbCpu: ofMedians('dbCpuMicrosPerRequest', divide, 3), p99: ofMedians('p99ms', divide, 3), rss: ofMedians('rssMB', subtract, 1) })
  const pairedTargets = targetsBy({ ratio: paired('rps', divide, 3), cpu: paired('cpu', divide, 3), dbCpu: paired('dbCpu', divide, 3), p99: paired('p99', divide, 3), rss: paired('rss', subtract, 1) })

  const probeAfter = probeMachine()
  const spread = (probe) => `${probe.minMs} to ${probe.maxMs} ms (median ${probe.medianMs})`
  console.log(`\nmachine check: a fixed hash loop took ${spread(probeBefore)} before the run, ${spread(probeAfter)} after`)
  console.log(`${quick ? 'quick' : 'full'} run: ${ROUNDS} round(s) x ${DURATION} s, ${CONNECTIONS} connections, pool of ${POOL} tokens, zipf over ${ZIPF_USERS} users (s = ${ZIPF_S}), node ${process.version}, ${PIN ? `load on core 0, servers${SQL && PIN_POSTGRES ? ' and PostgreSQL' : ''} on cores ${SERVER_CORES}${SQL && !PIN_POSTGRES ? ', PostgreSQL on any' : ''}` : 'load and servers on the same cores'}\n`)
  console.log('| scenario | variant | req/s | x public | p99 ms | CPU µs/req | PostgreSQL CPU µs/req | RSS MB | non-2xx | JWKS fetches | cache hit rate | cached tokens | heap after GC MB |')
  console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  const dash = (value) => value ?? '-'
  for (const row of rows) {
    console.log(`| ${row.scenario} | ${row.variant} | ${row.rps} | ${row.ratioToPublic} | ${row.p99ms} | ${row.cpuMicrosPerRequest} | ${dash(row.dbCpuMicrosPerRequest)} | ${row.rssMB} | ${row.non2xx} | ${row.jwksFetches} | ${dash(row.tokenCacheHitRate)} | ${dash(row.cachedTokens)} | ${dash(row.heapAfterGcMB)} |`)
  }
  console.log('\nTargets (the ratio of the medians in the table):')
  for (const [name, value] of Object.entries(targets)) console.log(`- ${name}: ${value}`)
  console.log('\nThe same, per round and then the median over rounds (for reference):')
  for (const [name, value] of Object.entries(pairedTargets)) console.log(`- ${name}: ${value}`)

  mkdirSync(join(here, 'results'), { recursive: true })
  // latest.json holds full runs only: a quick run, or one limited to some variants or scenarios, goes beside it
  const file = join(here, 'results', quick || only !== undefined || onlyScenarios !== undefined ? 'quick.json' : 'latest.json')
  writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), node: process.version, pinned: PIN && { load: '0', servers: SERVER_CORES }, quick, rounds: ROUNDS, duration: DURATION, connections: CONNECTIONS, pool: POOL, zipfUsers: ZIPF_USERS, zipfS: ZIPF_S, machineCheck: { before: probeBefore, after: probeAfter }, postgresPinned: SQL ? PIN_POSTGRES : undefined, rows, targets, pairedTargets }, null, 2) + '\n')
  console.log(`\nwritten to ${file}`)

  if (standIn !== undefined) await stopServer(standIn.child)
  if (database !== undefined) await stopDatabase(database)
  await issuer.close()
  if (only === undefined && onlyScenarios === undefined) {
    console.log('\nthe sessions query (bench/sessions.ts):')
    await runSessions()
    console.log('\ncold start (bench/coldstart.mjs):')
    await runColdstart()
  }
}

main().catch(async (err) => {
  console.error(err)
  if (database !== undefined) await stopDatabase(database)
  process.exit(1)
})
