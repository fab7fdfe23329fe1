// node:crypto's callback verify against WebCrypto's subtle.verify for ES256, 50 at a time on the libuv
// thread pool: `node bench/webcrypto.mjs` prints the CPU and wall µs per verification of each, 3 rounds.
import { generateKeyPairSync, sign, verify, webcrypto } from 'node:crypto'

const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const COUNT = 20_000
const CONCURRENCY = 50
const items = Array.from({ length: COUNT }, (_, i) => {
  const data = Buffer.from(`header.payload-${i}-${'x'.repeat(600)}`)
  return [data, sign('sha256', data, { key: privateKey, dsaEncoding: 'ieee-p1363' })]
})
const key = await webcrypto.subtle.importKey('jwk', publicKey.export({ format: 'jwk' }), { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify'])
const input = { key: publicKey, dsaEncoding: 'ieee-p1363' }
const variants = {
  'crypto.verify callback': ([data, signature]) => new Promise((resolve) => verify('sha256', data, input, signature, (err, ok) => resolve(!err && ok))),
  'subtle.verify': ([data, signature]) => webcrypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, key, signature, data)
}
for (let round = 0; round < 3; round++) {
  for (const [name, check] of Object.entries(variants)) {
    const cpu = process.cpuUsage()
    const start = performance.now()
    let next = 0
    let refused = 0
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (next < COUNT) if (!(await check(items[next++]))) refused++
    }))
    const used = process.cpuUsage(cpu)
    console.log(`${name}: CPU µs/op ${((used.user + used.system) / COUNT).toFixed(1)}, wall µs/op ${((performance.now() - start) * 1000 / COUNT).toFixed(1)}, refused ${refused}`)
  }
}
