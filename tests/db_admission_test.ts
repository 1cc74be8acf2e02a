/**
 * tollgate.admit under real concurrency: many server sessions at once (a postgres.js pool of up to 100 connections),
 * the way isolates of the ai function call it. Per-user limits and budget hard caps hold exactly; users do not wait for
 * each other.
 */
import assert from "node:assert/strict";
import { MAX_BATCH_SIZE } from "../supabase/functions/_shared/batching.ts";
import { connectLedger } from "../supabase/functions/_shared/db.ts";
import {
  type Admission,
  admit,
  call,
  connect,
  createFeature,
  createTier,
  createUser,
  createUsers,
  dbTest,
  request,
  settle,
  type Sql,
  stack,
  uniqueName,
} from "./stack/fixtures.ts";

const count = <T>(items: T[], test: (item: T) => boolean) => items.filter(test).length;

dbTest("db: 200 parallel admissions for one user with a limit of 20 admit exactly 20", async () => {
  const sql = connect(100);
  try {
    const tier = await createTier(sql, {
      windows: [{ name: "minute", seconds: 60, maxRequests: 20 }, { name: "hour", seconds: 3600, maxRequests: 1000 }],
    });
    const user = await createUser({ tier });
    const answers = await Promise.all(Array.from({ length: 200 }, () => admit(sql, request(user))));

    assert.equal(count(answers, (a) => a.allowed), 20, "exactly the limit is admitted");
    assert.equal(count(answers, (a) => a.code === "rate_limited" && a.layer === "user_window"), 180);
    for (const refused of answers.filter((a) => !a.allowed)) {
      assert.ok(
        refused.retry_after_seconds! >= 1 && refused.retry_after_seconds! <= 60,
        "a refusal says when to retry",
      );
      assert.equal(refused.windows![0].remaining, 0);
    }
    const [{ rows }] = await sql`select count(*)::int as rows from public.api_usage where user_id = ${user}`;
    assert.equal(rows, 20, "one reservation per admitted request");
  } finally {
    await sql.end();
  }
});

dbTest("db: a brand-new user's first concurrent burst admits exactly the free tier's 10 per minute", async () => {
  const sql = connect(100);
  try {
    const user = await createUser(); // no plan, no history, no rollup row yet
    const answers = await Promise.all(Array.from({ length: 100 }, () => admit(sql, request(user))));

    assert.equal(count(answers, (a) => a.allowed), 10);
    assert.ok(answers.every((a) => a.tier === "free"));
    const [usage] = await sql`
      select reserved_tokens::int, reserved_cost_usd::text from public.user_usage_daily where user_id = ${user}`;
    assert.deepEqual(
      usage,
      { reserved_tokens: 10 * 200, reserved_cost_usd: "0.010000" },
      "ten reservations, counted once",
    );
  } finally {
    await sql.end();
  }
});

dbTest("db: different users are admitted in parallel, none refused", async () => {
  const sql = connect(100);
  try {
    const tier = await createTier(sql);
    const users = await createUsers(300, { tier });
    const answers = await Promise.all(users.map((user) => admit(sql, request(user))));
    assert.equal(count(answers, (a) => a.allowed), 300);
    await Promise.all(answers.map((a, i) => settle(sql, call(a, users[i]))));
  } finally {
    await sql.end();
  }
});

dbTest("db: one user's admissions do not wait for another user's", async () => {
  const sql = connect(10);
  const [alice, bob] = await createUsers(2);
  const holder = await sql.reserve();
  try {
    // Hold alice's admission lock, as a transaction admitting her would.
    await holder`begin`;
    await holder`select tollgate.lock_users(array[${alice}]::uuid[])`;

    const started = performance.now();
    const forBob = await sql.begin(async (tx) => {
      await tx`set local lock_timeout = '2s'`;
      return await admit(tx, request(bob));
    });
    assert.equal(forBob.allowed, true, "bob is admitted while alice's lock is held");
    assert.ok(performance.now() - started < 1000, "without waiting for it");

    await assert.rejects(
      sql.begin(async (tx) => {
        await tx`set local lock_timeout = '300ms'`;
        await admit(tx, request(alice));
      }),
      (error: { code?: string }) => error.code === "55P03",
      "alice's next admission waits for her lock",
    );
  } finally {
    await holder`rollback`;
    holder.release();
    await sql.end();
  }
});

/**
 * Runs `test` with 300 fresh users and the global budget's limit set to leave room for exactly 25 requests of 0.01 USD
 * (and less than a 26th) above what is committed now; `before` is that commitment. The limit is put back afterwards.
 */
async function withRoomFor25(
  sql: Sql,
  test: (users: string[], before: { spent: string; reserved: string }) => Promise<void>,
): Promise<void> {
  const [budget] = await sql`select id, monthly_limit_usd::text as limit from tollgate.budgets where scope = 'global'`;
  try {
    const tier = await createTier(sql);
    const users = await createUsers(300, { tier });
    const [before] = await sql`
      select spent_usd::text as spent, reserved_usd::text as reserved from public.budget_status where scope = 'global'`;
    await sql`
      update tollgate.budgets set monthly_limit_usd = ${before.spent}::numeric + ${before.reserved}::numeric + 0.255
      where id = ${budget.id}`;
    await test(users, before as { spent: string; reserved: string });
  } finally {
    await sql`update tollgate.budgets set monthly_limit_usd = ${budget.limit}::numeric where id = ${budget.id}`;
  }
}

dbTest("db: a global budget's hard cap is exact under concurrency across many users", async () => {
  const sql = connect(100);
  try {
    await withRoomFor25(sql, async (users, before) => {
      const answers = await Promise.all(users.map((user) => admit(sql, request(user, { estimated_cost_usd: 0.01 }))));

      assert.equal(count(answers, (a) => a.allowed), 25, "exactly as many as the budget holds");
      assert.equal(count(answers, (a) => a.code === "budget_exceeded" && a.layer === "budget"), 275);
      const [during] = await sql`
        select (reserved_usd - ${before.reserved}::numeric)::text as added, remaining_usd::text as remaining
        from public.budget_status where scope = 'global'`;
      assert.deepEqual(
        during,
        { added: "0.250000", remaining: "0.005000" },
        "25 x 0.01 reserved, never past the limit",
      );

      // Settling releases every reservation: nothing leaks into a false "budget exceeded" later.
      await Promise.all(answers.map((a, i) => a.allowed ? settle(sql, call(a, users[i], { cost_usd: 0.004 })) : null));
      const [after] = await sql`
        select (spent_usd - ${before.spent}::numeric)::text as spent,
          (reserved_usd - ${before.reserved}::numeric)::text as reserved
        from public.budget_status where scope = 'global'`;
      assert.deepEqual(after, { spent: "0.100000", reserved: "0.000000" }, "25 x 0.004 spent, the estimates released");
    });
  } finally {
    await sql.end();
  }
});

dbTest("db: a feature budget's hard cap is exact too, and settlement frees its reservations exactly", async () => {
  const sql = connect(100);
  try {
    const tier = await createTier(sql);
    const feature = await createFeature(sql, { budgetUsd: 0.2 });
    const users = await createUsers(120, { tier });
    const admitOne = (user: string) => admit(sql, request(user, { feature, estimated_cost_usd: 0.01 }));

    const first = await Promise.all(users.map(admitOne));
    const admitted = first.filter((a) => a.allowed);
    assert.equal(admitted.length, 20);

    // Each call cost 0.004 of its 0.01 estimate: 20 x 0.006 comes back, room for 12 more requests exactly.
    await Promise.all(admitted.map((a) => settle(sql, call(a, users[first.indexOf(a)], { feature, cost_usd: 0.004 }))));
    const [status] = await sql`
      select s.spent_usd::text as spent, s.reserved_usd::text as reserved
      from public.budget_status as s join tollgate.budgets as b on b.id = s.budget_id where b.feature = ${feature}`;
    assert.deepEqual(status, { spent: "0.080000", reserved: "0.000000" }, "spend is actual, nothing stays reserved");

    const second = await Promise.all(users.map(admitOne));
    assert.equal(count(second, (a) => a.allowed), 12, "the freed 0.12 USD admits exactly 12 more");
  } finally {
    await sql.end();
  }
});

dbTest(
  "db: after a breaker's cooldown exactly one of many concurrent requests is granted the half-open probe",
  async () => {
    const sql = connect(50);
    const model = uniqueName("probe-model");
    try {
      const tier = await createTier(sql);
      const users = await createUsers(50, { tier });
      await sql`insert into tollgate.routes (model) values (${model})`;
      await sql`
      insert into tollgate.route_targets (route_model, position, provider, model)
      values (${model}, 1, 'openai', ${model}), (${model}, 2, 'anthropic', 'claude-haiku-4-5')`;
      await sql`
      insert into tollgate.provider_health (provider, model, state, consecutive_failures, opened_at)
      values ('openai', ${model}, 'open', 3, now() - interval '61 seconds')`;

      const answers = await Promise.all(users.map((user) => admit(sql, request(user, { model }))));

      assert.ok(answers.every((a) => a.allowed));
      const probes = answers.filter((a) => a.route![0].probe);
      assert.equal(probes.length, 1, "exactly one probe");
      assert.equal(probes[0].route![0].state, "half_open");
      assert.ok(
        answers.filter((a) => !a.route![0].probe).every((a) =>
          a.route![0].state === "open" && a.route![1].state === "closed"
        ),
        "the others see the breaker open and fall back",
      );
      const [health] = await sql`
      select state, probe_request_id from tollgate.provider_health where provider = 'openai' and model = ${model}`;
      assert.deepEqual(health, { state: "half_open", probe_request_id: probes[0].request_id });
    } finally {
      await sql`delete from tollgate.provider_health where model = ${model}`;
      await sql.end();
    }
  },
);

dbTest("db: admit_many and settle_many take the function's largest batch, and refuse one more", async () => {
  const sql = connect(1);
  try {
    const [{ bound }] = await sql`select tollgate.max_batch_size() as bound`;
    assert.equal(bound, MAX_BATCH_SIZE, "the database's bound is the function's");
    const users = await createUsers(MAX_BATCH_SIZE + 1, { tier: await createTier(sql) });
    const requests = users.map((user) => request(user));
    const tooMany = (name: string) => new RegExp(`${name}: \\w+ must be an array of 1 to ${MAX_BATCH_SIZE} `);
    await assert.rejects(sql`select tollgate.admit_many(${sql.json(requests as never)})`, tooMany("admit_many"));

    const [row] = await sql`select tollgate.admit_many(${sql.json(requests.slice(1) as never)}) as a`;
    const answers = row.a as Admission[];
    assert.ok(answers.every((a) => a.allowed));
    const calls = answers.map((a, i) => call(a, requests[i + 1].user_id));
    await assert.rejects(
      sql`select tollgate.settle_many(${sql.json([...calls, calls[0]] as never)})`,
      tooMany("settle_many"),
    );
    await sql`select tollgate.settle_many(${sql.json(calls as never)})`;
    const [{ settled }] = await sql`
      select count(*)::int as settled from public.ai_api_calls where user_id in ${sql(users)}`;
    assert.equal(settled, MAX_BATCH_SIZE);
  } finally {
    await sql.end();
  }
});

dbTest("db: batches from 16 connections hold each user's limit exactly, without deadlocks", async () => {
  const sql = connect(16);
  try {
    const tier = await createTier(sql, { windows: [{ name: "minute", seconds: 60, maxRequests: 5 }] });
    const users = await createUsers(20, { tier });
    // Each batch takes 16 of the users in a random order: batches share users, and each meets them in its own order.
    const batch = () => [...users].sort(() => Math.random() - 0.5).slice(0, 16).map((user) => request(user));
    const answers = (await Promise.all(
      Array.from({ length: 64 }, async () => {
        const [row] = await sql`select tollgate.admit_many(${sql.json(batch() as never)}) as a`;
        return row.a as Admission[];
      }),
    )).flat();

    assert.equal(answers.length, 64 * 16);
    assert.equal(count(answers, (a) => a.allowed), 20 * 5, "each user's 5 a minute, no more");
    const perUser = await sql`
      select count(*)::int as admitted from public.api_usage where user_id in ${sql(users)} group by user_id`;
    assert.deepEqual(perUser.map((row) => row.admitted), Array(20).fill(5));
  } finally {
    await sql.end();
  }
});

dbTest("db: admission and settlement batches sharing users run side by side without deadlocks", async () => {
  const sql = connect(16);
  try {
    const tier = await createTier(sql);
    const users = await createUsers(20, { tier });
    // Each worker admits a batch of 12 of the users in a random order, then settles it, 8 times over; the 16 workers'
    // admission batches meet the others' settlement batches on the users' rollup rows.
    const settled = await Promise.all(Array.from({ length: 16 }, async () => {
      let calls = 0;
      for (let round = 0; round < 8; round++) {
        const requests = [...users].sort(() => Math.random() - 0.5).slice(0, 12).map((user) => request(user));
        const [row] = await sql`select tollgate.admit_many(${sql.json(requests as never)}) as a`;
        const answers = row.a as Admission[];
        assert.ok(answers.every((a) => a.allowed));
        const batch = answers.map((a, i) => call(a, requests[i].user_id)).sort(() => Math.random() - 0.5);
        await sql`select tollgate.settle_many(${sql.json(batch as never)})`;
        calls += batch.length;
      }
      return calls;
    }));

    const [rows] = await sql`
      select count(*)::int as calls, count(*) filter (where status = 'success')::int as settled
      from public.ai_api_calls where user_id in ${sql(users)}`;
    const total = settled.reduce((a, b) => a + b, 0);
    assert.deepEqual(rows, { calls: total, settled: total });
  } finally {
    await sql.end();
  }
});

dbTest("db: admissions through the function's group commit keep a budget's hard cap exact", async () => {
  // Four ledgers, as four isolates of the ai function hold them, each sent 75 requests at once: most go in batches.
  const ledgers = Array.from({ length: 4 }, () => connectLedger(stack.dbUrl, { viaPooler: false }));
  const sql = connect(2);
  try {
    await withRoomFor25(sql, async (users) => {
      const answers = await Promise.all(
        users.map((user, i) => ledgers[i % 4].admit({ ...request(user, { estimated_cost_usd: 0.01 }) })),
      );

      assert.equal(count(answers, (a) => a.allowed), 25, "exactly as many as the budget holds");
      assert.equal(count(answers, (a) => a.code === "budget_exceeded"), 275);
      const [rows] = await sql`
        select count(*)::int as reserved from public.api_usage where user_id in ${sql(users)}`;
      assert.equal(rows.reserved, 25, "one reservation per admitted request");
    });
  } finally {
    await Promise.all(ledgers.map((ledger) => ledger.close()));
    await sql.end();
  }
});

/** A model routed to a provider of its own, whose one key takes `maxInFlight` calls at once. */
async function providerWithCeiling(sql: Sql, maxInFlight: number): Promise<{ providerName: string; model: string }> {
  const providerName = uniqueName("ceil");
  const model = uniqueName("ceil-model");
  await sql`insert into tollgate.routes (model) values (${model})`;
  await sql`insert into tollgate.route_targets (route_model, position, provider, model)
    values (${model}, 1, ${providerName}, ${model})`;
  await sql`insert into tollgate.provider_keys (provider, label, fingerprint, max_in_flight)
    values (${providerName}, 'primary', 'sha256:0123456789abcdef', ${maxInFlight})`;
  return { providerName, model };
}

dbTest("db: batches granted at once on a roomy provider never start more calls than its max_in_flight", async () => {
  const sql = connect(16);
  try {
    // Room for more calls than there are database connections, yet less than a full batch per connection: the provider
    // is not roomy, so every grant takes its lock exclusive and sees the others; 16 full batches ask for far more.
    const [{ connections }] = await sql`select current_setting('max_connections')::int as connections`;
    const ceiling = connections + 40;
    const { providerName, model } = await providerWithCeiling(sql, ceiling);
    const users = await createUsers(16 * MAX_BATCH_SIZE, { tier: await createTier(sql) });

    const answers = (await Promise.all(
      Array.from({ length: 16 }, async (_, batch) => {
        const requests = users.slice(batch * MAX_BATCH_SIZE, (batch + 1) * MAX_BATCH_SIZE)
          .map((user) => request(user, { model }));
        const [row] = await sql`select tollgate.admit_many(${sql.json(requests as never)}) as a`;
        return row.a as Admission[];
      }),
    )).flat();

    const [{ inFlight }] = await sql`
      select count(*)::int as "inFlight" from public.api_usage
      where provider = ${providerName} and status = 'reserved' and holds_upstream_slot`;
    assert.ok(inFlight <= ceiling, `${inFlight} calls in flight on a key that takes ${ceiling}`);
    assert.equal(count(answers, (a) => a.allowed), inFlight, "every admitted call holds a slot");
  } finally {
    await sql.end();
  }
});

dbTest("db: batches on a provider far from its ceiling share its lock, each on one read of the room", async () => {
  const sql = connect(16);
  try {
    // Far more room than every database connection could grant in a full batch.
    const { providerName, model } = await providerWithCeiling(sql, 1_000_000);
    const users = await createUsers(16 * MAX_BATCH_SIZE + 16, { tier: await createTier(sql) });
    // Each of the 16 connections grants once first: a session's first grant on a provider
    // reads its room under the exclusive lock, and notes it roomy for the next.
    await Promise.all(
      users.splice(16 * MAX_BATCH_SIZE).map((user) =>
        sql.begin((tx) => tx`select tollgate.admit_many(${tx.json([request(user, { model })] as never)})`)
      ),
    );

    const batches = await Promise.all(
      Array.from({ length: 16 }, (_, batch) =>
        sql.begin(async (tx) => {
          const requests = users.slice(batch * MAX_BATCH_SIZE, (batch + 1) * MAX_BATCH_SIZE)
            .map((user) => request(user, { model }));
          const [row] = await tx`select tollgate.admit_many(${tx.json(requests as never)}) as a`;
          const [{ held }] = await tx`select current_setting('tollgate.upstream_shared') as held`;
          return { answers: row.a as Admission[], held: held as string };
        })),
    );

    for (const { answers, held } of batches) {
      assert.ok(answers.every((a) => a.allowed), "every request is admitted");
      assert.equal(held, `,${providerName}=primary:true:${MAX_BATCH_SIZE},`, "on one read under the shared lock");
    }
    const [{ slots }] = await sql`
      select count(*)::int as slots from public.api_usage
      where provider = ${providerName} and status = 'reserved' and holds_upstream_slot`;
    assert.equal(slots, 16 * MAX_BATCH_SIZE + 16, "and every grant holds a slot");
  } finally {
    await sql.end();
  }
});
