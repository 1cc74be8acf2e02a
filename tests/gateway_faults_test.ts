/**
 * Provider faults, as the provider stand-in plays them: retries honouring retry-after, fallback
 * across providers (translating formats), hangs and timeouts, streams cut mid-way, clients that
 * leave. Whatever happens, an admitted call ends as exactly one ai_api_calls row.
 */
import assert from "node:assert/strict";
import { OpenAI } from "./deps.ts";
import {
  admin,
  createUser,
  integration,
  isolatedModel,
  prompt,
  settledCall,
  startTestGateway,
} from "./stack/harness.ts";

const gateway = await startTestGateway({
  TOLLGATE_ATTEMPT_TIMEOUT_MS: "1500",
  TOLLGATE_DEADLINE_MS: "6000",
  TOLLGATE_STREAM_IDLE_TIMEOUT_MS: "1500",
});

/** A chat call on a model whose circuit breakers no other test touches. */
async function chat(token: string, content: string, extra: Record<string, unknown> = {}) {
  const { model } = await isolatedModel();
  return await fetch(`${gateway.openaiBase}/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content }], ...extra }),
  });
}

integration("faults: a 429 with retry-after is retried after the wait, and the call succeeds", async () => {
  const user = await createUser();
  const key = crypto.randomUUID();
  const started = performance.now();
  const response = await chat(user.token, prompt("Hi", `status=429 retry_after=1 times=1 key=${key} words=3`));
  assert.equal(response.status, 200);
  await response.body?.cancel();
  assert.ok(performance.now() - started >= 950, "the provider's retry-after was honoured");
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.status, "success");
  assert.equal(row.attempts, 2);
  assert.equal(row.fallback_from, null);
});

integration("faults: a provider failing every time falls back to the next one in the route", async () => {
  const user = await createUser();
  // The first three attempts (all of OpenAI's) fail; the fourth, at Anthropic, succeeds.
  const key = crypto.randomUUID();
  const response = await chat(user.token, prompt("Hi", `status=500 times=3 key=${key} words=4`));
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.equal(body.choices[0].message.content.split(" ").length, 4);
  assert.equal(response.headers.get("x-tollgate-provider"), "anthropic");
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.status, "success");
  assert.equal(row.provider, "anthropic");
  assert.match(String(row.fallback_from), /^openai\/test-.*-primary$/);
  assert.equal(row.attempts, 4);
});

integration("faults: when every provider fails, 503 in the endpoint's format and an error row", async () => {
  const user = await createUser();
  const response = await chat(user.token, prompt("Hi", "status=503"));
  assert.equal(response.status, 503);
  const body = await response.json();
  assert.equal(body.error.code, "provider_unavailable");
  assert.ok(response.headers.get("retry-after"));
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.status, "error");
  assert.equal(row.error_code, "provider_unavailable");
  assert.equal(Number(row.estimated_cost), 0);
});

integration("faults: a provider that hangs times out (504) inside the deadline, settled as timeout", async () => {
  const user = await createUser();
  const started = performance.now();
  const response = await chat(user.token, prompt("Hi", "hang=1"));
  assert.equal(response.status, 504);
  assert.equal((await response.json()).error.code, "provider_timeout");
  assert.ok(performance.now() - started < 8000);
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.status, "timeout");
});

integration("faults: a stream cut mid-way ends with an error event, never as a finished answer", async () => {
  const user = await createUser();
  const { model } = await isolatedModel();
  const openai = new OpenAI({ baseURL: gateway.openaiBase, apiKey: user.token, maxRetries: 0 });
  const { data: stream, response } = await openai.chat.completions.create({
    model,
    stream: true,
    messages: [{ role: "user", content: prompt("Hi", "words=20 drop_after=5") }],
  }).withResponse();
  let text = "";
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  }, /truncated|ended before/);
  assert.ok(text.length > 0, "the first chunks arrived before the cut");
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.status, "error");
  assert.equal(row.error_code, "upstream_stream_cut");
  assert.ok(Number(row.output_tokens) > 0, "partial output is charged");
  assert.ok(Number(row.estimated_cost) > 0);
});

integration("faults: a stream that goes silent is ended by the idle timeout", async () => {
  const user = await createUser();
  const response = await chat(user.token, prompt("Hi", "words=3 chunk_delay_ms=4000"), { stream: true });
  assert.equal(response.status, 200);
  const text = await response.text();
  assert.match(text, /"code":"provider_timeout"/);
  assert.doesNotMatch(text, /\[DONE\]/);
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.status, "timeout");
});

integration("faults: a client that leaves mid-stream is settled as client_closed with output so far", async () => {
  const user = await createUser();
  const response = await chat(user.token, prompt("Hi", "words=50 chunk_delay_ms=30"), { stream: true });
  const reader = response.body!.getReader();
  await reader.read();
  await reader.read();
  await reader.cancel();
  const row = await settledCall(response.headers.get("x-request-id"));
  assert.equal(row.status, "client_closed");
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(gateway.provider.inFlight(), 0, "the upstream request was aborted");
});

integration("faults: exactly one row per admitted call across a burst of mixed faults", async () => {
  const user = await createUser({ tier: "pro" });
  const directives = ["words=3", "status=500", "drop_after=2 words=10", "status=429 retry_after=0", "words=1"];
  const responses = await Promise.all(
    directives.map((directive, i) =>
      chat(user.token, prompt(`call ${i}`, directive), { stream: i % 2 === 0 }).then(async (response) => {
        await response.text();
        return response.headers.get("x-request-id")!;
      })
    ),
  );
  for (const requestId of responses) await settledCall(requestId);
  const [{ count }] = await admin`select count(*)::int as count from public.ai_api_calls where user_id = ${user.id}`;
  assert.equal(count, directives.length);
});

integration("faults: with every provider down, a feature allowing stale answers gets its last cached one", async () => {
  const user = await createUser();
  const feature = `stale-${crypto.randomUUID().slice(0, 8)}`;
  await admin`
    insert into tollgate.features (name, priority, cache_ttl_seconds, stale_cache_seconds)
    values (${feature}, 'normal', 1, 3600)`;
  // A model of its own: the outage below opens its circuit breakers, and no one else's.
  const { model } = await isolatedModel();
  const body = JSON.stringify({
    model,
    messages: [{ role: "user", content: prompt(`Remember ${feature}`, "words=3") }],
  });
  const call = (base: string) =>
    fetch(`${base}/chat/completions`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${user.token}`,
        "content-type": "application/json",
        "x-tollgate-feature": feature,
      },
      body,
    });
  const fresh = await call(gateway.openaiBase);
  assert.equal(fresh.status, 200);
  const answer = await fresh.json();
  const freshRow = await settledCall(fresh.headers.get("x-request-id"));
  await new Promise((resolve) => setTimeout(resolve, 1100)); // the entry expires (TTL 1 s)

  // A function server whose providers are all unreachable.
  const down = await startTestGateway({
    OPENAI_BASE_URL: "http://127.0.0.1:1/v1",
    ANTHROPIC_BASE_URL: "http://127.0.0.1:1",
    TOLLGATE_DEADLINE_MS: "3000",
  });
  try {
    const stale = await call(down.openaiBase);
    assert.equal(stale.status, 200);
    assert.equal(stale.headers.get("x-tollgate-cache"), "stale");
    assert.deepEqual(await stale.json(), answer);
    const row = await settledCall(stale.headers.get("x-request-id"));
    assert.equal(row.cached, true);
    assert.equal(row.error_code, "provider_unavailable");
    assert.equal(Number(row.saved_cost), Number(freshRow.estimated_cost));

    // Without a stale window (the default feature), the same outage is an honest 503.
    const plain = await fetch(`${down.openaiBase}/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json" },
      body,
    });
    assert.equal(plain.status, 503);
    assert.equal((await plain.json()).error.code, "provider_unavailable");
  } finally {
    await down.process.stop();
    await down.provider.close();
  }
});
