/**
 * The gateway as its users meet it: the official OpenAI and Anthropic SDKs and supabase-js,
 * pointed at the function with a user's access token, against the provider stand-in.
 */
import assert from "node:assert/strict";
import { Anthropic, createSupabaseClient, OpenAI } from "./deps.ts";
import {
  createUser,
  integration,
  prompt,
  settledCall,
  settledCallsOf,
  stack,
  startTestGateway,
} from "./stack/harness.ts";
import { countTokens } from "./stack/provider.ts";

const gateway = await startTestGateway();

integration("OpenAI SDK: chat.completions.create answers, with limits and request id headers", async () => {
  const user = await createUser();
  const openai = new OpenAI({ baseURL: gateway.openaiBase, apiKey: user.token, maxRetries: 0 });
  const { data, response } = await openai.chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: prompt("Say hello", "words=5") }],
  }).withResponse();

  assert.equal(data.choices[0].message.content?.split(" ").length, 5);
  assert.equal(data.usage?.completion_tokens, 5);
  const requestId = response.headers.get("x-request-id");
  assert.ok(requestId);
  assert.ok(response.headers.get("x-ratelimit-remaining-requests"));
  assert.ok(Number(response.headers.get("x-tollgate-overhead-ms")) >= 0);

  const row = await settledCall(requestId);
  assert.equal(row.status, "success");
  assert.equal(row.user_id, user.id);
  assert.equal(row.provider, "openai");
  assert.equal(row.input_tokens, data.usage?.prompt_tokens);
  assert.equal(row.output_tokens, 5);
  assert.ok(Number(row.estimated_cost) > 0, "gpt-4o-mini is priced");
});

integration("OpenAI SDK: a stream without include_usage is metered but shows no usage chunk", async () => {
  const user = await createUser();
  const openai = new OpenAI({ baseURL: gateway.openaiBase, apiKey: user.token, maxRetries: 0 });
  const { data: stream, response } = await openai.chat.completions.create({
    model: "gpt-4o-mini",
    stream: true,
    messages: [{ role: "user", content: prompt("Stream please", "words=12") }],
  }).withResponse();
  let text = "";
  for await (const chunk of stream) {
    assert.notEqual(chunk.choices.length, 0, "the usage-only chunk the gateway asked for is not passed on");
    text += chunk.choices[0]?.delta?.content ?? "";
  }
  assert.equal(text.trim().split(" ").length, 12);

  const upstream = gateway.provider.requests.at(-1)!.body as { stream_options?: { include_usage?: boolean } };
  assert.equal(upstream.stream_options?.include_usage, true, "usage was requested from the provider");
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.status, "success");
  assert.equal(row.output_tokens, 12);
  assert.ok(Number(row.estimated_cost) > 0);
});

integration("OpenAI SDK: a stream with include_usage ends with the provider's usage", async () => {
  const user = await createUser();
  const openai = new OpenAI({ baseURL: gateway.openaiBase, apiKey: user.token, maxRetries: 0 });
  const stream = await openai.chat.completions.create({
    model: "gpt-4o-mini",
    stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: "user", content: prompt("Count", "words=3") }],
  });
  let usage;
  for await (const chunk of stream) usage = chunk.usage ?? usage;
  assert.equal(usage?.completion_tokens, 3);
});

integration("Anthropic SDK: messages.create and messages.stream, priced from reported usage", async () => {
  const user = await createUser();
  const anthropic = new Anthropic({
    baseURL: gateway.anthropicBase,
    authToken: user.token,
    apiKey: null,
    maxRetries: 0,
  });
  const text = prompt("Hello Claude", "words=7 cached=100");
  const { data: message, response } = await anthropic.messages.create({
    model: "claude-sonnet-4-6",
    max_tokens: 100,
    messages: [{ role: "user", content: text }],
  }).withResponse();
  assert.equal(message.content[0].type, "text");
  assert.equal(message.usage.output_tokens, 7);
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.provider, "anthropic");
  assert.equal(row.input_tokens, countTokens(text) + 100, "input counts cached tokens too");
  assert.equal(row.cached_input_tokens, 100);

  const stream = anthropic.messages.stream({
    model: "claude-sonnet-4-6",
    max_tokens: 100,
    messages: [{ role: "user", content: prompt("Stream, Claude", "words=9") }],
  });
  const final = await stream.finalMessage();
  assert.equal(final.usage.output_tokens, 9);
  const [, streamed] = await settledCallsOf(user.id, 2);
  assert.equal(streamed.status, "success");
  assert.equal(streamed.output_tokens, 9);
});

integration("OpenAI SDK calling a Claude model: translated both ways, streaming included", async () => {
  const user = await createUser();
  const openai = new OpenAI({ baseURL: gateway.openaiBase, apiKey: user.token, maxRetries: 0 });
  const completion = await openai.chat.completions.create({
    model: "claude-sonnet-4-6",
    max_tokens: 50,
    messages: [{ role: "system", content: "Be brief." }, { role: "user", content: prompt("Hi", "words=4") }],
  });
  assert.equal(completion.choices[0].message.content?.split(" ").length, 4);
  assert.equal(completion.choices[0].finish_reason, "stop");
  const sent = gateway.provider.requests.at(-1)!;
  assert.equal(sent.path, "/v1/messages");
  assert.equal((sent.body as { system?: string }).system, "Be brief.");

  const stream = await openai.chat.completions.create({
    model: "claude-sonnet-4-6",
    max_tokens: 50,
    stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: "user", content: prompt("Hi", "words=6") }],
  });
  let text = "";
  let usage;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  assert.equal(text.trim().split(" ").length, 6);
  assert.equal(usage?.completion_tokens, 6);
});

integration("Anthropic SDK calling a GPT model: translated both ways", async () => {
  const user = await createUser();
  const anthropic = new Anthropic({
    baseURL: gateway.anthropicBase,
    authToken: user.token,
    apiKey: null,
    maxRetries: 0,
  });
  const message = await anthropic.messages.create({
    model: "gpt-4o-mini",
    max_tokens: 50,
    messages: [{ role: "user", content: prompt("Hi", "words=3") }],
  });
  assert.equal(message.content[0].type === "text" && message.content[0].text.split(" ").length, 3);
  const final = await anthropic.messages.stream({
    model: "gpt-4o-mini",
    max_tokens: 50,
    messages: [{ role: "user", content: prompt("Hi", "words=5") }],
  }).finalMessage();
  assert.equal(final.usage.output_tokens, 5);
  assert.equal(final.stop_reason, "end_turn");
});

integration("supabase-js: functions.invoke reaches the gateway with the session's token", async () => {
  const user = await createUser();
  const publishableKey = JSON.parse(stack.functionEnv.SUPABASE_PUBLISHABLE_KEYS).default;
  const supabase = createSupabaseClient(gateway.url, publishableKey, {
    global: { headers: { Authorization: `Bearer ${user.token}` } },
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const { data, error } = await supabase.functions.invoke("ai/v1/chat/completions", {
    body: { model: "gpt-4o-mini", messages: [{ role: "user", content: prompt("Hi", "words=2") }] },
  });
  assert.equal(error, null);
  assert.equal(data.choices[0].message.content.split(" ").length, 2);

  const usage = await supabase.functions.invoke("ai/v1/usage", { method: "GET" });
  assert.equal(usage.error, null);
  assert.ok(Array.isArray(usage.data.windows));
});

integration("the user's token never reaches the provider, and no provider key reaches the client", async () => {
  const user = await createUser();
  const response = await fetch(`${gateway.openaiBase}/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4o-mini", user: "another-user", messages: [{ role: "user", content: "Hi" }] }),
  });
  const text = await response.text();
  assert.equal(response.status, 200);
  const upstreamUser = (gateway.provider.requests.at(-1)!.body as { user?: string }).user;
  assert.match(upstreamUser ?? "", /^[0-9a-f]{32}$/, "the provider sees a pseudonym of the verified caller");
  assert.notEqual(upstreamUser, "another-user");
  for (const request of gateway.provider.requests) {
    assert.ok(!JSON.stringify(request).includes(user.token), "the access token was forwarded upstream");
  }
  assert.ok(!text.includes("local-provider-key"));
  assert.ok(![...response.headers.values()].some((value) => value.includes("local-provider-key")));
});
