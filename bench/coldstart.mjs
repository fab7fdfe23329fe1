// Cold start (issue: a serverless function pays it on every start): the time from process start to
// the first verified 200, for the same app (bench/coldstart-app.mjs) on this plugin and on jose, with
// the JWKS on loopback (the plugin's supabaseUrl; jose's createRemoteJWKSet) and with the key set
// given inline (the plugin's jwks; jose's createLocalJWKSet), beside the floor: the same app with an
// unguarded route. Each start is a new node process; the clock starts just before it is spawned and
// stops when the first GET /me with a valid token is answered 200 (any other answer fails the run).
// The variants take turns, ROUNDS starts each (BENCH_COLDSTART_ROUNDS; --quick: 5). Reported: the
// median and the spread of each, what each adds to the floor, and plugin / jose (target: <= 1.2).
// `npm run bench:coldstart` (after `npm run build`); writes bench/results/coldstart.json (quick:
// coldstart-quick.json). Only loopback: the test issuer and every app listen on 127.0.0.1.
import { spawn } from 'node:child_process'
import { request } from 'node:http'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { createTestIssuer } from '../dist/testing.js'
import { probeMachine } from './machine.mjs'

const here = import.meta.dirname
const quick = process.argv.includes('--quick')
const ROUNDS = Number(process.env.BENCH_COLDSTART_ROUNDS ?? (quick ? 5 : 21))
const VARIANTS = ['fastify', 'plugin-jwks', 'jose-jwks', 'plugin-inline', 'jose-inline']
/** The longest one start may take before the run fails: a start that hangs is a defect, not a figure. */
const START_TIMEOUT_MS = 30_000

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}
const round1 = (value) => Math.round(value * 10) / 10

/** GET /me on `port` with `token`: the status. */
function get (port, token) {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/me', headers: { authorization: `Bearer ${token}` } }, (res) => {
      res.resume()
      res.once('end', () => resolve(res.statusCode))
    })
    req.once('error', reject)
    req.end()
  })
}

/** One cold start of `variant`: ms from just before the spawn to the first 200. */
function start (variant, config, token) {
  return new Promise((resolve, reject) => {
    const begin = performance.now()
    const child = spawn(process.execPath, [join(here, 'coldstart-app.mjs'), variant], {
      env: { ...process.env, COLDSTART: JSON.stringify(config) },
      stdio: ['ignore', 'pipe', 'inherit']
    })
    const timer = setTimeout(() => fail(new Error(`${variant} did not answer within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS)
    const done = (result) => {
      clearTimeout(timer)
      child.once('exit', () => result instanceof Error ? reject(result) : resolve(result))
      child.kill()
    }
    const fail = (err) => done(err)
    let out = ''
    child.stdout.on('data', async (chunk) => {
      out += chunk
      if (!out.endsWith('\n')) return
      try {
        const status = await get(Number(out), token)
        const elapsed = performance.now() - begin
        done(status === 200 ? elapsed : new Error(`${variant} answered ${status}, not 200`))
      } catch (err) {
        fail(err)
      }
    })
    child.once('error', fail)
  })
}

async function main () {
  const before = probeMachine()
  console.log(`coldstart: machine check: a fixed hash loop took ${before.minMs} to ${before.maxMs} ms (median ${before.medianMs})`)
  const issuer = await createTestIssuer()
  try {
    const token = issuer.sign()
    const config = { url: issuer.url, issuer: issuer.issuer, jwks: issuer.jwks() }
    const times = Object.fromEntries(VARIANTS.map((variant) => [variant, []]))
    for (let round = 0; round <= ROUNDS; round++) {
      // the variants take turns, each round starting with the next; round 0 warms the disk cache, not measured
      const order = VARIANTS.map((_, index) => VARIANTS[(index + round) % VARIANTS.length])
      for (const variant of order) {
        const elapsed = await start(variant, config, token)
        if (round > 0) times[variant].push(elapsed)
      }
    }
    const after = probeMachine()
    const floor = median(times.fastify)
    const rows = VARIANTS.map((variant) => ({
      variant,
      medianMs: round1(median(times[variant])),
      minMs: round1(Math.min(...times[variant])),
      maxMs: round1(Math.max(...times[variant])),
      overFloorMs: round1(median(times[variant]) - floor)
    }))
    const ratio = (a, b) => Math.round(median(times[a]) / median(times[b]) * 1000) / 1000
    const targets = {
      'plugin-jwks / jose-jwks (<= 1.2)': ratio('plugin-jwks', 'jose-jwks'),
      'plugin-inline / jose-inline (<= 1.2)': ratio('plugin-inline', 'jose-inline')
    }
    console.log(`\ncoldstart: machine check: ${before.minMs} to ${before.maxMs} ms (median ${before.medianMs}) before, ${after.minMs} to ${after.maxMs} ms (median ${after.medianMs}) after`)
    console.log(`${ROUNDS} start(s) of each, node ${process.version}: from spawn to the first verified 200\n`)
    console.log('| variant | ms to the first 200 | min | max | over the floor (fastify alone) |')
    console.log('| --- | ---: | ---: | ---: | ---: |')
    for (const row of rows) console.log(`| ${row.variant} | ${row.medianMs} | ${row.minMs} | ${row.maxMs} | ${row.overFloorMs} |`)
    console.log('\nTargets (the ratio of the medians):')
    for (const [name, value] of Object.entries(targets)) console.log(`- ${name}: ${value}`)
    const file = join(here, 'results', quick ? 'coldstart-quick.json' : 'coldstart.json')
    writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), node: process.version, quick, rounds: ROUNDS, machineCheck: { before, after }, rows, targets }, null, 2) + '\n')
    console.log(`\nwritten to ${file}`)
  } finally {
    await issuer.close()
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
