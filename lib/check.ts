/*
 * `fastify-supabase-jwks check <supabaseUrl | jwksUrl>`: what the plugin would make of a JWKS, and of
 * a token. Everything goes through the plugin's own code: the options (normalizeOptions), the fetch
 * and its bounds (createKeyResolver), the reading of each key (readKeySet) and the verdict on a
 * token (createTokenVerifier). The walk through the checks beside the verdict only explains it.
 * One fetch, one set: the listing, the walk and the verdict all read the one body fetched (oneSet).
 */
import { parseArgs } from 'node:util'
import type { FastifyBaseLogger } from 'fastify'
import { bounded, extractBearer, toAuthError } from './authenticate'
import { KeysUnavailableError, UnknownKeyError, algorithmNotAllowed } from './errors'
import type { Answer } from './http-get'
import { EMPTY_SET, MAX_KEYS, readKeySet, type CachedKey, type KeyEntry } from './key-set'
import { createKeyResolver, type KeyResolver } from './keys'
import { normalizeOptions, type Config, type IssuerConfig } from './options'
import { TokenCache, deepFreeze } from './token-cache'
import { checkStructure, createTokenVerifier, jsonObject, plausibleSignature } from './verify'

/** Where the CLI reads and writes: the process's streams (see cli.ts), or streams of a test. */
export interface CliIO {
  stdin: NodeJS.ReadableStream
  /**
   * Whether stdin is a pipe (a FIFO) or a file: only then is the token read from it without
   * `--token -`. Never a terminal or a socket (an ssh session, a spawn's default stdio), which may
   * stay open with nothing ever written: the CLI would wait forever.
   */
  stdinIsPipe: boolean
  stdout: { write (text: string): unknown }
  stderr: { write (text: string): unknown }
}

export const HELP = `Usage: fastify-supabase-jwks check <supabaseUrl | jwksUrl> [options]

Fetches the JWKS the way the plugin does (same timeout, size cap, no redirects), lists each key
and whether the plugin would use it, warns about what would break a deployment, and with a token
walks the plugin's checks and gives the answer the plugin would give.

  <supabaseUrl>   the project URL, e.g. https://<ref>.supabase.co or http://127.0.0.1:54321
  <jwksUrl>       a URL ending in .json or containing /.well-known/ is taken as the JWKS URL itself

Options:
  --token <token>          a token to check, never printed; "-" reads it from stdin, as does a
                           pipe or a file on stdin without --token
  --alg <list>             allowed algorithms, comma-separated (the algorithms option); default RS256
  --issuer <iss>           accepted iss (repeatable; "false" skips the check);
                           default <supabaseUrl>/auth/v1, required with a jwksUrl and a token
  --audience <aud>         accepted aud (repeatable; "false" skips the check); default authenticated
  --timeout <seconds>      the timeout option; default 5
  --max-response-size <n>  the maxResponseSize option, in bytes; default 65536
  --json                   one JSON document on stdout, for scripts
  -h, --help               this text

Exit codes: 0 keys fine (and the token accepted), 1 a warning or the token rejected,
2 a usage error, the JWKS could not be fetched, or an unexpected error.
`

class UsageError extends Error {}

interface Command {
  token: string | undefined
  json: boolean
  options: Record<string, unknown>
  issuerGiven: boolean
}

/** `--issuer a --issuer b` as the option takes it; `false` skips the check. */
function listOption (values: string[] | undefined): string[] | false | undefined {
  if (values === undefined) return undefined
  return values.length === 1 && values[0] === 'false' ? false : values
}

function numberOption (value: string | undefined): number | undefined {
  return value === undefined ? undefined : Number(value)
}

/** A JWT, or "Bearer <jwt>": three base64url segments, the first a JSON object's. */
function looksLikeToken (value: string): boolean {
  const match = /^(?:bearer\s+)?([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/i.exec(value.trim())
  return match !== null && Buffer.from(match[1]!, 'base64url').toString().trimStart().startsWith('{')
}

/** Something the user gave, as a message may show it: never in full (it may be a token or a key), at most its first 12 characters. */
function short (value: string): string {
  return clean(value.length > 13 ? `${value.slice(0, 12)}…` : value)
}

/**
 * A message with every value of `given` longer than 13 characters (the arguments, their parts
 * around "=", "," and spaces, the token) cut by `short`: the options' messages quote what they
 * refuse, and parseArgs names what it does not know.
 */
function scrub (message: string, given: readonly unknown[]): string {
  const values = given.filter((value): value is string => typeof value === 'string')
    .flatMap((value) => [value, ...value.split(/[\s=,]+/)])
    .filter((value) => value.length > 13)
    // the longest first: a value that holds a shorter one is cut whole
    .sort((a, b) => b.length - a.length)
  for (const value of values) message = message.split(value).join(short(value))
  return message
}

function parseCommand (argv: readonly string[]): Command | 'help' {
  let parsed
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        token: { type: 'string' },
        alg: { type: 'string', multiple: true },
        issuer: { type: 'string', multiple: true },
        audience: { type: 'string', multiple: true },
        timeout: { type: 'string' },
        'max-response-size': { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' }
      }
    })
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  const { values, positionals } = parsed
  if (values.help === true || positionals[0] === 'help') return 'help'
  // a token where the command or the URL goes: said so, and never echoed
  const given = [...positionals, ...Object.entries(values).flatMap(([name, value]) => name === 'token' ? [] : [value].flat())]
  if (given.some((value) => typeof value === 'string' && looksLikeToken(value))) {
    throw new UsageError('an argument looks like a token: pass it with --token or on stdin (it is never printed)')
  }
  if (positionals[0] !== 'check') {
    throw new UsageError(positionals.length === 0 ? 'a command is required: check' : `unknown command "${short(positionals[0]!)}": the command is check`)
  }
  if (positionals.length !== 2) throw new UsageError('check takes one URL: a supabaseUrl or a jwksUrl')
  if (values.token === '') throw new UsageError('--token needs a token (or "-" to read it from stdin)')
  const url = positionals[1]!
  const jwks = /\.json$/i.test(url) || url.includes('/.well-known/')
  return {
    token: values.token,
    json: values.json === true,
    issuerGiven: values.issuer !== undefined,
    options: {
      [jwks ? 'jwksUrl' : 'supabaseUrl']: url,
      algorithms: values.alg?.flatMap((list) => list.split(',')).map((alg) => alg.trim()).filter((alg) => alg !== ''),
      issuer: listOption(values.issuer),
      audience: listOption(values.audience),
      timeout: numberOption(values.timeout),
      maxResponseSize: numberOption(values['max-response-size']),
      // the CLI looks at a plain-http JWKS off loopback (and warns) where the plugin would refuse to start
      allowInsecureJwksUrl: true,
      warmStart: false,
      tokenCache: 0
    }
  }
}

/** Longest input read from stdin: far past any token the plugin accepts. */
const STDIN_LIMIT = 1024 * 1024

async function readStdin (stdin: CliIO['stdin']): Promise<string> {
  let text = ''
  stdin.setEncoding?.('utf8')
  for await (const chunk of stdin) {
    text += String(chunk)
    if (text.length > STDIN_LIMIT) break
  }
  return text
}

/** Levels of objects and arrays shown of a value from the JWKS or a token; deeper ones are NESTED. */
const SHOWN_DEPTH = 4
const NESTED = '(nested)'

/**
 * A copy of a JSON value to show, its objects and arrays deeper than SHOWN_DEPTH levels replaced by
 * NESTED: a value nested thousands deep (which JSON.parse reads) would overflow the stack of
 * JSON.stringify, or of any printer.
 */
function shallow (value: unknown, depth = 0): unknown {
  if (typeof value !== 'object' || value === null) return value
  if (depth >= SHOWN_DEPTH) return NESTED
  return Array.isArray(value)
    ? value.map((item: unknown) => shallow(item, depth + 1))
    : Object.fromEntries(Object.entries(value).map(([name, item]) => [name, shallow(item, depth + 1)]))
}

/** A value from the network or a token, safe for a terminal: control and direction characters escaped, nesting bounded, at most 200 characters. */
function clean (value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(shallow(value))
  return escapeText(JSON.stringify(text.length > 200 ? `${text.slice(0, 200)}…` : text).slice(1, -1))
}

/** C1 controls and the bidirectional overrides, which JSON.stringify leaves as they are. */
function escapeText (text: string): string {
  return text.replace(/[\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
}

function field (jwk: unknown, name: string): string | null {
  const value = (jwk as Record<string, unknown> | null)?.[name]
  return value === undefined ? null : clean(value)
}

/** A key of the JWKS, as listed. */
export interface KeyReport {
  kid: string | null
  alg: string | null
  kty: string | null
  /** RSA modulus length in bits. */
  size: number | null
  curve: string | null
  use: string | null
  /** Whether the plugin verifies tokens with it under the allowed algorithms. */
  used: boolean
  /** The algorithms it verifies with (under the allowed ones). */
  algorithms: string[]
  /** Why it is not used. */
  reason?: string
}

export interface Warning {
  code: 'insecure-url' | 'empty-key-set' | 'algorithm-not-allowed' | 'unusable-key' | 'no-usable-key' | 'near-max-response-size'
  message: string
}

export type StepName = 'structure' | 'algorithm' | 'kid' | 'signature' | 'exp' | 'nbf' | 'iss' | 'aud' | 'sub'

export interface Step {
  check: StepName
  result: 'pass' | 'fail' | 'skip'
  detail: string
}

export interface TokenReport {
  accepted: boolean
  /** What the plugin answers: 200, or the error's status and code. */
  statusCode: number
  code?: string
  message?: string
  steps: Step[]
  header?: Record<string, unknown>
  /** The claims, with `user_metadata`'s values hidden. */
  claims?: Record<string, unknown>
}

export interface Report {
  jwksUrl: string
  issuer: string[] | false
  audience: string[] | false
  algorithms: string[]
  maxResponseSize: number
  fetch: { ok: boolean, status?: number, bytes?: number, error?: string }
  keys: KeyReport[]
  warnings: Warning[]
  token?: TokenReport
  exitCode: 0 | 1 | 2
}

/** RSA modulus length of a JWK's `n`, in bits. */
function rsaBits (n: unknown): number | null {
  if (typeof n !== 'string') return null
  const bytes = Buffer.from(n, 'base64url')
  const first = bytes.findIndex((byte) => byte !== 0)
  return first === -1 ? 0 : (bytes.length - first) * 8 - Math.clz32(bytes[first]!) + 24
}

/** Longest kid the plugin looks up: MAX_KID_LENGTH of verify.ts. */
const MAX_KID_LENGTH = 256

/**
 * Why the plugin refuses a token's kid before any key lookup (UNKNOWN_KID), or undefined: the very
 * rule of createTokenVerifier in verify.ts (`typeof kid !== 'string' || kid === '' ||
 * kid.length > MAX_KID_LENGTH || !kid.isWellFormed()`), which it does not export.
 */
function kidProblem (kid: unknown): string | undefined {
  if (typeof kid !== 'string' || kid === '') return 'the header has no kid'
  if (kid.length > MAX_KID_LENGTH) return `the kid is longer than ${MAX_KID_LENGTH} characters`
  if (!kid.isWellFormed()) return 'the kid is not well-formed Unicode (a lone surrogate)'
  return undefined
}

function keyReport ({ jwk, key, skipped }: KeyEntry, config: IssuerConfig): KeyReport {
  const kty = field(jwk, 'kty')
  // a key held under a kid no token may name verifies nothing
  const kid = key === undefined ? undefined : kidProblem(key.kid)
  const algorithms = key === undefined || kid !== undefined ? [] : [...key.checks.keys()]
  let reason = skipped
  if (kid !== undefined) {
    reason = `${kid}: the plugin refuses every token that names it (UNKNOWN_KID)`
  } else if (key !== undefined && algorithms.length === 0) {
    reason = `${key.algorithms.join(', ')} not in the allowed algorithms (${config.algorithms.join(', ')})`
  }
  return {
    kid: field(jwk, 'kid'),
    alg: field(jwk, 'alg'),
    kty,
    size: kty === 'RSA' ? rsaBits((jwk as { n?: unknown }).n) : null,
    curve: field(jwk, 'crv'),
    use: field(jwk, 'use'),
    used: algorithms.length > 0,
    algorithms,
    ...(reason === undefined ? {} : { reason })
  }
}

/** Share of maxResponseSize past which a key set is too close to the cap: a rotation adds a key. */
const NEAR_MAX = 0.75

function keyWarnings (entries: readonly KeyEntry[], keys: readonly KeyReport[], bytes: number, config: IssuerConfig): Warning[] {
  const warnings: Warning[] = []
  if (entries.length === 0) {
    warnings.push({ code: 'empty-key-set', message: `${EMPTY_SET}: every token is answered 503 FST_SUPABASE_JWKS_KEYS_UNAVAILABLE` })
  }
  const allowed = config.algorithms.join(', ')
  keys.forEach((key, index) => {
    const name = `key ${key.kid ?? `#${index + 1}`}`
    const entry = entries[index]!
    if (entry.key !== undefined && !key.used && kidProblem(entry.key.kid) === undefined) {
      // an RSA JWK without alg verifies all six RSA algorithms: RS256 (first, and Supabase's) is suggested, the others named
      const [usual, ...others] = entry.key.algorithms as [string, ...string[]]
      const wanted = [...new Set([...config.algorithms, usual])]
      warnings.push({
        code: 'algorithm-not-allowed',
        message: `${name} signs with ${entry.key.algorithms.join(' or ')}, which the allowed algorithms (${allowed}) leave out: ` +
          `tokens it signs are answered 401 FST_SUPABASE_JWKS_ALGORITHM_NOT_ALLOWED; set algorithms: ${JSON.stringify(wanted)} (--alg ${wanted.join(',')})` +
          (others.length === 0 ? '' : `, if its tokens use ${usual} (the usual one; the JWK has no alg), else the one of ${others.join(', ')} they use`)
      })
    } else if (!key.used) {
      warnings.push({ code: 'unusable-key', message: `${name} is skipped by the plugin: ${key.reason!}` })
    }
  })
  if (entries.length > MAX_KEYS) {
    warnings.push({ code: 'unusable-key', message: `the set has ${entries.length} keys: the plugin reads the first ${MAX_KEYS} only` })
  }
  if (entries.length > 0 && !keys.some((key) => key.used)) {
    warnings.push({ code: 'no-usable-key', message: 'no key of the set verifies tokens under the allowed algorithms: every token will be refused' })
  }
  if (bytes > NEAR_MAX * config.maxResponseSize) {
    warnings.push({
      code: 'near-max-response-size',
      message: `the JWKS is ${bytes} bytes, ${Math.round(100 * bytes / config.maxResponseSize)}% of maxResponseSize (${config.maxResponseSize}): ` +
        'a rotation adds a key, and a set past the cap fails every fetch; raise maxResponseSize'
    })
  }
  return warnings
}

/** A logger for the resolver and the verifier (which log at info, debug and warn): keeps the reason of a failed fetch, drops the rest. */
function fetchLog (onFailure: (reason: string) => void): FastifyBaseLogger {
  const ignore = () => {}
  return {
    info: ignore,
    debug: ignore,
    warn (object: { reason?: unknown, code?: unknown }, message: string) {
      if (message !== 'supabase-jwks: JWKS fetch failed') return
      onFailure(typeof object.code === 'string' ? `${String(object.reason)} (${object.code})` : String(object.reason))
    }
  } as unknown as FastifyBaseLogger
}

const HIDDEN = '(hidden)'

/** Claims to show: everything but the values of `user_metadata`, which the user writes themselves. */
function shownClaims (payload: Record<string, unknown>): Record<string, unknown> {
  const meta = payload.user_metadata
  if (meta === undefined) return payload
  return {
    ...payload,
    user_metadata: typeof meta === 'object' && meta !== null && !Array.isArray(meta)
      ? Object.fromEntries(Object.keys(meta).map((name) => [name, HIDDEN]))
      : HIDDEN
  }
}

/** A time claim for a person: its date and how far it is from now. */
function when (seconds: number): string {
  if (Math.abs(seconds) >= 8.64e12) return String(seconds) // past what a Date holds
  const minutes = Math.round(Math.abs(seconds * 1000 - Date.now()) / 60_000)
  const distance = minutes < 120 ? `${minutes} min` : minutes < 2880 ? `${Math.round(minutes / 60)} h` : `${Math.round(minutes / 1440)} days`
  return `${new Date(seconds * 1000).toISOString()}, ${distance} ${seconds * 1000 < Date.now() ? 'ago' : 'from now'}`
}

/**
 * `aud` or `iss` against the accepted values (RFC 7519 §4.1.1, §4.1.3), by the rule of checkAllowed
 * in verify.ts (not exported): every value a string (`aud` may be a list of them), and one of them accepted.
 */
function allowedStep (check: 'iss' | 'aud', value: unknown, accepted: string[] | undefined): Step {
  if (accepted === undefined) return { check, result: 'skip', detail: 'not checked (false)' }
  if (value === undefined) return { check, result: 'fail', detail: `the ${check} claim is required` }
  const values: unknown[] = check === 'aud' && Array.isArray(value) ? value : [value]
  if (!values.every((item) => typeof item === 'string')) {
    return { check, result: 'fail', detail: `${clean(value)}: the ${check} claim must be a string${check === 'aud' ? ' or an array of strings' : ''}` }
  }
  const ok = values.some((item) => accepted.includes(item as string))
  return { check, result: ok ? 'pass' : 'fail', detail: `${clean(value)}${ok ? '' : `, accepted: ${clean(accepted.join(', '))}`}` }
}

function claimSteps (payload: Record<string, unknown>, config: IssuerConfig): Step[] {
  const tolerance = config.clockToleranceMs
  const { exp, nbf, sub } = payload
  const now = Date.now()
  return [
    typeof exp !== 'number' || !Number.isFinite(exp)
      ? { check: 'exp', result: 'fail', detail: exp === undefined ? 'the exp claim is required' : 'the exp claim must be a finite number' }
      : { check: 'exp', result: now > exp * 1000 + tolerance ? 'fail' : 'pass', detail: when(exp) },
    nbf === undefined
      ? { check: 'nbf', result: 'pass', detail: 'absent' }
      : typeof nbf !== 'number'
        ? { check: 'nbf', result: 'fail', detail: 'the nbf claim must be a number' }
        : { check: 'nbf', result: now < nbf * 1000 - tolerance ? 'fail' : 'pass', detail: when(nbf) },
    allowedStep('iss', payload.iss, config.issuer),
    allowedStep('aud', payload.aud, config.audience),
    typeof sub === 'string' && sub !== ''
      ? { check: 'sub', result: 'pass', detail: clean(sub) }
      : { check: 'sub', result: 'fail', detail: sub === undefined ? 'the sub claim is required' : 'sub is not a non-empty string' }
  ]
}

/** The checks of the header and the signature, with the held key set. */
async function keySteps (token: string, header: Record<string, unknown>, payload: Record<string, unknown>, config: IssuerConfig, keys: KeyResolver): Promise<Step[]> {
  const { alg, kid } = header
  if (typeof alg !== 'string' || !(config.algorithms as string[]).includes(alg)) {
    return [
      { check: 'algorithm', result: 'fail', detail: algorithmNotAllowed(alg, payload).message },
      { check: 'kid', result: 'skip', detail: 'not checked' },
      { check: 'signature', result: 'skip', detail: 'not checked' }
    ]
  }
  const steps: Step[] = [{ check: 'algorithm', result: 'pass', detail: `${alg}, allowed` }]
  // a kid the plugin refuses before any lookup (UNKNOWN_KID), even when the key set holds a key by that name
  const problem = kidProblem(kid)
  let key: CachedKey | undefined
  try {
    // the key get-jwks answers for the token's kid and alg, from the set the report lists
    if (problem === undefined) key = keys.held(kid as string, alg) ?? await keys.resolve(kid as string, alg)
  } catch {
    // not in the listed set, or no set: the verdict above says what the plugin answers
  }
  if (key === undefined) {
    const detail = problem ?? `no key ${clean(kid)} in the key set`
    return [...steps, { check: 'kid', result: 'fail', detail }, { check: 'signature', result: 'skip', detail: 'not checked: no key' }]
  }
  steps.push({ check: 'kid', result: 'pass', detail: `${clean(kid)}, in the key set` })
  const check = key.checks.get(alg)
  const dot = token.lastIndexOf('.')
  if (check === undefined) return [...steps, { check: 'signature', result: 'fail', detail: `key ${clean(kid)} does not verify ${alg}` }]
  if (!plausibleSignature(alg, token.length - dot - 1)) return [...steps, { check: 'signature', result: 'fail', detail: 'the signature is missing or has the wrong length' }]
  const valid = await check(Buffer.from(token.slice(0, dot)), Buffer.from(token.slice(dot + 1), 'base64url'))
  return [...steps, { check: 'signature', result: valid ? 'pass' : 'fail', detail: valid ? `valid (${alg})` : 'the token signature is invalid' }]
}

const ORDER: readonly StepName[] = ['structure', 'algorithm', 'kid', 'signature', 'exp', 'nbf', 'iss', 'aud', 'sub']

/** The walk through the checks, then the plugin's own verdict from its verifier. */
async function checkToken (input: string, config: Config, keys: KeyResolver): Promise<TokenReport> {
  const verify = createTokenVerifier(config, [keys], new TokenCache(0), fetchLog(() => {}))
  const issuer = config.issuers[0]!
  let verdict: Pick<TokenReport, 'accepted' | 'statusCode' | 'code' | 'message'>
  let token = ''
  try {
    // a pasted "Bearer <token>" is read as the header would be
    token = /^bearer\s/i.test(input) ? extractBearer(input, config.maxTokenLength) : bounded(input, config.maxTokenLength)
    await verify(token)
    verdict = { accepted: true, statusCode: 200 }
  } catch (err) {
    const answer = toAuthError(err)
    verdict = { accepted: false, statusCode: answer.statusCode, code: answer.code, message: answer.message }
  }
  let header: Record<string, unknown>
  let payload: Record<string, unknown>
  try {
    if (token === '') throw new Error(verdict.message)
    checkStructure(token)
    const [head, body] = token.split('.') as [string, string]
    header = jsonObject(head, 'header')
    payload = jsonObject(body, 'payload')
    if ('crit' in header || 'b64' in header) throw new Error('crit and b64 headers are not supported')
  } catch (err) {
    const steps: Step[] = ORDER.map((check) => ({ check, result: 'skip', detail: 'not checked' }))
    steps[0] = { check: 'structure', result: 'fail', detail: (err as Error).message }
    return { ...verdict, steps }
  }
  // the plugin freezes the claims it accepts with deepFreeze, which refuses claims nested too deep: the same call here
  let structure: Step = { check: 'structure', result: 'pass', detail: 'three base64url segments, a JSON header and payload' }
  try {
    deepFreeze(payload)
  } catch (err) {
    structure = { check: 'structure', result: 'fail', detail: (err as Error).message }
  }
  const steps = [
    structure,
    ...await keySteps(token, header, payload, issuer, keys),
    ...claimSteps(payload, issuer)
  ]
  // shown nested a few levels at most: the report is printed, or JSON.stringify'd
  return { ...verdict, steps, header: shallow(header) as Record<string, unknown>, claims: shallow(shownClaims(payload)) as Record<string, unknown> }
}

/**
 * `keys` held to the one set the CLI fetched (its `entries`, as listed), for the verdict and the walk alike:
 * never another fetch. The plugin's resolver fetches again for a kid its set lacks; here that fetch could
 * find another set than the one listed, and the verdict would judge the token against keys the report
 * never showed. A kid the set lacks gets what the plugin answers once its own fetch finds this same set
 * (UNKNOWN_KID); no set (the fetch failed, or the set is empty) what it answers with no key (KEYS_UNAVAILABLE).
 * A kid of the listed set is the resolver's own (get-jwks answers it), fresh for `cacheTtl` after the
 * one fetch, which the CLI leaves at its default (10 minutes): far longer than one check takes.
 */
function oneSet (keys: KeyResolver, entries: readonly KeyEntry[] | undefined): KeyResolver {
  const kids = new Set(entries?.flatMap(({ key }) => key === undefined ? [] : [key.kid]))
  const unavailable = entries === undefined || entries.length === 0
  return {
    ...keys,
    held: (kid, alg) => kids.has(kid) ? keys.held(kid, alg) : undefined,
    async resolve (kid, alg) {
      if (kids.has(kid)) return keys.resolve(kid, alg)
      throw unavailable ? new KeysUnavailableError() : new UnknownKeyError()
    }
  }
}

async function check (config: Config, token: string | undefined): Promise<Report> {
  let answer: Answer | undefined
  let failure: string | undefined
  // the CLI checks one issuer, given by its supabaseUrl or jwksUrl (never by discovery)
  const issuer = config.issuers[0]!
  const keys = createKeyResolver(issuer, fetchLog((reason) => { failure = reason }), (observed) => { answer ??= observed })
  const report: Report = {
    jwksUrl: issuer.jwksUrl!.href,
    issuer: issuer.issuer ?? false,
    audience: issuer.audience ?? false,
    algorithms: issuer.algorithms,
    maxResponseSize: issuer.maxResponseSize,
    fetch: { ok: false },
    keys: [],
    warnings: [],
    token: undefined,
    exitCode: 0
  }
  if (issuer.insecureJwksUrl) {
    report.warnings.push({
      code: 'insecure-url',
      message: 'the JWKS URL is plain http on a host that is not loopback: anyone on the network path can swap the keys, ' +
        'and the plugin refuses it unless allowInsecureJwksUrl: true; use https'
    })
  }
  try {
    await keys.refresh()
    const entries = answer?.status === 200 ? readKeySet(answer.body, issuer.algorithms) : undefined
    if (entries === undefined) {
      report.fetch.error = failure!
    } else {
      report.fetch = { ok: true, status: 200, bytes: answer!.body.length }
      report.keys = entries.slice(0, MAX_KEYS).map((entry) => keyReport(entry, issuer))
      report.warnings.push(...keyWarnings(entries, report.keys, answer!.body.length, issuer))
    }
    if (token !== undefined) report.token = await checkToken(token, config, oneSet(keys, entries))
  } finally {
    await keys.close()
  }
  report.exitCode = !report.fetch.ok ? 2 : report.warnings.length > 0 || report.token?.accepted === false ? 1 : 0
  return report
}

function table (rows: string[][]): string {
  const widths = rows[0]!.map((_cell, column) => Math.max(...rows.map((row) => row[column]!.length)))
  return rows.map((row) => `  ${row.map((cell, column) => cell.padEnd(widths[column]!)).join('  ').trimEnd()}\n`).join('')
}

/** The report for a person. */
function text (report: Report): string {
  const out = [
    `JWKS        ${report.jwksUrl}\n`,
    `issuer      ${report.issuer === false ? '(not checked)' : report.issuer.join(', ')}\n`,
    `audience    ${report.audience === false ? '(not checked)' : report.audience.join(', ')}\n`,
    `algorithms  ${report.algorithms.join(', ')}\n`
  ]
  const { fetch } = report
  if (fetch.ok) {
    out.push(`fetched     HTTP 200, ${fetch.bytes} bytes (${Math.round(100 * fetch.bytes! / report.maxResponseSize)}% of maxResponseSize ${report.maxResponseSize}), ${report.keys.length} ${report.keys.length === 1 ? 'key' : 'keys'}\n`)
  }
  if (report.keys.length > 0) {
    const rows = report.keys.map((key) => [
      key.kid ?? '-',
      key.alg ?? '-',
      [key.kty ?? '-', key.size ?? key.curve ?? ''].join(' ').trim(),
      key.use ?? '-',
      key.used ? `used (${key.algorithms.join(', ')})` : `not used: ${key.reason!}`
    ])
    out.push('\nKeys\n', table([['kid', 'alg', 'type', 'use', 'plugin'], ...rows]))
  }
  if (report.token !== undefined) {
    const { token } = report
    out.push('\nToken\n', table(token.steps.map((step) => [step.result === 'fail' ? 'FAIL' : step.result, step.check, step.detail])))
    if (token.claims !== undefined) {
      out.push('\nHeader and claims (user_metadata values hidden)\n',
        table([...Object.entries(token.header!), ...Object.entries(token.claims)].map(([name, value]) => [clean(name), escapeText(JSON.stringify(value))])))
    }
    out.push(token.accepted ? '\nanswer      200: accepted\n' : `\nanswer      ${token.statusCode} ${token.code!}: ${clean(token.message)}\n`)
  }
  if (report.warnings.length > 0) {
    out.push('\nWarnings\n', ...report.warnings.map((warning) => `  - ${warning.message} [${warning.code}]\n`))
  }
  return out.join('')
}

/**
 * Runs the CLI with `argv` (the arguments after the program name); resolves to the exit code:
 * 0 keys fine (and the token accepted), 1 a warning or the token rejected, 2 a usage or fetch
 * error, or an unexpected one (told in one line, the arguments and the token cut by `short`).
 */
export async function main (argv: readonly string[], io: CliIO): Promise<number> {
  let token: string | undefined
  try {
    const command = parseCommand(argv)
    if (command === 'help') {
      io.stdout.write(HELP)
      return 0
    }
    // "--token -", or no --token and a pipe or a file on stdin: the token is read from stdin (an empty one is no token)
    const fromStdin = command.token === '-' || (command.token === undefined && io.stdinIsPipe)
    token = fromStdin ? (await readStdin(io.stdin)).trim() || undefined : command.token
    const options = command.options
    // without a token the issuer matters not; with one, a jwksUrl alone needs --issuer, as the plugin needs issuer
    if (token === undefined && !command.issuerGiven && 'jwksUrl' in options) options.issuer = false
    let config: Config
    try {
      config = normalizeOptions(options)
    } catch (err) {
      throw new UsageError((err as Error).message.replace(/^Invalid fastify-supabase-jwks option: /, '')
        .replace('issuer is required with jwksUrl alone', '--issuer is required with a jwksUrl and a token'))
    }
    const report = await check(config, token)
    if (command.json) {
      io.stdout.write(`${escapeText(JSON.stringify(report, null, 2))}\n`)
    } else {
      io.stdout.write(text(report))
      if (!report.fetch.ok) io.stderr.write(`fastify-supabase-jwks: the JWKS could not be fetched: ${clean(report.fetch.error)}\n`)
    }
    return report.exitCode
  } catch (err) {
    // a usage error quotes at most a prefix of what it refuses; anything else is a bug, told in one line
    io.stderr.write(err instanceof UsageError
      ? `fastify-supabase-jwks: ${scrub(err.message, argv)}\nRun fastify-supabase-jwks --help for the usage.\n`
      : `fastify-supabase-jwks: unexpected error: ${clean(scrub(String(err).split('\n')[0]!, [...argv, token]))}\n`)
    return 2
  }
}
