/**
 * The local provider (tests/stack/provider.ts) in a process of its own, for the benchmarks:
 * every target is measured against this one server, and it must not share an event loop with
 * the load generator or a gateway. It forgets its request log every second, which the tests
 * read but a benchmark would only grow into hundreds of MB over a soak.
 *
 * Run: deno run -A bench/provider.ts   → prints `provider listening on <url>`, stops on SIGTERM.
 */
import { startProvider } from "../tests/stack/provider.ts";

const server = await startProvider({ hostname: "127.0.0.1" });
setInterval(() => server.reset(), 1000);
console.log(`provider listening on ${server.url}`);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => server.close().then(() => Deno.exit(0)));
}
