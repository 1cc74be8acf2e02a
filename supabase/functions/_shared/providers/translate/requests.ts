/**
 * Request bodies from one wire format to the other, for a fallback to a provider of the other
 * format. Fields without a counterpart stay behind (a provider rejects fields it does not
 * know); content that cannot be carried over faithfully is refused with a 400, never dropped.
 */
import { GatewayError } from "../../errors.ts";
import {
  type AnthropicBlock,
  type AnthropicMessageParam,
  type AnthropicMessagesRequest,
  isType,
  type OpenAIChatRequest,
  type OpenAIMessage,
} from "../../schemas.ts";
import { argumentsObject } from "./mappings.ts";

/** Anthropic requires `max_tokens`; OpenAI lets the model decide. */
export const defaultMaxTokens = 4096;

type Target = "an Anthropic" | "an OpenAI-format";

function untranslatable(param: string, what: string, target: Target): GatewayError {
  return new GatewayError({
    status: 400,
    code: "untranslatable_request",
    message: `\`${param}\`: ${what} cannot be sent to ${target} model.`,
    param,
  });
}

function notAnObject(param: string): never {
  throw new GatewayError({
    status: 400,
    code: "invalid_request",
    message: `\`${param}\` must be a JSON object.`,
    param,
  });
}

/** `data:<media type>;base64,<data>` */
const dataUrl = /^data:([^;,]+);base64,(.*)$/s;

// ─── OpenAI → Anthropic ─────────────────────────────────────────────────────────────────────

type AnthropicToolChoice = NonNullable<AnthropicMessagesRequest["tool_choice"]>;

const toolChoices = new Map<string, AnthropicToolChoice>([
  ["auto", { type: "auto" }],
  ["required", { type: "any" }],
  ["none", { type: "none" }],
]);

export function openaiToAnthropicRequest(body: OpenAIChatRequest): AnthropicMessagesRequest {
  if (body.response_format && body.response_format.type !== "text") {
    throw untranslatable("response_format", "a response format", "an Anthropic");
  }
  const system: string[] = [];
  const messages: AnthropicMessageParam[] = [];
  // Anthropic wants turns to alternate, so a turn of the same role as the last one joins it.
  const add = (role: "user" | "assistant", content: string | AnthropicBlock[]) => {
    const last = messages.at(-1);
    if (last?.role === role) last.content = [...asBlocks(last.content), ...asBlocks(content)];
    else messages.push({ role, content });
  };

  body.messages.forEach((message, i) => {
    const path = `messages.${i}`;
    switch (message.role) {
      case "system":
      case "developer":
        system.push(...textsOf(message.content));
        break;
      case "user":
        add("user", userContent(message.content, path));
        break;
      case "assistant": {
        const blocks = assistantBlocks(message, path);
        if (blocks.length > 0) add("assistant", blocks);
        break;
      }
      case "tool":
        add("user", [{
          type: "tool_result",
          tool_use_id: message.tool_call_id,
          content: typeof message.content === "string"
            ? message.content
            : message.content.map(({ text }) => ({ type: "text" as const, text })),
        }]);
        break;
    }
  });

  const request: AnthropicMessagesRequest = {
    model: body.model,
    max_tokens: body.max_completion_tokens ?? body.max_tokens ?? defaultMaxTokens,
    messages,
  };
  if (system.length === 1) request.system = system[0];
  else if (system.length > 1) request.system = system.map((text) => ({ type: "text", text }));
  // Anthropic's temperature scale ends at 1.
  if (body.temperature != null) request.temperature = Math.min(body.temperature, 1);
  if (body.top_p != null) request.top_p = body.top_p;
  if (body.stop != null) {
    const stops = typeof body.stop === "string" ? [body.stop] : body.stop;
    if (stops.length > 0) request.stop_sequences = stops;
  }
  if (body.stream) request.stream = true;
  if (body.user) request.metadata = { user_id: body.user };
  if (body.tools) request.tools = body.tools.map(anthropicTool);
  const choice = anthropicToolChoice(body);
  if (choice) request.tool_choice = choice;
  return request;
}

const asBlocks = (content: string | AnthropicBlock[]): AnthropicBlock[] =>
  typeof content === "string" ? [{ type: "text", text: content }] : content;

const textsOf = (content: string | { text: string }[]): string[] =>
  (typeof content === "string" ? [content] : content.map((part) => part.text))
    .filter((text) => text !== "");

type UserContent = Extract<OpenAIMessage, { role: "user" }>["content"];

function userContent(content: UserContent, path: string): string | AnthropicBlock[] {
  if (typeof content === "string") return content;
  return content.map((part, j): AnthropicBlock => {
    const at = `${path}.content.${j}`;
    if (isType(part, "text")) return { type: "text", text: part.text };
    if (isType(part, "image_url")) {
      const match = dataUrl.exec(part.image_url.url);
      return {
        type: "image",
        source: match
          ? { type: "base64", media_type: match[1], data: match[2] }
          : { type: "url", url: part.image_url.url },
      };
    }
    if (isType(part, "file")) {
      const match = dataUrl.exec(part.file.file_data ?? "");
      if (!match) throw untranslatable(at, "a file that is not inline base64 data", "an Anthropic");
      return { type: "document", source: { type: "base64", media_type: match[1], data: match[2] } };
    }
    throw untranslatable(at, `content of type \`${part.type}\``, "an Anthropic");
  });
}

function assistantBlocks(
  message: Extract<OpenAIMessage, { role: "assistant" }>,
  path: string,
): AnthropicBlock[] {
  const blocks: AnthropicBlock[] = [];
  const content = message.content ?? [];
  const texts = typeof content === "string"
    ? [content]
    : content.map((part) => isType(part, "text") ? part.text : part.refusal);
  // Anthropic rejects empty text blocks, which OpenAI clients send beside tool calls.
  for (const text of texts) if (text !== "") blocks.push({ type: "text", text });
  message.tool_calls?.forEach((call, k) => {
    blocks.push({
      type: "tool_use",
      id: call.id,
      name: call.function.name,
      input: argumentsObject(call.function.arguments) ?? notAnObject(`${path}.tool_calls.${k}.function.arguments`),
    });
  });
  return blocks;
}

function anthropicTool(
  tool: NonNullable<OpenAIChatRequest["tools"]>[number],
  i: number,
): NonNullable<AnthropicMessagesRequest["tools"]>[number] {
  if (!isType(tool, "function")) {
    throw untranslatable(`tools.${i}`, `a tool of type \`${tool.type}\``, "an Anthropic");
  }
  const { name, description, parameters } = tool.function;
  return {
    name,
    ...(description !== undefined && { description }),
    input_schema: parameters ?? { type: "object", properties: {} },
  };
}

function anthropicToolChoice(body: OpenAIChatRequest): AnthropicToolChoice | undefined {
  const choice = body.tool_choice;
  let translated: AnthropicToolChoice | undefined;
  if (typeof choice === "string") translated = toolChoices.get(choice);
  else if (choice !== undefined) {
    if (!isType(choice, "function")) {
      throw untranslatable("tool_choice", `a tool choice of type \`${choice.type}\``, "an Anthropic");
    }
    translated = { type: "tool", name: choice.function.name };
  }
  if (body.parallel_tool_calls === false && body.tools?.length && translated?.type !== "none") {
    return { ...(translated ?? { type: "auto" }), disable_parallel_tool_use: true };
  }
  return translated;
}

// ─── Anthropic → OpenAI ─────────────────────────────────────────────────────────────────────

type OpenAIToolChoice = NonNullable<OpenAIChatRequest["tool_choice"]>;

const openaiToolChoices = new Map<string, OpenAIToolChoice>([
  ["auto", "auto"],
  ["any", "required"],
  ["none", "none"],
]);

/** Content parts OpenAI takes in a user message. */
type UserPart = Exclude<UserContent, string>[number];

export function anthropicToOpenAIRequest(body: AnthropicMessagesRequest): OpenAIChatRequest {
  const messages: OpenAIMessage[] = [];
  if (typeof body.system === "string") {
    if (body.system !== "") messages.push({ role: "system", content: body.system });
  } else if (body.system?.length) {
    messages.push({
      role: "system",
      content: body.system.map(({ text }) => ({ type: "text", text })),
    });
  }
  body.messages.forEach((message, i) => {
    const path = `messages.${i}`;
    if (message.role === "assistant") messages.push(assistantMessage(message.content, path));
    else messages.push(...userMessages(message.content, path));
  });

  const request: OpenAIChatRequest = { model: body.model, max_tokens: body.max_tokens, messages };
  if (body.temperature !== undefined) request.temperature = body.temperature;
  if (body.top_p !== undefined) request.top_p = body.top_p;
  // `top_k` has no OpenAI counterpart and is left behind.
  if (body.stop_sequences?.length) request.stop = body.stop_sequences;
  if (body.stream) {
    // The Anthropic stream's final `message_delta` carries usage: ask for it.
    request.stream = true;
    request.stream_options = { include_usage: true };
  }
  if (body.metadata?.user_id) request.user = body.metadata.user_id;
  if (body.tools) request.tools = body.tools.map(openaiTool);
  const choice = body.tool_choice;
  if (choice) {
    if (isType(choice, "tool")) {
      request.tool_choice = { type: "function", function: { name: choice.name } };
    } else {
      const translated = openaiToolChoices.get(choice.type);
      if (!translated) {
        throw untranslatable("tool_choice", `a tool choice of type \`${choice.type}\``, "an OpenAI-format");
      }
      request.tool_choice = translated;
    }
    if (choice.disable_parallel_tool_use === true) request.parallel_tool_calls = false;
  }
  return request;
}

/**
 * One Anthropic user turn: its tool results become `tool` messages, which OpenAI wants right
 * after the assistant's tool calls, then the rest stays a user message.
 */
function userMessages(content: AnthropicMessageParam["content"], path: string): OpenAIMessage[] {
  if (typeof content === "string") return [{ role: "user", content }];
  const messages: OpenAIMessage[] = [];
  const parts: UserPart[] = [];
  content.forEach((block, j) => {
    const at = `${path}.content.${j}`;
    if (isType(block, "tool_result")) {
      messages.push({
        role: "tool",
        tool_call_id: block.tool_use_id,
        content: toolResultContent(block.content, at),
      });
    } else if (isType(block, "text")) {
      parts.push({ type: "text", text: block.text });
    } else if (isType(block, "image")) {
      const { source } = block;
      if (isType(source, "base64")) {
        parts.push({
          type: "image_url",
          image_url: { url: `data:${source.media_type};base64,${source.data}` },
        });
      } else if (isType(source, "url")) {
        parts.push({ type: "image_url", image_url: { url: source.url } });
      } else {
        throw untranslatable(at, `an image from a \`${source.type}\` source`, "an OpenAI-format");
      }
    } else if (isType(block, "document")) {
      const fileData = pdfData(block.source);
      if (!fileData) throw untranslatable(at, "a document other than an inline PDF", "an OpenAI-format");
      parts.push({ type: "file", file: { file_data: fileData } });
    } else {
      throw untranslatable(at, `content of type \`${block.type}\``, "an OpenAI-format");
    }
  });
  if (parts.length > 0) messages.push({ role: "user", content: parts });
  return messages;
}

/** A base64 PDF as a data URL, the one kind of document OpenAI takes inline. */
function pdfData(source: { type: string; [key: string]: unknown }): string | undefined {
  const { media_type: mediaType, data } = source;
  if (source.type !== "base64" || mediaType !== "application/pdf" || typeof data !== "string") {
    return undefined;
  }
  return `data:${mediaType};base64,${data}`;
}

type ToolResultContent = Extract<AnthropicBlock, { type: "tool_result" }>["content"];

function toolResultContent(content: ToolResultContent, path: string) {
  if (content === undefined || typeof content === "string") return content ?? "";
  if (content.length === 0) return "";
  return content.map((block, k) => {
    if (!isType(block, "text")) {
      throw untranslatable(
        `${path}.content.${k}`,
        `a tool result of type \`${block.type}\``,
        "an OpenAI-format",
      );
    }
    return { type: "text" as const, text: block.text };
  });
}

function assistantMessage(content: AnthropicMessageParam["content"], path: string): OpenAIMessage {
  if (typeof content === "string") return { role: "assistant", content };
  const texts: string[] = [];
  const toolCalls: NonNullable<Extract<OpenAIMessage, { role: "assistant" }>["tool_calls"]> = [];
  content.forEach((block, j) => {
    if (isType(block, "text")) texts.push(block.text);
    else if (isType(block, "tool_use")) {
      toolCalls.push({
        id: block.id,
        type: "function",
        function: { name: block.name, arguments: JSON.stringify(block.input) },
      });
    } else if (block.type !== "thinking" && block.type !== "redacted_thinking") {
      // Thinking is signed by Anthropic for Anthropic models; another model has no use for it.
      throw untranslatable(
        `${path}.content.${j}`,
        `content of type \`${block.type}\``,
        "an OpenAI-format",
      );
    }
  });
  return {
    role: "assistant",
    content: texts.length === 0 ? null : texts.length === 1 ? texts[0] : texts.map((text) => ({ type: "text", text })),
    ...(toolCalls.length > 0 && { tool_calls: toolCalls }),
  };
}

function openaiTool(
  tool: NonNullable<AnthropicMessagesRequest["tools"]>[number],
  i: number,
): NonNullable<OpenAIChatRequest["tools"]>[number] {
  if (tool.type !== undefined && tool.type !== "custom") {
    throw untranslatable(`tools.${i}`, `the provider-run tool \`${tool.type}\``, "an OpenAI-format");
  }
  return {
    type: "function",
    function: {
      name: tool.name,
      ...(tool.description !== undefined && { description: tool.description }),
      parameters: tool.input_schema ?? { type: "object", properties: {} },
    },
  };
}
