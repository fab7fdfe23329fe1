/*
 * Every relative link and #anchor of the docs resolves: each markdown file of the repository
 * (README.md, SECURITY.md, CHANGELOG.md, docs/, examples/, …) is read for its links (inline,
 * reference definitions, HTML `href`/`src`; none from code blocks, code spans or comments), and
 * each link without a scheme must name a file or folder of the repository and, with a `#anchor`, a
 * heading (slugged as GitHub does) or an `<a name|id>` of the target. Links with a scheme, the
 * repository's GitHub URLs included, are external: not checked (no network in the tests).
 * The reading lives in ./fixtures/markdown-links.ts; this file checks it on small samples first.
 */
import t from 'tap'
import { join } from 'node:path'
import { markdownFiles } from './fixtures/code-blocks'
import { anchorsOf, checkLinks, findLinks, isExternal, slug } from './fixtures/markdown-links'

const ROOT = join(__dirname, '..')

t.test('every relative link and #anchor of the docs resolves', async (t) => {
  const files = markdownFiles(ROOT)
  for (const file of ['README.md', 'SECURITY.md', 'CHANGELOG.md', 'examples/README.md']) t.ok(files.includes(file), `${file} is checked`)
  const { checked, broken } = checkLinks(ROOT, files)
  t.ok(checked > 0, 'relative links are found')
  t.same(broken, [], broken.length === 0
    ? `${checked} relative links of ${files.length} markdown files resolve`
    : `${broken.length} broken links:\n${broken.join('\n')}`)
})

t.test('slugs: lowercased, punctuation and symbols removed, letters of any script kept, spaces to -', async (t) => {
  t.equal(slug('Session cookies of @supabase/ssr: `cookie`'), 'session-cookies-of-supabasessr-cookie')
  t.equal(slug('Migrating from `SUPABASE_JWT_SECRET`'), 'migrating-from-supabase_jwt_secret', '_ is kept')
  t.equal(slug('Authorization: MFA, anonymous users, roles (403)'), 'authorization-mfa-anonymous-users-roles-403')
  t.equal(slug('Café & crème — 2024'), 'café--crème--2024', 'each space becomes a -, even next to another')
  t.equal(slug('Ελληνικά, 日本語'), 'ελληνικά-日本語')
})

t.test('anchors: ATX headings outside code, repeats numbered, <a name|id>', async (t) => {
  const markdown = [
    '# Title',
    '## Options',
    '## Options',
    '## Options-1', // taken by the second Options: numbered in turn
    '### Session cookies of @supabase/ssr: `cookie`',
    '  ## The `check` CLI ##',
    '## [Linked](https://example.com) <em>heading</em>',
    '## C++ \\_escaped\\_',
    '#hashtag is no heading',
    '    # indented four spaces is no heading',
    '```sh',
    '# a comment, no heading',
    '', // a blank line: no code span could pair the fences, only the fence reader sees the block
    '# nor this',
    '```',
    '<!--',
    '## commented out',
    '-->',
    '<a name="legacy"></a> and <A ID=old-anchor></A>',
    '`<a name="in-code">`'
  ].join('\n')
  t.same([...anchorsOf(markdown)].sort(), [
    'c-_escaped_', 'legacy', 'linked-heading', 'old-anchor', 'options', 'options-1', 'options-1-1',
    'session-cookies-of-supabasessr-cookie', 'the-check-cli', 'title'
  ])
})

t.test('links: inline, images, reference definitions, HTML; none in code or comments', async (t) => {
  const markdown = [
    '# Title', // 1
    'See [the options](#options) and [a guide](docs/guide.md#setup "its title").', // 2
    'An image ![logo](img/logo.png), a [link', // 3
    'over two lines](other.md), and `[code](not-a-link.md)`.', // 4
    '~~~md', // 5
    '[fenced](not-a-link-either.md)', // 6
    '~~~', // 7
    '<!-- [commented](nor-this.md) -->', // 8
    '[![badge](badge.svg)](https://example.com) \\[escaped](no.md) [spaces](<a b.md>) [parens](a_(b).md)', // 9
    '<a href="page.html">html</a> <img src=\'pic.png\'>', // 10
    '', // 11
    '[ref]: ref.md#part', // 12
    '   [indented]:', // 13
    '   <indented ref.md>', // 14
    '[^note]: a footnote, no link', // 15
    'text [ref]: no definition in a line' // 16
  ].join('\n')
  t.same(findLinks(markdown), [
    { line: 2, target: '#options' },
    { line: 2, target: 'docs/guide.md#setup' },
    { line: 3, target: 'img/logo.png' },
    { line: 4, target: 'other.md' },
    { line: 9, target: 'badge.svg' },
    { line: 9, target: 'https://example.com' },
    { line: 9, target: 'a b.md' },
    { line: 9, target: 'a_(b).md' },
    { line: 10, target: 'page.html' },
    { line: 10, target: 'pic.png' },
    { line: 12, target: 'ref.md#part' },
    { line: 14, target: 'indented ref.md' }
  ])
  for (const target of ['https://github.com/fastify-supabase-jwks/fastify-supabase-jwks/blob/main/README.md', 'http://x', 'mailto:a@b.c', '//cdn.example/x.js']) {
    t.ok(isExternal(target), `${target} is external`)
  }
  for (const target of ['README.md', '#anchor', 'docs/a:b.md', './x', '/docs']) t.notOk(isExternal(target), `${target} is relative`)
})

t.test('broken links are reported as file:line: target (why); good ones and external ones are not', async (t) => {
  const root = t.testdir({
    'README.md': [
      '# Project', // 1
      '## Usage', // 2
      '## Usage', // 3
      '[guide](docs/guide.md) [setup](docs/guide.md#setup) [second usage](#usage-1)', // 4
      '[missing](docs/missing.md) [bad anchor](docs/guide.md#teardown) [third usage](#usage-2)', // 5
      '[folder](docs/) [folder README](examples#run) [encoded](docs/a%20b.md) [query](docs/guide.md?plain=1#setup)', // 6
      '[outside](../elsewhere.md) [not markdown](LICENSE#L1) [bad encoding](docs/%E0.md) [rooted](/docs/guide.md)', // 7
      '[external](https://github.com/fastify-supabase-jwks/fastify-supabase-jwks/blob/main/nothing.md) [mail](mailto:a@b.c)', // 8
      '```md', // 9
      '[in a fence](nowhere.md)', // 10
      '```', // 11
      '`[in code](nowhere.md)`' // 12
    ].join('\n'),
    docs: {
      'guide.md': '# Guide\n## Setup\n[back](../README.md#project) [top](#guide) [explicit](#old) <a name="old"></a> [broken](#nothing)\n',
      'a b.md': '# A B\n'
    },
    examples: { 'README.md': '# Examples\n## Run\n' },
    LICENSE: 'MIT\n'
  })
  t.same(checkLinks(root, ['README.md', 'docs/guide.md']), {
    checked: 18,
    broken: [
      'README.md:5: docs/missing.md (no such file or folder)',
      'README.md:5: docs/guide.md#teardown (no heading or anchor #teardown in docs/guide.md)',
      'README.md:5: #usage-2 (no heading or anchor #usage-2 in README.md)',
      'README.md:7: ../elsewhere.md (outside the repository)',
      'README.md:7: LICENSE#L1 (an anchor into LICENSE, which is no markdown file)',
      'README.md:7: docs/%E0.md (malformed percent-encoding)',
      'docs/guide.md:3: #nothing (no heading or anchor #nothing in docs/guide.md)'
    ]
  })
})
