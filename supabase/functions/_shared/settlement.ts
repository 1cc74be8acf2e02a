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
import { inBackground, sleep } from "./runtime.ts";

// About a minute in all: long enough to ride out a database restart or failover.
const retryDelaysMs = [250, 1000, 2000, 4000, 8000, 15000, 30000];

export function settleInBackground(ledger: Ledger, call: Settlement): void {
  inBackground(settleWithRetry(ledger, call));
}

/**
 * Abandonments wait in one queue, drained one call at a time: they come in bursts when the
 * database fails, and each retrying on its own while it is down would take the pool's
 * connections from the admissions and settlements that wait for it. While the database fails,
 * the queue backs off and tries its oldest again; what has waited longer than a settlement
 * retries is given up (its reservation, if it made one, expires and is charged at its
 * estimate), so that a long outage leaves a queue of a minute's refusals, not of all of them.
 */
interface Abandonment {
  ledger: Ledger;
  requestId: string;
  userId: string;
  /** Date.now() when the call was refused. */
  since: number;
}
const abandonments: Abandonment[] = [];
let abandoning: Promise<void> | undefined;
const abandonWithinMs = retryDelaysMs.reduce((sum, delay) => sum + delay, 0);

export function abandonInBackground(ledger: Ledger, requestId: string, userId: string): void {
  abandonments.push({ ledger, requestId, userId, since: Date.now() });
  abandoning ??= drainAbandonments();
  inBackground(abandoning);
}

async function drainAbandonments(): Promise<void> {
  for (let failures = 0;;) {
    const fresh = abandonments.findIndex((a) => Date.now() - a.since < abandonWithinMs);
    const stale = abandonments.splice(0, fresh === -1 ? abandonments.length : fresh);
    if (stale.length > 0) {
      console.error(
        `abandonment of ${stale.length} refused requests failed for good (the database did not take it for ` +
          `${abandonWithinMs / 1000} s); reservations they made will expire and be charged at their estimates`,
      );
    }
    const next = abandonments[0];
    if (!next) {
      abandoning = undefined;
      return;
    }
    try {
      await next.ledger.abandon(next.requestId, next.userId);
      abandonments.shift();
      failures = 0;
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (isRejectedInput(error)) {
        abandonments.shift();
        console.error(`abandonment of ${next.requestId} failed for good (${message})`);
        continue;
      }
      console.warn(`abandonment of ${next.requestId} failed (${message}); retrying`);
      await sleep(retryDelaysMs[Math.min(failures++, retryDelaysMs.length - 1)]);
    }
  }
}

async function settleWithRetry(ledger: Ledger, call: Settlement): Promise<void> {
  for (let attempt = 0;; attempt++) {
    try {
      await ledger.settle(call);
      return;
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (attempt >= retryDelaysMs.length || isRejectedInput(error)) {
        console.error(
          `settlement of ${call.request_id} failed for good (${message}); the expiry job will charge its estimate`,
        );
        return;
      }
      console.warn(`settlement of ${call.request_id} failed (${message}); retrying`);
      await sleep(retryDelaysMs[attempt]);
    }
  }
}

/** The database refused the record itself (bad data), as opposed to being unreachable. */
function isRejectedInput(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return typeof code === "string" && /^(22|23|P0)/.test(code);
}
