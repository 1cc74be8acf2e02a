import assert from "node:assert/strict";
import { againOnDeadlock, DEADLOCK_ATTEMPTS } from "../../supabase/functions/_shared/db.ts";

/** A call that fails with each of `errors` in turn, then answers; counting its attempts. */
function failing(...errors: unknown[]) {
  let attempts = 0;
  return {
    call: () => {
      const error = errors[attempts++];
      return error === undefined ? Promise.resolve("answer") : Promise.reject(error);
    },
    attempts: () => attempts,
  };
}

const deadlock = Object.assign(new Error("deadlock detected"), { code: "40P01" });

Deno.test("a call that ended a deadlock is sent again", async () => {
  const call = failing(deadlock);
  assert.equal(await againOnDeadlock(call.call), "answer");
  assert.equal(call.attempts(), 2);
});

Deno.test("a call that keeps ending deadlocks fails after a few attempts, with the deadlock", async () => {
  const call = failing(...Array(DEADLOCK_ATTEMPTS + 1).fill(deadlock));
  await assert.rejects(againOnDeadlock(call.call), deadlock);
  assert.equal(call.attempts(), DEADLOCK_ATTEMPTS);
});

Deno.test("any other error is not sent again", async () => {
  const refused = Object.assign(new Error("invalid input"), { code: "22023" });
  for (const error of [refused, new Error("connection lost")]) {
    const call = failing(error);
    await assert.rejects(againOnDeadlock(call.call));
    assert.equal(call.attempts(), 1);
  }
});
