// Run by test/examples.test.ts: a real WebSocket client (ws); the first message is the token.
import { once } from 'node:events'
import WebSocket from 'ws'

export default async function check (t, { issuer, start }) {
  const api = await start('server.mjs')
  const url = `${api.url.replace('http', 'ws')}/ws`

  const good = new WebSocket(url)
  const answers = []
  good.on('message', (message) => answers.push(JSON.parse(String(message))))
  await once(good, 'open')
  // the token and a message right behind it, before the token has verified: the message waits, never lost
  good.send(issuer.sign({ sub: 'user-1' }))
  good.send('early')
  while (answers.length < 2) await once(good, 'message')
  t.same(answers, [{ type: 'welcome', id: 'user-1' }, { type: 'echo', from: 'user-1', text: 'early' }], 'a valid token: welcome, then the message sent behind it')
  good.send('ping')
  await once(good, 'message')
  t.same(answers[2], { type: 'echo', from: 'user-1', text: 'ping' }, 'then messages are handled')
  const closed = once(good, 'close')
  good.close()
  await closed

  // a socket that never sends its token is closed at the deadline (200 ms here)
  const quick = await start('server.mjs', { TOKEN_DEADLINE_MS: '200' })
  const silent = new WebSocket(`${quick.url.replace('http', 'ws')}/ws`)
  const [silentCode, silentReason] = await once(silent, 'close')
  t.equal(silentCode, 1008, 'no token: closed with 1008')
  t.equal(String(silentReason), 'no token')

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
