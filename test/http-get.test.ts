import t, { type Test } from 'tap'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { boundedGet, closingSignal, transportFor } from '../lib/http-get'

/*
 * The bounded GET under the JWKS fetch and the legacy-token calls (lib/http-get.ts), against a real
 * server on 127.0.0.1: what the plugin's own tests cannot reach through its options.
 */

async function serverFor (t: Test, handler: (request: IncomingMessage, response: ServerResponse) => void) {
  const server = createServer(handler)
  let connections = 0
  server.on('connection', () => { connections++ })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return { url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks`), connections: () => connections }
}

const OPTIONS = { timeoutMs: 1000, timeoutMessage: 'timed out', maxResponseSize: 1000 }

t.test('a request Node refuses before sending (a header with a line break) rejects, and its timer does not fire later', async (t) => {
  let requests = 0
  const { url } = await serverFor(t, (_request, response) => { requests++; response.end('{}') })
  await t.rejects(boundedGet(url, { ...OPTIONS, timeoutMs: 50, headers: { apikey: 'key\n' } }), { code: 'ERR_INVALID_CHAR' })
  await sleep(100) // past the timeout: the process is still here, nothing was thrown outside the promise
  t.equal(requests, 0, 'nothing was sent')
  t.same(await boundedGet(url, OPTIONS), { status: 200, body: Buffer.from('{}') }, 'the next GET is answered')
})

t.test('a content-length over maxResponseSize is refused before the body is read', async (t) => {
  const { url } = await serverFor(t, (_request, response) => {
    response.writeHead(200, { 'content-length': '5000' })
    response.end('x'.repeat(5000))
  })
  await t.rejects(boundedGet(url, OPTIONS), { code: 'RESPONSE_TOO_LARGE', message: 'the answer is larger than maxResponseSize (1000 bytes)' })
})

t.test('after a reset, the one retry is on a new connection, by the same deadline', async (t) => {
  let requests = 0
  const server = await serverFor(t, (request, response) => {
    if (++requests === 1) return request.socket.destroy()
    response.end('{"keys":[]}')
  })
  const agent = new (transportFor(server.url).Agent)({ keepAlive: true })
  t.teardown(() => agent.destroy())
  t.same(await boundedGet(server.url, { ...OPTIONS, agent }), { status: 200, body: Buffer.from('{"keys":[]}') })
  t.equal(requests, 2)
  t.equal(server.connections(), 2, 'two connections: the retry did not take another socket of the pool')
})

t.test('https is loaded for https URLs only, and is Node\'s own', async (t) => {
  t.equal(transportFor(new URL('https://project.supabase.co/auth/v1/.well-known/jwks.json')).request, https.request)
  t.not(transportFor(new URL('http://127.0.0.1/jwks')).request, https.request)
})

t.test('many GETs on one closing signal: no listener warning, and closing aborts each of them', async (t) => {
  const warnings: string[] = []
  const onWarning = (warning: Error) => { warnings.push(warning.name) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const { url } = await serverFor(t, () => {}) // never answers
  const closed = closingSignal()
  const pending = Array.from({ length: 20 }, () => boundedGet(url, { ...OPTIONS, timeoutMs: 10_000, signal: closed.signal }).then(() => 'answered', (err: Error) => err.message))
  await sleep(100)
  closed.abort()
  t.same(await Promise.all(pending), Array(20).fill('aborted: closed'))
  await sleep(10)
  t.same(warnings, [], 'no MaxListenersExceededWarning')
  await t.rejects(boundedGet(url, { ...OPTIONS, signal: closed.signal }), { message: 'aborted: closed' }, 'a GET after close is aborted at once')
})
