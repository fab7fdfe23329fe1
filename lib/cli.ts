#!/usr/bin/env node
// The `fastify-supabase-jwks` program: everything it does is in check.ts (main), which the tests run in-process.
import { main } from './check'

main(process.argv.slice(2), process).then((code) => { process.exitCode = code })
