/**
 * Local provider: an offline stand-in for the OpenAI Chat Completions and
 * Anthropic Messages APIs, used by dev mode, tests and benchmarks so the whole
 * gateway path runs without network access or real keys.
 *
 * Endpoints: `POST /v1/chat/completions` (OpenAI), `POST /v1/messages`
 * (Anthropic), `GET /v1/models` (OpenAI-style list). Responses, SSE streams,
 * errors and rate-limit headers follow each provider's wire format, so the
 * official SDKs parse them unchanged.
 *
 * ## Token accounting (deterministic, so tests can predict usage)
 *
 * - Prompt text: the text of `system` (Anthropic) and of every message, in
 *   order. A content value counts when it is a string, or through its parts
 *   of `type: "text"`; other parts (images, tool calls) count nothing. The
 *   non-empty pieces are joined with "\n".
 * - Input tokens = `countTokens(promptText)` = max(1, ceil(length / 4)), length
 *   in UTF-16 code units.
 * - The reply is a list of words and each word is one output token. By default
 *   it is "This is a local reply to: <first 8 words of the last user message>".
 *   `max_tokens` (or OpenAI `max_completion_tokens`) caps the word count and
 *   then the finish reason is `length` / `max_tokens`.
 * - `cached=N` / `cache_write=W` describe a cached prompt prefix on top of the
 *   visible text: Anthropic reports input_tokens = P, cache_read = N,
 *   cache_creation = W; OpenAI reports prompt_tokens = P + N + W with
 *   cached_tokens = N. Both thus agree on P uncached tokens.
 * - `reasoning=R` adds R hidden tokens to the output count (OpenAI also
 *   reports them as reasoning_tokens; Anthropic has no separate field).
 *
 * ## Directives
 *
 * Behaviour is controlled from the prompt itself, in the text of the last user
 * message: `[[mock key=value key=value ...]]`. Living in the prompt, they pass
 * through the gateway (and OpenAI<->Anthropic translation) untouched and each
 * request carries its own, so concurrent tests do not interfere. See
 * `parseDirectives` for the keys.
 *
 * ## Rate limits
 *
 * Limits are advertised, never enforced (use `status=429` for that). Remaining
 * counts come from a fixed one-minute window that starts with the first request
 * after the previous window expired; every completion request takes one
 * request and its input + output tokens from it. Every answer carries the
 * headers, errors (429 etc.) included, as the real providers' do: OpenAI's
 * `x-ratelimit-*` with Go-style durations as resets, Anthropic's
 * `anthropic-ratelimit-*` (requests, tokens, input-tokens, output-tokens) with
 * RFC 3339 times, at whole seconds as Anthropic sends them (rounded up, so
 * never before the refill).
 *
 * `ratelimit_remaining_requests=N` / `ratelimit_remaining_tokens=N` advertise
 * N remaining instead (tokens: all three token groups on Anthropic);
 * `ratelimit_reset_ms=N` advertises that both refill in N ms, so a test can
 * make headroom come back quickly (on Anthropic exact to the millisecond, as
 * RFC 3339 allows, so a short reset is not stretched to a whole second).
 *
 * Keys that are not accepted get a 401 in the provider's own error format
 * (OpenAI `invalid_api_key`, Anthropic `authentication_error`).
 *
 * Deno note: `hang` watches `request.signal` to notice a client giving up.
 * Under Deno 2's legacy abort behaviour that makes Deno print a one-time
 * "request.signal aborts on successful responses" notice when such a request
 * ends; it is harmless, and `--unstable-no-legacy-abort` (or
 * `"unstable": ["no-legacy-abort"]` in deno.json) removes it.
 *
 * CLI: `deno run -A tests/stack/provider.ts --port 54399 [--hostname H]
 * [--key K ...]` prints `provider listening on <url>` and serves until SIGINT
 * or SIGTERM.
 *
 * @module
 */

import { parseArgs } from "node:util";

export const DEFAULT_API_KEY = "local-provider-key";
// A large account: the gateway acts on these headers, and load tests must not run into them by accident.
const DEFAULT_RATE_LIMIT = { requests: 1_000_000, tokens: 1_000_000_000 };
const WINDOW_MS = 60_000;
const DEFAULT_REPLY_PROMPT_WORDS = 8;
const SYSTEM_FINGERPRINT = "fp_10ca1f00d0";
const LOREM = (
  "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod " +
  "tempor incididunt ut labore et dolore magna aliqua"
).split(" ");

export interface ProviderOptions {
  /** 0 (default) picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  hostname?: string;
  /** Accepted API keys; default `[DEFAULT_API_KEY]`. */
  apiKeys?: string[];
  /** Limits advertised in the rate-limit headers. */
  rateLimit?: { requests: number; tokens: number };
}

export interface RecordedRequest {
  /** Arrival time, epoch milliseconds. */
  at: number;
  method: string;
  /** URL path without the query string. */
  path: string;
  /** Lower-cased header names. */
  headers: Record<string, string>;
  /** Parsed JSON; the raw text when it is not JSON; null when empty. */
  body: unknown;
}

export interface ProviderServer {
  /** e.g. http://127.0.0.1:PORT; OpenAI base URL is `${url}/v1`. */
  url: string;
  /** Every request received, in arrival order. */
  requests: RecordedRequest[];
  /** Requests currently being answered, open streams included. */
  inFlight(): number;
  /** Replaces the accepted API keys. */
  setKeys(keys: string[]): void;
  /** Clears `requests`, the `times` counters and the rate-limit window. */
  reset(): void;
  /** Stops the server, cutting hung and streaming responses. */
  close(): Promise<void>;
}

/** Deterministic token estimate: max(1, ceil(text.length / 4)). */
export function countTokens(text: string): number {
  return Math.max(1, Math.ceil(text.length / 4));
}

// ---------------------------------------------------------------------------
// Directives

export interface Directives {
  /** `reply=a_b_c`: reply text, underscores read as spaces. */
  reply?: string;
  /** `words=N`: a reply of N filler words. */
  words?: number;
  /** `status=429`: answer with this error status (400-599). */
  status?: number;
  /** `retry_after=S`: `retry-after` header on the error. */
  retryAfter?: number;
  /** `retry_after_ms=MS`: `retry-after-ms` header on the error. */
  retryAfterMs?: number;
  /** `times=N`: faults apply only to the first N requests with this key. */
  times?: number;
  /** `key=K`: counter name for `times`. */
  key?: string;
  /** `latency_ms=N`: delay before the response headers. */
  latencyMs?: number;
  /** `chunk_delay_ms=N`: delay between stream chunks. */
  chunkDelayMs?: number;
  /** `drop_after=N`: cut the connection after N content chunks. */
  dropAfter?: number;
  /** `hang=1`: never answer. */
  hang?: boolean;
  /** `cached=N`: cached (cache-read) input tokens. */
  cached?: number;
  /** `cache_write=N`: cache-creation input tokens (Anthropic). */
  cacheWrite?: number;
  /** `reasoning=N`: hidden reasoning tokens inside the output count. */
  reasoning?: number;
  /** `ratelimit_remaining_requests=N`: advertised remaining requests. */
  ratelimitRemainingRequests?: number;
  /** `ratelimit_remaining_tokens=N`: advertised remaining tokens. */
  ratelimitRemainingTokens?: number;
  /** `ratelimit_reset_ms=N`: advertised time until requests and tokens refill. */
  ratelimitResetMs?: number;
}

const DIRECTIVE_RE = /\[\[mock(?:\s+([^\]]*))?\]\]/g;
const INT_RE = /^\d+$/;
const NUMBER_RE = /^\d+(?:\.\d+)?$/;

const INT_KEYS = {
  words: "words",
  times: "times",
  latency_ms: "latencyMs",
  chunk_delay_ms: "chunkDelayMs",
  drop_after: "dropAfter",
  cached: "cached",
  cache_write: "cacheWrite",
  reasoning: "reasoning",
  ratelimit_remaining_requests: "ratelimitRemainingRequests",
  ratelimit_remaining_tokens: "ratelimitRemainingTokens",
  ratelimit_reset_ms: "ratelimitResetMs",
  retry_after_ms: "retryAfterMs",
} as const;

/**
 * Reads every `[[mock k=v ...]]` block in `text`; later values win. Unknown
 * keys and malformed values are ignored, so a typo degrades to a normal reply
 * rather than an exception inside the server.
 *
 * Faults (`status`, `retry_after`, `retry_after_ms`, `latency_ms`,
 * `chunk_delay_ms`, `drop_after`, `hang`) obey `times=N`: with it they apply to
 * the first N requests carrying the same `key` (the whole directive when
 * there is no key), counted in server memory until `reset()`; later requests
 * are answered normally. The other keys shape every answer.
 */
export function parseDirectives(text: string): Directives {
  const out: Directives = {};
  for (const match of text.matchAll(DIRECTIVE_RE)) {
    for (const token of (match[1] ?? "").split(/\s+/)) {
      const eq = token.indexOf("=");
      if (eq <= 0) continue;
      const name = token.slice(0, eq);
      const value = token.slice(eq + 1);
      if (name in INT_KEYS) {
        if (INT_RE.test(value)) {
          out[INT_KEYS[name as keyof typeof INT_KEYS]] = Number(value);
        }
      } else if (name === "reply") {
        out.reply = value.replaceAll("_", " ");
      } else if (name === "key") {
        if (value) out.key = value;
      } else if (name === "status") {
        const status = Number(value);
        if (INT_RE.test(value) && status >= 400 && status <= 599) {
          out.status = status;
        }
      } else if (name === "retry_after") {
        if (NUMBER_RE.test(value)) out.retryAfter = Number(value);
      } else if (name === "hang") {
        if (value === "1" || value === "true") out.hang = true;
        if (value === "0" || value === "false") out.hang = false;
      }
    }
  }
  return out;
}

/** `text` with the directive blocks removed. */
export function stripDirectives(text: string): string {
  return text.replace(DIRECTIVE_RE, " ").replace(/\s+/g, " ").trim();
}

/** Directive keys that are faults, i.e. switched off once `times` runs out. */
const FAULT_KEYS = [
  "status",
  "retryAfter",
  "retryAfterMs",
  "latencyMs",
  "chunkDelayMs",
  "dropAfter",
  "hang",
] as const;

function withoutFaults(d: Directives): Directives {
  const out = { ...d };
  for (const key of FAULT_KEYS) delete out[key];
  return out;
}

// ---------------------------------------------------------------------------
// Request content

/** The text of a message content value (string or typed parts). */
export function contentText(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .filter((part) => part?.type === "text" && typeof part.text === "string")
    .map((part) => part.text as string)
    .join("\n");
}

type Message = { role?: unknown; content?: unknown };

/** The prompt text token counting is based on (see module docs). */
export function promptText(messages: Message[], system?: unknown): string {
  return [contentText(system), ...messages.map((m) => contentText(m.content))]
    .filter((text) => text !== "")
    .join("\n");
}

function lastUserText(messages: Message[]): string {
  const last = messages.findLast((m) => m.role === "user");
  return last ? contentText(last.content) : "";
}

// ---------------------------------------------------------------------------
// Reply and usage (provider neutral)

export interface Reply {
  words: string[];
  /** True when max_tokens cut the reply. */
  truncated: boolean;
}

export function buildReply(
  directives: Directives,
  lastUser: string,
  maxTokens?: number,
): Reply {
  let words: string[];
  if (directives.reply !== undefined) {
    words = directives.reply.split(/\s+/).filter(Boolean);
  } else if (directives.words !== undefined) {
    words = Array.from(
      { length: directives.words },
      (_, i) => LOREM[i % LOREM.length],
    );
  } else {
    const prompt = stripDirectives(lastUser).split(" ").filter(Boolean);
    words = prompt.length === 0 ? "This is a local reply.".split(" ") : [
      ..."This is a local reply to:".split(" "),
      ...prompt.slice(0, DEFAULT_REPLY_PROMPT_WORDS),
    ];
  }
  if (maxTokens !== undefined && words.length > maxTokens) {
    return { words: words.slice(0, maxTokens), truncated: true };
  }
  return { words, truncated: false };
}

export interface Usage {
  /** Uncached prompt tokens: countTokens(promptText). */
  input: number;
  cacheRead: number;
  cacheWrite: number;
  /** Visible words plus reasoning. */
  output: number;
  reasoning: number;
}

export function buildUsage(
  prompt: string,
  reply: Reply,
  directives: Directives,
): Usage {
  const reasoning = directives.reasoning ?? 0;
  return {
    input: countTokens(prompt),
    cacheRead: directives.cached ?? 0,
    cacheWrite: directives.cacheWrite ?? 0,
    output: reply.words.length + reasoning,
    reasoning,
  };
}

/** Stream pieces: the first word bare, later words with a leading space. */
function pieces(words: string[]): string[] {
  return words.map((word, i) => (i === 0 ? word : ` ${word}`));
}

export interface Meta {
  id: string;
  model: string;
  /** Epoch seconds. */
  created: number;
}

/** A stream as separately written frames, plus where content starts. */
export interface Frames {
  frames: string[];
  /** Index of the first content frame (for `drop_after`). */
  firstContent: number;
  contentCount: number;
}

// ---------------------------------------------------------------------------
// OpenAI wire format

export function openaiUsage(usage: Usage) {
  const prompt = usage.input + usage.cacheRead + usage.cacheWrite;
  return {
    prompt_tokens: prompt,
    completion_tokens: usage.output,
    total_tokens: prompt + usage.output,
    prompt_tokens_details: { cached_tokens: usage.cacheRead, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: usage.reasoning,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  };
}

export function openaiCompletion(meta: Meta, reply: Reply, usage: Usage) {
  return {
    id: meta.id,
    object: "chat.completion",
    created: meta.created,
    model: meta.model,
    choices: [{
      index: 0,
      message: {
        role: "assistant",
        content: reply.words.join(" "),
        refusal: null,
        annotations: [],
      },
      logprobs: null,
      finish_reason: reply.truncated ? "length" : "stop",
    }],
    usage: openaiUsage(usage),
    service_tier: "default",
    system_fingerprint: SYSTEM_FINGERPRINT,
  };
}

export function openaiStreamFrames(
  meta: Meta,
  reply: Reply,
  usage: Usage,
  includeUsage: boolean,
): Frames {
  const chunk = (
    delta: Record<string, unknown>,
    finish: string | null,
  ) => ({
    id: meta.id,
    object: "chat.completion.chunk",
    created: meta.created,
    model: meta.model,
    service_tier: "default",
    system_fingerprint: SYSTEM_FINGERPRINT,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    // OpenAI adds `usage: null` to every chunk only when usage was requested.
    ...(includeUsage ? { usage: null } : {}),
  });
  const events: unknown[] = [
    chunk({ role: "assistant", content: "", refusal: null }, null),
    ...pieces(reply.words).map((content) => chunk({ content }, null)),
    chunk({}, reply.truncated ? "length" : "stop"),
  ];
  if (includeUsage) {
    events.push({
      ...chunk({}, null),
      choices: [],
      usage: openaiUsage(usage),
    });
  }
  return {
    frames: [
      ...events.map((event) => `data: ${JSON.stringify(event)}\n\n`),
      "data: [DONE]\n\n",
    ],
    firstContent: 1,
    contentCount: reply.words.length,
  };
}

const OPENAI_ERRORS: Record<number, { type: string; message: string }> = {
  400: { type: "invalid_request_error", message: "Invalid request." },
  401: {
    type: "invalid_request_error",
    message: "Incorrect API key provided.",
  },
  403: { type: "invalid_request_error", message: "Permission denied." },
  404: { type: "invalid_request_error", message: "Not found." },
  429: {
    type: "requests",
    message: "Rate limit reached for requests. Please try again later.",
  },
  500: {
    type: "server_error",
    message: "The server had an error while processing your request.",
  },
  503: {
    type: "server_error",
    message: "The server is overloaded or not ready yet.",
  },
};

export function openaiError(
  status: number,
  message?: string,
  code?: string | null,
) {
  const known = OPENAI_ERRORS[status] ??
    (status >= 500 ? OPENAI_ERRORS[500] : OPENAI_ERRORS[400]);
  const defaultCode = status === 401 ? "invalid_api_key" : status === 429 ? "rate_limit_exceeded" : null;
  return {
    error: {
      message: message ?? known.message,
      type: known.type,
      param: null,
      code: code === undefined ? defaultCode : code,
    },
  };
}

// ---------------------------------------------------------------------------
// Anthropic wire format

export function anthropicUsage(usage: Usage) {
  return {
    input_tokens: usage.input,
    cache_creation_input_tokens: usage.cacheWrite,
    cache_read_input_tokens: usage.cacheRead,
    output_tokens: usage.output,
  };
}

export function anthropicMessage(meta: Meta, reply: Reply, usage: Usage) {
  return {
    id: meta.id,
    type: "message",
    role: "assistant",
    model: meta.model,
    content: [{ type: "text", text: reply.words.join(" ") }],
    stop_reason: reply.truncated ? "max_tokens" : "end_turn",
    stop_sequence: null,
    usage: anthropicUsage(usage),
  };
}

export function anthropicStreamFrames(
  meta: Meta,
  reply: Reply,
  usage: Usage,
): Frames {
  const events: Record<string, unknown>[] = [
    {
      type: "message_start",
      message: {
        ...anthropicMessage(meta, reply, usage),
        content: [],
        stop_reason: null,
        // Anthropic reports a provisional output count at the start.
        usage: { ...anthropicUsage(usage), output_tokens: 1 },
      },
    },
    {
      type: "content_block_start",
      index: 0,
      content_block: { type: "text", text: "" },
    },
    { type: "ping" },
    ...pieces(reply.words).map((text) => ({
      type: "content_block_delta",
      index: 0,
      delta: { type: "text_delta", text },
    })),
    { type: "content_block_stop", index: 0 },
    {
      type: "message_delta",
      delta: {
        stop_reason: reply.truncated ? "max_tokens" : "end_turn",
        stop_sequence: null,
      },
      usage: { output_tokens: usage.output },
    },
    { type: "message_stop" },
  ];
  return {
    frames: events.map((event) => `event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`),
    firstContent: 3,
    contentCount: reply.words.length,
  };
}

const ANTHROPIC_ERRORS: Record<number, { type: string; message: string }> = {
  400: { type: "invalid_request_error", message: "Invalid request." },
  401: { type: "authentication_error", message: "invalid x-api-key" },
  403: { type: "permission_error", message: "Permission denied." },
  404: { type: "not_found_error", message: "Not found." },
  413: { type: "request_too_large", message: "Request exceeds the limit." },
  429: {
    type: "rate_limit_error",
    message: "Number of requests has exceeded your rate limit.",
  },
  500: { type: "api_error", message: "Internal server error" },
  529: { type: "overloaded_error", message: "Overloaded" },
};

export function anthropicError(
  status: number,
  message?: string,
  requestId?: string,
) {
  const known = ANTHROPIC_ERRORS[status] ??
    (status >= 500 ? ANTHROPIC_ERRORS[500] : ANTHROPIC_ERRORS[400]);
  return {
    type: "error",
    error: { type: known.type, message: message ?? known.message },
    ...(requestId ? { request_id: requestId } : {}),
  };
}

// ---------------------------------------------------------------------------
// Rate-limit headers

interface RateSnapshot {
  limits: { requests: number; tokens: number };
  requestsRemaining: number;
  inputRemaining: number;
  outputRemaining: number;
  tokensRemaining: number;
  /** Milliseconds until the window refills. */
  resetMs: number;
  now: number;
}

/** Fixed one-minute window of consumed requests and tokens. */
class RateWindow {
  #start = -Infinity;
  #requests = 0;
  #input = 0;
  #output = 0;

  constructor(readonly limits: { requests: number; tokens: number }) {}

  #roll(now: number): void {
    if (now - this.#start < WINDOW_MS) return;
    this.#start = now;
    this.#requests = this.#input = this.#output = 0;
  }

  take(requests: number, input: number, output: number): void {
    this.#roll(Date.now());
    this.#requests += requests;
    this.#input += input;
    this.#output += output;
  }

  reset(): void {
    this.#start = -Infinity;
  }

  snapshot(): RateSnapshot {
    const now = Date.now();
    this.#roll(now);
    const { requests, tokens } = this.limits;
    const left = (limit: number, used: number) => Math.max(0, limit - used);
    const busy = this.#requests + this.#input + this.#output > 0;
    return {
      limits: this.limits,
      requestsRemaining: left(requests, this.#requests),
      inputRemaining: left(tokens, this.#input),
      outputRemaining: left(tokens, this.#output),
      tokensRemaining: left(tokens, this.#input + this.#output),
      resetMs: busy ? this.#start + WINDOW_MS - now : 0,
      now,
    };
  }
}

/** OpenAI's Go-style durations: `20ms`, `1s`, `8.64s`, `6m0s`, `1h0m0s`. */
export function formatResetDuration(ms: number): string {
  if (ms <= 0) return "0s";
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const hours = Math.floor(ms / 3_600_000);
  const minutes = Math.floor((ms % 3_600_000) / 60_000);
  const seconds = Number(((ms % 60_000) / 1000).toFixed(3));
  if (hours > 0) return `${hours}h${minutes}m${seconds}s`;
  if (minutes > 0) return `${minutes}m${seconds}s`;
  return `${seconds}s`;
}

interface RateOverrides {
  requests?: number;
  tokens?: number;
  resetMs?: number;
}

function openaiRateHeaders(
  s: RateSnapshot,
  o: RateOverrides,
): Record<string, string> {
  const reset = formatResetDuration(o.resetMs ?? s.resetMs);
  return {
    "x-ratelimit-limit-requests": String(s.limits.requests),
    "x-ratelimit-limit-tokens": String(s.limits.tokens),
    "x-ratelimit-remaining-requests": String(
      o.requests ?? s.requestsRemaining,
    ),
    "x-ratelimit-remaining-tokens": String(o.tokens ?? s.tokensRemaining),
    "x-ratelimit-reset-requests": reset,
    "x-ratelimit-reset-tokens": reset,
  };
}

function anthropicRateHeaders(
  s: RateSnapshot,
  o: RateOverrides,
): Record<string, string> {
  // RFC 3339 at whole seconds, rounded up so it never precedes the refill; an
  // overridden reset exact to the millisecond.
  const resetAt = o.resetMs === undefined
    ? new Date(Math.ceil((s.now + s.resetMs) / 1000) * 1000).toISOString().replace(".000Z", "Z")
    : new Date(s.now + o.resetMs).toISOString();
  const group = (name: string, limit: number, remaining: number) => ({
    [`anthropic-ratelimit-${name}-limit`]: String(limit),
    [`anthropic-ratelimit-${name}-remaining`]: String(remaining),
    [`anthropic-ratelimit-${name}-reset`]: resetAt,
  });
  const { requests, tokens } = s.limits;
  return {
    ...group("requests", requests, o.requests ?? s.requestsRemaining),
    ...group("tokens", tokens, o.tokens ?? s.tokensRemaining),
    ...group("input-tokens", tokens, o.tokens ?? s.inputRemaining),
    ...group("output-tokens", tokens, o.tokens ?? s.outputRemaining),
  };
}

// ---------------------------------------------------------------------------
// Server

type Provider = "openai" | "anthropic";

const ENDPOINTS: Record<Provider, string> = {
  openai: "/v1/chat/completions",
  anthropic: "/v1/messages",
};

/** Marks deliberate connection cuts so `onError` stays quiet about them. */
class DroppedConnection extends Error {
  constructor() {
    super("connection dropped on purpose");
  }
}

function randomHex(length: number): string {
  let hex = "";
  while (hex.length < length) hex += crypto.randomUUID().replaceAll("-", "");
  return hex.slice(0, length);
}

/**
 * Resolves true after `ms`, or false as soon as any signal aborts. Listeners
 * are removed on settle so the long-lived closing signal does not collect one
 * per request.
 */
function sleep(ms: number, ...signals: AbortSignal[]): Promise<boolean> {
  if (signals.some((s) => s.aborted)) return Promise.resolve(false);
  return new Promise((resolve) => {
    const settle = (value: boolean) => {
      clearTimeout(timer);
      for (const s of signals) s.removeEventListener("abort", onAbort);
      resolve(value);
    };
    const onAbort = () => settle(false);
    const timer = ms === Infinity ? undefined : setTimeout(settle, ms, true);
    for (const s of signals) s.addEventListener("abort", onAbort);
  });
}

/** Per-request state shared by the response helpers. */
interface Exchange {
  provider: Provider;
  requestId: string;
  overrides: RateOverrides;
  /**
   * The request's signal, read only where a wait must end when the client
   * leaves (hang): under Deno's legacy abort behaviour, a request whose
   * signal was read prints a one-time notice when it ends.
   */
  clientGone: () => AbortSignal;
  /** Set once a streaming body owns the in-flight slot. */
  streaming: boolean;
  release: () => void;
}

/**
 * Starts a provider. Listening errors (e.g. a taken port) reject the promise
 * rather than throwing synchronously.
 */
export function startProvider(
  options: ProviderOptions = {},
): Promise<ProviderServer> {
  return new Promise((resolve) => resolve(createProvider(options)));
}

function createProvider(options: ProviderOptions): ProviderServer {
  const hostname = options.hostname ?? "127.0.0.1";
  let keys = new Set(options.apiKeys ?? [DEFAULT_API_KEY]);
  const rate = new RateWindow(options.rateLimit ?? DEFAULT_RATE_LIMIT);
  const requests: RecordedRequest[] = [];
  const timesSeen = new Map<string, number>();
  const serverStop = new AbortController();
  // Separate from the server's own signal: this one also reaches response
  // bodies that Deno's graceful shutdown would otherwise wait for.
  const closing = new AbortController();
  let inFlight = 0;

  const headersFor = (ex: Exchange, extra: Record<string, string> = {}) => {
    const snapshot = rate.snapshot();
    return ex.provider === "openai"
      ? {
        "x-request-id": ex.requestId,
        ...openaiRateHeaders(snapshot, ex.overrides),
        ...extra,
      }
      : {
        "request-id": ex.requestId,
        ...anthropicRateHeaders(snapshot, ex.overrides),
        ...extra,
      };
  };

  const json = (
    ex: Exchange,
    status: number,
    body: unknown,
    extra: Record<string, string> = {},
  ) =>
    new Response(JSON.stringify(body), {
      status,
      headers: headersFor(ex, {
        "content-type": "application/json",
        ...extra,
      }),
    });

  const error = (
    ex: Exchange,
    status: number,
    message?: string,
    extra: Record<string, string> = {},
  ) =>
    json(
      ex,
      status,
      ex.provider === "openai" ? openaiError(status, message) : anthropicError(status, message, ex.requestId),
      extra,
    );

  /**
   * Writes `chunks` one per pull so each reaches the socket separately, and
   * ends by erroring the stream when cut: Deno then aborts the chunked body
   * instead of terminating it, which clients see as a read error.
   */
  const chunked = (
    ex: Exchange,
    contentType: string,
    chunks: string[],
    opts: { delayMs?: number; cutAfter?: number },
  ) => {
    const encoder = new TextEncoder();
    const stopDelay = new AbortController();
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    let index = 0;
    let finished = false;
    const finish = () => {
      if (finished) return false;
      finished = true;
      closing.signal.removeEventListener("abort", cut);
      stopDelay.abort();
      ex.release();
      return true;
    };
    const cut = () => {
      if (finish()) controller.error(new DroppedConnection());
    };
    ex.streaming = true;
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        controller = c;
        if (closing.signal.aborted) cut();
        else closing.signal.addEventListener("abort", cut);
      },
      async pull(c) {
        if (index > 0 && opts.delayMs) {
          if (!(await sleep(opts.delayMs, stopDelay.signal))) return;
        }
        if (finished) return;
        if (index === opts.cutAfter) return cut();
        c.enqueue(encoder.encode(chunks[index++]));
        // With a cut pending (cutAfter may equal chunks.length), the next
        // pull errors the stream instead.
        if (index === chunks.length && opts.cutAfter === undefined && finish()) {
          c.close();
        }
      },
      cancel() {
        finish();
      },
    });
    return new Response(body, {
      headers: headersFor(ex, {
        "content-type": contentType,
        "cache-control": "no-cache",
      }),
    });
  };

  /**
   * Headers, then the connection is cut before any body byte. (When the
   * server is already closing, Deno drops the connection without headers.)
   * Errors at construction so it needs no consumer to release anything.
   */
  const abort = (ex: Exchange) =>
    new Response(
      new ReadableStream({
        start(c) {
          c.error(new DroppedConnection());
        },
      }),
      { headers: headersFor(ex, { "content-type": "application/json" }) },
    );

  /** Applies `times`: faults hold for the first N requests of a key. */
  const effective = (d: Directives): Directives => {
    if (d.times === undefined) return d;
    const key = d.key ?? JSON.stringify(d);
    const seen = timesSeen.get(key) ?? 0;
    timesSeen.set(key, seen + 1);
    return seen < d.times ? d : withoutFaults(d);
  };

  const complete = async (
    ex: Exchange,
    headers: Headers,
    raw: string,
  ): Promise<Response> => {
    const openai = ex.provider === "openai";
    if (!openai && !headers.get("anthropic-version")) {
      return error(ex, 400, "anthropic-version: header is required");
    }
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(raw);
    } catch {
      return error(
        ex,
        400,
        openai
          ? "We could not parse the JSON body of your request."
          : "There was an issue with your request body, it must be valid JSON.",
      );
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      return error(ex, 400, "The request body must be a JSON object.");
    }
    const problem = openai ? validateOpenai(body) : validateAnthropic(body);
    if (problem) return error(ex, 400, problem);

    const messages = body.messages as Message[];
    const lastUser = lastUserText(messages);
    const d = effective(parseDirectives(lastUser));
    ex.overrides = {
      requests: d.ratelimitRemainingRequests,
      tokens: d.ratelimitRemainingTokens,
      resetMs: d.ratelimitResetMs,
    };

    // Bounded, so a client leaving early only keeps this slot a little longer.
    if (d.latencyMs && !(await sleep(d.latencyMs, closing.signal))) {
      return abort(ex);
    }
    if (d.hang) {
      await sleep(Infinity, ex.clientGone(), closing.signal);
      return abort(ex);
    }
    if (d.status) {
      const extra: Record<string, string> = {};
      if (d.retryAfter !== undefined) {
        extra["retry-after"] = String(d.retryAfter);
      }
      if (d.retryAfterMs !== undefined) {
        extra["retry-after-ms"] = String(d.retryAfterMs);
      }
      return error(ex, d.status, undefined, extra);
    }

    const maxTokens = (openai ? body.max_completion_tokens ?? body.max_tokens : body.max_tokens) as number | undefined;
    const reply = buildReply(d, lastUser, maxTokens);
    const usage = buildUsage(promptText(messages, body.system), reply, d);
    rate.take(
      0,
      usage.input + usage.cacheRead + usage.cacheWrite,
      usage.output,
    );
    const meta: Meta = {
      id: openai ? `chatcmpl-${randomHex(29)}` : `msg_${randomHex(24)}`,
      model: body.model as string,
      created: Math.floor(Date.now() / 1000),
    };

    if (body.stream === true) {
      const includeUsage = (body.stream_options as { include_usage?: unknown })
        ?.include_usage === true;
      const stream = openai
        ? openaiStreamFrames(meta, reply, usage, includeUsage)
        : anthropicStreamFrames(meta, reply, usage);
      const cutAfter = d.dropAfter === undefined ? undefined : stream.firstContent +
        Math.min(d.dropAfter, stream.contentCount);
      return chunked(ex, "text/event-stream; charset=utf-8", stream.frames, {
        delayMs: d.chunkDelayMs,
        cutAfter,
      });
    }
    const result = openai ? openaiCompletion(meta, reply, usage) : anthropicMessage(meta, reply, usage);
    if (d.dropAfter !== undefined) {
      // Headers and the first half of the document, then the cut.
      const text = JSON.stringify(result);
      const half = text.slice(0, Math.floor(text.length / 2));
      return chunked(ex, "application/json", [half], { cutAfter: 1 });
    }
    return json(ex, 200, result);
  };

  const handle = (
    request: Request,
    ex: Exchange,
    raw: string,
  ): Promise<Response> | Response => {
    const { pathname } = new URL(request.url);
    const { method, headers } = request;
    if (!authorized(headers, ex.provider, keys)) {
      return error(ex, 401, unauthorizedMessage(headers, ex.provider));
    }
    if (method === "GET" && pathname === "/v1/models") {
      return json(ex, 200, modelList());
    }
    if (method === "POST" && pathname === ENDPOINTS[ex.provider]) {
      rate.take(1, 0, 0);
      return complete(ex, headers, raw);
    }
    return error(ex, 404, `Invalid URL (${method} ${pathname})`);
  };

  /** Records the request, then answers it while holding an in-flight slot. */
  const answerRequest = async (request: Request): Promise<Response> => {
    const { pathname } = new URL(request.url);
    const record: RecordedRequest = {
      at: Date.now(),
      method: request.method,
      path: pathname,
      headers: Object.fromEntries(request.headers),
      body: undefined,
    };
    requests.push(record);
    const provider: Provider = pathname === ENDPOINTS.anthropic ? "anthropic" : "openai";
    inFlight++;
    let released = false;
    const ex: Exchange = {
      provider,
      requestId: `req_${randomHex(provider === "openai" ? 32 : 24)}`,
      overrides: {},
      clientGone: () => request.signal,
      streaming: false,
      release: () => {
        if (released) return;
        released = true;
        inFlight--;
      },
    };
    try {
      const raw = await request.text();
      record.body = parseBody(raw);
      return await handle(request, ex, raw);
    } finally {
      if (!ex.streaming) ex.release();
    }
  };

  const server = Deno.serve({
    port: options.port ?? 0,
    hostname,
    signal: serverStop.signal,
    onListen() {},
    onError(err) {
      if (!(err instanceof DroppedConnection)) console.error(err);
      return Response.json(openaiError(500), { status: 500 });
    },
  }, answerRequest);

  const { port } = server.addr;
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  return {
    url: `http://${host}:${port}`,
    requests,
    inFlight: () => inFlight,
    setKeys(next) {
      keys = new Set(next);
    },
    reset() {
      requests.length = 0;
      timesSeen.clear();
      rate.reset();
    },
    async close() {
      // Stop accepting first: handlers released afterwards find the server
      // closed, so clients of hung requests see their connection fail rather
      // than receive a response. Then release waits and cut open streams,
      // which graceful shutdown would otherwise wait for.
      serverStop.abort();
      closing.abort();
      await server.finished;
    },
  };
}

function parseBody(raw: string): unknown {
  if (raw === "") return null;
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

function presentedKey(headers: Headers, provider: Provider): string | null {
  const bearer = headers.get("authorization")?.match(/^Bearer\s+(.+)$/i)?.[1]
    ?.trim() ?? null;
  // Anthropic's own header wins; Bearer is accepted there too.
  return provider === "anthropic" ? headers.get("x-api-key") ?? bearer : bearer;
}

function authorized(
  headers: Headers,
  provider: Provider,
  keys: Set<string>,
): boolean {
  const key = presentedKey(headers, provider);
  return key !== null && keys.has(key);
}

const OPENAI_NO_KEY = "You didn't provide an API key. You need to provide your API key in an Authorization header " +
  "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).";

function unauthorizedMessage(headers: Headers, provider: Provider): string {
  const given = presentedKey(headers, provider) !== null;
  if (provider === "anthropic") return given ? "invalid x-api-key" : "x-api-key header is required";
  return given ? "Incorrect API key provided." : OPENAI_NO_KEY;
}

const isPositiveInt = (value: unknown) => typeof value === "number" && Number.isInteger(value) && value > 0;

function validateMessages(body: Record<string, unknown>): string | null {
  if (typeof body.model !== "string" || body.model === "") {
    return "you must provide a model parameter";
  }
  if (!Array.isArray(body.messages) || body.messages.length === 0) {
    return "messages: must be a non-empty array";
  }
  if (body.messages.some((m) => typeof m !== "object" || m === null)) {
    return "messages: each message must be an object";
  }
  return null;
}

function validateOpenai(body: Record<string, unknown>): string | null {
  for (const field of ["max_tokens", "max_completion_tokens"]) {
    if (body[field] != null && !isPositiveInt(body[field])) {
      return `${field}: must be a positive integer`;
    }
  }
  return validateMessages(body);
}

function validateAnthropic(body: Record<string, unknown>): string | null {
  if (body.max_tokens === undefined) return "max_tokens: Field required";
  if (!isPositiveInt(body.max_tokens)) {
    return "max_tokens: must be a positive integer";
  }
  return validateMessages(body);
}

const MODELS = [
  ["gpt-4o-mini", "openai"],
  ["gpt-4o", "openai"],
  ["gpt-4.1-mini", "openai"],
  ["claude-haiku-4-5", "anthropic"],
  ["claude-sonnet-4-5", "anthropic"],
] as const;

function modelList() {
  return {
    object: "list",
    data: MODELS.map(([id, owner]) => ({
      id,
      object: "model",
      created: 1_700_000_000,
      owned_by: owner,
    })),
  };
}

// ---------------------------------------------------------------------------
// CLI

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      port: { type: "string", default: "0" },
      hostname: { type: "string" },
      key: { type: "string", multiple: true },
    },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`invalid --port: ${values.port}`);
    Deno.exit(2);
  }
  const server = await startProvider({
    port,
    hostname: values.hostname,
    apiKeys: values.key,
  });
  console.log(`provider listening on ${server.url}`);
  const stop = () => server.close().then(() => Deno.exit(0));
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}
