/** HTTP plumbing shared by every endpoint: CORS, bounded body reading, rate-limit headers. */
import { GatewayError } from "./errors.ts";
import type { Admission } from "./ledger.ts";

const allowedHeaders = [
  "authorization",
  "x-api-key",
  "apikey",
  "content-type",
  "x-client-info",
  "x-tollgate-feature",
  "x-tollgate-cache",
  "anthropic-version",
  "anthropic-beta",
  "anthropic-dangerous-direct-browser-access",
  "openai-organization",
  "openai-project",
  "x-stainless-arch",
  "x-stainless-lang",
  "x-stainless-os",
  "x-stainless-package-version",
  "x-stainless-retry-count",
  "x-stainless-runtime",
  "x-stainless-runtime-version",
  "x-stainless-timeout",
  "x-stainless-helper-method",
].join(", ");

const exposedHeaders = [
  "retry-after",
  "x-request-id",
  "request-id",
  "x-ratelimit-limit-requests",
  "x-ratelimit-remaining-requests",
  "x-ratelimit-reset-requests",
  "x-ratelimit-limit-tokens",
  "x-ratelimit-remaining-tokens",
  "x-ratelimit-reset-tokens",
  "x-tollgate-overhead-ms",
  "x-tollgate-layer",
  "x-tollgate-restricted",
  "x-tollgate-warning",
  "x-tollgate-provider",
  "x-tollgate-model",
  "x-tollgate-cache",
  "x-tollgate-tier",
].join(", ");

export function corsHeaders(request: Request, allowedOrigins: string[]): Record<string, string> {
  const origin = request.headers.get("origin");
  if (!origin) return {};
  const allowed = allowedOrigins.includes("*") ? "*" : allowedOrigins.includes(origin) ? origin : null;
  if (!allowed) return {};
  return {
    "access-control-allow-origin": allowed,
    "access-control-allow-methods": "GET, POST, OPTIONS",
    "access-control-allow-headers": allowedHeaders,
    "access-control-expose-headers": exposedHeaders,
    "access-control-max-age": "86400",
    ...(allowed === "*" ? {} : { vary: "origin" }),
  };
}

/** Reads a JSON body no larger than `maxBytes`, without trusting Content-Length. */
export async function readJson(request: Request, maxBytes: number): Promise<unknown> {
  const type = request.headers.get("content-type") ?? "";
  if (!/^application\/json\b/i.test(type)) {
    throw new GatewayError({
      status: 415,
      code: "unsupported_media_type",
      message: "Send the request body as JSON with `content-type: application/json`.",
    });
  }
  const declared = Number(request.headers.get("content-length") ?? 0);
  if (declared > maxBytes) throw tooLarge(maxBytes);
  const reader = request.body?.getReader();
  if (!reader) throw invalidJson("The request has no body.");
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > maxBytes) {
      await reader.cancel();
      throw tooLarge(maxBytes);
    }
    chunks.push(value);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(concat(chunks, size));
  } catch {
    throw invalidJson("The request body is not valid UTF-8.");
  }
  if (nestingDepth(text, maxNesting) > maxNesting) {
    throw new GatewayError({
      status: 400,
      code: "invalid_request",
      message: `The request body is nested more than ${maxNesting} levels deep.`,
    });
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw invalidJson(`The request body is not valid JSON: ${(error as Error).message}.`);
  }
}

/**
 * No real chat request nests deeper than this; a body that does would overflow the stack of
 * every later step that walks it (validation, translation, JSON.stringify).
 */
const maxNesting = 64;

/** How deeply JSON text nests its arrays and objects (stops counting past `limit`). */
function nestingDepth(text: string, limit: number): number {
  let depth = 0, deepest = 0, inString = false;
  for (let i = 0; i < text.length; i++) {
    const char = text.charCodeAt(i);
    if (inString) {
      if (char === 0x5c) i++; // a backslash escapes the next character
      else if (char === 0x22) inString = false;
    } else if (char === 0x22) inString = true;
    else if (char === 0x7b || char === 0x5b) {
      if (++depth > deepest && (deepest = depth) > limit) break;
    } else if (char === 0x7d || char === 0x5d) depth--;
  }
  return deepest;
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

const tooLarge = (maxBytes: number) =>
  new GatewayError({
    status: 413,
    code: "body_too_large",
    message: `The request body is larger than ${maxBytes} bytes.`,
  });

const invalidJson = (message: string) => new GatewayError({ status: 400, code: "invalid_json", message });

/** OpenAI writes reset times as durations: `1s`, `6m0s`, `1h2m3s`. */
export function formatDuration(seconds: number): string {
  const total = Math.max(0, Math.ceil(seconds));
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  return `${h ? `${h}h` : ""}${h || m ? `${m}m` : ""}${s}s`;
}

/**
 * The `x-ratelimit-*` headers as OpenAI names them: requests from the user's tightest
 * window, tokens from the daily token quota. Also `x-tollgate-*` context headers.
 */
export function limitHeaders(admission: Admission, now = Date.now()): Record<string, string> {
  const headers: Record<string, string> = {};
  const tightest = admission.windows.reduce<Admission["windows"][number] | undefined>(
    (best, window) => !best || window.remaining < best.remaining ? window : best,
    undefined,
  );
  if (tightest) {
    headers["x-ratelimit-limit-requests"] = String(tightest.limit);
    headers["x-ratelimit-remaining-requests"] = String(Math.max(0, tightest.remaining));
    headers["x-ratelimit-reset-requests"] = formatDuration((Date.parse(tightest.reset_at) - now) / 1000);
  }
  const daily = admission.tokens?.daily;
  if (daily && daily.limit !== null && daily.remaining !== null) {
    headers["x-ratelimit-limit-tokens"] = String(daily.limit);
    headers["x-ratelimit-remaining-tokens"] = String(Math.max(0, daily.remaining));
    headers["x-ratelimit-reset-tokens"] = formatDuration((Date.parse(daily.reset_at) - now) / 1000);
  }
  if (admission.tier) headers["x-tollgate-tier"] = admission.tier;
  if (admission.warnings.length) {
    headers["x-tollgate-warning"] = admission.warnings.map((warning) => warning.message).join("; ");
  }
  if (admission.restricted) {
    headers["x-tollgate-restricted"] = admission.restricted.reason;
  }
  if (admission.shed) headers["x-tollgate-shed"] = admission.shed;
  if (!admission.allowed && admission.layer) headers["x-tollgate-layer"] = admission.layer;
  if (!admission.allowed && admission.retry_after_seconds !== null) {
    headers["retry-after"] = String(Math.max(1, Math.ceil(admission.retry_after_seconds)));
  }
  return headers;
}
