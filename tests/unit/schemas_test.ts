import assert from "node:assert/strict";
import { GatewayError, type WireFormat } from "../../supabase/functions/_shared/errors.ts";
import {
  anthropicMessagesRequestSchema,
  openaiChatRequestSchema,
  parseRequest,
} from "../../supabase/functions/_shared/schemas.ts";

const user = [{ role: "user", content: "Hi" }];

function rejection(format: WireFormat, body: unknown): GatewayError {
  const schema = format === "openai" ? openaiChatRequestSchema : anthropicMessagesRequestSchema;
  try {
    parseRequest(schema, body, format);
  } catch (error) {
    assert.ok(error instanceof GatewayError);
    assert.equal(error.status, 400);
    assert.equal(error.code, "invalid_request");
    return error;
  }
  assert.fail("the body was accepted");
}

function assertRejected(format: WireFormat, body: unknown, param: string | undefined, words: RegExp) {
  const error = rejection(format, body);
  assert.equal(error.param, param);
  assert.match(error.message, words);
  if (param) assert.ok(error.message.includes(`\`${param}\``), error.message);
}

Deno.test("a valid OpenAI request parses, unknown fields preserved at every level", () => {
  const body = {
    model: "gpt-4o-mini",
    messages: [
      { role: "developer", content: "Be brief." },
      {
        role: "user",
        content: [
          { type: "text", text: "What is this?", vendor_hint: 1 },
          { type: "image_url", image_url: { url: "https://x.test/a.png", detail: "low" } },
          { type: "input_video", input_video: { id: "v1" } },
        ],
      },
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }],
      },
      { role: "tool", tool_call_id: "c1", content: "42" },
    ],
    max_tokens: null,
    stream: true,
    stream_options: { include_usage: true },
    prediction: { type: "content", content: "x" },
    verbosity: "low",
  };
  assert.deepEqual(parseRequest(openaiChatRequestSchema, body, "openai"), body);
});

Deno.test("a valid Anthropic request parses, unknown fields and block types preserved", () => {
  const body = {
    model: "claude-sonnet-4-5",
    max_tokens: 1024,
    system: [{ type: "text", text: "Be brief.", cache_control: { type: "ephemeral" } }],
    messages: [
      {
        role: "user",
        content: [
          { type: "text", text: "Hi" },
          { type: "image", source: { type: "base64", media_type: "image/png", data: "AAAA" } },
          { type: "search_result", source: "https://x.test", title: "t", content: [] },
        ],
      },
      {
        role: "assistant",
        content: [
          { type: "thinking", thinking: "hm", signature: "sig" },
          { type: "tool_use", id: "t1", name: "f", input: { a: 1 } },
        ],
      },
      { role: "user", content: [{ type: "tool_result", tool_use_id: "t1", content: "ok" }] },
    ],
    thinking: { type: "enabled", budget_tokens: 512 },
    tools: [{ type: "web_search_20250305", name: "web_search", max_uses: 2 }],
    service_tier: "auto",
  };
  assert.deepEqual(parseRequest(anthropicMessagesRequestSchema, body, "anthropic"), body);
});

Deno.test("OpenAI errors name the field and say what is wrong", () => {
  const o = (extra: object) => ({ model: "m", messages: user, ...extra });
  assertRejected("openai", { messages: user }, "model", /`model` is required/);
  assertRejected("openai", o({ model: "" }), "model", /must not be empty/);
  assertRejected("openai", o({ messages: [] }), "messages", /must have at least 1 item/);
  assertRejected("openai", o({ max_tokens: 0 }), "max_tokens", /greater than 0/);
  assertRejected("openai", o({ max_tokens: 2.5 }), "max_tokens", /must be an integer/);
  assertRejected(
    "openai",
    o({ max_completion_tokens: "9" }),
    "max_completion_tokens",
    /must be a number \(got a string\)/,
  );
  assertRejected("openai", o({ temperature: 2.5 }), "temperature", /at most 2/);
  assertRejected("openai", o({ top_p: -1 }), "top_p", /at least 0/);
  assertRejected("openai", o({ n: 3 }), "n", /must be 1/);
  assertRejected("openai", o({ stop: 5 }), "stop", /a string or an array \(got a number\)/);
  assertRejected("openai", o({ stream: "yes" }), "stream", /must be a boolean/);
  assertRejected("openai", o({ tool_choice: "always" }), "tool_choice", /"none", "auto", "required" or an object/);
  assertRejected(
    "openai",
    o({ tool_choice: { type: "function", function: {} } }),
    "tool_choice.function.name",
    /is required/,
  );
  assertRejected(
    "openai",
    o({ messages: [{ role: "robot", content: "x" }] }),
    "messages.0.role",
    /one of "system", "developer", "user", "assistant", "tool"/,
  );
  assertRejected(
    "openai",
    o({ messages: [{ role: "user", content: 5 }] }),
    "messages.0.content",
    /a string or an array \(got a number\)/,
  );
  assertRejected(
    "openai",
    o({ messages: [{ role: "user", content: [{ type: "text", text: 5 }] }] }),
    "messages.0.content.0.text",
    /must be a string/,
  );
  assertRejected(
    "openai",
    o({ messages: [{ role: "user", content: [{ type: "image_url", image_url: {} }] }] }),
    "messages.0.content.0.image_url.url",
    /is required/,
  );
  assertRejected(
    "openai",
    o({ messages: [{ role: "tool", content: "x" }] }),
    "messages.0.tool_call_id",
    /is required/,
  );
  assertRejected("openai", [], undefined, /the body must be an object \(got an array\)/);
});

Deno.test("Anthropic errors name the field and say what is wrong", () => {
  const a = (extra: object) => ({ model: "m", max_tokens: 10, messages: user, ...extra });
  assertRejected("anthropic", { model: "m", messages: user }, "max_tokens", /is required/);
  assertRejected("anthropic", a({ temperature: 1.5 }), "temperature", /at most 1/);
  assertRejected("anthropic", a({ top_k: -1 }), "top_k", /at least 0/);
  assertRejected("anthropic", a({ stop_sequences: "END" }), "stop_sequences", /must be an array/);
  assertRejected(
    "anthropic",
    a({ messages: [{ role: "system", content: "x" }] }),
    "messages.0.role",
    /"user", "assistant"/,
  );
  assertRejected("anthropic", a({ tool_choice: { type: "tool" } }), "tool_choice.name", /is required/);
  assertRejected(
    "anthropic",
    a({ messages: [{ role: "user", content: [{ type: "tool_result", content: "x" }] }] }),
    "messages.0.content.0.tool_use_id",
    /is required/,
  );
  assertRejected(
    "anthropic",
    a({ messages: [{ role: "user", content: [{ type: 7 }] }] }),
    "messages.0.content.0.type",
    /must be a string/,
  );
});

Deno.test("the message says which wire format was expected", () => {
  assert.match(rejection("openai", {}).message, /^Invalid Chat Completions request: /);
  assert.match(rejection("anthropic", {}).message, /^Invalid Messages request: /);
});
