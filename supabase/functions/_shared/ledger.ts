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
  remaining: z.number().nullable(),
  reset_at: z.string(),
}).nullable();

export const priceOverride = z.object({
  provider: z.string(),
  model: z.string(),
  input_per_mtok: z.coerce.string(),
  output_per_mtok: z.coerce.string(),
  cached_input_per_mtok: z.coerce.string().nullable(),
  cache_write_per_mtok: z.coerce.string().nullable(),
});

export const admissionSchema = z.object({
  allowed: z.boolean(),
  request_id: z.string(),
  layer: z.string().nullable(),
  code: z.string().nullable(),
  message: z.string().nullable(),
  retry_after_seconds: z.number().nullable(),
  tier: z.string().nullable(),
  windows: z.array(window).default([]),
  tokens: z.object({ daily: tokenQuota, monthly: tokenQuota }).nullable().default(null),
  spend: z.object({ month_to_date_usd: z.coerce.number(), cap_usd: z.coerce.number().nullable() }).nullable()
    .default(null),
  warnings: z.array(z.string()).default([]),
  feature: z.object({
    name: z.string(),
    priority: z.string(),
    max_tokens: z.number().nullable(),
    cache_ttl_seconds: z.number().nullable(),
  }).nullable().default(null),
  restricted: z.object({ model: z.string().nullable(), max_tokens: z.number().nullable(), reason: z.string() })
    .nullable().default(null),
  route: z.array(routeStep).default([]),
  prices: z.array(priceOverride).default([]),
  cached: z.object({ response: z.unknown(), saved_cost_usd: z.coerce.number() }).nullable().default(null),
  reserved: z.object({ estimated_tokens: z.number(), estimated_cost_usd: z.coerce.number() }).nullable()
    .default(null),
});
export type Admission = z.infer<typeof admissionSchema>;

/** `tollgate.caller_overview`: a caller's limits, what remains, spend, and usable models. */
export const overviewSchema = z.object({
  tier: z.string(),
  windows: z.array(window),
  tokens: z.object({ daily: tokenQuota, monthly: tokenQuota }),
  spend: z.object({ month_to_date_usd: z.coerce.number(), cap_usd: z.coerce.number().nullable() }),
  warnings: z.array(z.string()),
  models: z.array(z.string()),
});
export type Overview = z.infer<typeof overviewSchema>;

export type CallStatus = "success" | "error" | "timeout" | "client_closed";

export interface AttemptOutcome {
  provider: string;
  model: string;
  ok: boolean;
  status: number | null;
}

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
  estimated_cost: string;
  priced: boolean;
  cached: boolean;
  saved_cost: string;
  status: CallStatus;
  error_code: string | null;
  attempts: number;
  fallback_from: string | null;
  attempts_detail: AttemptOutcome[];
  cache_entry: { key: string; response: unknown; ttl_seconds: number } | null;
}
