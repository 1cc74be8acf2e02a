import assert from "node:assert/strict";
import type { RateLimitSnapshot } from "../../supabase/functions/_shared/ledger.ts";
import { goDurationMs, rateLimitSnapshot } from "../../supabase/functions/_shared/providers/ratelimit.ts";

const now = new Date("2025-06-01T12:00:00Z");
const empty: RateLimitSnapshot = {
  limit_requests: null,
  remaining_requests: null,
  reset_requests_ms: null,
  limit_tokens: null,
  remaining_tokens: null,
  reset_tokens_ms: null,
};

Deno.test("Go durations in ms, rounded up; anything else is null", () => {
  const cases: [string | null, number | null][] = [
    ["0", 0],
    ["0s", 0],
    ["1s", 1_000],
    ["20ms", 20],
    ["59.123s", 59_123],
    ["8.64s", 8_640],
    ["0.07s", 70],
    ["6m0s", 360_000],
    ["1h2m3.5s", 3_723_500],
    ["1.5m", 90_000],
    ["500us", 1],
    ["500µs", 1],
    ["1500ns", 1],
    ["2s500ms", 2_500],
    [null, null],
    ["", null],
    ["12", null],
    ["-1s", null],
    ["1x", null],
    ["1s ", 1_000],
    ["s", null],
    ["1s2", null],
    ["1 s", null],
  ];
  for (const [input, expected] of cases) assert.equal(goDurationMs(input), expected, `${input}`);
});

Deno.test("OpenAI headers: counts and Go-duration resets", () => {
  const headers = new Headers({
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-tokens": "1999700",
    "x-ratelimit-reset-tokens": "1m30.5s",
  });
  assert.deepEqual(rateLimitSnapshot("openai", headers, now), {
    limit_requests: 10_000,
    remaining_requests: 9_999,
    reset_requests_ms: 6,
    limit_tokens: 2_000_000,
    remaining_tokens: 1_999_700,
    reset_tokens_ms: 90_500,
  });
});

Deno.test("Anthropic headers: counts and RFC 3339 resets as ms from now", () => {
  const headers = new Headers({
    "anthropic-ratelimit-requests-limit": "1000",
    "anthropic-ratelimit-requests-remaining": "999",
    "anthropic-ratelimit-requests-reset": "2025-06-01T12:00:01Z",
    "anthropic-ratelimit-tokens-limit": "96000",
    "anthropic-ratelimit-tokens-remaining": "95000",
    "anthropic-ratelimit-tokens-reset": "2025-06-01T14:00:00.250+02:00",
    // Ignored while the combined tokens-* are there.
    "anthropic-ratelimit-output-tokens-remaining": "10",
  });
  assert.deepEqual(rateLimitSnapshot("anthropic", headers, now), {
    limit_requests: 1_000,
    remaining_requests: 999,
    reset_requests_ms: 1_000,
    limit_tokens: 96_000,
    remaining_tokens: 95_000,
    reset_tokens_ms: 250,
  });
});

Deno.test("Anthropic without tokens-*: the input or output limit with fewer tokens left", () => {
  const group = (name: string, limit: number, remaining: number, reset: string) => ({
    [`anthropic-ratelimit-${name}-limit`]: String(limit),
    [`anthropic-ratelimit-${name}-remaining`]: String(remaining),
    [`anthropic-ratelimit-${name}-reset`]: reset,
  });
  const cases: [Record<string, string>, Partial<RateLimitSnapshot>][] = [
    [
      {
        ...group("input-tokens", 80_000, 70_000, "2025-06-01T12:00:02Z"),
        ...group("output-tokens", 16_000, 500, "2025-06-01T12:00:03Z"),
      },
      { limit_tokens: 16_000, remaining_tokens: 500, reset_tokens_ms: 3_000 },
    ],
    [
      {
        ...group("input-tokens", 80_000, 100, "2025-06-01T12:00:02Z"),
        ...group("output-tokens", 16_000, 500, "2025-06-01T12:00:03Z"),
      },
      { limit_tokens: 80_000, remaining_tokens: 100, reset_tokens_ms: 2_000 },
    ],
    [
      group("output-tokens", 16_000, 500, "2025-06-01T12:00:03Z"),
      { limit_tokens: 16_000, remaining_tokens: 500, reset_tokens_ms: 3_000 },
    ],
    [
      // An unreadable remaining cannot be the tighter one.
      { ...group("input-tokens", 80_000, 100, "x"), "anthropic-ratelimit-output-tokens-remaining": "many" },
      { limit_tokens: 80_000, remaining_tokens: 100 },
    ],
  ];
  for (const [headers, expected] of cases) {
    assert.deepEqual(rateLimitSnapshot("anthropic", new Headers(headers), now), { ...empty, ...expected });
  }
});

Deno.test("missing or unreadable headers: null fields, never NaN; no snapshot when nothing is readable", () => {
  const cases: ["openai" | "anthropic", Record<string, string>, RateLimitSnapshot | null][] = [
    ["openai", {}, null],
    ["anthropic", {}, null],
    ["openai", { "retry-after": "3", "content-type": "application/json" }, null],
    // The other provider's headers are not read.
    ["openai", { "anthropic-ratelimit-requests-remaining": "5" }, null],
    ["anthropic", { "x-ratelimit-remaining-requests": "5" }, null],
    ["openai", { "x-ratelimit-remaining-requests": "abc", "x-ratelimit-reset-requests": "soon" }, null],
    ["openai", { "x-ratelimit-remaining-tokens": "0" }, { ...empty, remaining_tokens: 0 }],
    ["openai", { "x-ratelimit-limit-requests": "-1", "x-ratelimit-remaining-requests": "7.9" }, {
      ...empty,
      remaining_requests: 7,
    }],
    ["anthropic", { "anthropic-ratelimit-requests-remaining": "0" }, { ...empty, remaining_requests: 0 }],
    // A reset that is not RFC 3339 (Date.parse would take it) is unreadable.
    ["anthropic", { "anthropic-ratelimit-requests-reset": "Sun, 01 Jun 2025 12:00:05 GMT" }, null],
    ["anthropic", { "anthropic-ratelimit-requests-reset": "2025-13-01T12:00:05Z" }, null],
    // A reset already past is no wait at all.
    ["anthropic", { "anthropic-ratelimit-tokens-reset": "2025-06-01T11:59:00Z" }, { ...empty, reset_tokens_ms: 0 }],
  ];
  for (const [format, headers, expected] of cases) {
    assert.deepEqual(rateLimitSnapshot(format, new Headers(headers), now), expected, JSON.stringify(headers));
  }
});
