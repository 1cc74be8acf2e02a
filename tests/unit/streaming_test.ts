import assert from "node:assert/strict";
import { sleep } from "../../supabase/functions/_shared/runtime.ts";
import type { WireFormat } from "../../supabase/functions/_shared/errors.ts";
import { clientStream, type StreamEnd, UpstreamBody } from "../../supabase/functions/_shared/streaming.ts";

const encoder = new TextEncoder();

const delta = (text: string) =>
  `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: text }, finish_reason: null }] })}\n\n`;
const finish = `data: ${JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] })}\n\n`;

/**
 * An OpenAI stream whose chunks come after the given pauses (ms); at a null pause it goes silent
 * until aborted, as a fetch body errors when its request is aborted.
 */
function upstream(pauses: (number | null)[], signal: AbortSignal): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    async pull(controller) {
      if (sent === pauses.length) {
        controller.enqueue(encoder.encode(finish + "data: [DONE]\n\n"));
        controller.close();
        return;
      }
      const pause = pauses[sent];
      if (pause === null) {
        return await new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason)));
      }
      await sleep(pause);
      controller.enqueue(encoder.encode(delta(`w${sent++} `)));
    },
  });
}

/**
 * A provider's stream through `clientStream` to the client (both OpenAI unless `formats` says
 * otherwise); `end()` is how it ended, once it has.
 */
function throughGateway(
  body: ReadableStream<Uint8Array>,
  { abort = new AbortController(), idleTimeoutMs = 1_000, upstreamFormat = "openai", clientFormat = "openai" }: {
    abort?: AbortController;
    idleTimeoutMs?: number;
    upstreamFormat?: WireFormat;
    clientFormat?: WireFormat;
  } = {},
) {
  let ended: StreamEnd | undefined;
  const client = clientStream({
    upstream: new UpstreamBody(asByteStream(body)),
    upstreamFormat,
    clientFormat,
    clientAskedUsage: false,
    abort,
    idleTimeoutMs,
    maxDurationMs: 10_000,
    onEnd: (end) => ended = end,
  });
  return { client, end: () => ended! };
}

/**
 * `body` as a byte stream, which is what fetch gives for a provider's body and what
 * `UpstreamBody` reads (into its own buffer, a read at a time).
 */
function asByteStream(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream({
    type: "bytes",
    async pull(controller) {
      const { value, done } = await reader.read();
      if (!done) return controller.enqueue(value);
      controller.close();
      // A reader waiting with its own buffer learns of the end only through this answer.
      controller.byobRequest?.respond(0);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

/** A provider body of these reads, all at once. */
function reads(...texts: string[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const text of texts) controller.enqueue(encoder.encode(text));
      controller.close();
    },
  });
}

/** The client's text and how the stream ended, with an idle timeout of `idleTimeoutMs`. */
async function run(pauses: (number | null)[], idleTimeoutMs: number): Promise<{ text: string; end: StreamEnd }> {
  const abort = new AbortController();
  const { client, end } = throughGateway(upstream(pauses, abort.signal), { abort, idleTimeoutMs });
  const text = await new Response(client).text();
  return { text, end: end() };
}

/**
 * The kinds of provider body `UpstreamBody` reads, and the fewest reads the 40,010 bytes below
 * take through each: a byte stream's fill the 16 KiB buffer at most; a default stream's come as
 * they were enqueued.
 */
const bodyKinds = [
  { kind: "a byte stream", asBody: asByteStream, fewestReads: 4 },
  { kind: "a default stream", asBody: (body: ReadableStream<Uint8Array>) => body, fewestReads: 3 },
];

for (const { kind, asBody, fewestReads } of bodyKinds) {
  Deno.test(`a provider body comes out whole, reads larger than the buffer included (${kind})`, async () => {
    const large = "x".repeat(40_000);
    const body = new UpstreamBody(asBody(reads("first ", large, " last")));
    assert.equal(await body.started(), true);
    const decoder = new TextDecoder();
    let text = "";
    let count = 0;
    for (let chunk = await body.read(); chunk !== undefined; chunk = await body.read()) {
      // Decoded at once: the next read may write over the same buffer.
      text += decoder.decode(chunk);
      count += 1;
    }
    assert.equal(text, "first " + large + " last");
    assert.ok(count >= fewestReads, `${count} reads`);
  });

  Deno.test(`a provider body that ends before its first byte has not started (${kind})`, async () => {
    assert.equal(await new UpstreamBody(asBody(reads())).started(), false);
  });
}

Deno.test("a provider body that is not a byte stream still goes to the client whole", async () => {
  const answer = delta("Hello") + finish + "data: [DONE]\n\n";
  let ended: StreamEnd | undefined;
  const client = clientStream({
    // Cut inside an event: the events are put back together from default reads too.
    upstream: new UpstreamBody(reads(answer.slice(0, 30), answer.slice(30))),
    upstreamFormat: "openai",
    clientFormat: "openai",
    clientAskedUsage: false,
    abort: new AbortController(),
    idleTimeoutMs: 1_000,
    maxDurationMs: 10_000,
    onEnd: (end) => ended = end,
  });
  assert.equal(await new Response(client).text(), answer);
  assert.equal(ended?.outcome, "complete");
});

Deno.test("a stream whose events keep coming outlives its idle timeout many times over", async () => {
  const { text, end } = await run(Array(12).fill(15), 60);
  assert.equal(end.outcome, "complete");
  assert.match(text, /w11 /);
  assert.match(text, /\[DONE\]\n\n$/);
});

Deno.test("a stream that goes silent mid-answer is ended by its idle timeout", async () => {
  const started = performance.now();
  const { text, end } = await run([5, 5, null], 60);
  const tookMs = performance.now() - started;
  assert.equal(end.outcome, "timeout");
  assert.match(text, /w1 /);
  assert.match(text, /"code":"provider_timeout"/);
  assert.doesNotMatch(text, /\[DONE\]/);
  assert.ok(tookMs >= 60 && tookMs < 1_000, `ended after ${tookMs.toFixed(0)} ms`);
});

Deno.test("the events of one upstream read reach the client as one write", async () => {
  const { client, end } = throughGateway(reads(delta("a") + delta("b") + finish, "data: [DONE]\n\n"));
  const writes = (await Array.fromAsync(client)).map((chunk) => new TextDecoder().decode(chunk));
  assert.deepEqual(writes, [delta("a") + delta("b") + finish, "data: [DONE]\n\n"]);
  assert.equal(end().outcome, "complete");
});

Deno.test("an event that cannot be read ends the stream after the ones before it in the same read", async () => {
  const { client, end } = throughGateway(reads(delta("a") + "data: {not json\n\n" + delta("b")));
  const text = await new Response(client).text();
  assert.ok(text.startsWith(delta("a")), text);
  assert.match(text, /"code":"upstream_invalid_response"/);
  assert.doesNotMatch(text, /"content":"b"/);
  assert.equal(end().outcome, "upstream_failed");
});

Deno.test("a body that errors mid-answer ends the client's stream with an error event, after what came before", async () => {
  let pulls = 0;
  const failing = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulls += 1;
      if (pulls === 1) controller.enqueue(encoder.encode(delta("a")));
      else controller.error(new TypeError("connection reset"));
    },
  });
  const { client, end } = throughGateway(failing);
  const text = await new Response(client).text();
  assert.ok(text.startsWith(delta("a")), text);
  assert.match(text, /"code":"upstream_stream_cut"/);
  assert.doesNotMatch(text, /\[DONE\]/);
  assert.equal(end().outcome, "upstream_failed");
});

/** "Hi" as Anthropic streams it, then keep-alives forever; `cancelled()`: whether its reader cancelled it. */
function endlessAnthropicAnswer({ upTo }: { upTo?: number } = {}) {
  const events = [
    {
      type: "message_start",
      message: {
        id: "msg_1",
        type: "message",
        role: "assistant",
        model: "claude-haiku-4-5",
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: 10, output_tokens: 1 },
      },
    },
    { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } },
    { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Hi" } },
    { type: "content_block_stop", index: 0 },
    { type: "message_delta", delta: { stop_reason: "end_turn", stop_sequence: null }, usage: { output_tokens: 1 } },
    { type: "message_stop" },
  ].slice(0, upTo).map((data) => `event: ${data.type}\ndata: ${JSON.stringify(data)}\n\n`);
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      controller.enqueue(encoder.encode(events.shift() ?? ": keep-alive\n\n"));
    },
    cancel() {
      cancelled = true;
    },
  });
  return { body, cancelled: () => cancelled };
}

const translated = { upstreamFormat: "anthropic", clientFormat: "openai" } as const;

Deno.test("a translated stream that has its last event stops reading the upstream body", async () => {
  const upstream = endlessAnthropicAnswer();
  const { client, end } = throughGateway(upstream.body, translated);
  const text = await new Response(client).text();
  assert.match(text, /data: \[DONE\]\n\n$/);
  assert.equal(end().outcome, "complete");
  assert.equal(upstream.cancelled(), true);
});

Deno.test("a client that stops reading a translated stream aborts the upstream request", async () => {
  const upstream = endlessAnthropicAnswer({ upTo: 4 });
  const abort = new AbortController();
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of throughGateway(upstream.body, { ...translated, abort }).client) {
    text += decoder.decode(chunk);
    if (text.includes('"content":"Hi"')) break;
  }
  assert.equal(abort.signal.aborted, true);
});
