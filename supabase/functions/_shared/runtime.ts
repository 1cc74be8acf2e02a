/**
 * Background work after the response. The hosted runtime may retire a worker once its
 * response is sent and every `EdgeRuntime.waitUntil` promise has resolved, so anything that
 * must finish (settlement, alert delivery) is handed to it. Where there is no EdgeRuntime the
 * promise simply runs on.
 */
declare const EdgeRuntime: { waitUntil(promise: Promise<unknown>): void } | undefined;

export function inBackground(task: Promise<unknown>): void {
  if (typeof EdgeRuntime !== "undefined") EdgeRuntime.waitUntil(task);
}
