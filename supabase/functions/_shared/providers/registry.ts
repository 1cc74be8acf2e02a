/**
 * Where each provider named in a route lives and how to authenticate, from the environment
 * (Supabase secrets). `anthropic` speaks the Messages API; every other name is an
 * OpenAI-compatible provider configured by `<NAME>_BASE_URL` and `<NAME>_API_KEY`
 * (`openai` defaults its base URL). Base URLs follow each official SDK's convention:
 * OpenAI's includes `/v1`, Anthropic's does not.
 */
import type { WireFormat } from "../errors.ts";
import * as anthropic from "./anthropic.ts";
import * as openai from "./openai.ts";

export interface ProviderEndpoint {
  name: string;
  format: WireFormat;
  url: string;
  headers: Record<string, string>;
}

export function providerEndpoint(
  name: string,
  env: Record<string, string | undefined>,
): ProviderEndpoint | undefined {
  const prefix = name.toUpperCase().replace(/[^A-Z0-9]/g, "_");
  const apiKey = env[`${prefix}_API_KEY`];
  if (!apiKey) return undefined;
  if (name === "anthropic") {
    const base = (env.ANTHROPIC_BASE_URL ?? anthropic.defaultBaseUrl).replace(/\/$/, "");
    return { name, format: "anthropic", url: base + anthropic.messagesPath, headers: anthropic.buildHeaders(apiKey) };
  }
  const base = env[`${prefix}_BASE_URL`] ?? (name === "openai" ? openai.defaultBaseUrl : undefined);
  if (!base) return undefined;
  return {
    name,
    format: "openai",
    url: base.replace(/\/$/, "") + openai.chatCompletionsPath,
    headers: openai.buildHeaders(apiKey),
  };
}
