import assert from "node:assert/strict";
import { sleep } from "../../supabase/functions/_shared/runtime.ts";
import { groupCommit, MAX_BATCH_SIZE } from "../../supabase/functions/_shared/batching.ts";

/** A database stand-in whose calls finish when the test says so, recording what was sent. */
function fakeDatabase(
  options: {
    failBatches?: "refused" | "unreachable";
    failOne?: (item: number) => boolean;
    collectMs?: number;
  } = {},
) {
  const sent: { kind: "batch" | "one"; items: number[] }[] = [];
  const pending: (() => void)[] = [];
  const later = <T>(answer: () => T) =>
    new Promise<T>((resolve, reject) =>
      pending.push(() => {
        try {
          resolve(answer());
        } catch (error) {
          reject(error);
        }
      })
    );
  const call = groupCommit<number, string>({
    runBatch: (items) => {
      sent.push({ kind: "batch", items });
      return later(() => {
        if (options.failBatches === "refused") throw new Error("deadlock detected");
        if (options.failBatches === "unreachable") throw new Error("connection refused");
        return items.map((item) => `answer ${item}`);
      });
    },
    runOne: (item) => {
      sent.push({ kind: "one", items: [item] });
      return later(() => {
        if (options.failOne?.(item)) throw new Error(`refused ${item}`);
        return `answer ${item}`;
      });
    },
    maxInFlight: 1,
    collectMs: options.collectMs ?? 0,
    refusedByDatabase: (error) => (error as Error).message !== "connection refused",
  });
  /** Lets every call sent so far finish, and the batches they release be sent. */
  const finishAll = async () => {
    while (pending.length > 0) {
      pending.splice(0).forEach((finish) => finish());
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  };
  return { call, sent, finishAll };
}

Deno.test("group commit: a lone call goes at once, alone", async () => {
  const db = fakeDatabase();
  const answer = db.call(1);
  assert.deepEqual(db.sent, [{ kind: "one", items: [1] }]);
  await db.finishAll();
  assert.equal(await answer, "answer 1");
});

Deno.test("group commit: calls that arrive while one is in flight go together, in order", async () => {
  const db = fakeDatabase();
  const answers = [1, 2, 3, 4].map((item) => db.call(item));
  assert.deepEqual(db.sent, [{ kind: "one", items: [1] }]);
  await db.finishAll();
  assert.deepEqual(db.sent, [{ kind: "one", items: [1] }, { kind: "batch", items: [2, 3, 4] }]);
  assert.deepEqual(await Promise.all(answers), ["answer 1", "answer 2", "answer 3", "answer 4"]);
});

Deno.test("group commit: batches hold at most MAX_BATCH_SIZE elements", async () => {
  const db = fakeDatabase();
  const count = 1 + MAX_BATCH_SIZE + 5;
  const answers = Array.from({ length: count }, (_, i) => db.call(i));
  await db.finishAll();
  assert.deepEqual(db.sent.map((s) => s.items.length), [1, MAX_BATCH_SIZE, 5]);
  assert.equal((await Promise.all(answers)).length, count);
});

Deno.test("group commit: a failed batch is sent again element by element; one bad element fails alone", async () => {
  const db = fakeDatabase({ failBatches: "refused", failOne: (item) => item === 3 });
  const answers = [1, 2, 3, 4].map((item) => db.call(item).catch((error: Error) => error.message));
  await db.finishAll();
  assert.deepEqual(db.sent, [
    { kind: "one", items: [1] },
    { kind: "batch", items: [2, 3, 4] },
    { kind: "one", items: [2] },
    { kind: "one", items: [3] },
    { kind: "one", items: [4] },
  ]);
  assert.deepEqual(await Promise.all(answers), ["answer 1", "answer 2", "refused 3", "answer 4"]);
});

Deno.test("group commit: a batch that could not reach the database fails each element, none sent again", async () => {
  const db = fakeDatabase({ failBatches: "unreachable" });
  const answers = [1, 2, 3, 4].map((item) => db.call(item).catch((error: Error) => error.message));
  await db.finishAll();
  assert.deepEqual(db.sent, [{ kind: "one", items: [1] }, { kind: "batch", items: [2, 3, 4] }]);
  assert.deepEqual(await Promise.all(answers), [
    "answer 1",
    "connection refused",
    "connection refused",
    "connection refused",
  ]);
});

Deno.test("group commit: with collectMs, a call that finds the database idle waits for others to join it", async () => {
  const db = fakeDatabase({ collectMs: 30 });
  const answers = [db.call(1), db.call(2)];
  await sleep(5);
  answers.push(db.call(3));
  assert.deepEqual(db.sent, [], "nothing goes before the oldest call has waited collectMs");
  await sleep(40);
  assert.deepEqual(db.sent, [{ kind: "batch", items: [1, 2, 3] }]);
  await db.finishAll();
  assert.deepEqual(await Promise.all(answers), ["answer 1", "answer 2", "answer 3"]);
});

Deno.test("group commit: with collectMs, a full batch goes without waiting", async () => {
  const db = fakeDatabase({ collectMs: 60_000 });
  const answers = Array.from({ length: MAX_BATCH_SIZE + 1 }, (_, i) => db.call(i));
  assert.deepEqual(db.sent.map((s) => s.items.length), [MAX_BATCH_SIZE]);
  await db.finishAll();
  assert.equal(db.sent.length, 1, "the one left over waits for company");
  // The rest of the wait is not this test's business: fill the next batch so it goes too.
  answers.push(...Array.from({ length: MAX_BATCH_SIZE - 1 }, (_, i) => db.call(100 + i)));
  await db.finishAll();
  assert.deepEqual(db.sent.map((s) => s.items.length), [MAX_BATCH_SIZE, MAX_BATCH_SIZE]);
  assert.equal((await Promise.all(answers)).length, 2 * MAX_BATCH_SIZE);
});
