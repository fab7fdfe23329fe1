'use strict'

/*
 * The package.json that `npm pack` and `npm publish` put in the tarball has no `prepare` script.
 * `prepare` builds dist/ where npm runs it: `npm install` in this repository, and an install from
 * git (npm clones, installs the dependencies, runs `prepare`, then packs). From a tarball npm never
 * runs it, but npm 11 still lists a tarball's `prepare` among the install scripts to approve and
 * warns about it on every install of the tarball (a file, or a URL): so the packed manifest leaves
 * it out. `prepack` builds, then runs `strip`: package.json without scripts.prepare, the original
 * kept aside byte for byte in package.json.prepack; `postpack` runs `restore`. A pack that fails
 * between the two leaves the original aside: `strip` then refuses to run (package.json may have
 * been edited since) until `node scripts/packed-manifest.js restore` or a look at both files.
 */
const { existsSync, readFileSync, renameSync, writeFileSync } = require('node:fs')
const { join } = require('node:path')

const MANIFEST = join(__dirname, '..', 'package.json')
const ORIGINAL = `${MANIFEST}.prepack`

/** Puts the original package.json back, if it was set aside. */
function restore () {
  if (existsSync(ORIGINAL)) renameSync(ORIGINAL, MANIFEST)
}

/** Sets the original package.json aside, and writes it without scripts.prepare. */
function strip () {
  if (existsSync(ORIGINAL)) {
    throw new Error(`${ORIGINAL} is left from a pack that did not finish: put it back as package.json ` +
      '(node scripts/packed-manifest.js restore), or remove it if package.json is right')
  }
  const text = readFileSync(MANIFEST, 'utf8')
  const manifest = JSON.parse(text)
  if (manifest.scripts?.prepare === undefined) return
  writeFileSync(ORIGINAL, text)
  delete manifest.scripts.prepare
  writeFileSync(MANIFEST, `${JSON.stringify(manifest, null, 2)}\n`)
}

/**
 * Fails when package.json is not the repository's own: a pack that died between strip and restore
 * left it without `prepare` (a git install would then stop building dist/). Run first by `npm test`.
 */
function check () {
  if (existsSync(ORIGINAL)) throw new Error(`${ORIGINAL} is left from a pack that did not finish: run node scripts/packed-manifest.js restore`)
  if (JSON.parse(readFileSync(MANIFEST, 'utf8')).scripts?.prepare === undefined) {
    throw new Error('package.json has no prepare script: git installs would not build dist/ (was it stripped by a pack that failed?)')
  }
}

const commands = { strip, restore, check }
const command = commands[process.argv[2]]
if (command === undefined) {
  console.error('usage: node scripts/packed-manifest.js strip|restore|check')
  process.exitCode = 2
} else {
  try {
    command()
  } catch (err) {
    console.error(`packed-manifest: ${err.message}`)
    process.exitCode = 1
  }
}
