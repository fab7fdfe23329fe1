// A WebSocket route authenticated by its first message: a browser cannot set an Authorization
// header on a WebSocket, and a token in the URL would land in access logs.
// Without SUPABASE_URL it starts a local test issuer.
//   node examples/websocket/server.mjs
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import supabaseJwks from 'fastify-supabase-jwks'
import { createTestIssuer } from 'fastify-supabase-jwks/testing'

const issuer = process.env.SUPABASE_URL ? undefined : await createTestIssuer()
const supabaseUrl = process.env.SUPABASE_URL || issuer.url

const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
await app.register(supabaseJwks, { supabaseUrl, algorithms: ['RS256', 'ES256'] })
await app.register(websocket, { options: { maxPayload: 64 * 1024 } })

// how long a socket may stay open without sending its token (ms)
const TOKEN_DEADLINE = Number(process.env.TOKEN_DEADLINE_MS ?? 10_000)

app.get('/ws', { websocket: true }, (socket) => {
  // handle nothing else until the first message, the access token, verifies; messages that arrive
  // meanwhile wait in `early` (a listener is attached at once, so none is lost)
  let user
  const early = []
  const deadline = setTimeout(() => socket.close(1008, 'no token'), TOKEN_DEADLINE)
  const echo = (message) => socket.send(JSON.stringify({ type: 'echo', from: user.sub, text: String(message) }))
  socket.on('message', async (message) => {
    if (user !== undefined) return echo(message)
    if (early.push(message) > 1) return // the token is being verified
    clearTimeout(deadline)
    try {
      user = await app.supabaseJwks.verify(String(message))
    } catch (err) {
      // 1008: policy violation; the reason is the error code (e.g. FST_SUPABASE_JWKS_TOKEN_EXPIRED:
      // the client refreshes its session and reconnects)
      socket.close(1008, err.code)
      return
    }
    socket.send(JSON.stringify({ type: 'welcome', id: user.sub }))
    for (const queued of early.slice(1)) echo(queued)
  })
  socket.on('close', () => clearTimeout(deadline))
})

app.addHook('onClose', async () => { await issuer?.close() })
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { app.close() })

const address = await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
console.log(`listening on ${address}`)
if (issuer) console.log(`connect to ${address.replace('http', 'ws')}/ws and send first: ${issuer.sign()}`)
