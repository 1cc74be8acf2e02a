/** Starts the function server (serve.ts) as its own process, as an edge worker would be. */
import { assertPortFree, freePort } from "./util.ts";

export interface GatewayProcess {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

const serveScript = new URL("./serve.ts", import.meta.url).pathname;

export async function startGateway(env: Record<string, string>, port?: number): Promise<GatewayProcess> {
  if (port === undefined) port = freePort();
  else assertPortFree(port);
  const url = `http://127.0.0.1:${port}`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-prompt", serveScript],
    env: { ...env, PORT: String(port), SUPABASE_URL: env.SUPABASE_URL ?? url },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("listening on")) {
    const { value, done } = await lines.read();
    if (done) throw new Error(`the function server exited before listening:\n${seen}`);
    seen += value;
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  (async () => {
    for (;;) {
      const { value, done } = await lines.read();
      if (done) break;
      await Deno.stdout.write(new TextEncoder().encode(value));
    }
  })();
  return {
    url,
    pid: child.pid,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* already exited */ }
      await child.status;
    },
  };
}
