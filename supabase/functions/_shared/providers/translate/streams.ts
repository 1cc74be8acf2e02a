/**
 * Streams from one wire format to the other, event by event: a translation takes each decoded
 * upstream SSE event (see sse.ts) and gives the client's events for it, so that the events of
 * one upstream read go on together.
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

export interface StreamTranslation {
  /** The client's events for one upstream event; none once the translated stream has ended. */
  push(event: SseEvent): SseEvent[];
  /** The client's stream has its last event (its end marker or an error): read no further. */
  readonly ended: boolean;
}

type ChunkDelta = NonNullable<NonNullable<openai.ChatCompletionChunk["choices"]>[number]["delta"]>;

/**
 * Anthropic events → OpenAI `chat.completion.chunk`s. The usage-only chunk is sent when the
 * client asked for it (`stream_options.include_usage`), as OpenAI does.
 */
export function anthropicToOpenAIStream(options: { includeUsage: boolean }): StreamTranslation {
  let id = "";
  let model = "";
  const created = Math.floor(Date.now() / 1000);
  let usage: anthropic.AnthropicUsage = { input_tokens: 0, output_tokens: 0 };
  // Anthropic numbers all content blocks; OpenAI numbers tool calls only.
  const toolCallIndex = new Map<number, number>();
  let ended = false;
  const chunk = (
    choices: openai.ChatCompletionChunk["choices"],
    extra: Partial<openai.ChatCompletionChunk> = {},
  ): SseEvent => ({
    data: JSON.stringify({ id, object: "chat.completion.chunk", created, model, choices, ...extra }),
  });
  const delta = (delta: ChunkDelta, finishReason: string | null = null) =>
    chunk([{ index: 0, delta, logprobs: null, finish_reason: finishReason }]);

  function push(event: SseEvent): SseEvent[] {
    if (ended) return [];
    const data = anthropic.readEvent(event);
    if (isType(data, "message_start")) {
      ({ id, model } = data.message);
      usage = { ...data.message.usage };
      return [delta({ role: "assistant", content: "" })];
    }
    if (isType(data, "content_block_start")) {
      const block = data.content_block;
      if (isType(block, "tool_use")) {
        const index = toolCallIndex.size;
        toolCallIndex.set(data.index, index);
        return [delta({
          tool_calls: [{
            index,
            id: block.id,
            type: "function",
            function: { name: block.name, arguments: "" },
          }],
        })];
      }
      return isType(block, "text") && block.text !== "" ? [delta({ content: block.text })] : [];
    }
    if (isType(data, "content_block_delta")) {
      const change = data.delta;
      if (isType(change, "text_delta")) return [delta({ content: change.text })];
      if (isType(change, "input_json_delta")) {
        const index = toolCallIndex.get(data.index);
        if (index === undefined) throw invalidUpstream("tool input for a block that is no tool call");
        return [delta({ tool_calls: [{ index, function: { arguments: change.partial_json } }] })];
      }
      return [];
    }
    if (isType(data, "message_delta")) {
      usage = anthropic.reviseUsage(usage, data.usage);
      // A delta may revise usage alone; only the one with a stop reason finishes the choice.
      return data.delta.stop_reason ? [delta({}, toFinishReason(data.delta.stop_reason))] : [];
    }
    if (isType(data, "message_stop")) {
      ended = true;
      return [...(options.includeUsage ? [chunk([], { usage: openaiUsage(usage) })] : []), { data: openai.DONE }];
    }
    if (isType(data, "error")) {
      ended = true;
      return [openai.streamErrorEvent(upstreamStreamFailure(data.error))];
    }
    return [];
  }

  return {
    push,
    get ended() {
      return ended;
    },
  };
}

type OpenBlock = { kind: "text" } | { kind: "tool"; toolCall: number } | undefined;

/** OpenAI `chat.completion.chunk`s → Anthropic events. */
export function openaiToAnthropicStream(): StreamTranslation {
  let started = false;
  let blockIndex = -1;
  let open: OpenBlock;
  let stopReason: string | undefined;
  let usage: openai.OpenAIUsage | undefined;
  let ended = false;
  const emit = (data: { type: string; [key: string]: unknown }): SseEvent => ({
    event: data.type,
    data: JSON.stringify(data),
  });
  function openBlock(out: SseEvent[], next: NonNullable<OpenBlock>, contentBlock: unknown) {
    closeBlock(out);
    open = next;
    blockIndex += 1;
    out.push(emit({ type: "content_block_start", index: blockIndex, content_block: contentBlock }));
  }
  function closeBlock(out: SseEvent[]) {
    if (open === undefined) return;
    open = undefined;
    out.push(emit({ type: "content_block_stop", index: blockIndex }));
  }

  function push(event: SseEvent): SseEvent[] {
    if (ended) return [];
    const out: SseEvent[] = [];
    const chunk = openai.readChunk(event);
    if (chunk === undefined) {
      ended = true;
      // `[DONE]` without a finish reason is a cut stream.
      if (stopReason === undefined) return out;
      closeBlock(out);
      const final = usage ? anthropicUsage(usage) : { input_tokens: 0, output_tokens: 0 };
      out.push(
        emit({
          type: "message_delta",
          delta: { stop_reason: stopReason, stop_sequence: null },
          // Cumulative, input included: OpenAI reports usage only now, after message_start.
          usage: final,
        }),
        emit({ type: "message_stop" }),
      );
      return out;
    }
    if (chunk.error) {
      ended = true;
      const { type, code, message } = chunk.error;
      return [
        anthropic.streamErrorEvent(
          upstreamStreamFailure({ type: type ?? String(code ?? "error"), message: message ?? "" }),
        ),
      ];
    }
    if (!started) {
      started = true;
      out.push(emit({
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
      }));
    }
    if (chunk.usage) usage = chunk.usage;
    const choice = chunk.choices?.[0];
    if (!choice) return out;
    const text = (choice.delta?.content ?? "") + (choice.delta?.refusal ?? "");
    if (text !== "") {
      if (open?.kind !== "text") openBlock(out, { kind: "text" }, { type: "text", text: "" });
      out.push(emit({
        type: "content_block_delta",
        index: blockIndex,
        delta: { type: "text_delta", text },
      }));
    }
    for (const call of choice.delta?.tool_calls ?? []) {
      if (open?.kind !== "tool" || open.toolCall !== call.index) {
        openBlock(out, { kind: "tool", toolCall: call.index }, {
          type: "tool_use",
          id: call.id ?? "",
          name: call.function?.name ?? "",
          input: {},
        });
      }
      const json = call.function?.arguments ?? "";
      if (json !== "") {
        out.push(emit({
          type: "content_block_delta",
          index: blockIndex,
          delta: { type: "input_json_delta", partial_json: json },
        }));
      }
    }
    if (choice.finish_reason) {
      stopReason = toStopReason(choice.finish_reason);
      closeBlock(out);
    }
    return out;
  }

  return {
    push,
    get ended() {
      return ended;
    },
  };
}
