// Prints the secrets of the auth and db services, for docker compose to read from .env:
//   node generate-keys.mjs > .env
// GOTRUE_JWT_KEYS is what makes GoTrue sign with an asymmetric key and publish its public half at
// /.well-known/jwks.json: a JSON array of private JWKs, exactly one of them with "sign" in key_ops
// (github.com/supabase/auth, internal/conf/jwk.go). GoTrue still requires GOTRUE_JWT_SECRET to
// start; it never leaves the auth container. The API needs none of these.
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto'

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomUUID(),
  alg: 'ES256',
  use: 'sig',
  key_ops: ['sign', 'verify']
}

console.log(`# Secrets of the auth and db services of docker-compose.yml. Keep this file out of git.
POSTGRES_PASSWORD=${randomBytes(24).toString('hex')}
GOTRUE_JWT_SECRET=${randomBytes(48).toString('base64url')}
GOTRUE_JWT_KEYS='${JSON.stringify([signingKey])}'`)
