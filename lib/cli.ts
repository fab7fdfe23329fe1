#!/usr/bin/env node
// The `fastify-supabase-jwks` program: everything it does is in check.ts (main), which the tests run in-process.
import { fstatSync } from 'node:fs'
import { main } from './check'

// fd 0 itself: a pipe or a file is read for the token; a terminal or a socket (ssh, a spawn's default stdio) may stay
// open with nothing ever written, and is read only with "--token -" (Node opens /dev/null for a closed fd 0)
const stdin = fstatSync(0)
main(process.argv.slice(2), {
  stdinIsPipe: stdin.isFIFO() || stdin.isFile(),
  get stdin () { return process.stdin },
  stdout: process.stdout,
  stderr: process.stderr
}).then((code) => { process.exitCode = code }, () => {
  // main answers its own errors; only a stderr that throws could get here
  process.exitCode = 2
})
