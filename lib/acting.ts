/*
 * What request.sql and request.supabase share: who they may act as, and loading the optional peer
 * dependencies they need.
 */
import { RegistrationError, UnsupportedRoleError } from './errors'

/** A role name safe to repeat in a message. */
const PLAIN_ROLE = /^[a-z_][a-z0-9_]{0,62}$/i

/**
 * The role a user's token acts as: `authenticated` or `anon`, as Supabase's policies expect. Any
 * other (`service_role`, a custom one, none) is refused, never downgraded: a wrong role returns zero
 * rows, which nobody can debug.
 */
export function actingRole (claims: Readonly<Record<string, unknown>>, what: string): 'authenticated' | 'anon' {
  const role = claims.role
  if (role === 'authenticated' || role === 'anon') return role
  const named = typeof role === 'string' && PLAIN_ROLE.test(role) ? `is ${role}` : 'is missing or not a plain name'
  throw new UnsupportedRoleError(`the token's role ${named}: ${what} acts only as authenticated or anon, as Supabase's policies expect`)
}

/**
 * An optional peer dependency, loaded now (at registration, when the option that needs it is set):
 * missing, the registration fails saying what to install.
 */
export function optionalPeer<T> (id: string, neededBy: string): T {
  try {
    return require(id) as T
  } catch (err) {
    throw new RegistrationError(`${neededBy} needs ${id}, an optional peer dependency it cannot load: npm install ${id}`, { cause: err })
  }
}
