/**
 * The gateway benchmark (issue 7): chat completions, plain and streamed, at several
 * concurrencies, through four targets side by side in one run, all in front of the same local
 * provider process:
 *
 *   direct    the provider itself (the baseline every "added latency" is measured from)
 *   floor     bench/floor-proxy.ts, a bare Deno pass-through: the least a Deno gateway costs
 *   portkey   Portkey's open-source gateway (@portkey-ai/gateway on Node), the peer
 *   tollgate  the `ai` function, full path: JWT check, admission, provider call, settlement
 *   tollgate-queue  the same function with "upstream discipline" switched on for its providers:
 *             their keys carry an in-flight ceiling no run reaches, so every admission takes
 *             the queue's step (counts the calls in flight, grants under the provider's shared
 *             lock) and holds a slot, and none waits: the queue's cost without contention
 *
 * Then a soak: steady mixed load on the Tollgate function process while its resident memory
 * is sampled. Every server and the load generator (bench/load.ts) is its own process, so none
 * steals another's event loop; all of them share this machine's cores, which is the point: the
 * same box, the same provider, the same client, one after the other, cell by cell.
 *
 * Run: deno run -A bench/gateway.ts --out <file> [--soak <s>] [--requests <n>] [--targets a,b]
 * Progress goes to stderr; the Markdown section (see bench/README.md) goes to --out.
 */
import { parseArgs } from "node:util";
import postgres from "postgres";
import { type LoadJob, type LoadResult } from "./load.ts";
import { deno, runLoad } from "./processes.ts";
import {
  type Accounting,
  type Cell,
  type Memory,
  report,
  type Soak,
  SOAK_SAMPLE_SECONDS,
  type TargetName,
  type UpstreamCheck,
} from "./gateway-report.ts";
import { cpuMs, machineBusyMs, rssMb, withChildren } from "./proc.ts";
import { sleep } from "../supabase/functions/_shared/runtime.ts";
import { startStack } from "../tests/stack/stack.ts";
import { type GatewayProcess, startGateway } from "../tests/stack/gateway.ts";
import { signAccessToken } from "../tests/stack/keys.ts";
import { freePort, type Server, spawnServer } from "../tests/stack/util.ts";
import { providerKeys } from "../supabase/functions/_shared/providers/keys.ts";

const benchDir = new URL(".", import.meta.url).pathname;
const providerKey = "local-provider-key";

// ---------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string" },
    soak: { type: "string", default: "60" },
    requests: { type: "string", default: "2000" },
    targets: { type: "string", default: "direct,floor,portkey,tollgate,tollgate-queue" },
    users: { type: "string", default: "2000" },
  },
});

const settings = {
  concurrencies: [1, 10, 50],
  /** Measured requests per cell; concurrency 1 takes a quarter (it is latency, not throughput). */
  requests: Number(args.requests),
  soakSeconds: Number(args.soak),
  /**
   * Tollgate callers. Admission counts a user's requests in each window, so per-user volume
   * matters: with 2,000 users even the 10-minute soak keeps each under ~100 requests an hour,
   * what a paying user of a real tier sends.
   */
  users: Number(args.users),
  /** 20 words from the provider: small, so the gateway's own work dominates. */
  words: 20,
  timeoutMs: 30_000,
};
const targets = args.targets!.split(",") as TargetName[];
const requestsAt = (concurrency: number) => concurrency === 1 ? Math.ceil(settings.requests / 4) : settings.requests;
/**
 * A cell's unmeasured warm-up: at least this many requests. A target whose previous cell ended
 * seconds ago (Portkey's streamed cell at concurrency 1 lasts some 15 s) answers its first hundred
 * or so requests slower: measured with 50, the first fifth of such a cell had a median latency 40%
 * over its last fifth, where the cell after it, warm, had none.
 */
const warmupMin = 250;
const warmupAt = (concurrency: number) => Math.max(warmupMin, concurrency * 10);

interface Target {
  name: TargetName;
  /** Chat completions URL. */
  url: string;
  headers: Record<string, string>;
  tokens?: string[];
  /** The processes whose CPU time the target costs (server, then what only it uses). */
  pids: () => Record<string, number[]>;
  /** Waits until the work the target defers (settlement) is done; ms it took, undefined: never. */
  drain?: () => Promise<number | undefined>;
  /** Resident memory of the target's process (MB), when it is watched. */
  rss?: () => Promise<number>;
  /** Puts shared state in this target's shape before its warm-up and each of its cells. */
  prepare?: () => Promise<void>;
  /** What the reservations made since `since` show about the upstream step (Tollgate). */
  upstream?: (since: Date) => Promise<UpstreamCheck>;
}

function requestBody(stream: boolean): string {
  return JSON.stringify({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: `Write a short line. [[mock words=${settings.words}]]` }],
    ...(stream ? { stream: true } : {}),
  });
}

// Compression is off on every hop the client controls: it would measure zlib, not gateways.
const commonHeaders = { "content-type": "application/json", "accept-encoding": "identity" };

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

const say = (message: string) => console.error(`\x1b[1mbench:\x1b[0m ${message}`);

/** Installs the pinned Portkey gateway into bench/portkey (once), from its lockfile. */
async function ensurePortkey(): Promise<string> {
  const dir = `${benchDir}portkey`;
  const installed = await Deno.readTextFile(`${dir}/node_modules/@portkey-ai/gateway/package.json`)
    .then((text) => JSON.parse(text).version as string, () => undefined);
  const wanted = JSON.parse(await Deno.readTextFile(`${dir}/package.json`)).dependencies["@portkey-ai/gateway"];
  if (installed !== wanted) {
    say(`installing @portkey-ai/gateway ${wanted} into bench/portkey (npm ci)`);
    const { success } = await new Deno.Command("npm", {
      args: ["ci", "--no-audit", "--no-fund", "--loglevel=error"],
      cwd: dir,
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (!success) throw new Error("npm ci in bench/portkey failed (see above)");
  }
  return wanted;
}

async function startPortkey(): Promise<Server> {
  const dir = `${benchDir}portkey`;
  const port = freePort();
  const server = await spawnServer(
    "node",
    [
      "--import",
      "./loopback.mjs",
      "node_modules/@portkey-ai/gateway/build/start-server.js",
      `--port=${port}`,
      "--headless",
    ],
    /Ready for connections/,
    { cwd: dir, url: `http://127.0.0.1:${port}`, env: { NODE_ENV: "production" } },
  );
  const hello = await fetch(`${server.url}/`).then((r) => r.text());
  if (!hello.includes("AI Gateway")) throw new Error(`Portkey did not answer as expected: ${hello.slice(0, 200)}`);
  return server;
}

/**
 * This machine may be shared: waits until the processes that are not ours leave it nearly idle,
 * so that a neighbour's test run does not end up in our numbers. All the waiting of one run
 * comes out of one budget; once it is spent the run goes on, and the noise is reported.
 */
async function waitForQuiet(): Promise<void> {
  let warned = false;
  for (;;) {
    const before = machineBusyMs();
    const started = performance.now();
    await sleep(2000);
    const cores = (machineBusyMs() - before) / 2000;
    waitBudgetMs -= performance.now() - started;
    if (cores < quietCores) return;
    if (waitBudgetMs <= 0) {
      if (!warned) say(`the machine is still busy (${cores.toFixed(2)} cores in use); measuring anyway`);
      return;
    }
    if (!warned) say(`the machine is busy (${cores.toFixed(2)} cores in use by other processes); waiting`);
    warned = true;
  }
}

/** The queue-on variant's ceilings: far beyond what any cell sends. */
const ceilings = { maxInFlight: 100_000 };

/** How long one run may wait, in all, for the machine to be quiet. */
let waitBudgetMs = 15 * 60_000;

/** Other processes may use this much CPU (in cores) during a cell before it is measured again. */
const quietCores = 0.15;

// ---------------------------------------------------------------------------------------
// Cells
// ---------------------------------------------------------------------------------------

/** Nearest-rank percentile of an ascending array (NaN when empty). */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(p / 100 * sorted.length) - 1)];
}

function summarize(
  target: TargetName,
  stream: boolean,
  concurrency: number,
  result: LoadResult,
  cpu: Record<string, number>,
  busyMs: number,
): Cell {
  const ours = Object.values(cpu).reduce((a, b) => a + b, 0) + result.cpuMs;
  const latencies = result.latencies.toSorted((a, b) => a - b);
  const ttfbs = result.ttfbs.toSorted((a, b) => a - b);
  return {
    target,
    stream,
    concurrency,
    requests: result.ok + Object.values(result.errors).reduce((a, b) => a + b, 0),
    ok: result.ok,
    errors: result.errors,
    rps: result.ok / (result.wallMs / 1000),
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    ttfb50: percentile(ttfbs, 50),
    ttfb99: percentile(ttfbs, 99),
    cpu: Object.fromEntries(Object.entries(cpu).map(([k, ms]) => [k, ms / Math.max(1, result.ok)])),
    otherCores: Math.max(0, busyMs - ours) / result.wallMs,
    wallMs: result.wallMs,
  };
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/** The targets in `order`, the plain and the queue-on Tollgate rows the other way round. */
function withTollgateRowsSwapped(order: TargetName[]): TargetName[] {
  const plain = order.indexOf("tollgate");
  const queueOn = order.indexOf("tollgate-queue");
  if (plain < 0 || queueOn < 0) return order;
  const swapped = [...order];
  [swapped[plain], swapped[queueOn]] = [swapped[queueOn], swapped[plain]];
  return swapped;
}

function jobFor(target: Target, stream: boolean, concurrency: number, extra: Partial<LoadJob> = {}): LoadJob {
  return {
    url: target.url,
    headers: { ...commonHeaders, ...target.headers },
    tokens: target.tokens,
    body: requestBody(stream),
    stream,
    concurrency,
    warmup: warmupAt(concurrency),
    requests: requestsAt(concurrency),
    timeoutMs: settings.timeoutMs,
    ...extra,
  };
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  if (!args.out) throw new Error("usage: gateway.ts --out <file> [--soak s] [--requests n] [--targets list]");
  const stops: (() => Promise<void>)[] = [];
  const tempDir = await Deno.makeTempDir({ prefix: "tollgate-bench-" });
  const cleanUp = async () => {
    for (const stop of stops.splice(0).reverse()) await stop().catch((error) => say(`stopping: ${error}`));
    await Deno.remove(tempDir, { recursive: true }).catch(() => {});
  };
  // Interrupted, it still stops what it started: PostgreSQL runs detached and would outlive us.
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      say("interrupted: stopping the servers");
      cleanUp().finally(() => Deno.exit(130));
    });
  }
  // Postgres runs as its own OS user when we are root; it must reach its data directory.
  if (Deno.uid() === 0) await Deno.chmod(tempDir, 0o755);
  try {
    say("starting the local provider");
    const provider = await spawnServer(...deno(`${benchDir}provider.ts`), /provider listening on (\S+)/);
    stops.push(provider.stop);
    const providerHeaders = { authorization: `Bearer ${providerKey}` };

    const all: Partial<Record<TargetName, Target>> = {};
    const versions: Record<string, string> = { deno: Deno.version.deno };
    all.direct = {
      name: "direct",
      url: `${provider.url}/v1/chat/completions`,
      headers: providerHeaders,
      pids: () => ({ provider: [provider.pid] }),
    };

    if (targets.includes("floor")) {
      const floor = await spawnServer(...deno(`${benchDir}floor-proxy.ts`, provider.url), /floor listening on (\S+)/);
      stops.push(floor.stop);
      all.floor = {
        name: "floor",
        url: `${floor.url}/v1/chat/completions`,
        headers: providerHeaders,
        pids: () => ({ target: [floor.pid], provider: [provider.pid] }),
        rss: () => rssMb(floor.pid),
      };
    }

    if (targets.includes("portkey")) {
      versions.portkey = await ensurePortkey();
      versions.node = (await new Deno.Command("node", { args: ["--version"] }).output().then((o) =>
        new TextDecoder().decode(o.stdout).trim()
      )).replace(/^v/, "");
      say("starting Portkey's gateway");
      const portkey = await startPortkey();
      stops.push(portkey.stop);
      all.portkey = {
        name: "portkey",
        url: `${portkey.url}/v1/chat/completions`,
        headers: {
          ...providerHeaders,
          "x-portkey-provider": "openai",
          "x-portkey-custom-host": `${provider.url}/v1`,
        },
        pids: () => ({ target: [portkey.pid], provider: [provider.pid] }),
        rss: () =>
          rssMb(portkey.pid),
      };
    }

    let tollgate: Awaited<ReturnType<typeof startTollgate>> | undefined;
    if (targets.includes("tollgate") || targets.includes("tollgate-queue")) {
      tollgate = await startTollgate(`${tempDir}/pgdata`, provider.url);
      stops.push(tollgate.stop);
      versions.postgres = tollgate.postgresVersion;
      const { gateway, postmaster } = tollgate;
      const tollgateTarget = (name: "tollgate" | "tollgate-queue"): Target => ({
        name,
        url: `${gateway.url}/functions/v1/ai/v1/chat/completions`,
        headers: {},
        tokens: tollgate!.tokens,
        pids: () => ({ target: [gateway.pid], provider: [provider.pid], postgres: withChildren(postmaster) }),
        drain: tollgate!.drain,
        prepare: () => tollgate!.ceilings(name === "tollgate-queue"),
        upstream: tollgate!.upstream,
      });
      // One function process serves both: only the keys' ceilings differ, switched before each cell.
      if (targets.includes("tollgate")) all.tollgate = { ...tollgateTarget("tollgate"), rss: () => rssMb(gateway.pid) };
      if (targets.includes("tollgate-queue")) all["tollgate-queue"] = tollgateTarget("tollgate-queue");
    }

    // Cells: plain then streamed; for each concurrency, every target one after the other, so
    // that whatever drifts during the run (heat, the database growing) touches them all alike.
    // A warm-up round first, so every server's JIT is as warm as the others' when its first
    // cell is measured (Node and Deno both keep optimizing for thousands of requests). For
    // Tollgate it is at least one call per user: the function verifies an access token once and
    // then knows it until it expires, as it knows a signed-in user's after their first call;
    // otherwise the first cell would verify a signature on every call of a user not seen yet.
    await waitForQuiet();
    for (const target of Object.values(all)) {
      const requests = Math.max(1000, target.tokens?.length ?? 0);
      say(`${target.name}: warm-up round (${(2 * requests).toLocaleString("en")} requests, not measured)`);
      await target.prepare?.();
      for (const stream of [false, true]) {
        await runLoad(jobFor(target, stream, 10, { warmup: 0, requests }), 5 * 60_000);
        await target.drain?.();
      }
    }

    const cells: Cell[] = [];
    const order = ["direct", ...targets.filter((t) => t !== "direct")] as TargetName[];
    let cellIndex = 0;
    for (const stream of [false, true]) {
      for (const concurrency of settings.concurrencies) {
        // The two Tollgate rows take turns going first, so that neither always runs on a
        // database the other has just grown.
        for (const name of cellIndex++ % 2 === 0 ? order : withTollgateRowsSwapped(order)) {
          const target = all[name];
          if (!target) continue;
          say(
            `${name}: ${stream ? "streamed" : "plain"}, concurrency ${concurrency}, ${
              requestsAt(concurrency)
            } requests`,
          );
          const cell = await measure(target, stream, concurrency);
          say(
            `  ${cell.rps.toFixed(0)} req/s, p50 ${cell.p50.toFixed(2)} ms, p99 ${cell.p99.toFixed(2)} ms` +
              (cell.ok < cell.requests ? `, ${cell.requests - cell.ok} FAILED: ${JSON.stringify(cell.errors)}` : ""),
          );
          cells.push(cell);
        }
      }
    }

    const soak = tollgate && settings.soakSeconds > 0 ? await runSoak(all.tollgate!, tollgate) : undefined;
    const accounting = tollgate ? await tollgate.accounting() : undefined;
    await Deno.writeTextFile(
      args.out,
      report(
        {
          concurrencies: settings.concurrencies,
          requests: settings.requests,
          requestsAtOne: requestsAt(1),
          warmupMin,
          words: settings.words,
          users: settings.users,
          quietCores,
          ceilings,
        },
        cells,
        soak,
        accounting,
        versions,
        tollgate?.fresh.rss,
      ),
    );
    say(`section written to ${args.out}`);
  } finally {
    await cleanUp();
  }
}

/**
 * One cell. CPU is counted from the end of the warm-up to the last answer; when processes
 * outside the benchmark took more than `quietCores` meanwhile, the cell is measured again
 * (twice at most) once the machine is quiet, and the noise that remains is reported.
 */
async function measure(target: Target, stream: boolean, concurrency: number): Promise<Cell> {
  const cpuNow = () => Object.fromEntries(Object.entries(target.pids()).map(([k, pids]) => [k, cpuMs(pids, true)]));
  let cell: Cell | undefined;
  await target.prepare?.();
  for (let attempt = 1; attempt <= 3; attempt++) {
    let cpuBefore: Record<string, number> = {};
    let busyBefore = 0;
    const since = new Date();
    const result = await runLoad(jobFor(target, stream, concurrency), 10 * 60_000, () => {
      cpuBefore = cpuNow();
      busyBefore = machineBusyMs();
    });
    const busy = machineBusyMs() - busyBefore;
    const cpu = Object.fromEntries(Object.entries(cpuNow()).map(([k, ms]) => [k, ms - cpuBefore[k]]));
    cell = summarize(target.name, stream, concurrency, result, cpu, busy);
    // Deferred work must not spill into the next measurement.
    if (target.drain) cell.settleLagMs = (await target.drain()) ?? null;
    if (target.upstream) cell.upstream = await target.upstream(since);
    if (target.rss) cell.rssMb = await target.rss();
    // CPU times tick in 10 ms steps: on a cell shorter than a second that alone looks like noise.
    if (cell.otherCores < quietCores || cell.otherCores * cell.wallMs < 100 || waitBudgetMs <= 0) break;
    say(`  other processes used ${cell.otherCores.toFixed(2)} cores meanwhile: measuring again`);
    await waitForQuiet();
  }
  return cell!;
}

/** The local stack plus a function process of our own (its pid is what the soak watches). */
async function startTollgate(dataDir: string, providerUrl: string) {
  say("starting the local stack (PostgreSQL, migrations, the ai function)");
  const stack = await startStack({
    dataDir,
    fresh: true,
    providerEnv: {
      OPENAI_API_KEY: providerKey,
      OPENAI_BASE_URL: `${providerUrl}/v1`,
      ANTHROPIC_API_KEY: providerKey,
      ANTHROPIC_BASE_URL: providerUrl,
    },
  });
  // The stack's own function process stays idle; ours is the one measured, with a known pid.
  const gateway = await startGateway(stack.functionEnv);
  const fresh = await memoryOf(gateway);
  const admin = postgres(stack.adminDbUrl, { max: 1, onnotice: () => {} });
  const stop = async () => {
    await admin.end();
    await gateway.stop();
    await stack.stop();
  };
  try {
    const [{ version }] = await admin`select current_setting('server_version') as version`;
    const postmaster = Number((await Deno.readTextFile(`${dataDir}/postmaster.pid`)).split("\n")[0]);

    // A bench-only tier shaped like `pro` (a minute and an hour window, so admission does its
    // real work) with limits no benchmark reaches, and no token quota or cost cap.
    await admin.begin(async (sql) => {
      await sql`
        insert into tollgate.tiers (name, description, daily_token_quota, monthly_token_quota, monthly_cost_cap_usd)
        values ('bench', 'Benchmark users: limits out of reach.', null, null, null)`;
      await sql`
        insert into tollgate.tier_windows (tier, name, window_seconds, max_requests)
        values ('bench', 'minute', 60, 1000000000), ('bench', 'hour', 3600, 1000000000)`;
    });
    // The budget guard's jobs run on this stack as on a real one, and a benchmark's burst of spend
    // would trip its spend breaker (3× a baseline it never had time to build): not what this measures.
    await admin`update tollgate.guard_settings set anomaly_min_usd_per_hour = 1000000, throttle_percent = null`;
    const ids = Array.from(
      { length: settings.users },
      (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
    );
    await admin`
      insert into auth.users ${
      admin(
        ids.map((id) => ({
          id,
          aud: "authenticated",
          role: "authenticated",
          email: `bench-${id.slice(-4)}@tollgate.local`,
        })),
      )
    }`;
    await admin`insert into tollgate.user_plans ${admin(ids.map((user_id) => ({ user_id, tier: "bench" })))}`;
    const tokens = await Promise.all(
      ids.map((sub) => signAccessToken(stack.signingKey, stack.supabaseUrl, { sub, expiresIn: 6 * 3600 })),
    );
    // The provider keys as the function registers them on its first call (label, fingerprint of
    // the key, position), registered up front so that every cell starts with them.
    const keys = ["openai", "anthropic"].flatMap((p) =>
      providerKeys(p, stack.functionEnv).map(({ label, fingerprint, position }) => ({
        provider: p,
        label,
        fingerprint,
        position,
      }))
    );
    await admin`select tollgate.register_provider_keys(${admin.json(keys)})`;

    return {
      gateway,
      postmaster,
      tokens,
      fresh,
      postgresVersion: version as string,
      stop,
      /**
       * Queue on: every key of the function's providers gets ceilings no run reaches, so each
       * admission takes the upstream step and none waits. Queue off: no ceilings (the keys stay
       * registered, as they are in any deployment of the function).
       */
      async ceilings(on: boolean): Promise<void> {
        const c = on ? ceilings : { maxInFlight: null };
        await admin`
          update tollgate.provider_keys
          set max_in_flight = ${c.maxInFlight}`;
      },
      /** Reservations made since `since`: how many took the queue's step, how many named a key. */
      async upstream(since: Date): Promise<UpstreamCheck> {
        const [row] = await admin`
          select count(*)::int as admitted, count(provider_key)::int as keyed,
            count(*) filter (where holds_upstream_slot)::int as slots
          from public.api_usage where created_at >= ${since}`;
        return row as unknown as UpstreamCheck;
      },
      /**
       * Waits until no reservation is left unsettled; returns how long that took (ms), or
       * undefined when some were still open after 30 s (reported, not fatal: it is a finding).
       */
      async drain(): Promise<number | undefined> {
        const started = performance.now();
        while (performance.now() - started < 30_000) {
          const [{ open }] = await admin`select count(*)::int as open from public.api_usage where status = 'reserved'`;
          if (open === 0) return performance.now() - started;
          await sleep(20);
        }
        say("\x1b[31mreservations still unsettled 30 s after the load stopped\x1b[0m");
        return undefined;
      },
      /**
       * Every admitted call has exactly one row, none served from cache; and whether any request
       * of the run was told to wait for the provider (a ticket is written only then). The function's
       * sessions report their table statistics within 10 s of going idle.
       */
      async accounting() {
        await sleep(11_000);
        const [row] = await admin`
          select (select count(*) from public.api_usage)::int as admitted,
                 (select count(*) from public.ai_api_calls)::int as calls,
                 (select count(*) from public.ai_api_calls where cached)::int as cached,
                 (select count(*) from public.api_usage where status <> 'settled')::int as unsettled,
                 (select n_tup_ins from pg_stat_user_tables
                  where schemaname = 'tollgate' and relname = 'upstream_queue')::int as "queueTickets"`;
        return row as Accounting;
      },
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * The function process's resident memory, and its isolate's as the edge runtime counts it.
 * With `collect`, after a full garbage collection in the function's process: the isolate's
 * right after it, the RSS a second later, once V8's background threads have handed back the
 * pages it freed.
 */
async function memoryOf(gateway: GatewayProcess, { collect = false } = {}): Promise<Memory> {
  const usage = await fetch(`${gateway.url}/_stack/memory${collect ? "?collect" : ""}`)
    .then((r) => r.json() as Promise<{ heapUsed: number; external: number }>);
  if (collect) await sleep(1000);
  return { rss: await rssMb(gateway.pid), isolate: (usage.heapUsed + usage.external) / 2 ** 20 };
}

/** Steady mixed load (half the workers streaming) on the function process, sampling its memory. */
async function runSoak(target: Target, tollgate: Awaited<ReturnType<typeof startTollgate>>): Promise<Soak> {
  const seconds = settings.soakSeconds;
  say(`soak: ${seconds} s of steady load on the function process (memory every ${SOAK_SAMPLE_SECONDS} s)`);
  await target.prepare?.();
  const before = await memoryOf(tollgate.gateway);
  const samples = [{ at: 0, ...before }];
  const cpuBefore = Object.values(target.pids()).map((pids) => cpuMs(pids, true)).reduce((a, b) => a + b, 0);
  const busyBefore = machineBusyMs();
  const started = performance.now();
  const sampler = setInterval(async () => {
    const at = (performance.now() - started) / 1000;
    const memory = await memoryOf(tollgate.gateway);
    samples.push({ at, ...memory });
    if (samples.length % 30 === 0) {
      say(`  ${at.toFixed(0)} s: RSS ${memory.rss.toFixed(1)} MB, isolate ${memory.isolate.toFixed(1)} MB`);
    }
  }, SOAK_SAMPLE_SECONDS * 1000);
  // After a full collection, under the load: once the first minute (a sixth, in a shorter soak)
  // is over, and again just before the load ends. What the collector leaves is what a leak
  // would make grow.
  const collectAt = (second: number) =>
    new Promise<Memory & { at: number }>((resolve, reject) =>
      setTimeout(() =>
        memoryOf(tollgate.gateway, { collect: true })
          .then((memory) => resolve({ at: (performance.now() - started) / 1000, ...memory }), reject), second * 1000)
    );
  const collections = Promise.all([collectAt(Math.min(60, seconds / 6)), collectAt(seconds - 5)]);
  // Awaited once the load is over, and a failure thrown there; until then it is not unhandled.
  collections.catch(() => {});
  const jobs = [false, true].map((stream) =>
    runLoad(jobFor(target, stream, 5, { warmup: 0, requests: 0, durationMs: seconds * 1000 }), (seconds + 120) * 1000)
  );
  const results = await Promise.all(jobs);
  clearInterval(sampler);
  const wallMs = performance.now() - started;
  const ours = Object.values(target.pids()).map((pids) => cpuMs(pids, true)).reduce((a, b) => a + b, 0) - cpuBefore +
    results.reduce((sum, r) => sum + r.cpuMs, 0);
  const otherCores = Math.max(0, machineBusyMs() - busyBefore - ours) / wallMs;
  const [collectedStart, collectedEnd] = await collections;
  samples.push({ at: (performance.now() - started) / 1000, ...await memoryOf(tollgate.gateway) });
  await tollgate.drain();
  // Idle for a moment, then once more: what is left when the load is gone.
  await sleep(5000);
  const afterIdle = await memoryOf(tollgate.gateway);
  const errors: Record<string, number> = {};
  for (const r of results) for (const [k, n] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + n;
  // The last second is cut short by the end of the soak: it is left out.
  const length = Math.max(...results.map((r) => r.perSecond.length)) - 1;
  const perSecond = Array.from({ length }, (_, i) => results.reduce((sum, r) => sum + (r.perSecond[i] ?? 0), 0));
  return {
    seconds,
    samples,
    fresh: tollgate.fresh,
    before,
    collected: { start: collectedStart, end: collectedEnd },
    afterIdle,
    served: results.reduce((sum, r) => sum + r.ok, 0),
    errors,
    perSecond,
    otherCores,
  };
}

if (import.meta.main) {
  try {
    await main();
  } catch (error) {
    console.error(error);
    Deno.exit(1);
  }
}
