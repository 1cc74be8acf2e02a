/**
 * Time in a worker: work that outlives the response, and waits.
 *
 * Background work after the response: the hosted runtime may retire a worker once its
 * response is sent and every `EdgeRuntime.waitUntil` promise has resolved, so anything that
 * must finish (settlement, alert delivery) is handed to it. Where there is no EdgeRuntime the
 * promise simply runs on.
 */
declare const EdgeRuntime: { waitUntil(promise: Promise<unknown>): void } | undefined;

export function inBackground(task: Promise<unknown>): void {
  if (typeof EdgeRuntime !== "undefined") EdgeRuntime.waitUntil(task);
}

/** Waits `ms`, or less when `signal` aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}
