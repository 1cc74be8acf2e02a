/**
 * OpenAI Chat Completions, and any provider that speaks it: endpoint, auth, the answers'
 * shapes, usage in JSON answers and in streams, and the stream's terminal error event.
 */
import { z } from "zod";
import { errorBody, type GatewayError } from "../errors.ts";
import type { OpenAIChatRequest } from "../schemas.ts";
import type { SseEvent } from "../sse.ts";
import { emptyUsage, type Usage } from "../usage.ts";
import { parseUpstreamJson, readUpstream, type StreamTracker, type UpstreamStreamError } from "./upstream.ts";

export const defaultBaseUrl = "https://api.openai.com/v1";
export const chatCompletionsPath = "/chat/completions";

/** The data of the event that ends a complete stream. */
export const DONE = "[DONE]";

export function buildHeaders(apiKey: string): Record<string, string> {
  return { authorization: `Bearer ${apiKey}`, "content-type": "application/json" };
}

// ─── Answers ────────────────────────────────────────────────────────────────────────────────
// Only what the gateway reads is required; compatible providers differ in the rest.

const count = z.number().int().nonnegative();

export const usageSchema = z.looseObject({
  prompt_tokens: count,
  completion_tokens: count,
  total_tokens: count.optional(),
  prompt_tokens_details: z.looseObject({ cached_tokens: count.nullish() }).nullish(),
  completion_tokens_details: z.looseObject({ reasoning_tokens: count.nullish() }).nullish(),
});

const toolCallSchema = z.looseObject({
  id: z.string(),
  type: z.literal("function"),
  function: z.looseObject({ name: z.string(), arguments: z.string() }),
});

export const completionSchema = z.looseObject({
  id: z.string().optional(),
  object: z.string().optional(),
  created: z.number().optional(),
  model: z.string().optional(),
  choices: z.array(z.looseObject({
    index: z.number().int().optional(),
    message: z.looseObject({
      role: z.string().optional(),
      content: z.string().nullish(),
      refusal: z.string().nullish(),
      tool_calls: z.array(toolCallSchema).nullish(),
    }),
    finish_reason: z.string().nullish(),
  })),
  usage: usageSchema.nullish(),
});

const errorSchema = z.looseObject({
  message: z.string().optional(),
  type: z.string().nullish(),
  code: z.union([z.string(), z.number()]).nullish(),
});

export const chunkSchema = z.looseObject({
  id: z.string().optional(),
  object: z.string().optional(),
  created: z.number().optional(),
  model: z.string().optional(),
  choices: z.array(z.looseObject({
    index: z.number().int().optional(),
    delta: z.looseObject({
      role: z.string().nullish(),
      content: z.string().nullish(),
      refusal: z.string().nullish(),
      tool_calls: z.array(z.looseObject({
        index: z.number().int(),
        id: z.string().nullish(),
        type: z.string().nullish(),
        function: z.looseObject({
          name: z.string().nullish(),
          arguments: z.string().nullish(),
        }).nullish(),
      })).nullish(),
    }).optional(),
    finish_reason: z.string().nullish(),
  })).optional(),
  usage: usageSchema.nullish(),
  error: errorSchema.optional(),
});

export type OpenAIUsage = z.infer<typeof usageSchema>;
export type ChatCompletion = z.infer<typeof completionSchema>;
export type ChatCompletionChunk = z.infer<typeof chunkSchema>;

// ─── Usage ──────────────────────────────────────────────────────────────────────────────────

/** OpenAI counts cached tokens inside `prompt_tokens` and reasoning inside completion. */
export function toUsage(usage: OpenAIUsage): Usage {
  return {
    inputTokens: usage.prompt_tokens,
    outputTokens: usage.completion_tokens,
    cachedInputTokens: usage.prompt_tokens_details?.cached_tokens ?? 0,
    // OpenAI does not report (or charge) cache writes.
    cacheWriteTokens: 0,
    reasoningTokens: usage.completion_tokens_details?.reasoning_tokens ?? 0,
  };
}

/** Usage of a JSON answer; undefined when the provider did not report it. */
export function usageFromResponse(json: unknown): Usage | undefined {
  const { usage } = readUpstream(completionSchema, json);
  return usage ? toUsage(usage) : undefined;
}

// ─── Streams ────────────────────────────────────────────────────────────────────────────────

/** One chunk of a stream, read; `undefined` for the `[DONE]` marker. */
export function readChunk(event: SseEvent): ChatCompletionChunk | undefined {
  if (event.data === DONE) return undefined;
  return readUpstream(chunkSchema, parseUpstreamJson(event.data));
}

/**
 * The upstream body, made to report usage at the end of a stream (without it a stream cannot
 * be priced), and whether the client asked for that usage chunk itself.
 */
export function withStreamUsage(
  body: OpenAIChatRequest,
): { body: OpenAIChatRequest; clientAskedUsage: boolean } {
  if (body.stream !== true) return { body, clientAskedUsage: false };
  const clientAskedUsage = body.stream_options?.include_usage === true;
  return {
    body: { ...body, stream_options: { ...body.stream_options, include_usage: true } },
    clientAskedUsage,
  };
}

/**
 * Whether an upstream event goes on to the client: the usage-only chunk (`choices: []`)
 * that `withStreamUsage` added does not, unless the client asked for it.
 */
export function forwardToClient(event: SseEvent, clientAskedUsage: boolean): boolean {
  // Only a chunk with an empty `choices` can be the usage chunk: the others (the stream's bulk,
  // already parsed once by the tracker) are not parsed again.
  if (clientAskedUsage || !emptyChoices.test(event.data)) return true;
  const chunk = readChunk(event);
  return !(chunk?.usage && chunk.choices?.length === 0);
}

const emptyChoices = /"choices"\s*:\s*\[\s*\]/;

class OpenAIStreamTracker implements StreamTracker {
  usage: Usage = emptyUsage();
  reported = { input: false, output: false };
  finished = false;
  error: UpstreamStreamError | undefined;
  text = "";
  #sawFinishReason = false;

  observe(event: SseEvent): void {
    const chunk = readChunk(event);
    if (chunk === undefined) {
      this.finished = this.#sawFinishReason && this.error === undefined;
      return;
    }
    if (chunk.error) {
      this.error = {
        type: chunk.error.type ?? String(chunk.error.code ?? "error"),
        message: chunk.error.message ?? "",
      };
      return;
    }
    for (const choice of chunk.choices ?? []) {
      const delta = choice.delta;
      this.text += (delta?.content ?? "") + (delta?.refusal ?? "");
      for (const call of delta?.tool_calls ?? []) {
        this.text += (call.function?.name ?? "") + (call.function?.arguments ?? "");
      }
      if (choice.finish_reason) this.#sawFinishReason = true;
    }
    if (chunk.usage) {
      this.usage = toUsage(chunk.usage);
      this.reported = { input: true, output: true };
    }
  }
}

export function createStreamTracker(): StreamTracker {
  return new OpenAIStreamTracker();
}

/**
 * The event that ends a client's stream after a failure: an `error` chunk and no `[DONE]`,
 * so that the client cannot take a truncated answer for a complete one.
 */
export function streamErrorEvent(error: GatewayError): SseEvent {
  return { data: JSON.stringify(errorBody(error, "openai")) };
}
