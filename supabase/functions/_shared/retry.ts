/**
 * The retry policy for provider calls, as pure functions: which failures are worth another try,
 * how long to wait, and when to stop trying a provider and fall back to the next one. Retries
 * happen only before a byte of the answer went to the client; that is the caller's side.
 */

/**
 * Tries per provider: 1 + 2 retries. More rarely helps (an outage outlasts seconds of waiting)
 * and the time is better spent on the fallback provider.
 */
export const MAX_ATTEMPTS_PER_PROVIDER = 3;

/**
 * The whole retry and fallback chain must have its answer within this time, counted from the
 * moment the request arrived. The edge runtime drops a request that sends no first byte within
 * 150 s; 120 s leaves 30 s for admission, a last attempt's response and our own work.
 */
export const RETRY_DEADLINE_MS = 120_000;

/**
 * The longest wait for one attempt's response headers. A non-streamed answer's headers come
 * only when the whole answer is generated, so this also caps non-streamed generation; 60 s
 * still leaves time within the deadline to fall back once. Long answers should stream.
 */
export const ATTEMPT_TIMEOUT_MS = 60_000;

/** The first retry waits about 1 s, then 2 s, 4 s (the seeds' schedule), never more than 8 s. */
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_CAP_MS = 8_000;

/**
 * Statuses that a later try can fix: timeouts (408), conflicts (409, OpenAI's lock timeouts),
 * rate limits (429) and server trouble (5xx, incl. Anthropic's 529 "overloaded" and the
 * 520–524 a Cloudflare proxy puts in front of some compatible providers). Not 501: a server
 * that does not implement the endpoint will not start to. Never 4xx otherwise: 400/413/422 mean
 * the request itself is wrong, 401/403 that the key is (retrying the same key cannot help),
 * 404 that the model is not there.
 */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 409 || status === 429 ||
    (status >= 500 && status <= 599 && status !== 501);
}

/**
 * The wait before retry number `attempt` (1 for the first retry), in ms, with "equal jitter":
 * half the exponential step fixed, half random. Full jitter (anywhere from 0 to the step) would
 * spread isolates more, but may retry an overloaded or rate-limited provider almost at once;
 * equal jitter keeps every wait at least half of the seeds' 1 s / 2 s / 4 s and still stops
 * the isolates that failed together from retrying together.
 */
export function backoffDelay(
  attempt: number,
  random: () => number = Math.random,
): number {
  const step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (attempt - 1));
  return Math.round(step / 2 + random() * (step / 2));
}

/**
 * How long the provider asked us to wait, in ms, or undefined when it did not say:
 * `retry-after-ms` (OpenAI), else `retry-after` as seconds or as an HTTP date.
 */
export function retryAfterMs(
  headers: Headers,
  now: number = Date.now(),
): number | undefined {
  const millis = headers.get("retry-after-ms")?.trim();
  if (millis && decimal.test(millis)) return Math.ceil(Number(millis));

  const value = headers.get("retry-after")?.trim();
  if (!value) return undefined;
  if (decimal.test(value)) return Math.ceil(Number(value) * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

const decimal = /^\d+(?:\.\d+)?$/;

/** Why the planner stopped retrying on this provider. */
export type StopReason =
  /** The status says another try cannot help (see `isRetryableStatus`). */
  | "not_retryable"
  /** The provider said so (`x-should-retry: false`). */
  | "provider_declined"
  /** `MAX_ATTEMPTS_PER_PROVIDER` tries were made. */
  | "attempts_exhausted"
  /** The wait would end past the deadline; the fallback provider should answer instead. */
  | "deadline";

export type RetryDecision =
  | { retry: true; delayMs: number }
  | { retry: false; reason: StopReason };

export interface FailedAttempt {
  /** How many tries this provider has had, the failed one included (1 after the first). */
  attempt: number;
  /** The provider's HTTP status; undefined when no response came (network error, timeout). */
  status: number | undefined;
  /** The provider's response headers (empty when no response came). */
  headers: Headers;
  /** Time since the request arrived at the gateway. */
  elapsedMs: number;
  deadlineMs?: number;
  now?: number;
  random?: () => number;
}

/**
 * Whether and when to try the same provider again after a failed attempt. The provider's own
 * retry-after wins over our backoff, even when longer, but a wait that would end past the
 * deadline is not taken: the caller falls back to the next provider instead.
 */
export function nextDelay(failed: FailedAttempt): RetryDecision {
  const {
    attempt,
    status,
    headers,
    elapsedMs,
    deadlineMs = RETRY_DEADLINE_MS,
    now = Date.now(),
    random = Math.random,
  } = failed;

  // OpenAI and Anthropic may tell their SDKs explicitly; their SDKs obey, so do we.
  const verdict = headers.get("x-should-retry");
  if (verdict === "false") return { retry: false, reason: "provider_declined" };
  if (
    verdict !== "true" && status !== undefined && !isRetryableStatus(status)
  ) {
    return { retry: false, reason: "not_retryable" };
  }
  if (attempt >= MAX_ATTEMPTS_PER_PROVIDER) {
    return { retry: false, reason: "attempts_exhausted" };
  }

  const delayMs = retryAfterMs(headers, now) ?? backoffDelay(attempt, random);
  if (elapsedMs + delayMs >= deadlineMs) {
    return { retry: false, reason: "deadline" };
  }
  return { retry: true, delayMs };
}

/**
 * The timeout for the next attempt's response headers: `ATTEMPT_TIMEOUT_MS`, cut short so that
 * the attempt ends by the deadline.
 */
export function attemptTimeoutMs(
  elapsedMs: number,
  deadlineMs = RETRY_DEADLINE_MS,
): number {
  return Math.max(0, Math.min(ATTEMPT_TIMEOUT_MS, deadlineMs - elapsedMs));
}
