// The benchmark: `npm run bench` (full) or `npm run bench -- --quick`; `-- --only=public,plugin-rs256`
// runs some variants (add plugin-nocache-rs256 / -es256 to see the plugin without its token cache).
// Variants: public (no authentication: the ceiling), limit (a hand-written minimal verifier: split,
// crypto.verify with a prebuilt key object, parse, check exp/iss/aud: the floor of the work),
// plugin, jose (createRemoteJWKSet + jwtVerify), fastjwt (fast-jwt alone, one verifier per key:
// what verification costs without @fastify/jwt's request path).
// Servers run in child processes on 127.0.0.1; load comes from autocannon in this process; rounds
// are interleaved (A B C A B C ...) and the median of each (variant, scenario) is reported. The
// machine is shared and noisy: compare ratios within one run, not absolute figures.
import { fork } from 'node:child_process'
import { writeFileSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { createRequire } from 'node:module'
import autocannon from 'autocannon'

const require = createRequire(import.meta.url)
const { createTestIssuer } = require('fastify-supabase-jwks/testing')
const here = dirname(fileURLToPath(import.meta.url))

const quick = process.argv.includes('--quick')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? (quick ? 1 : 3))
const DURATION = Number(process.env.BENCH_DURATION ?? (quick ? 2 : 4)) // seconds per measurement
const CONNECTIONS = 50
const POOL = 20_000 // distinct tokens for `unique`: far more than the token cache holds
const only = process.argv.find((arg) => arg.startsWith('--only='))?.slice(7).split(',')

const VARIANTS = [
  { name: 'public', alg: 'RS256' },
  { name: 'limit-rs256', alg: 'RS256' },
  { name: 'plugin-rs256', alg: 'RS256' },
  { name: 'jose-rs256', alg: 'RS256' },
  { name: 'fastjwt-rs256', alg: 'RS256' },
  { name: 'limit-es256', alg: 'ES256' },
  { name: 'plugin-es256', alg: 'ES256' },
  { name: 'jose-es256', alg: 'ES256' },
  { name: 'fastjwt-es256', alg: 'ES256' },
  { name: 'plugin-nocache-rs256', alg: 'RS256', extra: true, pluginOptions: { tokenCache: 0 } },
  { name: 'plugin-nocache-es256', alg: 'ES256', extra: true, pluginOptions: { tokenCache: 0 } }
].filter((variant) => only ? only.includes(variant.name) : !variant.extra)
const SCENARIOS = ['unique', 'hot']

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

function startServer (variant, config) {
  return new Promise((resolve, reject) => {
    const child = fork(join(here, 'server.mjs'), [variant.name], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`${variant.name} exited with ${code}`)))
    child.once('message', (message) => {
      child.removeAllListeners('exit')
      resolve({ child, address: message.address })
    })
    child.send({ type: 'config', config })
  })
}

function ask (child) {
  return new Promise((resolve) => {
    child.once('message', resolve)
    child.send({ type: 'stats' })
  })
}

function load (address, tokens, duration) {
  let next = 0
  return autocannon({
    url: `${address}/me`,
    connections: CONNECTIONS,
    duration,
    requests: [{
      method: 'GET',
      setupRequest (request) {
        request.headers = { authorization: `Bearer ${tokens[next++ % tokens.length]}` }
        return request
      }
    }]
  })
}

async function main () {
  const issuer = await createTestIssuer({ alg: 'RS256' })
  const es = issuer.addKey({ alg: 'ES256' })
  const rs = issuer.currentKey
  // count JWKS fetches per server: each server gets its own query string
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

  const servers = []
  for (const variant of VARIANTS) {
    const key = variant.alg === 'ES256' ? es : rs
    const config = { alg: variant.alg, jwk: key.jwk, issuer: issuer.issuer, jwksUrl: `${issuer.jwksUrl}?server=${variant.name}`, pluginOptions: variant.pluginOptions }
    servers.push({ variant, ...(await startServer(variant, config)) })
  }

  const samples = new Map()
  const record = (key, value) => samples.set(key, [...(samples.get(key) ?? []), value])
  // warm-up: every server once, short
  for (const server of servers) await load(server.address, pools[server.variant.alg].slice(0, 100), 1)

  for (let round = 1; round <= ROUNDS; round++) {
    for (const scenario of SCENARIOS) {
      for (const server of servers) {
        const pool = pools[server.variant.alg]
        const tokens = scenario === 'hot' ? [pool[0]] : pool
        const before = await ask(server.child)
        const result = await load(server.address, tokens, DURATION)
        const after = await ask(server.child)
        const requests = result.requests.total
        const key = `${server.variant.name}|${scenario}`
        record(`${key}|rps`, result.requests.average)
        record(`${key}|p99`, result.latency.p99)
        record(`${key}|cpu`, (after.cpuMicros - before.cpuMicros) / requests)
        record(`${key}|rss`, after.rss / 2 ** 20)
        record(`${key}|errors`, result.non2xx + result.errors)
        process.stdout.write(`round ${round} ${scenario} ${server.variant.name}: ${Math.round(result.requests.average)} req/s\n`)
      }
    }
  }

  const rows = []
  for (const scenario of SCENARIOS) {
    const base = median(samples.get(`public|${scenario}|rps`) ?? [NaN])
    for (const server of servers) {
      const key = `${server.variant.name}|${scenario}`
      const rps = median(samples.get(`${key}|rps`))
      rows.push({
        scenario,
        variant: server.variant.name,
        rps: Math.round(rps),
        ratioToPublic: +(rps / base).toFixed(3),
        p99ms: median(samples.get(`${key}|p99`)),
        cpuMicrosPerRequest: +median(samples.get(`${key}|cpu`)).toFixed(1),
        rssMB: +median(samples.get(`${key}|rss`)).toFixed(1),
        non2xx: Math.max(...samples.get(`${key}|errors`)),
        jwksFetches: fetchesBy.get(server.variant.name) ?? 0 // counted by the JWKS server itself
      })
    }
  }
  const ratio = (a, b, scenario) => {
    const get = (name) => rows.find((row) => row.variant === name && row.scenario === scenario)?.rps
    return +(get(a) / get(b)).toFixed(3)
  }
  const targets = {
    'plugin-rs256 / limit-rs256 (unique, >= 0.9)': ratio('plugin-rs256', 'limit-rs256', 'unique'),
    'plugin-es256 / limit-es256 (unique, >= 0.9)': ratio('plugin-es256', 'limit-es256', 'unique'),
    'fastjwt-rs256 / limit-rs256 (unique, reference: fast-jwt alone)': ratio('fastjwt-rs256', 'limit-rs256', 'unique'),
    'fastjwt-es256 / limit-es256 (unique, reference: fast-jwt alone)': ratio('fastjwt-es256', 'limit-es256', 'unique'),
    'plugin-rs256 / public (hot, >= 0.85)': ratio('plugin-rs256', 'public', 'hot'),
    'plugin-es256 / public (hot, >= 0.85)': ratio('plugin-es256', 'public', 'hot')
  }

  console.log(`\n${quick ? 'quick' : 'full'} run: ${ROUNDS} round(s) x ${DURATION} s, ${CONNECTIONS} connections, pool of ${POOL} tokens, node ${process.version}\n`)
  console.log('| scenario | variant | req/s | x public | p99 ms | CPU µs/req | RSS MB | non-2xx | JWKS fetches |')
  console.log('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for (const row of rows) {
    console.log(`| ${row.scenario} | ${row.variant} | ${row.rps} | ${row.ratioToPublic} | ${row.p99ms} | ${row.cpuMicrosPerRequest} | ${row.rssMB} | ${row.non2xx} | ${row.jwksFetches} |`)
  }
  console.log('\nTargets:')
  for (const [name, value] of Object.entries(targets)) console.log(`- ${name}: ${value}`)

  mkdirSync(join(here, 'results'), { recursive: true })
  const file = join(here, 'results', quick ? 'quick.json' : 'latest.json')
  writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), node: process.version, quick, rounds: ROUNDS, duration: DURATION, connections: CONNECTIONS, pool: POOL, rows, targets }, null, 2) + '\n')
  console.log(`\nwritten to ${file}`)

  for (const server of servers) server.child.send({ type: 'close' })
  await issuer.close()
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
