/**
 * The shapes exchanged with the database's `tollgate.admit` and `tollgate.settle`
 * (documented beside those functions in supabase/migrations).
 */
import { z } from "zod";

const routeStep = z.object({
  provider: z.string(),
  model: z.string(),
  state: z.enum(["closed", "open", "half_open"]),
  probe: z.boolean(),
  /** The label of the provider key admission chose for this step; null: the first configured key. */
  key: z.string().nullable().default(null),
});
export type RouteStep = z.infer<typeof routeStep>;

const window = z.object({
  name: z.string(),
  window_seconds: z.number(),
  limit: z.number(),
  remaining: z.number(),
  reset_at: z.string(),
});

const tokenQuota = z.object({
  limit: z.number().nullable(),
  used: z.number(),
  reserved: z.number(),
  remaining: z.number().nullable(),
  reset_at: z.string(),
});

const spend = z.object({
  month_to_date_usd: z.coerce.number(),
  reserved_usd: z.coerce.number(),
  cap_usd: z.coerce.number().nullable(),
  remaining_usd: z.coerce.number().nullable(),
  reset_at: z.string(),
});

const warning = z.object({ kind: z.string(), percent: z.number().nullable().optional(), message: z.string() });

export const priceOverride = z.object({
  provider: z.string(),
  model: z.string(),
  input_per_mtok: z.coerce.string(),
  output_per_mtok: z.coerce.string(),
  cached_input_per_mtok: z.coerce.string().nullable(),
  cache_write_per_mtok: z.coerce.string().nullable(),
});

/** The answer of `tollgate.admit` (its contract is in the admission migration's header). */
export const admissionSchema = z.object({
  allowed: z.boolean(),
  request_id: z.string(),
  layer: z.string().nullable(),
  code: z.string().nullable(),
  message: z.string().nullable(),
  retry_after_seconds: z.number().nullable(),
  tier: z.string().nullable(),
  windows: z.array(window).nullable().transform((windows) => windows ?? []),
  tokens: z.object({ daily: tokenQuota, monthly: tokenQuota }).nullable(),
  spend: spend.nullable(),
  warnings: z.array(warning).nullable().transform((warnings) => warnings ?? []),
  feature: z.object({
    name: z.string(),
    priority: z.string(),
    max_tokens: z.number().nullable(),
    cache_ttl_seconds: z.number().nullable(),
  }).nullable(),
  model: z.string().nullable(),
  restricted: z.object({ model: z.string().nullable(), max_tokens: z.number().nullable(), reason: z.string() })
    .nullable(),
  route: z.array(routeStep).nullable().transform((route) => route ?? []),
  prices: z.array(priceOverride).nullable().transform((prices) => prices ?? []),
  cached: z.object({ response: z.unknown(), cost_usd: z.coerce.string() }).nullable(),
  reserved: z.object({ estimated_tokens: z.number(), estimated_cost_usd: z.coerce.number() }).nullable(),
  /** With code `queued`: the request waits for provider capacity; admit it again after `poll_after_ms`. */
  queue: z.object({
    provider: z.string(),
    position: z.number(),
    depth: z.number(),
    poll_after_ms: z.number(),
    wait_until: z.string(),
  }).nullable().default(null),
  /** Load shedding acted on this request: `downgraded` (admitted on a cheaper model), `background`, `batch`. */
  shed: z.string().nullable().default(null),
});
export type Admission = z.infer<typeof admissionSchema>;

/** `tollgate.usage` (GET /v1/usage): the caller's tier, windows, quotas and spend. */
export const usageSchema = z.object({
  tier: z.string().nullable(),
  windows: z.array(window).nullable(),
  tokens: z.object({ daily: tokenQuota, monthly: tokenQuota }).nullable(),
  spend: spend.nullable(),
  warnings: z.array(warning).nullable(),
});
export type AccountUsage = z.infer<typeof usageSchema>;

export type CallStatus = "success" | "error" | "timeout" | "client_closed";

/**
 * A provider's rate-limit headers as one response reported them (OpenAI `x-ratelimit-*`,
 * Anthropic `anthropic-ratelimit-*`); null where a header was absent. Resets are durations.
 */
export interface RateLimitSnapshot {
  limit_requests: number | null;
  remaining_requests: number | null;
  reset_requests_ms: number | null;
  limit_tokens: number | null;
  remaining_tokens: number | null;
  reset_tokens_ms: number | null;
}

export interface AttemptOutcome {
  provider: string;
  model: string;
  ok: boolean;
  status: number | null;
  /** The label of the provider key used (never the key). */
  key: string | null;
  /** When the provider's response headers arrived (ISO 8601); null when none arrived. */
  at: string | null;
  ratelimit: RateLimitSnapshot | null;
  /** The provider's `retry-after(-ms)` on a refusal, in ms. */
  retry_after_ms: number | null;
}

/** The input of `tollgate.settle` (its contract is in the settlement migration's header). */
export interface Settlement {
  request_id: string;
  user_id: string;
  feature: string;
  endpoint: "chat.completions" | "messages";
  provider: string;
  model: string;
  input_tokens: number;
  output_tokens: number;
  cached_input_tokens: number;
  cache_write_tokens: number;
  reasoning_tokens: number;
  latency_ms: number;
  /** USD, exact decimal string; stored in ai_api_calls.estimated_cost. */
  cost_usd: string;
  priced: boolean;
  cached: boolean;
  streamed: boolean;
  saved_cost_usd: string;
  status: CallStatus;
  error_code: string | null;
  attempts: number;
  fallback_from: string | null;
  attempts_detail: AttemptOutcome[];
  cache_entry: { key: string; response: unknown; ttl_seconds: number } | null;
}
