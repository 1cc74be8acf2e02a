/**
 * Request bodies of the two wire formats the gateway speaks: OpenAI Chat Completions and
 * Anthropic Messages. Known fields are type-checked with the bounds the providers document;
 * every object is loose, so fields we do not know yet reach a same-format provider untouched.
 */
import { z } from "zod";
import { GatewayError, type WireFormat } from "./errors.ts";

/**
 * A content part or block whose `type` is one of `known`'s, checked against that type's
 * schema; any other `type` passes as is, because providers add new kinds of content faster
 * than a gateway can learn them. Narrow the result with `isType`.
 */
export function typedOrUnknown<
  const Known extends readonly [
    z.ZodObject<{ type: z.ZodLiteral<string> }>,
    ...z.ZodObject<{ type: z.ZodLiteral<string> }>[],
  ],
>(known: Known) {
  const knownTypes = new Set<unknown>(known.map((schema) => schema.shape.type.value));
  // Aborting, so that a known type's own issue is the one reported (see `describeUnion`).
  const unknownType = z.looseObject({ type: z.string() }).refine(
    (part) => !knownTypes.has(part.type),
    { abort: true, error: "does not have the fields its `type` requires" },
  );
  return z.union([z.discriminatedUnion("type", known), unknownType]);
}

/**
 * Narrows a `typedOrUnknown` value by its `type` (a `switch` cannot: the catch-all's `type` is
 * any string). Sound because the catch-all never holds a known type.
 */
export function isType<T extends { type: string }, K extends T["type"]>(
  value: T,
  type: K,
): value is Extract<T, { type: K }> {
  return value.type === type;
}

const nonEmpty = z.string().min(1);
const maxTokens = z.number().int().positive();
const jsonObject = z.record(z.string(), z.unknown());

// ─── OpenAI Chat Completions ────────────────────────────────────────────────────────────────

const openaiText = z.looseObject({ type: z.literal("text"), text: z.string() });
const openaiImage = z.looseObject({
  type: z.literal("image_url"),
  image_url: z.looseObject({ url: nonEmpty, detail: z.string().optional() }),
});
const openaiAudio = z.looseObject({
  type: z.literal("input_audio"),
  input_audio: z.looseObject({ data: z.string(), format: z.string() }),
});
const openaiFile = z.looseObject({
  type: z.literal("file"),
  file: z.looseObject({
    file_data: z.string().optional(),
    file_id: z.string().optional(),
    filename: z.string().optional(),
  }),
});
const openaiRefusal = z.looseObject({ type: z.literal("refusal"), refusal: z.string() });

const openaiTextContent = z.union([z.string(), z.array(openaiText).min(1)]);
const openaiUserPart = typedOrUnknown([openaiText, openaiImage, openaiAudio, openaiFile]);

const openaiToolCallSchema = z.looseObject({
  id: nonEmpty,
  type: z.literal("function"),
  function: z.looseObject({ name: nonEmpty, arguments: z.string() }),
});

const openaiMessageSchema = z.discriminatedUnion("role", [
  z.looseObject({
    role: z.literal("system"),
    content: openaiTextContent,
    name: z.string().optional(),
  }),
  z.looseObject({
    role: z.literal("developer"),
    content: openaiTextContent,
    name: z.string().optional(),
  }),
  z.looseObject({
    role: z.literal("user"),
    content: z.union([z.string(), z.array(openaiUserPart).min(1)]),
    name: z.string().optional(),
  }),
  z.looseObject({
    role: z.literal("assistant"),
    content: z.union([z.string(), z.array(z.union([openaiText, openaiRefusal]))]).nullish(),
    refusal: z.string().nullish(),
    name: z.string().optional(),
    tool_calls: z.array(openaiToolCallSchema).optional(),
  }),
  z.looseObject({
    role: z.literal("tool"),
    content: openaiTextContent,
    tool_call_id: nonEmpty,
  }),
]);

const openaiToolSchema = typedOrUnknown([
  z.looseObject({
    type: z.literal("function"),
    function: z.looseObject({
      name: nonEmpty,
      description: z.string().optional(),
      parameters: jsonObject.optional(),
      strict: z.boolean().nullish(),
    }),
  }),
]);

const openaiToolChoiceSchema = z.union([
  z.enum(["none", "auto", "required"]),
  typedOrUnknown([
    z.looseObject({
      type: z.literal("function"),
      function: z.looseObject({ name: nonEmpty }),
    }),
  ]),
]);

// OpenAI documents most optional fields as nullable, and clients send `null` for "unset".
export const openaiChatRequestSchema = z.looseObject({
  model: nonEmpty,
  messages: z.array(openaiMessageSchema).min(1),
  max_tokens: maxTokens.nullish(),
  max_completion_tokens: maxTokens.nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  // One choice per call: usage, cost and streaming are accounted for a single answer.
  n: z.number().int().refine((n) => n === 1, { error: "must be 1 (only one choice per call is supported)" }).nullish(),
  stop: z.union([z.string(), z.array(z.string())]).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullish(),
  tools: z.array(openaiToolSchema).optional(),
  tool_choice: openaiToolChoiceSchema.optional(),
  parallel_tool_calls: z.boolean().optional(),
  response_format: z.looseObject({ type: z.string() }).optional(),
  seed: z.number().int().nullish(),
  user: z.string().optional(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  logit_bias: z.record(z.string(), z.number().min(-100).max(100)).nullish(),
  metadata: z.record(z.string(), z.string()).nullish(),
  reasoning_effort: z.string().nullish(),
});

export type OpenAIChatRequest = z.infer<typeof openaiChatRequestSchema>;
export type OpenAIMessage = z.infer<typeof openaiMessageSchema>;

// ─── Anthropic Messages ─────────────────────────────────────────────────────────────────────

const anthropicText = z.looseObject({ type: z.literal("text"), text: z.string() });
const anthropicImage = z.looseObject({
  type: z.literal("image"),
  source: typedOrUnknown([
    z.looseObject({ type: z.literal("base64"), media_type: nonEmpty, data: z.string() }),
    z.looseObject({ type: z.literal("url"), url: nonEmpty }),
  ]),
});
const anthropicDocument = z.looseObject({
  type: z.literal("document"),
  source: z.looseObject({ type: z.string() }),
});
const anthropicToolUse = z.looseObject({
  type: z.literal("tool_use"),
  id: nonEmpty,
  name: nonEmpty,
  input: jsonObject,
});
const anthropicToolResult = z.looseObject({
  type: z.literal("tool_result"),
  tool_use_id: nonEmpty,
  content: z.union([
    z.string(),
    z.array(typedOrUnknown([anthropicText, anthropicImage, anthropicDocument])),
  ]).optional(),
  is_error: z.boolean().optional(),
});

const anthropicBlockSchema = typedOrUnknown([
  anthropicText,
  anthropicImage,
  anthropicDocument,
  anthropicToolUse,
  anthropicToolResult,
]);

const anthropicMessageParamSchema = z.looseObject({
  role: z.enum(["user", "assistant"]),
  content: z.union([z.string(), z.array(anthropicBlockSchema)]),
});

const anthropicToolSchema = z.looseObject({
  // Absent or "custom" for a client tool; a dated name such as `web_search_20250305` for a
  // tool the provider runs itself.
  type: z.string().optional(),
  name: nonEmpty,
  description: z.string().optional(),
  input_schema: jsonObject.optional(),
});

const anthropicToolChoiceSchema = typedOrUnknown([
  z.looseObject({ type: z.literal("auto"), disable_parallel_tool_use: z.boolean().optional() }),
  z.looseObject({ type: z.literal("any"), disable_parallel_tool_use: z.boolean().optional() }),
  z.looseObject({
    type: z.literal("tool"),
    name: nonEmpty,
    disable_parallel_tool_use: z.boolean().optional(),
  }),
  z.looseObject({ type: z.literal("none") }),
]);

export const anthropicMessagesRequestSchema = z.looseObject({
  model: nonEmpty,
  max_tokens: maxTokens,
  messages: z.array(anthropicMessageParamSchema).min(1),
  system: z.union([z.string(), z.array(anthropicText)]).optional(),
  stop_sequences: z.array(z.string()).optional(),
  stream: z.boolean().optional(),
  temperature: z.number().min(0).max(1).optional(),
  top_p: z.number().min(0).max(1).optional(),
  top_k: z.number().int().min(0).optional(),
  tools: z.array(anthropicToolSchema).optional(),
  tool_choice: anthropicToolChoiceSchema.optional(),
  metadata: z.looseObject({ user_id: z.string().nullish() }).optional(),
});

export type AnthropicMessagesRequest = z.infer<typeof anthropicMessagesRequestSchema>;
export type AnthropicMessageParam = z.infer<typeof anthropicMessageParamSchema>;
export type AnthropicBlock = z.infer<typeof anthropicBlockSchema>;

// ─── Parsing ────────────────────────────────────────────────────────────────────────────────

const formatNames: Record<WireFormat, string> = {
  openai: "Chat Completions",
  anthropic: "Messages",
};

/**
 * The body, checked against `schema`, or a 400 `invalid_request` naming the first field at
 * fault (`param`, dotted: `messages.0.content`) and what is wrong with it.
 */
export function parseRequest<S extends z.ZodType>(
  schema: S,
  json: unknown,
  format: WireFormat,
): z.infer<S> {
  const result = schema.safeParse(json, { reportInput: true });
  if (result.success) return result.data;
  const { path, problem } = describeIssue(result.error.issues[0], []);
  const param = path.join(".");
  throw new GatewayError({
    status: 400,
    code: "invalid_request",
    message: `Invalid ${formatNames[format]} request: ${param ? `\`${param}\`` : "the body"} ${problem}.`,
    param: param || undefined,
  });
}

type Issue = z.core.$ZodIssue;
type Path = PropertyKey[];

const typeNames = new Map<string, string>([
  ["string", "a string"],
  ["number", "a number"],
  ["int", "an integer"],
  ["boolean", "a boolean"],
  ["object", "an object"],
  ["array", "an array"],
  ["record", "an object"],
]);

function describeIssue(issue: Issue, prefix: Path): { path: Path; problem: string } {
  const path = [...prefix, ...issue.path];
  switch (issue.code) {
    case "invalid_union":
      return describeUnion(issue, path);
    case "invalid_type":
      return {
        path,
        problem: issue.input === undefined
          ? "is required"
          : `must be ${typeNames.get(issue.expected) ?? issue.expected} (got ${kindOf(issue.input)})`,
      };
    case "too_small":
    case "too_big":
      return { path, problem: describeBound(issue) };
    case "invalid_value":
      return { path, problem: `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}` };
    case "invalid_format":
      return { path, problem: `must be a valid ${issue.format}` };
    default:
      return { path, problem: issue.message };
  }
}

function describeUnion(issue: z.core.$ZodIssueInvalidUnion, path: Path) {
  if (issue.errors.length === 0) {
    // A discriminated union whose discriminator matched no option.
    const options = (issue as { options?: unknown[] }).options ?? [];
    return {
      path,
      problem: options.length > 0
        ? `must be one of ${options.map((o) => JSON.stringify(o)).join(", ")}`
        : issue.message,
    };
  }
  const firsts = issue.errors.map((branch) => branch[0]);
  // A branch that got past the type check and failed deeper says more than "expected X or Y";
  // on a tie the later branch wins, since `typedOrUnknown` puts its catch-all last.
  const deeper = firsts.filter((branch) => alternatives(branch) === undefined);
  if (deeper.length > 0) {
    const best = deeper.reduce((a, b) => (b.path.length >= a.path.length ? b : a));
    return describeIssue(best, path);
  }
  const expected = [...new Set(firsts.flatMap((branch) => alternatives(branch) ?? []))];
  return {
    path,
    problem: issue.input === undefined ? "is required" : `must be ${joinOr(expected)} (got ${kindOf(issue.input)})`,
  };
}

/** What a branch would have accepted, when it rejected the value itself rather than a part. */
function alternatives(issue: Issue): string[] | undefined {
  if (issue.path.length > 0) return undefined;
  switch (issue.code) {
    case "invalid_type":
      return [typeNames.get(issue.expected) ?? issue.expected];
    case "invalid_value":
      return issue.values.map((value) => JSON.stringify(value));
    case "invalid_union": {
      if (issue.errors.length === 0) return undefined;
      const all: string[] = [];
      for (const branch of issue.errors) {
        const accepted = alternatives(branch[0]);
        if (accepted === undefined) return undefined;
        all.push(...accepted);
      }
      return all;
    }
    default:
      return undefined;
  }
}

const joinOr = (words: string[]) =>
  words.length < 2 ? words.join("") : `${words.slice(0, -1).join(", ")} or ${words.at(-1)}`;

function describeBound(issue: z.core.$ZodIssueTooSmall | z.core.$ZodIssueTooBig): string {
  const small = issue.code === "too_small";
  const limit = Number(small ? issue.minimum : issue.maximum);
  const inclusive = issue.inclusive !== false;
  switch (issue.origin) {
    case "array":
      return small ? `must have at least ${plural(limit, "item")}` : `must have at most ${plural(limit, "item")}`;
    case "string":
      if (small && limit === 1) return "must not be empty";
      return `must be at ${small ? "least" : "most"} ${plural(limit, "character")} long`;
    default:
      if (inclusive) return `must be at ${small ? "least" : "most"} ${limit}`;
      return `must be ${small ? "greater" : "less"} than ${limit}`;
  }
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

function kindOf(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeNames.get(typeof value) ?? typeof value;
}
