/**
 * Sending an admitted call upstream: along the route admission returned (fallback chain with
 * circuit-breaker states, a provider key per step), with retries and backoff per provider,
 * failover to the provider's other keys when one is refused, translating the request when the
 * provider speaks the other wire format. Retries happen only here, before a byte has gone to
 * the client; once an answer is handed back, it is committed.
 */
import { GatewayError, type WireFormat } from "./errors.ts";
import type { AttemptOutcome, RouteStep } from "./ledger.ts";
import { rateLimitSnapshot } from "./providers/ratelimit.ts";
import { type ProviderEndpoint, providerEndpoints } from "./providers/registry.ts";
import { withStreamUsage } from "./providers/openai.ts";
import { anthropicToOpenAIRequest, openaiToAnthropicRequest } from "./providers/translate/requests.ts";
import { isRetryableStatus, nextDelay, retryAfterMs } from "./retry.ts";
import { sleep } from "./runtime.ts";
import type { AnthropicMessagesRequest, OpenAIChatRequest } from "./schemas.ts";
import { UpstreamBody } from "./streaming.ts";

/** The call as the client made it, after admission's caps were applied. */
export interface CallPlan {
  format: WireFormat;
  body: OpenAIChatRequest | AnthropicMessagesRequest;
  stream: boolean;
  /** The end user as providers see it (OpenAI `user`, Anthropic `metadata.user_id`). */
  endUser: string;
}

export interface Timeouts {
  /** Per attempt, until the provider's response headers (and, for JSON answers, its body). */
  attemptMs: number;
  /** For all attempts and fallbacks together: stays under the edge runtime's 150 s idle timeout. */
  deadlineMs: number;
}

export interface Answer {
  endpoint: ProviderEndpoint;
  step: RouteStep;
  response: Response;
  /** A streamed body, its first chunk already read to make sure the stream really started. */
  body?: UpstreamBody;
  /** Whether an OpenAI-format client asked for the usage chunk itself. */
  clientAskedUsage: boolean;
  /** Aborts the upstream request (client gone, stream timeout). */
  abort: AbortController;
  outcomes: AttemptOutcome[];
  /** Time spent waiting on providers, for x-tollgate-overhead-ms. */
  providerMs: number;
}

/** Every provider failed: the error to answer with, and what was tried (for settlement). */
export class DispatchFailure extends Error {
  constructor(readonly error: GatewayError, readonly outcomes: AttemptOutcome[], readonly timedOut: boolean) {
    super(error.message);
  }
}

export async function dispatch(
  plan: CallPlan,
  route: RouteStep[],
  env: Record<string, string | undefined>,
  timeouts: Timeouts,
  clientSignal: AbortSignal,
): Promise<Answer> {
  const started = performance.now();
  const outcomes: AttemptOutcome[] = [];
  let providerMs = 0;
  let rejection: GatewayError | undefined;
  let retryAfterSeconds = 0;
  let timedOut = false;

  // Keys that answered 401/403 in this request ("provider/label"): no later step tries them again.
  const refused = new Set<string>();

  for (const step of route) {
    if (performance.now() - started >= timeouts.deadlineMs) break;
    if (step.state === "open" && !step.probe) continue;
    const keys = keyOrder(step, env, refused);
    let endpoint = keys.shift();
    if (!endpoint) continue;
    // The body depends on the provider's format only, the same for each of its keys.
    const { body, clientAskedUsage } = upstreamBody(plan, endpoint, step.model);
    const payload = JSON.stringify(body);

    for (let attempt = 1;;) {
      if (clientSignal.aborted) throw new DispatchFailure(clientGone(), outcomes, false);
      const abort = new AbortController();
      const onClientGone = () => abort.abort(new DOMException("client closed", "AbortError"));
      clientSignal.addEventListener("abort", onClientGone, { once: true });
      const elapsed = performance.now() - started;
      const timer = setTimeout(
        () => abort.abort(new DOMException("attempt timed out", "TimeoutError")),
        Math.max(0, Math.min(timeouts.attemptMs, timeouts.deadlineMs - elapsed)),
      );
      const sentAt = performance.now();
      let failure: { status?: number; headers: Headers } | undefined;
      let received: Received | undefined;
      try {
        const response = await fetch(endpoint.url, {
          method: "POST",
          headers: endpoint.headers,
          body: payload,
          signal: abort.signal,
        });
        received = { headers: response.headers, at: new Date() };
        if (response.ok) {
          const answer: Answer = {
            endpoint,
            step,
            response,
            clientAskedUsage,
            abort,
            outcomes,
            providerMs: 0,
          };
          if (plan.stream && response.body) {
            // Read the first chunk before committing: a stream that dies at once is retried.
            const body = new UpstreamBody(response.body);
            if (!await body.started()) throw new TypeError("the provider closed the stream before sending anything");
            answer.body = body;
          }
          clearTimeout(timer);
          outcomes.push(attemptOutcome(step, endpoint, response.status, received));
          answer.providerMs = providerMs + (performance.now() - sentAt);
          return answer;
        }
        failure = { status: response.status, headers: response.headers };
        const detail = await response.text().catch(() => "");
        if (!isRetryableStatus(response.status) && response.status !== 401 && response.status !== 403) {
          // The provider refused the request itself: another provider would refuse it too.
          rejection = upstreamRejected(response.status, detail);
        }
      } catch (error) {
        if (clientSignal.aborted) throw new DispatchFailure(clientGone(), outcomes, false);
        const reason = abort.signal.reason as DOMException | undefined;
        if (reason?.name === "TimeoutError") timedOut = true;
        console.warn(`${step.provider}/${step.model}: ${(error as Error).message}`);
        failure = { headers: new Headers() };
      } finally {
        clearTimeout(timer);
        clientSignal.removeEventListener("abort", onClientGone);
        providerMs += performance.now() - sentAt;
      }

      const outcome = attemptOutcome(step, endpoint, failure.status ?? null, received);
      outcomes.push(outcome);
      retryAfterSeconds = Math.max(retryAfterSeconds, (outcome.retry_after_ms ?? 0) / 1000);
      if (rejection) throw new DispatchFailure(rejection, outcomes, false);
      if (failure.status === 401 || failure.status === 403) {
        // This key is refused; retrying it cannot help. The provider's next key may, at once and
        // without using up a retry; with none left, the next step of the route.
        console.warn(`${step.provider}: key "${endpoint.keyLabel}" refused (${failure.status})`);
        refused.add(keyId(endpoint));
        endpoint = keys.shift();
        if (!endpoint || performance.now() - started >= timeouts.deadlineMs) break;
        continue;
      }
      const decision = nextDelay({
        attempt,
        status: failure.status,
        headers: failure.headers,
        elapsedMs: performance.now() - started,
        deadlineMs: timeouts.deadlineMs,
      });
      // No retry left here: the next provider in the route, if there is time for it.
      if (!decision.retry) break;
      await sleep(decision.delayMs, clientSignal);
      attempt++;
    }
  }

  const error = timedOut && outcomes.length > 0
    ? new GatewayError({
      status: 504,
      code: "provider_timeout",
      message: "No provider answered in time; try again, perhaps with a shorter request.",
    })
    : new GatewayError({
      status: 503,
      code: "provider_unavailable",
      message: outcomes.length
        ? "Every provider for this model failed; try again shortly."
        : "No provider for this model is available right now (unconfigured, or paused after repeated failures).",
      headers: { "retry-after": String(Math.max(1, Math.ceil(retryAfterSeconds)) || 5) },
    });
  throw new DispatchFailure(error, outcomes, timedOut);
}

/** The provider's response headers and when they arrived. */
interface Received {
  headers: Headers;
  at: Date;
}

/**
 * One attempt as settlement records it (plain JSON; the key by its label only), with the
 * provider's rate-limit headers, which a refusal carries too, and its retry-after on a failure.
 */
function attemptOutcome(
  step: RouteStep,
  endpoint: ProviderEndpoint,
  status: number | null,
  received: Received | undefined,
): AttemptOutcome {
  const ok = status !== null && status >= 200 && status < 300;
  return {
    provider: step.provider,
    model: step.model,
    ok,
    status,
    key: endpoint.keyLabel,
    at: received?.at.toISOString() ?? null,
    ratelimit: received ? rateLimitSnapshot(endpoint.format, received.headers, received.at) : null,
    retry_after_ms: received && !ok ? retryAfterMs(received.headers, received.at.getTime()) ?? null : null,
  };
}

/**
 * The keys to try for a step, as endpoints: the one admission chose (the first configured key
 * when it chose none, or one not configured here), then the provider's others in their order;
 * none that was refused earlier in this request.
 */
function keyOrder(step: RouteStep, env: Record<string, string | undefined>, refused: Set<string>): ProviderEndpoint[] {
  const endpoints = providerEndpoints(step.provider, env).filter((endpoint) => !refused.has(keyId(endpoint)));
  const chosen = endpoints.find((endpoint) => endpoint.keyLabel === step.key);
  return chosen ? [chosen, ...endpoints.filter((endpoint) => endpoint !== chosen)] : endpoints;
}

const keyId = (endpoint: ProviderEndpoint) => `${endpoint.name}/${endpoint.keyLabel}`;

/** The request body for one provider: translated if needed, with the route's model. */
function upstreamBody(
  plan: CallPlan,
  endpoint: ProviderEndpoint,
  model: string,
): { body: OpenAIChatRequest | AnthropicMessagesRequest; clientAskedUsage: boolean } {
  if (endpoint.format === "anthropic") {
    const body = plan.format === "anthropic"
      ? plan.body as AnthropicMessagesRequest
      : openaiToAnthropicRequest(plan.body as OpenAIChatRequest);
    const clientAskedUsage = plan.format === "openai" &&
      (plan.body as OpenAIChatRequest).stream_options?.include_usage === true;
    return { body: { ...body, model, metadata: { ...body.metadata, user_id: plan.endUser } }, clientAskedUsage };
  }
  const body = plan.format === "openai"
    ? plan.body as OpenAIChatRequest
    : anthropicToOpenAIRequest(plan.body as AnthropicMessagesRequest);
  const withUsage = withStreamUsage({ ...body, model, user: plan.endUser });
  return { body: withUsage.body, clientAskedUsage: plan.format === "openai" && withUsage.clientAskedUsage };
}

/**
 * The provider's own complaint about the request, passed on without anything that could
 * identify our key or account.
 */
function upstreamRejected(status: number, detail: string): GatewayError {
  let message = detail.slice(0, 2000);
  try {
    const json = JSON.parse(detail);
    message = json?.error?.message ?? json?.message ?? message;
  } catch { /* not JSON: the text itself is the message */ }
  message = String(message).replace(/\b(sk|sk-ant|key)[-_][A-Za-z0-9*_-]{6,}/g, "[redacted]");
  return new GatewayError({
    status: status === 404 || status === 413 || status === 422 ? status : 400,
    code: "upstream_rejected",
    message: `The provider rejected the request: ${message}`,
  });
}

export const clientGone = () =>
  new GatewayError({ status: 499, code: "client_closed", message: "The client went away." });
