/**
 * The budget guard end to end: the threshold job raises each alert exactly once even when run concurrently from
 * several connections (and announces it with pg_notify); the throttle changes what the real function answers;
 * a user near their quota is told; and a failing webhook is retried by the function until it takes the alert.
 * The jobs' SQL is called directly (the pgTAP file 10_budget_guard_test.sql covers each formula and threshold).
 *
 * Global state (gateway_state) is restored in `finally`: other test files share it.
 */
import assert from "node:assert/strict";
import { sleep } from "../supabase/functions/_shared/runtime.ts";
import { admin, createUser, integration, prompt, startTestGateway, type TestGateway } from "./stack/harness.ts";
import { connect, createFeature, createTier } from "./stack/fixtures.ts";

/** Polls until `check` returns a value (not undefined), or fails after `timeoutMs`. */
async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** A feature with a monthly budget of its own, and that budget's id. */
async function budgetedFeature(sql: ReturnType<typeof connect>, limitUsd: number) {
  const feature = await createFeature(sql, { budgetUsd: limitUsd, hardCap: true });
  const [{ id }] = await sql<{ id: string }[]>`
    select id::text from tollgate.budgets where scope = 'feature' and feature = ${feature}`;
  return { feature, budgetId: id };
}

/** Sets a budget's month-to-date spend in its settlement rollup (what settle() would have accumulated). */
async function setSpend(sql: ReturnType<typeof connect>, budgetId: string, usd: number) {
  await sql`
    insert into tollgate.budget_settlements (budget_id, period_start, shard, spent_usd, released_usd, calls)
    values (${budgetId}, date_trunc('month', now() at time zone 'UTC')::date, 0, ${usd}, ${usd}, 1)
    on conflict (budget_id, period_start, shard) do update set spent_usd = excluded.spent_usd`;
}

async function alertsOf(sql: ReturnType<typeof connect>, budgetId: string) {
  return await sql<{ id: string; threshold: number; severity: string }[]>`
    select id::text, threshold, severity from tollgate.budget_alerts
    where budget_id = ${budgetId} and kind = 'budget' order by threshold`;
}

integration("guard: each threshold alerts exactly once, however often and concurrently the job runs", async () => {
  const sql = connect(10);
  const notices: { alert_id: number; budget: string; threshold: number; severity: string }[] = [];
  const listener = await sql.listen("tollgate_alerts", (payload) => notices.push(JSON.parse(payload)));
  const { feature, budgetId } = await budgetedFeature(sql, 10);
  try {
    await setSpend(sql, budgetId, 9.5);

    // Two connections: the first run holds its transaction open; the second waits for it, then adds nothing.
    const first = await sql.reserve();
    const second = await sql.reserve();
    try {
      await first`begin`;
      const [held] = await first`select tollgate.check_budgets() as result`;
      assert.ok(held.result.alerts >= 3, "the first run raises the 50, 75 and 90% alerts");
      let secondDone = false;
      const racing = second`select tollgate.check_budgets() as result`.then((rows) => {
        secondDone = true;
        return rows;
      });
      await sleep(300);
      assert.equal(secondDone, false, "a concurrent run waits for the first one's transaction");
      await first`commit`;
      await racing;
    } finally {
      first.release();
      second.release();
    }
    assert.deepEqual(
      (await alertsOf(sql, budgetId)).map((a) => [a.threshold, a.severity]),
      [[50, "info"], [75, "investigate"], [90, "throttle"]],
      "one alert per threshold crossed",
    );

    // Past 100%, with eight runs at once, three times over.
    await setSpend(sql, budgetId, 10.25);
    for (let round = 0; round < 3; round++) {
      await Promise.all(Array.from({ length: 8 }, () => sql`select tollgate.check_budgets()`));
    }
    const alerts = await alertsOf(sql, budgetId);
    assert.deepEqual(alerts.map((a) => a.threshold), [50, 75, 90, 100], "still exactly one alert per threshold");
    const [hardCap] = await sql<{ message: string }[]>`
      select message from public.budget_alerts where id = ${alerts[3].id}`;
    assert.match(hardCap.message, /HARD CAP: admission now refuses this budget's requests \(budget_exceeded\)/);

    const mine = await eventually("four notifications", () => {
      const seen = notices.filter((n) => n.budget === `feature ${feature}`);
      return Promise.resolve(seen.length >= 4 ? seen : undefined);
    });
    assert.deepEqual(
      mine.map((n) => n.threshold).sort((a, b) => a - b),
      [50, 75, 90, 100],
      "pg_notify('tollgate_alerts') announced each alert once",
    );
  } finally {
    await listener.unlisten();
    await sql`delete from tollgate.budgets where id = ${budgetId}`;
    await sql.end();
  }
});

integration(
  "guard: while throttled, background work is refused, normal work restricted, critical work as usual",
  async () => {
    const sql = connect(2);
    const gateway = await startTestGateway();
    const user = await createUser();
    const [before] =
      await admin`select throttled, throttle_reason, throttled_since, throttled_by from tollgate.gateway_state`;
    const call = (feature: string) =>
      fetch(`${gateway.openaiBase}/chat/completions`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${user.token}`,
          "content-type": "application/json",
          "x-tollgate-feature": feature,
        },
        body: JSON.stringify({
          model: "gpt-4o",
          max_tokens: 800,
          messages: [{ role: "user", content: prompt("hello") }],
        }),
      });
    try {
      const background = await createFeature(sql, { priority: "background" });
      const normal = await createFeature(sql, { priority: "normal" });
      const critical = await createFeature(sql, { priority: "critical" });
      // As check_budgets() does at 90% of the global budget (set here by hand so the job leaves it alone).
      await admin`
      update tollgate.gateway_state
      set throttled = true, throttle_reason = 'the global budget is at 91% of its monthly limit',
        throttled_since = now(), throttled_by = null`;

      const refused = await call(background);
      const body = await refused.json();
      assert.equal(refused.status, 429, "a background feature is refused");
      assert.equal(body.error.code, "throttled");
      assert.match(body.error.message, /throttled \(the global budget is at 91% of its monthly limit\)/);
      assert.equal(refused.headers.get("x-tollgate-layer"), "throttle");
      assert.ok(Number(refused.headers.get("retry-after")) > 0, "with Retry-After");

      gateway.provider.reset();
      const restricted = await call(normal);
      await restricted.body?.cancel();
      assert.equal(restricted.status, 200, "a normal feature still gets an answer …");
      assert.equal(restricted.headers.get("x-tollgate-restricted"), "throttle", "… in restricted mode");
      assert.equal(restricted.headers.get("x-tollgate-model"), "gpt-4o-mini", "from the route's cheaper model");
      const sent = gateway.provider.requests.at(-1)?.body as { model: string; max_tokens?: number };
      assert.equal(sent.model, "gpt-4o-mini");
      assert.ok(
        (sent.max_tokens ?? Infinity) <= 256,
        `with the feature's restricted max_tokens (sent ${sent.max_tokens})`,
      );

      gateway.provider.reset();
      const usual = await call(critical);
      await usual.body?.cancel();
      assert.equal(usual.status, 200, "a critical feature runs as usual");
      assert.equal(usual.headers.get("x-tollgate-restricted"), null);
      assert.equal(usual.headers.get("x-tollgate-model"), "gpt-4o");
    } finally {
      await admin`
      update tollgate.gateway_state
      set throttled = ${before.throttled}, throttle_reason = ${before.throttle_reason},
        throttled_since = ${before.throttled_since}, throttled_by = ${before.throttled_by}`;
      await gateway.process.stop();
      await gateway.provider.close();
      await sql.end();
    }
  },
);

integration("guard: a user at 80% of their daily token quota is told, in a header and in GET /v1/usage", async () => {
  const sql = connect(2);
  const gateway = await startTestGateway();
  try {
    const tier = await createTier(sql, { dailyTokenQuota: 1000 });
    const user = await createUser({ tier });
    // 850 of 1,000 tokens used today, as the rollup would hold them after earlier calls.
    await admin`
      insert into public.user_usage_daily (user_id, day, calls, input_tokens, output_tokens)
      values (${user.id}, (now() at time zone 'UTC')::date, 5, 600, 250)`;

    const usage = await fetch(`${gateway.openaiBase}/usage`, { headers: { authorization: `Bearer ${user.token}` } });
    const account = await usage.json();
    assert.equal(usage.status, 200);
    assert.deepEqual(
      account.warnings.map((w: { kind: string; percent: number }) => [w.kind, w.percent]),
      [["daily_tokens", 85]],
      "GET /v1/usage lists the warning with its percentage",
    );

    const answer = await fetch(`${gateway.openaiBase}/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${user.token}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: "gpt-4o-mini",
        max_tokens: 50,
        messages: [{ role: "user", content: prompt("hi") }],
      }),
    });
    await answer.body?.cancel();
    assert.equal(answer.status, 200);
    assert.match(answer.headers.get("x-tollgate-warning") ?? "", /You have used most of today's token quota/);
  } finally {
    await gateway.process.stop();
    await gateway.provider.close();
    await sql.end();
  }
});

integration("guard: a failing webhook is retried and never loses the alert; the function delivers it", async () => {
  const sql = connect(2);
  const received: { alertId: number; status: number; body: Record<string, unknown> }[] = [];
  let failFor: number | null = null;
  const webhook = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    const body = await request.json();
    // The first post of our alert fails; everything else is taken.
    const status = body.alert_id === failFor && !received.some((r) => r.alertId === failFor) ? 500 : 200;
    received.push({ alertId: body.alert_id, status, body });
    return new Response(status === 200 ? "ok" : "boom", { status });
  });
  const { feature, budgetId } = await budgetedFeature(sql, 10);
  let gateway: TestGateway | undefined;
  try {
    await setSpend(sql, budgetId, 5.5);
    await sql`select tollgate.check_budgets()`;
    const [alert] = await alertsOf(sql, budgetId);
    failFor = Number(alert.id);

    gateway = await startTestGateway({
      TOLLGATE_ALERT_WEBHOOK_URL: `http://127.0.0.1:${webhook.addr.port}/slack`,
      TOLLGATE_ALERT_POLL_SECONDS: "0",
    });
    const user = await createUser();
    const poke = async () => {
      const response = await fetch(`${gateway!.openaiBase}/models`, {
        headers: { authorization: `Bearer ${user.token}` },
      });
      await response.body?.cancel();
    };
    const state = async () =>
      (await sql<{ attempts: number; last_error: string | null; delivered: boolean; via: string | null }[]>`
        select attempts, last_error, delivered_at is not null as delivered, delivered_via as via
        from tollgate.budget_alerts where id = ${alert.id}`)[0];

    // After a request, the function claims the alert and posts it: the webhook fails.
    const failed = await eventually("the first, failing attempt", async () => {
      await poke();
      const now = await state();
      return now.attempts >= 1 && now.last_error ? now : undefined;
    });
    assert.deepEqual(failed, { attempts: 1, last_error: "HTTP 500", delivered: false, via: null }, "kept for a retry");
    const [due] = await sql`select next_attempt_at > now() as later from tollgate.budget_alerts where id = ${alert.id}`;
    assert.equal(due.later, true, "not before its backoff");

    // The backoff has passed (no waiting for the clock): the next request's round delivers it.
    await sql`update tollgate.budget_alerts set next_attempt_at = now() where id = ${alert.id}`;
    const delivered = await eventually("the delivery", async () => {
      await poke();
      const now = await state();
      return now.delivered ? now : undefined;
    });
    assert.deepEqual(delivered, { attempts: 2, last_error: null, delivered: true, via: "function" });

    const posts = received.filter((r) => r.alertId === failFor);
    assert.deepEqual(posts.map((p) => p.status), [500, 200], "posted twice: failed, then taken");
    const payload = posts[1].body;
    assert.match(String(payload.text), new RegExp(`the feature ${feature} budget is at 55% of its 10.00 USD`));
    assert.equal(payload.budget, `feature ${feature}`);
    assert.equal(payload.threshold, 50);
    assert.equal(Number(payload.spend), 5.5);
    assert.equal(Number(payload.limit), 10);
    assert.ok(Number(payload.projection) >= 5.5, "with the projection to month end");
  } finally {
    await gateway?.process.stop();
    await gateway?.provider.close();
    await webhook.shutdown();
    await sql`delete from tollgate.budgets where id = ${budgetId}`;
    await sql.end();
  }
});
