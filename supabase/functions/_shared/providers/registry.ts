/**
 * Where each provider named in a route lives and how to authenticate, from the environment
 * (Supabase secrets). `anthropic` speaks the Messages API; every other name is an
 * OpenAI-compatible provider configured by `<NAME>_BASE_URL` and its keys (`<NAME>_API_KEY`,
 * `<NAME>_API_KEY_<LABEL>`: see keys.ts); `openai` defaults its base URL. Base URLs follow each
 * official SDK's convention: OpenAI's includes `/v1`, Anthropic's does not.
 */
import type { WireFormat } from "../errors.ts";
import * as anthropic from "./anthropic.ts";
import { envPrefix, type ProviderKey, providerKeys } from "./keys.ts";
import * as openai from "./openai.ts";

export interface ProviderEndpoint {
  name: string;
  format: WireFormat;
  url: string;
  /** Carry the key's secret: never log them. */
  headers: Record<string, string>;
  /** The label of the key in `headers` (keys.ts). */
  keyLabel: string;
}

// An isolate's environment does not change, and reading the keys out of it (a walk over
// every variable, a SHA-256 per key) would otherwise be paid by every call.
const endpointsByEnv = new WeakMap<Record<string, string | undefined>, Map<string, readonly ProviderEndpoint[]>>();

/** The provider's endpoint once per configured key, in the keys' order; empty when unusable. */
export function providerEndpoints(
  name: string,
  env: Record<string, string | undefined>,
): readonly ProviderEndpoint[] {
  let known = endpointsByEnv.get(env);
  if (!known) endpointsByEnv.set(env, known = new Map());
  let endpoints = known.get(name);
  if (!endpoints) {
    const base = baseUrl(name, env);
    endpoints = base ? providerKeys(name, env).map((key) => endpointWith(name, base, key)) : [];
    known.set(name, endpoints);
  }
  return endpoints;
}

const defaultBaseUrls = new Map([["openai", openai.defaultBaseUrl], ["anthropic", anthropic.defaultBaseUrl]]);

function baseUrl(name: string, env: Record<string, string | undefined>): string | undefined {
  return (env[`${envPrefix(name)}_BASE_URL`] ?? defaultBaseUrls.get(name))?.replace(/\/$/, "");
}

function endpointWith(name: string, base: string, key: ProviderKey): ProviderEndpoint {
  return name === "anthropic"
    ? {
      name,
      format: "anthropic",
      url: base + anthropic.messagesPath,
      headers: anthropic.buildHeaders(key.secret),
      keyLabel: key.label,
    }
    : {
      name,
      format: "openai",
      url: base + openai.chatCompletionsPath,
      headers: openai.buildHeaders(key.secret),
      keyLabel: key.label,
    };
}
