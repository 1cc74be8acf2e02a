import assert from "node:assert/strict";
import postgres from "postgres";
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

/** What postgres.js throws for an error the server sent. */
const serverError = (code: string, message: string) => new postgres.PostgresError({ code, message } as never);
const deadlock = serverError("40P01", "deadlock detected");

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
  const notPostgres = Object.assign(new Error("deadlock?"), { code: "40P01" });
  for (const error of [serverError("22023", "invalid input"), new Error("connection lost"), notPostgres]) {
    const call = failing(error);
    await assert.rejects(againOnDeadlock(call.call));
    assert.equal(call.attempts(), 1);
  }
});
