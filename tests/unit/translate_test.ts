import assert from "node:assert/strict";
import { GatewayError } from "../../supabase/functions/_shared/errors.ts";
import * as anthropic from "../../supabase/functions/_shared/providers/anthropic.ts";
import * as openai from "../../supabase/functions/_shared/providers/openai.ts";
import {
  anthropicToOpenAIRequest,
  openaiToAnthropicRequest,
} from "../../supabase/functions/_shared/providers/translate/requests.ts";
import {
  anthropicToOpenAIResponse,
  openaiToAnthropicResponse,
} from "../../supabase/functions/_shared/providers/translate/responses.ts";
import {
  anthropicToOpenAIStream,
  openaiToAnthropicStream,
  type StreamTranslation,
} from "../../supabase/functions/_shared/providers/translate/streams.ts";
import {
  type AnthropicMessagesRequest,
  anthropicMessagesRequestSchema,
  type OpenAIChatRequest,
  openaiChatRequestSchema,
} from "../../supabase/functions/_shared/schemas.ts";
import type { SseEvent } from "../../supabase/functions/_shared/sse.ts";

const chunk = (data: object): SseEvent => ({ data: JSON.stringify(data) });
const event = (data: { type: string; [key: string]: unknown }): SseEvent => ({
  event: data.type,
  data: JSON.stringify(data),
});
const done: SseEvent = { data: "[DONE]" };
const payloads = (events: SseEvent[]) => events.map((e) => (e.data === "[DONE]" ? "[DONE]" : JSON.parse(e.data)));

/** What a translation gives the client for these upstream events, in order. */
const translate = (translation: StreamTranslation, events: SseEvent[]) =>
  events.flatMap((event) => translation.push(event));

const openaiBody = (body: object): OpenAIChatRequest => openaiChatRequestSchema.parse(body);
const anthropicBody = (body: object): AnthropicMessagesRequest => anthropicMessagesRequestSchema.parse(body);

function assertGatewayError(run: () => unknown, code: string, param?: string) {
  assert.throws(run, (error) => {
    assert.ok(error instanceof GatewayError);
    assert.equal(error.code, code);
    if (param) assert.equal(error.param, param);
    return true;
  });
}

// ─── Requests ───────────────────────────────────────────────────────────────────────────────

Deno.test("OpenAI → Anthropic request: system, roles, tools, parameters", () => {
  const translated = openaiToAnthropicRequest(openaiBody({
    model: "gpt-4o",
    messages: [
      { role: "system", content: "Be brief." },
      { role: "developer", content: [{ type: "text", text: "Use tools." }] },
      {
        role: "user",
        content: [
          { type: "text", text: "Look:" },
          { type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=" } },
          { type: "image_url", image_url: { url: "https://x.test/cat.jpg" } },
        ],
      },
      {
        role: "assistant",
        content: "",
        tool_calls: [
          { id: "call_1", type: "function", function: { name: "a", arguments: '{"x":1}' } },
          { id: "call_2", type: "function", function: { name: "b", arguments: "" } },
        ],
      },
      { role: "tool", tool_call_id: "call_1", content: "one" },
      { role: "tool", tool_call_id: "call_2", content: [{ type: "text", text: "two" }] },
      { role: "user", content: "Thanks" },
    ],
    max_tokens: 100,
    max_completion_tokens: 200,
    temperature: 1.7,
    top_p: 0.9,
    stop: "END",
    stream: true,
    user: "user-42",
    tools: [{ type: "function", function: { name: "a", description: "A", parameters: { type: "object" } } }, {
      type: "function",
      function: { name: "b" },
    }],
    tool_choice: "required",
    parallel_tool_calls: false,
    seed: 7,
    frequency_penalty: 0.5,
  }));
  assert.deepEqual(translated, {
    model: "gpt-4o",
    max_tokens: 200,
    system: [{ type: "text", text: "Be brief." }, { type: "text", text: "Use tools." }],
    messages: [
      {
        role: "user",
        content: [
          { type: "text", text: "Look:" },
          { type: "image", source: { type: "base64", media_type: "image/png", data: "iVBORw0KGgo=" } },
          { type: "image", source: { type: "url", url: "https://x.test/cat.jpg" } },
        ],
      },
      {
        role: "assistant",
        content: [
          { type: "tool_use", id: "call_1", name: "a", input: { x: 1 } },
          { type: "tool_use", id: "call_2", name: "b", input: {} },
        ],
      },
      {
        role: "user",
        content: [
          { type: "tool_result", tool_use_id: "call_1", content: "one" },
          { type: "tool_result", tool_use_id: "call_2", content: [{ type: "text", text: "two" }] },
          { type: "text", text: "Thanks" },
        ],
      },
    ],
    temperature: 1,
    top_p: 0.9,
    stop_sequences: ["END"],
    stream: true,
    metadata: { user_id: "user-42" },
    tools: [
      { name: "a", description: "A", input_schema: { type: "object" } },
      { name: "b", input_schema: { type: "object", properties: {} } },
    ],
    tool_choice: { type: "any", disable_parallel_tool_use: true },
  });
  // What Anthropic validates, we validate: the translation is a valid Messages request.
  anthropicMessagesRequestSchema.parse(translated);
});

Deno.test("OpenAI → Anthropic request: defaults and the simplest shapes", () => {
  const translated = openaiToAnthropicRequest(openaiBody({
    model: "m",
    messages: [{ role: "system", content: "S" }, { role: "user", content: "Hi" }],
    tool_choice: { type: "function", function: { name: "f" } },
  }));
  assert.deepEqual(translated, {
    model: "m",
    max_tokens: 4096,
    system: "S",
    messages: [{ role: "user", content: "Hi" }],
    tool_choice: { type: "tool", name: "f" },
  });
});

Deno.test("OpenAI → Anthropic request: what cannot be carried over is refused, naming the field", () => {
  const base = { model: "m", messages: [{ role: "user", content: "Hi" }] };
  assertGatewayError(
    () =>
      openaiToAnthropicRequest(openaiBody({
        ...base,
        messages: [{ role: "user", content: [{ type: "input_audio", input_audio: { data: "", format: "wav" } }] }],
      })),
    "untranslatable_request",
    "messages.0.content.0",
  );
  assertGatewayError(
    () =>
      openaiToAnthropicRequest(openaiBody({
        ...base,
        messages: [{ role: "user", content: [{ type: "file", file: { file_id: "file-1" } }] }],
      })),
    "untranslatable_request",
    "messages.0.content.0",
  );
  assertGatewayError(
    () => openaiToAnthropicRequest(openaiBody({ ...base, response_format: { type: "json_object" } })),
    "untranslatable_request",
    "response_format",
  );
  assertGatewayError(
    () =>
      openaiToAnthropicRequest(openaiBody({
        ...base,
        messages: [{
          role: "assistant",
          tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: "[1]" } }],
        }],
      })),
    "invalid_request",
    "messages.0.tool_calls.0.function.arguments",
  );
});

Deno.test("Anthropic → OpenAI request: system, blocks, tool results, parameters", () => {
  const translated = anthropicToOpenAIRequest(anthropicBody({
    model: "claude-sonnet-4-5",
    max_tokens: 512,
    system: [{ type: "text", text: "Be brief.", cache_control: { type: "ephemeral" } }],
    messages: [
      {
        role: "user",
        content: [
          { type: "text", text: "Look:" },
          { type: "image", source: { type: "base64", media_type: "image/jpeg", data: "/9j/" } },
          { type: "document", source: { type: "base64", media_type: "application/pdf", data: "JVBE" } },
        ],
      },
      {
        role: "assistant",
        content: [
          { type: "thinking", thinking: "hm", signature: "s" },
          { type: "text", text: "Checking." },
          { type: "tool_use", id: "toolu_1", name: "lookup", input: { q: "cats" } },
        ],
      },
      {
        role: "user",
        content: [
          { type: "tool_result", tool_use_id: "toolu_1", content: [{ type: "text", text: "3 cats" }] },
          { type: "text", text: "And dogs?" },
        ],
      },
    ],
    stop_sequences: ["END"],
    temperature: 0.2,
    top_k: 40,
    stream: true,
    metadata: { user_id: "user-42" },
    tools: [{ name: "lookup", description: "Look up", input_schema: { type: "object" } }],
    tool_choice: { type: "any", disable_parallel_tool_use: true },
    thinking: { type: "enabled", budget_tokens: 1024 },
  }));
  assert.deepEqual(translated, {
    model: "claude-sonnet-4-5",
    max_tokens: 512,
    messages: [
      { role: "system", content: [{ type: "text", text: "Be brief." }] },
      {
        role: "user",
        content: [
          { type: "text", text: "Look:" },
          { type: "image_url", image_url: { url: "data:image/jpeg;base64,/9j/" } },
          { type: "file", file: { file_data: "data:application/pdf;base64,JVBE" } },
        ],
      },
      {
        role: "assistant",
        content: "Checking.",
        tool_calls: [{
          id: "toolu_1",
          type: "function",
          function: { name: "lookup", arguments: '{"q":"cats"}' },
        }],
      },
      { role: "tool", tool_call_id: "toolu_1", content: [{ type: "text", text: "3 cats" }] },
      { role: "user", content: [{ type: "text", text: "And dogs?" }] },
    ],
    temperature: 0.2,
    stop: ["END"],
    stream: true,
    stream_options: { include_usage: true },
    user: "user-42",
    tools: [{
      type: "function",
      function: { name: "lookup", description: "Look up", parameters: { type: "object" } },
    }],
    tool_choice: "required",
    parallel_tool_calls: false,
  });
  openaiChatRequestSchema.parse(translated);
});

Deno.test("Anthropic → OpenAI request: provider-run tools and unknown blocks are refused", () => {
  const base = { model: "m", max_tokens: 10, messages: [{ role: "user", content: "Hi" }] };
  assertGatewayError(
    () =>
      anthropicToOpenAIRequest(
        anthropicBody({ ...base, tools: [{ type: "web_search_20250305", name: "web_search" }] }),
      ),
    "untranslatable_request",
    "tools.0",
  );
  assertGatewayError(
    () =>
      anthropicToOpenAIRequest(anthropicBody({
        ...base,
        messages: [{ role: "user", content: [{ type: "search_result", source: "s", title: "t", content: [] }] }],
      })),
    "untranslatable_request",
    "messages.0.content.0",
  );
  assertGatewayError(
    () =>
      anthropicToOpenAIRequest(anthropicBody({
        ...base,
        messages: [{
          role: "user",
          content: [{
            type: "tool_result",
            tool_use_id: "t",
            content: [{ type: "image", source: { type: "url", url: "https://x.test/a.png" } }],
          }],
        }],
      })),
    "untranslatable_request",
    "messages.0.content.0.content.0",
  );
});

Deno.test("requests survive a round trip through the other format", () => {
  const anthropicRequest = anthropicBody({
    model: "m",
    max_tokens: 300,
    system: "S",
    messages: [
      { role: "user", content: "Hi" },
      {
        role: "assistant",
        content: [
          { type: "text", text: "Let me look." },
          { type: "tool_use", id: "t1", name: "f", input: { a: [1, 2] } },
        ],
      },
      {
        role: "user",
        content: [
          { type: "tool_result", tool_use_id: "t1", content: "done" },
          { type: "text", text: "So?" },
        ],
      },
    ],
    stop_sequences: ["X"],
    temperature: 0.5,
    top_p: 0.8,
    tools: [{ name: "f", description: "F", input_schema: { type: "object", properties: {} } }],
    tool_choice: { type: "auto" },
  });
  assert.deepEqual(openaiToAnthropicRequest(anthropicToOpenAIRequest(anthropicRequest)), anthropicRequest);

  const openaiRequest = openaiBody({
    model: "m",
    max_tokens: 300,
    messages: [
      { role: "system", content: "S" },
      { role: "user", content: "Hi" },
      {
        role: "assistant",
        content: "Let me look.",
        tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: '{"a":[1,2]}' } }],
      },
      { role: "tool", tool_call_id: "c1", content: "done" },
    ],
    stop: ["X"],
    temperature: 0.5,
    tools: [{ type: "function", function: { name: "f", description: "F", parameters: { type: "object" } } }],
    tool_choice: "auto",
    stream: true,
    stream_options: { include_usage: true },
  });
  assert.deepEqual(anthropicToOpenAIRequest(openaiToAnthropicRequest(openaiRequest)), openaiRequest);
});

// ─── JSON answers ───────────────────────────────────────────────────────────────────────────

const anthropicMessage: anthropic.AnthropicMessage = {
  id: "msg_1",
  type: "message",
  role: "assistant",
  model: "claude-sonnet-4-5",
  content: [
    { type: "thinking", thinking: "hm", signature: "s" },
    { type: "text", text: "Checking." },
    { type: "tool_use", id: "toolu_1", name: "lookup", input: { q: "cats" } },
  ],
  stop_reason: "tool_use",
  stop_sequence: null,
  usage: { input_tokens: 20, cache_read_input_tokens: 1000, cache_creation_input_tokens: 0, output_tokens: 30 },
};

Deno.test("Anthropic → OpenAI answer: text, tool calls, finish reason, usage", () => {
  const completion = anthropicToOpenAIResponse(anthropicMessage);
  assert.equal(typeof completion.created, "number");
  assert.deepEqual({ ...completion, created: 0 }, {
    id: "msg_1",
    object: "chat.completion",
    created: 0,
    model: "claude-sonnet-4-5",
    choices: [{
      index: 0,
      message: {
        role: "assistant",
        content: "Checking.",
        refusal: null,
        tool_calls: [{
          id: "toolu_1",
          type: "function",
          function: { name: "lookup", arguments: '{"q":"cats"}' },
        }],
      },
      logprobs: null,
      finish_reason: "tool_calls",
    }],
    usage: {
      prompt_tokens: 1020,
      completion_tokens: 30,
      total_tokens: 1050,
      prompt_tokens_details: { cached_tokens: 1000 },
    },
  });
  // The answer's usage reads the same in either format.
  assert.deepEqual(
    openai.usageFromResponse(completion),
    { ...anthropic.usageFromResponse(anthropicMessage), reasoningTokens: 0 },
  );
});

Deno.test("finish reasons map both ways", () => {
  const finish = (stop_reason: string) =>
    anthropicToOpenAIResponse({ ...anthropicMessage, stop_reason }).choices[0].finish_reason;
  assert.equal(finish("end_turn"), "stop");
  assert.equal(finish("max_tokens"), "length");
  assert.equal(finish("stop_sequence"), "stop");
  assert.equal(finish("tool_use"), "tool_calls");

  const stop = (finish_reason: string) =>
    openaiToAnthropicResponse({
      choices: [{ message: { content: "x" }, finish_reason }],
    }).stop_reason;
  assert.equal(stop("stop"), "end_turn");
  assert.equal(stop("length"), "max_tokens");
  assert.equal(stop("tool_calls"), "tool_use");
  assert.equal(stop("content_filter"), "refusal");
});

Deno.test("OpenAI → Anthropic answer: blocks, stop reason, cached input kept apart", () => {
  const message = openaiToAnthropicResponse(openai.completionSchema.parse({
    id: "chatcmpl-1",
    object: "chat.completion",
    created: 1,
    model: "gpt-4o",
    choices: [{
      index: 0,
      message: {
        role: "assistant",
        content: "Checking.",
        tool_calls: [{ id: "call_1", type: "function", function: { name: "f", arguments: '{"q":1}' } }],
      },
      finish_reason: "tool_calls",
    }],
    usage: { prompt_tokens: 1100, completion_tokens: 40, prompt_tokens_details: { cached_tokens: 1024 } },
  }));
  assert.deepEqual(message, {
    id: "chatcmpl-1",
    type: "message",
    role: "assistant",
    model: "gpt-4o",
    content: [
      { type: "text", text: "Checking." },
      { type: "tool_use", id: "call_1", name: "f", input: { q: 1 } },
    ],
    stop_reason: "tool_use",
    stop_sequence: null,
    usage: { input_tokens: 76, output_tokens: 40, cache_read_input_tokens: 1024, cache_creation_input_tokens: 0 },
  });
  assert.deepEqual(anthropic.usageFromResponse(message), {
    inputTokens: 1100,
    outputTokens: 40,
    cachedInputTokens: 1024,
    cacheWriteTokens: 0,
    reasoningTokens: 0,
  });
});

Deno.test("answers survive a round trip, and unreadable ones are the provider's fault", () => {
  const message = { ...anthropicMessage, content: anthropicMessage.content.slice(1) };
  assert.deepEqual(openaiToAnthropicResponse(anthropicToOpenAIResponse(message)), message);
  assertGatewayError(
    () => openaiToAnthropicResponse({ choices: [] }),
    "upstream_invalid_response",
  );
  assertGatewayError(
    () =>
      openaiToAnthropicResponse({
        choices: [{
          message: { tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: '{"q":' } }] },
          finish_reason: "length",
        }],
      }),
    "upstream_invalid_response",
  );
});

// ─── Streams ────────────────────────────────────────────────────────────────────────────────

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
      usage: { input_tokens: 10, cache_read_input_tokens: 900, cache_creation_input_tokens: 100, output_tokens: 1 },
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
  event({ type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: '{"q":' } }),
  event({ type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: "1}" } }),
  event({ type: "content_block_stop", index: 1 }),
  event({
    type: "message_delta",
    delta: { stop_reason: "tool_use", stop_sequence: null },
    usage: { output_tokens: 25 },
  }),
  event({ type: "message_stop" }),
];

const chunkOf = (delta: object, finish_reason: string | null = null) => ({
  id: "msg_1",
  object: "chat.completion.chunk",
  model: "claude-sonnet-4-5",
  choices: [{ index: 0, delta, logprobs: null, finish_reason }],
});

const withoutCreated = (events: SseEvent[]) =>
  payloads(events).map((p) => {
    if (p === "[DONE]") return p;
    assert.equal(typeof p.created, "number");
    delete p.created;
    return p;
  });

Deno.test("Anthropic → OpenAI stream: role, content, tool calls, finish, usage, [DONE]", () => {
  const out = translate(anthropicToOpenAIStream({ includeUsage: true }), anthropicStream);
  assert.deepEqual(withoutCreated(out), [
    chunkOf({ role: "assistant", content: "" }),
    chunkOf({ content: "Hi" }),
    chunkOf({
      tool_calls: [{ index: 0, id: "toolu_1", type: "function", function: { name: "lookup", arguments: "" } }],
    }),
    chunkOf({ tool_calls: [{ index: 0, function: { arguments: '{"q":' } }] }),
    chunkOf({ tool_calls: [{ index: 0, function: { arguments: "1}" } }] }),
    chunkOf({}, "tool_calls"),
    {
      id: "msg_1",
      object: "chat.completion.chunk",
      model: "claude-sonnet-4-5",
      choices: [],
      usage: {
        prompt_tokens: 1010,
        completion_tokens: 25,
        total_tokens: 1035,
        prompt_tokens_details: { cached_tokens: 900 },
      },
    },
    "[DONE]",
  ]);
  // The client's stream reads as a complete answer, with the upstream usage, except for cache
  // writes, which the OpenAI format has no field for (settlement reads the upstream stream).
  const client = openai.createStreamTracker();
  const upstream = anthropic.createStreamTracker();
  out.forEach((e) => client.observe(e));
  anthropicStream.forEach((e) => upstream.observe(e));
  assert.equal(client.finished, true);
  assert.deepEqual(client.usage, { ...upstream.usage, cacheWriteTokens: 0 });
});

Deno.test("Anthropic → OpenAI stream: no usage chunk unless asked", () => {
  const out = payloads(
    translate(anthropicToOpenAIStream({ includeUsage: false }), anthropicStream),
  );
  assert.equal(out.some((p) => p !== "[DONE]" && p.usage), false);
  assert.equal(out.at(-1), "[DONE]");
});

Deno.test("Anthropic → OpenAI stream: a usage-only message_delta finishes nothing", () => {
  const revised = [
    ...anthropicStream.slice(0, 4),
    event({ type: "message_delta", delta: { stop_reason: null }, usage: { output_tokens: 3 } }),
    ...anthropicStream.slice(-2),
  ];
  const out = payloads(translate(anthropicToOpenAIStream({ includeUsage: false }), revised));
  const finishes = out.filter((p) => p !== "[DONE]" && p.choices[0]?.finish_reason);
  assert.equal(finishes.length, 1);
  assert.equal(finishes[0].choices[0].finish_reason, "tool_calls");
});

Deno.test("Anthropic → OpenAI stream: an upstream error ends with an error chunk, no [DONE]", () => {
  const failed = [
    ...anthropicStream.slice(0, 4),
    event({ type: "error", error: { type: "overloaded_error", message: "Overloaded" } }),
  ];
  const out = payloads(translate(anthropicToOpenAIStream({ includeUsage: true }), failed));
  assert.deepEqual(out.at(-1), {
    error: {
      message: "The provider failed during the response (overloaded_error): Overloaded",
      type: "api_error",
      param: null,
      code: "upstream_error",
    },
  });
  assert.equal(out.includes("[DONE]"), false);
});

Deno.test("Anthropic → OpenAI stream: a cut stream ends without [DONE] or finish", () => {
  const out = payloads(
    translate(anthropicToOpenAIStream({ includeUsage: true }), anthropicStream.slice(0, 6)),
  );
  assert.equal(out.includes("[DONE]"), false);
  assert.equal(out.some((p) => p !== "[DONE]" && p.choices?.[0]?.finish_reason), false);
});

const openaiChunk = (delta: object, finish_reason: string | null = null) =>
  chunk({ id: "chatcmpl-1", model: "gpt-4o", choices: [{ index: 0, delta, finish_reason }] });

const openaiStream = [
  openaiChunk({ role: "assistant", content: "" }),
  openaiChunk({ content: "Hel" }),
  openaiChunk({ content: "lo" }),
  openaiChunk({ tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "f", arguments: "" } }] }),
  openaiChunk({ tool_calls: [{ index: 0, function: { arguments: '{"q":' } }] }),
  openaiChunk({ tool_calls: [{ index: 0, function: { arguments: "1}" } }] }),
  openaiChunk({ tool_calls: [{ index: 1, id: "call_2", type: "function", function: { name: "g", arguments: "{}" } }] }),
  openaiChunk({}, "tool_calls"),
  chunk({
    id: "chatcmpl-1",
    model: "gpt-4o",
    choices: [],
    usage: { prompt_tokens: 1100, completion_tokens: 40, prompt_tokens_details: { cached_tokens: 1024 } },
  }),
  done,
];

Deno.test("OpenAI → Anthropic stream: the full event sequence", () => {
  const out = translate(openaiToAnthropicStream(), openaiStream);
  assert.deepEqual(out.map((e) => e.event), [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "content_block_start",
    "content_block_delta",
    "content_block_delta",
    "content_block_stop",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
  ]);
  assert.deepEqual(payloads(out), [
    {
      type: "message_start",
      message: {
        id: "chatcmpl-1",
        type: "message",
        role: "assistant",
        model: "gpt-4o",
        content: [],
        stop_reason: null,
        stop_sequence: null,
        usage: { input_tokens: 0, output_tokens: 0 },
      },
    },
    { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } },
    { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Hel" } },
    { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "lo" } },
    { type: "content_block_stop", index: 0 },
    { type: "content_block_start", index: 1, content_block: { type: "tool_use", id: "call_1", name: "f", input: {} } },
    { type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: '{"q":' } },
    { type: "content_block_delta", index: 1, delta: { type: "input_json_delta", partial_json: "1}" } },
    { type: "content_block_stop", index: 1 },
    { type: "content_block_start", index: 2, content_block: { type: "tool_use", id: "call_2", name: "g", input: {} } },
    { type: "content_block_delta", index: 2, delta: { type: "input_json_delta", partial_json: "{}" } },
    { type: "content_block_stop", index: 2 },
    {
      type: "message_delta",
      delta: { stop_reason: "tool_use", stop_sequence: null },
      usage: { input_tokens: 76, output_tokens: 40, cache_read_input_tokens: 1024, cache_creation_input_tokens: 0 },
    },
    { type: "message_stop" },
  ]);
  // The client's stream reads as a complete answer, with the same usage as the upstream one.
  const client = anthropic.createStreamTracker();
  const upstream = openai.createStreamTracker();
  out.forEach((e) => client.observe(e));
  openaiStream.forEach((e) => upstream.observe(e));
  assert.equal(client.finished, true);
  assert.deepEqual(client.usage, upstream.usage);
});

Deno.test("OpenAI → Anthropic stream: a cut stream ends without message_stop", () => {
  for (const cut of [openaiStream.slice(0, 5), [...openaiStream.slice(0, 5), done]]) {
    const out = translate(openaiToAnthropicStream(), cut);
    assert.equal(out.some((e) => e.event === "message_stop" || e.event === "message_delta"), false);
  }
});

Deno.test("OpenAI → Anthropic stream: an upstream error ends with event: error", () => {
  const failed = [...openaiStream.slice(0, 3), chunk({ error: { message: "boom", type: "server_error" } })];
  const out = translate(openaiToAnthropicStream(), failed);
  assert.equal(out.at(-1)?.event, "error");
  assert.deepEqual(JSON.parse(out.at(-1)!.data), {
    type: "error",
    error: {
      type: "api_error",
      message: "The provider failed during the response (server_error): boom",
      code: "upstream_error",
    },
  });
  assert.equal(out.some((e) => e.event === "message_stop"), false);
});
