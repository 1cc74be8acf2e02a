import assert from "node:assert/strict";
import type { Ledger } from "../../supabase/functions/_shared/db.ts";
import { abandonInBackground } from "../../supabase/functions/_shared/settlement.ts";
import { until } from "../stack/util.ts";

/** A ledger that abandons after `failures` refusals, one call at a time or it notices. */
function abandoningLedger(failures: number) {
  const abandoned: string[] = [];
  let inFlight = 0;
  let mostInFlight = 0;
  const ledger = {
    async abandon(requestId: string) {
      mostInFlight = Math.max(mostInFlight, ++inFlight);
      await new Promise((resolve) => setTimeout(resolve, 5));
      inFlight--;
      if (failures-- > 0) throw new Error("connection refused");
      abandoned.push(requestId);
    },
  } as unknown as Ledger;
  return { ledger, abandoned, mostInFlight: () => mostInFlight };
}

Deno.test("abandonments go one at a time, in order, each once", async () => {
  const { ledger, abandoned, mostInFlight } = abandoningLedger(0);
  const ids = ["a", "b", "c", "d"];
  for (const id of ids) abandonInBackground(ledger, id, "user");
  await until(() => abandoned.length === ids.length, 2_000);
  assert.deepEqual(abandoned, ids);
  assert.equal(mostInFlight(), 1);
});

Deno.test("while the database fails, the oldest abandonment is tried again after a backoff; none is lost", async () => {
  const { ledger, abandoned, mostInFlight } = abandoningLedger(2);
  abandonInBackground(ledger, "first", "user");
  abandonInBackground(ledger, "second", "user");
  await until(() => abandoned.length === 2, 5_000);
  assert.deepEqual(abandoned, ["first", "second"]);
  assert.equal(mostInFlight(), 1);
  // A later one starts the queue again.
  abandonInBackground(ledger, "third", "user");
  await until(() => abandoned.length === 3, 2_000);
});
