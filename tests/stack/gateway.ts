/** Starts the function server (serve.ts) as its own process, as an edge worker would be. */
import { assertPortFree, freePort, type Server, spawnServer } from "./util.ts";

export type GatewayProcess = Server;

const serveScript = new URL("./serve.ts", import.meta.url).pathname;

/**
 * `deno` arguments that run the function server (serve.ts). `gc` is exposed so that the
 * benchmark's soak can measure memory after a full collection (/_stack/memory?collect); the
 * function never calls it.
 */
export const functionServerArgs = ["run", "-A", "--no-prompt", "--v8-flags=--expose-gc", serveScript];

export async function startGateway(env: Record<string, string>, port?: number): Promise<GatewayProcess> {
  if (port === undefined) port = freePort();
  else assertPortFree(port);
  const url = `http://127.0.0.1:${port}`;
  return await spawnServer(Deno.execPath(), functionServerArgs, /listening on/, {
    env: { ...env, PORT: String(port), SUPABASE_URL: env.SUPABASE_URL ?? url },
    url,
  });
}
