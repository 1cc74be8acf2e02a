/**
 * What a provider's rate-limit headers say about its headroom, read from any response (a 429
 * carries them too), so the database can hold traffic back before the provider refuses it.
 * OpenAI and compatible providers send `x-ratelimit-*` with Go-style durations as resets;
 * Anthropic sends `anthropic-ratelimit-*` with RFC 3339 times.
 */
import type { WireFormat } from "../errors.ts";
import type { RateLimitSnapshot } from "../ledger.ts";

/** The headers' reading; null when the response carried none of them (or none readable). */
export function rateLimitSnapshot(format: WireFormat, headers: Headers, now: Date): RateLimitSnapshot | null {
  const snapshot = format === "openai" ? openaiSnapshot(headers) : anthropicSnapshot(headers, now);
  return Object.values(snapshot).every((value) => value === null) ? null : snapshot;
}

function openaiSnapshot(headers: Headers): RateLimitSnapshot {
  const read = (name: string) => headers.get(`x-ratelimit-${name}`);
  return {
    limit_requests: count(read("limit-requests")),
    remaining_requests: count(read("remaining-requests")),
    reset_requests_ms: goDurationMs(read("reset-requests")),
    limit_tokens: count(read("limit-tokens")),
    remaining_tokens: count(read("remaining-tokens")),
    reset_tokens_ms: goDurationMs(read("reset-tokens")),
  };
}

interface AnthropicLimit {
  limit: number | null;
  remaining: number | null;
  resetMs: number | null;
}

function anthropicSnapshot(headers: Headers, now: Date): RateLimitSnapshot {
  const group = (name: string): AnthropicLimit | null => {
    const read = (field: string) => headers.get(`anthropic-ratelimit-${name}-${field}`);
    if (read("limit") === null && read("remaining") === null && read("reset") === null) return null;
    return { limit: count(read("limit")), remaining: count(read("remaining")), resetMs: untilMs(read("reset"), now) };
  };
  const requests = group("requests");
  const tokens = group("tokens") ?? tighter(group("input-tokens"), group("output-tokens"));
  return {
    limit_requests: requests?.limit ?? null,
    remaining_requests: requests?.remaining ?? null,
    reset_requests_ms: requests?.resetMs ?? null,
    limit_tokens: tokens?.limit ?? null,
    remaining_tokens: tokens?.remaining ?? null,
    reset_tokens_ms: tokens?.resetMs ?? null,
  };
}

/**
 * Without the combined `tokens-*` headers, the input and output limits stand for it. Anthropic
 * enforces them separately and refuses a request when either runs out, so the headroom is the
 * one with fewer tokens remaining (taken whole, so its limit and reset go with its remaining).
 */
function tighter(input: AnthropicLimit | null, output: AnthropicLimit | null): AnthropicLimit | null {
  if (input?.remaining == null) return output ?? input;
  if (output?.remaining == null) return input;
  return output.remaining < input.remaining ? output : input;
}

/** A count header: a non-negative number (floored); null otherwise. */
function count(value: string | null): number | null {
  return value !== null && decimal.test(value) ? Math.floor(Number(value)) : null;
}

const decimal = /^\d+(?:\.\d+)?$/;

const unitMs: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "µs": 1e-3,
  "μs": 1e-3,
  ms: 1,
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
};
const durationPart = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/y;

/**
 * A Go duration (`time.Duration.String()`: `20ms`, `1s`, `59.123s`, `6m0s`, `1h2m3.5s`) in ms,
 * rounded up so that headroom is never expected back early; null when it is not one.
 */
export function goDurationMs(value: string | null): number | null {
  const text = value?.trim();
  if (!text) return null;
  if (text === "0") return 0;
  let ms = 0;
  durationPart.lastIndex = 0;
  while (durationPart.lastIndex < text.length) {
    const part = durationPart.exec(text);
    if (!part) return null;
    ms += Number(part[1]) * unitMs[part[2]];
  }
  // To the µs first: float noise (0.07 × 1000 = 70.00000000000001) must not round up a whole ms.
  return Math.ceil(Math.round(ms * 1_000) / 1_000);
}

const rfc3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)$/;

/** An RFC 3339 time as ms from `now`, 0 when already past; null when it is not one. */
function untilMs(value: string | null, now: Date): number | null {
  const text = value?.trim();
  if (!text || !rfc3339.test(text)) return null;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now.getTime());
}
