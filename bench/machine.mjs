// The machine check every bench part prints: how steady the cores are. The same fixed work (100,000
// SHA-256 hashes of 1 KB) timed 7 times in a child (on `cores`, a taskset list, when given). On a quiet
// machine the times agree within a few percent; a spread of tens of percent means something outside
// the run (another tenant of the host) was taking the cores, and the run's absolute figures (and,
// less, its ratios) are not to be trusted.
import { execFileSync } from 'node:child_process'

const SCRIPT = "const { createHash } = require('node:crypto'); const b = Buffer.alloc(1024); const out = []; " +
  'for (let r = 0; r < 7; r++) { const t = process.hrtime.bigint(); for (let i = 0; i < 100000; i++) createHash(\'sha256\').update(b).digest(); ' +
  'out.push(Math.round(Number(process.hrtime.bigint() - t) / 1e6)) } console.log(JSON.stringify(out))'

/** The check's times: `{ minMs, medianMs, maxMs }`. */
export function probeMachine (cores) {
  const [command, args] = cores === undefined ? [process.execPath, ['-e', SCRIPT]] : ['taskset', ['-c', cores, process.execPath, '-e', SCRIPT]]
  const times = JSON.parse(execFileSync(command, args, { encoding: 'utf8' })).sort((a, b) => a - b)
  return { minMs: times[0], medianMs: times[3], maxMs: times[6] }
}
