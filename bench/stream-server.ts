/**
 * One way of passing a provider's stream on, served alone for the stream pipeline section
 * (bench/streaming.ts), which measures its CPU per stream over real connections:
 *   untouched  the provider's body handed to the response as it is: Deno pipes it without
 *              JavaScript (what the floor does)
 *   pipe       the same body through a TransformStream that looks at nothing: what any
 *              proxy that touches a stream in JavaScript pays
 *   tollgate   the function's stream pipeline (supabase/functions/_shared/streaming.ts), as it
 *              serves an OpenAI client from an OpenAI provider
 *
 * Run: deno run -A bench/stream-server.ts <provider base URL> <variant>
 *      → prints `stream server listening on <url>`; POST a chat completion with `stream: true`.
 */
import { clientStream, UpstreamBody } from "../supabase/functions/_shared/streaming.ts";

const [upstream, variant] = Deno.args;
if (!upstream || !["untouched", "pipe", "tollgate"].includes(variant)) {
  throw new Error("usage: stream-server.ts <provider base URL> untouched|pipe|tollgate");
}

const sse = { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" };

const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
  const body = await request.arrayBuffer();
  const abort = new AbortController();
  const answer = await fetch(`${upstream}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: request.headers.get("authorization") ?? "" },
    body,
    signal: abort.signal,
  });
  if (!answer.ok || !answer.body) return new Response(answer.body, { status: answer.status });
  if (variant === "untouched") return new Response(answer.body, { headers: sse });
  if (variant === "pipe") return new Response(answer.body.pipeThrough(new TransformStream()), { headers: sse });
  const upstreamBody = new UpstreamBody(answer.body);
  if (!await upstreamBody.started()) return new Response("the provider sent nothing", { status: 502 });
  const stream = clientStream({
    upstream: upstreamBody,
    upstreamFormat: "openai",
    clientFormat: "openai",
    clientAskedUsage: false,
    abort,
    idleTimeoutMs: 60_000,
    maxDurationMs: 600_000,
    onEnd: (end) => {
      if (end.outcome !== "complete") console.error(`a stream ended ${end.outcome}`);
    },
  });
  return new Response(stream, { headers: sse });
});
console.log(`stream server listening on http://127.0.0.1:${server.addr.port}`);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => Deno.exit(0));
}
