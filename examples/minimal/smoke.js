'use strict'

// Runs the demo as a user would (npm start) and checks the three printed curl commands:
// the token gets 200, no token 401, the tampered token 401. Part of `npm test`.

const { spawn } = require('node:child_process')
const path = require('node:path')

const TIMEOUT_MS = 20_000

function bearerOf (output, label) {
  const match = output.match(new RegExp(`${label}[^\\n]*\\n\\s+curl -i (\\S+)(?: -H 'Authorization: Bearer ([^']+)')?`))
  if (!match) throw new Error(`the demo printed no curl command for "${label}"`)
  return { url: match[1], token: match[2] }
}

async function expectStatus ({ url, token }, status, label) {
  const headers = token ? { authorization: `Bearer ${token}` } : {}
  const response = await fetch(url, { headers })
  await response.arrayBuffer()
  if (response.status !== status) throw new Error(`${label}: expected ${status}, got ${response.status}`)
  console.log(`ok - demo: ${label} -> ${status}`)
}

async function checkModuleShapes () {
  const cjs = require('fastify-supabase-jwks')
  const esm = await import('fastify-supabase-jwks')
  const testing = await import('fastify-supabase-jwks/testing')
  if (typeof cjs !== 'function' || cjs.default !== cjs || esm.default !== cjs || typeof testing.createTestIssuer !== 'function') {
    throw new Error('the package does not load the same from require() and import')
  }
  console.log('ok - package: require() and import give the same plugin function')
}

async function main () {
  await checkModuleShapes()
  const child = spawn(process.execPath, [path.join(__dirname, 'server.js')], {
    env: { ...process.env, PORT: '0', LOG_LEVEL: 'warn', SUPABASE_URL: '' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const timer = setTimeout(() => { child.kill(); console.error('demo did not start in time'); process.exitCode = 1 }, TIMEOUT_MS)
  try {
    let output = ''
    for await (const chunk of child.stdout) {
      output += chunk
      if (output.includes('Tampered payload') && output.trimEnd().endsWith("'")) break
    }
    await expectStatus(bearerOf(output, 'Accepted'), 200, 'the printed token')
    await expectStatus(bearerOf(output, 'No token'), 401, 'no token')
    await expectStatus(bearerOf(output, 'Tampered payload'), 401, 'the tampered token')
  } finally {
    clearTimeout(timer)
    child.kill()
  }
}

main().catch((err) => {
  console.error(err.message)
  process.exitCode = 1
})
