/**
 * Serves the `ai` edge function the way Supabase does, without Docker:
 *   /functions/v1/ai/...              -> the function (which sees the path as /ai/...)
 *   /auth/v1/.well-known/jwks.json    -> the project's public signing keys
 *   /_stack/memory[?collect]          -> the function's isolate memory (for the benchmark's soak),
 *                                        with `collect` after a full garbage collection
 * and gives it what the edge runtime provides: `EdgeRuntime.waitUntil` and the
 * `SUPABASE_*` environment (set by the caller). The function's code has no local branch.
 *
 * Run: deno run -A tests/stack/serve.ts   (env: PORT, SUPABASE_URL, SUPABASE_DB_URL, SUPABASE_JWKS, …)
 */

const pending = new Set<Promise<unknown>>();
Object.defineProperty(globalThis, "EdgeRuntime", {
  value: {
    waitUntil(promise: Promise<unknown>) {
      const tracked = promise.catch((error) => console.error("waitUntil task failed:", error))
        .finally(() => pending.delete(tracked));
      pending.add(tracked);
    },
  },
});

const { default: fn } = await import("../../supabase/functions/ai/index.ts");
const jwks = Deno.env.get("SUPABASE_JWKS") ?? '{"keys":[]}';
const staticRoot = Deno.env.get("TOLLGATE_STATIC_DIR");

const controller = new AbortController();
const server = Deno.serve({
  hostname: "127.0.0.1",
  port: Number(Deno.env.get("PORT") ?? 54321),
  signal: controller.signal,
  onListen: ({ port }) => console.log(`listening on http://127.0.0.1:${port}`),
}, async (request) => {
  const url = new URL(request.url);
  if (url.pathname === "/auth/v1/.well-known/jwks.json") {
    return new Response(jwks, { headers: { "content-type": "application/json" } });
  }
  if (url.pathname === "/_stack/memory") {
    // What Supabase's edge runtime counts against a worker's 256 MB: its used V8 heap and its
    // external memory (array buffers), not the process's RSS, most of which here is the Deno
    // runtime itself (the platform shares it between workers). A leak shows in what is left
    // after a full collection; in between, memory follows the collector up and down.
    if (url.searchParams.has("collect")) collectGarbage();
    const { heapUsed, external } = Deno.memoryUsage();
    return Response.json({ heapUsed, external });
  }
  if (url.pathname.startsWith("/functions/v1/")) {
    return await fn.fetch(asFunctionRequest(request, request.url.replace("/functions/v1/", "/")));
  }
  if (staticRoot && request.method === "GET") return await serveStatic(staticRoot, url.pathname);
  return Response.json({ error: "not found" }, { status: 404 });
});

/** A full garbage collection: `gc` is there when the server runs with --v8-flags=--expose-gc. */
function collectGarbage(): void {
  const { gc } = globalThis as { gc?: () => void };
  if (!gc) throw new Error("/_stack/memory?collect needs the server started with --v8-flags=--expose-gc");
  gc();
}

/**
 * The request as the function receives it on the platform: the same request, at its URL
 * without the `/functions/v1` prefix. A view, not `new Request(url, request)`: that copies
 * the headers and wraps the body and signal in the function's isolate, work the platform does
 * elsewhere (its router and main worker), and the benchmark would count it against the
 * function (about a tenth of its CPU per request).
 */
function asFunctionRequest(request: Request, url: string): Request {
  return new Proxy(request, {
    get(target, property) {
      if (property === "url") return url;
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

async function serveStatic(root: string, path: string): Promise<Response> {
  const types: Record<string, string> = {
    html: "text/html; charset=utf-8",
    js: "text/javascript",
    css: "text/css",
    json: "application/json",
  };
  const file = path === "/" ? "/index.html" : path;
  if (file.includes("..")) return new Response("bad path", { status: 400 });
  try {
    const body = await Deno.readFile(`${root}${file}`);
    return new Response(body, {
      headers: { "content-type": types[file.split(".").pop()!] ?? "application/octet-stream" },
    });
  } catch {
    return new Response("not found", { status: 404 });
  }
}

// The hosted runtime lets background work finish before a worker retires; do the same on shutdown.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    controller.abort();
    globalThis.dispatchEvent(new Event("beforeunload"));
    await Promise.allSettled([...pending]);
    await server.finished;
    Deno.exit(0);
  });
}
