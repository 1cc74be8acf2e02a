/**
 * The database benchmark: what Tollgate's SQL API sustains and how fast the cost views answer.
 *
 *   1. Admission + settlement throughput: closed-loop workers, each calling tollgate.admit then tollgate.settle for a
 *      random user of 20,000 (on a bench-only tier whose limits are out of reach, so every layer runs and none
 *      refuses), with 1, 2 (this machine's cores), 10 and 50 connections. Measured four ways: from this Deno process
 *      through postgres.js, one call per transaction; through the ai function's own ledger (its pool and group
 *      commit: the calls that arrive while others are in flight go as one tollgate.admit_many / settle_many); with
 *      pgbench, a C client, which shows the server's own capacity; and with pgbench in full batches of 16. Each cell
 *      in four variants of the `openai` provider's keys, one after the other (so that whatever drifts touches them
 *      alike):
 *        plain     no registered key: admission's route read finds none;
 *        key       a registered key without ceilings: the key is read and named, settlement adds its spend;
 *        inflight  the same key with a max_in_flight far out of reach, and
 *        guarded   with every ceiling far out of reach (max_in_flight, requests and tokens per minute): every
 *                  admission takes the upstream step (tollgate.upstream_admission: headroom worked out, a grant)
 *                  and never waits — the queue's cost when there is no contention.
 *   2. Where a pair's time goes: pairs on one connection with plpgsql_check's profiler on (the time of each statement
 *      in tollgate.admit and tollgate.settle), and the relation locks one admission and one settlement hold.
 *   3. A baseline from pgbench: what a pair cannot do without, in two functions with no decisions (the bare pair).
 *   4. The cost views at 1M ai_api_calls rows (and 10M with `--sizes 1000000,10000000`: generating them takes well
 *      over five minutes on 2 cores), generated with set-based SQL (a year of calls over 10,000 users, 8 models, 5 features,
 *      every status) together with the rollups they imply, exactly as settlement would have left them: the median time
 *      of daily_cost_summary, budget_status, cost_by_feature and cost_by_user (one month).
 *
 * It boots its own private cluster (tests/stack/postgres.ts, migrated with the Supabase CLI) and removes it at the end.
 *
 *   deno run -A bench/db.ts [--seconds 10] [--connections 1,2,10,50] [--variants plain,key,inflight,guarded] [--rounds 1]
 *                           [--sizes 1000000[,10000000]] [--out results.md]
 *
 * Progress goes to stderr; the Markdown report to stdout, or to --out (as bench/run.ts asks of a section).
 */
import { parseArgs } from "node:util";
import postgres from "postgres";
import { startCluster } from "../tests/stack/postgres.ts";
import { applyMigrations } from "../tests/stack/migrate.ts";
import { progress } from "../tests/stack/util.ts";
import { cpuMs, machineBusyMs, withChildren } from "./proc.ts";
import { connectLedger } from "../supabase/functions/_shared/db.ts";
import type { Settlement } from "../supabase/functions/_shared/ledger.ts";

const root = new URL("../", import.meta.url).pathname;
const pgBin = "/usr/lib/postgresql/15/bin";
// The pinned Supabase CLI and PostgreSQL's tools, as scripts/ensure.sh puts them on PATH.
Deno.env.set("PATH", `${root}node_modules/.bin:${pgBin}:${Deno.env.get("PATH") ?? ""}`);

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "10" },
    sizes: { type: "string", default: "1000000" },
    connections: { type: "string", default: "1,2,10,50" },
    variants: { type: "string", default: "plain,key,inflight,guarded" },
    rounds: { type: "string", default: "1" },
    out: { type: "string" },
  },
});
const seconds = Number(args.seconds);
const sizes = args.sizes!.split(",").filter(Boolean).map(Number);
const connectionCounts = args.connections!.split(",").filter(Boolean).map(Number);
/** Each cell is measured this many times per variant, the variants' order reversed every other round. */
const rounds = Math.max(1, Number(args.rounds));
const users = 20_000;

type Sql = ReturnType<typeof postgres>;

// ---------------------------------------------------------------------------------------------------------------------
// Throughput

/**
 * The `openai` provider's keys during a cell. What admission and settlement do for each (see the upstream migration):
 *   plain    no key registered: the route read finds none, settlement records no key spend.
 *   key      one key (`primary`), no ceiling: the route read reads it (tollgate.key_usable), admission names it in
 *            the reservation, settlement adds the call to its daily spend (provider_key_usage_daily).
 *   inflight the same key with a max_in_flight no run reaches: the provider is guarded, so every admission also calls
 *            tollgate.upstream_admission (works out the key's headroom, counting its calls in flight, and grants) and
 *            its reservation holds an in-flight slot; none waits.
 *   guarded  the same with every ceiling out of reach, the per-minute ones too: each grant is also counted in the key's
 *            minute counters.
 */
type Variant = "plain" | "key" | "inflight" | "guarded";
const variantLabels: Record<Variant, string> = {
  plain: "no key (plain)",
  key: "key, no ceiling",
  inflight: "key + max_in_flight (queue on)",
  guarded: "key + all ceilings (queue on)",
};
/** Column headings of the ratio table. */
const variantShort: Record<Variant, string> = {
  plain: "plain",
  key: "key",
  inflight: "max_in_flight",
  guarded: "all ceilings",
};
const keyLabel = "primary";
const ceilings = { max_in_flight: 100_000, requests_per_minute: 100_000_000, tokens_per_minute: 100_000_000_000 };
const noCeilings = { max_in_flight: null, requests_per_minute: null, tokens_per_minute: null };
const variantCeilings: Record<Exclude<Variant, "plain">, Record<keyof typeof ceilings, number | null>> = {
  key: noCeilings,
  inflight: { ...noCeilings, max_in_flight: ceilings.max_in_flight },
  guarded: ceilings,
};
/** The variants whose admissions take the upstream step (a ceiling makes the provider guarded). */
const queueOn = (variant: Variant) => variant === "inflight" || variant === "guarded";
const variants = args.variants!.split(",").filter(Boolean) as Variant[];
for (const v of variants) {
  if (!(v in variantLabels)) throw new Error(`--variants: unknown variant ${v} (plain, key, inflight, guarded)`);
}

interface Throughput {
  client: string;
  variant: Variant;
  connections: number;
  pairs: number;
  perSecond: number;
  admit?: Percentiles;
  settle?: Percentiles;
  pair: Percentiles;
  errors: number;
  /** What the cells' reservations show (warm-ups included): did every admission take the variant's path? */
  check: Check;
  /** CPU that processes outside the benchmark used during the kept measurements, in cores. */
  otherCores: number;
}

interface Percentiles {
  p50: number;
  p95: number;
  p99: number;
}

function percentiles(samples: number[]): Percentiles {
  const sorted = Float64Array.from(samples).sort();
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99) };
}

/** Bench users, a tier out of reach and a budget out of reach: admission runs every layer and refuses nothing. */
async function prepareThroughput(admin: Sql, sql: Sql): Promise<string[]> {
  progress(`creating ${users} users on a bench tier`);
  await admin`
    insert into auth.users (id, aud, role, email)
    select gen_random_uuid(), 'authenticated', 'authenticated', 'bench-' || g || '@example.test'
    from generate_series(1, ${users}) as g`;
  await sql`insert into tollgate.tiers (name, max_output_tokens) values ('bench', 4096)`;
  await sql`
    insert into tollgate.tier_windows (tier, name, window_seconds, max_requests)
    values ('bench', 'minute', 60, 1000000), ('bench', 'hour', 3600, 10000000)`;
  await admin`insert into tollgate.user_plans (user_id, tier) select id, 'bench' from auth.users`;
  await sql`update tollgate.budgets set monthly_limit_usd = 10000000 where scope = 'global'`;
  // The budget guard's jobs run here as on a real stack, and the pairs' burst of spend would trip its
  // spend breaker (3× a baseline it never had time to build), refusing every later pair.
  await admin`update tollgate.guard_settings set anomaly_min_usd_per_hour = 1000000, throttle_percent = null`;
  // A lookup table for pgbench (which cannot pick a random uuid from a list by itself).
  await admin`create schema bench`;
  await admin`create table bench.users as select row_number() over (order by id) as n, id from auth.users`;
  await admin`alter table bench.users add primary key (n)`;
  await admin`grant usage on schema bench to postgres`;
  await admin`grant select on bench.users to postgres`;
  await admin`analyze`;
  return (await sql`select id from bench.users order by n`).map((row) => row.id as string);
}

/** The log and rollup tables a pair writes (admit, settle). */
const pairTables = [
  "public.api_usage",
  "public.ai_api_calls",
  "public.user_usage_daily",
  "tollgate.usage_daily",
  "tollgate.budget_periods",
  "tollgate.budget_settlements",
  "tollgate.provider_key_usage_daily",
];

/**
 * Every row starts from the same state: empty logs and rollups, and autovacuum off during the rows. Otherwise each row
 * would run against what the rows before it left — longer per-user windows to count, larger indexes, an autovacuum in
 * the middle of one row and not the next — and the order of the rows would decide a comparison.
 */
async function resetPairTables(admin: Sql): Promise<void> {
  await admin.unsafe(`truncate ${pairTables.join(", ")}`);
  await admin`vacuum tollgate.provider_keys`;
}

/**
 * A live database's autovacuum analyzes a table as it grows, and each new set of statistics has every session plan its
 * statements again; the rows run with autovacuum off. Once a warm-up has filled the emptied tables, this stands in for
 * it, so that the measured calls run on plans made for tables of that size rather than for empty ones.
 */
async function analyzePairTables(sql: Sql): Promise<void> {
  await sql.unsafe(`analyze ${pairTables.join(", ")}`);
}

/** Puts the `openai` provider's keys in the variant's state, afresh (no minute counters carried over). */
async function setVariant(sql: Sql, variant: Variant): Promise<void> {
  await sql`delete from tollgate.provider_keys where provider = 'openai'`;
  if (variant === "plain") return;
  const limits = variantCeilings[variant];
  await sql`
    insert into tollgate.provider_keys
      (provider, label, fingerprint, max_in_flight, requests_per_minute, tokens_per_minute)
    values ('openai', ${keyLabel}, 'sha256:0000000000000000', ${limits.max_in_flight}, ${limits.requests_per_minute},
      ${limits.tokens_per_minute})`;
}

interface Check {
  admitted: number;
  /** Reservations naming a key (api_usage.provider_key). */
  keyed: number;
  /** Reservations holding an in-flight slot: granted by tollgate.upstream_admission. */
  slots: number;
  /** Tickets left in the upstream queue (requests that were told to wait). */
  queued: number;
}

async function checkSince(sql: Sql, since: Date): Promise<Check> {
  const [row] = await sql`
    select count(*)::int as admitted, count(provider_key)::int as keyed,
      count(*) filter (where holds_upstream_slot)::int as slots,
      (select count(*) from tollgate.upstream_queue)::int as queued
    from public.api_usage where created_at >= ${since}`;
  return row as unknown as Check;
}

/** Did every admission of the cell take the variant's path? */
function checkOk(variant: Variant, c: Check): boolean {
  if (c.queued > 0 || c.admitted === 0) return false;
  if (variant === "plain") return c.keyed === 0 && c.slots === 0;
  if (!queueOn(variant)) return c.keyed === c.admitted && c.slots === 0;
  return c.keyed === c.admitted && c.slots === c.admitted;
}

const admitRequest = (requestId: string, userId: string) => ({
  request_id: requestId,
  user_id: userId,
  model: "gpt-4o-mini",
  estimated_input_tokens: 200,
  max_output_tokens: 256,
  estimated_cost_usd: 0.0002,
});

/** The settle call, as the function sends it: with a key registered, the answering attempt names it. */
const settleCall = (requestId: string, userId: string, variant: Variant) => ({
  request_id: requestId,
  user_id: userId,
  provider: "openai",
  model: "gpt-4o-mini",
  status: "success",
  input_tokens: 200,
  output_tokens: 100,
  latency_ms: 300,
  cost_usd: 0.00009,
  attempts_detail: [{
    provider: "openai",
    model: "gpt-4o-mini",
    ok: true,
    status: 200,
    ...(variant === "plain" ? {} : { key: keyLabel }),
  }],
});

/** One measurement of one cell; rounds of a cell are merged (see `merge`). */
interface Raw {
  pairs: number;
  seconds: number;
  errors: number;
  admit: number[];
  settle: number[];
  pair: number[];
  /** pgbench: its average latency (ms); it reports no percentiles. */
  averageMs?: number;
  check: Check;
  /** CPU that processes outside the benchmark used meanwhile, in cores. */
  otherCores: number;
}

/** The pair's two calls, as a client makes them. */
interface PairApi {
  admit(request: ReturnType<typeof admitRequest>): Promise<{ allowed: boolean; code: string | null }>;
  settle(call: ReturnType<typeof settleCall>): Promise<unknown>;
  /**
   * The caller goes on to its next pair once admitted, and the settlement completes meanwhile: the ai function
   * settles after its response, and nobody waits for it.
   */
  settlesInBackground: boolean;
  close(): Promise<void>;
}

/** One SQL function call per admission and per settlement, on a pool of `connections`. */
function sqlPairs(url: string, connections: number): PairApi {
  const sql = postgres(url, { max: connections, onnotice: () => {} });
  return {
    admit: async (request) => (await sql`select tollgate.admit(${sql.json(request)}) as a`)[0].a,
    settle: async (call) => await sql`select tollgate.settle(${sql.json(call)})`,
    settlesInBackground: false,
    close: () => sql.end(),
  };
}

/**
 * Through the ai function's own ledger (supabase/functions/_shared/db.ts), as one isolate holds it: its pool of 4
 * connections, and its group commit, which sends the calls that arrive while others are in flight as one batch.
 * As in the function, settlements run in the background (and wait a moment for others to join them).
 */
function ledgerPairs(url: string): PairApi {
  const ledger = connectLedger(url, { viaPooler: false });
  return {
    admit: (request) => ledger.admit(request),
    settle: (call) => ledger.settle(call as unknown as Settlement),
    settlesInBackground: true,
    close: () => ledger.close(),
  };
}

/**
 * Closed loop from Deno: `workers` of them, each admit → settle → admit … for `seconds` (with settlements in the
 * background, admit → admit …, and the clock stops once every settlement is done). A pair's time runs until its
 * settlement is committed.
 */
async function denoThroughput(
  api: PairApi,
  url: string,
  ids: string[],
  workers: number,
  variant: Variant,
): Promise<Raw> {
  const admitTimes: number[] = [];
  const settleTimes: number[] = [];
  const pairTimes: number[] = [];
  let errors = 0;
  const failed = (record: boolean) => (error: unknown) => {
    if (record) errors++;
    if (errors === 1) progress(`error: ${(error as Error).message}`);
  };
  const run = async (until: number, record: boolean) => {
    const settling: Promise<void>[] = [];
    await Promise.all(Array.from({ length: workers }, async () => {
      while (performance.now() < until) {
        const requestId = crypto.randomUUID();
        const userId = ids[Math.floor(Math.random() * ids.length)];
        const t0 = performance.now();
        try {
          const a = await api.admit(admitRequest(requestId, userId));
          const t1 = performance.now();
          if (!a.allowed) throw new Error(`refused: ${a.code}`);
          const settled = api.settle(settleCall(requestId, userId, variant)).then(() => {
            const t2 = performance.now();
            if (record) {
              admitTimes.push(t1 - t0);
              settleTimes.push(t2 - t1);
              pairTimes.push(t2 - t0);
            }
          }, failed(record));
          if (api.settlesInBackground) settling.push(settled);
          else await settled;
        } catch (error) {
          failed(record)(error);
        }
      }
    }));
    await Promise.all(settling);
  };
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [{ since }] = await sql`select now() as since`;
    await run(performance.now() + 2000, false); // warm-up: connections, plans, caches
    await analyzePairTables(sql);
    const started = performance.now();
    await run(started + seconds * 1000, true);
    const elapsed = (performance.now() - started) / 1000;
    return {
      pairs: pairTimes.length,
      seconds: elapsed,
      errors,
      admit: admitTimes,
      settle: settleTimes,
      pair: pairTimes,
      check: await checkSince(sql, since),
      otherCores: 0,
    };
  } finally {
    await sql.end();
    await api.close();
  }
}

/**
 * `admitRequest` and `settleCall` as SQL for pgbench scripts, over SQL expressions for the two ids: their constant
 * keys as one JSON literal, so that every client sends the same pair. A space follows each key's colon: pgbench reads
 * `:true` as its variable `true` (the values here hold no `":`).
 */
const jsonSql = (value: object) => `'${JSON.stringify(value).replaceAll('":', '": ').replaceAll("'", "''")}'::jsonb`;
const withIds = (fields: object, requestId: string, userId: string) =>
  `(${jsonSql(fields)} || jsonb_build_object('request_id', ${requestId}, 'user_id', ${userId}))`;
const admitRequestSql = (requestId: string, userId: string) => withIds(admitRequest("", ""), requestId, userId);
const settleCallSql = (requestId: string, userId: string, variant: Variant) =>
  withIds(settleCall("", "", variant), requestId, userId);

/** A pgbench script of pairs, with the reservations' check as the other clients have it. */
async function pgbenchPairs(
  url: string,
  connections: number,
  script: string[],
  pairsPerRun = 1,
): Promise<Raw | undefined> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [{ since }] = await sql`select now() as since`;
    const run = await pgbench(url, connections, script, pairsPerRun);
    if (!run) return undefined;
    return { ...run, admit: [], settle: [], pair: [], check: await checkSince(sql, since), otherCores: 0 };
  } finally {
    await sql.end();
  }
}

/** The same pair from pgbench (prepared statements, one transaction per call, like the Deno client). */
function pgbenchThroughput(url: string, connections: number, variant: Variant): Promise<Raw | undefined> {
  return pgbenchPairs(url, connections, [
    `\\set n random(1, ${users})`,
    `select id as uid, gen_random_uuid() as rid from bench.users where n = :n \\gset`,
    `select tollgate.admit(${admitRequestSql(":rid::uuid", ":uid::uuid")}) is not null;`,
    `select tollgate.settle(${settleCallSql(":rid::uuid", ":uid::uuid", variant)}) is not null;`,
  ]);
}

/** Requests per batch in the batched pgbench rows. */
const batchSize = 16;

/**
 * Pairs in batches from pgbench: `tollgate.admit_many` with `batchSize` requests of random users (one transaction),
 * then `tollgate.settle_many` with their calls (another) — what the database sustains when the function's group
 * commit fills its batches.
 */
function pgbenchBatchThroughput(url: string, connections: number, variant: Variant): Promise<Raw | undefined> {
  return pgbenchPairs(url, connections, [
    `select jsonb_agg(${admitRequestSql("gen_random_uuid()", "u.id")}) as requests` +
    ` from (select 1 + floor(random() * ${users})::int as n from generate_series(1, ${batchSize})) as r` +
    ` join bench.users as u using (n) \\gset`,
    `select tollgate.admit_many(:requests::jsonb) is not null;`,
    `select tollgate.settle_many((select jsonb_agg(${
      settleCallSql("r.value -> 'request_id'", "r.value -> 'user_id'", variant)
    })` +
    ` from jsonb_array_elements(:requests::jsonb) as r)) is null;`,
  ], batchSize);
}

/** A pgbench script, run 2 s to warm up and then `seconds`; each run of the script counts as `pairsPerRun` pairs. */
async function pgbench(
  url: string,
  connections: number,
  lines: string[],
  pairsPerRun = 1,
): Promise<{ pairs: number; seconds: number; errors: number; averageMs: number } | undefined> {
  const binary = `${pgBin}/pgbench`;
  if (!(await Deno.stat(binary).then(() => true, () => false))) return undefined;
  const script = await Deno.makeTempFile({ suffix: ".sql" });
  await Deno.writeTextFile(script, lines.join("\n") + "\n");
  try {
    const run = async (duration: number) =>
      await new Deno.Command(binary, {
        args: [
          "-n",
          "-M",
          "prepared",
          "-c",
          String(connections),
          "-j",
          String(Math.min(connections, 2)),
          "-T",
          String(duration),
          "-f",
          script,
          url,
        ],
        cwd: await Deno.makeTempDir(),
        env: { PGSSLMODE: "disable" },
        stdout: "piped",
        stderr: "piped",
      }).output();
    await run(2);
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    await analyzePairTables(sql).finally(() => sql.end());
    const output = await run(seconds);
    const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
    const tps = Number(text.match(/tps = ([\d.]+)/)?.[1] ?? NaN);
    const processed = Number(text.match(/number of transactions actually processed: (\d+)/)?.[1] ?? 0);
    if (!processed) throw new Error(`pgbench ran nothing:\n${text}`);
    return {
      pairs: processed * pairsPerRun,
      seconds: processed / tps,
      errors: Number(text.match(/number of failed transactions: (\d+)/)?.[1] ?? 0),
      averageMs: Number(text.match(/latency average = ([\d.]+) ms/)?.[1] ?? NaN),
    };
  } finally {
    await Deno.remove(script);
  }
}

/**
 * The baseline: what a pair cannot do without, with none of admission's decisions, in two PL/pgSQL functions called
 * as Tollgate's are (one call, one transaction each) — the user's lock, one count per window of the bench tier, the
 * reservation and its two rollups; then the call's row, the reservation settled, and the three rollups (user, usage,
 * budget; the shared ones by session shard). Tollgate's pair does all of this and decides every layer besides: the
 * ratio is what its logic costs.
 */
const bareFunctions = `
  create function bench.bare_admit(p_user uuid, p_request uuid) returns void
  language plpgsql set search_path = '' as $$
  declare
    v_shard smallint := pg_backend_pid() % 16;
    v_budget bigint := (select b.id from tollgate.budgets as b where b.scope = 'global');
  begin
    perform pg_advisory_xact_lock(hashtextextended(p_user::text, 7104));
    perform count(*) from public.api_usage as u
    where u.user_id = p_user and u.created_at > now() - interval '1 minute';
    perform count(*) from public.api_usage as u
    where u.user_id = p_user and u.created_at > now() - interval '1 hour';
    insert into public.api_usage (request_id, user_id, created_at, tokens_used, estimated_cost, feature, provider,
      model, status, estimated_input_tokens, max_output_tokens, reserved_cost, budget_ids)
    values (p_request, p_user, now(), 456, 0.0002, 'default', 'openai', 'gpt-4o-mini', 'reserved', 200, 256, 0.0002,
      array[v_budget]);
    insert into public.user_usage_daily as d (user_id, day, reserved_tokens, reserved_cost_usd)
    values (p_user, current_date, 456, 0.0002)
    on conflict (user_id, day) do update
      set reserved_tokens = d.reserved_tokens + 456, reserved_cost_usd = d.reserved_cost_usd + 0.0002;
    insert into tollgate.budget_periods as p (budget_id, period_start, shard, reserved_total_usd)
    values (v_budget, date_trunc('month', current_date)::date, v_shard, 0.0002)
    on conflict (budget_id, period_start, shard) do update set reserved_total_usd = p.reserved_total_usd + 0.0002;
  end;
  $$;

  create function bench.bare_settle(p_user uuid, p_request uuid) returns void
  language plpgsql set search_path = '' as $$
  declare
    v_shard smallint := pg_backend_pid() % 16;
    v_budget bigint := (select b.id from tollgate.budgets as b where b.scope = 'global');
  begin
    insert into public.ai_api_calls (created_at, user_id, feature, provider, model, input_tokens, output_tokens,
      latency_ms, estimated_cost, cached, status, request_id)
    values (now(), p_user, 'default', 'openai', 'gpt-4o-mini', 200, 100, 300, 0.00009, false, 'success', p_request);
    update public.api_usage as u set status = 'settled', tokens_used = 300, estimated_cost = 0.00009
    where u.request_id = p_request;
    insert into public.user_usage_daily as d (user_id, day, calls, input_tokens, output_tokens, cost_usd,
      reserved_tokens, reserved_cost_usd)
    values (p_user, current_date, 1, 200, 100, 0.00009, -456, -0.0002)
    on conflict (user_id, day) do update
      set calls = d.calls + 1, input_tokens = d.input_tokens + 200, output_tokens = d.output_tokens + 100,
        cost_usd = d.cost_usd + 0.00009, reserved_tokens = d.reserved_tokens - 456,
        reserved_cost_usd = d.reserved_cost_usd - 0.0002;
    insert into tollgate.usage_daily as t (day, provider, model, feature, shard, calls, input_tokens, output_tokens,
      cost_usd)
    values (current_date, 'openai', 'gpt-4o-mini', 'default', v_shard, 1, 200, 100, 0.00009)
    on conflict (day, provider, model, feature, shard) do update
      set calls = t.calls + 1, input_tokens = t.input_tokens + 200, output_tokens = t.output_tokens + 100,
        cost_usd = t.cost_usd + 0.00009;
    insert into tollgate.budget_settlements as t (budget_id, period_start, shard, spent_usd, released_usd, calls)
    values (v_budget, date_trunc('month', current_date)::date, v_shard, 0.00009, 0.0002, 1)
    on conflict (budget_id, period_start, shard) do update
      set spent_usd = t.spent_usd + 0.00009, released_usd = t.released_usd + 0.0002, calls = t.calls + 1;
  end;
  $$;`;

const bareScript = [
  `\\set n random(1, ${users})`,
  `select id as uid, gen_random_uuid() as rid from bench.users where n = :n \\gset`,
  "select bench.bare_admit(:uid::uuid, :rid::uuid);",
  "select bench.bare_settle(:uid::uuid, :rid::uuid);",
];

interface Baseline {
  connections: number;
  perSecond: number;
  errors: number;
  otherCores: number;
}

/** The bare pair from pgbench at each connection count, measured as a cell is (quiet machine, vacuumed). */
async function measureBaseline(admin: Sql, url: string): Promise<Baseline[]> {
  await admin.unsafe(bareFunctions);
  const rows: Baseline[] = [];
  for (const connections of connectionCounts) {
    progress(`baseline: the bare pair from pgbench with ${connections} connection(s), ${seconds} s`);
    const raw = await undisturbed(
      () => resetPairTables(admin),
      async () => {
        const run = await pgbench(url, connections, bareScript);
        return run && { ...run, otherCores: 0 };
      },
    );
    if (!raw) return [];
    rows.push({ connections, perSecond: raw.pairs / raw.seconds, errors: raw.errors, otherCores: raw.otherCores });
  }
  return rows;
}

/** One row from a cell's rounds: pairs over their summed time, percentiles over every sample. */
function merge(client: string, variant: Variant, connections: number, raws: Raw[]): Throughput {
  const pairs = raws.reduce((sum, r) => sum + r.pairs, 0);
  const secondsAll = raws.reduce((sum, r) => sum + r.seconds, 0);
  const samples = raws.flatMap((r) => r.pair);
  const sum = (pick: (c: Check) => number) => raws.reduce((total, r) => total + pick(r.check), 0);
  return {
    client,
    variant,
    connections,
    pairs,
    perSecond: pairs / secondsAll,
    admit: samples.length ? percentiles(raws.flatMap((r) => r.admit)) : undefined,
    settle: samples.length ? percentiles(raws.flatMap((r) => r.settle)) : undefined,
    pair: samples.length
      ? percentiles(samples)
      : { p50: raws.reduce((total, r) => total + (r.averageMs ?? NaN) * r.pairs, 0) / pairs, p95: NaN, p99: NaN },
    errors: raws.reduce((total, r) => total + r.errors, 0),
    check: {
      admitted: sum((c) => c.admitted),
      keyed: sum((c) => c.keyed),
      slots: sum((c) => c.slots),
      queued: Math.max(...raws.map((r) => r.check.queued)),
    },
    otherCores: raws.reduce((total, r) => total + r.otherCores * r.seconds, 0) / secondsAll,
  };
}

/**
 * This machine may be shared (a neighbour's test run takes cores from PostgreSQL and the clients). The benchmark's own
 * CPU is this process with its reaped children (pgbench) and the cluster's postmaster with its backends; the machine's
 * busy time (/proc/stat) minus that is what others used. A cell they disturbed is measured again, twice at most, once
 * the machine is quiet, within one waiting budget per run (as bench/gateway.ts does).
 */
const quietCores = 0.15;
let waitBudgetMs = 15 * 60_000;
let postmasterPid = 0;

const ourCpuMs = () => cpuMs([Deno.pid], true) + (postmasterPid ? cpuMs(withChildren(postmasterPid), true) : 0);

/** Runs `work` and tells how many cores processes outside the benchmark used meanwhile. */
async function watched<T>(work: () => Promise<T>): Promise<[T, number]> {
  const busyBefore = machineBusyMs();
  const oursBefore = ourCpuMs();
  const started = performance.now();
  const result = await work();
  const wallMs = performance.now() - started;
  const other = (machineBusyMs() - busyBefore) - (ourCpuMs() - oursBefore);
  return [result, Math.max(0, other) / wallMs];
}

async function waitForQuiet(): Promise<void> {
  let warned = false;
  for (;;) {
    const [, cores] = await watched(() => new Promise((resolve) => setTimeout(resolve, 2000)));
    waitBudgetMs -= 2000;
    if (cores < quietCores) return;
    if (waitBudgetMs <= 0) {
      progress(`the machine is still busy (${cores.toFixed(2)} cores in use by others); measuring anyway`);
      return;
    }
    if (!warned) progress(`the machine is busy (${cores.toFixed(2)} cores in use by other processes); waiting`);
    warned = true;
  }
}

/** One measurement, again (twice at most) when other processes took more than `quietCores` meanwhile. */
async function undisturbed<T extends { otherCores: number }>(
  prepare: () => Promise<void>,
  measure: () => Promise<T | undefined>,
): Promise<T | undefined> {
  let raw: T | undefined;
  for (let attempt = 1; attempt <= 3; attempt++) {
    await waitForQuiet();
    await prepare();
    const [result, otherCores] = await watched(measure);
    if (!result) return undefined;
    raw = { ...result, otherCores };
    if (otherCores < quietCores || waitBudgetMs <= 0) break;
    progress(`  other processes used ${otherCores.toFixed(2)} cores meanwhile: measuring again`);
  }
  return raw;
}

type Client = "deno" | "ledger" | "pgbench" | "batched";
const clientNames: Record<Client, string> = {
  deno: "Deno (postgres.js)",
  ledger: "Deno (the function's ledger)",
  pgbench: "pgbench (C)",
  batched: `pgbench (C), batches of ${batchSize}`,
};

/**
 * Every variant of one client and connection count, one after the other (reversed every other round), so that what
 * drifts during the run (the tables growing, the machine's other work) touches them alike.
 */
async function measureCell(
  admin: Sql,
  sql: Sql,
  client: Client,
  connections: number,
  measure: (variant: Variant) => Promise<Raw | undefined>,
): Promise<Throughput[]> {
  const raws = new Map<Variant, Raw[]>(variants.map((v) => [v, []]));
  for (let round = 0; round < rounds; round++) {
    for (const variant of round % 2 ? variants.toReversed() : variants) {
      progress(
        `throughput from ${client} with ${connections} connection(s), ${variantLabels[variant]}, ${seconds} s` +
          (rounds > 1 ? ` (round ${round + 1} of ${rounds})` : ""),
      );
      const raw = await undisturbed(async () => {
        await setVariant(sql, variant);
        await resetPairTables(admin);
      }, () => measure(variant));
      if (!raw) return [];
      if (!checkOk(variant, raw.check)) {
        progress(`\x1b[31mthe ${variant} cell did not take its path: ${JSON.stringify(raw.check)}\x1b[0m`);
      }
      raws.get(variant)!.push(raw);
    }
  }
  return variants.map((variant) => merge(clientNames[client], variant, connections, raws.get(variant)!));
}

// ---------------------------------------------------------------------------------------------------------------------
// Where a pair's time goes

interface StatementCost {
  /** The statement's first lines in the migration. */
  source: string;
  /** Its time per call (a statement with none nested in it). */
  microseconds: number;
}

interface FunctionProfile {
  name: string;
  microsecondsPerCall: number;
  statements: StatementCost[];
}

interface RelationLocks {
  name: string;
  /** Relation locks held at the end of the call (one per relation and lock mode). */
  held: number;
  /** Of those, the ones PostgreSQL keeps in the backend's fast-path slots (16 in PostgreSQL 15). */
  fastPath: number;
}

interface PairProfile {
  pairs: number;
  pairMicroseconds: number;
  functions: FunctionProfile[];
  locks: RelationLocks[];
}

const profiledPairs = 3000;

/**
 * Pairs one after the other on one connection, with plpgsql_check's profiler on for that session only: the time of
 * each statement in tollgate.admit_one (all of tollgate.admit) and tollgate.settle. Then the relation locks one
 * admission and one settlement hold, counted in their own transactions.
 */
async function profilePairs(adminUrl: string, ids: string[]): Promise<PairProfile> {
  const sql = postgres(adminUrl, { max: 1, onnotice: () => {} });
  // A refused admission would profile the refusal path: stop instead, as the throughput rows count it an error.
  const pair = async () => {
    const requestId = crypto.randomUUID();
    const userId = ids[Math.floor(Math.random() * ids.length)];
    const [{ a }] = await sql`select tollgate.admit(${sql.json(admitRequest(requestId, userId))}) as a`;
    if (!a.allowed) throw new Error(`profile: admission refused: ${a.code}`);
    await sql`select tollgate.settle(${sql.json(settleCall(requestId, userId, "plain"))})`;
  };
  try {
    await setVariant(sql, "plain");
    await sql`load 'plpgsql_check'`;
    await sql`set plpgsql_check.profiler = on`;
    for (let i = 0; i < 300; i++) await pair(); // plans cached, as in a long-lived connection
    await analyzePairTables(sql);
    await sql`select extensions.plpgsql_profiler_reset_all()`;
    const started = performance.now();
    for (let i = 0; i < profiledPairs; i++) await pair();
    const pairMicroseconds = (performance.now() - started) * 1000 / profiledPairs;

    const functions: FunctionProfile[] = [];
    // admit() only calls admit_one(), whose statements are shown instead. settle() is record_calls() and then the
    // rollups: record_calls' statements are shown as its own table.
    const signatures = {
      admit_one: "tollgate.admit_one(jsonb, boolean, tollgate.route_read[], tollgate.budget_read[])",
      settle: "tollgate.settle(jsonb)",
      record_calls: "tollgate.record_calls(jsonb)",
    };
    for (const [name, signature] of Object.entries(signatures)) {
      const lines = new Map<number, string>(
        (await sql`
          select lineno, source from extensions.plpgsql_profiler_function_tb(${signature}::regprocedure)`)
          .map((row) => [row.lineno as number, (row.source as string | null) ?? ""]),
      );
      const [{ calls, total_ms }] = await sql`
        select f.exec_count::int as calls, f.total_time as total_ms
        from extensions.plpgsql_profiler_functions_all() as f
        where f.funcoid = ${signature}::regprocedure`;
      // Only statements with none nested in them: what the profiler reports for an IF, a loop or a block depends on
      // how it collected the profile, while a simple statement's time is its own.
      const statements = await sql`
        with s as (select * from extensions.plpgsql_profiler_function_statements_tb(${signature}::regprocedure))
        select s.lineno, s.total_time as total_ms
        from s
        where s.exec_stmts > 0 and not exists (select from s as nested where nested.parent_stmtid = s.stmtid)`;
      const sourceAt = (lineno: number) =>
        [0, 1, 2, 3].map((i) => lines.get(lineno + i)?.trim() ?? "").join(" ").replace(/\s+/g, " ").slice(0, 72);
      functions.push({
        name: `tollgate.${name}`,
        microsecondsPerCall: total_ms * 1000 / calls,
        statements: statements
          .map((s) => ({ source: sourceAt(s.lineno as number), microseconds: (s.total_ms as number) * 1000 / calls }))
          .sort((a, b) => b.microseconds - a.microseconds),
      });
    }

    const heldBy = async (
      name: string,
      call: (tx: postgres.TransactionSql) => Promise<unknown>,
    ): Promise<RelationLocks> =>
      await sql.begin(async (tx) => {
        await call(tx);
        const [row] = await tx`
          select count(*)::int as held, count(*) filter (where fastpath)::int as fast_path
          from pg_catalog.pg_locks
          where pid = pg_backend_pid() and locktype = 'relation' and relation <> 'pg_catalog.pg_locks'::regclass`;
        return { name, held: row.held, fastPath: row.fast_path };
      });
    const requestId = crypto.randomUUID();
    const locks = [
      await heldBy("tollgate.admit", async (tx) => {
        const [{ a }] = await tx`select tollgate.admit(${tx.json(admitRequest(requestId, ids[0]))}) as a`;
        if (!a.allowed) throw new Error(`profile: admission refused: ${a.code}`);
      }),
      await heldBy(
        "tollgate.settle",
        (tx) => tx`select tollgate.settle(${tx.json(settleCall(requestId, ids[0], "plain"))})`,
      ),
    ];
    return { pairs: profiledPairs, pairMicroseconds, functions, locks };
  } finally {
    await sql.end();
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// The cost views at scale

interface ViewTimes {
  rows: number;
  generationSeconds: number;
  rollupRows: number;
  userRollupRows: number;
  times: Record<string, number>;
}

const views: Record<string, string> = {
  daily_cost_summary: "select * from public.daily_cost_summary",
  budget_status: "select * from public.budget_status",
  cost_by_feature: "select * from public.cost_by_feature",
  "cost_by_user (this month)":
    "select * from public.cost_by_user where month = date_trunc('month', now() at time zone 'UTC')::date",
};

/**
 * Adds `count` calls to ai_api_calls (a year, 10,000 users, 8 models on 2 providers, 5 features, every status) and
 * rebuilds the rollups from them exactly as settlement leaves them: past days one row per key, today's spread over the
 * contention shards, per-user days, and the budgets' month counters.
 */
async function generateCalls(admin: Sql, from: number, count: number): Promise<void> {
  const batch = 1_000_000;
  for (let start = from; start < from + count; start += batch) {
    const end = Math.min(from + count, start + batch) - 1;
    progress(`generating ai_api_calls rows ${start.toLocaleString()}..${end.toLocaleString()}`);
    await admin.begin(async (tx) => {
      // A bench-only shortcut on a throwaway cluster: skip the per-row foreign key check on auth.users.
      await tx`set local session_replication_role = replica`;
      await tx`
        insert into public.ai_api_calls (
          created_at, user_id, feature, provider, model, input_tokens, output_tokens, latency_ms, estimated_cost,
          cached, status, request_id, cached_input_tokens, reasoning_tokens, attempts, fallback_from, priced, saved_cost,
          endpoint, streamed, settled_at)
        select
          c.at, u.id, (array['default', 'chat', 'search', 'summarize', 'agent'])[1 + g % 5],
          case when m.model like 'claude%' then 'anthropic' else 'openai' end, m.model,
          c.input_tokens, c.output_tokens, 150 + (g * 7919) % 4000,
          round((c.input_tokens * 0.15 + c.output_tokens * 0.60) / 1000000 * (1 + g % 8), 6),
          g % 20 = 0, (array['success', 'success', 'success', 'success', 'success', 'success', 'error', 'timeout',
            'client_closed', 'expired'])[1 + g % 10],
          gen_random_uuid(), c.input_tokens / 4, 0, 1 + (g % 7 = 0)::integer,
          case when g % 13 = 0 then 'openai/gpt-4o' end, true, 0, 'chat.completions', g % 3 = 0, c.at
        from generate_series(${start}::bigint, ${end}::bigint) as g
        cross join lateral (
          select now() - make_interval(secs => (g * 2654435761) % (365 * 86400)) as at,
            (100 + (g * 40503) % 4000)::integer as input_tokens, (20 + (g * 9973) % 800)::integer as output_tokens
        ) as c
        cross join lateral (
          select (array['gpt-4o-mini', 'gpt-4o', 'gpt-4.1', 'gpt-4.1-mini', 'claude-haiku-4-5', 'claude-sonnet-4-6',
            'claude-opus-4-6', 'o3-mini'])[1 + (g * 31) % 8] as model
        ) as m
        join bench.users as u on u.n = 1 + (g * 104729) % 10000`;
    });
  }
}

async function rebuildRollups(admin: Sql): Promise<void> {
  progress("rebuilding the rollups from the generated calls");
  await admin`truncate tollgate.usage_daily, public.user_usage_daily, tollgate.budget_settlements, tollgate.budget_periods`;
  await admin`
    insert into tollgate.usage_daily (
      day, provider, model, feature, shard, calls, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
      reasoning_tokens, cost_usd, saved_cost_usd, latency_ms_sum, cache_hits, success_calls, error_calls, timeout_calls,
      client_closed_calls, expired_calls, fallback_calls, unpriced_calls)
    select (created_at at time zone 'UTC')::date, provider, model, feature,
      -- today's rows as 16 sessions would have left them; past days folded into shard 0
      case when (created_at at time zone 'UTC')::date = (now() at time zone 'UTC')::date
        then (hashtext(request_id::text) & 15) else 0 end,
      count(*), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens), sum(cache_write_tokens),
      sum(reasoning_tokens), sum(estimated_cost), sum(saved_cost), sum(latency_ms), count(*) filter (where cached),
      count(*) filter (where status = 'success'), count(*) filter (where status = 'error'),
      count(*) filter (where status = 'timeout'), count(*) filter (where status = 'client_closed'),
      count(*) filter (where status = 'expired'), count(*) filter (where fallback_from is not null),
      count(*) filter (where not priced)
    from public.ai_api_calls
    group by 1, 2, 3, 4, 5`;
  await admin`
    insert into public.user_usage_daily (user_id, day, calls, input_tokens, output_tokens, cost_usd, cache_hits, errors)
    select user_id, (created_at at time zone 'UTC')::date, count(*), sum(input_tokens), sum(output_tokens),
      sum(estimated_cost), count(*) filter (where cached), count(*) filter (where status in ('error', 'timeout'))
    from public.ai_api_calls
    group by 1, 2`;
  await admin`
    insert into tollgate.budget_settlements (budget_id, period_start, shard, spent_usd, released_usd, calls)
    select b.id, date_trunc('month', c.created_at at time zone 'UTC')::date, hashtext(c.request_id::text) & 15,
      sum(c.estimated_cost), sum(c.estimated_cost), count(*)
    from public.ai_api_calls as c cross join tollgate.budgets as b
    where b.scope = 'global'
    group by 1, 2, 3`;
  await admin`
    insert into tollgate.budget_periods (budget_id, period_start, shard, reserved_total_usd)
    select budget_id, period_start, shard, released_usd from tollgate.budget_settlements`;
  progress("vacuum analyze");
  await admin`vacuum analyze`;
}

async function timeViews(sql: Sql): Promise<Record<string, number>> {
  const times: Record<string, number> = {};
  for (const [name, query] of Object.entries(views)) {
    for (let i = 0; i < 3; i++) await sql.unsafe(query); // warm
    const samples: number[] = [];
    for (let i = 0; i < 15; i++) {
      const t0 = performance.now();
      await sql.unsafe(query);
      samples.push(performance.now() - t0);
    }
    times[name] = percentiles(samples).p50;
  }
  return times;
}

// ---------------------------------------------------------------------------------------------------------------------
// Report

const ms = (value: number | undefined) => value === undefined || Number.isNaN(value) ? "–" : value.toFixed(2);

/** The 1-minute load average: other work on the machine takes cores from the benchmark. */
async function loadAverage(): Promise<string> {
  return (await Deno.readTextFile("/proc/loadavg").catch(() => "?")).split(" ")[0];
}

function report(
  versions: string,
  throughput: Throughput[],
  baseline: Baseline[],
  profile: PairProfile | undefined,
  viewTimes: ViewTimes[],
  load: { before: string },
): string {
  const lines: string[] = [];
  lines.push("## Database (bench/db.ts)", "");
  lines.push(
    `${versions}. A private cluster as the test stack starts it (tests/stack/postgres.ts: fsync, ` +
      "synchronous_commit and full_page_writes off — numbers for a durable server would be lower), migrated with the " +
      "Supabase CLI. Client and server share the machine's cores.",
    "",
  );
  if (throughput.length) {
    lines.push("### Admission + settlement", "");
    lines.push(
      `One pair = \`tollgate.admit\` then \`tollgate.settle\` (two transactions) for a random user of ${users.toLocaleString()} ` +
        `on a tier whose limits are out of reach, against the global budget (a hard cap); ${seconds} s per row after a ` +
        `2 s warm-up (and before the first row, ${seconds + 2} s of unmeasured load and a \`vacuum analyze\`); ` +
        "autovacuum off meanwhile, the log and rollup tables a pair writes emptied before each row, so that every row starts from " +
        "the same state" +
        `${
          rounds > 1
            ? `; ${rounds} rounds per row, the variants' order reversed every other round (pairs/s over ` +
              "their summed time, percentiles over all their samples)"
            : ""
        }. ` +
        `Latencies in ms. The machine's 1-minute load average just before: ${load.before} ` +
        `(on ${navigator.hardwareConcurrency} CPUs; anything else running takes cores from these numbers). ` +
        "Other CPU: the cores processes outside the benchmark used during the row (machine busy time from /proc/stat " +
        "less that of this process, pgbench and PostgreSQL); each measurement waits for a quiet machine, and one they " +
        `disturbed by more than ${quietCores} cores is taken again, twice at most.`,
      "",
    );
    const describe: Record<Variant, string> = {
      plain: "no key registered — admission's route read finds none, settlement records no key spend.",
      key: "one key (`primary`) registered without ceilings, as the function registers its `OPENAI_API_KEY` — " +
        "admission reads it (`tollgate.key_usable`) and names it in the reservation; settle calls name it in " +
        "`attempts_detail` and settlement adds the call to the key's daily spend.",
      inflight: `the same key with max_in_flight ${ceilings.max_in_flight.toLocaleString()}, which no row reaches — ` +
        "the provider is guarded, so every admission also takes `tollgate.upstream_admission` (works out the " +
        "key's headroom, counting its calls in flight, and grants) and holds an in-flight slot until settlement.",
      guarded: `the same key with every ceiling out of reach: max_in_flight ` +
        `${ceilings.max_in_flight.toLocaleString()}, requests_per_minute ` +
        `${ceilings.requests_per_minute.toLocaleString()}, tokens_per_minute ` +
        `${ceilings.tokens_per_minute.toLocaleString()} — as above, and each grant is also counted in the key's ` +
        "minute counters (a write to its row).",
    };
    lines.push(
      "Four clients: **Deno (postgres.js)** — one `tollgate.admit` and one `tollgate.settle` call per pair on a pool " +
        "of as many connections; **Deno (the function's ledger)** — the ai function's own database client " +
        "(supabase/functions/_shared/db.ts) as one isolate holds it, a pool of 4 connections whose group commit sends " +
        "the calls that arrive while others are in flight as one `tollgate.admit_many` or `tollgate.settle_many` " +
        "call (there, *connections* are the concurrent callers: 1 caller never fills an admission batch; as in the " +
        "function, a caller goes on once admitted, its settlement completes in the background, waiting up to 20 ms " +
        "for others when none is in flight, and a pair's latency runs until it is settled); **pgbench (C)** — the " +
        "pair from a C client, which shows the server's own capacity for one call per transaction; and " +
        `**pgbench (C), batches of ${batchSize}** — \`admit_many\` with ${batchSize} requests of random users, then ` +
        "`settle_many` with their calls: the server's capacity when the function's batches are full (its latency " +
        "column is a whole batch's).",
      "",
    );
    lines.push(
      `Each client and connection count is measured in ${variants.length} variants of the \`openai\` provider's ` +
        "keys, one right after the other (the request's route is openai first). In the queue-on ones nobody waits: " +
        "they measure the queue's cost when there is no contention for the provider.",
      "",
      ...variants.map((v) => `- **${variantLabels[v]}**: ${describe[v]}`),
      "",
    );
    lines.push(
      "| client | connections | provider keys | pairs/s | admit p50 | admit p99 | settle p50 | settle p99 | pair p50 | " +
        "pair p99 | other CPU | errors |",
    );
    lines.push("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const t of throughput) {
      lines.push(
        `| ${t.client} | ${t.connections} | ${variantLabels[t.variant]} | ${
          Math.round(t.perSecond).toLocaleString()
        } | ` +
          `${ms(t.admit?.p50)} | ${ms(t.admit?.p99)} | ${ms(t.settle?.p50)} | ${ms(t.settle?.p99)} | ${
            ms(t.pair.p50)
          }` +
          `${
            t.client === clientNames.batched ? " (avg, a batch)" : t.client.startsWith("pgbench") ? " (avg)" : ""
          } | ` +
          `${ms(t.pair.p99)} | ${t.otherCores.toFixed(2)} | ` +
          `${t.errors} |`,
      );
    }
    const find = (client: string, connections: number, variant: Variant) =>
      throughput.find((t) => t.client === client && t.connections === connections && t.variant === variant);
    const pairs = [...new Set(throughput.map((t) => `${t.client}\n${t.connections}`))].map((k) => k.split("\n"));
    const others = variants.filter((v) => v !== "plain");
    if (variants.includes("plain") && others.length) {
      const ratio = (a?: Throughput, b?: Throughput) => a && b ? `${(a.perSecond / b.perSecond).toFixed(2)}×` : "–";
      lines.push(
        "",
        "The same rows as ratios to the plain variant of their client and connection count (throughput: over 1.00× " +
          "is faster), and admission's p50 in ms, plain → each variant:",
        "",
        `| client | connections | plain pairs/s | ${others.map((v) => `${variantShort[v]} / plain`).join(" | ")} | ` +
          `admit p50: plain → ${others.map((v) => variantShort[v]).join(" / ")} |`,
        `| --- | ---: | ---: | ${others.map(() => "---:").join(" | ")} | ---: |`,
      );
      for (const [client, c] of pairs) {
        const connections = Number(c);
        const plain = find(client, connections, "plain");
        const rows = others.map((v) => find(client, connections, v));
        const latency = plain?.admit
          ? `${ms(plain.admit.p50)} → ${rows.map((r) => ms(r?.admit?.p50)).join(" / ")}`
          : "–";
        lines.push(
          `| ${client} | ${connections} | ${plain ? Math.round(plain.perSecond).toLocaleString() : "–"} | ` +
            `${rows.map((r) => ratio(r, plain)).join(" | ")} | ${latency} |`,
        );
      }
    }
    const failed = throughput.filter((t) => !checkOk(t.variant, t.check));
    const guardedRows = throughput.filter((t) => queueOn(t.variant));
    lines.push(
      "",
      `Checked from the reservations (warm-ups included): ` +
        (guardedRows.length
          ? `in the queue-on rows ${guardedRows.reduce((s, t) => s + t.check.slots, 0).toLocaleString()} of ` +
            `${guardedRows.reduce((s, t) => s + t.check.admitted, 0).toLocaleString()} admissions were granted by ` +
            "`tollgate.upstream_admission` (they hold an in-flight slot), none queued; "
          : "") +
        (failed.length
          ? `**${failed.length} row(s) did not take their variant's path**: ` +
            failed.map((t) => `${t.client} ${t.connections} ${t.variant} ${JSON.stringify(t.check)}`).join("; ")
          : "every row took its variant's path") +
        ".",
    );
    const plainRows = throughput.filter((t) => t.variant === "plain");
    const fastest = (rows: Throughput[]) => rows.reduce((a, b) => b.perSecond > a.perSecond ? b : a);
    const describeRow = (t: Throughput) =>
      `${Math.round(t.perSecond).toLocaleString()} pairs/s, ${t.client} with ${t.connections} connection(s)`;
    const best = fastest(plainRows.length ? plainRows : throughput);
    lines.push(
      "",
      `Goal: at least 3,000 pairs/s on this machine — **${best.perSecond >= 3000 ? "met" : "not met"}** ` +
        `(best: ${describeRow(best)}${plainRows.length ? ", no key" : ""}` +
        (guardedRows.length ? `; with the queue on: ${describeRow(fastest(guardedRows))}` : "") + ").",
      "",
    );
  }
  if (baseline.length) {
    const tollgate = (connections: number) =>
      throughput.find((t) => t.client === "pgbench (C)" && t.connections === connections && t.variant === "plain");
    lines.push("### Baseline: the bare pair", "");
    lines.push(
      "What a pair cannot do without, with none of admission's decisions, from pgbench: two PL/pgSQL functions " +
        "called as Tollgate's are, one transaction each (`bareFunctions` in bench/db.ts) — the user's lock, one " +
        "count per window of the tier, the reservation with its user and budget rollups; then the call's row, the " +
        "reservation settled, and the user, usage and budget rollups. Measured as a throughput row is, after the " +
        "profile. Tollgate's pair does all of this and decides every layer besides, so the ratio is what its logic " +
        "costs; the bare rate is a ceiling for this schema with an admission and a settlement transaction per request.",
      "",
      "| connections | Tollgate pair, pgbench, no key (pairs/s) | bare pair (pairs/s) | Tollgate / bare | other CPU | errors |",
      "| ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const b of baseline) {
      const t = tollgate(b.connections);
      lines.push(
        `| ${b.connections} | ${t ? Math.round(t.perSecond).toLocaleString() : "–"} | ` +
          `${Math.round(b.perSecond).toLocaleString()} | ${t ? `${(t.perSecond / b.perSecond).toFixed(2)}×` : "–"} | ` +
          `${b.otherCores.toFixed(2)} | ${b.errors} |`,
      );
    }
    lines.push("");
  }
  if (profile) {
    const shown = 8;
    const us = (value: number) => Math.round(value).toLocaleString();
    const topLevel = profile.functions.filter((f) => f.name !== "tollgate.record_calls");
    const bodies = topLevel.reduce((sum, f) => sum + f.microsecondsPerCall, 0);
    lines.push("### Where a pair's time goes", "");
    lines.push(
      `${profile.pairs.toLocaleString()} pairs one after the other on one connection, with plpgsql_check's profiler ` +
        "on for that session (it times every statement, which adds to the times: read the shares). A pair took " +
        `${us(profile.pairMicroseconds)} µs: ` +
        topLevel.map((f) => `${us(f.microsecondsPerCall)} µs in the body of \`${f.name}\``).join(", ") +
        `, and ${us(profile.pairMicroseconds - bodies)} µs around them (two statements' round trips, parse, ` +
        "bind, commit, the client). `tollgate.admit` is `tollgate.admit_one` with nothing read before it; " +
        "`tollgate.settle` is `tollgate.record_calls` (everything but the rollups, shown as its own table) and then " +
        "the rollups. The statements that took the most, per call:",
      "",
    );
    for (const f of profile.functions) {
      lines.push(`| \`${f.name}\`: statement | µs per call | share |`, "| --- | ---: | ---: |");
      const row = (source: string, microseconds: number) =>
        `| ${source} | ${us(microseconds)} | ${(100 * microseconds / f.microsecondsPerCall).toFixed(0)}% |`;
      for (const s of f.statements.slice(0, shown)) {
        lines.push(row(`\`${s.source.replaceAll("|", "\\|")}\``, s.microseconds));
      }
      const top = f.statements.slice(0, shown).reduce((sum, s) => sum + s.microseconds, 0);
      lines.push(
        row(
          `the other ${Math.max(0, f.statements.length - shown)} statements, IF and loop conditions`,
          f.microsecondsPerCall - top,
        ),
        "",
      );
    }
    lines.push(
      "Relation locks held at the end of each call (one per table or index and lock mode). PostgreSQL 15 keeps 16 per " +
        "backend in fast-path slots; the rest go through the shared lock table, whose partition locks every " +
        "connection taking the same relations queues on (`LWLock:LockManager`): " +
        profile.locks.map((l) => `\`${l.name}\` ${l.held} (${l.held - l.fastPath} in the shared table)`).join(", ") +
        ".",
      "",
    );
  }
  if (viewTimes.length) {
    lines.push("### Cost views at scale", "");
    lines.push(
      "Generated calls over a year (10,000 users, 8 models, 5 features, every status) with the rollups settlement " +
        "would have left. Median of 15 runs after 3 warm-ups, in ms.",
      "",
    );
    const names = Object.keys(views);
    lines.push(
      `| ai_api_calls rows | generated in | usage_daily rows | user_usage_daily rows | ${names.join(" | ")} |`,
    );
    lines.push(`| ---: | ---: | ---: | ---: | ${names.map(() => "---:").join(" | ")} |`);
    for (const v of viewTimes) {
      lines.push(
        `| ${v.rows.toLocaleString()} | ${v.generationSeconds.toFixed(0)} s | ${v.rollupRows.toLocaleString()} | ` +
          `${v.userRollupRows.toLocaleString()} | ${names.map((n) => ms(v.times[n])).join(" | ")} |`,
      );
    }
    const largest = viewTimes.at(-1);
    if (largest) {
      const worst = Math.max(largest.times.daily_cost_summary, largest.times.budget_status);
      lines.push(
        "",
        `Goal: daily_cost_summary and budget_status under 50 ms at ${largest.rows.toLocaleString()} rows — ` +
          `**${worst < 50 ? "met" : "not met"}** (slowest: ${ms(worst)} ms).`,
      );
    }
  }
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------------------------------

if (import.meta.main) {
  const dir = await Deno.makeTempDir({ prefix: "tollgate-bench-db-" });
  if (Deno.uid() === 0) await Deno.chmod(dir, 0o755);
  const cluster = await startCluster(`${dir}/pgdata`, { fresh: true });
  const admin = postgres(cluster.adminUrl, { max: 1, onnotice: () => {} });
  const sql = postgres(cluster.url, { max: 2, onnotice: () => {} });
  try {
    await applyMigrations(cluster.url);
    postmasterPid = Number((await Deno.readTextFile(`${dir}/pgdata/postmaster.pid`)).split("\n")[0]);
    const [{ version }] = await sql`select current_setting('server_version') as version`;
    const versions = `PostgreSQL ${version}, postgres.js 3.4.9, Deno ${Deno.version.deno}`;

    const ids = await prepareThroughput(admin, sql);
    const throughput: Throughput[] = [];
    if (connectionCounts.length) {
      // The first cell would otherwise pay for what follows the bulk load (autovacuum, cold caches, the client's JIT).
      progress("warming up (not measured)");
      await admin`vacuum analyze`;
      await denoThroughput(sqlPairs(cluster.url, 10), cluster.url, ids, 10, "plain");
      await admin`vacuum analyze`;
      await admin`alter system set autovacuum = off`;
      await admin`select pg_reload_conf()`;
    }
    const load = { before: await loadAverage() };
    const clients: Record<Client, (connections: number, variant: Variant) => Promise<Raw | undefined>> = {
      deno: (connections, v) => denoThroughput(sqlPairs(cluster.url, connections), cluster.url, ids, connections, v),
      ledger: (connections, v) => denoThroughput(ledgerPairs(cluster.url), cluster.url, ids, connections, v),
      pgbench: (connections, v) => pgbenchThroughput(cluster.url, connections, v),
      batched: (connections, v) => pgbenchBatchThroughput(cluster.url, connections, v),
    };
    for (const [client, measure] of Object.entries(clients) as [Client, typeof clients[Client]][]) {
      for (const connections of connectionCounts) {
        throughput.push(...await measureCell(admin, sql, client, connections, (v) => measure(connections, v)));
      }
    }
    let profile: PairProfile | undefined;
    if (connectionCounts.length) {
      progress(`profiling ${profiledPairs} pairs on one connection`);
      await resetPairTables(admin);
      profile = await profilePairs(cluster.adminUrl, ids);
    }
    const baseline = connectionCounts.length ? await measureBaseline(admin, cluster.url) : [];
    await setVariant(sql, "plain");
    await admin`alter system reset autovacuum`;
    await admin`select pg_reload_conf()`;

    const viewTimes: ViewTimes[] = [];
    let generated = 0;
    for (const size of sizes) {
      const started = performance.now();
      await generateCalls(admin, generated + 1, size - generated);
      generated = size;
      await rebuildRollups(admin);
      const generationSeconds = (performance.now() - started) / 1000;
      const [{ rows, rollup, users: userRows }] = await admin`
        select (select count(*) from public.ai_api_calls)::int as rows,
          (select count(*) from tollgate.usage_daily)::int as rollup,
          (select count(*) from public.user_usage_daily)::int as users`;
      progress(`timing the views at ${rows.toLocaleString()} rows`);
      viewTimes.push({
        rows,
        generationSeconds,
        rollupRows: rollup,
        userRollupRows: userRows,
        times: await timeViews(sql),
      });
    }

    const markdown = report(versions, throughput, baseline, profile, viewTimes, load);
    if (args.out) await Deno.writeTextFile(args.out, markdown + "\n");
    console.log(markdown);
  } finally {
    await sql.end();
    await admin.end();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
}
