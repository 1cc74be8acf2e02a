/**
 * What gateway tests share: the stack the runner started (TOLLGATE_STACK), users with access
 * tokens, a private provider stand-in + function server per test file (so a test can read
 * what reached the provider and set the function's environment), and a way to wait for a
 * call's settlement.
 */
import { connectAdmin, createUser as createDbUser, dbTest, stack, type UserOptions } from "./fixtures.ts";
import { signAccessToken } from "./keys.ts";
import { functionServerArgs, type GatewayProcess, startGateway } from "./gateway.ts";
import { DEFAULT_API_KEY, type ProviderServer, startProvider } from "./provider.ts";
import { freePort, stopProcess } from "./util.ts";

export { stack };

/** Superuser connection (creates auth.users rows, reads every table). */
export const admin = connectAdmin(4);

/** Integration tests hold pools and servers across tests: Deno's per-test sanitizers do not apply. */
export const integration = dbTest;

export interface TestUser {
  id: string;
  token: string;
}

/** A signed-in user: a row in auth.users (on `tier` if given) and an access token for it. */
export async function createUser(options: UserOptions = {}): Promise<TestUser> {
  const id = await createDbUser(options);
  const token = await signAccessToken(stack.signingKey, stack.supabaseUrl, {
    sub: id,
    email: `${id}@example.test`,
    is_anonymous: options.anonymous ?? false,
  });
  return { id, token };
}

export interface TestGateway {
  /** SUPABASE_URL of this function server. */
  url: string;
  /** OpenAI SDK base URL. */
  openaiBase: string;
  /** Anthropic SDK base URL. */
  anthropicBase: string;
  provider: ProviderServer;
  process: GatewayProcess;
}

const running: GatewayProcess[] = [];
// Function servers are child processes: end them with the test process.
globalThis.addEventListener("unload", () => {
  for (const gateway of running) {
    try {
      Deno.kill(gateway.pid, "SIGKILL");
    } catch { /* already gone */ }
  }
});

/**
 * A function server of its own, in front of a provider stand-in of its own. `env` may depend on
 * the stand-in's URL (for providers of a test's own, configured by `<NAME>_BASE_URL`).
 */
export async function startTestGateway(
  env: Record<string, string> | ((providerUrl: string) => Record<string, string>) = {},
): Promise<TestGateway> {
  const provider = await startProvider();
  const process = await startGateway({
    ...stack.functionEnv,
    OPENAI_API_KEY: DEFAULT_API_KEY,
    OPENAI_BASE_URL: `${provider.url}/v1`,
    ANTHROPIC_API_KEY: DEFAULT_API_KEY,
    ANTHROPIC_BASE_URL: provider.url,
    // Tokens are issued for the main stack's URL: keep it as this server's SUPABASE_URL too.
    SUPABASE_URL: stack.supabaseUrl,
    ...(typeof env === "function" ? env(provider.url) : env),
  });
  running.push(process);
  return {
    url: process.url,
    openaiBase: `${process.url}/functions/v1/ai/v1`,
    anthropicBase: `${process.url}/functions/v1/ai`,
    provider,
    process,
  };
}

/**
 * A model of its own, routed to OpenAI first and Anthropic second, with prices: tests that make
 * providers fail use one so that the circuit breakers they open are theirs alone.
 */
export async function isolatedModel(): Promise<{ model: string; primary: string; fallback: string }> {
  const model = `test-${crypto.randomUUID().slice(0, 8)}`;
  const primary = `${model}-primary`, fallback = `${model}-fallback`;
  await admin.begin(async (sql) => {
    await sql`insert into tollgate.routes (model, description) values (${model}, 'test route')`;
    await sql`
      insert into tollgate.route_targets (route_model, position, provider, model)
      values (${model}, 1, 'openai', ${primary}), (${model}, 2, 'anthropic', ${fallback})`;
    await sql`
      insert into tollgate.model_prices (provider, model, input_per_mtok, output_per_mtok)
      values ('openai', ${primary}, 1, 2), ('anthropic', ${fallback}, 1, 2)`;
  });
  return { model, primary, fallback };
}

export type CallRow = Record<string, unknown> & { request_id: string; status: string };

/** The ai_api_calls row of a request, once settlement (after the response) has written it. */
export async function settledCall(requestId: string | null, timeoutMs = 10_000): Promise<CallRow> {
  if (!requestId) throw new Error("the response carried no request id");
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const [row] = await admin<CallRow[]>`select * from public.ai_api_calls where request_id = ${requestId}`;
    if (row) return row;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`request ${requestId} was never settled`);
}

/** A user's first `count` settled calls, oldest first. */
export async function settledCallsOf(userId: string, count: number, timeoutMs = 10_000): Promise<CallRow[]> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const rows = await admin<CallRow[]>`
      select * from public.ai_api_calls where user_id = ${userId} order by created_at, id`;
    if (rows.length >= count) return rows;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`user ${userId} has fewer than ${count} settled calls`);
}

/** A chat message that makes the provider stand-in behave as told (see provider.ts). */
export const prompt = (text: string, directives = "") => `${text}${directives ? ` [[mock ${directives}]]` : ""}`;

// ─────────────────────────────────────────────────────────────────────────────────────────
// Added for the resilience and bad-input suites (tests/resilience_test.ts, tests/bad_input_test.ts).
// ─────────────────────────────────────────────────────────────────────────────────────────

export interface LoggedTestGateway extends TestGateway {
  /** Every line the function process wrote (stdout and stderr), in arrival order. */
  log: string[];
  /** Whether the function process is still running. */
  alive(): boolean;
}

const maxLogLines = 200_000;

/**
 * Like startTestGateway, but the function's output is captured instead of printed: a soak that
 * injects thousands of provider faults would print thousands of warnings, and a test can search
 * the log for what must never happen (an unexpected exception, a crash).
 */
export async function startLoggedTestGateway(env: Record<string, string> = {}): Promise<LoggedTestGateway> {
  const provider = await startProvider();
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = new Deno.Command(Deno.execPath(), {
    args: functionServerArgs,
    env: {
      ...stack.functionEnv,
      OPENAI_API_KEY: DEFAULT_API_KEY,
      OPENAI_BASE_URL: `${provider.url}/v1`,
      ANTHROPIC_API_KEY: DEFAULT_API_KEY,
      ANTHROPIC_BASE_URL: provider.url,
      SUPABASE_URL: stack.supabaseUrl,
      ...env,
      PORT: String(port),
    },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let exited = false;
  child.status.then(() => exited = true);
  const log: string[] = [];
  let listening!: () => void;
  const ready = new Promise<void>((resolve) => listening = resolve);
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    let partial = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const lines = (partial + text).split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        if (line.includes("listening on")) listening();
        if (log.length < maxLogLines) log.push(line);
      }
    }
    if (partial && log.length < maxLogLines) log.push(partial);
  };
  const drained = Promise.all([collect(child.stdout), collect(child.stderr)]);
  const started = await Promise.race([ready.then(() => true), child.status.then(() => false)]);
  if (!started) throw new Error(`the function server exited before listening:\n${log.join("\n")}`);
  const process: GatewayProcess = {
    url,
    pid: child.pid,
    async stop() {
      await stopProcess(child);
      await drained;
    },
  };
  running.push(process);
  return {
    url,
    openaiBase: `${url}/functions/v1/ai/v1`,
    anthropicBase: `${url}/functions/v1/ai`,
    provider,
    process,
    log,
    alive: () => !exited,
  };
}

/**
 * Lines of a function log that must never appear: an exception the gateway did not turn into a
 * planned answer (gateway.ts logs it as `request <id> failed:`), a background task that threw,
 * a settlement that gave up, a crash.
 */
export const unexpectedFailure =
  /request [0-9a-f-]{36} failed:|waitUntil task failed|failed for good|Uncaught|panicked|out of memory/;
