/**
 * The load generator: a closed loop of `concurrency` workers sending the same request over
 * keep-alive connections, in a process of its own so it never takes the event loop of the
 * server it measures. It reads its job (a `LoadJob`) as JSON on stdin; on stdout it writes the
 * line `measuring` when the warm-up is over (so the caller can start its own counters), then
 * a `LoadResult` as JSON.
 *
 * A request counts as served only with status 200 and a complete body: for streams, the body
 * must end with `data: [DONE]`, so a stream cut short is an error, not a fast answer.
 */

export interface LoadJob {
  url: string;
  headers: Record<string, string>;
  body: string;
  /** Sent round robin as `Authorization: Bearer <token>` (many users); else `headers` decide. */
  tokens?: string[];
  stream: boolean;
  concurrency: number;
  /** Requests sent first and not measured (connections, JIT, caches). */
  warmup: number;
  /** Measured requests; or, with `durationMs`, run for that long instead. */
  requests: number;
  durationMs?: number;
  /** No single request may take longer than this (ms). */
  timeoutMs: number;
}

export interface LoadResult {
  /** Wall time of the measured part (ms). */
  wallMs: number;
  ok: number;
  /** Failure reason → count. */
  errors: Record<string, number>;
  /** Per served request (ms): until the body was complete, and until its first body chunk. */
  latencies: number[];
  ttfbs: number[];
  /** Served requests per second of the measured part, to see whether a long run slows down. */
  perSecond: number[];
  /** CPU time of this process during the measured part (ms), to tell its load from others'. */
  cpuMs: number;
}

/** User + system CPU time of this process (ms; Linux clock ticks are 10 ms). */
function ownCpuMs(): number {
  const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const decoder = new TextDecoder();

async function once(job: LoadJob, index: number, result: LoadResult | undefined, origin: number): Promise<void> {
  const headers = { ...job.headers };
  if (job.tokens?.length) headers.authorization = `Bearer ${job.tokens[index % job.tokens.length]}`;
  const started = performance.now();
  let ttfb = -1;
  let tail = "";
  let failure: string | undefined;
  try {
    const response = await fetch(job.url, {
      method: "POST",
      headers,
      body: job.body,
      signal: AbortSignal.timeout(job.timeoutMs),
    });
    const reader = response.body!.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (ttfb < 0 && value.length > 0) ttfb = performance.now() - started;
      // Only the end matters (the [DONE] check); keep the last few bytes.
      tail = (tail + decoder.decode(value)).slice(-64);
    }
    if (response.status !== 200) failure = `HTTP ${response.status}`;
    else if (job.stream && !tail.trimEnd().endsWith("data: [DONE]")) failure = "stream ended without [DONE]";
  } catch (error) {
    failure = error instanceof Error ? `${error.name}: ${error.message}`.slice(0, 120) : String(error);
  }
  if (!result) return;
  if (failure) {
    result.errors[failure] = (result.errors[failure] ?? 0) + 1;
    return;
  }
  const now = performance.now();
  result.ok++;
  result.latencies.push(now - started);
  const second = Math.floor((now - origin) / 1000);
  while (result.perSecond.length <= second) result.perSecond.push(0);
  result.perSecond[second]++;
  result.ttfbs.push(ttfb);
}

/** Runs `count` requests (or until `until`, a performance.now() deadline) over `concurrency` workers. */
async function drive(
  job: LoadJob,
  count: number,
  until: number,
  first: number,
  result: LoadResult | undefined,
): Promise<void> {
  const origin = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < count && performance.now() < until) await once(job, first + next++, result, origin);
  };
  await Promise.all(Array.from({ length: job.concurrency }, worker));
}

export async function runLoad(job: LoadJob, warm: () => Promise<void>): Promise<LoadResult> {
  await drive(job, job.warmup, Infinity, 0, undefined);
  await warm();
  const result: LoadResult = { wallMs: 0, ok: 0, errors: {}, latencies: [], ttfbs: [], perSecond: [], cpuMs: 0 };
  const cpuBefore = ownCpuMs();
  const started = performance.now();
  const until = job.durationMs ? started + job.durationMs : Infinity;
  await drive(job, job.durationMs ? Infinity : job.requests, until, job.warmup, result);
  result.wallMs = performance.now() - started;
  result.cpuMs = ownCpuMs() - cpuBefore;
  return result;
}

if (import.meta.main) {
  const job: LoadJob = JSON.parse(await new Response(Deno.stdin.readable).text());
  const write = (text: string) => Deno.stdout.write(new TextEncoder().encode(text)).then(() => {});
  const result = await runLoad(job, () => write("measuring\n"));
  await write(JSON.stringify(result));
}
