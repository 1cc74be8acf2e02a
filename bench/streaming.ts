/**
 * The function's stream pipeline on its own: what a streamed answer costs the function between
 * the provider's bytes and the client's (supabase/functions/_shared/streaming.ts: SSE decoding,
 * usage tracking, filtering or translation, encoding), in this process, with no network and no
 * other process sharing the cores — so it holds still where the gateway section's CPU columns
 * move with the machine. Side by side, in the same rounds, with the bare pipe: the same bytes
 * through a TransformStream that looks at nothing, which is what any proxy pays for a stream.
 *
 * Each stream is a 20-word answer as each provider sends it (OpenAI: a role chunk, 20 deltas, the
 * finish chunk, the usage chunk the gateway asks for and `[DONE]`; Anthropic: message_start, a text
 * block of 20 deltas, message_delta, message_stop), delivered one event per read or six per read
 * (a provider writing faster than the gateway reads). Then, over real connections, what passing a
 * stream on costs a server process: untouched, through a bare pipe, and through the pipeline.
 *
 * Run: deno run -A bench/streaming.ts --out <file> [--streams <n per round>] [--rounds <n>]
 */
import { parseArgs } from "node:util";
import { clientStream, UpstreamBody } from "../supabase/functions/_shared/streaming.ts";
import type { WireFormat } from "../supabase/functions/_shared/errors.ts";
import { DEFAULT_API_KEY } from "../tests/stack/provider.ts";
import { progress, type Server, spawnServer } from "../tests/stack/util.ts";
import { cpuMs } from "./proc.ts";
import { deno, runLoad } from "./processes.ts";

const benchDir = new URL(".", import.meta.url).pathname;

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string" },
    streams: { type: "string", default: "2000" },
    rounds: { type: "string", default: "7" },
  },
});
const streamsPerRound = Number(args.streams);
const rounds = Number(args.rounds);
const eventsPerRead = [1, 6];
const words = 20;

const sse = (data: object, event?: string) => `${event ? `event: ${event}\n` : ""}data: ${JSON.stringify(data)}\n\n`;

function openaiEvents(): string[] {
  const chunk = (choices: object[], extra: object = {}) =>
    sse({ id: "chatcmpl-bench", object: "chat.completion.chunk", created: 1, model: "gpt-4o-mini", choices, ...extra });
  return [
    chunk([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }]),
    ...Array.from(
      { length: words },
      (_, i) => chunk([{ index: 0, delta: { content: `word${i} ` }, finish_reason: null }]),
    ),
    chunk([{ index: 0, delta: {}, finish_reason: "stop" }]),
    chunk([], { usage: { prompt_tokens: 12, completion_tokens: words, total_tokens: 12 + words } }),
    "data: [DONE]\n\n",
  ];
}

function anthropicEvents(): string[] {
  const event = (data: { type: string; [key: string]: unknown }) => sse(data, data.type);
  return [
    event({
      type: "message_start",
      message: {
        id: "msg_bench",
        type: "message",
        role: "assistant",
        model: "claude-3-5-haiku-latest",
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: 12, output_tokens: 1 },
      },
    }),
    event({ type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }),
    ...Array.from(
      { length: words },
      (_, i) => event({ type: "content_block_delta", index: 0, delta: { type: "text_delta", text: `word${i} ` } }),
    ),
    event({ type: "content_block_stop", index: 0 }),
    event({
      type: "message_delta",
      delta: { stop_reason: "end_turn", stop_sequence: null },
      usage: { output_tokens: words },
    }),
    event({ type: "message_stop" }),
  ];
}

const eventsOf: Record<WireFormat, string[]> = { openai: openaiEvents(), anthropic: anthropicEvents() };
const encoder = new TextEncoder();

/** The provider's body: its events, `perRead` to a chunk. */
function upstreamBody(format: WireFormat, perRead: number): ReadableStream<Uint8Array> {
  const events = eventsOf[format];
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < events.length; i += perRead) chunks.push(encoder.encode(events.slice(i, i + perRead).join("")));
  let next = 0;
  // A byte stream, as fetch gives a provider's body: each chunk is handed over (transferred),
  // so it goes as a copy of the one encoded above.
  return new ReadableStream({
    type: "bytes",
    pull(controller) {
      if (next < chunks.length) return controller.enqueue(chunks[next++].slice());
      controller.close();
      controller.byobRequest?.respond(0);
    },
  });
}

interface Case {
  upstream: WireFormat;
  client: WireFormat;
  perRead: number;
}

/** The client's side of one stream, read to its end; the number of writes it was sent in. */
async function drain(body: ReadableStream<Uint8Array>): Promise<number> {
  let writes = 0;
  for await (const _ of body) writes++;
  return writes;
}

const bare = (c: Case) => drain(upstreamBody(c.upstream, c.perRead).pipeThrough(new TransformStream()));

function tollgate(c: Case): Promise<number> {
  let ended = "";
  const body = clientStream({
    upstream: new UpstreamBody(upstreamBody(c.upstream, c.perRead)),
    upstreamFormat: c.upstream,
    clientFormat: c.client,
    clientAskedUsage: false,
    abort: new AbortController(),
    idleTimeoutMs: 60_000,
    maxDurationMs: 60_000,
    onEnd: (end) => ended = end.outcome,
  });
  return drain(body).then((writes) => {
    if (ended !== "complete") {
      throw new Error(`a ${c.upstream} → ${c.client} stream ended ${ended || "without an end"}`);
    }
    return writes;
  });
}

/** Microseconds per stream of `streamsPerRound` streams one after the other. */
async function timed(run: (c: Case) => Promise<number>, c: Case): Promise<number> {
  const started = performance.now();
  for (let i = 0; i < streamsPerRound; i++) await run(c);
  return (performance.now() - started) * 1000 / streamsPerRound;
}

const median = (values: number[]) => values.toSorted((a, b) => a - b)[Math.floor(values.length / 2)];

interface Row extends Case {
  bareUs: number;
  tollgateUs: number;
  bareWrites: number;
  tollgateWrites: number;
}

async function measure(c: Case): Promise<Row> {
  const samples = { bare: [] as number[], tollgate: [] as number[] };
  // The first round warms up both; then they alternate, the order swapped each round.
  for (let round = 0; round <= rounds; round++) {
    const order = round % 2 === 0 ? (["bare", "tollgate"] as const) : (["tollgate", "bare"] as const);
    for (const name of order) {
      const us = await timed(name === "bare" ? bare : tollgate, c);
      if (round > 0) samples[name].push(us);
    }
  }
  return {
    ...c,
    bareUs: median(samples.bare),
    tollgateUs: median(samples.tollgate),
    bareWrites: await bare(c),
    tollgateWrites: await tollgate(c),
  };
}

// ─── Over HTTP ──────────────────────────────────────────────────────────────────────────────

/**
 * In-process, the provider's body is a stream this script fills; a real one is a fetch body,
 * whose every read crosses from Deno's runtime into JavaScript, as every write to the client
 * crosses back. So the three ways of passing a stream on (bench/stream-server.ts) are also
 * measured over real connections: each in a server process of its own, the provider in another
 * (bench/provider.ts) and the client in a third (bench/load.ts), by the CPU time of the server
 * process per stream.
 */
const variants = ["untouched", "pipe", "tollgate"] as const;
type Variant = typeof variants[number];
const httpConcurrencies = [1, 10];
const httpRounds = 3;

interface HttpRow {
  concurrency: number;
  cpuMs: Record<Variant, number>;
  perSecond: Record<Variant, number>;
}

async function overHttp(): Promise<HttpRow[]> {
  const provider = await spawnServer(...deno(`${benchDir}provider.ts`), /provider listening on (\S+)/);
  const servers: Partial<Record<Variant, Server>> = {};
  try {
    for (const variant of variants) {
      servers[variant] = await spawnServer(
        ...deno(`${benchDir}stream-server.ts`, provider.url, variant),
        /stream server listening on (\S+)/,
      );
    }
    const samples = new Map<string, { cpuMs: number[]; perSecond: number[] }>();
    // Round 0 warms every server up; then they take turns, the order reversed each round.
    for (let round = 0; round <= httpRounds; round++) {
      const order = round % 2 === 0 ? variants : variants.toReversed();
      for (const concurrency of httpConcurrencies) {
        for (const variant of order) {
          progress(`over HTTP, round ${round} of ${httpRounds}: ${variant} at concurrency ${concurrency}`);
          const { pid, url } = servers[variant]!;
          let cpuBefore = 0;
          const result = await runLoad(
            {
              url,
              headers: { "content-type": "application/json", authorization: `Bearer ${DEFAULT_API_KEY}` },
              body: httpRequestBody,
              stream: true,
              concurrency,
              warmup: 10 * concurrency,
              requests: concurrency === 1 ? Math.ceil(streamsPerRound / 4) : streamsPerRound,
              timeoutMs: 30_000,
            },
            5 * 60_000,
            () => cpuBefore = cpuMs([pid]),
          );
          const failed = Object.entries(result.errors);
          if (failed.length > 0) throw new Error(`${variant}: failed requests ${JSON.stringify(failed)}`);
          if (round === 0) continue;
          const key = `${variant}@${concurrency}`;
          const entry = samples.get(key) ?? { cpuMs: [], perSecond: [] };
          entry.cpuMs.push((cpuMs([pid]) - cpuBefore) / result.ok);
          entry.perSecond.push(result.ok * 1000 / result.wallMs);
          samples.set(key, entry);
        }
      }
    }
    const of = (pick: "cpuMs" | "perSecond", concurrency: number) =>
      Object.fromEntries(variants.map((v) => [v, median(samples.get(`${v}@${concurrency}`)![pick])])) as Record<
        Variant,
        number
      >;
    return httpConcurrencies.map((concurrency) => ({
      concurrency,
      cpuMs: of("cpuMs", concurrency),
      perSecond: of("perSecond", concurrency),
    }));
  } finally {
    await Promise.all([provider, ...Object.values(servers)].map((server) => server.stop()));
  }
}

const httpRequestBody = JSON.stringify({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: `Write a short line. [[mock words=${words}]]` }],
  stream: true,
  // As the gateway asks every OpenAI stream upstream; its pipeline takes the usage chunk out.
  stream_options: { include_usage: true },
});

function report(rows: Row[], httpRows: HttpRow[]): string {
  const lines = [
    "## The stream pipeline (bench/streaming.ts)",
    "",
    `Deno ${Deno.version.deno}, V8 ${Deno.version.v8}. What the function does to a streamed answer between the provider's ` +
    "bytes and the client's (supabase/functions/_shared/streaming.ts), in one process with no network: a 20-word answer " +
    "as each provider streams it, delivered one event per read or six per read. Beside it, the bare pipe: the same bytes " +
    "through a TransformStream that looks at nothing. " +
    `Median of ${rounds} rounds of ${streamsPerRound.toLocaleString("en-US")} streams each, the two alternating ` +
    "(after a warm-up round); µs per stream, one stream at a time (wall time: the process does nothing else). Writes: the chunks the client receives.",
    "",
    "| upstream → client | events per read | bare pipe µs | Tollgate µs | Tollgate / bare | writes (bare / Tollgate) |",
    "| --- | ---: | ---: | ---: | ---: | ---: |",
    ...rows.map((r) =>
      `| ${r.upstream} → ${r.client} | ${r.perRead} | ${r.bareUs.toFixed(1)} | ${r.tollgateUs.toFixed(1)} | ` +
      `${(r.tollgateUs / r.bareUs).toFixed(2)}× | ${r.bareWrites} / ${r.tollgateWrites} |`
    ),
    "",
    "Over HTTP (OpenAI → OpenAI, the same 20-word answer from the local provider): each way of passing the stream on in " +
    "a server process of its own (bench/stream-server.ts), the provider and the client each in another. The provider's " +
    "body handed to the response untouched (Deno pipes it without JavaScript: the floor), through a bare " +
    "TransformStream, and through the function's pipeline. CPU time of the server process per stream and streams " +
    `per second, medians of ${httpRounds} rounds of ${streamsPerRound.toLocaleString("en-US")} streams at ` +
    "concurrency 10 and a quarter of that at 1 (after a warm-up round), the three taking turns.",
    "",
    "| concurrency | untouched ms | bare pipe ms | Tollgate ms | Tollgate / bare pipe | streams/s (untouched / pipe / Tollgate) |",
    "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ...httpRows.map((r) =>
      `| ${r.concurrency} | ${r.cpuMs.untouched.toFixed(3)} | ${r.cpuMs.pipe.toFixed(3)} | ` +
      `${r.cpuMs.tollgate.toFixed(3)} | ${(r.cpuMs.tollgate / r.cpuMs.pipe).toFixed(2)}× | ` +
      `${Math.round(r.perSecond.untouched)} / ${Math.round(r.perSecond.pipe)} / ${Math.round(r.perSecond.tollgate)} |`
    ),
  ];
  return lines.join("\n");
}

if (import.meta.main) {
  const directions: [WireFormat, WireFormat][] = [
    ["openai", "openai"],
    ["anthropic", "anthropic"],
    ["anthropic", "openai"],
    ["openai", "anthropic"],
  ];
  const cases = directions.flatMap(([upstream, client]) =>
    eventsPerRead.map((perRead) => ({ upstream, client, perRead }))
  );
  const rows: Row[] = [];
  for (const c of cases) {
    progress(`${c.upstream} → ${c.client}, ${c.perRead} event(s) per read`);
    rows.push(await measure(c));
  }
  const markdown = report(rows, await overHttp());
  if (args.out) await Deno.writeTextFile(args.out, markdown + "\n");
  console.log(markdown);
}
