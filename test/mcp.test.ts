import t from 'tap'
import Fastify from 'fastify'
import { createServer } from 'node:net'
import type { AddressInfo } from 'node:net'
import {
  discoverAuthorizationServerMetadata, discoverOAuthProtectedResourceMetadata, discoverOAuthServerInfo, extractResourceMetadataUrl,
  extractWWWAuthenticateParams, selectResourceURL, type OAuthClientProvider
} from '@modelcontextprotocol/sdk/client/auth.js'
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import supabaseJwks from '../lib/index'
import { appFor, getMe, issuerFor } from './fixtures/helpers'

/*
 * A client nobody here wrote: the discovery functions of @modelcontextprotocol/sdk, against the
 * plugin on a real HTTP server on 127.0.0.1, find the Supabase issuer from a 401 of a route, then
 * its authorization server metadata on the test issuer (served where Supabase Auth serves it).
 */

/** A port free on 127.0.0.1 now: the resource's URL must be known before the server listens. */
async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

t.test('the MCP SDK finds the Supabase issuer from a 401 of a route registered under a prefix', async (t) => {
  const issuer = await issuerFor(t)
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const serverUrl = `${base}/api/mcp`
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(async function api (api) {
    await api.register(supabaseJwks, {
      supabaseUrl: issuer.url,
      hook: 'onRequest',
      require: { scope: 'mcp:tools' },
      resourceMetadata: { resource: serverUrl, scopesSupported: ['mcp:tools', 'mcp:admin'] }
    })
    api.post('/mcp', async (request) => ({ client: request.user.client_id, scope: request.user.scope }))
    api.post('/admin', { config: { supabaseJwks: { scope: 'mcp:admin' } } }, async () => 'admin')
  }, { prefix: '/api' })
  await app.listen({ host: '127.0.0.1', port })

  // an MCP client's first request: no token
  const unauthorized = await fetch(serverUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  t.equal(unauthorized.status, 401)
  const challenge = extractWWWAuthenticateParams(unauthorized)
  t.equal(challenge.resourceMetadataUrl?.href, `${base}/.well-known/oauth-protected-resource/api/mcp`, 'the SDK reads resource_metadata from the challenge')
  t.equal(extractResourceMetadataUrl(unauthorized)?.href, challenge.resourceMetadataUrl?.href, 'its older reader too')

  const resourceMetadata = await discoverOAuthProtectedResourceMetadata(serverUrl, { resourceMetadataUrl: challenge.resourceMetadataUrl })
  t.same(resourceMetadata, {
    resource: serverUrl,
    authorization_servers: [issuer.issuer],
    scopes_supported: ['mcp:tools', 'mcp:admin'],
    bearer_methods_supported: ['header']
  }, 'the document, as the SDK parsed it')
  t.equal(resourceMetadata.authorization_servers?.[0], `${issuer.url}/auth/v1`, 'the Supabase issuer')
  t.same(await discoverOAuthProtectedResourceMetadata(serverUrl), resourceMetadata, 'found without the challenge too (path-aware well-known URL)')
  t.equal((await selectResourceURL(serverUrl, {} as OAuthClientProvider, resourceMetadata))?.href, serverUrl, 'the SDK accepts the resource for this server')

  const authorizationServer = await discoverAuthorizationServerMetadata(resourceMetadata.authorization_servers![0]!)
  t.match(authorizationServer, {
    issuer: issuer.issuer,
    authorization_endpoint: `${issuer.issuer}/oauth/authorize`,
    token_endpoint: `${issuer.issuer}/oauth/token`,
    code_challenge_methods_supported: ['S256']
  }, 'the issuer\'s authorization server metadata (RFC 8414, path-insert form)')
  const info = await discoverOAuthServerInfo(serverUrl, { resourceMetadataUrl: challenge.resourceMetadataUrl })
  t.equal(info.authorizationServerUrl, issuer.issuer, 'the SDK\'s one-call discovery lands on the same issuer')

  // a token as Supabase Auth's OAuth 2.1 server issues it to the client: client_id and scope
  const token = issuer.sign({ client_id: '9a1c3f6e-mcp-client', scope: 'openid email mcp:tools' })
  const call = (path: string) => fetch(`${base}/api${path}`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
  const allowed = await call('/mcp')
  t.equal(allowed.status, 200)
  t.same(await allowed.json(), { client: '9a1c3f6e-mcp-client', scope: 'openid email mcp:tools' })
  const refused = await call('/admin')
  t.equal(refused.status, 403)
  t.same(extractWWWAuthenticateParams(refused), {
    error: 'insufficient_scope',
    scope: 'mcp:admin',
    resourceMetadataUrl: challenge.resourceMetadataUrl
  }, 'what the SDK reads of a 403 to step up: the scope to ask for, and where the metadata is')
})

t.test('the test issuer\'s discovery document is what the plugin\'s own discovery option reads', async (t) => {
  const issuer = await issuerFor(t)
  const app = await appFor(t, { discovery: true, issuer: issuer.issuer, audience: 'authenticated' })
  t.equal((await getMe(app, issuer.sign())).statusCode, 200, 'jwks_uri found at <issuer>/.well-known/openid-configuration')
  t.same(issuer.authorizationServerMetadata().id_token_signing_alg_values_supported, ['RS256'])
  const response = await fetch(`${issuer.url}/auth/v1/.well-known/openid-configuration`)
  t.same(await response.json(), issuer.authorizationServerMetadata())
})

t.test('an MCP server behind the plugin (the guide\'s example): the SDK\'s client calls a tool with a scoped token, and is refused without', async (t) => {
  const issuer = await issuerFor(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(supabaseJwks, {
    supabaseUrl: issuer.url,
    hook: 'onRequest',
    require: { scope: 'mcp:tools' },
    resourceMetadata: { resource: 'http://127.0.0.1/mcp', scopesSupported: ['mcp:tools'] }
  })
  app.post('/mcp', async (request, reply) => {
    const server = new McpServer({ name: 'notes', version: '1.0.0' })
    server.registerTool('whoami', { description: 'Who the token was issued for' }, async () => ({
      content: [{ type: 'text', text: `${request.user.sub} through ${request.user.client_id}` }]
    }))
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined })
    reply.hijack()
    // one server and transport per request (stateless): closed with the response
    reply.raw.on('close', () => { transport.close().catch(() => {}); server.close().catch(() => {}) })
    await server.connect(transport)
    await transport.handleRequest(request.raw, reply.raw, request.body)
  })
  const url = new URL(`${await app.listen({ host: '127.0.0.1', port: 0 })}/mcp`)
  const connect = async (headers: Record<string, string>) => {
    const client = new Client({ name: 'test-client', version: '1.0.0' })
    await client.connect(new StreamableHTTPClientTransport(url, { requestInit: { headers } }))
    t.teardown(() => client.close())
    return client
  }
  const sub = '6c30a666-20e4-4cfb-9b52-2e0d6874432e'
  const client = await connect({ authorization: `Bearer ${issuer.sign({ sub, client_id: 'claude', scope: 'openid mcp:tools' })}` })
  t.same(await client.callTool({ name: 'whoami' }), { content: [{ type: 'text', text: `${sub} through claude` }] })
  await t.rejects(connect({}), /401/, 'no token: the transport gets the 401')
  await t.rejects(connect({ authorization: `Bearer ${issuer.sign({ scope: 'openid' })}` }), /403/, 'a token without the scope: 403')
})
