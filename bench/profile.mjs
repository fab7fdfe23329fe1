// Profiles one benchmark server under load: `node bench/profile.mjs plugin-rs256 [unique|hot]`.
// PROFILE_OPTIONS='{"tokenCache":0}' passes plugin options, PROFILE_ROUTE='{"auth":"secret"}' the route's
// requirements, PROFILE_HEADERS='{"apikey":"sb_secret_…"}' the headers of every request (instead of a bearer token). Writes a .cpuprofile into bench/results/ and prints the functions with the most self time.
import { fork } from 'node:child_process'
import { readdirSync, readFileSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, join } from 'node:path'
import { createRequire } from 'node:module'
import autocannon from 'autocannon'

const require = createRequire(import.meta.url)
const { createTestIssuer } = require('fastify-supabase-jwks/testing')
const here = dirname(fileURLToPath(import.meta.url))
const variant = process.argv[2] ?? 'plugin-rs256'
const scenario = process.argv[3] ?? 'unique'
const alg = variant.endsWith('es256') ? 'ES256' : 'RS256'
const dir = join(here, 'results')
mkdirSync(dir, { recursive: true })

const issuer = await createTestIssuer({ alg })
const tokens = Array.from({ length: scenario === 'hot' ? 1 : 20000 }, (_, i) => issuer.sign({ sub: `user-${i}` }))
const child = fork(join(here, 'server.mjs'), [variant], { execArgv: ['--cpu-prof', `--cpu-prof-dir=${dir}`], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
const ready = new Promise((resolve) => child.once('message', resolve))
child.send({ type: 'config', config: { alg, jwk: issuer.currentKey.jwk, issuer: issuer.issuer, jwksUrl: issuer.jwksUrl, pluginOptions: JSON.parse(process.env.PROFILE_OPTIONS ?? '{}'), route: process.env.PROFILE_ROUTE && JSON.parse(process.env.PROFILE_ROUTE) } })
const headers = process.env.PROFILE_HEADERS && JSON.parse(process.env.PROFILE_HEADERS)
const { address } = await ready
let next = 0
const result = await autocannon({
  url: `${address}/me`,
  connections: 50,
  duration: 8,
  requests: [{ method: 'GET', setupRequest (request) { request.headers = headers || { authorization: `Bearer ${tokens[next++ % tokens.length]}` }; return request } }]
})
await new Promise((resolve) => { child.once('exit', resolve); child.send({ type: 'close' }) })
await issuer.close()

const file = readdirSync(dir).filter((name) => name.endsWith('.cpuprofile')).sort().pop()
const profile = JSON.parse(readFileSync(join(dir, file), 'utf8'))
const self = new Map()
const byId = new Map(profile.nodes.map((node) => [node.id, node]))
const counts = new Map()
for (const id of profile.samples) counts.set(id, (counts.get(id) ?? 0) + 1)
let total = 0
for (const [id, count] of counts) {
  const { functionName, url, lineNumber } = byId.get(id).callFrame
  const name = `${functionName || '(anonymous)'} ${url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/work\/main\//, '')}:${lineNumber + 1}`
  self.set(name, (self.get(name) ?? 0) + count)
  total += count
}
const requests = result.requests.total
const micros = (profile.endTime - profile.startTime) / total // µs per sample
console.log(`${file}: ${requests} requests; top self time (${variant}, ${scenario}), in % and µs per request`)
for (const [name, count] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 30)) {
  console.log(`${(100 * count / total).toFixed(1).padStart(5)}% ${(count * micros / requests).toFixed(1).padStart(7)} µs  ${name}`)
}
