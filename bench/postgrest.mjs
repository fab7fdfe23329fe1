// A stand-in for a Supabase project's API (PostgREST) for the supabase-* variants, in its own process
// (forked by run.mjs, so on the load generator's core, never the servers'): every request answered `[]`,
// as PostgREST answers a select of an empty table. Sends its address over IPC once listening.
import { createServer } from 'node:http'

const server = createServer((request, response) => {
  request.resume()
  request.on('end', () => response.writeHead(200, { 'content-type': 'application/json' }).end('[]'))
})
// keep the servers' pooled connections open between rounds (Node's default closes them after 5 s idle)
server.keepAliveTimeout = 60_000
server.listen(0, '127.0.0.1', () => {
  process.send({ type: 'ready', address: `http://127.0.0.1:${server.address().port}` })
})
process.on('message', (message) => {
  if (message.type === 'close') {
    server.closeAllConnections()
    server.close(() => process.exit(0))
  }
})
// the bench ended (or failed) without closing it
process.on('disconnect', () => process.exit(0))
