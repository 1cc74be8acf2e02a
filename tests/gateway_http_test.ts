/**
 * The gateway's HTTP surface: every refusal in the wire format of the endpoint called, with a
 * stable code; CORS; rate-limit headers and 429s; the account endpoints; fail-closed without
 * a database.
 */
import assert from "node:assert/strict";
import { Anthropic, OpenAI } from "./deps.ts";
import { admin, createUser, integration, prompt, settledCall, startTestGateway } from "./stack/harness.ts";
import { DEFAULT_API_KEY } from "./stack/provider.ts";

const gateway = await startTestGateway();
const chatUrl = `${gateway.openaiBase}/chat/completions`;
const messagesUrl = `${gateway.openaiBase}/messages`;

const post = (url: string, token: string | null, body: string, headers: Record<string, string> = {}) =>
  fetch(url, {
    method: "POST",
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      "content-type": "application/json",
      ...headers,
    },
    body,
  });

integration("http: invalid bodies are 400 in each endpoint's own format, naming the field", async () => {
  const user = await createUser();
  const openai = await post(
    chatUrl,
    user.token,
    JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user" }] }),
  );
  assert.equal(openai.status, 400);
  const openaiError = (await openai.json()).error;
  assert.equal(openaiError.code, "invalid_request");
  assert.equal(openaiError.type, "invalid_request_error");
  assert.match(openaiError.param, /^messages\.0/);

  const anthropic = await post(messagesUrl, user.token, JSON.stringify({ model: "claude-sonnet-4-6", messages: [] }));
  assert.equal(anthropic.status, 400);
  const anthropicError = await anthropic.json();
  assert.equal(anthropicError.type, "error");
  assert.equal(anthropicError.error.type, "invalid_request_error");
  assert.match(anthropicError.error.message, /max_tokens|messages/);

  const malformed = await post(chatUrl, user.token, '{"model": "gpt-4o-mini", "messages": [');
  assert.equal(malformed.status, 400);
  assert.equal((await malformed.json()).error.code, "invalid_json");
});

integration("http: a body too large is 413, a body not JSON is 415", async () => {
  const user = await createUser();
  const huge = JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "x".repeat(5 << 20) }] });
  const tooLarge = await post(chatUrl, user.token, huge);
  assert.equal(tooLarge.status, 413);
  assert.equal((await tooLarge.json()).error.code, "body_too_large");

  const notJson = await post(chatUrl, user.token, "hello", { "content-type": "text/plain" });
  assert.equal(notJson.status, 415);
  assert.equal((await notJson.json()).error.code, "unsupported_media_type");
});

integration("http: no or bad token is 401 in each format, and nothing is recorded", async () => {
  const body = JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] });
  const missing = await post(chatUrl, null, body);
  assert.equal(missing.status, 401);
  assert.equal((await missing.json()).error.code, "missing_token");

  const forged = await post(messagesUrl, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", body);
  assert.equal(forged.status, 401);
  const error = await forged.json();
  assert.equal(error.error.type, "authentication_error");

  const openai = new OpenAI({ baseURL: gateway.openaiBase, apiKey: "not-a-token", maxRetries: 0 });
  await assert.rejects(
    openai.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] }),
    OpenAI.AuthenticationError,
  );
  const anthropic = new Anthropic({
    baseURL: gateway.anthropicBase,
    authToken: "not-a-token",
    apiKey: null,
    maxRetries: 0,
  });
  await assert.rejects(
    anthropic.messages.create({
      model: "claude-sonnet-4-6",
      max_tokens: 5,
      messages: [{ role: "user", content: "Hi" }],
    }),
    Anthropic.AuthenticationError,
  );
});

integration("http: CORS preflight and CORS headers on answers", async () => {
  const preflight = await fetch(chatUrl, {
    method: "OPTIONS",
    headers: {
      origin: "https://app.example.com",
      "access-control-request-method": "POST",
      "access-control-request-headers": "authorization, content-type, x-tollgate-feature",
    },
  });
  await preflight.body?.cancel();
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get("access-control-allow-origin"), "*");
  assert.match(preflight.headers.get("access-control-allow-headers")!, /x-tollgate-feature/);

  const user = await createUser();
  const answer = await post(chatUrl, user.token, JSON.stringify({ model: "gpt-4o-mini", messages: [] }), {
    origin: "https://app.example.com",
  });
  await answer.body?.cancel();
  assert.equal(answer.headers.get("access-control-allow-origin"), "*");
  assert.match(answer.headers.get("access-control-expose-headers")!, /x-ratelimit-remaining-requests/);
});

integration("http: unknown paths are 404 and wrong methods 405, with codes", async () => {
  const notFound = await fetch(`${gateway.openaiBase}/embeddings`, { method: "POST" });
  assert.equal(notFound.status, 404);
  assert.equal((await notFound.json()).error.code, "not_found");
  const wrongMethod = await fetch(chatUrl);
  assert.equal(wrongMethod.status, 405);
  assert.equal((await wrongMethod.json()).error.code, "method_not_allowed");
});

integration("http: past the tier's burst window, 429 with Retry-After and x-ratelimit headers", async () => {
  const user = await createUser();
  const body = JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: prompt("Hi", "words=1") }] });
  let last: Response | undefined;
  const statuses: number[] = [];
  const admitted: (string | null)[] = [];
  for (let i = 0; i < 12; i++) {
    last = await post(chatUrl, user.token, body);
    statuses.push(last.status);
    if (last.status === 429) break;
    admitted.push(last.headers.get("x-request-id"));
    await last.body?.cancel();
  }
  assert.equal(last!.status, 429, `statuses: ${statuses}`);
  const error = (await last!.json()).error;
  assert.equal(error.code, "rate_limited");
  assert.equal(error.type, "rate_limit_error");
  assert.ok(Number(last!.headers.get("retry-after")) >= 1);
  assert.equal(last!.headers.get("x-ratelimit-remaining-requests"), "0");
  assert.ok(last!.headers.get("x-ratelimit-limit-requests"));
  assert.ok(last!.headers.get("x-ratelimit-reset-requests"));
  assert.equal(last!.headers.get("x-tollgate-layer"), "user_window");

  // The rejection is not an admitted call: no ai_api_calls row for it (the admitted ones
  // are settled after their responses).
  for (const requestId of admitted) await settledCall(requestId);
  const [{ count }] = await admin`select count(*)::int as count from public.ai_api_calls where user_id = ${user.id}`;
  assert.equal(count, admitted.length);
});

integration("http: GET /v1/usage and /v1/models describe the caller's own account", async () => {
  const user = await createUser();
  const call = await post(
    chatUrl,
    user.token,
    JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] }),
  );
  await settledCall(call.headers.get("x-request-id"));
  await call.body?.cancel();

  const usage = await fetch(`${gateway.openaiBase}/usage`, { headers: { authorization: `Bearer ${user.token}` } });
  assert.equal(usage.status, 200);
  const account = await usage.json();
  assert.equal(account.tier, "free");
  assert.ok(account.windows.length >= 2);
  assert.ok(account.windows.every((window: { remaining: number; limit: number }) => window.remaining < window.limit));
  assert.ok(Number(account.spend.month_to_date_usd) > 0);

  const openai = new OpenAI({ baseURL: gateway.openaiBase, apiKey: user.token, maxRetries: 0 });
  const models = [];
  for await (const model of openai.models.list()) models.push(model.id);
  assert.ok(models.includes("gpt-4o-mini"));
});

integration(
  "http: POST /v1/estimate says whether a call would pass and what it may cost, reserving nothing",
  async () => {
    const user = await createUser();
    const response = await post(
      `${gateway.openaiBase}/estimate`,
      user.token,
      JSON.stringify({ model: "gpt-4o", max_tokens: 1000, messages: [{ role: "user", content: "Summarize this." }] }),
    );
    assert.equal(response.status, 200);
    const estimate = await response.json();
    assert.equal(estimate.allowed, true);
    assert.ok(Number(estimate.estimated_cost_usd.high) > Number(estimate.estimated_cost_usd.low));
    const [{ count }] = await admin`select count(*)::int as count from public.api_usage where user_id = ${user.id}`;
    assert.equal(count, 0);
  },
);

integration("http: without its database the gateway fails closed with 503, never an unmetered call", async () => {
  const offline = await startTestGateway({ SUPABASE_DB_URL: "postgresql://postgres:postgres@127.0.0.1:1/postgres" });
  try {
    const user = await createUser();
    const response = await fetch(`${offline.openaiBase}/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] }),
    });
    assert.equal(response.status, 503);
    assert.equal((await response.json()).error.code, "database_unavailable");
    assert.equal(offline.provider.requests.length, 0, "the provider was never called");
  } finally {
    await offline.process.stop();
    await offline.provider.close();
  }
});

integration(
  "http: TOLLGATE_DB_UNAVAILABLE=fail_open serves calls without a database, saying they are unmetered",
  async () => {
    const offline = await startTestGateway({
      SUPABASE_DB_URL: "postgresql://postgres:postgres@127.0.0.1:1/postgres",
      TOLLGATE_DB_UNAVAILABLE: "fail_open",
    });
    try {
      const user = await createUser();
      const response = await fetch(`${offline.openaiBase}/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: prompt("Hi", "words=2") }] }),
      });
      assert.equal(response.status, 200);
      assert.match(response.headers.get("x-tollgate-warning") ?? "", /not metered/);
      assert.equal((await response.json()).choices[0].message.content.split(" ").length, 2);
      assert.equal(offline.provider.requests.length, 1);
    } finally {
      await offline.process.stop();
      await offline.provider.close();
    }
  },
);

integration(
  "http: a route to an OpenAI-compatible provider uses its own base URL and key from the environment",
  async () => {
    const compat = await startTestGateway();
    const model = `compat-${crypto.randomUUID().slice(0, 8)}`;
    await admin`insert into tollgate.routes (model, description) values (${model}, 'test route')`;
    await admin`insert into tollgate.route_targets (route_model, position, provider, model) values (${model}, 1, 'groq', ${model})`;
    const withGroq = await startTestGateway({
      GROQ_BASE_URL: `${compat.provider.url}/v1`,
      GROQ_API_KEY: DEFAULT_API_KEY,
    });
    try {
      const user = await createUser();
      const response = await post(
        `${withGroq.openaiBase}/chat/completions`,
        user.token,
        JSON.stringify({ model, messages: [{ role: "user", content: prompt("Hi", "words=3") }] }),
      );
      assert.equal(response.status, 200);
      await response.body?.cancel();
      assert.equal(response.headers.get("x-tollgate-provider"), "groq");
      assert.equal(compat.provider.requests.length, 1, "the call went to the compatible provider's base URL");
      assert.equal(withGroq.provider.requests.length, 0);
      const row = await settledCall(response.headers.get("x-request-id"));
      assert.equal(row.provider, "groq");
      assert.equal(row.priced, false, "a model no price is known for is flagged, not priced at zero silently");
    } finally {
      for (const gateway of [compat, withGroq]) {
        await gateway.process.stop();
        await gateway.provider.close();
      }
    }
  },
);

integration(
  "http: the opt-in response cache answers a repeated call, recorded as cached with the cost it saved",
  async () => {
    const user = await createUser();
    const body = JSON.stringify({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: prompt(`Cache me ${crypto.randomUUID()}`, "words=4") }],
    });
    const first = await post(chatUrl, user.token, body, { "x-tollgate-cache-ttl": "60" });
    assert.equal(first.headers.get("x-tollgate-cache"), "miss");
    const answer = await first.json();
    const firstRow = await settledCall(first.headers.get("x-request-id"));

    const second = await post(chatUrl, user.token, body, { "x-tollgate-cache-ttl": "60" });
    assert.equal(second.status, 200);
    assert.equal(second.headers.get("x-tollgate-cache"), "hit");
    assert.deepEqual(await second.json(), answer);
    const row = await settledCall(second.headers.get("x-request-id"));
    assert.equal(row.cached, true);
    assert.equal(Number(row.estimated_cost), 0);
    assert.equal(Number(row.saved_cost), Number(firstRow.estimated_cost));
  },
);
