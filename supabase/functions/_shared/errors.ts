/**
 * One error type for every failure the gateway answers with. It carries a stable `code`
 * (documented in the README, never renamed) and is rendered in the wire format of the
 * endpoint that was called, in one place: `errorResponse`.
 */

/** The wire format of the endpoint a client called. */
export type WireFormat = "openai" | "anthropic";

export interface GatewayErrorInit {
  status: number;
  /** Stable, machine-readable code, e.g. `rate_limited`, `invalid_request`. */
  code: string;
  message: string;
  /** The request field at fault (dotted path), when there is one. */
  param?: string;
  headers?: Record<string, string>;
  /** The failure underneath, for the gateway's own decisions and logs; never sent to the client. */
  cause?: unknown;
}

export class GatewayError extends Error {
  readonly status: number;
  readonly code: string;
  readonly param?: string;
  readonly headers: Record<string, string>;

  constructor(init: GatewayErrorInit) {
    super(init.message, { cause: init.cause });
    this.name = "GatewayError";
    this.status = init.status;
    this.code = init.code;
    this.param = init.param;
    this.headers = init.headers ?? {};
  }
}

// OpenAI's `type` field and Anthropic's error `type`, per HTTP status.
const openaiTypes = new Map<number, string>([
  [400, "invalid_request_error"],
  [401, "authentication_error"],
  [403, "permission_error"],
  [404, "not_found_error"],
  [413, "invalid_request_error"],
  [415, "invalid_request_error"],
  [429, "rate_limit_error"],
]);
const anthropicTypes = new Map<number, string>([
  [400, "invalid_request_error"],
  [401, "authentication_error"],
  [403, "permission_error"],
  [404, "not_found_error"],
  [413, "request_too_large"],
  [415, "invalid_request_error"],
  [429, "rate_limit_error"],
  [529, "overloaded_error"],
  [503, "overloaded_error"],
]);

/** The error as a JSON body in the given wire format. */
export function errorBody(error: GatewayError, format: WireFormat): unknown {
  if (format === "anthropic") {
    return {
      type: "error",
      error: {
        type: anthropicTypes.get(error.status) ?? "api_error",
        message: error.message,
        code: error.code,
      },
    };
  }
  return {
    error: {
      message: error.message,
      type: openaiTypes.get(error.status) ?? "api_error",
      param: error.param ?? null,
      code: error.code,
    },
  };
}

export function errorResponse(
  error: GatewayError,
  format: WireFormat,
  headers: HeadersInit = {},
): Response {
  const merged = new Headers(headers);
  for (const [name, value] of Object.entries(error.headers)) merged.set(name, value);
  merged.set("content-type", "application/json");
  return new Response(JSON.stringify(errorBody(error, format)), {
    status: error.status,
    headers: merged,
  });
}
