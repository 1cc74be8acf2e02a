/**
 * Settlement runs after the response, in the background (see runtime.ts). It is retried with backoff because the call has already happened and must be recorded;
 * `tollgate.settle` is idempotent on the request id, so a retry after an unseen commit is safe.
 * If every try fails, the reservation is still in `api_usage`, and the expiry job charges
 * it at its estimate: the call is never free and never lost.
 */
import type { Ledger } from "./db.ts";
import type { Settlement } from "./ledger.ts";
import { inBackground } from "./runtime.ts";

// About a minute in all: long enough to ride out a database restart or failover.
const retryDelaysMs = [250, 1000, 2000, 4000, 8000, 15000, 30000];

export function settleInBackground(ledger: Ledger, call: Settlement): void {
  inBackground(settleWithRetry(ledger, call));
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
      await new Promise((resolve) => setTimeout(resolve, retryDelaysMs[attempt]));
    }
  }
}

/** The database refused the record itself (bad data), as opposed to being unreachable. */
function isRejectedInput(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return typeof code === "string" && /^(22|23|P0)/.test(code);
}
