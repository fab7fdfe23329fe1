// Run by test/examples.test.ts: the example's own node:test suite passes.
export default async function check (t, { node }) {
  const run = await node(['--test', '--test-reporter=tap', 'app.test.mjs'])
  t.equal(run.code, 0, `node --test passes:\n${run.stdout}${run.stderr}`)
  t.match(run.stdout, /^# pass 3$/m, 'all three tests ran and passed')
  t.match(run.stdout, /^# fail 0$/m)
}
