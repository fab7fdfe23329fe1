/*
 * Several statements sent to PostgreSQL at once, one round trip: each in the extended protocol (Parse,
 * Bind, Execute), one Sync at the end. PostgreSQL runs them in order and, after an error, skips the
 * rest up to the Sync. node-postgres sends one statement per round trip; this is a query object of its
 * own kind (a subclass of the client's own `Query`, which the client accepts as a "submittable"), so
 * the client's queue, its row parsing and its error handling stay pg's.
 */
import type { SqlPoolClient } from './acting-options'
import { ActingUsageError } from './errors'

/** One statement of a pipeline: its text, its parameters (already mapped), and whether its rows are wanted. */
export interface PipelineStep {
  readonly text: string
  readonly values?: readonly unknown[]
  readonly rows?: boolean
}

/** What a step answered, as pg's Result holds it. */
export interface StepResult {
  rows: unknown[]
  rowCount: number | null
  command: string
}

/** A failed pipeline's error: `step`, the index of the statement that failed (every one before it ran). */
export type PipelineError = Error & { step: number }

interface Connection {
  parse (message: { text: string, name: string, types: unknown[] }): void
  bind (message: { portal: string, statement: string, values: readonly unknown[], binary: boolean }): void
  describe (message: { type: 'P', name: string }): void
  execute (message: { portal: string, rows: number }): void
  sync (): void
}

interface QueryBase {
  prepare (connection: Connection): void
  handleCommandComplete (message: unknown, connection: Connection): void
  handleEmptyQuery (connection: Connection): void
}
type QueryClass = new (config: { text: string, queryMode: 'extended', callback: (err: Error | null, results?: StepResult[] | StepResult) => void }) => QueryBase

/** The pipeline query class of each pg `Query` class (one per copy of pg in the app): made once. */
const made = new WeakMap<QueryClass, ReturnType<typeof pipelineClass>>()

function pipelineClass (Query: QueryClass) {
  return class Pipeline extends Query {
    readonly steps: readonly PipelineStep[]
    /** Statements that completed: the index of the one an error came from. */
    completed = 0

    constructor (steps: readonly PipelineStep[], callback: (err: Error | null, results?: StepResult[] | StepResult) => void) {
      super({ text: steps.map((step) => step.text).join(';\n'), queryMode: 'extended', callback })
      this.steps = steps
    }

    override prepare (connection: Connection): void {
      for (const step of this.steps) {
        connection.parse({ text: step.text, name: '', types: [] })
        connection.bind({ portal: '', statement: '', values: step.values ?? [], binary: false })
        if (step.rows === true) connection.describe({ type: 'P', name: '' })
        connection.execute({ portal: '', rows: 0 })
      }
      connection.sync()
    }

    override handleCommandComplete (message: unknown, connection: Connection): void {
      this.completed++
      super.handleCommandComplete(message, connection)
    }

    override handleEmptyQuery (connection: Connection): void {
      this.completed++
      super.handleEmptyQuery(connection)
    }
  }
}

/**
 * Runs `steps` in one round trip on `client` (a pg client). Resolves with each step's result, in order
 * (a step that was empty text has none: the array is shorter); rejects with the first error, its
 * `step` the index of the statement that failed.
 */
export function pipeline (client: SqlPoolClient, steps: readonly PipelineStep[]): Promise<StepResult[]> {
  const Query = (client.constructor as { Query?: QueryClass }).Query
  // pg-native's client has a Query class too, which never prepares: it would send the joined text as one statement
  if (typeof Query !== 'function' || typeof Query.prototype.prepare !== 'function') {
    return Promise.reject(new ActingUsageError('request.sql and sessions need the pool of node-postgres (pg) with its JavaScript client: ' +
      'this pool\'s client has no pg Query class that prepares (pg-native, or another driver)'))
  }
  let Pipeline = made.get(Query)
  if (Pipeline === undefined) {
    Pipeline = pipelineClass(Query)
    made.set(Query, Pipeline)
  }
  return new Promise((resolve, reject) => {
    const query: InstanceType<typeof Pipeline> = new Pipeline(steps, (err, results) => {
      if (err !== null) reject(Object.assign(err, { step: query.completed }))
      // pg gives a list when more than one statement completed: an empty one (a comment alone) does not
      else resolve(Array.isArray(results) ? results : [results!])
    })
    ;(client as unknown as { query (submittable: unknown): unknown }).query(query)
  })
}
