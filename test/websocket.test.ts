import t from 'tap'
import { once } from 'node:events'
import Fastify from 'fastify'
import fastifyWebsocket from '@fastify/websocket'
import WebSocket from 'ws'
import supabaseJwks from '../lib/index'
import { issuerFor } from './fixtures/helpers'

t.test('a WebSocket authenticated by its first message with verify(): served when the token verifies, closed with 1008 before any message is handled otherwise', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, { supabaseUrl: issuer.url })
  await app.register(fastifyWebsocket)
  const handled: string[] = []
  app.get('/ws', { websocket: true }, (socket) => {
    // a browser cannot set headers on a WebSocket: the token comes as the first message
    socket.once('message', async (first) => {
      let user: supabaseJwks.SupabaseUser
      try {
        user = await app.supabaseJwks.verify(String(first))
      } catch (err) {
        socket.close(1008, (err as { code: string }).code)
        return
      }
      socket.send(`hello ${user.sub}`)
      socket.on('message', (message) => {
        handled.push(String(message))
        socket.send(`echo ${String(message)}`)
      })
    })
  })
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  const url = `${address.replace('http', 'ws')}/ws`

  const good = new WebSocket(url)
  await once(good, 'open')
  good.send(issuer.sign({ sub: 'user-1' }))
  t.equal(String((await once(good, 'message'))[0]), 'hello user-1')
  good.send('ping')
  t.equal(String((await once(good, 'message'))[0]), 'echo ping')
  good.close()

  for (const [name, token, code] of [
    ['expired', issuer.sign({ exp: Math.floor(Date.now() / 1000) - 60 }), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED'],
    ['forged', issuer.sign().replace(/\.[^.]+$/, `.${'A'.repeat(342)}`), 'FST_SUPABASE_JWKS_TOKEN_INVALID'],
    ['not a token', 'hello', 'FST_SUPABASE_JWKS_MALFORMED_TOKEN']
  ]) {
    const bad = new WebSocket(url)
    await once(bad, 'open')
    bad.send(token!)
    bad.send('should never be handled')
    const [closeCode, reason] = await once(bad, 'close') as [number, Buffer]
    t.equal(closeCode, 1008, `${name}: closed with 1008 (policy violation)`)
    t.equal(String(reason), code, `${name}: the reason is the error code`)
  }
  t.same(handled, ['ping'], 'no message of an unauthenticated socket was handled')
  t.equal(issuer.jwksRequests, 1)
})
