/**
 * One metered AI call, start to finish: verify the caller, validate the body, one admission
 * call, the provider (retries, fallback), the response (streamed or not), and one settlement
 * after it. Every admitted call is settled exactly once, whatever happens.
 */
import { createHash } from "node:crypto";
import type { Caller } from "./auth.ts";
import { type Answer, type CallPlan, clientGone, dispatch, DispatchFailure, type Timeouts } from "./dispatch.ts";
import { mayHaveCommitted } from "./db.ts";
import { errorResponse, GatewayError, type WireFormat } from "./errors.ts";
import type { Context } from "./gateway.ts";
import { limitHeaders, readJson } from "./http.ts";
import type { Admission, AttemptOutcome, CallStatus, Settlement } from "./ledger.ts";
import { estimateCostMicros, estimateInputTokens, priceCall, type PriceOverride } from "./pricing.ts";
import * as anthropic from "./providers/anthropic.ts";
import * as openai from "./providers/openai.ts";
import { parseUpstreamJson, readUpstream } from "./providers/upstream.ts";
import { anthropicToOpenAIResponse, openaiToAnthropicResponse } from "./providers/translate/responses.ts";
import {
  type AnthropicMessagesRequest,
  anthropicMessagesRequestSchema,
  type OpenAIChatRequest,
  openaiChatRequestSchema,
  parseRequest,
} from "./schemas.ts";
import { inBackground, sleep } from "./runtime.ts";
import { abandonInBackground, settleInBackground } from "./settlement.ts";
import { clientStream, type StreamEnd } from "./streaming.ts";
import { emptyUsage, type Usage } from "./usage.ts";

const schemas = { openai: openaiChatRequestSchema, anthropic: anthropicMessagesRequestSchema };
const featureName = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

/** A validated call, before admission. */
interface Incoming {
  caller: Caller;
  feature: string;
  plan: CallPlan;
  model: string;
  inputTokens: number;
  maxOutputTokens: number | null;
  cacheKey: string | null;
  /** `x-tollgate-cache-ttl`: this request opts in to the response cache for that many seconds. */
  cacheTtlSeconds: number | null;
}

async function readCall(request: Request, context: Context, format: WireFormat): Promise<Incoming> {
  const caller = await context.verify(request);
  const body = parseRequest(schemas[format], await readJson(request, context.config.maxBodyBytes), format);
  const feature = request.headers.get("x-tollgate-feature") ?? "default";
  if (!featureName.test(feature)) {
    throw new GatewayError({
      status: 400,
      code: "invalid_feature",
      message: "The x-tollgate-feature header must be a lowercase name (letters, digits, `_`, `.`, `-`).",
      param: "x-tollgate-feature",
    });
  }
  const stream = body.stream === true;
  const cacheTtlHeader = request.headers.get("x-tollgate-cache-ttl");
  const cacheTtlSeconds = cacheTtlHeader === null ? null : Number(cacheTtlHeader);
  if (cacheTtlSeconds !== null && !(Number.isInteger(cacheTtlSeconds) && cacheTtlSeconds >= 0)) {
    throw new GatewayError({
      status: 400,
      code: "invalid_cache_ttl",
      message: "The x-tollgate-cache-ttl header must be a whole number of seconds.",
      param: "x-tollgate-cache-ttl",
    });
  }
  const maxOutputTokens = format === "anthropic"
    ? (body as AnthropicMessagesRequest).max_tokens
    : (body as OpenAIChatRequest).max_completion_tokens ?? (body as OpenAIChatRequest).max_tokens ?? null;
  return {
    caller,
    feature,
    // Providers see who the end user is (for their abuse monitoring) as a stable pseudonym of
    // the verified caller, never as an id the client wrote into the body.
    plan: { format, body, stream, endUser: sha256Hex(`tollgate-user:${caller.userId}`).slice(0, 32) },
    model: body.model,
    inputTokens: estimateInputTokens(
      JSON.stringify(format === "anthropic" ? [body.system, body.messages] : body.messages),
    ),
    maxOutputTokens,
    cacheKey: stream ? null : cacheKeyOf(request, format, feature, body),
    cacheTtlSeconds,
  };
}

function admissionRequest(call: Incoming, requestId: string, dryRun: boolean) {
  const estimate = estimateCostMicros(
    defaultProvider(call.model),
    call.model,
    call.inputTokens,
    call.maxOutputTokens ?? 1024,
  );
  return {
    request_id: requestId,
    user_id: call.caller.userId,
    is_anonymous: call.caller.isAnonymous,
    feature: call.feature,
    model: call.model,
    estimated_input_tokens: call.inputTokens,
    max_output_tokens: call.maxOutputTokens,
    estimated_cost_usd: usd(estimate.highMicros),
    dry_run: dryRun,
    cache_key: call.cacheKey,
    cache_ttl_seconds: call.cacheTtlSeconds,
  };
}

/**
 * With TOLLGATE_DB_UNAVAILABLE=fail_open, a call the database could not admit goes out anyway:
 * to the model's default provider, without limits, and recorded only in the log.
 */
function unmeteredAdmission(call: Incoming, requestId: string): Admission {
  return {
    allowed: true,
    request_id: requestId,
    layer: null,
    code: null,
    message: null,
    retry_after_seconds: null,
    tier: null,
    windows: [],
    tokens: null,
    spend: null,
    warnings: [{ kind: "unmetered", percent: null, message: "The database is unavailable: this call is not metered." }],
    feature: null,
    model: call.model,
    restricted: null,
    route: [{ provider: defaultProvider(call.model), model: call.model, state: "closed", probe: false, key: null }],
    prices: [],
    cached: null,
    reserved: null,
    queue: null,
    shed: null,
  };
}

// The database's default route (tollgate.admit) for a model without a row in tollgate.routes.
const defaultProvider = (model: string) => model.startsWith("claude") ? "anthropic" : "openai";

/**
 * Admission, waiting in the provider queue for as long as it answers `queued`: the same request
 * id asks again after each poll interval, so the ticket keeps its place. A caller that leaves
 * takes its ticket out of the queue at once. The wait counts against the request's deadline.
 * An admission whose answer was lost is abandoned: it may have reserved all the same.
 */
async function admitInTurn(context: Context, call: Incoming, signal: AbortSignal): Promise<Admission> {
  const request = admissionRequest(call, context.requestId, false);
  const leaveQueue = () =>
    inBackground(
      context.ledger.leaveQueue(context.requestId).catch((error) =>
        console.warn(`leaving the provider queue failed: ${error instanceof Error ? error.message : error}`)
      ),
    );
  for (;;) {
    const admission = await context.ledger.admit(request).catch((error) => {
      if (error instanceof GatewayError && error.code === "database_unavailable" && mayHaveCommitted(error.cause)) {
        abandonInBackground(context.ledger, context.requestId, call.caller.userId);
      }
      throw error;
    });
    if (admission.code !== "queued" || !admission.queue) return admission;
    const waitedMs = performance.now() - context.startedAt;
    if (waitedMs + admission.queue.poll_after_ms > context.config.deadlineMs / 2) {
      // Half the deadline stays for the call itself: past that, give up our place honestly.
      leaveQueue();
      return { ...admission, code: "queue_timeout", message: "No provider capacity freed up in time. Try again." };
    }
    await sleep(admission.queue.poll_after_ms, signal);
    if (signal.aborted) {
      leaveQueue();
      throw clientGone();
    }
  }
}

function rejection(admission: Admission): GatewayError {
  const status = admission.code === "unknown_feature" || admission.code === "invalid_request"
    ? 400
    : admission.code === "model_not_allowed"
    ? 403
    : 429;
  return new GatewayError({
    status,
    code: admission.code ?? "rejected",
    message: admission.message ?? "The call was not admitted.",
    headers: limitHeaders(admission),
  });
}

// ─── POST /v1/chat/completions, POST /v1/messages ──────────────────────────────────────────

export async function handleCompletion(request: Request, context: Context, format: WireFormat): Promise<Response> {
  const call = await readCall(request, context, format);
  let admission: Admission;
  let metered = true;
  try {
    admission = await admitInTurn(context, call, request.signal);
  } catch (error) {
    if (!(context.config.failOpen && error instanceof GatewayError && error.code === "database_unavailable")) {
      throw error;
    }
    admission = unmeteredAdmission(call, context.requestId);
    metered = false;
  }
  if (!admission.allowed) throw rejection(admission);
  context.registerKeys(admission.route);

  // From here on the call is admitted: it must be settled exactly once, whatever fails.
  const record = settlementBase(call, context, admission);
  let settled = false;
  const settle = () => {
    if (settled) return;
    settled = true;
    if (metered) settleInBackground(context.ledger, record);
    else {console.warn(
        `unmetered call (database unavailable, TOLLGATE_DB_UNAVAILABLE=fail_open): ${JSON.stringify(record)}`,
      );}
  };
  try {
    return await serveAdmitted(request, context, call, admission, record, settle);
  } catch (error) {
    if (!settled) {
      // A client that left first never sees the failure: it is recorded as gone.
      record.status = request.signal.aborted ? "client_closed" : "error";
      record.error_code = error instanceof GatewayError ? error.code : "internal_error";
      record.latency_ms = elapsed(context);
      settle();
    }
    throw error;
  }
}

async function serveAdmitted(
  request: Request,
  context: Context,
  call: Incoming,
  admission: Admission,
  record: Settlement,
  settle: () => void,
): Promise<Response> {
  const format = call.plan.format;
  const headers: Record<string, string> = { ...limitHeaders(admission) };
  if (admission.cached) {
    record.cached = true;
    record.status = "success";
    record.saved_cost_usd = admission.cached.cost_usd;
    record.latency_ms = elapsed(context);
    settle();
    return json(admission.cached.response, { ...headers, "x-tollgate-cache": "hit" }, context);
  }

  applyCaps(call.plan, admission);
  // Time spent in the provider queue comes out of the deadline.
  const timeouts: Timeouts = {
    attemptMs: context.config.attemptTimeoutMs,
    deadlineMs: context.config.deadlineMs - (performance.now() - context.startedAt),
  };
  let answer: Answer;
  try {
    answer = await dispatch(call.plan, admission.route, context.config.env, timeouts, request.signal);
  } catch (error) {
    if (!(error instanceof DispatchFailure)) throw error;
    record.attempts_detail = error.outcomes;
    record.attempts = error.outcomes.length;
    const stale = await staleAnswer(context, call, error);
    if (stale) {
      // Graceful degradation: every provider failed, the feature allows an earlier answer.
      Object.assign(record, { cached: true, status: "success", saved_cost_usd: String(stale.cost_usd) });
      record.error_code = error.error.code;
      record.latency_ms = elapsed(context);
      settle();
      return json(stale.response, { ...headers, "x-tollgate-cache": "stale" }, context);
    }
    record.status = error.error.code === "client_closed" || request.signal.aborted
      ? "client_closed"
      : error.timedOut
      ? "timeout"
      : "error";
    record.error_code = error.error.code;
    record.latency_ms = elapsed(context);
    settle();
    if (error.error.code === "client_closed") return new Response(null, { status: 499 });
    return errorResponse(error.error, format, headers);
  }

  Object.assign(record, routeFacts(answer, admission));
  headers["x-tollgate-provider"] = answer.endpoint.name;
  headers["x-tollgate-model"] = answer.step.model;
  if (call.cacheKey) headers["x-tollgate-cache"] = "miss";
  headers["x-tollgate-overhead-ms"] = (performance.now() - context.startedAt - answer.providerMs).toFixed(1);

  if (call.plan.stream) {
    const body = clientStream({
      upstream: answer.body!,
      upstreamFormat: answer.endpoint.format,
      clientFormat: format,
      clientAskedUsage: answer.clientAskedUsage,
      abort: answer.abort,
      idleTimeoutMs: context.config.streamIdleTimeoutMs,
      maxDurationMs: context.config.streamMaxMs,
      onEnd: (end) => {
        recordStream(context, call, answer, admission, record, end);
        settle();
      },
    });
    return new Response(body, {
      headers: {
        ...headers,
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
      },
    });
  }

  const body = await readAnswer(context, call, answer, admission, record);
  settle();
  return json(body, headers, context);
}

/** A cached answer to fall back on when no provider could answer (never for a client that left). */
async function staleAnswer(context: Context, call: Incoming, failure: DispatchFailure) {
  if (!call.cacheKey || failure.error.code === "client_closed") return null;
  try {
    return await context.ledger.staleAnswer(call.cacheKey, call.feature);
  } catch (error) {
    // The provider error stands; the cache was only a fallback.
    console.warn(`stale cache lookup failed: ${error instanceof Error ? error.message : error}`);
    return null;
  }
}

/** A JSON answer, in the client's format, with its usage and cost written into `record`. */
async function readAnswer(
  context: Context,
  call: Incoming,
  answer: Answer,
  admission: Admission,
  record: Settlement,
): Promise<unknown> {
  const timer = setTimeout(() => answer.abort.abort(), context.config.attemptTimeoutMs);
  let upstream: unknown;
  try {
    upstream = parseUpstreamJson(await answer.response.text());
  } catch (error) {
    // The provider started answering: its input was consumed even if the answer was lost.
    record.input_tokens = call.inputTokens;
    if (error instanceof GatewayError) throw error;
    throw new GatewayError({
      status: 502,
      code: "upstream_stream_cut",
      message: "The provider's answer was cut off before it was complete.",
    });
  } finally {
    clearTimeout(timer);
  }

  const upstreamFormat = answer.endpoint.format;
  const reported = upstreamFormat === "anthropic"
    ? anthropic.usageFromResponse(upstream)
    : openai.usageFromResponse(upstream);
  const body = upstreamFormat === call.plan.format
    ? upstream
    : upstreamFormat === "anthropic"
    ? anthropicToOpenAIResponse(readUpstream(anthropic.messageSchema, upstream))
    : openaiToAnthropicResponse(readUpstream(openai.completionSchema, upstream));

  const usage = reported ?? estimatedUsage(call, JSON.stringify(body));
  const cost = price(answer, admission, usage);
  Object.assign(record, usageColumns(usage), {
    status: "success",
    latency_ms: elapsed(context),
    cost_usd: usd(cost.costMicros),
    priced: cost.priced,
    error_code: reported ? null : "usage_not_reported",
  });
  const ttl = call.cacheTtlSeconds ?? admission.feature?.cache_ttl_seconds ?? 0;
  if (call.cacheKey && ttl > 0) record.cache_entry = { key: call.cacheKey, response: body, ttl_seconds: ttl };
  return body;
}

function recordStream(
  context: Context,
  call: Incoming,
  answer: Answer,
  admission: Admission,
  record: Settlement,
  end: StreamEnd,
): void {
  const { tracker } = end;
  const usage = { ...tracker.usage };
  // What the provider did not report is estimated: never zero for tokens that were produced.
  if (!tracker.reported.input) usage.inputTokens = call.inputTokens;
  if (!tracker.reported.output) usage.outputTokens = estimateInputTokens(tracker.text);
  const cost = price(answer, admission, usage);
  const statuses: Record<StreamEnd["outcome"], CallStatus> = {
    complete: "success",
    upstream_failed: "error",
    timeout: "timeout",
    client_closed: "client_closed",
  };
  Object.assign(record, usageColumns(usage), {
    status: statuses[end.outcome],
    error_code: end.error?.code ?? (tracker.error ? "upstream_error" : null),
    latency_ms: elapsed(context),
    cost_usd: usd(cost.costMicros),
    priced: cost.priced,
  });
}

// ─── POST /v1/estimate ──────────────────────────────────────────────────────────────────────

/** Would this call be admitted, and what would it cost? Reserves nothing. */
export async function handleEstimate(request: Request, context: Context): Promise<Response> {
  const format: WireFormat = new URL(request.url).searchParams.get("format") === "anthropic" ? "anthropic" : "openai";
  const call = await readCall(request, context, format);
  const admission = await context.ledger.admit(admissionRequest(call, context.requestId, true));
  const step = admission.route[0];
  const model = step?.model ?? call.model;
  const maxOutput = Math.min(
    ...[call.maxOutputTokens, admission.feature?.max_tokens, admission.restricted?.max_tokens, 4096]
      .filter((value): value is number => typeof value === "number"),
  );
  const estimate = estimateCostMicros(
    step?.provider ?? "openai",
    model,
    call.inputTokens,
    maxOutput,
    overrides(admission),
  );
  return json(
    {
      allowed: admission.allowed,
      layer: admission.layer,
      code: admission.code,
      message: admission.message,
      retry_after_seconds: admission.retry_after_seconds,
      model,
      provider: step?.provider ?? null,
      restricted: admission.restricted,
      estimated_input_tokens: call.inputTokens,
      max_output_tokens: maxOutput,
      estimated_cost_usd: estimate.priced ? { low: usd(estimate.lowMicros), high: usd(estimate.highMicros) } : null,
      priced: estimate.priced,
      windows: admission.windows,
      tokens: admission.tokens,
      spend: admission.spend,
    },
    limitHeaders({ ...admission, allowed: true }),
    context,
  );
}

// ─── Helpers ────────────────────────────────────────────────────────────────────────────────

/** Restricted mode and the feature's ceiling lower max tokens; they never raise it. */
function applyCaps(plan: CallPlan, admission: Admission): void {
  const caps = [admission.feature?.max_tokens, admission.restricted?.max_tokens]
    .filter((value): value is number => typeof value === "number" && value > 0);
  if (!caps.length) return;
  const cap = Math.min(...caps);
  if (plan.format === "anthropic") {
    const body = plan.body as AnthropicMessagesRequest;
    plan.body = { ...body, max_tokens: Math.min(body.max_tokens, cap) };
    return;
  }
  const body = plan.body as OpenAIChatRequest;
  plan.body = body.max_tokens != null && body.max_completion_tokens == null
    ? { ...body, max_tokens: Math.min(body.max_tokens, cap) }
    : { ...body, max_completion_tokens: Math.min(body.max_completion_tokens ?? cap, cap) };
}

function settlementBase(call: Incoming, context: Context, admission: Admission): Settlement {
  const first = admission.route[0];
  return {
    request_id: context.requestId,
    user_id: call.caller.userId,
    feature: call.feature,
    endpoint: call.plan.format === "openai" ? "chat.completions" : "messages",
    provider: first?.provider ?? "none",
    model: first?.model ?? call.model,
    ...usageColumns(emptyUsage()),
    latency_ms: 0,
    cost_usd: "0",
    priced: true,
    cached: false,
    streamed: call.plan.stream,
    saved_cost_usd: "0",
    status: "error",
    error_code: null,
    attempts: 0,
    fallback_from: null,
    attempts_detail: [],
    cache_entry: null,
  };
}

function routeFacts(answer: Answer, admission: Admission): Partial<Settlement> {
  const first = admission.route[0];
  const fellBack = first && (first.provider !== answer.step.provider || first.model !== answer.step.model);
  return {
    provider: answer.step.provider,
    model: answer.step.model,
    attempts: answer.outcomes.length,
    attempts_detail: answer.outcomes satisfies AttemptOutcome[],
    fallback_from: fellBack ? `${first.provider}/${first.model}` : null,
  };
}

function usageColumns(usage: Usage) {
  return {
    input_tokens: usage.inputTokens,
    output_tokens: usage.outputTokens,
    cached_input_tokens: usage.cachedInputTokens,
    cache_write_tokens: usage.cacheWriteTokens,
    reasoning_tokens: usage.reasoningTokens,
  };
}

function estimatedUsage(call: Incoming, text: string): Usage {
  return { ...emptyUsage(), inputTokens: call.inputTokens, outputTokens: estimateInputTokens(text) };
}

function overrides(admission: Admission): PriceOverride[] {
  return admission.prices.map((row) => ({
    provider: row.provider,
    model: row.model,
    inputPerMtok: row.input_per_mtok,
    outputPerMtok: row.output_per_mtok,
    cachedInputPerMtok: row.cached_input_per_mtok,
    cacheWritePerMtok: row.cache_write_per_mtok,
  }));
}

function price(answer: Answer, admission: Admission, usage: Usage) {
  return priceCall(answer.step.provider, answer.step.model, usage, overrides(admission));
}

/** Exact-match cache key: the same caller-visible request for the same feature and format. */
function cacheKeyOf(
  request: Request,
  format: WireFormat,
  feature: string,
  body: OpenAIChatRequest | AnthropicMessagesRequest,
): string | null {
  if (request.headers.get("x-tollgate-cache") === "skip") return null;
  return sha256Hex(JSON.stringify([format, feature, body]));
}

// node:crypto hashes synchronously, several times faster than crypto.subtle for small inputs.
const sha256Hex = (text: string) => createHash("sha256").update(text).digest("hex");

/** Micro-dollars as an exact decimal USD string (never through a float division). */
export function usd(micros: number): string {
  const sign = micros < 0 ? "-" : "";
  const abs = Math.abs(Math.round(micros));
  return `${sign}${Math.floor(abs / 1e6)}.${String(abs % 1e6).padStart(6, "0")}`;
}

const elapsed = (context: Context) => Math.round(performance.now() - context.startedAt);

function json(body: unknown, headers: Record<string, string>, context: Context): Response {
  return new Response(JSON.stringify(body), {
    headers: {
      "x-tollgate-overhead-ms": (performance.now() - context.startedAt).toFixed(1),
      ...headers,
      "content-type": "application/json",
    },
  });
}
