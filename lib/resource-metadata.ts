/*
 * The OAuth 2.0 Protected Resource Metadata (RFC 9728) of the `resourceMetadata` option: the JSON
 * document that tells an OAuth client (an MCP client) which authorization servers issue tokens for
 * this API, served at the server's root whatever prefix the plugin is registered under, public.
 */
import type { FastifyInstance } from 'fastify'
import { RegistrationError } from './errors'
import { RESOURCE_METADATA_PATH, type ResourceMetadataConfig } from './options'

/** The document (RFC 9728 §2): made once, sent as it is. */
export function resourceMetadataDocument (metadata: ResourceMetadataConfig): string {
  return JSON.stringify({
    resource: metadata.resource,
    authorization_servers: metadata.authorizationServers,
    ...(metadata.scopesSupported === undefined ? {} : { scopes_supported: metadata.scopesSupported }),
    // the one method every mode of the plugin reads; a cookie is no bearer method of RFC 6750
    bearer_methods_supported: ['header']
  })
}

/**
 * Where the document is served: `/.well-known/oauth-protected-resource`, and when the resource has
 * a path, that path after it too (RFC 9728 §3.1, the URL the challenges name), which is where an
 * MCP client looks first.
 */
export function resourceMetadataPaths (metadata: ResourceMetadataConfig): string[] {
  return metadata.path === '' ? [RESOURCE_METADATA_PATH] : [`${RESOURCE_METADATA_PATH}${metadata.path}`, RESOURCE_METADATA_PATH]
}

/**
 * The document's routes, as a plugin that the plugin registers in its own context (an encapsulated
 * child of it, so that its `onRoute` hook sees these routes alone).
 *
 * At the root: Fastify prefixes every route with its context's prefix and has no API to declare a
 * route in another context, but a route's `url` may be changed by an `onRoute` hook (Fastify's own
 * suite tests it: "onRoute hook should able to change the route url"). This context's hook gives
 * its routes back the path they were declared with. What Fastify worked out before the hooks ran
 * keeps the prefix: `request.routeOptions.url`, and what `onRoute` hooks of enclosing contexts (run
 * first) saw. Hooks of the enclosing contexts still run for these requests (the plugin's own `hook`
 * skips them: `config.supabaseJwks` is `false`).
 *
 * A route already declared at one of these paths (by another registration of the plugin with
 * `resourceMetadata`, or by the app) fails the registration with a coded error, not Fastify's.
 */
export function resourceMetadataRoutes (metadata: ResourceMetadataConfig) {
  const body = resourceMetadataDocument(metadata)
  const paths = resourceMetadataPaths(metadata)
  return async function supabaseJwksResourceMetadata (instance: FastifyInstance): Promise<void> {
    instance.addHook('onRoute', function atTheRoot (route) {
      // routePath is the url as declared, without the prefix (and without its '/' after a prefix ending in one)
      route.url = route.path = route.routePath.startsWith('/') ? route.routePath : `/${route.routePath}`
    })
    for (const path of paths) {
      if (instance.hasRoute({ method: 'GET', url: path })) {
        throw new RegistrationError(`resourceMetadata serves GET ${path}, which is already a route of this server (another registration ` +
          'of the plugin with resourceMetadata, or the app\'s own): one registration per server serves the document')
      }
      instance.get(path, { config: { supabaseJwks: false } }, function protectedResourceMetadata (_request, reply) {
        // public, and read by browser-based clients too: any origin may read it (it carries no credential)
        reply.header('access-control-allow-origin', '*').type('application/json').send(body)
      })
    }
  }
}
