import { constants, verify as cryptoVerify, type KeyObject, type VerifyKeyObjectInput } from 'node:crypto'

/*
 * Signature checks, one per (key, algorithm), built once when a key set is fetched: a request
 * then pays for `crypto.verify` with a ready KeyObject and nothing else (no PEM parsing, no
 * option objects). The parameters follow RFC 7518 §3: ECDSA signatures are the raw r || s
 * (IEEE P1363) form, RSASSA-PSS uses MGF1 with the same hash and a salt as long as the hash.
 */

/**
 * Checks `signature` over the signing input (`header.payload`, as bytes): on the libuv thread pool
 * (a promise), or at once on the event loop when the pool's share and its queue are full.
 */
export type SignatureCheck = (input: Buffer, signature: Buffer) => boolean | Promise<boolean>

/** Signature checks made on the thread pool and on the event loop, for `stats()`. */
export interface SignatureCounts {
  signaturesOffLoop: number
  signaturesOnLoop: number
}

/*
 * A signature check on the event loop holds up every other request; on the libuv thread pool it
 * runs beside them. That matters most for ECDSA (about three RSA-2048 checks), but RSA gains too:
 * in one benchmark run (2 cores, unique RS256 tokens, 5 rounds) the plugin answered 11,399 req/s
 * at 100.7 CPU µs each with the check on the pool, against 8,703 at 119.4 with it on the loop, so
 * every algorithm goes to the pool (WebCrypto's subtle.verify, on the pool too, measured no cheaper:
 * bench/webcrypto.mjs). The pool is shared with dns.lookup (the JWKS fetch's own DNS)
 * and fs, and has UV_THREADPOOL_SIZE threads (4 by default), fed first come, first served.
 * At most 16 checks per thread are handed to it at once, process-wide (64 by default): a DNS
 * lookup then waits behind those at most (measured during a flood of 2,000 ES256 checks, on 2
 * cores: 1.1 to 4.7 ms, against 1.1 to 5.6 with a bound of 8), never behind the flood. A lower
 * bound costs throughput: each check past it waits for the event loop to hand it over while
 * threads sit idle (verify() of ES256 tokens, 50 at a time: 0.76 x the unbounded pool's throughput
 * with a bound of 8, 0.93 to 1.0 with 32 or 64). The checks past the bound wait in a queue here;
 * past MAX_QUEUED waiting, a check runs on the loop instead, so the queue stays bounded.
 */
const POOL_SIZE = Math.max(1, Math.min(1024, Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10) || 4))
export const MAX_OFF_LOOP = 16 * POOL_SIZE
export const MAX_QUEUED = 1024

interface Job {
  hash: string | null
  data: Buffer
  input: KeyObject | VerifyKeyObjectInput
  signature: Buffer
  resolve (valid: boolean): void
}

let inFlight = 0
/*
 * The checks waiting for the pool: a ring of MAX_QUEUED slots, `waiting` of them from `head` on. An
 * array pushed at its tail and read from a head index grows by every check queued while a flood keeps
 * it from emptying (30,000 slots a second were measured, held until the flood ends); the ring holds no
 * more slots than may wait, and a slot is cleared when its job is taken, so no Buffer outlives its check.
 */
const ring: Array<Job | undefined> = Array.from({ length: MAX_QUEUED }, () => undefined)
let head = 0
let waiting = 0

/** Queues a job: only while fewer than MAX_QUEUED wait (checkSignatureOffLoop sees to it). */
function enqueue (job: Job): void {
  let tail = head + waiting
  if (tail >= MAX_QUEUED) tail -= MAX_QUEUED
  ring[tail] = job
  waiting++
}

/** The job waiting longest, its slot cleared: only while one waits. */
function dequeue (): Job {
  const job = ring[head]!
  ring[head] = undefined
  if (++head === MAX_QUEUED) head = 0
  waiting--
  return job
}

function run (job: Job): void {
  inFlight++
  cryptoVerify(job.hash, job.data, job.input, job.signature, (err, valid) => {
    inFlight--
    job.resolve(err === null && valid)
    if (waiting > 0) run(dequeue())
  })
}

/**
 * For tests only (lib/index.ts does not export it): the queue's storage in slots, the slots holding a
 * job, and the checks waiting.
 */
export function queueSlots (): { capacity: number, occupied: number, waiting: number } {
  return { capacity: ring.length, occupied: ring.filter((job) => job !== undefined).length, waiting }
}

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

/** The signature check for `alg` with `key`, built once; `counts` counts where the checks ran. */
export function signatureCheck (alg: string, key: KeyObject, counts: SignatureCounts): SignatureCheck {
  const hash = hashOf(alg)
  const input = keyInput(alg, key)
  // a signature of the wrong size is answered false, not thrown (and refused by length before this)
  return function checkSignatureOffLoop (data, signature) {
    if (inFlight >= MAX_OFF_LOOP && waiting >= MAX_QUEUED) {
      counts.signaturesOnLoop++
      return cryptoVerify(hash, data, input, signature)
    }
    counts.signaturesOffLoop++
    return new Promise<boolean>((resolve) => {
      const job = { hash, data, input, signature, resolve }
      if (inFlight < MAX_OFF_LOOP) run(job)
      else enqueue(job)
    })
  }
}
