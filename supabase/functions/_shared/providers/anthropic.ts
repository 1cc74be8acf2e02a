/**
 * Anthropic Messages: endpoint, auth, the answers' shapes, usage in JSON answers and in
 * streams, and the stream's terminal error event.
 */
import { z } from "zod";
import { errorBody, type GatewayError } from "../errors.ts";
import { isType, typedOrUnknown } from "../schemas.ts";
import type { SseEvent } from "../sse.ts";
import type { Usage } from "../usage.ts";
import { parseUpstreamJson, readUpstream, type StreamTracker, type UpstreamStreamError } from "./upstream.ts";

export const defaultBaseUrl = "https://api.anthropic.com";
export const messagesPath = "/v1/messages";
export const apiVersion = "2023-06-01";

export function buildHeaders(apiKey: string): Record<string, string> {
  return {
    "x-api-key": apiKey,
    "anthropic-version": apiVersion,
    "content-type": "application/json",
  };
}

// ─── Answers ────────────────────────────────────────────────────────────────────────────────

const count = z.number().int().nonnegative();

export const usageSchema = z.looseObject({
  input_tokens: count,
  output_tokens: count,
  cache_creation_input_tokens: count.nullish(),
  cache_read_input_tokens: count.nullish(),
});

export const contentBlockSchema = typedOrUnknown([
  z.looseObject({ type: z.literal("text"), text: z.string() }),
  z.looseObject({
    type: z.literal("tool_use"),
    id: z.string(),
    name: z.string(),
    input: z.record(z.string(), z.unknown()),
  }),
  z.looseObject({ type: z.literal("thinking"), thinking: z.string() }),
]);

export const messageSchema = z.looseObject({
  id: z.string(),
  type: z.literal("message"),
  role: z.literal("assistant"),
  model: z.string(),
  content: z.array(contentBlockSchema),
  stop_reason: z.string().nullish(),
  stop_sequence: z.string().nullish(),
  usage: usageSchema,
});

const deltaSchema = typedOrUnknown([
  z.looseObject({ type: z.literal("text_delta"), text: z.string() }),
  z.looseObject({ type: z.literal("input_json_delta"), partial_json: z.string() }),
  z.looseObject({ type: z.literal("thinking_delta"), thinking: z.string() }),
]);

// In `message_delta` every usage field is cumulative, and any of them may be absent.
const deltaUsageSchema = z.looseObject({
  input_tokens: count.nullish(),
  output_tokens: count.nullish(),
  cache_creation_input_tokens: count.nullish(),
  cache_read_input_tokens: count.nullish(),
});

export const streamEventSchema = typedOrUnknown([
  z.looseObject({
    type: z.literal("message_start"),
    message: messageSchema.extend({ content: z.array(contentBlockSchema).optional() }),
  }),
  z.looseObject({
    type: z.literal("content_block_start"),
    index: z.number().int(),
    content_block: contentBlockSchema,
  }),
  z.looseObject({
    type: z.literal("content_block_delta"),
    index: z.number().int(),
    delta: deltaSchema,
  }),
  z.looseObject({ type: z.literal("content_block_stop"), index: z.number().int() }),
  z.looseObject({
    type: z.literal("message_delta"),
    delta: z.looseObject({
      stop_reason: z.string().nullish(),
      stop_sequence: z.string().nullish(),
    }),
    usage: deltaUsageSchema.nullish(),
  }),
  z.looseObject({ type: z.literal("message_stop") }),
  z.looseObject({ type: z.literal("ping") }),
  z.looseObject({
    type: z.literal("error"),
    error: z.looseObject({ type: z.string(), message: z.string() }),
  }),
]);

export type AnthropicUsage = z.infer<typeof usageSchema>;
export type AnthropicMessage = z.infer<typeof messageSchema>;
export type AnthropicContentBlock = z.infer<typeof contentBlockSchema>;
export type AnthropicStreamEvent = z.infer<typeof streamEventSchema>;

// ─── Usage ──────────────────────────────────────────────────────────────────────────────────

/**
 * Anthropic's `input_tokens` leaves out the tokens read from and written to the cache; ours
 * counts every input token, so both are added back, and also kept apart for pricing.
 */
export function toUsage(usage: AnthropicUsage): Usage {
  const cacheRead = usage.cache_read_input_tokens ?? 0;
  const cacheWrite = usage.cache_creation_input_tokens ?? 0;
  return {
    inputTokens: usage.input_tokens + cacheRead + cacheWrite,
    outputTokens: usage.output_tokens,
    cachedInputTokens: cacheRead,
    cacheWriteTokens: cacheWrite,
    // Anthropic bills thinking as output and does not count it apart.
    reasoningTokens: 0,
  };
}

/** Usage of a JSON answer (Anthropic always reports it). */
export function usageFromResponse(json: unknown): Usage {
  return toUsage(readUpstream(messageSchema, json).usage);
}

// ─── Streams ────────────────────────────────────────────────────────────────────────────────

const cumulativeUsageFields = [
  "input_tokens",
  "output_tokens",
  "cache_creation_input_tokens",
  "cache_read_input_tokens",
] as const;

/** The usage of `message_start` revised by a `message_delta`, whose fields are totals so far. */
export function reviseUsage(
  usage: AnthropicUsage,
  delta: z.infer<typeof deltaUsageSchema> | null | undefined,
): AnthropicUsage {
  const revised = { ...usage };
  for (const field of cumulativeUsageFields) {
    const value = delta?.[field];
    if (value != null) revised[field] = value;
  }
  return revised;
}

export function readEvent(event: SseEvent): AnthropicStreamEvent {
  return readUpstream(streamEventSchema, parseUpstreamJson(event.data));
}

class AnthropicStreamTracker implements StreamTracker {
  reported = { input: false, output: false };
  finished = false;
  error: UpstreamStreamError | undefined;
  text = "";
  // Kept in Anthropic's terms until read, since `message_delta` revises them.
  #usage: AnthropicUsage = { input_tokens: 0, output_tokens: 0 };

  get usage(): Usage {
    return toUsage(this.#usage);
  }

  observe(event: SseEvent): void {
    const data = readEvent(event);
    if (isType(data, "message_start")) {
      this.#usage = { ...data.message.usage };
      this.reported = { input: true, output: false };
    } else if (isType(data, "content_block_start")) {
      const block = data.content_block;
      if (isType(block, "text")) this.text += block.text;
      else if (isType(block, "tool_use")) this.text += block.name;
    } else if (isType(data, "content_block_delta")) {
      const delta = data.delta;
      if (isType(delta, "text_delta")) this.text += delta.text;
      else if (isType(delta, "input_json_delta")) this.text += delta.partial_json;
      else if (isType(delta, "thinking_delta")) this.text += delta.thinking;
    } else if (isType(data, "message_delta")) {
      this.#usage = reviseUsage(this.#usage, data.usage);
      if (data.usage?.output_tokens != null) this.reported = { ...this.reported, output: true };
    } else if (isType(data, "message_stop")) {
      this.finished = this.error === undefined;
    } else if (isType(data, "error")) {
      this.error = { type: data.error.type, message: data.error.message };
    }
  }
}

export function createStreamTracker(): StreamTracker {
  return new AnthropicStreamTracker();
}

/**
 * The event that ends a client's stream after a failure, as Anthropic itself ends one, so
 * that the client cannot take a truncated answer for a complete one.
 */
export function streamErrorEvent(error: GatewayError): SseEvent {
  return { event: "error", data: JSON.stringify(errorBody(error, "anthropic")) };
}
