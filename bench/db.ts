/**
 * The database benchmark: what Tollgate's SQL API sustains and how fast the cost views answer.
 *
 *   1. Admission + settlement throughput: closed-loop workers, each calling tollgate.admit then tollgate.settle for a
 *      random user of 20,000 (on a bench-only tier whose limits are out of reach, so every layer runs and none
 *      refuses), with 1, 10 and 50 connections. Measured twice: from this Deno process through postgres.js (what the
 *      ai function does), and with pgbench, a C client, which shows the server's own capacity.
 *   2. The cost views at 1M ai_api_calls rows (and 10M with `--sizes 1000000,10000000`: generating them takes well
 *      over five minutes on 2 cores), generated with set-based SQL (a year of calls over 10,000 users, 8 models, 5 features,
 *      every status) together with the rollups they imply, exactly as settlement would have left them: the median time
 *      of daily_cost_summary, budget_status, cost_by_feature and cost_by_user (one month).
 *
 * It boots its own private cluster (tests/stack/postgres.ts, migrated with the Supabase CLI) and removes it at the end.
 *
 *   deno run -A bench/db.ts [--seconds 10] [--connections 1,10,50] [--sizes 1000000[,10000000]] [--out results.md]
 *
 * Progress goes to stderr; the Markdown report to stdout, or to --out (as bench/run.ts asks of a section).
 */
import { parseArgs } from "node:util";
import postgres from "postgres";
import { startCluster } from "../tests/stack/postgres.ts";
import { applyMigrations } from "../tests/stack/migrate.ts";
import { progress } from "../tests/stack/util.ts";

const root = new URL("../", import.meta.url).pathname;
const pgBin = "/usr/lib/postgresql/15/bin";
// The pinned Supabase CLI and PostgreSQL's tools, as scripts/ensure.sh puts them on PATH.
Deno.env.set("PATH", `${root}node_modules/.bin:${pgBin}:${Deno.env.get("PATH") ?? ""}`);

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    seconds: { type: "string", default: "10" },
    sizes: { type: "string", default: "1000000" },
    connections: { type: "string", default: "1,10,50" },
    out: { type: "string" },
  },
});
const seconds = Number(args.seconds);
const sizes = args.sizes!.split(",").filter(Boolean).map(Number);
const connectionCounts = args.connections!.split(",").filter(Boolean).map(Number);
const users = 20_000;

type Sql = ReturnType<typeof postgres>;

// ---------------------------------------------------------------------------------------------------------------------
// Throughput

interface Throughput {
  client: string;
  connections: number;
  pairs: number;
  perSecond: number;
  admit?: Percentiles;
  settle?: Percentiles;
  pair: Percentiles;
  errors: number;
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
  // A lookup table for pgbench (which cannot pick a random uuid from a list by itself).
  await admin`create schema bench`;
  await admin`create table bench.users as select row_number() over (order by id) as n, id from auth.users`;
  await admin`alter table bench.users add primary key (n)`;
  await admin`grant usage on schema bench to postgres`;
  await admin`grant select on bench.users to postgres`;
  await admin`analyze`;
  return (await sql`select id from bench.users order by n`).map((row) => row.id as string);
}

const admitRequest = (requestId: string, userId: string) => ({
  request_id: requestId,
  user_id: userId,
  model: "gpt-4o-mini",
  estimated_input_tokens: 200,
  max_output_tokens: 256,
  estimated_cost_usd: 0.0002,
});

const settleCall = (requestId: string, userId: string) => ({
  request_id: requestId,
  user_id: userId,
  provider: "openai",
  model: "gpt-4o-mini",
  status: "success",
  input_tokens: 200,
  output_tokens: 100,
  latency_ms: 300,
  cost_usd: 0.00009,
  attempts_detail: [{ provider: "openai", model: "gpt-4o-mini", ok: true, status: 200 }],
});

/** Closed loop from Deno: `connections` workers, each admit → settle → admit … for `seconds`. */
async function denoThroughput(url: string, ids: string[], connections: number): Promise<Throughput> {
  const sql = postgres(url, { max: connections, onnotice: () => {} });
  const admitTimes: number[] = [];
  const settleTimes: number[] = [];
  const pairTimes: number[] = [];
  let errors = 0;
  const run = async (until: number, record: boolean) => {
    await Promise.all(Array.from({ length: connections }, async () => {
      while (performance.now() < until) {
        const requestId = crypto.randomUUID();
        const userId = ids[Math.floor(Math.random() * ids.length)];
        const t0 = performance.now();
        try {
          const [{ a }] = await sql`select tollgate.admit(${sql.json(admitRequest(requestId, userId))}) as a`;
          const t1 = performance.now();
          if (!a.allowed) throw new Error(`refused: ${a.code}`);
          await sql`select tollgate.settle(${sql.json(settleCall(requestId, userId))})`;
          const t2 = performance.now();
          if (record) {
            admitTimes.push(t1 - t0);
            settleTimes.push(t2 - t1);
            pairTimes.push(t2 - t0);
          }
        } catch (error) {
          if (record) errors++;
          if (errors === 1) progress(`error: ${(error as Error).message}`);
        }
      }
    }));
  };
  try {
    await run(performance.now() + 2000, false); // warm-up: connections, plans, caches
    const started = performance.now();
    await run(started + seconds * 1000, true);
    const elapsed = (performance.now() - started) / 1000;
    return {
      client: "Deno (postgres.js)",
      connections,
      pairs: pairTimes.length,
      perSecond: pairTimes.length / elapsed,
      admit: percentiles(admitTimes),
      settle: percentiles(settleTimes),
      pair: percentiles(pairTimes),
      errors,
    };
  } finally {
    await sql.end();
  }
}

/** The same pair from pgbench (prepared statements, one transaction per call, like the Deno client). */
async function pgbenchThroughput(url: string, connections: number): Promise<Throughput | undefined> {
  const pgbench = `${pgBin}/pgbench`;
  if (!(await Deno.stat(pgbench).then(() => true, () => false))) return undefined;
  const script = await Deno.makeTempFile({ suffix: ".sql" });
  await Deno.writeTextFile(
    script,
    [
      `\\set n random(1, ${users})`,
      `select id as uid, gen_random_uuid() as rid from bench.users where n = :n \\gset`,
      `select tollgate.admit(jsonb_build_object('request_id', :rid::uuid, 'user_id', :uid::uuid, 'model', 'gpt-4o-mini',` +
      ` 'estimated_input_tokens', 200, 'max_output_tokens', 256, 'estimated_cost_usd', 0.0002)) is not null;`,
      `select tollgate.settle(jsonb_build_object('request_id', :rid::uuid, 'user_id', :uid::uuid, 'provider', 'openai',` +
      ` 'model', 'gpt-4o-mini', 'status', 'success', 'input_tokens', 200, 'output_tokens', 100, 'latency_ms', 300,` +
      ` 'cost_usd', 0.00009, 'attempts_detail', jsonb_build_array(jsonb_build_object('provider', 'openai',` +
      ` 'model', 'gpt-4o-mini', 'ok', true, 'status', 200)))) is not null;`,
    ].join("\n") + "\n",
  );
  try {
    const pgbenchRun = async (duration: number) =>
      await new Deno.Command(pgbench, {
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
    await pgbenchRun(2);
    const output = await pgbenchRun(seconds);
    const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
    const tps = Number(text.match(/tps = ([\d.]+)/)?.[1] ?? NaN);
    const processed = Number(text.match(/number of transactions actually processed: (\d+)/)?.[1] ?? 0);
    const failed = Number(text.match(/number of failed transactions: (\d+)/)?.[1] ?? 0);
    const average = Number(text.match(/latency average = ([\d.]+) ms/)?.[1] ?? NaN);
    return {
      client: "pgbench (C)",
      connections,
      pairs: processed,
      perSecond: tps,
      pair: { p50: average, p95: NaN, p99: NaN },
      errors: failed,
    };
  } finally {
    await Deno.remove(script);
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
    insert into tollgate.budget_periods (budget_id, period_start, reserved_total_usd)
    select budget_id, period_start, sum(released_usd) from tollgate.budget_settlements group by 1, 2`;
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
        `2 s warm-up. Latencies in ms. The machine's 1-minute load average just before: ${load.before} ` +
        `(on ${navigator.hardwareConcurrency} CPUs; anything else running takes cores from these numbers).`,
      "",
    );
    lines.push(
      "| client | connections | pairs/s | admit p50 | admit p99 | settle p50 | settle p99 | pair p50 | pair p99 | errors |",
    );
    lines.push("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const t of throughput) {
      lines.push(
        `| ${t.client} | ${t.connections} | ${Math.round(t.perSecond).toLocaleString()} | ${ms(t.admit?.p50)} | ` +
          `${ms(t.admit?.p99)} | ${ms(t.settle?.p50)} | ${ms(t.settle?.p99)} | ${ms(t.pair.p50)}` +
          `${t.client.startsWith("pgbench") ? " (avg)" : ""} | ${ms(t.pair.p99)} | ${t.errors} |`,
      );
    }
    const best = Math.max(...throughput.map((t) => t.perSecond));
    lines.push(
      "",
      `Goal: at least 3,000 pairs/s on this machine — **${best >= 3000 ? "met" : "not met"}** ` +
        `(best: ${Math.round(best).toLocaleString()} pairs/s).`,
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
    const [{ version }] = await sql`select current_setting('server_version') as version`;
    const versions = `PostgreSQL ${version}, postgres.js 3.4.9, Deno ${Deno.version.deno}`;

    const ids = await prepareThroughput(admin, sql);
    const load = { before: await loadAverage() };
    const throughput: Throughput[] = [];
    for (const connections of connectionCounts) {
      progress(`throughput from Deno with ${connections} connection(s), ${seconds} s`);
      throughput.push(await denoThroughput(cluster.url, ids, connections));
    }
    for (const connections of connectionCounts) {
      progress(`throughput from pgbench with ${connections} connection(s), ${seconds} s`);
      const result = await pgbenchThroughput(cluster.url, connections);
      if (result) throughput.push(result);
    }

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

    const markdown = report(versions, throughput, viewTimes, load);
    if (args.out) await Deno.writeTextFile(args.out, markdown + "\n");
    console.log(markdown);
  } finally {
    await sql.end();
    await admin.end();
    await cluster.stop();
    await Deno.remove(dir, { recursive: true });
  }
}
