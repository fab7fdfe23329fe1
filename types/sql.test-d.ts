import Fastify from 'fastify'
import { Pool } from 'pg'
import { expectAssignable, expectError, expectType } from 'tsd'
import supabaseJwks, { type PostgresOptions, type Sql, type SqlIdentifier, type SqlRows, type SqlStatements } from '..'

// option postgres: a pg Pool as it is, or a connection string, with bounds in seconds
const pool = new Pool({ connectionString: 'postgres://authenticator@127.0.0.1/postgres' })
const app = Fastify()
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', postgres: { pool } })
app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', postgres: { connectionString: 'postgres://x', max: 5, connectionTimeout: 2, maxWaiting: 50, statementTimeout: 5, idleInTransactionTimeout: 10 } })
expectAssignable<PostgresOptions>({ pool })
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', postgres: { pool: 'postgres://x' } }))
expectError(app.register(supabaseJwks, { supabaseUrl: 'https://abc.supabase.co', postgres: { connectionString: 'x', statementTimeout: '5s' } }))

interface Note { id: number, body: string }

app.get('/notes/:id', { preHandler: app.authenticate }, async (request) => {
  expectType<Sql>(request.sql)
  const id = (request.params as { id: string }).id
  // rows typed by the tag's type argument, with the count of rows touched
  const notes = await request.sql<Note>`select id, body from notes where id = ${id}`
  expectType<SqlRows<Note>>(notes)
  expectType<string | undefined>(notes[0]?.body)
  expectType<number | null>(notes.rowCount)
  const raw = await request.sql.raw<Note>('select id, body from notes where id = $1', [id])
  expectType<Note[]>([...raw])
  expectType<SqlIdentifier>(request.sql.ident('body', ['body', 'id']))
  const count = await request.sql.transaction(async (sql) => {
    expectType<SqlStatements>(sql)
    await sql`insert into notes (body) values (${'x'})`
    const [row] = await sql<{ n: number }>`select count(*)::int as n from notes`
    return row!.n
  })
  expectType<number>(count)
  // a tag, and raw() takes its parameters as a list
  expectError(request.sql.raw('select $1', 'x'))
  expectError(request.sql.ident('body'))
  return notes
})
