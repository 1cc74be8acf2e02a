/**
 * Upstream discipline through the whole gateway (seed 003): the providers' own limits are
 * respected before they answer 429, urgent work goes first when capacity is scarce without
 * starving the rest, load is shed in the stated order, and a refused key fails over unseen.
 *
 * Each test routes its own model to a provider name of its own (an OpenAI-compatible provider
 * configured by `<NAME>_BASE_URL` / `<NAME>_API_KEY*`, all served by this file's stand-in), so
 * the key rows, ceilings and queues it sets up are its alone.
 */
import assert from "node:assert/strict";
import { sleep } from "../supabase/functions/_shared/runtime.ts";
import { admin, createUser, integration, prompt, settledCall, startTestGateway } from "./stack/harness.ts";
import { createFeature, createTier } from "./stack/fixtures.ts";
import { DEFAULT_API_KEY } from "./stack/provider.ts";

const providers = ["uphead", "upceil", "upprio", "upage", "upshed", "upcheap", "upkeys", "upgone", "upwait"];
const gateway = await startTestGateway((providerUrl) => ({
  TOLLGATE_DEADLINE_MS: "30000",
  ...Object.fromEntries(providers.flatMap((name) => [
    [`${name.toUpperCase()}_BASE_URL`, `${providerUrl}/v1`],
    [`${name.toUpperCase()}_API_KEY`, DEFAULT_API_KEY],
  ])),
  // upkeys: the primary key is revoked at the provider, the backup works.
  UPKEYS_API_KEY: "sk-revoked-at-the-provider",
  UPKEYS_API_KEY_BACKUP: DEFAULT_API_KEY,
}));
const provider = gateway.provider;
const tier = await createTier(admin, { windows: [{ name: "minute", seconds: 60, maxRequests: 10_000 }] });

/** A model of its own, routed to `providerName` only (optionally with a cheaper model on another). */
async function routeTo(providerName: string, cheaper?: { provider: string }): Promise<string> {
  const model = `up-${crypto.randomUUID().slice(0, 8)}`;
  const cheaperModel = cheaper ? `${model}-mini` : null;
  await admin.begin(async (sql) => {
    await sql`insert into tollgate.routes (model, cheaper_model) values (${model}, ${cheaperModel})`;
    await sql`insert into tollgate.route_targets (route_model, position, provider, model)
      values (${model}, 1, ${providerName}, ${model})`;
    await sql`insert into tollgate.model_prices (provider, model, input_per_mtok, output_per_mtok)
      values (${providerName}, ${model}, 1, 2)`;
    if (cheaper && cheaperModel) {
      await sql`insert into tollgate.routes (model) values (${cheaperModel})`;
      await sql`insert into tollgate.route_targets (route_model, position, provider, model)
        values (${cheaperModel}, 1, ${cheaper.provider}, ${cheaperModel})`;
    }
  });
  return model;
}

function chat(
  token: string,
  model: string,
  content: string,
  options: { feature?: string; signal?: AbortSignal } = {},
): Promise<Response> {
  return fetch(`${gateway.openaiBase}/chat/completions`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${token}`,
      "content-type": "application/json",
      ...(options.feature ? { "x-tollgate-feature": options.feature } : {}),
    },
    body: JSON.stringify({ model, messages: [{ role: "user", content }] }),
    signal: options.signal,
  });
}

/** A first call through the provider, so that the function has registered its keys. */
async function registerKeys(token: string, model: string, providerName: string): Promise<void> {
  const response = await chat(token, model, prompt("warm up", "words=1"));
  assert.equal(response.status, 200);
  await response.body?.cancel();
  await settledCall(response.headers.get("x-request-id"));
  for (let i = 0; i < 100; i++) {
    const [{ count }] = await admin`select count(*)::int from tollgate.provider_keys where provider = ${providerName}`;
    if (count > 0) return;
    await sleep(50);
  }
  throw new Error(`the ${providerName} keys were never registered`);
}

/**
 * A user and a model of their own on `providerName`, whose key takes `maxInFlight` calls at once
 * (routed on to the cheaper model's provider when the queue is deep, if `cheaper` names one).
 */
async function slottedProvider(providerName: string, maxInFlight: number, cheaper?: { provider: string }) {
  const user = await createUser({ tier });
  const model = await routeTo(providerName, cheaper);
  await registerKeys(user.token, model, providerName);
  await admin`update tollgate.provider_keys set max_in_flight = ${maxInFlight} where provider = ${providerName}`;
  return { user, model };
}

/** A feature of each priority, by priority. */
async function featuresOfEveryPriority() {
  return {
    critical: await createFeature(admin, { priority: "critical" }),
    normal: await createFeature(admin, { priority: "normal" }),
    batch: await createFeature(admin, { priority: "batch" }),
    background: await createFeature(admin, { priority: "background" }),
  };
}

/** Requests that reached the stand-in for `model`, in arrival order. */
const arrivals = (model: string) =>
  provider.requests.filter((request) => (request.body as { model?: string } | null)?.model === model);

async function waiting(providerName: string): Promise<number> {
  const [{ count }] = await admin`
    select count(*)::int from tollgate.upstream_queue where provider = ${providerName}`;
  return count;
}

integration("upstream: rate-limit headers that shrink to zero make admission wait instead of calling", async () => {
  const user = await createUser({ tier });
  const model = await routeTo("uphead");
  await registerKeys(user.token, model, "uphead");

  const empty = await chat(
    user.token,
    model,
    prompt("hi", "words=2 ratelimit_remaining_requests=0 ratelimit_reset_ms=1500"),
  );
  assert.equal(empty.status, 200);
  await empty.body?.cancel();
  await settledCall(empty.headers.get("x-request-id"));
  const [key] = await admin`
    select remaining_requests, requests_reset_at from tollgate.provider_keys where provider = 'uphead'`;
  assert.equal(key.remaining_requests, 0, "settlement recorded the provider's empty allowance");

  const before = arrivals(model).length;
  const started = Date.now();
  const next = chat(user.token, model, prompt("hi again", "words=2"));
  await sleep(500);
  assert.equal(arrivals(model).length, before, "nothing reached the provider while it had no allowance");
  assert.equal(await waiting("uphead"), 1, "the request waits in the provider's queue");
  const response = await next;
  assert.equal(response.status, 200);
  await response.body?.cancel();
  const sent = arrivals(model).at(-1)!;
  assert.ok(sent.at >= (key.requests_reset_at as Date).getTime() - 50, "called only once the allowance reset");
  assert.ok(Date.now() - started < 5000);
  assert.equal(await waiting("uphead"), 0);
});

integration("upstream: concurrency cannot start more calls than a key's max_in_flight", async () => {
  const { user, model } = await slottedProvider("upceil", 2);

  let peak = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, provider.inFlight());
      await sleep(5);
    }
  })();
  const responses = await Promise.all(
    Array.from({ length: 8 }, () => chat(user.token, model, prompt("slow", "words=2 latency_ms=250"))),
  );
  sampling = false;
  await sampler;
  assert.deepEqual(responses.map((response) => response.status), Array(8).fill(200), "every call ran, in turn");
  await Promise.all(responses.map((response) => response.body?.cancel()));
  assert.ok(peak <= 2, `at most 2 calls in flight at the provider (saw ${peak})`);
  assert.equal(peak, 2);
  const rows = await Promise.all(responses.map((response) => settledCall(response.headers.get("x-request-id"))));
  assert.ok(rows.every((row) => row.status === "success" && row.provider_key === "primary"));
});

integration(
  "upstream: under contention, priorities come out in order (critical, normal, batch, background)",
  async () => {
    const { user, model } = await slottedProvider("upprio", 1);
    const features = await featuresOfEveryPriority();

    // The slot is taken; then the others arrive, lowest priority first.
    const blocker = chat(user.token, model, prompt("blocker", "words=1 latency_ms=1200"));
    await sleep(200);
    const order = ["background", "batch", "normal", "critical"] as const;
    const calls = [];
    for (const priority of order) {
      calls.push(chat(user.token, model, prompt(`from ${priority}`, "words=1 latency_ms=50"), {
        feature: features[priority],
      }));
      await sleep(100);
    }
    assert.equal(await waiting("upprio"), 4);
    const responses = await Promise.all([blocker, ...calls]);
    assert.ok(responses.every((response) => response.status === 200));
    await Promise.all(responses.map((response) => response.body?.cancel()));
    const served = arrivals(model)
      .map((request) => JSON.stringify(request.body))
      .flatMap((body) => order.filter((priority) => body.includes(`from ${priority}`)));
    assert.deepEqual(served, ["critical", "normal", "batch", "background"]);
  },
);

integration("upstream: with aging, a background request still runs while critical work keeps arriving", async () => {
  const { user, model } = await slottedProvider("upage", 1);
  const critical = await createFeature(admin, { priority: "critical" });
  const background = await createFeature(admin, { priority: "background" });
  const [{ queue_aging_seconds: aging }] = await admin`select queue_aging_seconds from tollgate.upstream_settings`;
  await admin`update tollgate.upstream_settings set queue_aging_seconds = 1`;
  try {
    // Two critical callers keep the queue busy for 6 s, one 200 ms call after another.
    const until = Date.now() + 6000;
    const criticalLoad = Array.from({ length: 2 }, async () => {
      while (Date.now() < until) {
        const response = await chat(user.token, model, prompt("urgent", "words=1 latency_ms=200"), {
          feature: critical,
        });
        assert.equal(response.status, 200);
        await response.body?.cancel();
      }
    });
    await sleep(300);
    const started = Date.now();
    const response = await chat(user.token, model, prompt("whenever", "words=1"), { feature: background });
    const waited = Date.now() - started;
    assert.equal(response.status, 200);
    await response.body?.cancel();
    // Rank 3 reaches rank 0 after 3 s of aging; then it is the oldest of its rank.
    assert.ok(waited < 4500, `the background request ran within its aging bound (waited ${waited} ms)`);
    assert.ok(Date.now() < until, "while critical work was still arriving");
    await Promise.all(criticalLoad);
  } finally {
    await admin`update tollgate.upstream_settings set queue_aging_seconds = ${aging}`;
  }
});

integration(
  "upstream: load shedding drops background, then batch, then downgrades normal; critical waits",
  async () => {
    const { user, model } = await slottedProvider("upshed", 1, { provider: "upcheap" });
    const features = await featuresOfEveryPriority();
    const saved = await admin`select priority, shed_queue_depth from tollgate.priority_classes`;
    await admin`update tollgate.priority_classes set shed_queue_depth = case priority
    when 'background' then 1 when 'batch' then 2 when 'normal' then 3 end`;
    try {
      const blocker = chat(user.token, model, prompt("blocker", "words=1 latency_ms=2500"));
      await sleep(200);
      const queued: Promise<Response>[] = [];
      const enqueueCritical = async () => {
        queued.push(chat(user.token, model, prompt("critical", "words=1"), { feature: features.critical }));
        await sleep(150);
      };

      await enqueueCritical(); // depth 1: background is shed
      const background = await chat(user.token, model, prompt("bg", "words=1"), { feature: features.background });
      assert.equal(background.status, 429);
      assert.equal(background.headers.get("x-tollgate-shed"), "background");
      assert.equal((await background.json()).error.code, "load_shed");

      await enqueueCritical(); // depth 2: batch is shed
      const batch = await chat(user.token, model, prompt("batch", "words=1"), { feature: features.batch });
      assert.equal(batch.status, 429);
      assert.equal(batch.headers.get("x-tollgate-shed"), "batch");
      assert.equal((await batch.json()).error.code, "load_shed");

      await enqueueCritical(); // depth 3: normal work moves to the cheaper model (another provider, with room)
      const normal = await chat(user.token, model, prompt("normal", "words=1"), { feature: features.normal });
      assert.equal(normal.status, 200);
      assert.equal(normal.headers.get("x-tollgate-shed"), "downgraded");
      assert.equal(normal.headers.get("x-tollgate-model"), `${model}-mini`);
      await normal.body?.cancel();

      // Critical work kept its place and the best model.
      const responses = await Promise.all([blocker, ...queued]);
      assert.deepEqual(responses.map((response) => response.status), [200, 200, 200, 200]);
      assert.ok(responses.every((response) => response.headers.get("x-tollgate-model") === model));
      await Promise.all(responses.map((response) => response.body?.cancel()));

      const counted = await admin`
      select r.code, count(*)::int as n from tollgate.rejections as r
      where r.user_id = ${user.id} and r.layer = 'upstream' group by r.code order by r.code`;
      assert.deepEqual(counted.map((row) => [row.code, row.n]), [["downgraded", 1], ["load_shed", 2]]);
    } finally {
      for (const row of saved) {
        await admin`update tollgate.priority_classes set shed_queue_depth = ${row.shed_queue_depth}
        where priority = ${row.priority}`;
      }
    }
  },
);

integration(
  "upstream: past its longest wait, a request gets 429 queue_timeout with an honest Retry-After",
  async () => {
    const { user, model } = await slottedProvider("upwait", 1);
    const critical = await createFeature(admin, { priority: "critical" });
    const [{ max_wait_seconds: saved }] = await admin`
    select max_wait_seconds from tollgate.priority_classes where priority = 'critical'`;
    await admin`update tollgate.priority_classes set max_wait_seconds = 1 where priority = 'critical'`;
    try {
      const blocker = chat(user.token, model, prompt("blocker", "words=1 latency_ms=3000"));
      await sleep(200);
      const started = Date.now();
      const response = await chat(user.token, model, prompt("urgent", "words=1"), { feature: critical });
      assert.equal(response.status, 429);
      assert.equal((await response.json()).error.code, "queue_timeout");
      assert.ok(Number(response.headers.get("retry-after")) >= 1);
      assert.ok(Date.now() - started >= 1000 && Date.now() - started < 2500);
      assert.equal(await waiting("upwait"), 0);
      await (await blocker).body?.cancel();
    } finally {
      await admin`update tollgate.priority_classes set max_wait_seconds = ${saved} where priority = 'critical'`;
    }
  },
);

integration("upstream: a caller that disconnects while waiting leaves the queue at once", async () => {
  const { user, model } = await slottedProvider("upgone", 1);
  const blocker = chat(user.token, model, prompt("blocker", "words=1 latency_ms=2000"));
  await sleep(200);
  const abort = new AbortController();
  const leaving = chat(user.token, model, prompt("impatient", "words=1"), { signal: abort.signal }).catch(() => null);
  await sleep(400);
  assert.equal(await waiting("upgone"), 1);
  abort.abort();
  await leaving;
  await sleep(300);
  assert.equal(await waiting("upgone"), 0, "the ticket is gone well before its wait would end");
  await (await blocker).body?.cancel();
  assert.equal(arrivals(model).filter((request) => JSON.stringify(request.body).includes("impatient")).length, 0);
});

integration("upstream: a refused key fails over to the next with no error, is marked dead and alerted", async () => {
  const user = await createUser({ tier });
  const model = await routeTo("upkeys");
  const first = await chat(user.token, model, prompt("hello", "words=2"));
  assert.equal(first.status, 200, "the caller never sees the revoked key");
  await first.body?.cancel();
  const row = await settledCall(first.headers.get("x-request-id"));
  assert.equal(row.provider_key, "backup");
  assert.equal(row.attempts, 2);

  const keys = await admin`
    select label, state, dead_status, fingerprint from tollgate.provider_keys where provider = 'upkeys' order by label`;
  assert.deepEqual(keys.map((key) => [key.label, key.state]), [["backup", "active"], ["primary", "dead"]]);
  assert.equal(keys[1].dead_status, 401);
  assert.match(keys[1].fingerprint, /^sha256:[0-9a-f]{16}$/);
  const [alert] = await admin`
    select message, details from tollgate.budget_alerts
    where kind = 'provider_key_dead' and details ->> 'provider' = 'upkeys'`;
  assert.match(alert.message, /"primary"/);
  assert.ok(!JSON.stringify(alert).includes("sk-revoked"), "the alert names the key, never shows it");

  // Admission now hands out the live key: the revoked one is not tried again.
  const before = arrivals(model).length;
  const second = await chat(user.token, model, prompt("again", "words=2"));
  assert.equal(second.status, 200);
  await second.body?.cancel();
  assert.equal(arrivals(model).length, before + 1);
  assert.equal(arrivals(model).at(-1)!.headers.authorization, `Bearer ${DEFAULT_API_KEY}`);
});

integration(
  "upstream: keys over their daily budget or near expiry are alerted once, and spend per key is a view",
  async () => {
    const user = await createUser({ tier });
    const model = await routeTo("upkeys");
    const response = await chat(user.token, model, prompt("spend", "words=20"));
    assert.equal(response.status, 200);
    await response.body?.cancel();
    const row = await settledCall(response.headers.get("x-request-id"));
    await admin`update tollgate.provider_keys
    set daily_budget_usd = ${row.estimated_cost as string}, expires_on = current_date + 3
    where provider = 'upkeys' and label = 'backup'`;
    try {
      assert.ok(Number(await checkKeys()) >= 2);
      assert.equal(Number(await checkKeys()), 0, "each alert once");
      const alerts = await admin`
      select kind from tollgate.budget_alerts
      where details ->> 'provider' = 'upkeys' and details ->> 'label' = 'backup' order by kind`;
      assert.deepEqual(alerts.map((alert) => alert.kind), ["provider_key_budget", "provider_key_expiring"]);
      const [spend] = await admin`
      select calls, cost_usd, percent_of_budget from public.provider_key_spend
      where provider = 'upkeys' and label = 'backup' and day = (now() at time zone 'UTC')::date`;
      assert.ok(Number(spend.calls) >= 1);
      assert.ok(Number(spend.percent_of_budget) >= 100);

      // Over budget, the key is out of rotation (the other is dead): the route has no provider left.
      const refused = await chat(user.token, model, prompt("more", "words=2"));
      assert.equal(refused.status, 503);
      assert.equal((await refused.json()).error.code, "provider_unavailable");
    } finally {
      await admin`update tollgate.provider_keys set daily_budget_usd = null, expires_on = null
      where provider = 'upkeys' and label = 'backup'`;
    }
  },
);

const checkKeys = async () => (await admin`select tollgate.check_provider_keys() as n`)[0].n;

integration("upstream: three 429s in a row alert and send traffic to the fallback", async () => {
  const user = await createUser({ tier });
  const model = `up-${crypto.randomUUID().slice(0, 8)}`;
  await admin.begin(async (sql) => {
    await sql`insert into tollgate.routes (model) values (${model})`;
    await sql`insert into tollgate.route_targets (route_model, position, provider, model)
      values (${model}, 1, 'upprio', ${model}), (${model}, 2, 'upcheap', ${model})`;
  });
  const key = crypto.randomUUID();
  const first = await chat(user.token, model, prompt("hi", `words=1 status=429 retry_after_ms=10 times=3 key=${key}`));
  assert.equal(first.status, 200);
  await first.body?.cancel();
  const row = await settledCall(first.headers.get("x-request-id"));
  assert.equal(row.provider, "upcheap");
  const [breaker] = await admin`
    select state, consecutive_429s from tollgate.provider_health where provider = 'upprio' and model = ${model}`;
  assert.deepEqual([breaker.state, breaker.consecutive_429s], ["open", 3]);
  const alerts = await admin`
    select kind from tollgate.budget_alerts where kind = 'provider_rate_limited' and details ->> 'model' = ${model}`;
  assert.equal(alerts.length, 1);

  const second = await chat(user.token, model, prompt("again", "words=1"));
  assert.equal(second.status, 200);
  assert.equal(second.headers.get("x-tollgate-provider"), "upcheap", "straight to the fallback");
  await second.body?.cancel();
});
