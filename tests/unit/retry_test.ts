import assert from "node:assert/strict";
import {
  ATTEMPT_TIMEOUT_MS,
  attemptTimeoutMs,
  backoffDelay,
  type FailedAttempt,
  isRetryableStatus,
  MAX_ATTEMPTS_PER_PROVIDER,
  nextDelay,
  RETRY_DEADLINE_MS,
  retryAfterMs,
} from "../../supabase/functions/_shared/retry.ts";

const now = Date.parse("2025-06-01T12:00:00Z");
const lowest = () => 0;
const highest = () => 0.999999;

Deno.test("retryable statuses", () => {
  for (const status of [408, 409, 429, 500, 502, 503, 504, 529]) {
    assert.equal(isRetryableStatus(status), true, `${status}`);
  }
  for (const status of [400, 401, 403, 404, 413, 422, 501]) {
    assert.equal(isRetryableStatus(status), false, `${status}`);
  }
});

Deno.test("backoff: 1 s, 2 s, 4 s with equal jitter, capped at 8 s", () => {
  assert.equal(backoffDelay(1, lowest), 500);
  assert.equal(backoffDelay(1, highest), 1_000);
  assert.equal(backoffDelay(2, lowest), 1_000);
  assert.equal(backoffDelay(2, highest), 2_000);
  assert.equal(backoffDelay(3, () => 0.5), 3_000);
  assert.equal(backoffDelay(3, highest), 4_000);
  assert.equal(backoffDelay(10, highest), 8_000);
});

Deno.test("retry-after-ms wins over retry-after", () => {
  const headers = new Headers({
    "retry-after-ms": "1500.2",
    "retry-after": "9",
  });
  assert.equal(retryAfterMs(headers, now), 1_501);
});

Deno.test("retry-after in seconds", () => {
  assert.equal(retryAfterMs(new Headers({ "retry-after": "20" }), now), 20_000);
  assert.equal(retryAfterMs(new Headers({ "retry-after": "0" }), now), 0);
});

Deno.test("retry-after as an HTTP date", () => {
  const in30s = new Date(now + 30_000).toUTCString();
  assert.equal(
    retryAfterMs(new Headers({ "retry-after": in30s }), now),
    30_000,
  );
  const past = new Date(now - 5_000).toUTCString();
  assert.equal(retryAfterMs(new Headers({ "retry-after": past }), now), 0);
});

Deno.test("no or unreadable retry-after", () => {
  assert.equal(retryAfterMs(new Headers(), now), undefined);
  assert.equal(
    retryAfterMs(new Headers({ "retry-after": "soon" }), now),
    undefined,
  );
  assert.equal(
    retryAfterMs(new Headers({ "retry-after-ms": "-5" }), now),
    undefined,
  );
});

const failed = (parts: Partial<FailedAttempt>): FailedAttempt => ({
  attempt: 1,
  status: 503,
  headers: new Headers(),
  elapsedMs: 0,
  now,
  random: highest,
  ...parts,
});

Deno.test("plan: backoff when the provider gives no retry-after", () => {
  assert.deepEqual(nextDelay(failed({ attempt: 1 })), {
    retry: true,
    delayMs: 1_000,
  });
  assert.deepEqual(nextDelay(failed({ attempt: 2 })), {
    retry: true,
    delayMs: 2_000,
  });
});

Deno.test("plan: no response at all (network error, timeout) is retried", () => {
  assert.deepEqual(nextDelay(failed({ status: undefined })), {
    retry: true,
    delayMs: 1_000,
  });
});

Deno.test("plan: the provider's retry-after is honored even when longer than the backoff", () => {
  const headers = new Headers({ "retry-after": "30" });
  assert.deepEqual(nextDelay(failed({ status: 429, headers })), {
    retry: true,
    delayMs: 30_000,
  });
});

Deno.test("plan: a wait past the deadline is not taken; fall back instead", () => {
  const headers = new Headers({ "retry-after": "30" });
  assert.deepEqual(
    nextDelay(failed({ status: 429, headers, elapsedMs: 95_000 })),
    {
      retry: false,
      reason: "deadline",
    },
  );
  assert.deepEqual(
    nextDelay(failed({ elapsedMs: RETRY_DEADLINE_MS - 999, random: highest })),
    { retry: false, reason: "deadline" },
  );
  assert.deepEqual(
    nextDelay(failed({ elapsedMs: 10_000, deadlineMs: 10_500 })),
    {
      retry: false,
      reason: "deadline",
    },
  );
});

Deno.test("plan: at most MAX_ATTEMPTS_PER_PROVIDER tries", () => {
  assert.equal(MAX_ATTEMPTS_PER_PROVIDER, 3);
  assert.deepEqual(nextDelay(failed({ attempt: 3 })), {
    retry: false,
    reason: "attempts_exhausted",
  });
});

Deno.test("plan: a bad request or a rejected key is not retried", () => {
  for (const status of [400, 401, 403, 404, 413, 422]) {
    assert.deepEqual(nextDelay(failed({ status })), {
      retry: false,
      reason: "not_retryable",
    });
  }
});

Deno.test("plan: x-should-retry from the provider is obeyed both ways", () => {
  const no = new Headers({ "x-should-retry": "false" });
  assert.deepEqual(nextDelay(failed({ status: 503, headers: no })), {
    retry: false,
    reason: "provider_declined",
  });
  const yes = new Headers({ "x-should-retry": "true" });
  assert.deepEqual(nextDelay(failed({ status: 400, headers: yes })), {
    retry: true,
    delayMs: 1_000,
  });
});

Deno.test("attempt timeout: the constant, cut short by the deadline", () => {
  assert.ok(RETRY_DEADLINE_MS < 150_000);
  assert.equal(attemptTimeoutMs(0), ATTEMPT_TIMEOUT_MS);
  assert.equal(attemptTimeoutMs(RETRY_DEADLINE_MS - 5_000), 5_000);
  assert.equal(attemptTimeoutMs(RETRY_DEADLINE_MS + 1), 0);
});
