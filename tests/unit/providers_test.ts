import assert from "node:assert/strict";
import { GatewayError } from "../../supabase/functions/_shared/errors.ts";
import * as anthropic from "../../supabase/functions/_shared/providers/anthropic.ts";
import * as openai from "../../supabase/functions/_shared/providers/openai.ts";
import type { SseEvent } from "../../supabase/functions/_shared/sse.ts";

const chunk = (data: object): SseEvent => ({ data: JSON.stringify(data) });
const event = (data: { type: string; [key: string]: unknown }): SseEvent => ({
  event: data.type,
  data: JSON.stringify(data),
});
const done: SseEvent = { data: "[DONE]" };

function assertUpstreamInvalid(run: () => unknown) {
  assert.throws(run, (error) => {
    assert.ok(error instanceof GatewayError);
    assert.equal(error.status, 502);
    assert.equal(error.code, "upstream_invalid_response");
    return true;
  });
}

Deno.test("auth headers per provider", () => {
  assert.equal(openai.buildHeaders("sk-1").authorization, "Bearer sk-1");
  assert.deepEqual(anthropic.buildHeaders("sk-ant-1"), {
    "x-api-key": "sk-ant-1",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
  });
  assert.equal(openai.chatCompletionsPath, "/chat/completions");
  assert.equal(anthropic.messagesPath, "/v1/messages");
});

// ─── Usage of JSON answers ──────────────────────────────────────────────────────────────────

Deno.test("OpenAI usage: cached tokens are part of the input, reasoning part of the output", () => {
  const usage = openai.usageFromResponse({
    id: "chatcmpl-1",
    choices: [{ index: 0, message: { role: "assistant", content: "hi" }, finish_reason: "stop" }],
    usage: {
      prompt_tokens: 1200,
      completion_tokens: 300,
      total_tokens: 1500,
      prompt_tokens_details: { cached_tokens: 1024, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: 256 },
    },
  });
  assert.deepEqual(usage, {
    inputTokens: 1200,
    outputTokens: 300,
    cachedInputTokens: 1024,
    cacheWriteTokens: 0,
    reasoningTokens: 256,
  });
});

Deno.test("OpenAI usage: absent details count as zero, absent usage as unreported", () => {
  const answer = { choices: [{ message: { content: "hi" }, finish_reason: "stop" }] };
  assert.deepEqual(
    openai.usageFromResponse({
      ...answer,
      usage: { prompt_tokens: 5, completion_tokens: 2, prompt_tokens_details: null },
    }),
    { inputTokens: 5, outputTokens: 2, cachedInputTokens: 0, cacheWriteTokens: 0, reasoningTokens: 0 },
  );
  assert.equal(openai.usageFromResponse(answer), undefined);
  assertUpstreamInvalid(() => openai.usageFromResponse({ ...answer, usage: { prompt_tokens: "5" } }));
  assertUpstreamInvalid(() => openai.usageFromResponse("<html>"));
});

Deno.test("Anthropic usage: cache reads and writes are added back to the input, and kept apart", () => {
  const usage = anthropic.usageFromResponse({
    id: "msg_1",
    type: "message",
    role: "assistant",
    model: "claude-sonnet-4-5",
    content: [{ type: "text", text: "hi" }],
    stop_reason: "end_turn",
    usage: {
      input_tokens: 50,
      cache_read_input_tokens: 2000,
      cache_creation_input_tokens: 300,
      output_tokens: 80,
    },
  });
  assert.deepEqual(usage, {
    inputTokens: 2350,
    outputTokens: 80,
    cachedInputTokens: 2000,
    cacheWriteTokens: 300,
    reasoningTokens: 0,
  });
  assertUpstreamInvalid(() => anthropic.usageFromResponse({ type: "message", content: [] }));
});

// ─── OpenAI streams ─────────────────────────────────────────────────────────────────────────

const openaiStream = [
  chunk({ id: "c", choices: [{ index: 0, delta: { role: "assistant", content: "" } }], usage: null }),
  chunk({ id: "c", choices: [{ index: 0, delta: { content: "Hel" } }], usage: null }),
  chunk({ id: "c", choices: [{ index: 0, delta: { content: "lo" } }], usage: null }),
  chunk({ id: "c", choices: [{ index: 0, delta: {}, finish_reason: "stop" }], usage: null }),
  chunk({
    id: "c",
    choices: [],
    usage: {
      prompt_tokens: 40,
      completion_tokens: 2,
      prompt_tokens_details: { cached_tokens: 32 },
      completion_tokens_details: { reasoning_tokens: 0 },
    },
  }),
  done,
];

Deno.test("OpenAI tracker: text, usage from the final chunk, finished at [DONE]", () => {
  const tracker = openai.createStreamTracker();
  for (const e of openaiStream.slice(0, -1)) tracker.observe(e);
  assert.equal(tracker.finished, false);
  tracker.observe(done);
  assert.equal(tracker.finished, true);
  assert.equal(tracker.text, "Hello");
  assert.deepEqual(tracker.reported, { input: true, output: true });
  assert.deepEqual(tracker.usage, {
    inputTokens: 40,
    outputTokens: 2,
    cachedInputTokens: 32,
    cacheWriteTokens: 0,
    reasoningTokens: 0,
  });
  assert.equal(tracker.error, undefined);
});

Deno.test("OpenAI tracker: a cut stream is not finished and reports no usage", () => {
  const tracker = openai.createStreamTracker();
  for (const e of openaiStream.slice(0, 3)) tracker.observe(e);
  tracker.observe(chunk({
    choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{"a"' } }] } }],
  }));
  assert.equal(tracker.finished, false);
  assert.deepEqual(tracker.reported, { input: false, output: false });
  assert.equal(tracker.text, 'Hello{"a"');
  // [DONE] without a finish reason does not make it finished either.
  tracker.observe(done);
  assert.equal(tracker.finished, false);
});

Deno.test("OpenAI tracker: an error chunk is recorded and the stream is not finished", () => {
  const tracker = openai.createStreamTracker();
  tracker.observe(openaiStream[1]);
  tracker.observe(chunk({ error: { message: "overloaded", type: "server_error", code: null } }));
  tracker.observe(done);
  assert.deepEqual(tracker.error, { type: "server_error", message: "overloaded" });
  assert.equal(tracker.finished, false);
});

Deno.test("OpenAI tracker: a chunk that is not JSON is the provider's fault", () => {
  const tracker = openai.createStreamTracker();
  assertUpstreamInvalid(() => tracker.observe({ data: "{not json" }));
  assertUpstreamInvalid(() => tracker.observe(chunk({ choices: "none" })));
});

Deno.test("withStreamUsage: upstream always asks, and remembers whether the client did", () => {
  const base = { model: "m", messages: [{ role: "user" as const, content: "hi" }] };
  const asked = openai.withStreamUsage({ ...base, stream: true, stream_options: { include_usage: true } });
  assert.equal(asked.clientAskedUsage, true);

  const original = { ...base, stream: true, stream_options: { other: 1 } };
  const notAsked = openai.withStreamUsage(original);
  assert.equal(notAsked.clientAskedUsage, false);
  assert.deepEqual(notAsked.body.stream_options, { other: 1, include_usage: true });
  assert.deepEqual(original.stream_options, { other: 1 });

  const plain = openai.withStreamUsage(base);
  assert.equal(plain.body, base);
  assert.equal(plain.clientAskedUsage, false);
});

Deno.test("forwardToClient drops the usage-only chunk unless the client asked for it", () => {
  const kept = openaiStream.filter((e) => openai.forwardToClient(e, false));
  assert.deepEqual(kept, [...openaiStream.slice(0, 4), done]);
  assert.deepEqual(openaiStream.filter((e) => openai.forwardToClient(e, true)), openaiStream);
});

Deno.test("OpenAI stream error event: an error chunk, not a [DONE]", () => {
  const error = new GatewayError({ status: 502, code: "upstream_error", message: "cut" });
  const e = openai.streamErrorEvent(error);
  assert.equal(e.event, undefined);
  assert.deepEqual(JSON.parse(e.data), {
    error: { message: "cut", type: "api_error", param: null, code: "upstream_error" },
  });
});

// ─── Anthropic streams ──────────────────────────────────────────────────────────────────────

const anthropicStream = [
  event({
    type: "message_start",
    message: {
      id: "msg_1",
      type: "message",
      role: "assistant",
      model: "claude-sonnet-4-5",
      content: [],
      stop_reason: null,
      stop_sequence: null,
      usage: {
        input_tokens: 10,
        cache_read_input_tokens: 900,
        cache_creation_input_tokens: 100,
        output_tokens: 1,
      },
    },
  }),
  event({ type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }),
  event({ type: "ping" }),
  event({ type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Hi" } }),
  event({ type: "content_block_stop", index: 0 }),
  event({
    type: "content_block_start",
    index: 1,
    content_block: { type: "tool_use", id: "toolu_1", name: "lookup", input: {} },
  }),
  event({
    type: "content_block_delta",
    index: 1,
    delta: { type: "input_json_delta", partial_json: '{"q":1}' },
  }),
  event({ type: "content_block_stop", index: 1 }),
  event({
    type: "message_delta",
    delta: { stop_reason: "tool_use", stop_sequence: null },
    usage: { output_tokens: 25 },
  }),
  event({ type: "message_stop" }),
];

Deno.test("Anthropic tracker: input from message_start, output from message_delta", () => {
  const tracker = anthropic.createStreamTracker();
  for (const e of anthropicStream.slice(0, -1)) tracker.observe(e);
  assert.equal(tracker.finished, false);
  tracker.observe(anthropicStream.at(-1)!);
  assert.equal(tracker.finished, true);
  assert.deepEqual(tracker.reported, { input: true, output: true });
  assert.deepEqual(tracker.usage, {
    inputTokens: 1010,
    outputTokens: 25,
    cachedInputTokens: 900,
    cacheWriteTokens: 100,
    reasoningTokens: 0,
  });
  assert.equal(tracker.text, 'Hilookup{"q":1}');
});

Deno.test("Anthropic tracker: message_delta usage is cumulative and may revise the input", () => {
  const tracker = anthropic.createStreamTracker();
  tracker.observe(anthropicStream[0]);
  const revision = (usage: object) => event({ type: "message_delta", delta: { stop_reason: null }, usage });
  tracker.observe(revision({ output_tokens: 5 }));
  tracker.observe(revision({ output_tokens: 9, input_tokens: 12, cache_read_input_tokens: null }));
  assert.deepEqual(tracker.usage, {
    inputTokens: 1012,
    outputTokens: 9,
    cachedInputTokens: 900,
    cacheWriteTokens: 100,
    reasoningTokens: 0,
  });
});

Deno.test("Anthropic tracker: a cut stream knows its input but not its output", () => {
  const tracker = anthropic.createStreamTracker();
  for (const e of anthropicStream.slice(0, 4)) tracker.observe(e);
  assert.equal(tracker.finished, false);
  assert.deepEqual(tracker.reported, { input: true, output: false });
  assert.equal(tracker.usage.inputTokens, 1010);
  assert.equal(tracker.text, "Hi");
});

Deno.test("Anthropic tracker: an error event is recorded and the stream is not finished", () => {
  const tracker = anthropic.createStreamTracker();
  tracker.observe(anthropicStream[0]);
  tracker.observe(event({
    type: "error",
    error: { type: "overloaded_error", message: "Overloaded" },
  }));
  assert.deepEqual(tracker.error, { type: "overloaded_error", message: "Overloaded" });
  assert.equal(tracker.finished, false);
  assertUpstreamInvalid(() => tracker.observe({ event: "message_delta", data: "oops" }));
});

Deno.test("Anthropic stream error event: event: error with an error object", () => {
  const error = new GatewayError({ status: 502, code: "upstream_error", message: "cut" });
  const e = anthropic.streamErrorEvent(error);
  assert.equal(e.event, "error");
  assert.deepEqual(JSON.parse(e.data), {
    type: "error",
    error: { type: "api_error", message: "cut", code: "upstream_error" },
  });
});
