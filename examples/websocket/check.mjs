// Run by test/examples.test.ts: a real WebSocket client (ws); the first message is the token.
import { once } from 'node:events'
import WebSocket from 'ws'

export default async function check (t, { issuer, start }) {
  const api = await start('server.mjs')
  const url = `${api.url.replace('http', 'ws')}/ws`

  const good = new WebSocket(url)
  await once(good, 'open')
  good.send(issuer.sign({ sub: 'user-1' }))
  t.same(JSON.parse(String((await once(good, 'message'))[0])), { type: 'welcome', id: 'user-1' }, 'a valid token: welcome')
  good.send('ping')
  t.same(JSON.parse(String((await once(good, 'message'))[0])), { type: 'echo', from: 'user-1', text: 'ping' }, 'then messages are handled')
  const closed = once(good, 'close')
  good.close()
  await closed

  for (const [label, token, code] of [
    ['an expired token', issuer.sign({ exp: Math.floor(Date.now() / 1000) - 60 }), 'FST_SUPABASE_JWKS_TOKEN_EXPIRED'],
    ['not a token', 'hello', 'FST_SUPABASE_JWKS_MALFORMED_TOKEN']
  ]) {
    const bad = new WebSocket(url)
    const messages = []
    bad.on('message', (message) => messages.push(String(message)))
    await once(bad, 'open')
    bad.send(token)
    bad.send('never handled')
    const [closeCode, reason] = await once(bad, 'close')
    t.equal(closeCode, 1008, `${label}: closed with 1008`)
    t.equal(String(reason), code, `${label}: the reason is the error code`)
    t.same(messages, [], `${label}: no message was answered`)
  }
}
