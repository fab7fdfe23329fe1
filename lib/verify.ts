import type { FastifyRequest } from 'fastify'
import type { FastifyJWTOptions } from '@fastify/jwt'
import { TokenInvalidError, UnknownKeyError, algorithmNotAllowed } from './errors'
import type { CachedKey, KeyResolver } from './keys'
import type { Config } from './options'

/*
 * The glue to @fastify/jwt: its options, and the key callback it calls with the decoded token.
 * The callback runs the checks that must come before any key lookup (algorithm allowlist, kid,
 * unsupported extensions), then takes the key from the resolver: synchronously when held.
 */

/** The bearer token of the request being verified, for @fastify/jwt's `extractToken`. */
export const kToken = Symbol('supabaseJwks.token')
/** The key that verified the request's token, for the token cache. */
export const kKey = Symbol('supabaseJwks.key')

export type VerifyingRequest = FastifyRequest & { [kToken]?: string, [kKey]?: CachedKey }

const MAX_KID_LENGTH = 256
/** Base64url length of a signature for each algorithm (RSA: at least 2048 bits, the minimum key size). */
const SIGNATURE_LENGTH: Record<string, [min: number, max: number]> = {
  ES256: [86, 86],
  ES384: [128, 128],
  ES512: [176, 176],
  EdDSA: [86, 152],
  RS: [342, 1366],
  PS: [342, 1366]
}

function plausibleSignature (alg: string, signature: unknown): boolean {
  const [min, max] = SIGNATURE_LENGTH[alg] ?? SIGNATURE_LENGTH[alg.slice(0, 2)]!
  return typeof signature === 'string' && signature.length >= min && signature.length <= max
}

type KeyCallback = (err: Error | null, key?: string) => void

function fit (request: VerifyingRequest, entry: CachedKey, alg: string, callback: KeyCallback): void {
  if (!entry.algorithms.includes(alg)) return callback(new TokenInvalidError('the algorithm does not match the key'))
  request[kKey] = entry
  callback(null, entry.pem)
}

/** The options @fastify/jwt is registered with: verification only, keys from the resolver. */
export function jwtOptions (config: Config, keys: KeyResolver): FastifyJWTOptions {
  const algorithms = new Set<string>(config.algorithms)
  function supabaseJwksKey (request: VerifyingRequest, decoded: { header: Record<string, unknown>, signature: unknown }, callback: KeyCallback): void {
    const { alg, kid } = decoded.header
    if (typeof alg !== 'string' || !algorithms.has(alg)) return callback(algorithmNotAllowed(alg))
    if (typeof kid !== 'string' || kid === '' || kid.length > MAX_KID_LENGTH || !kid.isWellFormed()) return callback(new UnknownKeyError())
    // no extension is understood (RFC 7515 §4.1.11, RFC 7797): refused before any key lookup
    if ('crit' in decoded.header || 'b64' in decoded.header) return callback(new TokenInvalidError('crit and b64 headers are not supported'))
    if (!plausibleSignature(alg, decoded.signature)) return callback(new TokenInvalidError('the signature is missing or has the wrong length'))
    const entry = keys.held(kid)
    if (entry !== undefined) return fit(request, entry, alg, callback)
    keys.resolve(kid).then((resolved) => fit(request, resolved, alg, callback), callback)
  }
  return {
    namespace: 'supabase',
    secret: supabaseJwksKey,
    decode: { complete: true },
    verify: {
      algorithms: config.algorithms,
      allowedIss: config.issuer,
      allowedAud: config.audience,
      requiredClaims: ['exp', 'sub', ...(config.issuer ? ['iss'] : []), ...(config.audience ? ['aud'] : [])],
      clockTolerance: config.clockToleranceMs,
      extractToken: (request: VerifyingRequest) => request[kToken]
    },
    messages: { authorizationTokenInvalid: (err: Error) => err.message }
  } as unknown as FastifyJWTOptions
}
