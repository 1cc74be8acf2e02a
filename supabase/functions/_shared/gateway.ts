/**
 * Tollgate's request path: routes, shared per-isolate state, and the one place where a
 * GatewayError becomes a response in the wire format of the endpoint that was called.
 *
 *   POST /ai/v1/chat/completions   OpenAI Chat Completions (stream on or off)
 *   POST /ai/v1/messages           Anthropic Messages (stream on or off)
 *   POST /ai/v1/estimate           would this call be admitted, and at what cost? (reserves nothing)
 *   GET  /ai/v1/models             the models this caller may use
 *   GET  /ai/v1/usage              the caller's limits, what remains, when they reset, spend
 */
import { type Caller, createVerifier } from "./auth.ts";
import { type Config, readConfig } from "./config.ts";
import { connectLedger, type Ledger } from "./db.ts";
import { errorResponse, GatewayError, type WireFormat } from "./errors.ts";
import { corsHeaders } from "./http.ts";
import { handleCompletion, handleEstimate } from "./completion.ts";
import { handleModels, handleUsage } from "./account.ts";
import { type AlertCourier, createAlertCourier } from "./alerts.ts";
import { createKeyRegistry } from "./key_registry.ts";
import type { RouteStep } from "./ledger.ts";

/** What every handler may use; built once per isolate. */
export interface Context {
  config: Config;
  verify: (request: Request) => Promise<Caller>;
  ledger: Ledger;
  /** Registers the keys of a route's providers with the database (once per provider). */
  registerKeys: (route: RouteStep[]) => void;
  requestId: string;
  /** performance.now() when the request arrived, for x-tollgate-overhead-ms. */
  startedAt: number;
}

type Handler = (request: Request, context: Context) => Promise<Response>;

const routes: Record<string, { method: string; format: WireFormat; handler: Handler }> = {
  "chat/completions": { method: "POST", format: "openai", handler: (r, c) => handleCompletion(r, c, "openai") },
  "messages": { method: "POST", format: "anthropic", handler: (r, c) => handleCompletion(r, c, "anthropic") },
  "estimate": { method: "POST", format: "openai", handler: handleEstimate },
  "models": { method: "GET", format: "openai", handler: handleModels },
  "usage": { method: "GET", format: "openai", handler: handleUsage },
};

export function createGateway(env: Record<string, string | undefined>) {
  let shared: (Omit<Context, "requestId" | "startedAt"> & { alerts?: AlertCourier }) | GatewayError | undefined;

  // Built on first use, so that a misconfigured deployment answers with a clear error
  // instead of failing to boot.
  function isolateState() {
    if (shared) return shared;
    try {
      const config = readConfig(env);
      const ledger = connectLedger(config.dbUrl, { viaPooler: config.dbViaPooler });
      shared = {
        config,
        verify: createVerifier(config),
        ledger,
        registerKeys: createKeyRegistry(config.env, ledger),
        // Budget alerts are delivered by the function when the database cannot (see alerts.ts).
        alerts: config.alertWebhookUrl
          ? createAlertCourier(ledger, { webhookUrl: config.alertWebhookUrl, pollSeconds: config.alertPollSeconds })
          : undefined,
      };
    } catch (error) {
      console.error((error as Error).message);
      shared = new GatewayError({
        status: 500,
        code: "gateway_misconfigured",
        message: `The gateway is misconfigured: ${(error as Error).message}. See the README's settings.`,
      });
    }
    return shared;
  }

  async function fetch(request: Request): Promise<Response> {
    const startedAt = performance.now();
    const requestId = crypto.randomUUID();
    const url = new URL(request.url);
    const name = url.pathname.match(/\/v1\/(chat\/completions|messages|estimate|models|usage)\/?$/)?.[1];
    const route = name ? routes[name] : undefined;
    const format = route?.format ?? (url.pathname.endsWith("/messages") ? "anthropic" : "openai");
    const state = isolateState();
    const cors = state instanceof GatewayError
      ? corsHeaders(request, ["*"])
      : corsHeaders(request, state.config.corsOrigins);
    const common = { ...cors, "x-request-id": requestId, "request-id": requestId };

    if (request.method === "OPTIONS") return new Response(null, { status: 204, headers: common });
    let response: Response;
    try {
      if (state instanceof GatewayError) throw state;
      if (!route) {
        throw new GatewayError({ status: 404, code: "not_found", message: `No endpoint at ${url.pathname}.` });
      }
      if (request.method !== route.method) {
        throw new GatewayError({
          status: 405,
          code: "method_not_allowed",
          message: `${url.pathname} accepts ${route.method} only.`,
          headers: { allow: `${route.method}, OPTIONS` },
        });
      }
      response = await route.handler(request, { ...state, requestId, startedAt });
    } catch (error) {
      response = errorResponse(asGatewayError(error, requestId), format);
    }
    for (const [header, value] of Object.entries(common)) response.headers.set(header, value);
    if (!response.headers.has("x-tollgate-overhead-ms")) {
      response.headers.set("x-tollgate-overhead-ms", (performance.now() - startedAt).toFixed(1));
    }
    if (!(state instanceof GatewayError)) state.alerts?.afterRequest();
    return response;
  }

  return { fetch };
}

/** Anything that is not already a GatewayError is a bug: logged whole, answered without detail. */
function asGatewayError(error: unknown, requestId: string): GatewayError {
  if (error instanceof GatewayError) return error;
  console.error(`request ${requestId} failed:`, error);
  return new GatewayError({
    status: 500,
    code: "internal_error",
    message: `The gateway failed unexpectedly; the request id is ${requestId}.`,
  });
}
