import assert from "node:assert/strict";
import { encodeEvent, SseDecoder, type SseEvent } from "../../supabase/functions/_shared/sse.ts";

/** The events of an SSE body, one at a time, as a reader of its chunks decodes them. */
async function* decodeSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const decoder = new SseDecoder();
  for await (const chunk of body) yield* decoder.push(chunk);
  yield* decoder.end();
}

const encoder = new TextEncoder();

function body(chunks: (string | Uint8Array)[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) {
        controller.enqueue(typeof chunk === "string" ? encoder.encode(chunk) : chunk);
      }
      controller.close();
    },
  });
}

/** Every way of cutting `text` in two. */
function splits(text: string): [Uint8Array, Uint8Array][] {
  const bytes = encoder.encode(text);
  return Array.from({ length: bytes.length + 1 }, (_, i) => [bytes.slice(0, i), bytes.slice(i)]);
}

/** The events of `chunks` fed to one decoder, and of the stream's end. */
function decodeAll(chunks: string[]): SseEvent[] {
  const decoder = new SseDecoder();
  return [...chunks.flatMap((chunk) => decoder.push(encoder.encode(chunk))), ...decoder.end()];
}

Deno.test("lines end at \\n, \\r\\n and \\r", () => {
  assert.deepEqual(decodeAll(["data: a\ndata: b\r\ndata: c\rdata: d\n\n"]), [{ data: "a\nb\nc\nd" }]);
});

Deno.test("a \\r\\n split across chunks is one line ending", () => {
  assert.deepEqual(decodeAll(["data: a\r", "\ndata: b\n\n"]), [{ data: "a\nb" }]);
});

Deno.test("a \\r at the end of the stream ends a line", () => {
  assert.deepEqual(decodeAll(["data: a\n\ndata: b\n\r"]), [{ data: "a" }, { data: "b" }]);
});

Deno.test("an event is dispatched by the chunk that completes it, not before", () => {
  const decoder = new SseDecoder();
  assert.deepEqual(decoder.push(encoder.encode("data: a\n")), []);
  assert.deepEqual(decoder.push(encoder.encode("\ndata: b\n\ndata: c")), [{ data: "a" }, { data: "b" }]);
  assert.deepEqual(decoder.end(), []);
});

Deno.test("events decode the same wherever the bytes are cut, multi-byte characters too", async () => {
  const text = 'event: message_delta\r\ndata: {"text":"héllo 👋 ✓"}\r\n\r\ndata: [DONE]\n\n';
  const expected: SseEvent[] = [
    { event: "message_delta", data: '{"text":"héllo 👋 ✓"}' },
    { data: "[DONE]" },
  ];
  for (const [head, tail] of splits(text)) {
    assert.deepEqual(await Array.fromAsync(decodeSse(body([head, tail]))), expected);
  }
});

Deno.test("events decode the same one byte at a time", async () => {
  const text = 'data: {"a":"ünïcødé"}\r\r\ndata: x\r\n\r\n';
  const bytes = encoder.encode(text);
  const events = await Array.fromAsync(decodeSse(body(Array.from(bytes, (b) => new Uint8Array([b])))));
  assert.deepEqual(events, [{ data: '{"a":"ünïcødé"}' }, { data: "x" }]);
});

Deno.test("data lines join with \\n; comments and unknown fields are ignored", async () => {
  const events = await Array.fromAsync(
    decodeSse(body([": keep-alive\n\ndata: a\ndata:b\nretry: 10\nfoo\n\n"])),
  );
  assert.deepEqual(events, [{ data: "a\nb" }]);
});

Deno.test("an event without data is not dispatched, and the id carries over", () => {
  const events = decodeAll(["event: ping\n\nid: 7\ndata: x\n\ndata: y\n\n"]);
  assert.deepEqual(events, [{ data: "x", id: "7" }, { data: "y", id: "7" }]);
});

Deno.test("an event cut off by the end of the stream is dropped", async () => {
  const events = await Array.fromAsync(decodeSse(body(["data: one\n\ndata: tw"])));
  assert.deepEqual(events, [{ data: "one" }]);
});

Deno.test("encodeEvent writes an event and a blank line, one data line per line", async () => {
  assert.equal(encodeEvent({ data: "[DONE]" }), "data: [DONE]\n\n");
  assert.equal(
    encodeEvent({ event: "error", data: "a\nb" }),
    "event: error\ndata: a\ndata: b\n\n",
  );
  const roundTrip = await Array.fromAsync(
    decodeSse(body([encodeEvent({ event: "x", data: "1\n2" })])),
  );
  assert.deepEqual(roundTrip, [{ event: "x", data: "1\n2" }]);
});

Deno.test("each chunk yields the events it completes, and a chunk that completes none yields none", () => {
  const decoder = new SseDecoder();
  const batches = ["data: a\n\ndata: b\n\ndata: c", "\n", "\n"].map((text) => decoder.push(encoder.encode(text)));
  assert.deepEqual(batches, [[{ data: "a" }, { data: "b" }], [], [{ data: "c" }]]);
});
