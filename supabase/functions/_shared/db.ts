/**
 * The gateway's only two database conversations, one SQL function call each:
 * `tollgate.admit` before the provider and `tollgate.settle` after the response.
 * One statement per step keeps it safe behind a transaction-mode pooler.
 */
import postgres from "postgres";
import { GatewayError } from "./errors.ts";
import { type AccountUsage, type Admission, admissionSchema, type Settlement, usageSchema } from "./ledger.ts";

export interface Ledger {
  admit(request: Record<string, unknown>): Promise<Admission>;
  settle(call: Settlement): Promise<void>;
  usage(userId: string, isAnonymous: boolean): Promise<AccountUsage>;
  models(feature: string): Promise<string[]>;
  close(): Promise<void>;
}

export function connectLedger(url: string, options: { viaPooler: boolean }): Ledger {
  const sql = postgres(url, {
    // Each isolate holds its own pool, and every pool counts against max_connections.
    max: 4,
    prepare: !options.viaPooler,
    connect_timeout: 5,
    idle_timeout: 30,
    max_lifetime: 60 * 10,
    onnotice: () => {},
    connection: { application_name: "tollgate" },
  });
  return {
    async admit(request) {
      const [row] = await sql`select tollgate.admit(${sql.json(request as postgres.JSONValue)}) as decision`
        .catch(databaseUnavailable);
      return admissionSchema.parse(row.decision);
    },
    async settle(call) {
      await sql`select tollgate.settle(${sql.json(call as unknown as postgres.JSONValue)})`;
    },
    async usage(userId, isAnonymous) {
      const [row] = await sql`select tollgate.usage(${userId}, ${isAnonymous}) as usage`.catch(databaseUnavailable);
      return usageSchema.parse(row.usage);
    },
    async models(feature) {
      const [row] = await sql`select tollgate.models_for(${feature}) as models`.catch(databaseUnavailable);
      return row.models ?? [];
    },
    close: () => sql.end({ timeout: 5 }),
  };
}

function databaseUnavailable(error: unknown): never {
  // A Postgres error raised by admit itself (bad input) is ours to report as such.
  if (error instanceof postgres.PostgresError && error.code.startsWith("22")) {
    throw new GatewayError({ status: 400, code: "invalid_request", message: error.message });
  }
  console.error("admission failed: database unavailable:", error instanceof Error ? error.message : error);
  throw new GatewayError({
    status: 503,
    code: "database_unavailable",
    message: "The gateway cannot reach its database, so it cannot meter this call; try again shortly.",
    headers: { "retry-after": "5" },
  });
}
