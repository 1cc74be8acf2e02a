/**
 * What every provider adapter shares: reading a provider's JSON without trusting it, and the
 * shape of the tracker that follows a provider's stream for settlement.
 */
import type { z } from "zod";
import { GatewayError } from "../errors.ts";
import type { SseEvent } from "../sse.ts";
import type { Usage } from "../usage.ts";

/** A provider answer we cannot read: a 502, never a crash and never a silent zero. */
export function invalidUpstream(detail: string): GatewayError {
  return new GatewayError({
    status: 502,
    code: "upstream_invalid_response",
    message: `The provider sent a response the gateway cannot read: ${detail}.`,
  });
}

export function parseUpstreamJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw invalidUpstream(`not JSON (${(error as Error).message})`);
  }
}

/** `json` checked against `schema`; the provider's fault when it does not fit. */
export function readUpstream<S extends z.ZodType>(schema: S, json: unknown): z.infer<S> {
  const result = schema.safeParse(json);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  throw invalidUpstream(`${issue.path.join(".") || "body"}: ${issue.message}`);
}

/** An error the provider reported inside a stream that had already started. */
export interface UpstreamStreamError {
  type: string;
  message: string;
}

/** The gateway's own error for a provider's in-stream error, to end the client's stream. */
export function upstreamStreamFailure(error: UpstreamStreamError): GatewayError {
  return new GatewayError({
    status: 502,
    code: "upstream_error",
    message: `The provider failed during the response (${error.type}): ${error.message}`,
  });
}

/**
 * Follows a provider's stream event by event, for settlement: what the provider reported
 * as usage, whether the stream ended the way a complete answer ends, and the text produced,
 * from which partial output is estimated when the provider never said.
 */
export interface StreamTracker {
  observe(event: SseEvent): void;
  /** As reported; the fields of a part not reported (see `reported`) are 0. */
  readonly usage: Usage;
  readonly reported: { readonly input: boolean; readonly output: boolean };
  /** True only once the provider's end-of-answer marker arrived. */
  readonly finished: boolean;
  readonly error: UpstreamStreamError | undefined;
  readonly text: string;
}
