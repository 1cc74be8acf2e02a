/**
 * What both directions of translation share: why an answer stopped, its usage, and tool-call
 * arguments as an object.
 */
import type { AnthropicUsage } from "../anthropic.ts";
import type { OpenAIUsage } from "../openai.ts";

/** Anthropic `stop_reason` → OpenAI `finish_reason`. */
const finishReasons = new Map<string, string>([
  ["end_turn", "stop"],
  ["stop_sequence", "stop"],
  ["pause_turn", "stop"],
  ["max_tokens", "length"],
  ["model_context_window_exceeded", "length"],
  ["tool_use", "tool_calls"],
  ["refusal", "content_filter"],
]);

/** OpenAI `finish_reason` → Anthropic `stop_reason`. */
const stopReasons = new Map<string, string>([
  ["stop", "end_turn"],
  ["length", "max_tokens"],
  ["tool_calls", "tool_use"],
  ["function_call", "tool_use"],
  ["content_filter", "refusal"],
]);

export const toFinishReason = (stopReason: string | null | undefined): string =>
  finishReasons.get(stopReason ?? "") ?? "stop";

export const toStopReason = (finishReason: string | null | undefined): string =>
  stopReasons.get(finishReason ?? "") ?? "end_turn";

/**
 * OpenAI's `prompt_tokens` counts every input token, Anthropic's `input_tokens` only those
 * neither read from nor written to the cache. OpenAI has no field for cache writes: they are
 * part of `prompt_tokens` and nothing more.
 */
export function openaiUsage(usage: AnthropicUsage): OpenAIUsage {
  const cacheRead = usage.cache_read_input_tokens ?? 0;
  const promptTokens = usage.input_tokens + cacheRead + (usage.cache_creation_input_tokens ?? 0);
  return {
    prompt_tokens: promptTokens,
    completion_tokens: usage.output_tokens,
    total_tokens: promptTokens + usage.output_tokens,
    prompt_tokens_details: { cached_tokens: cacheRead },
  };
}

export function anthropicUsage(usage: OpenAIUsage): AnthropicUsage {
  const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
  return {
    input_tokens: usage.prompt_tokens - cached,
    output_tokens: usage.completion_tokens,
    cache_read_input_tokens: cached,
    cache_creation_input_tokens: 0,
  };
}

/**
 * Tool-call arguments as the object Anthropic's `tool_use.input` is, or undefined when they
 * are not a JSON object. No arguments at all mean an empty object.
 */
export function argumentsObject(json: string): Record<string, unknown> | undefined {
  if (json.trim() === "") return {};
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return undefined;
  }
  return typeof value === "object" && value !== null && !Array.isArray(value)
    ? value as Record<string, unknown>
    : undefined;
}
