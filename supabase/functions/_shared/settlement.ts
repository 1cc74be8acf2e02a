/**
 * What the ledger is owed about a request once its caller has an answer, written in the
 * background (see runtime.ts) and retried with backoff, so that a database restart or failover
 * meanwhile loses none of it. Both writes are idempotent on the request id, so a retry after an
 * unseen commit is safe.
 *
 * - A settlement: the call has happened and must be recorded. If every try fails, the
 *   reservation is still in `api_usage`, and the expiry job charges it at its estimate: the
 *   call is never free and never lost.
 * - An abandonment: the call was refused because its admission got no answer, which may have
 *   reserved all the same. Left alone, that reservation would be charged for a call never made.
 */
import type { Ledger } from "./db.ts";
import type { Settlement } from "./ledger.ts";
import { inBackground } from "./runtime.ts";

// About a minute in all: long enough to ride out a database restart or failover.
const retryDelaysMs = [250, 1000, 2000, 4000, 8000, 15000, 30000];

export function settleInBackground(ledger: Ledger, call: Settlement): void {
  inBackground(
    withRetry(`settlement of ${call.request_id}`, () => ledger.settle(call), "the expiry job will charge its estimate"),
  );
}

/**
 * Abandonments go one at a time: they come in bursts when the database fails, each would retry
 * while it is down, and together they would take the pool's connections from the admissions
 * and settlements that still wait for it.
 */
const abandonments: (() => Promise<void>)[] = [];
let abandoning: Promise<void> | undefined;

export function abandonInBackground(ledger: Ledger, requestId: string, userId: string): void {
  abandonments.push(() =>
    withRetry(
      `abandonment of ${requestId}`,
      () => ledger.abandon(requestId, userId),
      "a reservation it made will expire and be charged at its estimate",
    )
  );
  abandoning ??= (async () => {
    while (abandonments.length > 0) await abandonments.shift()!();
    abandoning = undefined;
  })();
  inBackground(abandoning);
}

async function withRetry(what: string, write: () => Promise<void>, otherwise: string): Promise<void> {
  for (let attempt = 0;; attempt++) {
    try {
      await write();
      return;
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (attempt >= retryDelaysMs.length || isRejectedInput(error)) {
        console.error(`${what} failed for good (${message}); ${otherwise}`);
        return;
      }
      console.warn(`${what} failed (${message}); retrying`);
      await new Promise((resolve) => setTimeout(resolve, retryDelaysMs[attempt]));
    }
  }
}

/** The database refused the record itself (bad data), as opposed to being unreachable. */
function isRejectedInput(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return typeof code === "string" && /^(22|23|P0)/.test(code);
}
