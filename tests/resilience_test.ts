/**
 * Resilience: the gateway loses nothing and leaks nothing under load and faults.
 *
 * 1. The soak: 10,000 requests across 200 users on a tier of their own, some users exceeding its
 *    windows on purpose (so admission says no as well as yes), mixed streaming and non-streaming,
 *    both endpoints, with faults played by the provider stand-in (429s and 5xx that clear on
 *    retry or never do, hangs past a short attempt timeout, streams and JSON answers cut
 *    mid-way), cached answers, and clients that leave mid-stream or before the answer starts.
 *    At most 50 requests are in flight. Then: every admitted request has exactly one
 *    ai_api_calls row (none missing, none twice, none for a refused request); no user ever had
 *    more admitted requests in any window than its tier allows; the rollups (user_usage_daily,
 *    tollgate.usage_daily, daily_cost_summary, the feature budget) equal the rows to the
 *    micro-dollar; no reservation is left; the provider saw no request that was not admitted.
 *    The size is TOLLGATE_SOAK_REQUESTS / TOLLGATE_SOAK_USERS / TOLLGATE_SOAK_CONCURRENCY
 *    (default 10,000 / 200 / 50: the full size runs by default).
 *
 * 2. Postgres restarted in the middle of a load, on a cluster of the test's own (stopped with
 *    `pg_ctl stop -m fast`, started again on the same data directory and port): every request
 *    answered while it is down fails closed (503 database_unavailable) and none reaches a
 *    provider; none waits for the database longer than the function's connect timeout; the
 *    settlements that were pending when it went down complete once it is back, one row per
 *    admitted call.
 *
 * 3. An admission whose answer is lost (it commits, and the connection drops before the reply):
 *    the call is refused with 503, and its reservation is released rather than charged.
 */
import assert from "node:assert/strict";
import postgres from "postgres";
import { sleep } from "../supabase/functions/_shared/runtime.ts";
import { signAccessToken } from "./stack/keys.ts";
import { startCluster } from "./stack/postgres.ts";
import { applyMigrations } from "./stack/migrate.ts";
import { startLossyRelay } from "./stack/relay.ts";
import {
  admin,
  createUser,
  isolatedModel,
  type LoggedTestGateway,
  prompt,
  settledCall,
  stack,
  startLoggedTestGateway,
  unexpectedFailure,
} from "./stack/harness.ts";

const env = (name: string, fallback: number) => Number(Deno.env.get(name) ?? fallback);
const soakRequests = env("TOLLGATE_SOAK_REQUESTS", 10_000);
const soakUsers = env("TOLLGATE_SOAK_USERS", 200);
const concurrency = env("TOLLGATE_SOAK_CONCURRENCY", 50);
/** Seeds the plan (users, kinds, order): a failure can be replayed with the same seed. */
const seed = env("TOLLGATE_SOAK_SEED", Date.now() % 1_000_000);

/** Short timeouts, so that hangs cost the soak seconds, not minutes. */
const timeouts = {
  TOLLGATE_ATTEMPT_TIMEOUT_MS: "1000",
  TOLLGATE_DEADLINE_MS: "3000",
  TOLLGATE_STREAM_IDLE_TIMEOUT_MS: "2000",
};

/** Deno.test without the per-test sanitizers (pools and servers outlive a step), with steps. */
function resilience(name: string, fn: (t: Deno.TestContext) => Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}
const step = (t: Deno.TestContext, name: string, fn: () => Promise<void> | void) =>
  t.step({ name, fn: async () => await fn(), sanitizeOps: false, sanitizeResources: false });

/** mulberry32: a small seeded PRNG. */
function random(seedValue: number): () => number {
  let a = seedValue >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function createUsers(count: number, tier: string): Promise<{ id: string; token: string }[]> {
  const ids = Array.from({ length: count }, () => crypto.randomUUID());
  await admin`
    insert into auth.users (id, aud, role, email, is_anonymous)
    select id, 'authenticated', 'authenticated', id::text || '@example.test', false
    from unnest(${ids}::uuid[]) as id`;
  await admin`insert into tollgate.user_plans (user_id, tier) select id, ${tier} from unnest(${ids}::uuid[]) as id`;
  return await Promise.all(
    ids.map(async (id) => ({ id, token: await signAccessToken(stack.signingKey, stack.supabaseUrl, { sub: id }) })),
  );
}

/** Runs `fn` over `items` with at most `limit` in flight, in order of the list. */
async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

/** Polls `check` until it returns true (then true) or `ms` pass (then false). */
async function eventually(ms: number, check: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(250);
  }
}

/** How an SSE body ended: with the end-of-answer marker, with an error event, or neither. */
function streamEnding(format: "openai" | "anthropic", text: string): "complete" | "error" | "cut" {
  const errored = format === "openai" ? /^data: \{"error":/m.test(text) : /^event: error$/m.test(text);
  const complete = format === "openai" ? /^data: \[DONE\]$/m.test(text) : /^event: message_stop$/m.test(text);
  if (errored && !complete) return "error";
  if (complete && !errored) return "complete";
  return "cut";
}

// ─── The soak ───────────────────────────────────────────────────────────────────────────────

/**
 * What a soak request asks the provider stand-in to do. `key` gives each request its own
 * `times` counter, so "fails once, then succeeds" holds per request under concurrency.
 */
interface Kind {
  name: string;
  weight: number;
  stream: boolean;
  directives: (key: string) => string;
  /** The client reads two chunks, then cancels the body. */
  leaves?: boolean;
  /** The client aborts after this many ms, before any answer. */
  givesUpAfterMs?: number;
  /** Asks for the response cache, with a prompt shared by other requests of the kind. */
  cached?: boolean;
}

const kinds: Kind[] = [
  { name: "plain", weight: 20, stream: false, directives: () => "words=5" },
  { name: "stream", weight: 16, stream: true, directives: () => "words=8" },
  { name: "slow", weight: 3, stream: false, directives: () => "latency_ms=150 words=3" },
  { name: "slow-stream", weight: 3, stream: true, directives: () => "words=10 chunk_delay_ms=20" },
  { name: "429-then-ok", weight: 6, stream: false, directives: (k) => `status=429 retry_after=0 times=1 key=${k}` },
  { name: "5xx-then-ok", weight: 3, stream: false, directives: (k) => `status=500 retry_after=0 times=2 key=${k}` },
  {
    name: "529-then-ok-stream",
    weight: 3,
    stream: true,
    directives: (k) => `status=529 retry_after=0 times=1 key=${k}`,
  },
  { name: "503-always", weight: 3, stream: false, directives: () => "status=503 retry_after=0" },
  { name: "529-always-stream", weight: 1, stream: true, directives: () => "status=529 retry_after=0" },
  { name: "hang-then-ok", weight: 3, stream: false, directives: (k) => `hang=1 times=1 key=${k}` },
  { name: "hang-always", weight: 2, stream: true, directives: () => "hang=1" },
  { name: "drop-stream", weight: 6, stream: true, directives: () => "words=20 drop_after=3" },
  { name: "drop-json", weight: 3, stream: false, directives: () => "words=20 drop_after=1" },
  { name: "client-leaves", weight: 6, stream: true, directives: () => "words=60 chunk_delay_ms=10", leaves: true },
  { name: "client-gives-up", weight: 2, stream: false, directives: () => "hang=1", givesUpAfterMs: 250 },
  { name: "cached", weight: 4, stream: false, directives: () => "words=4", cached: true },
];

interface Planned {
  index: number;
  user: number;
  kind: Kind;
  endpoint: "chat" | "messages";
  model: string;
  /** Which of the cached prompts (cached kind only). */
  variant: number;
}

interface Outcome {
  planned: Planned;
  status: number | null;
  requestId: string | null;
  layer: string | null;
  code: string | null;
  cache: string | null;
  ending: "complete" | "error" | "cut" | "left" | null;
  /** The client aborted before an answer: no status, no request id. */
  gaveUp: boolean;
  failure?: string;
}

resilience("resilience: soak — every admitted call has exactly one row, limits hold, rollups add up", async (t) => {
  const runId = crypto.randomUUID().slice(0, 8);
  const rng = random(seed);

  // A tier of the soak's own: a 2-second burst window that the clumps of concurrent requests
  // of one user fill; a 10-second window that the greedy users' pace may fill; an hour's
  // allowance that the greedy users' volume exhausts, as long as the soak lasts more than the
  // ~12 s the burst window needs to let 30 through (10,000 requests take 20 s or more, and a
  // greedy user's requests arrive at random, not packed to the burst window: a limit near what
  // the windows allow in 20 s would be filled on some runs only). `fills`: the soak must be
  // seen to fill it, or the check that it held would prove nothing.
  const tier = `soak-${runId}`;
  const windows = [
    { name: "burst", seconds: 2, max: 5, fills: true },
    { name: "ten-seconds", seconds: 10, max: 25, fills: false },
    { name: "hour", seconds: 3600, max: 30, fills: true },
  ];
  await admin`insert into tollgate.tiers (name, max_output_tokens) values (${tier}, 1024)`;
  for (const w of windows) {
    await admin`
      insert into tollgate.tier_windows (tier, name, window_seconds, max_requests)
      values (${tier}, ${w.name}, ${w.seconds}, ${w.max})`;
  }
  // A feature of its own, with a budget of its own (hard cap, far away), to check the budget's
  // month-to-date figures against the rows too.
  const feature = `soak-${runId}`;
  await admin`insert into tollgate.features (name, priority, max_tokens) values (${feature}, 'normal', 1024)`;
  const [budget] = await admin`
    insert into tollgate.budgets (scope, feature, monthly_limit_usd, hard_cap)
    values ('feature', ${feature}, 1000, true) returning id`;

  // Two routes of their own: on `steady`, breakers open only after 100 straight failures, so
  // the faults reach the provider; on `flappy`, three failures open a breaker for 2 s, so it
  // opens, half-opens and closes again and again under load.
  const steady = await isolatedModel();
  const flappy = await isolatedModel();
  await admin`
    insert into tollgate.provider_health (provider, model, failure_threshold, cooldown_seconds)
    values ('openai', ${steady.primary}, 100, 60), ('anthropic', ${steady.fallback}, 100, 60),
      ('openai', ${flappy.primary}, 3, 2), ('anthropic', ${flappy.fallback}, 3, 2)`;
  const targetModels = [steady.primary, steady.fallback, flappy.primary, flappy.fallback];

  // Users: most stay within the windows; "bursty" ones send clumps of 10 at once (the burst
  // window refuses half of each clump); "greedy" ones send more than the minute and hour allow.
  const users = await createUsers(soakUsers, tier);
  const greedy = Math.round(soakUsers / 8), bursty = Math.round(soakUsers / 8);
  const normal = soakUsers - greedy - bursty;
  const perGreedy = Math.round(soakRequests * 0.25 / greedy);
  const perBursty = Math.round(soakRequests * 0.15 / bursty / 10) * 10;
  const perNormal = Math.floor((soakRequests - perGreedy * greedy - perBursty * bursty) / normal);
  const remainder = soakRequests - perGreedy * greedy - perBursty * bursty - perNormal * normal;

  const totalWeight = kinds.reduce((sum, kind) => sum + kind.weight, 0);
  const pickKind = () => {
    let r = rng() * totalWeight;
    return kinds.find((kind) => (r -= kind.weight) < 0) ?? kinds[0];
  };
  let index = 0;
  const plan = (user: number): Planned => ({
    index: index++,
    user,
    kind: pickKind(),
    endpoint: rng() < 0.25 ? "messages" : "chat",
    model: rng() < 0.75 ? steady.model : flappy.model,
    variant: Math.floor(rng() * 10),
  });
  // Units are placed in the queue at random; a bursty user's clump stays together, so its 10
  // requests are in flight at the same time.
  const units: Planned[][] = [];
  for (let u = 0; u < soakUsers; u++) {
    if (u < normal) {
      for (let i = 0; i < perNormal + (u < remainder ? 1 : 0); i++) units.push([plan(u)]);
    } else if (u < normal + bursty) {
      for (let c = 0; c < perBursty / 10; c++) units.push(Array.from({ length: 10 }, () => plan(u)));
    } else {
      for (let i = 0; i < perGreedy; i++) units.push([plan(u)]);
    }
  }
  for (let i = units.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [units[i], units[j]] = [units[j], units[i]];
  }
  const queue = units.flat();
  assert.equal(queue.length, soakRequests);

  const gateway = await startLoggedTestGateway(timeouts);
  const rssStart = await residentMemory(gateway.process.pid);
  const outcomes: Outcome[] = [];

  async function run(p: Planned): Promise<void> {
    const user = users[p.user];
    const text = p.kind.cached ? `cache-v${p.variant}-${runId}` : `soak-${p.index}-${runId}`;
    const content = prompt(text, p.kind.directives(`${runId}-${p.index}`));
    const messages = [{ role: "user", content }];
    const body = p.endpoint === "chat"
      ? {
        model: p.model,
        messages,
        max_tokens: 64,
        ...(p.kind.stream ? { stream: true, stream_options: { include_usage: p.index % 2 === 0 } } : {}),
      }
      : { model: p.model, max_tokens: 64, messages, ...(p.kind.stream ? { stream: true } : {}) };
    const url = p.endpoint === "chat"
      ? `${gateway.openaiBase}/chat/completions`
      : `${gateway.anthropicBase}/v1/messages`;
    const outcome: Outcome = {
      planned: p,
      status: null,
      requestId: null,
      layer: null,
      code: null,
      cache: null,
      ending: null,
      gaveUp: false,
    };
    outcomes.push(outcome);
    // A soak request that takes 30 s is stuck: recorded as a failure, not waited for.
    const signal = p.kind.givesUpAfterMs ? AbortSignal.timeout(p.kind.givesUpAfterMs) : AbortSignal.timeout(30_000);
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: {
          authorization: `Bearer ${user.token}`,
          "content-type": "application/json",
          "x-tollgate-feature": feature,
          ...(p.kind.cached ? { "x-tollgate-cache-ttl": "600" } : {}),
        },
        body: JSON.stringify(body),
        signal,
      });
      outcome.status = response.status;
      outcome.requestId = response.headers.get("x-request-id");
      outcome.layer = response.headers.get("x-tollgate-layer");
      outcome.cache = response.headers.get("x-tollgate-cache");
      if (p.kind.leaves && response.status === 200) {
        const reader = response.body!.getReader();
        await reader.read();
        await reader.read();
        await reader.cancel();
        outcome.ending = "left";
        return;
      }
      const text = await response.text();
      if (response.status !== 200) {
        const json = JSON.parse(text);
        outcome.code = json.error?.code ?? null; // the same place in both wire formats
      } else if (p.kind.stream) {
        outcome.ending = streamEnding(p.endpoint === "chat" ? "openai" : "anthropic", text);
      }
    } catch (error) {
      if (p.kind.givesUpAfterMs && outcome.status === null && signal.aborted) outcome.gaveUp = true;
      else outcome.failure = `${p.kind.name}: ${error}`;
    }
  }

  const started = performance.now();
  await pool(queue, concurrency, run);
  const seconds = (performance.now() - started) / 1000;
  const rssEnd = await residentMemory(gateway.process.pid);

  // ── What the clients saw ──
  const refused = outcomes.filter((o) => o.layer !== null);
  const admitted = outcomes.filter((o) => o.layer === null && o.requestId !== null);
  const gaveUp = outcomes.filter((o) => o.gaveUp);
  const histogram: Record<string, number> = {};
  for (const o of outcomes) {
    const key = o.gaveUp ? "gave up" : `${o.status}${o.code ? ` ${o.code}` : ""}${o.layer ? ` (${o.layer})` : ""}`;
    histogram[key] = (histogram[key] ?? 0) + 1;
  }
  console.log(
    `soak (seed ${seed}): ${queue.length} requests, ${soakUsers} users, ${concurrency} in flight: ` +
      `${seconds.toFixed(1)} s, ${(queue.length / seconds).toFixed(0)} requests/s; ` +
      `${admitted.length} admitted, ${refused.length} refused, ${gaveUp.length} given up; ` +
      `function RSS ${mb(rssStart)} → ${mb(rssEnd)}\n${JSON.stringify(histogram, null, 1)}`,
  );

  await step(t, "every answer is planned: no 500, no stuck request, refusals are 429s from the windows", () => {
    const failures = outcomes.filter((o) => o.failure).map((o) => o.failure);
    assert.deepEqual(failures.slice(0, 10), [], `${failures.length} requests failed on the client side`);
    // Refusals come from the windows; admitted calls succeed or fail the way their fault says.
    const planned = new Set([
      "200 null",
      "502 upstream_stream_cut",
      "503 provider_unavailable",
      "504 provider_timeout",
    ]);
    const unexpected = outcomes.filter((o) =>
      !o.gaveUp &&
      !(o.layer !== null
        ? o.status === 429 && o.layer === "user_window" && o.code === "rate_limited"
        : planned.has(`${o.status} ${o.code}`))
    );
    assert.deepEqual(
      unexpected.slice(0, 10).map((o) => `${o.planned.kind.name}: ${o.status} ${o.code} ${o.layer}`),
      [],
      `${unexpected.length} unexpected answers`,
    );
    assert.ok(refused.length > 0, "some requests were refused by the windows");
    assert.ok(admitted.length > soakRequests / 2, "most requests were admitted");
    const unplanned = gateway.log.filter((line) => unexpectedFailure.test(line));
    assert.deepEqual(unplanned.slice(0, 10), [], `${unplanned.length} unplanned failures in the function's log`);
  });

  await step(t, "a stream cut by the provider never ends like a finished answer", () => {
    const cut = outcomes.filter((o) => o.planned.kind.name === "drop-stream" && o.status === 200);
    assert.ok(cut.length > 0);
    assert.deepEqual(cut.filter((o) => o.ending !== "error").map((o) => o.ending), []);
    const streams = outcomes.filter((o) => o.planned.kind.stream && o.status === 200 && o.ending !== "left");
    assert.deepEqual(streams.filter((o) => o.ending === "cut").map((o) => o.planned.kind.name), []);
  });

  // Settlement runs after each response: wait until every admitted call is settled.
  const userIds = users.map((u) => u.id);
  const drained = await eventually(60_000, async () => {
    const [row] = await admin`
      select
        (select count(*)::int from public.api_usage where user_id = any(${userIds}::uuid[]) and status = 'reserved')
          as reserved,
        (select count(*)::int from public.ai_api_calls where user_id = any(${userIds}::uuid[])) as calls`;
    return row.reserved === 0 && row.calls >= admitted.length;
  });
  console.log(
    `settlements drained: ${drained} (${((performance.now() - started) / 1000).toFixed(1)} s after the start)`,
  );

  const rows = await admin<{ request_id: string; user_id: string; status: string; error_code: string | null }[]>`
    select request_id::text, user_id::text, status, error_code
    from public.ai_api_calls where user_id = any(${userIds}::uuid[])`;

  await step(t, "every admitted request has exactly one ai_api_calls row; refused ones have none", () => {
    const byId = new Map<string, number>();
    for (const row of rows) byId.set(row.request_id, (byId.get(row.request_id) ?? 0) + 1);
    const missing = admitted.filter((o) => !byId.has(o.requestId!));
    assert.deepEqual(
      missing.slice(0, 10).map((o) => `${o.planned.kind.name} ${o.status}`),
      [],
      `${missing.length} missing`,
    );
    const twice = [...byId].filter(([, n]) => n > 1);
    assert.deepEqual(twice, [], "no request has two rows");
    const refusedWithRow = refused.filter((o) => byId.has(o.requestId!));
    assert.deepEqual(refusedWithRow.map((o) => o.requestId), [], "no refused request has a row");
    // Rows without a request id the client saw are the clients that gave up before the answer
    // (admitted, then settled as client_closed): never more than gave up, per user.
    const seen = new Set(admitted.map((o) => o.requestId));
    const unseen = rows.filter((row) => !seen.has(row.request_id));
    assert.deepEqual(unseen.filter((row) => row.status !== "client_closed"), [], "unseen rows are clients that left");
    const gaveUpBy = new Map<string, number>();
    for (const o of gaveUp) gaveUpBy.set(users[o.planned.user].id, (gaveUpBy.get(users[o.planned.user].id) ?? 0) + 1);
    const unseenBy = new Map<string, number>();
    for (const row of unseen) unseenBy.set(row.user_id, (unseenBy.get(row.user_id) ?? 0) + 1);
    for (const [user, n] of unseenBy) assert.ok(n <= (gaveUpBy.get(user) ?? 0), `user ${user}: ${n} unseen rows`);
  });

  await step(t, "refusals were logged, and no reservation is left: api_usage matches the rows one to one", async () => {
    const refusedIds = refused.map((o) => o.requestId!);
    const [logged] = await admin`
      select count(*)::int as n from tollgate.rejections where request_id = any(${refusedIds}::uuid[])`;
    assert.equal(logged.n, refused.length, "each refusal is in tollgate.rejections");
    const usage = await admin<{ status: string; n: number }[]>`
      select status, count(*)::int as n from public.api_usage where user_id = any(${userIds}::uuid[]) group by status`;
    assert.deepEqual([...usage], [{ status: "settled", n: rows.length }], "every reservation settled, none expired");
    const [orphans] = await admin`
      select count(*)::int as n from public.api_usage as u
      where u.user_id = any(${userIds}::uuid[])
        and not exists (select from public.ai_api_calls as c where c.request_id = u.request_id)`;
    assert.equal(orphans.n, 0, "no reservation without its row");
  });

  await step(t, "no user ever had more admitted requests in a window than the tier allows", async () => {
    for (const w of windows) {
      // For each admitted request: how many of its user's requests were admitted in the window
      // that ended with it, (t - window, t] as admission counts them (timestamps are in µs).
      const [worst] = await admin`
        select coalesce(max(n), 0)::int as n from (
          select count(*) over (
            partition by user_id order by created_at
            range between ${`${w.seconds * 1_000_000 - 1} microseconds`}::interval preceding and current row
          ) as n
          from public.api_usage where user_id = any(${userIds}::uuid[])
        ) as counted`;
      console.log(`window ${w.name} (${w.seconds} s, limit ${w.max}): at most ${worst.n} per user`);
      assert.ok(worst.n <= w.max, `window ${w.name}: a user had ${worst.n} admitted requests (limit ${w.max})`);
      if (w.fills) assert.equal(worst.n, w.max, `window ${w.name} was filled: the soak tested it`);
    }
  });

  await step(t, "the rollups equal the rows to the micro-dollar", async () => {
    const [calls] = await admin`
      select count(*)::int as calls, coalesce(sum(estimated_cost), 0)::text as cost,
        coalesce(sum(input_tokens), 0)::bigint::text as input, coalesce(sum(output_tokens), 0)::bigint::text as output,
        count(*) filter (where status = 'success')::int as success, count(*) filter (where status = 'error')::int as error,
        count(*) filter (where status = 'timeout')::int as timeout,
        count(*) filter (where status = 'client_closed')::int as client_closed,
        count(*) filter (where cached)::int as cache_hits
      from public.ai_api_calls where user_id = any(${userIds}::uuid[])`;
    console.log(`rows: ${JSON.stringify(calls)}`);
    assert.ok(Number(calls.cost) > 0);
    // A call that produced tokens is never recorded as free (streamed ones included); only
    // cache hits and calls that never got an answer cost nothing.
    const [free] = await admin`
      select count(*)::int as n from public.ai_api_calls
      where user_id = any(${userIds}::uuid[]) and not cached and output_tokens > 0
        and (estimated_cost = 0 or not priced)`;
    assert.equal(free.n, 0, "calls with output are priced");

    const [perUser] = await admin`
      select coalesce(sum(calls), 0)::int as calls, coalesce(sum(cost_usd), 0)::text as cost,
        coalesce(sum(input_tokens), 0)::bigint::text as input, coalesce(sum(output_tokens), 0)::bigint::text as output,
        coalesce(sum(reserved_tokens), 0)::bigint::text as reserved_tokens,
        coalesce(sum(reserved_cost_usd), 0)::text as reserved_cost
      from public.user_usage_daily where user_id = any(${userIds}::uuid[])`;
    assert.deepEqual(
      { calls: perUser.calls, cost: perUser.cost, input: perUser.input, output: perUser.output },
      { calls: calls.calls, cost: calls.cost, input: calls.input, output: calls.output },
      "user_usage_daily",
    );
    assert.equal(Number(perUser.reserved_tokens), 0, "no tokens left reserved");
    assert.equal(Number(perUser.reserved_cost), 0, "no cost left reserved");

    const [perFeature] = await admin`
      select coalesce(sum(calls), 0)::int as calls, coalesce(sum(cost_usd), 0)::text as cost,
        coalesce(sum(input_tokens), 0)::bigint::text as input, coalesce(sum(output_tokens), 0)::bigint::text as output,
        coalesce(sum(success_calls), 0)::int as success, coalesce(sum(error_calls), 0)::int as error,
        coalesce(sum(timeout_calls), 0)::int as timeout, coalesce(sum(client_closed_calls), 0)::int as client_closed,
        coalesce(sum(cache_hits), 0)::int as cache_hits
      from tollgate.usage_daily where feature = ${feature}`;
    assert.deepEqual(perFeature, calls, "tollgate.usage_daily");

    const [summary] = await admin`
      select coalesce(sum(total_calls), 0)::int as calls, coalesce(sum(total_cost), 0)::text as cost
      from public.daily_cost_summary where model = any(${targetModels})`;
    const [byModel] = await admin`
      select count(*)::int as calls, coalesce(sum(estimated_cost), 0)::text as cost
      from public.ai_api_calls where model = any(${targetModels})`;
    assert.deepEqual(summary, byModel, "daily_cost_summary");
    assert.equal(byModel.calls, calls.calls, "every soak row is on the soak's models");

    const [status] = await admin`
      select spent_usd::text as spent, reserved_usd::text as reserved, calls::int as calls
      from public.budget_status where budget_id = ${budget.id}`;
    assert.equal(Number(status.spent), Number(calls.cost), "the feature budget's month-to-date spend");
    assert.equal(status.spent, calls.cost);
    assert.equal(Number(status.reserved), 0, "nothing left reserved on the budget");
    // Cache hits cost nothing and reserve nothing: the budget counts the calls it was charged for.
    assert.equal(status.calls, calls.calls - calls.cache_hits);
  });

  await step(t, "the provider saw no request that was not admitted", () => {
    const byIndex = new Map(outcomes.map((o) => [o.planned.index, o]));
    const cachedCalls = new Map<number, number>();
    const strays: string[] = [];
    for (const request of gateway.provider.requests) {
      const text = JSON.stringify(request.body);
      const index = text.match(new RegExp(`soak-(\\d+)-${runId}`))?.[1];
      const variant = text.match(new RegExp(`cache-v(\\d+)-${runId}`))?.[1];
      if (index !== undefined) {
        const o = byIndex.get(Number(index));
        if (!o || o.layer !== null) strays.push(`request ${index}: ${o?.status} ${o?.layer}`);
      } else if (variant !== undefined) {
        cachedCalls.set(Number(variant), (cachedCalls.get(Number(variant)) ?? 0) + 1);
      } else {
        strays.push(`an unknown request: ${text.slice(0, 200)}`);
      }
    }
    assert.deepEqual(strays.slice(0, 10), [], `${strays.length} provider requests without an admitted call`);
    for (const [variant, n] of cachedCalls) {
      const misses = admitted.filter((o) =>
        o.planned.kind.cached && o.planned.variant === variant && o.cache !== "hit"
      );
      // A miss may take up to 6 attempts (3 per provider); it cannot take more.
      assert.ok(n <= misses.length * 6, `cached prompt ${variant}: ${n} provider calls for ${misses.length} misses`);
    }
  });

  await gateway.process.stop();
  await gateway.provider.close();
});

function mb(bytes: number | undefined): string {
  return bytes === undefined ? "?" : `${(bytes / (1 << 20)).toFixed(0)} MB`;
}

/** A process's resident memory in bytes (Linux), or undefined where /proc is not there. */
async function residentMemory(pid: number): Promise<number | undefined> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`).catch(() => "");
  const kilobytes = status.match(/^VmRSS:\s+(\d+) kB/m)?.[1];
  return kilobytes ? Number(kilobytes) * 1024 : undefined;
}

// ─── Postgres restarted mid-load ────────────────────────────────────────────────────────────

resilience("resilience: Postgres restarted mid-load — fail closed while down, nothing lost after", async (t) => {
  // A cluster of the test's own: stopping the shared one would break every other test.
  const directory = await Deno.makeTempDir({ prefix: "tollgate-restart-" });
  if (Deno.uid() === 0) await Deno.chmod(directory, 0o755);
  const dataDir = `${directory}/pgdata`;
  let cluster = await startCluster(dataDir, { fresh: true });
  const db = postgres(cluster.adminUrl, { max: 2, onnotice: () => {} });
  let gateway: LoggedTestGateway | undefined;
  try {
    await applyMigrations(cluster.url);
    const tier = "restart";
    await db`insert into tollgate.tiers (name) values (${tier})`;
    await db`insert into tollgate.tier_windows (tier, name, window_seconds, max_requests) values (${tier}, 'minute', 60, 100000)`;
    const userId = crypto.randomUUID();
    await db`insert into auth.users (id, aud, role, email) values (${userId}, 'authenticated', 'authenticated', 'r@example.test')`;
    await db`insert into tollgate.user_plans (user_id, tier) values (${userId}, ${tier})`;
    const token = await signAccessToken(stack.signingKey, stack.supabaseUrl, { sub: userId });
    gateway = await startLoggedTestGateway({ SUPABASE_DB_URL: cluster.url });
    const url = `${gateway.openaiBase}/chat/completions`;

    interface Call {
      nonce: string;
      sentAt: number;
      endedAt: number;
      status: number;
      code: string | null;
      retryAfter: string | null;
      requestId: string | null;
    }
    const calls: Call[] = [];
    // Quick calls; streams that last ~2 s and answers that take 1.5 s to start, so that some
    // admitted calls end, and must be settled, while the database is down.
    const shapes = [
      { stream: false, directives: "words=3" },
      { stream: true, directives: "words=20 chunk_delay_ms=100" },
      { stream: false, directives: "latency_ms=1500 words=3" },
    ];
    const runId = crypto.randomUUID().slice(0, 8);
    /** One call, recorded; its nonce lets the provider's log be matched to it. */
    const send = async (nonce: string, shape: { stream: boolean; directives: string }): Promise<Call> => {
      const sentAt = Date.now();
      const response = await fetch(url, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "gpt-4o-mini",
          max_tokens: 32,
          stream: shape.stream,
          messages: [{ role: "user", content: prompt(nonce, shape.directives) }],
        }),
        // A gateway that holds a call forever fails the test rather than hanging it.
        signal: AbortSignal.timeout(60_000),
      });
      const text = await response.text();
      const call: Call = {
        nonce,
        sentAt,
        endedAt: Date.now(),
        status: response.status,
        code: response.status === 200 ? null : JSON.parse(text).error?.code ?? null,
        retryAfter: response.headers.get("retry-after"),
        requestId: response.headers.get("x-request-id"),
      };
      calls.push(call);
      return call;
    };
    let sending = true;
    let counter = 0;
    const worker = async () => {
      while (sending) {
        const n = counter++;
        const call = await send(`restart-${n}-${runId}`, shapes[n % shapes.length]);
        if (call.status !== 200) await sleep(20);
      }
    };
    const workers = Array.from({ length: 12 }, worker);

    await sleep(2500);
    const stopping = Date.now();
    await cluster.stop();
    const down = Date.now();
    // While it is down, besides the workers (whose calls may be held), a new call every 250 ms
    // without waiting for the previous one: requests made all through the outage, for long
    // enough (12 s, a short restart on a hosted project) that a client library's reconnect
    // backoff shows if it holds them.
    const probes: Promise<Call>[] = [];
    const prober = setInterval(() => probes.push(send(`restart-p${probes.length}-${runId}`, shapes[0])), 250);
    await sleep(12_000);
    clearInterval(prober);
    const restarting = Date.now();
    cluster = await startCluster(dataDir, { fresh: false, port: cluster.port });
    const up = Date.now();
    // From the moment the database is back, probe with one new call at a time until one is admitted.
    const recovery = (async () => {
      for (let n = 0; Date.now() - up < 30_000; n++) {
        const call = await send(`restart-r${n}-${runId}`, shapes[0]);
        if (call.status === 200) return call;
        await sleep(100);
      }
    })();
    await sleep(2000);
    sending = false;
    await Promise.all([...workers, ...probes]);
    const recovered = await recovery;
    console.log(
      `restart: stop took ${down - stopping} ms, down ${restarting - down} ms, start took ${up - restarting} ms; ` +
        `${calls.length} calls`,
    );

    const admitted = calls.filter((c) => c.status === 200);
    const failedClosed = (c: Call) => c.status === 503 && c.code === "database_unavailable" && c.retryAfter !== null;
    const sentWhileDown = calls.filter((c) => c.sentAt >= down && c.sentAt < restarting);
    const answeredWhileDown = sentWhileDown.filter((c) => c.endedAt <= restarting);
    const pendingSettlements = admitted.filter((c) => c.endedAt >= down && c.endedAt <= restarting);

    await step(t, "every request answered while the database is down fails closed: 503 database_unavailable", () => {
      assert.ok(
        answeredWhileDown.length > 0,
        `none of the ${sentWhileDown.length} requests made during the outage was answered before it ended`,
      );
      assert.deepEqual(answeredWhileDown.filter((c) => !failedClosed(c)).map((c) => `${c.status} ${c.code}`), []);
      const others = calls.filter((c) => c.status !== 200 && !failedClosed(c));
      assert.deepEqual(others.map((c) => `${c.status} ${c.code}`), [], "nothing else but success or fail-closed");
    });

    await step(t, "once the database is back, new calls are admitted again within 5 s", () => {
      // Probed for up to 30 s; a gateway that keeps refusing for longer than its connect
      // timeout after the database is back is down for no reason of the database's.
      console.log(
        `restart: a new call was admitted ${recovered ? (recovered.endedAt - up) / 1000 : "never"} s after the restart`,
      );
      assert.ok(recovered, "a new call is admitted within 30 s of the restart");
      assert.ok(recovered.endedAt - up <= 5_000, `the first new call was admitted ${recovered.endedAt - up} ms after`);
    });

    await step(
      t,
      "no request made while the database is down waits longer than the connect timeout (5 s)",
      async () => {
        // The decision (a 503, or admission once the database is back) must come promptly: a
        // request held until the database returns ties up the function and the client, and a
        // flood of them is a backlog that lands all at once on the database when it comes back.
        const ids = sentWhileDown.filter((c) => c.status === 200).map((c) => c.requestId!);
        const admittedAt = new Map(
          (await db<{ request_id: string; at: number }[]>`
          select request_id::text, extract(epoch from created_at) * 1000 as at
          from public.api_usage where request_id = any(${ids}::uuid[])`).map((r) => [r.request_id, Number(r.at)]),
        );
        const waits = sentWhileDown.map((c) => ({
          call: c,
          waitedMs: c.status === 200 ? (admittedAt.get(c.requestId!) ?? Infinity) - c.sentAt : c.endedAt - c.sentAt,
        }));
        const slow = waits.filter((w) => w.waitedMs > 6_000);
        assert.deepEqual(
          slow.map((w) => `${w.call.nonce}: ${w.call.status} after ${(w.waitedMs / 1000).toFixed(1)} s`),
          [],
          `${slow.length} of ${sentWhileDown.length} requests made during the outage waited for the database`,
        );
      },
    );

    await step(t, "no request reached the provider without being admitted", () => {
      const admittedNonces = new Set(calls.filter((c) => c.status === 200).map((c) => c.nonce));
      const unmetered = gateway!.provider.requests
        .map((r) => JSON.stringify(r.body).match(/restart-[pr]?\d+-[0-9a-f]{8}/)?.[0])
        .filter((nonce) => !nonce || !admittedNonces.has(nonce));
      assert.deepEqual(unmetered, [], "every provider call belongs to an admitted request");
    });

    await step(
      t,
      "settlements pending during the outage complete after recovery: one row per admitted call",
      async () => {
        assert.ok(pendingSettlements.length > 0, "some admitted calls ended while the database was down");
        const everyAdmitted = calls.filter((c) => c.status === 200); // the recovery calls too
        const ids = everyAdmitted.map((c) => c.requestId!);
        // The function retries settlement, and the abandonment of admissions it got no answer
        // to, for about a minute.
        const settled = await eventually(75_000, async () => {
          const [row] = await db`
          select
            (select count(*)::int from public.ai_api_calls where request_id = any(${ids}::uuid[])) as n,
            (select count(*)::int from public.api_usage where user_id = ${userId} and status = 'reserved') as reserved
          `.catch(() => [{ n: -1, reserved: -1 }]);
          return row.n === ids.length && row.reserved === 0;
        });
        const rows = await db<{ request_id: string }[]>`
        select request_id::text from public.ai_api_calls where user_id = ${userId}`;
        const rowIds = new Set(rows.map((r) => r.request_id));
        const missing = everyAdmitted.filter((c) => !rowIds.has(c.requestId!));
        assert.ok(settled, `${missing.length} admitted calls were never settled`);
        assert.deepEqual(missing.map((c) => c.nonce), []);
        assert.equal(rows.length, rowIds.size, "no request has two rows");
        const refusedIds = new Set(calls.filter((c) => c.status !== 200).map((c) => c.requestId));
        assert.deepEqual(rows.filter((r) => refusedIds.has(r.request_id)), [], "no row for a refused request");
        assert.equal(rows.length, everyAdmitted.length, "exactly one row per admitted call");
        const usage = await db<{ status: string; n: number }[]>`
        select status, count(*)::int as n from public.api_usage where user_id = ${userId} group by status`;
        assert.deepEqual([...usage], [{ status: "settled", n: everyAdmitted.length }], "no reservation left behind");
        // Requests refused while the database was down are abandoned when their admissions may
        // have committed (the answer lost, not a connection refused): refused ones only.
        const abandoned = await db<{ request_id: string; released: boolean }[]>`
        select request_id::text, released from tollgate.abandoned_requests where user_id = ${userId}`;
        assert.deepEqual(abandoned.filter((a) => !refusedIds.has(a.request_id)), [], "only refused requests abandoned");
        const [sums] = await db`
        select
          (select coalesce(sum(estimated_cost), 0)::text from public.ai_api_calls where user_id = ${userId}) as rows,
          (select coalesce(sum(cost_usd), 0)::text from public.user_usage_daily where user_id = ${userId}) as rollup,
          (select coalesce(sum(reserved_cost_usd), 0)::text from public.user_usage_daily where user_id = ${userId})
            as reserved`;
        assert.equal(sums.rollup, sums.rows, "the rollup equals the rows");
        assert.equal(Number(sums.reserved), 0);
        console.log(
          `restart: ${everyAdmitted.length} admitted, ${answeredWhileDown.length} refused while down, ` +
            `${pendingSettlements.length} settlements pending during the outage, all settled, ` +
            `${abandoned.length} refused requests abandoned ` +
            `(${abandoned.filter((a) => a.released).length} had reserved, and were released) ` +
            `(${gateway!.log.filter((line) => /^settlement of .* retrying$/.test(line)).length} retries logged)`,
        );
      },
    );

    const unplanned = gateway.log.filter((line) => unexpectedFailure.test(line));
    assert.deepEqual(unplanned, [], "nothing unplanned in the function's log");
  } finally {
    await gateway?.process.stop();
    await gateway?.provider.close();
    await db.end({ timeout: 1 });
    await cluster.stop().catch(() => {});
    await Deno.remove(directory, { recursive: true }).catch(() => {});
  }
});

// ─── An admission's answer lost ─────────────────────────────────────────────────────────────

resilience("resilience: an admission whose answer is lost is refused (503), and its reservation released", async () => {
  const relay = startLossyRelay(stack.functionEnv.SUPABASE_DB_URL);
  let gateway: LoggedTestGateway | undefined;
  try {
    gateway = await startLoggedTestGateway({ SUPABASE_DB_URL: relay.url });
    const user = await createUser();
    const send = (nonce: string) =>
      fetch(`${gateway!.openaiBase}/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: "gpt-4o-mini",
          max_tokens: 16,
          messages: [{ role: "user", content: prompt(nonce, "words=3") }],
        }),
        signal: AbortSignal.timeout(30_000),
      });

    const lost = relay.loseAnswerTo("tollgate.admit(", 300);
    const refused = await send("lost-answer");
    await lost;
    assert.equal(refused.status, 503);
    assert.equal((await refused.json()).error.code, "database_unavailable");
    const requestId = refused.headers.get("x-request-id");
    assert.ok(requestId);

    // The admission committed a reservation the gateway never heard of: once the request is
    // abandoned, the reservation is gone, and no call row charges it.
    const released = await eventually(10_000, async () => {
      const [row] = await admin`select released from tollgate.abandoned_requests where request_id = ${requestId}`;
      return row?.released === true;
    });
    assert.ok(released, "the lost admission's reservation was released");
    const [reservations] = await admin`select count(*)::int as n from public.api_usage where user_id = ${user.id}`;
    assert.equal(reservations.n, 0);
    const [counters] = await admin`
      select coalesce(sum(reserved_tokens), 0)::int as tokens, coalesce(sum(reserved_cost_usd), 0)::float8 as cost
      from public.user_usage_daily where user_id = ${user.id}`;
    assert.deepEqual({ ...counters }, { tokens: 0, cost: 0 }, "nothing stays reserved for the user");
    const [calls] = await admin`select count(*)::int as n from public.ai_api_calls where user_id = ${user.id}`;
    assert.equal(calls.n, 0, "no call row for the refused request");
    assert.deepEqual(gateway.provider.requests.filter((r) => JSON.stringify(r.body).includes("lost-answer")), []);

    const next = await send("after-the-loss");
    assert.equal(next.status, 200, "the next call is admitted on a new connection");
    await next.body?.cancel();
    const row = await settledCall(next.headers.get("x-request-id"));
    assert.equal(row.status, "success");
    assert.deepEqual(gateway.log.filter((line) => unexpectedFailure.test(line)), []);
  } finally {
    await gateway?.process.stop();
    await gateway?.provider.close();
    relay.close();
  }
});
