/**
 * Streams from one wire format to the other, event by event, as async generators over
 * decoded SSE events (see sse.ts).
 *
 * A translated stream ends the way a complete answer ends only when the upstream one did.
 * An upstream error event becomes the client format's error event; an upstream stream that
 * just stops makes the translation stop too, without an end marker, and the caller, whose
 * tracker saw no finish, ends the client's stream with `streamErrorEvent`.
 */
import { isType } from "../../schemas.ts";
import type { SseEvent } from "../../sse.ts";
import * as anthropic from "../anthropic.ts";
import * as openai from "../openai.ts";
import { invalidUpstream, upstreamStreamFailure } from "../upstream.ts";
import { anthropicUsage, openaiUsage, toFinishReason, toStopReason } from "./mappings.ts";

type ChunkDelta = NonNullable<NonNullable<openai.ChatCompletionChunk["choices"]>[number]["delta"]>;

/**
 * Anthropic events → OpenAI `chat.completion.chunk`s. The usage-only chunk is sent when the
 * client asked for it (`stream_options.include_usage`), as OpenAI does.
 */
export async function* anthropicToOpenAIStream(
  events: AsyncIterable<SseEvent>,
  options: { includeUsage: boolean },
): AsyncGenerator<SseEvent> {
  let id = "";
  let model = "";
  const created = Math.floor(Date.now() / 1000);
  let usage: anthropic.AnthropicUsage = { input_tokens: 0, output_tokens: 0 };
  // Anthropic numbers all content blocks; OpenAI numbers tool calls only.
  const toolCallIndex = new Map<number, number>();
  const chunk = (
    choices: openai.ChatCompletionChunk["choices"],
    extra: Partial<openai.ChatCompletionChunk> = {},
  ): SseEvent => ({
    data: JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices, ...extra }),
  });
  const delta = (delta: ChunkDelta, finishReason: string | null = null) =>
    chunk([{ index: 0, delta, logprobs: null, finish_reason: finishReason }]);

  for await (const event of events) {
    const data = anthropic.readEvent(event);
    if (isType(data, "message_start")) {
      ({ id, model } = data.message);
      usage = { ...data.message.usage };
      yield delta({ role: "assistant", content: "" });
    } else if (isType(data, "content_block_start")) {
      const block = data.content_block;
      if (isType(block, "tool_use")) {
        const index = toolCallIndex.size;
        toolCallIndex.set(data.index, index);
        yield delta({
          tool_calls: [{
            index,
            id: block.id,
            type: "function",
            function: { name: block.name, arguments: "" },
          }],
        });
      } else if (isType(block, "text") && block.text !== "") {
        yield delta({ content: block.text });
      }
    } else if (isType(data, "content_block_delta")) {
      const change = data.delta;
      if (isType(change, "text_delta")) yield delta({ content: change.text });
      else if (isType(change, "input_json_delta")) {
        const index = toolCallIndex.get(data.index);
        if (index === undefined) throw invalidUpstream("tool input for a block that is no tool call");
        yield delta({ tool_calls: [{ index, function: { arguments: change.partial_json } }] });
      }
    } else if (isType(data, "message_delta")) {
      usage = anthropic.reviseUsage(usage, data.usage);
      // A delta may revise usage alone; only the one with a stop reason finishes the choice.
      if (data.delta.stop_reason) yield delta({}, toFinishReason(data.delta.stop_reason));
    } else if (isType(data, "message_stop")) {
      if (options.includeUsage) yield chunk([], { usage: openaiUsage(usage) });
      yield { data: openai.DONE };
      return;
    } else if (isType(data, "error")) {
      yield openai.streamErrorEvent(upstreamStreamFailure(data.error));
      return;
    }
  }
}

type OpenBlock = { kind: "text" } | { kind: "tool"; toolCall: number } | undefined;

/** OpenAI `chat.completion.chunk`s → Anthropic events. */
export async function* openaiToAnthropicStream(
  events: AsyncIterable<SseEvent>,
): AsyncGenerator<SseEvent> {
  let started = false;
  let blockIndex = -1;
  let open: OpenBlock;
  let stopReason: string | undefined;
  let usage: openai.OpenAIUsage | undefined;
  const emit = (data: { type: string; [key: string]: unknown }): SseEvent => ({
    event: data.type,
    data: JSON.stringify(data),
  });
  function* openBlock(next: NonNullable<OpenBlock>, contentBlock: unknown) {
    yield* closeBlock();
    open = next;
    blockIndex += 1;
    yield emit({ type: "content_block_start", index: blockIndex, content_block: contentBlock });
  }
  function* closeBlock() {
    if (open === undefined) return;
    open = undefined;
    yield emit({ type: "content_block_stop", index: blockIndex });
  }

  for await (const event of events) {
    const chunk = openai.readChunk(event);
    if (chunk === undefined) {
      // `[DONE]` without a finish reason is a cut stream.
      if (stopReason === undefined) return;
      yield* closeBlock();
      const final = usage ? anthropicUsage(usage) : { input_tokens: 0, output_tokens: 0 };
      yield emit({
        type: "message_delta",
        delta: { stop_reason: stopReason, stop_sequence: null },
        // Cumulative, input included: OpenAI reports usage only now, after message_start.
        usage: final,
      });
      yield emit({ type: "message_stop" });
      return;
    }
    if (chunk.error) {
      const { type, code, message } = chunk.error;
      yield anthropic.streamErrorEvent(
        upstreamStreamFailure({ type: type ?? String(code ?? "error"), message: message ?? "" }),
      );
      return;
    }
    if (!started) {
      started = true;
      yield emit({
        type: "message_start",
        message: {
          id: chunk.id ?? "",
          type: "message",
          role: "assistant",
          model: chunk.model ?? "",
          content: [],
          stop_reason: null,
          stop_sequence: null,
          usage: { input_tokens: 0, output_tokens: 0 },
        },
      });
    }
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices?.[0];
    if (!choice) continue;
    const text = (choice.delta?.content ?? "") + (choice.delta?.refusal ?? "");
    if (text !== "") {
      if (open?.kind !== "text") yield* openBlock({ kind: "text" }, { type: "text", text: "" });
      yield emit({
        type: "content_block_delta",
        index: blockIndex,
        delta: { type: "text_delta", text },
      });
    }
    for (const call of choice.delta?.tool_calls ?? []) {
      if (open?.kind !== "tool" || open.toolCall !== call.index) {
        yield* openBlock({ kind: "tool", toolCall: call.index }, {
          type: "tool_use",
          id: call.id ?? "",
          name: call.function?.name ?? "",
          input: {},
        });
      }
      const json = call.function?.arguments ?? "";
      if (json !== "") {
        yield emit({
          type: "content_block_delta",
          index: blockIndex,
          delta: { type: "input_json_delta", partial_json: json },
        });
      }
    }
    if (choice.finish_reason) {
      stopReason = toStopReason(choice.finish_reason);
      yield* closeBlock();
    }
  }
}
