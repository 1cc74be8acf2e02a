/**
 * JSON answers from one wire format to the other, so that a client gets the format it called
 * whichever provider answered.
 */
import { isType } from "../../schemas.ts";
import type { AnthropicContentBlock, AnthropicMessage } from "../anthropic.ts";
import type { ChatCompletion } from "../openai.ts";
import { invalidUpstream } from "../upstream.ts";
import { anthropicUsage, argumentsObject, openaiUsage, toFinishReason, toStopReason } from "./mappings.ts";

type ToolCall = NonNullable<ChatCompletion["choices"][number]["message"]["tool_calls"]>[number];

export function anthropicToOpenAIResponse(message: AnthropicMessage): ChatCompletion {
  let text = "";
  const toolCalls: ToolCall[] = [];
  // Thinking has no place in a chat.completion; other blocks only answer requests that
  // could not have been translated.
  for (const block of message.content) {
    if (isType(block, "text")) text += block.text;
    else if (isType(block, "tool_use")) {
      toolCalls.push({
        id: block.id,
        type: "function",
        function: { name: block.name, arguments: JSON.stringify(block.input) },
      });
    }
  }
  return {
    id: message.id,
    object: "chat.completion",
    created: Math.floor(Date.now() / 1000),
    model: message.model,
    choices: [{
      index: 0,
      message: {
        role: "assistant",
        content: text === "" && toolCalls.length > 0 ? null : text,
        refusal: null,
        ...(toolCalls.length > 0 && { tool_calls: toolCalls }),
      },
      logprobs: null,
      finish_reason: toFinishReason(message.stop_reason),
    }],
    usage: openaiUsage(message.usage),
  };
}

export function openaiToAnthropicResponse(completion: ChatCompletion): AnthropicMessage {
  const choice = completion.choices[0];
  if (!choice) invalid("an answer without choices");
  const content: AnthropicContentBlock[] = [];
  const text = (choice.message.content ?? "") + (choice.message.refusal ?? "");
  if (text !== "") content.push({ type: "text", text });
  for (const call of choice.message.tool_calls ?? []) {
    content.push({
      type: "tool_use",
      id: call.id,
      name: call.function.name,
      input: argumentsObject(call.function.arguments) ??
        invalid("tool call arguments that are not a JSON object"),
    });
  }
  return {
    id: completion.id ?? "",
    type: "message",
    role: "assistant",
    model: completion.model ?? "",
    content,
    stop_reason: toStopReason(choice.finish_reason),
    stop_sequence: null,
    usage: completion.usage ? anthropicUsage(completion.usage) : { input_tokens: 0, output_tokens: 0 },
  };
}

function invalid(detail: string): never {
  throw invalidUpstream(detail);
}
