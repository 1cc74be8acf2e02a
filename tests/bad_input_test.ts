/**
 * The bad-input corpus: what a careless client, a fuzzer or an attacker can send to the three
 * endpoints that take a body (/v1/chat/completions, /v1/messages, /v1/estimate) — malformed and
 * truncated JSON, wrong types, bodies over the size limit, deeply nested bodies, unknown models
 * and features, invalid UTF-8, odd content types and header tricks, forged tokens, another
 * user's id in the body.
 *
 * Every one of them must get a 4xx — never a 5xx, never a hang — in the wire format of the
 * endpoint called (OpenAI's `{error: {message, type, param, code}}`, Anthropic's
 * `{type: "error", error: {type, message}}`) with a stable `code`; none may leave a row in
 * ai_api_calls or api_usage, nor show another user's data. Afterwards the function process must
 * still be up and serving, with nothing unplanned in its log.
 *
 * Three answers are not refusals, by design, and are checked for what they must be instead:
 * /v1/estimate answers admission's own "no" (unknown feature, model not allowed) as a decision,
 * 200 with `allowed: false`; a model name no provider knows is admitted and sent on, so the
 * provider's 404 comes back as a 4xx and the call is recorded once, as an error that cost
 * nothing; and a valid call that names another user in its body (`user`, `metadata.user_id`)
 * is served and charged to the caller, never to the user it names.
 */
import assert from "node:assert/strict";
import * as jose from "jose";
import { signAccessToken } from "./stack/keys.ts";
import {
  admin,
  createUser,
  integration,
  prompt,
  settledCall,
  stack,
  startLoggedTestGateway,
  type TestUser,
  unexpectedFailure,
} from "./stack/harness.ts";

const gateway = await startLoggedTestGateway();

type Endpoint = "chat" | "messages" | "estimate";
const endpoints: Endpoint[] = ["chat", "messages", "estimate"];
const urls: Record<Endpoint, string> = {
  chat: `${gateway.openaiBase}/chat/completions`,
  messages: `${gateway.anthropicBase}/v1/messages`,
  estimate: `${gateway.openaiBase}/estimate`,
};
/** The wire format each endpoint answers errors in (/v1/estimate is ours, and speaks OpenAI's). */
const formatOf = (endpoint: Endpoint) => endpoint === "messages" ? "anthropic" : "openai";

/** The stable codes the gateway documents for refusals; a corpus answer with any other fails. */
const knownCodes = new Set([
  "invalid_json",
  "invalid_request",
  "body_too_large",
  "unsupported_media_type",
  "invalid_feature",
  "unknown_feature",
  "invalid_cache_ttl",
  "model_not_allowed",
  "missing_token",
  "invalid_token",
  "token_expired",
  "not_found",
  "method_not_allowed",
]);

// A tier whose windows no test here can fill, so that a refusal always comes from the input.
const roomyTier = `bad-input-${crypto.randomUUID().slice(0, 8)}`;
// The victim's own tier, with numbers that would give it away if they showed up in an answer.
const victimTier = `victim-${crypto.randomUUID().slice(0, 8)}`;
await admin`insert into tollgate.tiers (name) values (${roomyTier}), (${victimTier})`;
const victimWindow = "victim-window";
const victimLimit = 987654;
await admin`
  insert into tollgate.tier_windows (tier, name, window_seconds, max_requests)
  values (${roomyTier}, 'minute', 60, 100000), (${victimTier}, ${victimWindow}, 60, ${victimLimit})`;
// A feature that allows one model only.
const narrowFeature = `narrow-${crypto.randomUUID().slice(0, 8)}`;
await admin`insert into tollgate.features (name, allowed_models) values (${narrowFeature}, ${["gpt-4o-mini"]})`;

/** Sends every corpus request; must never have an ai_api_calls or api_usage row. */
const attacker = await createUser({ tier: roomyTier });
/** Whose id and data the corpus tries to reach. */
const victim = await createUser({ tier: victimTier });
/** Makes valid calls that carry the victim's id in the body: admitted, and charged to itself. */
const impostor = await createUser({ tier: roomyTier });
const victimSecret = `victim-secret-${crypto.randomUUID()}`;

/** x-request-id of every corpus answer: none of them may appear in the accounting tables. */
const corpusRequestIds: string[] = [];
/** Request ids of the impostor's admitted calls: exactly these rows may exist for it. */
const impostorCalls: string[] = [];

const openaiBody = (extra: Record<string, unknown> = {}) => ({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Hello" }],
  max_tokens: 16,
  ...extra,
});
const anthropicBody = (extra: Record<string, unknown> = {}) => ({
  model: "claude-haiku-4-5",
  max_tokens: 16,
  messages: [{ role: "user", content: "Hello" }],
  ...extra,
});
const validBody = (endpoint: Endpoint, extra: Record<string, unknown> = {}) =>
  endpoint === "messages" ? anthropicBody(extra) : openaiBody(extra);

interface Sent {
  status: number;
  headers: Headers;
  text: string;
  json: unknown;
}

/** POSTs to an endpoint as `token` (the attacker by default); any answer must come within 20 s. */
async function send(
  endpoint: Endpoint,
  body: BodyInit | null,
  headers: Record<string, string> = {},
  token: string | null = attacker.token,
): Promise<Sent> {
  const response = await fetch(urls[endpoint], {
    method: "POST",
    headers: { ...(token === null ? {} : { authorization: `Bearer ${token}` }), ...headers },
    body,
    signal: AbortSignal.timeout(20_000),
  });
  return await collect(response);
}

async function collect(response: Response): Promise<Sent> {
  const text = await response.text();
  let json: unknown = undefined;
  try {
    json = JSON.parse(text);
  } catch { /* checked by the caller */ }
  return { status: response.status, headers: response.headers, text, json };
}

const sendJson = (endpoint: Endpoint, body: string, headers: Record<string, string> = {}, token?: string | null) =>
  send(endpoint, body, { "content-type": "application/json", ...headers }, token);

/**
 * Wrong answers found by the current corpus test. A corpus test checks every case and then
 * reports all the wrong answers at once, rather than stopping at the first.
 */
let problems: string[] = [];

function corpus(name: string, fn: () => Promise<void>): void {
  integration(name, async () => {
    problems = [];
    await fn();
    if (problems.length) assert.fail(`${problems.length} wrong answer(s):\n- ${problems.join("\n- ")}`);
  });
}

/** checkRefused, with a failure recorded for the end of the test instead of thrown. */
function assertRefused(...args: Parameters<typeof checkRefused>): void {
  try {
    checkRefused(...args);
  } catch (error) {
    problems.push((error as Error).message.split("\n")[0]);
  }
}

/**
 * The checks every corpus answer gets: a 4xx (the expected one when given), in the endpoint's wire
 * format, with a stable code (the expected one when given), a request id, and nothing of the
 * victim's in it.
 */
function checkRefused(
  label: string,
  endpoint: Endpoint,
  sent: Sent,
  expected: { status?: number; code?: string | RegExp; param?: string | RegExp; decidedByAdmission?: boolean } = {},
): void {
  const where = `${label} → ${endpoint}: HTTP ${sent.status} ${sent.text.slice(0, 300)}`;
  const requestId = sent.headers.get("x-request-id");
  if (requestId) corpusRequestIds.push(requestId);
  if (expected.decidedByAdmission && endpoint === "estimate" && sent.status === 200) {
    // /v1/estimate answers "would it be admitted?": admission's own refusals come back as a
    // decision (allowed: false, with the layer and code), not as an error.
    const decision = sent.json as { allowed: boolean; code: string; layer: string };
    assert.equal(decision.allowed, false, where);
    if (typeof expected.code === "string") assert.equal(decision.code, expected.code, where);
    assertNothingOfTheVictim(where, sent);
    return;
  }
  assert.ok(sent.status >= 400 && sent.status < 500, `a 4xx, never a 5xx (${where})`);
  if (expected.status) assert.equal(sent.status, expected.status, where);
  assert.match(sent.headers.get("content-type") ?? "", /^application\/json/, where);
  assert.match(requestId ?? "", /^[0-9a-f-]{36}$/, `a request id (${where})`);
  assert.ok(sent.json !== undefined, `a JSON body (${where})`);
  const body = sent.json as Record<string, Record<string, unknown>>;
  let code: unknown;
  if (formatOf(endpoint) === "anthropic") {
    assert.equal(body.type, "error", `Anthropic's error envelope (${where})`);
    assert.deepEqual(Object.keys(body).sort(), ["error", "type"], where);
    assert.equal(typeof body.error.type, "string", where);
    assert.ok(typeof body.error.message === "string" && body.error.message.length > 0, where);
    code = body.error.code;
  } else {
    assert.deepEqual(Object.keys(body), ["error"], `OpenAI's error envelope (${where})`);
    assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"], where);
    assert.equal(typeof body.error.type, "string", where);
    assert.ok(typeof body.error.message === "string" && body.error.message.length > 0, where);
    assert.ok(body.error.param === null || typeof body.error.param === "string", where);
    if (expected.param !== undefined) {
      if (typeof expected.param === "string") assert.equal(body.error.param, expected.param, where);
      else assert.match(String(body.error.param), expected.param, where);
    }
    code = body.error.code;
  }
  assert.ok(typeof code === "string" && knownCodes.has(code), `a documented, stable code (${where})`);
  if (expected.code instanceof RegExp) assert.match(code as string, expected.code, where);
  else if (expected.code) assert.equal(code, expected.code, where);
  assertNothingOfTheVictim(where, sent);
}

function assertNothingOfTheVictim(where: string, sent: Sent): void {
  const everything = sent.text + JSON.stringify([...sent.headers]);
  assert.ok(!everything.includes(victim.id), `the victim's id is not in the answer (${where})`);
  assert.ok(!everything.includes(victimSecret), `the victim's prompt is not in the answer (${where})`);
  for (const mark of [victimTier, victimWindow, String(victimLimit)]) {
    assert.ok(!everything.includes(mark), `the victim's plan (${mark}) is not in the answer (${where})`);
  }
}

const utf8 = (text: string) => new TextEncoder().encode(text);
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
};

// ─── The victim's own, legitimate activity: something to steal ────────────────────────────

integration("bad input: the victim makes a normal call (cached), so there is data to leak", async () => {
  const response = await fetch(urls.chat, {
    method: "POST",
    headers: {
      authorization: `Bearer ${victim.token}`,
      "content-type": "application/json",
      "x-tollgate-cache-ttl": "600",
    },
    body: JSON.stringify(openaiBody({ messages: [{ role: "user", content: victimSecret }] })),
  });
  assert.equal(response.status, 200);
  assert.ok((await response.text()).includes(victimSecret), "the reply echoes the prompt (the stand-in's default)");
  await settledCall(response.headers.get("x-request-id"));
});

// ─── Malformed and truncated JSON ──────────────────────────────────────────────────────────

corpus("bad input: malformed JSON is 400 invalid_json on every endpoint", async () => {
  const malformed = [
    "",
    "{",
    "}",
    "{]",
    "not json",
    "{'model': 'gpt-4o-mini'}",
    '{"model": "gpt-4o-mini",}',
    '{"model": NaN}',
    '{"model": undefined}',
    '{"model": "gpt-4o-mini" /* comment */}',
    '{"model": "gpt-4o-mini"} trailing',
    '{"model": "gpt-4o-mini"}{"model": "gpt-4o-mini"}',
    '{"model": "\\x41"}',
    '{"model": "unterminated',
    "\u0000",
  ];
  for (const endpoint of endpoints) {
    for (const text of malformed) {
      assertRefused(`malformed ${JSON.stringify(text)}`, endpoint, await sendJson(endpoint, text), {
        status: 400,
        code: "invalid_json",
      });
    }
  }
});

corpus("bad input: a valid body truncated anywhere is 400 invalid_json", async () => {
  for (const endpoint of endpoints) {
    const whole = JSON.stringify(validBody(endpoint, { temperature: 0.5, stop: ["\n"] }));
    // Every cut point: inside keys, strings, numbers, arrays, between tokens.
    for (let length = 1; length < whole.length; length++) {
      assertRefused(`truncated at ${length}`, endpoint, await sendJson(endpoint, whole.slice(0, length)), {
        status: 400,
        code: "invalid_json",
      });
    }
  }
});

// ─── Wrong types ───────────────────────────────────────────────────────────────────────────

corpus("bad input: a body that is not an object is 400 invalid_request", async () => {
  for (const endpoint of endpoints) {
    for (const text of ["null", "true", "42", '"a string"', "[]", '[{"model": "gpt-4o-mini"}]', "{}"]) {
      assertRefused(`body ${text}`, endpoint, await sendJson(endpoint, text), {
        status: 400,
        code: "invalid_request",
      });
    }
  }
});

corpus("bad input: wrong types and out-of-range values are 400 invalid_request naming the field", async () => {
  // [field, value] pairs applied to a valid body; each must be refused before admission.
  const common: [string, unknown][] = [
    ["model", 123],
    ["model", null],
    ["model", ""],
    ["model", ["gpt-4o-mini"]],
    ["model", { name: "gpt-4o-mini" }],
    ["messages", "Hello"],
    ["messages", {}],
    ["messages", []],
    ["messages", [1]],
    ["messages", [null]],
    ["messages", [[]]],
    ["messages", [{ role: "user" }]],
    ["messages", [{ role: "hacker", content: "Hello" }]],
    ["messages", [{ role: "user", content: 5 }]],
    ["messages", [{ role: "user", content: [{ type: "text" }] }]],
    ["messages", [{ role: "user", content: [{ type: "text", text: 5 }] }]],
    ["max_tokens", "16"],
    ["max_tokens", -1],
    ["max_tokens", 0],
    ["max_tokens", 1.5],
    ["max_tokens", true],
    ["stream", "yes"],
    ["stream", 1],
    ["temperature", "hot"],
    ["temperature", -1],
    ["temperature", 1e308],
    ["top_p", 7],
    ["stop_sequences", "STOP"],
    ["tools", {}],
    ["tools", [1]],
  ];
  const openaiOnly: [string, unknown][] = [
    ["n", 2],
    ["stop", 5],
    ["stop", [1]],
    ["user", 5],
    ["metadata", { user_id: 5 }],
    ["stream_options", "include_usage"],
    ["tool_choice", 5],
    ["logit_bias", { "50256": 1000 }],
    ["max_completion_tokens", -5],
    ["messages", [{ role: "tool", content: "x" }]],
  ];
  const anthropicOnly: [string, unknown][] = [
    ["max_tokens", undefined],
    ["max_tokens", null],
    ["system", 5],
    ["system", [{ type: "image" }]],
    ["metadata", { user_id: 5 }],
    ["metadata", "user"],
    ["messages", [{ role: "system", content: "Hello" }]],
    ["top_k", -1],
    ["tool_choice", { type: "tool" }],
  ];
  for (const endpoint of endpoints) {
    const cases = [...common, ...(endpoint === "messages" ? anthropicOnly : openaiOnly)];
    for (const [field, value] of cases) {
      // `stop_sequences` is Anthropic's: on the OpenAI endpoints it is an unknown field, passed through.
      if (field === "stop_sequences" && endpoint !== "messages") continue;
      const body = validBody(endpoint, { [field]: value });
      if (value === undefined) delete (body as Record<string, unknown>)[field];
      assertRefused(`${field}: ${JSON.stringify(value)}`, endpoint, await sendJson(endpoint, JSON.stringify(body)), {
        status: 400,
        code: "invalid_request",
        param: new RegExp(`^${field}`),
      });
    }
  }
  // A JSON number too large for a double parses as Infinity: not a valid max_tokens either.
  for (const endpoint of endpoints) {
    const text = JSON.stringify(validBody(endpoint)).replace('"max_tokens":16', '"max_tokens":1e400');
    assertRefused("max_tokens: 1e400", endpoint, await sendJson(endpoint, text), {
      status: 400,
      code: "invalid_request",
    });
  }
});

// ─── Huge and deeply nested bodies ─────────────────────────────────────────────────────────

corpus("bad input: a body over the 4 MiB limit is 413, declared or endless, and is not read whole", async () => {
  const limit = 4 * 1024 * 1024;
  for (const endpoint of endpoints) {
    // One byte over, with a content-length: refused on the declaration.
    const head = JSON.stringify(validBody(endpoint, { messages: [{ role: "user", content: "" }] }));
    const filler = "x".repeat(limit + 1 - head.length);
    const exact = head.replace('"content":""', `"content":"${filler}"`);
    assert.equal(utf8(exact).length, limit + 1);
    assertRefused("4 MiB + 1 byte", endpoint, await sendJson(endpoint, exact), {
      status: 413,
      code: "body_too_large",
    });

    // An endless body sent chunked (no content-length to refuse on): the gateway must stop reading
    // once the limit is passed and answer, rather than wait for an end that never comes or buffer
    // what keeps arriving. The upload is cancelled once the answer is in.
    const upload = new AbortController();
    const chunk = utf8("x".repeat(64 * 1024));
    const endless = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(utf8('{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"'));
      },
      pull(controller) {
        controller.enqueue(chunk);
      },
    });
    const rssBefore = await residentMemory(gateway.process.pid);
    const timeout = setTimeout(() => upload.abort(new Error("no answer within 20 s")), 20_000);
    try {
      const response = await fetch(urls[endpoint], {
        method: "POST",
        headers: { authorization: `Bearer ${attacker.token}`, "content-type": "application/json" },
        body: endless,
        signal: upload.signal,
      });
      assertRefused("an endless chunked body", endpoint, await collect(response), {
        status: 413,
        code: "body_too_large",
      });
    } catch (error) {
      // A server that stops reading may reset the upload before the client reads the answer:
      // a refusal too, as long as it came in time and the function is still up (checked last).
      assert.ok(!upload.signal.aborted && error instanceof TypeError, `the endless upload ended with ${error}`);
    } finally {
      clearTimeout(timeout);
      upload.abort();
    }
    const rssAfter = await residentMemory(gateway.process.pid);
    if (rssBefore && rssAfter) {
      assert.ok(rssAfter - rssBefore < 64 << 20, `the function did not buffer the upload (+${rssAfter - rssBefore} B)`);
    }
  }
});

/** A process's resident memory in bytes (Linux), or undefined where /proc is not there. */
async function residentMemory(pid: number): Promise<number | undefined> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`).catch(() => "");
  const kilobytes = status.match(/^VmRSS:\s+(\d+) kB/m)?.[1];
  return kilobytes ? Number(kilobytes) * 1024 : undefined;
}

corpus("bad input: deeply nested bodies (100,000 levels) are refused quickly, without a crash", async () => {
  const depth = 100_000;
  const arrays = "[".repeat(depth) + "]".repeat(depth);
  const objects = '{"a":'.repeat(depth) + "1" + "}".repeat(depth);
  for (const endpoint of endpoints) {
    const base = JSON.stringify(validBody(endpoint));
    const nestings: [string, string][] = [
      ["the body itself, arrays", arrays],
      ["the body itself, objects", objects],
      ["messages", base.replace(/"messages":\[.*?\]/, `"messages":${arrays}`)],
      ["a message", base.replace(/"messages":\[.*?\]/, `"messages":[${arrays}]`)],
      ["a content part", base.replace(/"content":"Hello"/, `"content":${arrays}`)],
      ["model", base.replace(/"model":"[^"]*"/, `"model":${objects}`)],
      ["max_tokens", base.replace(/"max_tokens":16/, `"max_tokens":${arrays}`)],
    ];
    for (const [where, text] of nestings) {
      const started = performance.now();
      const sent = await sendJson(endpoint, text);
      const seconds = (performance.now() - started) / 1000;
      assertRefused(`nested in ${where}`, endpoint, sent, { status: 400, code: "invalid_request" });
      assert.ok(seconds < 5, `nested in ${where} → ${endpoint} answered in ${seconds.toFixed(1)} s`);
    }
  }
});

corpus("bad input: deep nesting in a field passed through to the provider does not crash or hang", async () => {
  // Unknown fields are forwarded untouched (providers add fields faster than a gateway learns
  // them), so this body is valid here: what matters is an answer that is not a 5xx, in time,
  // and — if it was admitted — exactly one settled row.
  const depth = 100_000;
  const deep = '{"a":'.repeat(depth) + "1" + "}".repeat(depth);
  for (const endpoint of ["chat", "messages"] as const) {
    const text = JSON.stringify(validBody(endpoint)).replace(/}$/, `,"x_deep":${deep}}`);
    const started = performance.now();
    const sent = await sendJson(endpoint, text, {}, impostor.token);
    assert.ok(sent.status < 500, `${endpoint}: HTTP ${sent.status} ${sent.text.slice(0, 200)}`);
    assert.ok(performance.now() - started < 10_000, "answered in time");
    if (sent.status === 200) impostorCalls.push(sent.headers.get("x-request-id")!);
    else assertRefused("nested in a pass-through field", endpoint, sent);
  }
});

// ─── Unknown models and features ───────────────────────────────────────────────────────────

corpus("bad input: unknown and malformed features, and models the gateway refuses, are 4xx", async () => {
  for (const endpoint of endpoints) {
    const body = JSON.stringify(validBody(endpoint));
    const features: [string, string][] = [
      ["no-such-feature", "unknown_feature"],
      ["Default", "invalid_feature"],
      ["default feature", "invalid_feature"],
      ["", "invalid_feature"],
      ["../default", "invalid_feature"],
      ["default;drop table", "invalid_feature"],
      ["x".repeat(65), "invalid_feature"],
      ["caf\u00e9", "invalid_feature"],
    ];
    for (const [feature, code] of features) {
      assertRefused(
        `feature ${JSON.stringify(feature)}`,
        endpoint,
        await sendJson(endpoint, body, {
          "x-tollgate-feature": feature,
        }),
        { status: 400, code, decidedByAdmission: code === "unknown_feature" },
      );
    }
    // Two x-tollgate-feature headers arrive joined by a comma: not a name.
    const headers = new Headers({ "content-type": "application/json", authorization: `Bearer ${attacker.token}` });
    headers.append("x-tollgate-feature", "default");
    headers.append("x-tollgate-feature", narrowFeature);
    const twice = await collect(await fetch(urls[endpoint], { method: "POST", headers, body }));
    assertRefused("two feature headers", endpoint, twice, { status: 400, code: "invalid_feature" });

    const models: [string, unknown, string, number][] = [
      ["a model the feature does not allow", "gpt-4o", "model_not_allowed", 403],
      ["a model name of 201 characters", "m".repeat(201), "invalid_request", 400],
      ["a model name with a NUL", "gpt-4o-mini\u0000", "invalid_request", 400],
      ["a model name with a lone surrogate", "gpt-\ud800", "invalid_request", 400],
    ];
    for (const [label, model, code, status] of models) {
      const headers: Record<string, string> = label.includes("feature") ? { "x-tollgate-feature": narrowFeature } : {};
      assertRefused(
        label,
        endpoint,
        await sendJson(endpoint, JSON.stringify(validBody(endpoint, { model })), headers),
        {
          status,
          code,
          decidedByAdmission: true,
        },
      );
    }
  }
});

integration(
  "bad input: a model no provider knows is a 4xx in the endpoint's format (one error row, no cost)",
  async () => {
    // The gateway routes a model it has no route for to a provider by name, and the provider
    // decides whether it exists (the stand-in serves any name, so it is told to answer as OpenAI
    // and Anthropic do for an unknown model: 404). The call was admitted, so it is recorded once,
    // as an error that cost nothing — the refusal itself is a 4xx, never a 5xx.
    for (const endpoint of ["chat", "messages"] as const) {
      const model = `no-such-model-${crypto.randomUUID().slice(0, 8)}`;
      const body = validBody(endpoint, {
        model,
        messages: [{ role: "user", content: prompt("Hello", "status=404") }],
      });
      const sent = await sendJson(endpoint, JSON.stringify(body), {}, impostor.token);
      assert.ok(sent.status >= 400 && sent.status < 500, `${endpoint}: HTTP ${sent.status} ${sent.text}`);
      const error = (sent.json as { error: { code: string } }).error;
      assert.equal(error.code, "upstream_rejected");
      if (endpoint === "messages") assert.equal((sent.json as { type: string }).type, "error");
      const row = await settledCall(sent.headers.get("x-request-id"));
      assert.equal(row.status, "error");
      assert.equal(Number(row.estimated_cost), 0);
      impostorCalls.push(row.request_id);
    }
  },
);

// ─── Invalid UTF-8, content types, content encodings ───────────────────────────────────────

corpus("bad input: invalid UTF-8 is 400 invalid_json", async () => {
  const invalid: [string, Uint8Array][] = [
    ["a 0xFF byte", new Uint8Array([0xff])],
    ["an overlong slash", new Uint8Array([0xc0, 0xaf])],
    ["a truncated sequence", new Uint8Array([0xe2, 0x82])],
    ["an encoded surrogate", new Uint8Array([0xed, 0xa0, 0x80])],
    ["a code point past U+10FFFF", new Uint8Array([0xf4, 0x90, 0x80, 0x80])],
    ["a stray continuation byte", new Uint8Array([0x80])],
    ["Latin-1 text", new Uint8Array([0x63, 0x61, 0x66, 0xe9])],
  ];
  for (const endpoint of endpoints) {
    const [head, tail] = JSON.stringify(validBody(endpoint)).split("Hello");
    for (const [label, bytes] of invalid) {
      const body = concat(utf8(head), bytes, utf8(tail));
      assertRefused(label, endpoint, await send(endpoint, body, { "content-type": "application/json" }), {
        status: 400,
        code: "invalid_json",
      });
    }
    // The whole body in UTF-16 (with its byte order mark), as a client that ignores charset might send it.
    const utf16 = new Uint8Array([
      0xff,
      0xfe,
      ...new Uint8Array(
        new Uint16Array(
          [...JSON.stringify(validBody(endpoint))].map((c) => c.charCodeAt(0)),
        ).buffer,
      ),
    ]);
    assertRefused(
      "UTF-16",
      endpoint,
      await send(endpoint, utf16, { "content-type": "application/json; charset=utf-16" }),
      {
        status: 400,
        code: "invalid_json",
      },
    );
  }
});

corpus(
  "bad input: bodies that are not JSON by content type are 415; encoded bodies are not inflated",
  async () => {
    for (const endpoint of endpoints) {
      const body = utf8(JSON.stringify(validBody(endpoint)));
      // A Uint8Array body gets no content-type from fetch: the first case sends none at all.
      for (
        const type of [
          null,
          "text/plain",
          "text/json",
          "application/x-www-form-urlencoded",
          "multipart/form-data; boundary=x",
          "application/jsonx",
          "application/xml",
          "json",
          "",
        ]
      ) {
        const headers: Record<string, string> = type === null ? {} : { "content-type": type };
        assertRefused(`content-type ${JSON.stringify(type)}`, endpoint, await send(endpoint, body, headers), {
          status: 415,
          code: "unsupported_media_type",
        });
      }
      // A gzip body is bytes, not JSON: the gateway does not inflate request bodies (no zip bombs).
      const gzipped = new Uint8Array(
        await new Response(new Blob([body]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer(),
      );
      assertRefused(
        "gzip",
        endpoint,
        await send(endpoint, gzipped, {
          "content-type": "application/json",
          "content-encoding": "gzip",
        }),
        { status: 400, code: "invalid_json" },
      );
    }
  },
);

// ─── Headers: injection, duplicates, forged ids, odd values ────────────────────────────────

integration("bad input: header values with CR/LF/NUL never reach the function through fetch", async () => {
  for (const value of ["default\r\nx-injected: 1", "default\nx-injected: 1", "default\rx", "default\u0000"]) {
    await assert.rejects(
      fetch(urls.chat, { method: "POST", headers: { "x-tollgate-feature": value }, body: "{}" }),
      TypeError,
      `fetch refuses ${JSON.stringify(value)}`,
    );
  }
});

function responseComplete(raw: string): boolean {
  const end = raw.indexOf("\r\n\r\n");
  if (end < 0) return false;
  const head = raw.slice(0, end);
  const length = head.match(/^content-length: (\d+)/im)?.[1];
  if (length !== undefined) return utf8(raw.slice(end + 4)).length >= Number(length);
  if (/^transfer-encoding: chunked/im.test(head)) return raw.endsWith("0\r\n\r\n");
  return false;
}

/** One HTTP/1.1 exchange over a raw socket: what fetch will not send. */
async function rawExchange(url: string, head: string[], body = ""): Promise<{ status: number; raw: string }> {
  const target = new URL(url);
  const conn = await Deno.connect({ hostname: target.hostname, port: Number(target.port) });
  try {
    const request = [
      `POST ${target.pathname} HTTP/1.1`,
      `host: ${target.host}`,
      "connection: close",
      ...head,
      "",
      body,
    ].join("\r\n");
    const bytes = utf8(request);
    for (let written = 0; written < bytes.length;) written += await conn.write(bytes.subarray(written));
    // Read until the response is complete (by its content-length or the last chunk), the server
    // closes, or 10 s pass: a request the server is still waiting on (a body it was promised)
    // gets no answer, which is fine as long as the function does not fall over.
    const chunks: Uint8Array[] = [];
    const deadline = setTimeout(() => conn.close(), 10_000);
    try {
      const buffer = new Uint8Array(65536);
      for (;;) {
        const n = await conn.read(buffer).catch(() => null);
        if (n === null) break;
        chunks.push(buffer.slice(0, n));
        if (responseComplete(new TextDecoder().decode(concat(...chunks)))) break;
      }
    } finally {
      clearTimeout(deadline);
    }
    const raw = new TextDecoder().decode(concat(...chunks));
    return { status: Number(raw.match(/^HTTP\/1\.1 (\d{3})/)?.[1] ?? 0), raw };
  } finally {
    try {
      conn.close();
    } catch { /* closed by the deadline */ }
  }
}

integration(
  "bad input: raw CR/LF injection, obs-fold, NUL and lying lengths get a 4xx and inject nothing",
  async () => {
    const body = JSON.stringify(openaiBody());
    const auth = `authorization: Bearer ${attacker.token}`;
    const json = "content-type: application/json";
    const length = `content-length: ${utf8(body).length}`;
    const cases: [string, string[], string][] = [
      ["a bare CR inside a header value", [auth, json, length, "x-tollgate-feature: default\rx-injected: 1"], body],
      ["an obs-fold continuation line", [auth, json, length, "x-tollgate-feature: default", " x-injected: 1"], body],
      ["a NUL in a header value", [auth, json, length, "x-tollgate-feature: def\u0000ault"], body],
      ["a header without a colon", [auth, json, length, "x-injected"], body],
      ["two different content-lengths", [auth, json, length, "content-length: 3"], body],
      ["content-length and chunked together", [auth, json, length, "transfer-encoding: chunked"], body],
      ["a content-length of 10 GB", [auth, json, "content-length: 10000000000"], body],
      ["a content-length shorter than the body", [auth, json, "content-length: 10"], body],
      ["a negative content-length", [auth, json, "content-length: -1"], body],
      ["a CRLF in the feature (as a second header)", [
        auth,
        json,
        length,
        "x-tollgate-feature: no-such",
        "x-tollgate-feature: default",
      ], body],
    ];
    for (const [label, head, payload] of cases) {
      const { status, raw } = await rawExchange(urls.chat, head, payload);
      assert.ok(status >= 400 && status < 500, `${label}: a 4xx, got ${status}\n${raw.slice(0, 400)}`);
      const [headers, ...rest] = raw.split("\r\n\r\n");
      assert.doesNotMatch(headers, /x-injected/i, `${label}: no injected header`);
      const text = rest.join("\r\n\r\n");
      // An answer from the function itself is in its wire format; the HTTP layer may refuse
      // a malformed request before the function sees it, with an empty body.
      if (/^content-type: application\/json/im.test(headers)) {
        assert.match(text, /"error":\{"message":/, `${label}: OpenAI's error format`);
        const requestId = headers.match(/^x-request-id: (\S+)/im)?.[1];
        if (requestId) corpusRequestIds.push(requestId);
      }
      assert.ok(!raw.includes(victim.id) && !raw.includes(victimSecret), `${label}: nothing of the victim's`);
    }
  },
);

corpus("bad input: odd header values (cache TTL, forged request id, origin) are refused or ignored", async () => {
  for (const endpoint of endpoints) {
    const body = JSON.stringify(validBody(endpoint));
    for (const ttl of ["-1", "abc", "1.5", "NaN", "Infinity", "9".repeat(400)]) {
      assertRefused(
        `x-tollgate-cache-ttl ${JSON.stringify(ttl)}`,
        endpoint,
        await sendJson(endpoint, body, {
          "x-tollgate-cache-ttl": ttl,
        }),
        { status: 400, code: "invalid_cache_ttl" },
      );
    }
    // The request id is the gateway's own: a client cannot choose it (and so cannot collide with
    // or settle someone else's reservation).
    const forgedId = crypto.randomUUID();
    const sent = await sendJson(endpoint, "{", { "x-request-id": forgedId, "request-id": forgedId });
    assertRefused("a forged x-request-id", endpoint, sent, { status: 400, code: "invalid_json" });
    assert.notEqual(sent.headers.get("x-request-id"), forgedId);
    // CORS never reflects an arbitrary origin back (that would let any site read the answers).
    const evil = "https://evil.example";
    const cors = await sendJson(endpoint, "{", { origin: evil });
    assertRefused("a foreign origin", endpoint, cors, { status: 400, code: "invalid_json" });
    assert.notEqual(cors.headers.get("access-control-allow-origin"), evil);
    assert.equal(cors.headers.get("access-control-allow-credentials"), null);
  }
});

// ─── Tokens ────────────────────────────────────────────────────────────────────────────────

const b64url = (value: unknown) =>
  btoa(typeof value === "string" ? value : JSON.stringify(value)).replace(/=+$/, "").replace(/\+/g, "-").replace(
    /\//g,
    "_",
  );

/** Tokens that must all be refused with 401; every one of them names the victim. */
async function forgedTokens(): Promise<[string, string, string | RegExp][]> {
  const issuer = `${stack.supabaseUrl}/auth/v1`;
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    sub: victim.id,
    role: "authenticated",
    aud: "authenticated",
    iss: issuer,
    iat: now,
    exp: now + 3600,
    is_anonymous: false,
  };
  const genuine = victim.token;
  const [genuineHeader, , genuineSignature] = genuine.split(".");
  const otherKey = await jose.generateKeyPair("ES256", { extractable: true });
  const rsaKey = await jose.generateKeyPair("RS256", { extractable: true });
  const sign = (alg: string, key: jose.CryptoKey | Uint8Array, header: Record<string, unknown> = {}, extra = {}) =>
    new jose.SignJWT({ ...claims, ...extra }).setProtectedHeader({ alg, typ: "JWT", ...header }).sign(key);
  const secret = (text: string) => new TextEncoder().encode(text);
  const publicJwkText = JSON.stringify(stack.signingKey.publicJwk);
  const secretKeys = JSON.parse(stack.functionEnv.SUPABASE_SECRET_KEYS ?? "{}") as Record<string, string>;
  const publishableKeys = JSON.parse(stack.functionEnv.SUPABASE_PUBLISHABLE_KEYS ?? "{}") as Record<string, string>;
  return [
    ["alg none, no signature", `${b64url({ alg: "none", typ: "JWT" })}.${b64url(claims)}.`, "invalid_token"],
    ["alg none, no signature part", `${b64url({ alg: "none", typ: "JWT" })}.${b64url(claims)}`, "invalid_token"],
    ["alg None", `${b64url({ alg: "None", typ: "JWT" })}.${b64url(claims)}.`, "invalid_token"],
    [
      "alg none with the real signature",
      `${b64url({ alg: "none", kid: stack.signingKey.kid })}.${b64url(claims)}.${genuineSignature}`,
      "invalid_token",
    ],
    [
      "expired",
      await signAccessToken(stack.signingKey, stack.supabaseUrl, { sub: victim.id, expiresIn: -60 }),
      "token_expired",
    ],
    [
      "not yet valid",
      await sign("ES256", await jose.importJWK(stack.signingKey.privateJwk, "ES256") as jose.CryptoKey, {
        kid: stack.signingKey.kid,
      }, { nbf: now + 3600 }),
      "invalid_token",
    ],
    [
      "another audience",
      await signAccessToken(stack.signingKey, stack.supabaseUrl, { sub: victim.id, aud: "anon" }),
      "invalid_token",
    ],
    [
      "another project's issuer",
      await signAccessToken(stack.signingKey, "https://evil.supabase.co", { sub: victim.id }),
      "invalid_token",
    ],
    [
      "no subject",
      await sign("ES256", await jose.importJWK(stack.signingKey.privateJwk, "ES256") as jose.CryptoKey, {
        kid: stack.signingKey.kid,
      }, { sub: undefined }),
      "invalid_token",
    ],
    ["another key, our kid", await sign("ES256", otherKey.privateKey, { kid: stack.signingKey.kid }), "invalid_token"],
    [
      "another key, unknown kid",
      await sign("ES256", otherKey.privateKey, { kid: crypto.randomUUID() }),
      "invalid_token",
    ],
    ["another key, no kid", await sign("ES256", otherKey.privateKey), "invalid_token"],
    [
      "RS256 from another key, our kid",
      await sign("RS256", rsaKey.privateKey, { kid: stack.signingKey.kid }),
      "invalid_token",
    ],
    [
      "HS256 with Supabase's well-known local secret",
      await sign("HS256", secret("super-secret-jwt-token-with-at-least-32-characters-long")),
      "invalid_token",
    ],
    ["HS256 keyed with our public key (alg confusion)", await sign("HS256", secret(publicJwkText)), "invalid_token"],
    [
      "the victim's payload on someone else's signature",
      `${genuineHeader}.${b64url({ ...claims, sub: attacker.id })}.${genuineSignature}`,
      "invalid_token",
    ],
    [
      "the attacker's token with the victim as subject",
      (() => {
        const [h, p, s] = attacker.token.split(".");
        const payload = JSON.parse(atob(p.replace(/-/g, "+").replace(/_/g, "/")));
        return `${h}.${b64url({ ...payload, sub: victim.id })}.${s}`;
      })(),
      "invalid_token",
    ],
    ["a truncated token", genuine.slice(0, -10), "invalid_token"],
    ["a token with a fourth part", `${genuine}.${genuineSignature}`, "invalid_token"],
    ["garbage", "not-a-jwt", "invalid_token"],
    ["three empty parts", "..", "invalid_token"],
    ["a header that is not JSON", `${b64url("{not json")}.${b64url(claims)}.${genuineSignature}`, "invalid_token"],
    ["a 16 KB token", `${genuineHeader}.${"A".repeat(16 * 1024)}.${genuineSignature}`, "invalid_token"],
    ...Object.values(secretKeys).map((
      key,
    ): [string, string, string] => ["the project's secret key", key, "invalid_token"]),
    ...Object.values(publishableKeys).map((key): [string, string, string] => [
      "the project's publishable key",
      key,
      "invalid_token",
    ]),
  ];
}

corpus("bad input: forged, expired, alg-none and foreign tokens are 401 on every endpoint", async () => {
  const body: Record<Endpoint, string> = {
    chat: JSON.stringify(openaiBody()),
    messages: JSON.stringify(anthropicBody()),
    estimate: JSON.stringify(openaiBody()),
  };
  for (const [label, token, code] of await forgedTokens()) {
    for (const endpoint of endpoints) {
      const sent = await sendJson(endpoint, body[endpoint], {}, token);
      assertRefused(`token: ${label}`, endpoint, sent, { status: 401, code });
      assert.match(sent.headers.get("www-authenticate") ?? "", /^Bearer/, `${label}: www-authenticate`);
      // Anthropic's SDK sends the key as x-api-key: the same token there is refused the same way.
      const viaApiKey = await sendJson(endpoint, body[endpoint], { "x-api-key": token }, null);
      assertRefused(`x-api-key: ${label}`, endpoint, viaApiKey, { status: 401, code });
    }
    // The account endpoints read the victim's data: they must refuse the same tokens.
    for (const path of ["usage", "models"]) {
      const response = await fetch(`${gateway.openaiBase}/${path}`, { headers: { authorization: `Bearer ${token}` } });
      const sent = await collect(response);
      assertRefused(`token: ${label} on /v1/${path}`, "chat", sent, { status: 401, code });
    }
  }
  const malformedSchemes: [string, Record<string, string>, string][] = [
    ["no authorization", {}, "missing_token"],
    ["an empty bearer", { authorization: "Bearer" }, "missing_token"],
    ["a bearer of spaces", { authorization: "Bearer    " }, "missing_token"],
    ["basic auth", { authorization: "Basic YWxpY2U6c2VjcmV0" }, "missing_token"],
    ["two tokens", { authorization: `Bearer ${attacker.token} ${victim.token}` }, "missing_token"],
  ];
  for (const endpoint of endpoints) {
    for (const [label, headers, code] of malformedSchemes) {
      assertRefused(label, endpoint, await sendJson(endpoint, body[endpoint], headers, null), {
        status: 401,
        code: new RegExp(`^(${code}|invalid_token)$`),
      });
    }
  }
});

// ─── Another user's id in the body ─────────────────────────────────────────────────────────

integration(
  "bad input: another user's id in the body is ignored — the call is the caller's, not the victim's",
  async () => {
    const attempts: [Endpoint, Record<string, unknown>][] = [
      ["chat", openaiBody({ user: victim.id })],
      ["chat", openaiBody({ user_id: victim.id, sub: victim.id })],
      ["chat", openaiBody({ metadata: { user_id: victim.id } })],
      ["messages", anthropicBody({ metadata: { user_id: victim.id } })],
      ["messages", anthropicBody({ user_id: victim.id, user: victim.id })],
    ];
    for (const [endpoint, body] of attempts) {
      const response = await fetch(urls[endpoint], {
        method: "POST",
        headers: { authorization: `Bearer ${impostor.token}`, "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const sent = await collect(response);
      assert.equal(sent.status, 200, `${endpoint} ${JSON.stringify(body)}: ${sent.text}`);
      // The stand-in's reply echoes the prompt, never the body's other fields: the victim's id must
      // not come back, and the limits shown are the impostor's.
      assertNothingOfTheVictim(`${endpoint} with the victim's id`, sent);
      const row = await settledCall(sent.headers.get("x-request-id"));
      assert.equal(row.user_id, impostor.id, "charged to the caller");
      impostorCalls.push(row.request_id);
    }
    // /v1/estimate and /v1/usage answer about the caller, whatever the body or query names.
    const estimate = await fetch(urls.estimate, {
      method: "POST",
      headers: { authorization: `Bearer ${impostor.token}`, "content-type": "application/json" },
      body: JSON.stringify(openaiBody({ user: victim.id, metadata: { user_id: victim.id } })),
    });
    const estimateSent = await collect(estimate);
    assert.equal(estimateSent.status, 200);
    assert.equal(JSON.parse(estimateSent.text).windows[0].limit, 100000, "the impostor's own window");
    assertNothingOfTheVictim("estimate with the victim's id", estimateSent);
    const usage = await fetch(`${gateway.openaiBase}/usage?user_id=${victim.id}&user=${victim.id}`, {
      headers: { authorization: `Bearer ${impostor.token}` },
    });
    const usageSent = await collect(usage);
    assert.equal(usageSent.status, 200, usageSent.text);
    assertNothingOfTheVictim("usage with the victim's id in the query", usageSent);
  },
);

// ─── Unknown paths and methods ─────────────────────────────────────────────────────────────

corpus("bad input: unknown paths and wrong methods are 404/405 in the OpenAI format", async () => {
  const base = `${gateway.url}/functions/v1/ai`;
  const cases: [string, string, number, string][] = [
    ["POST", "/v1/completions", 404, "not_found"],
    ["POST", "/v1/chat/completions/extra", 404, "not_found"],
    ["POST", "/v1/chat/../messages/x", 404, "not_found"],
    ["POST", "/v2/chat/completions", 404, "not_found"],
    ["GET", "/v1/chat/completions", 405, "method_not_allowed"],
    ["PUT", "/v1/estimate", 405, "method_not_allowed"],
    ["DELETE", "/v1/usage", 405, "method_not_allowed"],
  ];
  for (const [method, path, status, code] of cases) {
    const sent = await collect(
      await fetch(`${base}${path}`, {
        method,
        headers: { authorization: `Bearer ${attacker.token}`, "content-type": "application/json" },
        body: method === "GET" ? undefined : "{}",
      }),
    );
    assertRefused(`${method} ${path}`, "chat", sent, { status, code });
  }
});

// ─── What the corpus left behind ───────────────────────────────────────────────────────────

integration("bad input: nothing of the corpus reached the accounting tables", async () => {
  // Settlement runs after the response: give anything that was wrongly admitted time to land.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const [attackerRows] = await admin`
    select
      (select count(*)::int from public.ai_api_calls where user_id = ${attacker.id}) as calls,
      (select count(*)::int from public.api_usage where user_id = ${attacker.id}) as usage`;
  assert.deepEqual(attackerRows, { calls: 0, usage: 0 }, "the attacker has no calls and no reservations");
  const ids = [...new Set(corpusRequestIds)];
  assert.ok(ids.length > 500, `the corpus ran (${ids.length} answers)`);
  const [leaked] = await admin`
    select
      (select count(*)::int from public.ai_api_calls where request_id = any(${ids}::uuid[])) as calls,
      (select count(*)::int from public.api_usage where request_id = any(${ids}::uuid[])) as usage`;
  assert.deepEqual(leaked, { calls: 0, usage: 0 }, "no corpus request id has a row");
  const victimRows = await admin`select count(*)::int as n from public.ai_api_calls where user_id = ${victim.id}`;
  assert.equal(victimRows[0].n, 1, "the victim has exactly its own one call");
  const impostorRows = await admin<{ request_id: string }[]>`
    select request_id from public.ai_api_calls where user_id = ${impostor.id}`;
  assert.deepEqual(impostorRows.map((r) => r.request_id).sort(), [...impostorCalls].sort(), "the impostor's own calls");
  const [reserved] = await admin`
    select count(*)::int as n from public.api_usage
    where user_id = any(${[attacker.id, victim.id, impostor.id]}::uuid[]) and status = 'reserved'`;
  assert.equal(reserved.n, 0, "no reservation left behind");
});

integration("bad input: the function is still up, serves a normal call, and logged nothing unplanned", async () => {
  assert.ok(gateway.alive(), "the function process is running");
  const user: TestUser = await createUser();
  for (const endpoint of ["chat", "messages"] as const) {
    const sent = await sendJson(endpoint, JSON.stringify(validBody(endpoint)), {}, user.token);
    assert.equal(sent.status, 200, sent.text);
    await settledCall(sent.headers.get("x-request-id"));
  }
  const unplanned = gateway.log.filter((line) => unexpectedFailure.test(line));
  assert.deepEqual(unplanned, [], "no exception the gateway did not plan for");
  await gateway.process.stop();
  await gateway.provider.close();
});
