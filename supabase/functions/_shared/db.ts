/**
 * The gateway's conversations with its database, one SQL function call each: `tollgate.admit`
 * before the provider (again while it waits in the provider queue), `tollgate.settle` after the
 * response, the account endpoints' reads, and per instance the provider keys it serves with.
 * One statement per step keeps it safe behind a transaction-mode pooler. Admissions and
 * settlements that arrive while others are in flight go together (batching.ts).
 *
 * Calls go through `invoke`, typed by `database.types.ts` (generated from the migrations by
 * `supabase gen types`): renaming a function or an argument in a migration fails the type
 * check here, and the test command fails when the generated file drifts from the migrations.
 */
import postgres from "postgres";
import type { Database, Json } from "./database.types.ts";
import { groupCommit } from "./batching.ts";
import { GatewayError } from "./errors.ts";
import { type AccountUsage, type Admission, admissionSchema, type Settlement, usageSchema } from "./ledger.ts";

type Functions = Database["tollgate"]["Functions"];

export interface Ledger {
  admit(request: { [key: string]: Json | undefined }): Promise<Admission>;
  settle(call: Settlement): Promise<void>;
  usage(userId: string, isAnonymous: boolean): Promise<AccountUsage>;
  models(feature: string): Promise<string[]>;
  /** A cached answer still inside the feature's stale window, for when every provider failed. */
  staleAnswer(cacheKey: string, feature: string): Promise<{ response: Json; cost_usd: number } | null>;
  /** Due budget alerts, leased to this isolate for `leaseSeconds` (see alerts.ts). */
  claimAlerts(max: number, leaseSeconds: number): Promise<{ alert_id: number; payload: Json }[]>;
  /** The outcome of one delivery: null when the webhook took it, else why not. */
  recordAlertDelivery(alertId: number, error: string | null): Promise<void>;
  /**
   * An admission that got no answer may have committed, or may commit yet: the request is
   * refused, so its reservation is released if one was made, and its id never admitted.
   */
  abandon(requestId: string, userId: string): Promise<void>;
  /** A queued request's caller went away: its ticket leaves the provider queue. */
  leaveQueue(requestId: string): Promise<void>;
  /** The provider keys this instance serves with, by label and fingerprint (never the key). */
  registerKeys(keys: { provider: string; label: string; fingerprint: string; position: number }[]): Promise<void>;
  close(): Promise<void>;
}

export function connectLedger(url: string, options: { viaPooler: boolean }): Ledger {
  const open = () =>
    postgres(url, {
      // Each isolate holds its own pool, and every pool counts against max_connections.
      max: 4,
      prepare: !options.viaPooler,
      connect_timeout: callTimeoutMs / 1000,
      // postgres.js backs off up to 20 s between reconnects, holding queries meanwhile: a call
      // should be refused at once while the database is down, and admitted at once after.
      backoff: (attempt: number) => Math.min(0.05 * 2 ** attempt, 0.5),
      idle_timeout: 30,
      max_lifetime: 60 * 10,
      onnotice: () => {},
      connection: { application_name: "tollgate" },
    });
  let sql = open();

  /**
   * A call the database has not answered within the connect timeout is given up, and the
   * pool with it. postgres.js (3.4.9) can leave a query waiting forever on a connection the
   * server closed while it was starting up, as a restarting database does (porsager/postgres
   * #1193), and every call after it would queue behind it. The next calls get a new pool; the
   * old one is closed once the calls it still runs are done (those of other callers, if the
   * database was merely slow), or after another timeout. Callers refuse or retry as after any
   * database error: the request id makes a settlement sent again idempotent, and an admission
   * refused is abandoned (settlement.ts), should it commit after all.
   */
  async function answered<T>(call: (client: postgres.Sql) => Promise<T>): Promise<T> {
    const client = sql;
    const pending = call(client);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        if (sql === client) {
          sql = open();
          client.end({ timeout: callTimeoutMs / 1000 }).catch(() => {});
        }
        reject(new Error(`the database did not answer within ${callTimeoutMs / 1000} s`));
      }, callTimeoutMs);
    });
    // Settled after the race is lost (failed by the old pool's end): nothing waits for it.
    pending.catch(() => {});
    try {
      return await Promise.race([pending, timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * `select * from tollgate.<name>(arg => $1, …)`: named arguments, so their order cannot drift.
   * A function returning a scalar answers one row whose one column is the value.
   */
  async function rows<F extends keyof Functions>(name: F, args: Functions[F]["Args"]) {
    const entries = Object.entries(args);
    const list = entries.map(([arg], i) => `${arg} => $${i + 1}`).join(", ");
    const values = entries.map(([, value]) =>
      typeof value === "object" && value !== null ? sql.json(value as postgres.JSONValue) : value
    );
    // Prepared once per connection (by its text): each later call skips the parse and the
    // description round of the protocol. Not through a transaction-mode pooler, whose server
    // connections change between calls.
    return await answered((client) =>
      client.unsafe(
        `select * from tollgate.${name}(${list}) as result`,
        values as postgres.ParameterOrJSON<never>[],
        { prepare: !options.viaPooler },
      )
    );
  }

  async function invoke<F extends keyof Functions>(
    name: F,
    args: Functions[F]["Args"],
  ): Promise<Functions[F]["Returns"]> {
    const [row] = await rows(name, args);
    return row.result;
  }

  // One batch of each kind at a time: the fewer batches, the larger they are and the less
  // each element costs, and of the pool's 4 connections two stay free for the account
  // endpoints and the alerts. An admission goes at once (its caller waits for it); a
  // settlement waits up to 20 ms for others: nobody waits for it, and a settlement alone
  // costs a whole transaction (with 10 callers, 63% of settlement transactions held one call,
  // and settlement took 40% of the database's time; collected, a quarter). Its reservation
  // counts meanwhile.
  const admitBatched = groupCommit<Json, Json>({
    runBatch: async (requests) => await invoke("admit_many", { requests }) as Json[],
    runOne: (request) => againOnDeadlock(() => invoke("admit", { request })),
    maxInFlight: 1,
    collectMs: 0,
    refusedByDatabase,
  });
  const settleBatched = groupCommit<Json, void>({
    runBatch: async (calls) => {
      await invoke("settle_many", { calls });
      return calls.map(() => undefined);
    },
    runOne: async (call) => {
      await invoke("settle", { call });
    },
    maxInFlight: 1,
    collectMs: 20,
    refusedByDatabase,
  });

  return {
    async admit(request) {
      return admissionSchema.parse(await admitBatched(request as Json).catch(unavailable));
    },
    async settle(call) {
      // A Settlement is plain JSON data; an interface just lacks the index signature `Json` has.
      await settleBatched(call as unknown as Json);
    },
    async usage(userId, isAnonymous) {
      return usageSchema.parse(
        await invoke("usage", { user_id: userId, is_anonymous: isAnonymous }).catch(unavailable),
      );
    },
    async models(feature) {
      return await invoke("models_for", { feature }).catch(unavailable) ?? [];
    },
    async staleAnswer(cacheKey, feature) {
      return await invoke("stale_answer", { cache_key: cacheKey, feature }) as
        | { response: Json; cost_usd: number }
        | null;
    },
    async claimAlerts(max, leaseSeconds) {
      return await rows("claim_alerts", { max_alerts: max, lease_seconds: leaseSeconds }) as unknown as Functions[
        "claim_alerts"
      ]["Returns"];
    },
    async recordAlertDelivery(alertId, error) {
      await invoke("record_alert_delivery", { alert_id: alertId, ...(error === null ? {} : { error_message: error }) });
    },
    async abandon(requestId, userId) {
      await invoke("abandon", { request_id: requestId, user_id: userId });
    },
    async leaveQueue(requestId) {
      await invoke("leave_queue", { request_id: requestId });
    },
    async registerKeys(keys) {
      await invoke("register_provider_keys", { keys });
    },
    close: () => sql.end({ timeout: 5 }),
  };
}

/** How long a database call may go unanswered (and a connection take to open) before it fails. */
const callTimeoutMs = 5_000;

/** How many times an admission is sent in all when Postgres keeps choosing it to end a deadlock. */
export const DEADLOCK_ATTEMPTS = 3;

/**
 * Postgres ends a deadlock by aborting one of the transactions in it (SQLSTATE 40P01), which
 * then has done nothing: the call is sent again. Admission can meet one while a hard-capped
 * budget's leases are taken back (see CONCURRENCY in the admission migration). Settlement
 * needs no such step: settlement.ts retries every failed settlement with backoff.
 */
export async function againOnDeadlock<T>(call: () => Promise<T>): Promise<T> {
  for (let attempt = 1;; attempt++) {
    try {
      return await call();
    } catch (error) {
      const deadlock = error instanceof postgres.PostgresError && error.code === "40P01";
      if (!deadlock || attempt === DEADLOCK_ATTEMPTS) throw error;
      console.warn(`a database call ended a deadlock (attempt ${attempt} of ${DEADLOCK_ATTEMPTS}); sending it again`);
    }
  }
}

/**
 * The server refused the call's statement: an ERROR, which rolled back the call's own
 * transaction, and in a batch one element may be at fault. Not an ERROR about the connection or
 * the system (classes 08, 58, XX), as a pooler sends for a server connection it lost mid-call,
 * nor a session the server ended or turned away (FATAL).
 */
const refusedByDatabase = (error: unknown) =>
  error instanceof postgres.PostgresError && error.severity === "ERROR" && !/^(08|58|XX)/.test(error.code);

/**
 * Whether a call that failed with `error` may have committed all the same: yes when its answer
 * was lost (the connection dropped mid-call, no answer in time), no when the call certainly did
 * nothing. That is when the server refused the statement, or turned the session away as it
 * opened (starting up, too many connections), or when the connection could not be made:
 * postgres.js sends a query only once its connection is ready.
 */
export function mayHaveCommitted(error: unknown): boolean {
  if (refusedByDatabase(error)) return false;
  if (error instanceof postgres.PostgresError) return !sessionRefusedCodes.has(error.code);
  const code = (error as { code?: unknown } | null)?.code;
  return code !== "ECONNREFUSED" && code !== "CONNECT_TIMEOUT";
}

/** cannot_connect_now (the server is starting or shutting down), too_many_connections. */
const sessionRefusedCodes = new Set(["57P03", "53300"]);

/** Admission without a database cannot meter the call: refuse it (fail closed). */
function unavailable(error: unknown): never {
  // The database answered, refusing a value (a NUL in a string, say): the request is at fault.
  if (error instanceof postgres.PostgresError && error.code.startsWith("22")) {
    throw new GatewayError({
      status: 400,
      code: "invalid_request",
      message: `The request has an invalid value: ${error.message}.`,
    });
  }
  console.error("database call failed:", error instanceof Error ? error.message : error);
  throw new GatewayError({
    status: 503,
    code: "database_unavailable",
    message: "The gateway cannot reach its database, so it cannot meter this call; try again shortly.",
    headers: { "retry-after": "5" },
    cause: error,
  });
}
