import assert from "node:assert/strict";
import postgres from "postgres";
import {
  againOnDeadlock,
  connectLedger,
  DEADLOCK_ATTEMPTS,
  mayHaveCommitted,
} from "../../supabase/functions/_shared/db.ts";
import { GatewayError } from "../../supabase/functions/_shared/errors.ts";

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
const serverError = (code: string, message: string, severity = "ERROR") =>
  new postgres.PostgresError({ code, message, severity } as never);
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

Deno.test("a database that closes each connection as it opens (as one restarting does) is refused in seconds", async () => {
  // postgres.js alone holds such a call forever, reconnecting; the ledger gives up on it and
  // starts a new pool, so the calls after it are not stuck behind it.
  const closing = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = (async () => {
    for await (const connection of closing) connection.close();
  })();
  const { port } = closing.addr as Deno.NetAddr;
  const ledger = connectLedger(`postgresql://postgres:postgres@127.0.0.1:${port}/postgres`, { viaPooler: false });
  try {
    for (const attempt of [1, 2]) {
      const started = performance.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const heldTooLong = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("still waiting after 10 s")), 10_000);
      });
      await assert.rejects(
        Promise.race([ledger.admit({ request_id: crypto.randomUUID() }), heldTooLong]),
        (error) => error instanceof GatewayError && error.code === "database_unavailable",
      ).finally(() => clearTimeout(timer));
      const seconds = (performance.now() - started) / 1000;
      assert.ok(seconds < 6.5, `call ${attempt} was refused after ${seconds.toFixed(1)} s`);
    }
  } finally {
    await ledger.close().catch(() => {});
    closing.close();
    await accepting.catch(() => {});
  }
});

Deno.test("a call may have committed when its answer was lost, not when the database refused it or was never reached", () => {
  /** What postgres.js throws when a connection fails (its `Errors.connection`, or node's). */
  const connectionError = (code: string) => Object.assign(new Error(`write ${code} 127.0.0.1:5432`), { code });
  const cases: [unknown, boolean][] = [
    [serverError("22P02", "invalid input syntax for type uuid"), false],
    [serverError("57014", "canceling statement due to statement timeout"), false],
    [serverError("57P03", "the database system is starting up", "FATAL"), false],
    [serverError("53300", "sorry, too many clients already", "FATAL"), false],
    [connectionError("ECONNREFUSED"), false],
    [connectionError("CONNECT_TIMEOUT"), false],
    // The session was ended while the call ran: its commit may have gone through.
    [serverError("57P01", "terminating connection due to administrator command", "FATAL"), true],
    // A pooler's word for a server connection it lost.
    [serverError("08006", "server connection lost"), true],
    [serverError("XX000", "internal error"), true],
    [connectionError("CONNECTION_CLOSED"), true],
    [connectionError("ECONNRESET"), true],
    [new Error("the database did not answer within 5 s"), true],
  ];
  for (const [error, expected] of cases) {
    assert.equal(mayHaveCommitted(error), expected, (error as Error).message);
  }
});

Deno.test("an admission refused because the database could not be reached is known not to have committed", async () => {
  const vacant = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = vacant.addr as Deno.NetAddr;
  vacant.close();
  const ledger = connectLedger(`postgresql://postgres:postgres@127.0.0.1:${port}/postgres`, { viaPooler: false });
  try {
    await assert.rejects(ledger.admit({ request_id: crypto.randomUUID() }), (error) => {
      assert.ok(error instanceof GatewayError && error.code === "database_unavailable");
      assert.equal(mayHaveCommitted(error.cause), false);
      return true;
    });
  } finally {
    await ledger.close().catch(() => {});
  }
});
