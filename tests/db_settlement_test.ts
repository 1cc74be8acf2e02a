/**
 * tollgate.settle and the expiry job under real concurrency: duplicate settlements racing each other, the expiry job
 * racing late settlements, and many parallel calls — after which every rollup equals the call log to the micro-dollar.
 */
import assert from "node:assert/strict";
import {
  type Admission,
  admit,
  call,
  connect,
  createFeature,
  createTier,
  createUsers,
  dbTest,
  request,
  settle,
  type Sql,
} from "./stack/fixtures.ts";

/** Rollups of one feature next to the aggregate of its call rows, as exact decimal strings. */
async function featureTotals(sql: Sql, feature: string) {
  const [totals] = await sql`
    select
      (select sum(calls)::text from tollgate.usage_daily where feature = ${feature}) as rollup_calls,
      (select count(*)::text from public.ai_api_calls where feature = ${feature}) as log_calls,
      (select sum(cost_usd)::text from tollgate.usage_daily where feature = ${feature}) as rollup_cost,
      (select sum(estimated_cost)::text from public.ai_api_calls where feature = ${feature}) as log_cost,
      (select sum(input_tokens + output_tokens)::text from tollgate.usage_daily where feature = ${feature}) as rollup_tokens,
      (select sum(input_tokens + output_tokens)::text from public.ai_api_calls where feature = ${feature}) as log_tokens,
      (select sum(expired_calls)::text from tollgate.usage_daily where feature = ${feature}) as rollup_expired,
      (select count(*) filter (where status = 'expired')::text from public.ai_api_calls where feature = ${feature})
        as log_expired,
      (select s.spent_usd::text from public.budget_status as s join tollgate.budgets as b on b.id = s.budget_id
        where b.feature = ${feature}) as budget_spent,
      (select s.reserved_usd::text from public.budget_status as s join tollgate.budgets as b on b.id = s.budget_id
        where b.feature = ${feature}) as budget_reserved`;
  return totals;
}

dbTest("db: concurrent duplicate settlements write exactly one call row each", async () => {
  const sql = connect(100);
  try {
    const tier = await createTier(sql);
    const feature = await createFeature(sql, { budgetUsd: 100 });
    const users = await createUsers(30, { tier });
    const admitted = await Promise.all(users.map((user) => admit(sql, request(user, { feature }))));

    // Every request settled five times at once (a retried waitUntil, a second isolate...).
    const results = await Promise.all(
      admitted.flatMap((a, i) => Array.from({ length: 5 }, () => settle(sql, call(a, users[i], { feature })))),
    );

    assert.equal(results.filter((r) => r.settled).length, 30, "one settlement per request wins");
    assert.equal(results.filter((r) => r.duplicate).length, 120, "the others are no-ops that say so");
    const totals = await featureTotals(sql, feature);
    assert.equal(totals.log_calls, "30", "one call row per request");
    assert.equal(totals.rollup_calls, "30", "counted once in the rollup");
    assert.equal(totals.budget_spent, "0.001980", "30 x 0.000066 spent once");
    assert.equal(totals.budget_reserved, "0.000000");
  } finally {
    await sql.end();
  }
});

dbTest("db: the expiry job racing late settlements loses nothing and charges nothing twice", async () => {
  const sql = connect(100);
  try {
    const tier = await createTier(sql);
    const feature = await createFeature(sql, { budgetUsd: 100 });
    const users = await createUsers(60, { tier });
    const admitted = await Promise.all(
      users.map((user) => admit(sql, request(user, { feature, estimated_cost_usd: 0.005 }))),
    );
    // Their functions went quiet for eleven minutes.
    await sql`
      update public.api_usage set created_at = created_at - interval '11 minutes'
      where request_id = any(${admitted.map((a) => a.request_id)}::uuid[])`;

    // Three expiry runs and every late settlement, all at once.
    const settled = admitted.map((a, i) => settle(sql, call(a, users[i], { feature, cost_usd: 0.001 })));
    const expired = [1, 2, 3].map(() =>
      sql`select tollgate.expire_reservations() as n`.then(([row]) => row.n as number)
    );
    const [results, runs] = await Promise.all([Promise.all(settled), Promise.all(expired)]);

    assert.ok(results.every((r) => r.settled), "every settlement lands, before or after the expiry");
    assert.equal(
      runs.reduce((a, b) => a + b, 0),
      results.filter((r) => r.late).length,
      "each reservation the jobs expired was corrected by its late settlement, exactly once",
    );
    const totals = await featureTotals(sql, feature);
    assert.deepEqual(
      [totals.log_calls, totals.rollup_calls, totals.log_expired, totals.rollup_expired],
      ["60", "60", "0", "0"],
      "one row per request, all with the actual numbers",
    );
    assert.equal(totals.log_cost, "0.060000");
    assert.equal(totals.rollup_cost, totals.log_cost, "the rollup moved by the differences");
    assert.equal(totals.budget_spent, "0.060000", "the budget is charged the actual cost once");
    assert.equal(totals.budget_reserved, "0.000000", "and holds no reservation");
  } finally {
    await sql.end();
  }
});

dbTest("db: after many parallel calls every rollup equals the call log to the micro-dollar", async () => {
  const sql = connect(25);
  try {
    const tier = await createTier(sql);
    const feature = await createFeature(sql, { budgetUsd: 1000 });
    const users = await createUsers(50, { tier });
    const models = ["gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "claude-sonnet-4-6"];
    const statuses = ["success", "success", "success", "error", "timeout", "client_closed"] as const;
    // Deterministic pseudo-random numbers, so a failure can be replayed.
    let seed = 42;
    const next = (n: number) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;

    const work = Array.from({ length: 600 }, (_, i) => async () => {
      const user = users[i % users.length];
      const a: Admission = await admit(
        sql,
        request(user, { feature, model: models[next(4)], estimated_cost_usd: 0.01, max_output_tokens: 500 }),
      );
      assert.ok(a.allowed, a.message ?? "");
      if (next(20) === 0) return; // never settled: left for the expiry job
      const micros = next(9_999_999); // up to 9.999999 cents, every digit significant
      await settle(
        sql,
        call(a, user, {
          feature,
          status: statuses[next(statuses.length)],
          input_tokens: next(5000),
          output_tokens: next(500),
          latency_ms: next(3000),
          cost_usd: (micros / 1e8).toFixed(6),
          cached: next(15) === 0,
        }),
      );
    });
    // 25 workers draining the queue.
    const queue = [...work];
    await Promise.all(Array.from({ length: 25 }, async () => {
      while (queue.length) await queue.shift()!();
    }));
    await sql`
      update public.api_usage set created_at = created_at - interval '11 minutes'
      where feature = ${feature} and status = 'reserved'`;
    await sql`select tollgate.expire_reservations()`;

    const totals = await featureTotals(sql, feature);
    assert.equal(totals.log_calls, "600");
    assert.equal(totals.rollup_calls, totals.log_calls);
    assert.equal(totals.rollup_cost, totals.log_cost, "usage_daily cost = sum of estimated_cost, exactly");
    assert.equal(totals.rollup_tokens, totals.log_tokens);
    assert.equal(totals.rollup_expired, totals.log_expired);
    assert.equal(totals.budget_spent, totals.log_cost, "the budget's spend = sum of the calls' cost, exactly");
    assert.equal(totals.budget_reserved, "0.000000", "no reservation leaked");

    const perUser = await sql`
      select d.user_id, d.cost_usd::text as rollup, c.cost::text as log, d.reserved_cost_usd::text as reserved
      from (select user_id, sum(cost_usd) as cost_usd, sum(reserved_cost_usd) as reserved_cost_usd
            from public.user_usage_daily where user_id = any(${users}::uuid[]) group by user_id) as d
      join (select user_id, sum(estimated_cost) as cost from public.ai_api_calls
            where user_id = any(${users}::uuid[]) group by user_id) as c using (user_id)`;
    assert.equal(perUser.length, 50);
    for (const row of perUser) {
      assert.equal(row.rollup, row.log, `user ${row.user_id}: rollup = log`);
      assert.equal(Number(row.reserved), 0, `user ${row.user_id}: nothing reserved`);
    }

    const [byFeature] = await sql`
      select sum(total_calls)::text as total_calls, sum(total_cost)::text as total_cost
      from public.cost_by_feature where feature = ${feature}`;
    assert.deepEqual(byFeature, { total_calls: "600", total_cost: totals.log_cost }, "cost_by_feature agrees");
  } finally {
    await sql.end();
  }
});
