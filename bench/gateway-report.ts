/**
 * The gateway benchmark's Markdown section: the settings, a table per kind of call, the
 * throughput ratios, the issue's goals each marked met or not as measured, and the memory soak.
 */
export type TargetName = "direct" | "floor" | "portkey" | "tollgate" | "tollgate-queue";

/** How a target is named in the tables. */
const targetLabels: Record<TargetName, string> = {
  direct: "direct",
  floor: "floor",
  portkey: "portkey",
  tollgate: "tollgate",
  "tollgate-queue": "tollgate (queue on, no contention)",
};

const targetOrder = Object.keys(targetLabels) as TargetName[];

/** What the report says about how the numbers were taken. */
export interface ReportSettings {
  concurrencies: number[];
  /** Measured requests per cell at concurrency 10 and 50, and at 1. */
  requests: number;
  requestsAtOne: number;
  /** A cell's warm-up: max(warmupMin, 10 × concurrency) requests. */
  warmupMin: number;
  words: number;
  users: number;
  /** Other processes' CPU (cores) above which a cell was measured again. */
  quietCores: number;
  /** The ceilings the provider keys carry in the queue-on variant. */
  ceilings: { maxInFlight: number };
}

/** A Tollgate cell's reservations (warm-up included): did its admissions take the queue's step? */
export interface UpstreamCheck {
  admitted: number;
  /** Naming a provider key. */
  keyed: number;
  /** Holding an in-flight slot: granted by tollgate.upstream_admission. */
  slots: number;
}

export interface Accounting {
  admitted: number;
  calls: number;
  cached: number;
  unsettled: number;
  /** Tickets written to the provider queue in the whole run: requests told to wait for the provider. */
  queueTickets: number;
}

export interface Cell {
  target: TargetName;
  stream: boolean;
  concurrency: number;
  requests: number;
  ok: number;
  errors: Record<string, number>;
  rps: number;
  p50: number;
  p99: number;
  ttfb50: number;
  ttfb99: number;
  /** CPU ms per served request, by process group. */
  cpu: Record<string, number>;
  /** CPU used by processes outside the benchmark during the cell, in cores (noise). */
  otherCores: number;
  wallMs: number;
  /** Tollgate only: ms after the last response until every reservation was settled (null: never). */
  settleLagMs?: number | null;
  /** Resident memory of the target's process after the cell (MB), when watched. */
  rssMb?: number;
  /** Tollgate only: what the cell's reservations show about the upstream step. */
  upstream?: UpstreamCheck;
}

/** The function process's memory at one moment, in MB. */
export interface Memory {
  /** The process's resident set (VmRSS). */
  rss: number;
  /**
   * Its isolate's used V8 heap plus external memory: what Supabase's edge runtime counts
   * against a worker's 256 MB. Most of the RSS is the Deno runtime, which the platform shares
   * between workers.
   */
  isolate: number;
}

export interface Soak {
  seconds: number;
  /** `at`: seconds since the soak started. */
  samples: ({ at: number } & Memory)[];
  fresh: Memory;
  before: Memory;
  /** Right after a full collection, under load: after the first minute, and 5 s before the end. */
  collected: { start: Memory & { at: number }; end: Memory & { at: number } };
  afterIdle: Memory;
  served: number;
  errors: Record<string, number>;
  perSecond: number[];
  /** CPU used by processes outside the benchmark during the soak, in cores (noise). */
  otherCores: number;
}

const f1 = (n: number | undefined) => n === undefined || Number.isNaN(n) ? "–" : n.toFixed(1);
const f2 = (n: number | undefined) => n === undefined || Number.isNaN(n) ? "–" : n.toFixed(2);
const signed = (n: number) => Number.isNaN(n) ? "–" : `${n >= 0 ? "+" : ""}${n.toFixed(2)}`;
const ratio = (a?: Cell, b?: Cell) => a && b ? `${(a.rps / b.rps).toFixed(2)}×` : "–";

const settleLag = (c: Cell) =>
  c.settleLagMs === undefined
    ? ""
    : c.settleLagMs === null
    ? " (**settlements unfinished after 30 s**)"
    : ` (settle lag ${c.settleLagMs.toFixed(0)} ms)`;

/**
 * RSS is sampled every second, to show the collector's sawtooth (some 30 MB deep) and the trend
 * through it. The trend is context, not the goal: the collector's cycles last up to a minute or
 * more, so neighbouring samples rise and fall together, and a slope over five minutes of them
 * scattered from -1.6 to +3.8 MB/min between the last two full runs. The goal compares two
 * measurements taken right after a full collection instead (Soak.collected).
 */
export const SOAK_SAMPLE_SECONDS = 1;

/**
 * Steady start and end: the medians of the first and the last minute of samples under load
 * (a shorter soak: of its first and last sixth). Memory follows the garbage collector in a
 * sawtooth some 30 MB deep, so one sample against another would judge where each fell in it.
 * Slope: over the second half. Peak: the highest sample.
 */
function soakTrend(soak: Soak, of: keyof Memory): { start: number; end: number; slope: number; peak: number } {
  const underLoad = soak.samples.length > 2 ? soak.samples.slice(1, -1) : soak.samples;
  const span = Math.max(1, Math.min(Math.round(60 / SOAK_SAMPLE_SECONDS), Math.floor(underLoad.length / 6)));
  return {
    start: median(underLoad.slice(0, span).map((s) => s[of])),
    end: median(underLoad.slice(-span).map((s) => s[of])),
    slope: slopePerMinute(soak.samples.filter((s) => s.at >= soak.seconds / 2).map((s) => ({ at: s.at, mb: s[of] }))),
    peak: Math.max(...soak.samples.map((s) => s[of])),
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * Theil–Sen slope of memory over time, in MB per minute: the median of the slopes between every
 * pair of samples. A least-squares fit follows the garbage collector's sawtooth: one sample
 * 25 MB high at the end of 30 tilts it by about 1 MB/min, while the median of the pairwise
 * slopes moves only when most of the series rises.
 */
function slopePerMinute(samples: { at: number; mb: number }[]): number {
  const slopes: number[] = [];
  for (let i = 0; i < samples.length; i++) {
    for (let j = i + 1; j < samples.length; j++) {
      const dt = samples[j].at - samples[i].at;
      if (dt > 0) slopes.push((samples[j].mb - samples[i].mb) / dt * 60);
    }
  }
  return slopes.length ? median(slopes) : NaN;
}

export function report(
  settings: ReportSettings,
  cells: Cell[],
  soak: Soak | undefined,
  accounting: Accounting | undefined,
  versions: Record<string, string>,
  freshMb?: number,
): string {
  const find = (target: TargetName, stream: boolean, concurrency: number) =>
    cells.find((c) => c.target === target && c.stream === stream && c.concurrency === concurrency);
  const out: string[] = [];
  const line = (text = "") => out.push(text);

  line("## Gateways side by side");
  line();
  line(
    `Versions: Deno ${versions.deno}` +
      (versions.postgres ? `, PostgreSQL ${versions.postgres}` : "") +
      (versions.portkey ? `, @portkey-ai/gateway ${versions.portkey} on Node ${versions.node}` : "") + ".",
  );
  line();
  line("Settings:");
  line();
  line(
    `- Request: \`POST /v1/chat/completions\`, model \`gpt-4o-mini\`, one user message, ` +
      `a ${settings.words}-word reply from the local provider (\`[[mock words=${settings.words}]]\`), ` +
      "no `stream_options` (streamed cells: `stream: true`); `accept-encoding: identity`.",
  );
  line(
    `- Per cell: ${settings.requestsAtOne} measured requests at concurrency 1, ${settings.requests} at 10 and 50, ` +
      `after a warm-up of max(${settings.warmupMin}, 10 × concurrency) requests; before the first cell, a warm-up round of ` +
      `1,000 plain and 1,000 streamed requests per target (Tollgate: ${settings.users.toLocaleString("en")} of ` +
      "each, one per user, so that every user's access token has been verified once, as a signed-in user's is " +
      "after their first call). Closed loop: each of the concurrent workers sends its next request when the " +
      "previous answer is complete.",
  );
  line(
    "- Client: bench/load.ts, Deno `fetch` with keep-alive, its own process. Every server is its own " +
      "process too: the provider (tests/stack/provider.ts), the floor (bench/floor-proxy.ts), Portkey " +
      "(`start-server.js --headless`, `NODE_ENV=production`, routed with `x-portkey-provider: openai` and " +
      "`x-portkey-custom-host`), Tollgate (tests/stack/serve.ts, the function as Supabase serves it). All on " +
      "127.0.0.1, all sharing the machine's cores.",
  );
  line(
    `- Tollgate: ${settings.users} users on a bench tier (a minute and an hour window, limits out of reach, no ` +
      "quota), requests round robin over their access tokens (ES256, verified against the inline JWKS); " +
      "feature `default`; PostgreSQL from the local stack (durability off: `fsync`, `synchronous_commit` and " +
      "`full_page_writes` are off, as in the tests). Each Tollgate cell ends only when every reservation is " +
      "settled (the settle lag column).",
  );
  line(
    `- Tollgate (queue on, no contention): the same function process and users, measured next to the ` +
      "tollgate row of each cell (the two take turns going first), with upstream discipline switched on: the " +
      "provider keys the function registers (`primary` for `OPENAI_API_KEY` and `ANTHROPIC_API_KEY`) carry an " +
      "in-flight ceiling no cell reaches " +
      `(max_in_flight ${settings.ceilings.maxInFlight.toLocaleString("en-US")}), so every admission takes ` +
      "`tollgate.upstream_admission` (calls in flight counted, a grant under the provider's shared lock) and " +
      "holds an in-flight slot until settlement, and none waits. In the plain tollgate rows the keys are registered " +
      "without ceilings (as in any deployment): admission reads them and skips that step. Per-minute ceilings " +
      "serialize admissions on the provider's exclusive lock: the database section measures them.",
  );
  line(
    "- Portkey: its Node server uses `@hono/node-server`, pinned to 1.14.1 in bench/portkey: later versions " +
      "make it answer every streamed call with a 500 (`TypeError: immutable`, Portkey-AI/gateway#1389, #1550).",
  );
  line(
    "- Added latency: the target's p50 (p99) minus the direct p50 (p99) of the same cell. " +
      "TTFB: until the first chunk of the response body. CPU: user + system time per served request, " +
      "from /proc, of the target's process, the provider and (Tollgate) PostgreSQL.",
  );
  line(
    `- The machine may be shared: the run starts when it is quiet, and a cell during which processes outside ` +
      `the benchmark used more than ${settings.quietCores} cores is measured again (twice at most). "Other CPU" is ` +
      "what they used during the cell that was kept, in cores.",
  );
  line();

  for (const stream of [false, true]) {
    line(`### ${stream ? "Streamed" : "Non-streamed"} chat completions`);
    line();
    const head = ["target", "conc.", "req/s", "p50 ms", "p99 ms", "added p50", "added p99"];
    if (stream) head.push("TTFB p50", "TTFB p99");
    head.push("CPU ms/req (target / provider / postgres)", "other CPU", "errors");
    line(`| ${head.join(" | ")} |`);
    line(`|${head.map((h) => h === "target" ? "---" : "---:").join("|")}|`);
    for (const concurrency of settings.concurrencies) {
      const direct = find("direct", stream, concurrency);
      const rows = cells.filter((c) => c.stream === stream && c.concurrency === concurrency);
      // In the targets' order, whichever ran first.
      rows.sort((a, b) => targetOrder.indexOf(a.target) - targetOrder.indexOf(b.target));
      for (const c of rows) {
        const row = [
          targetLabels[c.target] + settleLag(c),
          String(concurrency),
          c.rps.toFixed(0),
          f2(c.p50),
          f2(c.p99),
          c.target === "direct" || !direct ? "–" : signed(c.p50 - direct.p50),
          c.target === "direct" || !direct ? "–" : signed(c.p99 - direct.p99),
        ];
        if (stream) row.push(f2(c.ttfb50), f2(c.ttfb99));
        row.push(
          [c.target === "direct" ? undefined : c.cpu.target, c.cpu.provider, c.cpu.postgres].map(f2).join(" / "),
          c.otherCores.toFixed(2),
          c.ok === c.requests ? "0" : `${c.requests - c.ok}: ${Object.keys(c.errors).join("; ")}`,
        );
        line(`| ${row.join(" | ")} |`);
      }
    }
    line();
  }

  const watched = [...new Set(cells.filter((c) => c.rssMb !== undefined).map((c) => c.target))];
  if (watched.length) {
    line("Resident memory (MB) of each server process after each of its cells, in run order:");
    line();
    for (const target of watched) {
      const list = cells.filter((c) => c.target === target)
        .map((c) => `${c.stream ? "streamed" : "plain"} c=${c.concurrency}: ${f1(c.rssMb)}`);
      const start = target === "tollgate" && freshMb !== undefined ? `fresh ${f1(freshMb)}, ` : "";
      line(`- ${target}: ${start}${list.join(", ")}`);
    }
    line();
  }

  line("### Ratios (throughput)");
  line();
  line("| | conc. | Tollgate / Portkey | Tollgate / floor | Portkey / floor | queue on / queue off (Tollgate) |");
  line("|---|---:|---:|---:|---:|---:|");
  for (const stream of [false, true]) {
    for (const concurrency of settings.concurrencies) {
      const t = find("tollgate", stream, concurrency);
      const p = find("portkey", stream, concurrency);
      const fl = find("floor", stream, concurrency);
      const q = find("tollgate-queue", stream, concurrency);
      line(
        `| ${stream ? "streamed" : "non-streamed"} | ${concurrency} | ${ratio(t, p)} | ${ratio(t, fl)} | ${
          ratio(p, fl)
        } | ${ratio(q, t)} |`,
      );
    }
  }
  line();
  const queueCells = cells.filter((c) => c.target === "tollgate-queue" && c.upstream);
  if (queueCells.length) {
    const admitted = queueCells.reduce((sum, c) => sum + c.upstream!.admitted, 0);
    const slots = queueCells.reduce((sum, c) => sum + c.upstream!.slots, 0);
    const plainSlots = cells.filter((c) => c.target === "tollgate" && c.upstream)
      .reduce((sum, c) => sum + c.upstream!.slots, 0);
    line(
      `Queue on / queue off: the throughput of the queue-on row over the tollgate row of the same cell. In the ` +
        `queue-on cells ${slots} of ${admitted} admissions (warm-ups included) were granted by ` +
        `\`tollgate.upstream_admission\` (they held an in-flight slot)${slots === admitted ? "" : " — **not all**"}; ` +
        `in the tollgate cells, ${plainSlots} did.` +
        (accounting
          ? accounting.queueTickets === 0
            ? " No request of the run was told to wait for the provider (no ticket was written to its queue)."
            : ` **${accounting.queueTickets} tickets were written to the provider queue**: requests were told to wait.`
          : ""),
    );
    line();
  }

  line("### Goals, as measured in this run");
  line();
  line(
    "Issue 7's goals; upstream discipline's (the queue costs close to nothing when there is no contention); and " +
      "the hosted platform's memory limit per worker.",
  );
  line();
  line("| goal | measured | met? |");
  line("|---|---|---|");
  const verdict = (ok: boolean | undefined) => ok === undefined ? "not measured" : ok ? "yes" : "**no**";
  for (const stream of [false, true]) {
    const kind = stream ? "streamed" : "non-streamed";
    const t = find("tollgate", stream, 10), p = find("portkey", stream, 10), fl = find("floor", stream, 10);
    line(
      `| Throughput at concurrency 10 ≥ 1.5 × Portkey's (${kind}) | ${ratio(t, p)} | ${
        verdict(t && p && t.rps >= 1.5 * p.rps)
      } |`,
    );
    line(
      `| Throughput at concurrency 10 ≥ 50% of the floor's (${kind}) | ${ratio(t, fl)} | ${
        verdict(t && fl && t.rps >= 0.5 * fl.rps)
      } |`,
    );
  }
  for (const stream of [false, true]) {
    const parts: string[] = [];
    let met: boolean | undefined = true;
    for (const concurrency of settings.concurrencies) {
      const d = find("direct", stream, concurrency);
      const t = find("tollgate", stream, concurrency), p = find("portkey", stream, concurrency);
      if (!d || !t || !p) {
        met = undefined;
        break;
      }
      const tAdded = t.p99 - d.p99, pAdded = p.p99 - d.p99;
      parts.push(`c=${concurrency}: ${signed(tAdded)} vs ${signed(pAdded)} ms`);
      met &&= tAdded <= pAdded;
    }
    line(
      `| p99 added latency ≤ Portkey's, at every concurrency (${stream ? "streamed" : "non-streamed"}) | ` +
        `${parts.join("; ") || "–"} | ${verdict(met)} |`,
    );
  }
  {
    const parts: string[] = [];
    let met: boolean | undefined = true;
    for (const concurrency of settings.concurrencies) {
      const t = find("tollgate", true, concurrency), fl = find("floor", true, concurrency);
      if (!t || !fl) {
        met = undefined;
        break;
      }
      parts.push(`c=${concurrency}: ${signed(t.ttfb50 - fl.ttfb50)} ms`);
      met &&= t.ttfb50 - fl.ttfb50 <= 2;
    }
    line(
      `| Streamed TTFB (p50) within 2 ms of the floor's, at every concurrency | ${parts.join("; ") || "–"} | ${
        verdict(met)
      } |`,
    );
  }
  {
    // One cell's ratio moves ±15% from run to run on a shared 2-core machine: the goal reads the
    // geometric mean over the cells, and every cell is shown.
    const parts: string[] = [];
    const logs: number[] = [];
    for (const stream of [false, true]) {
      for (const concurrency of settings.concurrencies) {
        const t = find("tollgate", stream, concurrency), q = find("tollgate-queue", stream, concurrency);
        if (!t || !q) continue;
        parts.push(`${stream ? "streamed" : "plain"} c=${concurrency}: ${ratio(q, t)}`);
        logs.push(Math.log(q.rps / t.rps));
      }
    }
    if (parts.length) {
      const mean = Math.exp(logs.reduce((sum, value) => sum + value, 0) / logs.length);
      line(
        `| Upstream discipline: queue-on throughput ≥ 0.95 × queue-off (no contention), geometric mean over the ` +
          `cells | ${mean.toFixed(2)}× (${parts.join("; ")}) | ${verdict(mean >= 0.95)} |`,
      );
    }
  }
  if (soak) {
    const { start, end } = soak.collected;
    const growth = (end.rss - start.rss) / start.rss;
    const livePerMinute = (end.isolate - start.isolate) / ((end.at - start.at) / 60);
    const flat = growth <= 0.1 && livePerMinute < 1;
    line(
      `| Resident memory flat under a ${soak.seconds >= 600 ? "10-minute" : `${soak.seconds}-s`} soak, ` +
        "each end measured right after a full collection under load (RSS at the end ≤ at the steady start + 10%, " +
        "and the isolate's live memory growing under 1 MB/min between them) | " +
        `RSS ${f1(start.rss)} → ${f1(end.rss)} MB (${signed(growth * 100)}%); isolate ${f1(start.isolate)} → ` +
        `${f1(end.isolate)} MB (${signed(livePerMinute)} MB/min) | ${verdict(flat)}${
          soak.seconds < 600 ? " (short soak: run `--soak 600` for the real test)" : ""
        } |`,
    );
    const isolate = soakTrend(soak, "isolate");
    line(
      `| The function's isolate within the edge runtime's 256 MB (used V8 heap + external memory, peak during the ` +
        `soak) | ${f1(isolate.peak)} MB (steady ${f1(isolate.start)} → ${f1(isolate.end)} MB) | ` +
        `${verdict(isolate.peak < 256)} |`,
    );
  }
  if (accounting) {
    const exact = accounting.admitted === accounting.calls && accounting.unsettled === 0 && accounting.cached === 0;
    line(
      `| Accounting: every admitted Tollgate call has its ai_api_calls row, settled, none from cache | ` +
        `${accounting.admitted} admitted, ${accounting.calls} rows, ${accounting.unsettled} unsettled, ` +
        `${accounting.cached} cached | ${verdict(exact)} |`,
    );
  }
  line();

  if (soak) {
    const rss = soakTrend(soak, "rss");
    const isolate = soakTrend(soak, "isolate");
    const tenths = Array.from({ length: 10 }, (_, i) => {
      const slice = soak.perSecond.slice(
        Math.floor(i * soak.perSecond.length / 10),
        Math.floor((i + 1) * soak.perSecond.length / 10),
      );
      return slice.reduce((a, b) => a + b, 0) / Math.max(1, slice.length);
    });
    line(`### Memory: ${soak.seconds} s soak of the Tollgate function process`);
    line();
    line(
      "Load: 10 closed-loop workers (5 non-streamed, 5 streamed) for the whole soak, the same requests and " +
        `users as above; every ${SOAK_SAMPLE_SECONDS} s, VmRSS of the function's process from /proc, and its ` +
        "isolate's used V8 heap plus external memory (`Deno.memoryUsage()`, asked from the function's server), " +
        "which is what Supabase's edge runtime holds to 256 MB per worker; most of the RSS is the Deno runtime " +
        "itself, shared between workers there. Memory follows the garbage collector up and down, in cycles of up to " +
        "a minute or more, so the goal compares two measurements taken right after a full collection (asked of " +
        "the function's server, `gc()`), both under the load: once the first minute is over, and 5 s before the " +
        "end (in a shorter soak: after its first sixth). Steady start and end are the medians of the samples of " +
        "the first and the last minute under load (of a sixth); the value before the first still carries what " +
        "the concurrency-50 cells left.",
    );
    line();
    line("| MB | RSS | isolate (heap used + external) |");
    line("|---|---:|---:|");
    const row = (what: string, rssMb: number, isolateMb: number) =>
      line(`| ${what} | ${f1(rssMb)} | ${f1(isolateMb)} |`);
    row("fresh process, before any request", soak.fresh.rss, soak.fresh.isolate);
    row("soak start, right after the benchmark cells", soak.before.rss, soak.before.isolate);
    row("steady start (median of the first minute under load)", rss.start, isolate.start);
    row(
      `after a full collection, at ${soak.collected.start.at.toFixed(0)} s`,
      soak.collected.start.rss,
      soak.collected.start.isolate,
    );
    row("peak during the soak", rss.peak, isolate.peak);
    row(
      `after a full collection, at ${soak.collected.end.at.toFixed(0)} s`,
      soak.collected.end.rss,
      soak.collected.end.isolate,
    );
    row("soak end (median of the last minute under load)", rss.end, isolate.end);
    row("5 s after the load stopped", soak.afterIdle.rss, soak.afterIdle.isolate);
    line(`| slope over the second half (Theil–Sen), MB/min | ${signed(rss.slope)} | ${signed(isolate.slope)} |`);
    line();
    line(
      `Served ${soak.served} calls (${(soak.served / soak.seconds).toFixed(0)}/s), ` +
        `${Object.values(soak.errors).reduce((a, b) => a + b, 0)} failed${
          Object.keys(soak.errors).length ? ` (${Object.keys(soak.errors).join("; ")})` : ""
        }. Throughput by tenth of the soak (req/s): ${tenths.map((t) => t.toFixed(0)).join(", ")}; ` +
        `processes outside the benchmark used ${soak.otherCores.toFixed(2)} cores on average meanwhile.`,
    );
    line();
    // Every tenth sample: the slope and the medians above use them all.
    const shown = soak.samples.filter((_, i) => i % 10 === 0 || i === soak.samples.length - 1);
    line(
      `Samples, one in ten (s: RSS / isolate MB): ${
        shown.map((s) => `${s.at.toFixed(0)}: ${s.rss.toFixed(1)} / ${s.isolate.toFixed(1)}`).join(", ")
      }.`,
    );
    line();
  }
  return out.join("\n");
}
