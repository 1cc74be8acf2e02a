/**
 * Database fixtures for the Deno tests: the stack the test runner started (TOLLGATE_STACK), connection pools, and test
 * data — users, tiers, features — each under a fresh name, so tests never meet each other's rows and leave the seeded
 * configuration alone. Also the shape of the SQL API's JSON (tollgate.admit / tollgate.settle), as tests read it; the
 * migrations' comments are the contract.
 */
import postgres from "postgres";
import { againOnDeadlock } from "../../supabase/functions/_shared/db.ts";
import type { StackInfo } from "./stack.ts";

export type Sql = ReturnType<typeof postgres>;
/** A pool, a reserved connection or a transaction: anything that runs a query. */
export type Queryable = Sql | postgres.TransactionSql | postgres.ReservedSql;

const stackJson = Deno.env.get("TOLLGATE_STACK");
if (!stackJson) throw new Error("TOLLGATE_STACK is not set: run the tests with `npm test`, which starts the stack.");
/** What the test runner started: database URLs, the function's URL and environment. */
export const stack: StackInfo = JSON.parse(stackJson);

/**
 * A pool on the `postgres` role, as the ai function connects (SUPABASE_DB_URL). Each connection of the pool is a real
 * server session, so `max` parallel queries really run in parallel. End it with `await sql.end()`.
 */
export function connect(max = 10): Sql {
  return postgres(stack.dbUrl, { max, onnotice: () => {}, connection: { application_name: "tollgate-tests" } });
}

/** A pool on the cluster's superuser, for what `postgres` may not do locally (insert into auth.users). */
export function connectAdmin(max = 2): Sql {
  return postgres(stack.adminDbUrl, { max, onnotice: () => {} });
}

/** Tests that hold pools across awaits: Deno's per-test op and resource sanitizers do not apply to them. */
export function dbTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}

/** A lower-case name no other test uses: `prefix-` and 10 random hex digits. */
export function uniqueName(prefix: string): string {
  const hex = Array.from(crypto.getRandomValues(new Uint8Array(5)), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${prefix}-${hex}`;
}

// -------------------------------------------------------------------------------------------------------------------
// Test data

export interface UserOptions {
  /** Put the users on this tier (a row in tollgate.user_plans); default: none, so `free` (or `anonymous`). */
  tier?: string;
  /** Anonymous sign-ins (auth.users.is_anonymous). */
  anonymous?: boolean;
}

/** `count` users in auth.users (one statement), returned in order. */
export async function createUsers(count: number, options: UserOptions = {}): Promise<string[]> {
  const ids = Array.from({ length: count }, () => crypto.randomUUID());
  const admin = connectAdmin(1);
  try {
    await admin`
      insert into auth.users (id, aud, role, email, is_anonymous)
      select id, 'authenticated', 'authenticated', id::text || '@example.test', ${options.anonymous ?? false}
      from unnest(${ids}::uuid[]) as id`;
    if (options.tier) {
      await admin`
        insert into tollgate.user_plans (user_id, tier)
        select id, ${options.tier} from unnest(${ids}::uuid[]) as id`;
    }
  } finally {
    await admin.end();
  }
  return ids;
}

export async function createUser(options: UserOptions = {}): Promise<string> {
  return (await createUsers(1, options))[0];
}

export interface TierOptions {
  /** Sliding windows; default: one of 100,000 requests per minute (out of reach). */
  windows?: { name: string; seconds: number; maxRequests: number }[];
  dailyTokenQuota?: number | null;
  monthlyTokenQuota?: number | null;
  monthlyCostCapUsd?: number | null;
  maxOutputTokens?: number;
}

/** A tier of its own for a test; returns its name. */
export async function createTier(sql: Sql, options: TierOptions = {}): Promise<string> {
  const name = uniqueName("t");
  const windows = options.windows ?? [{ name: "minute", seconds: 60, maxRequests: 100_000 }];
  await sql.begin(async (tx) => {
    await tx`
      insert into tollgate.tiers (name, daily_token_quota, monthly_token_quota, monthly_cost_cap_usd, max_output_tokens)
      values (${name}, ${options.dailyTokenQuota ?? null}, ${options.monthlyTokenQuota ?? null},
        ${options.monthlyCostCapUsd ?? null}, ${options.maxOutputTokens ?? 4096})`;
    for (const window of windows) {
      await tx`
        insert into tollgate.tier_windows (tier, name, window_seconds, max_requests)
        values (${name}, ${window.name}, ${window.seconds}, ${window.maxRequests})`;
    }
  });
  return name;
}

export interface FeatureOptions {
  priority?: "critical" | "normal" | "batch" | "background";
  allowedModels?: string[] | null;
  maxTokens?: number;
  cacheTtlSeconds?: number;
  /** A monthly budget of the feature's own, USD. */
  budgetUsd?: number;
  hardCap?: boolean;
}

/** A feature of its own for a test (and its budget, if asked); returns its name. */
export async function createFeature(sql: Sql, options: FeatureOptions = {}): Promise<string> {
  const name = uniqueName("f");
  await sql`
    insert into tollgate.features (name, priority, allowed_models, max_tokens, cache_ttl_seconds)
    values (${name}, ${options.priority ?? "normal"}, ${options.allowedModels ?? null}, ${options.maxTokens ?? 1024},
      ${options.cacheTtlSeconds ?? 0})`;
  if (options.budgetUsd !== undefined) {
    await sql`
      insert into tollgate.budgets (scope, feature, monthly_limit_usd, hard_cap)
      values ('feature', ${name}, ${options.budgetUsd}, ${options.hardCap ?? true})`;
  }
  return name;
}

// -------------------------------------------------------------------------------------------------------------------
// The SQL API (see the headers of the admission and settlement migrations)

export interface AdmitRequest {
  request_id: string;
  user_id: string;
  model: string;
  is_anonymous?: boolean;
  feature?: string;
  estimated_input_tokens?: number;
  max_output_tokens?: number | null;
  estimated_cost_usd?: number | string;
  dry_run?: boolean;
  cache_key?: string | null;
  cache_ttl_seconds?: number | null;
}

export interface Admission {
  allowed: boolean;
  request_id: string;
  dry_run: boolean;
  duplicate: boolean;
  layer: string | null;
  code: string | null;
  message: string | null;
  retry_after_seconds: number | null;
  tier: string | null;
  windows: { name: string; window_seconds: number; limit: number; remaining: number; reset_at: string }[] | null;
  tokens:
    | Record<"daily" | "monthly", {
      limit: number | null;
      used: number;
      reserved: number;
      remaining: number | null;
      reset_at: string;
    }>
    | null;
  spend: {
    month_to_date_usd: number;
    reserved_usd: number;
    cap_usd: number | null;
    remaining_usd: number | null;
    reset_at: string;
  } | null;
  warnings: { kind: string; percent: number | null; message: string }[];
  feature: { name: string; priority: string; max_tokens: number; cache_ttl_seconds: number } | null;
  model: string | null;
  restricted: { model: string; max_tokens: number; reason: string } | null;
  route: { provider: string; model: string; state: "closed" | "open" | "half_open"; probe: boolean }[] | null;
  prices: Record<string, unknown>[] | null;
  cached: { response: unknown; cost_usd: number; cache_key: string; created_at: string; expires_at: string } | null;
  reserved: { estimated_tokens: number; estimated_cost_usd: number } | null;
}

export interface SettleCall {
  request_id: string;
  user_id: string;
  provider: string;
  model: string;
  status: "success" | "error" | "timeout" | "client_closed";
  input_tokens: number;
  output_tokens: number;
  latency_ms: number;
  cost_usd: number | string;
  feature?: string;
  cached_input_tokens?: number;
  cache_write_tokens?: number;
  reasoning_tokens?: number;
  priced?: boolean;
  cached?: boolean;
  saved_cost_usd?: number | string;
  attempts?: number;
  fallback_from?: string | null;
  error_code?: string | null;
  endpoint?: string | null;
  streamed?: boolean;
  attempts_detail?: { provider: string; model: string; ok: boolean; status: number | null }[];
  cache_entry?: { key: string; response: unknown; ttl_seconds: number };
}

export interface Settlement {
  settled: boolean;
  duplicate: boolean;
  late: boolean;
  request_id: string;
  status: string | null;
  cost_usd: number | null;
}

/** One tollgate.admit call, sent again when it ends a deadlock, as the function sends it. */
export async function admit(sql: Queryable, request: AdmitRequest): Promise<Admission> {
  const [row] = await againOnDeadlock(() => sql`select tollgate.admit(${sql.json(request as never)}) as a`);
  return row.a as Admission;
}

/** One tollgate.settle call. */
export async function settle(sql: Queryable, call: SettleCall): Promise<Settlement> {
  const [row] = await sql`select tollgate.settle(${sql.json(call as never)}) as s`;
  return row.s as Settlement;
}

/** A request with sensible defaults (a fresh request id, gpt-4o-mini, 100 + 100 tokens, 0.001 USD). */
export function request(userId: string, extra: Partial<AdmitRequest> = {}): AdmitRequest {
  return {
    request_id: crypto.randomUUID(),
    user_id: userId,
    model: "gpt-4o-mini",
    estimated_input_tokens: 100,
    max_output_tokens: 100,
    estimated_cost_usd: 0.001,
    ...extra,
  };
}

/** The settlement of an admitted request with sensible defaults (120 in, 80 out, 0.000066 USD). */
export function call(admission: Admission, userId: string, extra: Partial<SettleCall> = {}): SettleCall {
  const step = admission.route?.[0];
  return {
    request_id: admission.request_id,
    user_id: userId,
    provider: step?.provider ?? "openai",
    model: step?.model ?? admission.model ?? "gpt-4o-mini",
    status: "success",
    input_tokens: 120,
    output_tokens: 80,
    latency_ms: 640,
    cost_usd: 0.000066,
    ...extra,
  };
}
