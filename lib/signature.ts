import { constants, verify as cryptoVerify, type KeyObject, type VerifyKeyObjectInput } from 'node:crypto'

/*
 * Signature checks, one per (key, algorithm), built once when a key set is fetched: a request
 * then pays for `crypto.verify` with a ready KeyObject and nothing else (no PEM parsing, no
 * option objects). The parameters follow RFC 7518 §3: ECDSA signatures are the raw r || s
 * (IEEE P1363) form, RSASSA-PSS uses MGF1 with the same hash and a salt as long as the hash.
 */

/** Checks `signature` over the signing input (`header.payload`, as bytes). */
export type SignatureCheck = (input: Buffer, signature: Buffer) => boolean

/** The hash of an algorithm (`null` for EdDSA, whose curve fixes it). */
export function hashOf (alg: string): string | null {
  return alg === 'EdDSA' ? null : `sha${alg.slice(2)}`
}

/** The key and parameters node:crypto signs or verifies `alg` with. */
export function keyInput<K extends KeyObject> (alg: string, key: K): K | (VerifyKeyObjectInput & { key: K }) {
  switch (alg.slice(0, 2)) {
    case 'ES': return { key, dsaEncoding: 'ieee-p1363' }
    case 'PS': return { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }
    default: return key
  }
}

/** The signature check for `alg` with `key`, built once. */
export function signatureCheck (alg: string, key: KeyObject): SignatureCheck {
  const hash = hashOf(alg)
  const input = keyInput(alg, key)
  // a signature of the wrong size is answered false, not thrown (and refused by length before this)
  return function checkSignature (data, signature) {
    return cryptoVerify(hash, data, input, signature)
  }
}
