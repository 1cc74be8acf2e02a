/**
 * Budget alerts, delivered by the function when the database cannot deliver them itself.
 *
 * The database's jobs write alerts to `tollgate.budget_alerts` (thresholds, throttle, anomaly breaker, flagged users).
 * Where the database has pg_net and `tollgate.guard_settings.webhook_url` is set, it posts them itself; everywhere
 * else (a database without pg_net, or a webhook kept as a function secret) this module does: after a request, at most
 * once per `TOLLGATE_ALERT_POLL_SECONDS` per isolate and inside `EdgeRuntime.waitUntil`, it
 *   1. claims due alerts with `tollgate.claim_alerts(10, 60)` (a 60 s lease, SKIP LOCKED: isolates never share one),
 *   2. POSTs each payload (Slack-compatible JSON: `text` plus budget, threshold, spend, limit, projection …) to
 *      `TOLLGATE_ALERT_WEBHOOK_URL`,
 *   3. records each outcome with `tollgate.record_alert_delivery(id, error)`: a 2xx marks it delivered; anything else
 *      keeps it for a retry after the database's backoff. An isolate that dies mid-way leaves the lease to expire, and
 *      the alert is claimed again: at least once, never lost (receivers dedupe on `alert_id`).
 *
 * Settings (function secrets, see config.ts): TOLLGATE_ALERT_WEBHOOK_URL (unset: the function delivers
 * nothing) and TOLLGATE_ALERT_POLL_SECONDS (least time between two rounds of one isolate; 0: after every request).
 */
import type { Ledger } from "./db.ts";
import { inBackground } from "./runtime.ts";

/** One POST may take this long before it counts as failed (well inside the lease). */
const postTimeoutMs = 10_000;
const claimBatch = 10;
const leaseSeconds = 60;

export interface AlertCourier {
  /** Call after a request: starts a delivery round in the background when one is due. Never throws. */
  afterRequest(): void;
}

export function createAlertCourier(
  ledger: Ledger,
  settings: { webhookUrl: string; pollSeconds: number },
): AlertCourier {
  let lastStart = -Infinity;
  let running = false;

  async function deliver(): Promise<void> {
    for (const alert of await ledger.claimAlerts(claimBatch, leaseSeconds)) {
      const error = await post(settings.webhookUrl, alert.payload);
      await ledger.recordAlertDelivery(alert.alert_id, error);
      if (error !== null) console.warn(`budget alert ${alert.alert_id} not delivered (${error}); it will be retried`);
    }
  }

  return {
    afterRequest() {
      const now = performance.now();
      if (running || now - lastStart < settings.pollSeconds * 1000) return;
      lastStart = now;
      running = true;
      inBackground(
        deliver()
          .catch((error) => {
            // The alerts stay in the database; the next round (or their lease's end) picks them up again.
            console.warn(`budget alert delivery skipped: ${error instanceof Error ? error.message : error}`);
          })
          .finally(() => running = false),
      );
    },
  };
}

/** POSTs one alert; null when the webhook acknowledged it (2xx), else why not. */
async function post(url: string, payload: unknown): Promise<string | null> {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(payload),
      signal: AbortSignal.timeout(postTimeoutMs),
    });
    await response.body?.cancel();
    return response.ok ? null : `HTTP ${response.status}`;
  } catch (error) {
    return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  }
}
