import { Client, Pool } from 'pg'
import { expectAssignable, expectError, expectType } from 'tsd'
import { createTestIssuer, TestAuthError, type SignOutScope, type TestDatabase, type TestIssuer, type TestSession } from '../dist/testing'

// option database: a pg Pool or Client as they are, or anything with their query(text, values)
expectAssignable<TestDatabase>(new Pool())
expectAssignable<TestDatabase>(new Client())
expectAssignable<TestDatabase>({ query: async (_text: string, _values?: unknown[]) => ({ rows: [] }) })
expectError(createTestIssuer({ database: {} }))
expectError(createTestIssuer({ database: 'postgres://x' }))

async function sessions (issuer: TestIssuer): Promise<void> {
  const ada = issuer.addUser({ email: 'ada@example.com', password: 'pw' })
  expectType<TestSession>(issuer.session(ada))
  expectType<Promise<TestSession>>(issuer.signIn(ada, { aal: 'aal2' }))
  const { access_token: token } = await issuer.signIn(ada)
  expectType<Promise<void>>(issuer.signOut(token))
  expectType<Promise<void>>(issuer.signOut(token, 'others'))
  expectError(issuer.signOut(token, 'everywhere'))
  expectAssignable<SignOutScope>('local')
  expectType<Promise<void>>(issuer.banUser(ada.id, 3600))
  expectError(issuer.banUser(ada.id, '1h'))
  expectType<Promise<void>>(issuer.deleteUser(ada.id))
  expectType<string[]>(issuer.sessions())
  expectType<string[]>(issuer.sessions(ada.id))
  expectType<number>(issuer.logoutRequests)
  const error = new TestAuthError(403, 'session_not_found', 'Session from session_id claim in JWT does not exist')
  expectType<number>(error.status)
  expectType<string>(error.code)
  expectAssignable<Error>(error)
}
createTestIssuer({ database: new Pool() }).then(sessions).catch(() => {})
