import assert from "node:assert/strict";
import { Anthropic, OpenAI } from "./deps.ts";
import { sleep } from "../supabase/functions/_shared/runtime.ts";
import { until } from "./stack/util.ts";
import {
  countTokens,
  DEFAULT_API_KEY,
  formatResetDuration,
  parseDirectives,
  promptText,
  type ProviderOptions,
  type ProviderServer,
  startProvider,
  stripDirectives,
} from "./stack/provider.ts";

// ---------------------------------------------------------------------------
// Helpers

async function withProvider(
  fn: (p: ProviderServer) => Promise<void>,
  options: ProviderOptions = {},
): Promise<void> {
  const provider = await startProvider(options);
  try {
    await fn(provider);
  } finally {
    await provider.close();
  }
}

function postOpenai(
  p: ProviderServer,
  body: unknown,
  init: { key?: string; signal?: AbortSignal } = {},
): Promise<Response> {
  return fetch(`${p.url}/v1/chat/completions`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      authorization: `Bearer ${init.key ?? DEFAULT_API_KEY}`,
    },
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal: init.signal,
  });
}

function postAnthropic(
  p: ProviderServer,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  return fetch(`${p.url}/v1/messages`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-api-key": DEFAULT_API_KEY,
      "anthropic-version": "2023-06-01",
      ...headers,
    },
    body: JSON.stringify(body),
  });
}

const chat = (content: string, extra: Record<string, unknown> = {}) => ({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content }],
  ...extra,
});

const messages = (content: string, extra: Record<string, unknown> = {}) => ({
  model: "claude-haiku-4-5",
  max_tokens: 100,
  messages: [{ role: "user", content }],
  ...extra,
});

interface SseEvent {
  event?: string;
  data: string;
}

function parseSse(text: string): SseEvent[] {
  return text.split("\n\n").filter(Boolean).map((frame) => {
    const out: SseEvent = { data: "" };
    for (const line of frame.split("\n")) {
      if (line.startsWith("event: ")) out.event = line.slice(7);
      if (line.startsWith("data: ")) out.data = line.slice(6);
    }
    return out;
  });
}

/** Reads a body to its end; returns the text read and the error, if any. */
async function drain(res: Response): Promise<{ text: string; error?: Error }> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = "";
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) return { text };
      text += decoder.decode(value, { stream: true });
    }
  } catch (error) {
    return { text, error: error as Error };
  }
}

// ---------------------------------------------------------------------------
// Pure parts

Deno.test("parseDirectives reads every key and ignores the rest", () => {
  const d = parseDirectives(
    "hi [[mock reply=one_two_three words=4 status=429 retry_after=2 " +
      "retry_after_ms=150 times=1 key=k1 latency_ms=5 chunk_delay_ms=6 " +
      "drop_after=2 hang=1 cached=10 cache_write=11 reasoning=12 " +
      "ratelimit_remaining_requests=0 ratelimit_remaining_tokens=9 " +
      "ratelimit_reset_ms=250 colour=blue]] there",
  );
  assert.deepEqual(d, {
    reply: "one two three",
    words: 4,
    status: 429,
    retryAfter: 2,
    retryAfterMs: 150,
    times: 1,
    key: "k1",
    latencyMs: 5,
    chunkDelayMs: 6,
    dropAfter: 2,
    hang: true,
    cached: 10,
    cacheWrite: 11,
    reasoning: 12,
    ratelimitRemainingRequests: 0,
    ratelimitRemainingTokens: 9,
    ratelimitResetMs: 250,
  });
  assert.deepEqual(parseDirectives("no directives here"), {});
  assert.deepEqual(parseDirectives("[[mock]]"), {});
  // Malformed values are dropped, later blocks win.
  assert.deepEqual(
    parseDirectives("[[mock words=x status=200 hang=maybe]] [[mock words=2]]"),
    { words: 2 },
  );
  assert.deepEqual(parseDirectives("[[mock status=999 retry_after=1.5]]"), {
    retryAfter: 1.5,
  });
  assert.equal(stripDirectives("a [[mock words=2]] b"), "a b");
});

Deno.test("countTokens and promptText are the documented formula", () => {
  assert.equal(countTokens(""), 1);
  assert.equal(countTokens("abcd"), 1);
  assert.equal(countTokens("abcde"), 2);
  assert.equal(
    promptText(
      [
        { role: "user", content: "hi" },
        {
          role: "user",
          content: [{ type: "image_url" }, { type: "text", text: "there" }],
        },
      ],
      [{ type: "text", text: "sys" }],
    ),
    "sys\nhi\nthere",
  );
});

Deno.test("formatResetDuration uses OpenAI's duration style", () => {
  assert.equal(formatResetDuration(0), "0s");
  assert.equal(formatResetDuration(20), "20ms");
  assert.equal(formatResetDuration(1000), "1s");
  assert.equal(formatResetDuration(8640), "8.64s");
  assert.equal(formatResetDuration(360_000), "6m0s");
  assert.equal(formatResetDuration(3_723_000), "1h2m3s");
});

// ---------------------------------------------------------------------------
// OpenAI

Deno.test("openai: non-stream completion with predictable usage", async () => {
  await withProvider(async (p) => {
    const body = {
      model: "gpt-4o-mini",
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hello there friend [[mock reasoning=3]]" },
      ],
    };
    const res = await postOpenai(p, body);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "application/json");
    assert.match(res.headers.get("x-request-id")!, /^req_/);
    const json = await res.json();
    assert.match(json.id, /^chatcmpl-/);
    assert.equal(json.object, "chat.completion");
    assert.equal(json.model, "gpt-4o-mini");
    assert.equal(typeof json.created, "number");
    assert.equal(typeof json.system_fingerprint, "string");
    const content = "This is a local reply to: Hello there friend";
    assert.deepEqual(json.choices, [{
      index: 0,
      message: {
        role: "assistant",
        content,
        refusal: null,
        annotations: [],
      },
      logprobs: null,
      finish_reason: "stop",
    }]);
    const prompt = countTokens(
      "Be brief.\nHello there friend [[mock reasoning=3]]",
    );
    assert.deepEqual(json.usage, {
      prompt_tokens: prompt,
      completion_tokens: 9 + 3,
      total_tokens: prompt + 12,
      prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: 3,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    });
    assert.equal(p.requests.length, 1);
    assert.equal(p.requests[0].path, "/v1/chat/completions");
    assert.equal(
      p.requests[0].headers.authorization,
      `Bearer ${DEFAULT_API_KEY}`,
    );
    assert.deepEqual(p.requests[0].body, body);
  });
});

Deno.test("openai: max_tokens cuts the reply with finish_reason length", async () => {
  await withProvider(async (p) => {
    const res = await postOpenai(
      p,
      chat("[[mock reply=a_b_c_d cached=40]]", { max_completion_tokens: 2 }),
    );
    const json = await res.json();
    assert.equal(json.choices[0].message.content, "a b");
    assert.equal(json.choices[0].finish_reason, "length");
    assert.equal(json.usage.completion_tokens, 2);
    // The cached prefix comes on top of the visible prompt.
    const visible = countTokens("[[mock reply=a_b_c_d cached=40]]");
    assert.equal(json.usage.prompt_tokens, visible + 40);
    assert.equal(json.usage.prompt_tokens_details.cached_tokens, 40);
  });
});

Deno.test("openai: stream without include_usage", async () => {
  await withProvider(async (p) => {
    const res = await postOpenai(p, chat("[[mock words=3]]", { stream: true }));
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type")!, /^text\/event-stream/);
    const events = parseSse(await res.text());
    assert.equal(events.at(-1)!.data, "[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data));
    assert.equal(chunks.length, 1 + 3 + 1);
    for (const chunk of chunks) {
      assert.equal(chunk.object, "chat.completion.chunk");
      assert.equal(chunk.model, "gpt-4o-mini");
      assert.equal(chunk.id, chunks[0].id);
      assert.equal("usage" in chunk, false);
    }
    assert.deepEqual(chunks[0].choices[0].delta, {
      role: "assistant",
      content: "",
      refusal: null,
    });
    assert.deepEqual(
      chunks.slice(1, 4).map((c) => c.choices[0].delta.content),
      ["lorem", " ipsum", " dolor"],
    );
    assert.deepEqual(chunks[4].choices[0], {
      index: 0,
      delta: {},
      logprobs: null,
      finish_reason: "stop",
    });
  });
});

Deno.test("openai: stream with include_usage ends with a usage chunk", async () => {
  await withProvider(async (p) => {
    const prompt = "Count to two [[mock reply=one_two cached=4]]";
    const res = await postOpenai(
      p,
      chat(prompt, { stream: true, stream_options: { include_usage: true } }),
    );
    const events = parseSse(await res.text());
    assert.equal(events.at(-1)!.data, "[DONE]");
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.data));
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage.prompt_tokens, countTokens(prompt) + 4);
    assert.equal(last.usage.completion_tokens, 2);
    assert.equal(last.usage.prompt_tokens_details.cached_tokens, 4);
    for (const chunk of chunks.slice(0, -1)) assert.equal(chunk.usage, null);
    assert.equal(chunks.at(-2).choices[0].finish_reason, "stop");
    assert.deepEqual(p.requests[0].body, {
      ...chat(prompt),
      stream: true,
      stream_options: { include_usage: true },
    });
  });
});

Deno.test("openai: models list, 404 and request validation", async () => {
  await withProvider(async (p) => {
    const models = await fetch(`${p.url}/v1/models`, {
      headers: { authorization: `Bearer ${DEFAULT_API_KEY}` },
    });
    const list = await models.json();
    assert.equal(list.object, "list");
    assert.ok(list.data.some((m: { id: string }) => m.id === "gpt-4o-mini"));

    const missing = await fetch(`${p.url}/v1/nope`, {
      headers: { authorization: `Bearer ${DEFAULT_API_KEY}` },
    });
    assert.equal(missing.status, 404);
    assert.equal((await missing.json()).error.type, "invalid_request_error");

    const badJson = await postOpenai(p, "{not json");
    assert.equal(badJson.status, 400);
    const err = await badJson.json();
    assert.deepEqual(Object.keys(err.error), ["message", "type", "param", "code"]);
    assert.equal(err.error.type, "invalid_request_error");
    assert.equal(p.requests.at(-1)!.body, "{not json");

    const noMessages = await postOpenai(p, { model: "gpt-4o-mini" });
    assert.equal(noMessages.status, 400);
    await noMessages.body!.cancel();
  });
});

// ---------------------------------------------------------------------------
// Anthropic

Deno.test("anthropic: non-stream message with cache usage", async () => {
  await withProvider(async (p) => {
    const prompt = "Hi there [[mock cached=30 cache_write=20]]";
    const res = await postAnthropic(p, messages(prompt, { system: "Sys" }));
    assert.equal(res.status, 200);
    assert.match(res.headers.get("request-id")!, /^req_/);
    const json = await res.json();
    assert.match(json.id, /^msg_/);
    assert.deepEqual({ ...json, id: "" }, {
      id: "",
      type: "message",
      role: "assistant",
      model: "claude-haiku-4-5",
      content: [{ type: "text", text: "This is a local reply to: Hi there" }],
      stop_reason: "end_turn",
      stop_sequence: null,
      usage: {
        input_tokens: countTokens(`Sys\n${prompt}`),
        cache_creation_input_tokens: 20,
        cache_read_input_tokens: 30,
        output_tokens: 8,
      },
    });
  });
});

Deno.test("anthropic: max_tokens, version header and validation", async () => {
  await withProvider(async (p) => {
    const cut = await postAnthropic(p, messages("x", { max_tokens: 2 }));
    const json = await cut.json();
    assert.equal(json.content[0].text, "This is");
    assert.equal(json.stop_reason, "max_tokens");

    const noVersion = await postAnthropic(p, messages("x"), {
      "anthropic-version": "",
    });
    assert.equal(noVersion.status, 400);
    const err = await noVersion.json();
    assert.equal(err.type, "error");
    assert.equal(err.error.type, "invalid_request_error");
    assert.match(err.error.message, /anthropic-version/);

    const noMax = await postAnthropic(p, {
      model: "claude-haiku-4-5",
      messages: [{ role: "user", content: "x" }],
    });
    assert.equal(noMax.status, 400);
    assert.match((await noMax.json()).error.message, /max_tokens/);
  });
});

Deno.test("anthropic: stream event sequence and usage", async () => {
  await withProvider(async (p) => {
    const prompt = "[[mock reply=Hello_world cached=5]]";
    const res = await postAnthropic(p, messages(prompt, { stream: true }));
    assert.match(res.headers.get("content-type")!, /^text\/event-stream/);
    const events = parseSse(await res.text());
    assert.deepEqual(events.map((e) => e.event), [
      "message_start",
      "content_block_start",
      "ping",
      "content_block_delta",
      "content_block_delta",
      "content_block_stop",
      "message_delta",
      "message_stop",
    ]);
    const data = events.map((e) => JSON.parse(e.data));
    data.forEach((d, i) => assert.equal(d.type, events[i].event));
    assert.deepEqual(data[0].message.usage, {
      input_tokens: countTokens(prompt),
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 5,
      output_tokens: 1,
    });
    assert.deepEqual(data[0].message.content, []);
    assert.equal(data[0].message.stop_reason, null);
    assert.deepEqual(data[1].content_block, { type: "text", text: "" });
    assert.deepEqual(
      data.slice(3, 5).map((d) => d.delta),
      [{ type: "text_delta", text: "Hello" }, {
        type: "text_delta",
        text: " world",
      }],
    );
    assert.deepEqual(data[6], {
      type: "message_delta",
      delta: { stop_reason: "end_turn", stop_sequence: null },
      usage: { output_tokens: 2 },
    });
  });
});

// ---------------------------------------------------------------------------
// Auth

Deno.test("auth: bad or missing keys get 401 in each format; keys rotate", async () => {
  await withProvider(async (p) => {
    const bad = await postOpenai(p, chat("x"), { key: "wrong" });
    assert.equal(bad.status, 401);
    assert.equal((await bad.json()).error.code, "invalid_api_key");

    const anthropic = await postAnthropic(p, messages("x"), {
      "x-api-key": "wrong",
    });
    assert.equal(anthropic.status, 401);
    assert.deepEqual((await anthropic.json()).error, {
      type: "authentication_error",
      message: "invalid x-api-key",
    });

    // Anthropic also takes a Bearer token.
    const bearer = await fetch(`${p.url}/v1/messages`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${DEFAULT_API_KEY}`,
        "anthropic-version": "2023-06-01",
      },
      body: JSON.stringify(messages("x")),
    });
    assert.equal(bearer.status, 200);
    await bearer.body!.cancel();

    p.setKeys(["new-key"]);
    const old = await postOpenai(p, chat("x"));
    assert.equal(old.status, 401);
    await old.body!.cancel();
    const rotated = await postOpenai(p, chat("x"), { key: "new-key" });
    assert.equal(rotated.status, 200);
    await rotated.body!.cancel();
  }, { apiKeys: [DEFAULT_API_KEY] });
});

// ---------------------------------------------------------------------------
// Faults

Deno.test("fault: 429 with retry-after headers in both formats", async () => {
  await withProvider(async (p) => {
    const res = await postOpenai(
      p,
      chat("[[mock status=429 retry_after=3 retry_after_ms=2500]]"),
    );
    assert.equal(res.status, 429);
    assert.equal(res.headers.get("retry-after"), "3");
    assert.equal(res.headers.get("retry-after-ms"), "2500");
    const err = await res.json();
    assert.equal(err.error.code, "rate_limit_exceeded");
    assert.equal(typeof err.error.message, "string");

    const a = await postAnthropic(p, messages("[[mock status=429 retry_after=7]]"));
    assert.equal(a.status, 429);
    assert.equal(a.headers.get("retry-after"), "7");
    assert.equal((await a.json()).error.type, "rate_limit_error");
  });
});

Deno.test("fault: 529 overloaded and 5xx errors", async () => {
  await withProvider(async (p) => {
    const a = await postAnthropic(p, messages("[[mock status=529]]"));
    assert.equal(a.status, 529);
    const body = await a.json();
    assert.equal(body.type, "error");
    assert.deepEqual(body.error, {
      type: "overloaded_error",
      message: "Overloaded",
    });
    assert.equal(body.request_id, a.headers.get("request-id"));

    const o = await postOpenai(p, chat("[[mock status=503]]"));
    assert.equal(o.status, 503);
    assert.equal((await o.json()).error.type, "server_error");

    const a500 = await postAnthropic(p, messages("[[mock status=500]]"));
    assert.equal((await a500.json()).error.type, "api_error");
  });
});

Deno.test("fault: times/key fails the first N requests, then succeeds", async () => {
  await withProvider(async (p) => {
    const prompt = "[[mock status=500 times=2 key=retry-1]]";
    const statuses = [];
    for (let i = 0; i < 3; i++) {
      const res = await postOpenai(p, chat(prompt));
      statuses.push(res.status);
      await res.body!.cancel();
    }
    assert.deepEqual(statuses, [500, 500, 200]);
    // Another key has its own counter.
    const other = await postOpenai(p, chat("[[mock status=500 times=1 key=k2]]"));
    assert.equal(other.status, 500);
    await other.body!.cancel();

    p.reset();
    assert.equal(p.requests.length, 0);
    const again = await postOpenai(p, chat(prompt));
    assert.equal(again.status, 500);
    await again.body!.cancel();
    assert.equal(p.requests.length, 1);
  });
});

Deno.test("fault: latency_ms delays the response", async () => {
  await withProvider(async (p) => {
    const start = performance.now();
    const res = await postOpenai(p, chat("[[mock latency_ms=150]]"));
    assert.ok(performance.now() - start >= 140);
    assert.equal(res.status, 200);
    await res.body!.cancel();
  });
});

Deno.test("fault: drop_after cuts the stream abruptly", async () => {
  await withProvider(async (p) => {
    const res = await postOpenai(
      p,
      chat("[[mock words=10 drop_after=2]]", { stream: true }),
    );
    assert.equal(res.status, 200);
    const { text, error } = await drain(res);
    assert.ok(error, "reading a dropped stream must fail, not end cleanly");
    const content = parseSse(text).map((e) => JSON.parse(e.data));
    assert.equal(content.length, 3); // role chunk + 2 words
    assert.equal(text.includes("[DONE]"), false);

    const a = await postAnthropic(
      p,
      messages("[[mock words=10 drop_after=1]]", { stream: true }),
    );
    const cut = await drain(a);
    assert.ok(cut.error);
    assert.equal(cut.text.includes("message_stop"), false);
    assert.equal(
      parseSse(cut.text).filter((e) => e.event === "content_block_delta")
        .length,
      1,
    );

    // Non-stream: headers, part of the JSON, then the cut.
    const json = await postOpenai(p, chat("[[mock drop_after=0]]"));
    assert.equal(json.status, 200);
    const partial = await drain(json);
    assert.ok(partial.error);
    assert.match(partial.text, /^\{"id":"chatcmpl-/);
    await until(() => p.inFlight() === 0);
  });
});

Deno.test("fault: chunk_delay_ms spaces the chunks out", async () => {
  await withProvider(async (p) => {
    const start = performance.now();
    const res = await postOpenai(
      p,
      chat("[[mock words=3 chunk_delay_ms=30]]", { stream: true }),
    );
    const { error } = await drain(res);
    assert.equal(error, undefined);
    // 6 frames, 5 gaps.
    assert.ok(performance.now() - start >= 140);
  });
});

Deno.test("fault: hang is ended by the client's AbortSignal", async () => {
  await withProvider(async (p) => {
    const controller = new AbortController();
    const pending = postOpenai(p, chat("[[mock hang=1]]"), {
      signal: controller.signal,
    });
    await until(() => p.inFlight() === 1);
    await sleep(30);
    assert.equal(p.inFlight(), 1);
    controller.abort();
    await assert.rejects(pending, { name: "AbortError" });
    await until(() => p.inFlight() === 0);
  });
});

Deno.test("close() ends hung requests and slow streams promptly", async () => {
  const p = await startProvider();
  const hung = postOpenai(p, chat("[[mock hang=1]]"));
  const slow = await postOpenai(
    p,
    chat("[[mock words=5 chunk_delay_ms=10000]]", { stream: true }),
  );
  const reading = drain(slow);
  await until(() => p.inFlight() === 2);
  const start = performance.now();
  await p.close();
  assert.ok(performance.now() - start < 1000);
  await assert.rejects(hung);
  const { error } = await reading;
  assert.ok(error, "a stream cut by close() must not end cleanly");
  assert.equal(p.inFlight(), 0);
});

Deno.test("inFlight counts open streams", async () => {
  await withProvider(async (p) => {
    const res = await postOpenai(
      p,
      chat("[[mock words=2 chunk_delay_ms=50]]", { stream: true }),
    );
    assert.equal(p.inFlight(), 1);
    await res.text();
    await until(() => p.inFlight() === 0);
  });
});

// ---------------------------------------------------------------------------
// Rate-limit headers

Deno.test("rate-limit headers count down per minute and can be overridden", async () => {
  await withProvider(async (p) => {
    const prompt = "[[mock words=5]]";
    const first = await postOpenai(p, chat(prompt));
    await first.body!.cancel();
    const h = first.headers;
    const used = countTokens(prompt) + 5;
    assert.equal(h.get("x-ratelimit-limit-requests"), "100");
    assert.equal(h.get("x-ratelimit-limit-tokens"), "5000");
    assert.equal(h.get("x-ratelimit-remaining-requests"), "99");
    assert.equal(h.get("x-ratelimit-remaining-tokens"), String(5000 - used));
    const duration = /^(\d+h)?(\d+m)?\d+(\.\d+)?m?s$/;
    assert.match(h.get("x-ratelimit-reset-requests")!, duration);
    assert.match(h.get("x-ratelimit-reset-tokens")!, duration);

    const second = await postOpenai(p, chat(prompt));
    await second.body!.cancel();
    assert.equal(second.headers.get("x-ratelimit-remaining-requests"), "98");

    const forced = await postOpenai(
      p,
      chat(
        "[[mock status=429 ratelimit_remaining_requests=0 ratelimit_remaining_tokens=0]]",
      ),
    );
    await forced.body!.cancel();
    assert.equal(forced.headers.get("x-ratelimit-remaining-requests"), "0");
    assert.equal(forced.headers.get("x-ratelimit-remaining-tokens"), "0");

    const a = await postAnthropic(p, messages("[[mock words=1]]"));
    await a.body!.cancel();
    const ah = a.headers;
    assert.equal(ah.get("anthropic-ratelimit-requests-limit"), "100");
    assert.equal(ah.get("anthropic-ratelimit-requests-remaining"), "96");
    assert.equal(ah.get("anthropic-ratelimit-tokens-limit"), "5000");
    for (
      const name of ["requests", "tokens", "input-tokens", "output-tokens"]
    ) {
      assert.ok(ah.has(`anthropic-ratelimit-${name}-remaining`), name);
      const reset = ah.get(`anthropic-ratelimit-${name}-reset`)!;
      assert.match(reset, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
      assert.ok(Date.parse(reset) > Date.now());
    }

    p.reset();
    const fresh = await postOpenai(p, chat(prompt));
    await fresh.body!.cancel();
    assert.equal(fresh.headers.get("x-ratelimit-remaining-requests"), "99");
  }, { rateLimit: { requests: 100, tokens: 5000 } });
});

Deno.test("rate-limit overrides reach every format and error answers; ratelimit_reset_ms sets the reset", async () => {
  await withProvider(async (p) => {
    const directive =
      "[[mock status=429 ratelimit_remaining_requests=0 ratelimit_remaining_tokens=7 ratelimit_reset_ms=1500]]";
    const o = await postOpenai(p, chat(directive));
    await o.body!.cancel();
    assert.equal(o.status, 429);
    assert.equal(o.headers.get("x-ratelimit-remaining-requests"), "0");
    assert.equal(o.headers.get("x-ratelimit-remaining-tokens"), "7");
    assert.equal(o.headers.get("x-ratelimit-reset-requests"), "1.5s");
    assert.equal(o.headers.get("x-ratelimit-reset-tokens"), "1.5s");
    const short = await postOpenai(p, chat("[[mock ratelimit_reset_ms=20]]"));
    await short.body!.cancel();
    assert.equal(short.headers.get("x-ratelimit-reset-requests"), "20ms");

    const before = Date.now();
    const a = await postAnthropic(p, messages(directive));
    await a.body!.cancel();
    assert.equal(a.status, 429);
    assert.equal(a.headers.get("anthropic-ratelimit-requests-remaining"), "0");
    for (const name of ["requests", "tokens", "input-tokens", "output-tokens"]) {
      if (name !== "requests") assert.equal(a.headers.get(`anthropic-ratelimit-${name}-remaining`), "7", name);
      // Exact to the millisecond, so a short reset is not stretched to a whole second.
      const reset = a.headers.get(`anthropic-ratelimit-${name}-reset`)!;
      assert.match(reset, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, name);
      assert.ok(Date.parse(reset) >= before + 1500 && Date.parse(reset) <= Date.now() + 1500, reset);
    }
  });
});

// ---------------------------------------------------------------------------
// Official SDKs

Deno.test("official OpenAI SDK parses replies, streams and retries", async () => {
  await withProvider(async (p) => {
    const client = new OpenAI({
      apiKey: DEFAULT_API_KEY,
      baseURL: `${p.url}/v1`,
      maxRetries: 2,
    });
    const completion = await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "[[mock reply=Hi_from_SDK]]" }],
    });
    assert.equal(completion.choices[0].message.content, "Hi from SDK");
    assert.equal(completion.usage?.completion_tokens, 3);

    const stream = await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "[[mock words=4 cached=2]]" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, "lorem ipsum dolor sit");
    assert.equal(usage?.completion_tokens, 4);
    assert.equal(usage?.prompt_tokens_details?.cached_tokens, 2);

    // The SDK honours retry-after-ms and retries the 429 once.
    p.reset();
    const retried = await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{
        role: "user",
        content: "[[mock status=429 times=1 key=sdk retry_after_ms=10]]",
      }],
    });
    assert.equal(retried.choices[0].finish_reason, "stop");
    assert.equal(p.requests.length, 2);
  });
});

Deno.test("official Anthropic SDK parses messages, streams and errors", async () => {
  await withProvider(async (p) => {
    const client = new Anthropic({
      apiKey: DEFAULT_API_KEY,
      baseURL: p.url,
      maxRetries: 0,
    });
    const message = await client.messages.create({
      model: "claude-haiku-4-5",
      max_tokens: 50,
      messages: [{ role: "user", content: "[[mock reply=Hi_from_SDK]]" }],
    });
    assert.deepEqual(message.content, [{ type: "text", text: "Hi from SDK" }]);
    assert.equal(message.usage.output_tokens, 3);
    // This SDK version sends the key as a Bearer token.
    const { authorization, "x-api-key": apiKey } = p.requests[0].headers;
    assert.ok(
      authorization === `Bearer ${DEFAULT_API_KEY}` ||
        apiKey === DEFAULT_API_KEY,
    );

    const prompt = "[[mock words=5 cached=3]]";
    const stream = client.messages.stream({
      model: "claude-haiku-4-5",
      max_tokens: 4,
      messages: [{ role: "user", content: prompt }],
    });
    const final = await stream.finalMessage();
    assert.deepEqual(final.content, [{
      type: "text",
      text: "lorem ipsum dolor sit",
    }]);
    assert.equal(final.stop_reason, "max_tokens");
    assert.equal(final.usage.input_tokens, countTokens(prompt));
    assert.equal(final.usage.output_tokens, 4);
    assert.equal(final.usage.cache_read_input_tokens, 3);

    await assert.rejects(
      () =>
        client.messages.create({
          model: "claude-haiku-4-5",
          max_tokens: 50,
          messages: [{ role: "user", content: "[[mock status=529]]" }],
        }),
      (err: unknown) => {
        assert.ok(err instanceof Anthropic.APIError);
        assert.equal(err.status, 529);
        assert.equal(
          (err.error as { error: { type: string } }).error.type,
          "overloaded_error",
        );
        return true;
      },
    );
  });
});

// ---------------------------------------------------------------------------
// CLI

Deno.test("CLI prints its URL, serves, and stops on SIGTERM", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./stack/provider.ts", import.meta.url).pathname, "--port", "0"],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let output = "";
  while (!output.includes("\n")) {
    const { done, value } = await lines.read();
    if (done) break;
    output += value;
  }
  const match = output.match(/^provider listening on (http:\/\/127\.0\.0\.1:\d+)\n$/);
  assert.ok(match, output);
  const res = await fetch(`${match[1]}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${DEFAULT_API_KEY}` },
    body: JSON.stringify(chat("[[mock reply=pong]]")),
  });
  assert.equal((await res.json()).choices[0].message.content, "pong");
  child.kill("SIGTERM");
  const status = await child.status;
  assert.equal(status.code, 0);
  await lines.cancel();
});
