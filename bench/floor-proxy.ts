/**
 * The floor: the least a Deno gateway can do. It forwards each request to the provider and
 * streams the answer back — no auth, no parsing, no accounting — so what Tollgate adds on top
 * of this is what its own work costs, not what Deno's HTTP stack costs.
 *
 * Run: deno run -A bench/floor-proxy.ts <provider base URL>  → prints `floor listening on <url>`.
 */
const upstream = Deno.args[0];
if (!upstream) throw new Error("usage: floor-proxy.ts <provider base URL>");

// Connection-scoped headers are not forwarded (RFC 9110 §7.6.1); fetch sets its own.
const hopByHop = ["connection", "keep-alive", "host", "content-length", "transfer-encoding"];

const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
  const url = new URL(request.url);
  const headers = new Headers(request.headers);
  for (const name of hopByHop) headers.delete(name);
  // The body is read whole, as any gateway must before it can look at it; it is small.
  const body = request.method === "GET" || request.method === "HEAD" ? undefined : await request.arrayBuffer();
  const answer = await fetch(`${upstream}${url.pathname}${url.search}`, { method: request.method, headers, body });
  const out = new Headers(answer.headers);
  for (const name of hopByHop) out.delete(name);
  return new Response(answer.body, { status: answer.status, headers: out });
});
console.log(`floor listening on http://127.0.0.1:${server.addr.port}`);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => Deno.exit(0));
}
