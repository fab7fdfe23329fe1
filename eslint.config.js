'use strict'

const regexp = require('eslint-plugin-regexp')

module.exports = [
  ...require('neostandard')({
    ts: true,
    ignores: ['dist/**', 'coverage/**', '.tap/**', 'node_modules/**']
  }),
  regexp.configs['flat/recommended'],
  {
    rules: {
      // a regular expression that backtracks super-linearly turns request input into a denial of
      // service (a `/^ +| +$/g` trim of the Bearer header took ~250 ms on one 16 KiB header): the
      // whole class is an error, in tests too (a pattern copied from a test ends up in lib/)
      'regexp/no-super-linear-backtracking': 'error',
      'regexp/no-super-linear-move': 'error',
      // style rules of the recommended set that would rewrite explicit alphabets (base64url's
      // `[A-Za-z0-9_-]` reads better than `[\w-]`) and groups that only group: off
      'regexp/prefer-w': 'off',
      'regexp/use-ignore-case': 'off',
      'regexp/no-unused-capturing-group': 'off',
      'regexp/no-dupe-characters-character-class': 'off'
    }
  }
]
