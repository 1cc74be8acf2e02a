/**
 * What gateway tests share: the stack the runner started (TOLLGATE_STACK), users with access
 * tokens, a private provider stand-in + function server per test file (so a test can read
 * what reached the provider and set the function's environment), and a way to wait for a
 * call's settlement.
 */
import postgres from "postgres";
import { signAccessToken } from "./keys.ts";
import { type GatewayProcess, startGateway } from "./gateway.ts";
import { DEFAULT_API_KEY, type ProviderServer, startProvider } from "./provider.ts";
import type { StackInfo } from "./stack.ts";

const stackJson = Deno.env.get("TOLLGATE_STACK");
if (!stackJson) throw new Error("TOLLGATE_STACK is not set: run the tests with `npm test`.");
export const stack: StackInfo = JSON.parse(stackJson);

/** Superuser connection (creates auth.users rows, reads every table). */
export const admin = postgres(stack.adminDbUrl, { max: 4, onnotice: () => {} });

/** Integration tests hold pools and servers across tests: Deno's per-test sanitizers do not apply. */
export function integration(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: false, sanitizeResources: false });
}

export interface TestUser {
  id: string;
  token: string;
}

/** A signed-in user (a row in auth.users and an access token), optionally on a given tier. */
export async function createUser(options: { anonymous?: boolean; tier?: string } = {}): Promise<TestUser> {
  const id = crypto.randomUUID();
  await admin`
    insert into auth.users (id, aud, role, email, is_anonymous)
    values (${id}, 'authenticated', 'authenticated', ${`${id}@example.test`}, ${options.anonymous ?? false})`;
  if (options.tier) {
    await admin`insert into tollgate.user_plans (user_id, tier) values (${id}, ${options.tier})`;
  }
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

/** A function server of its own, in front of a provider stand-in of its own. */
export async function startTestGateway(env: Record<string, string> = {}): Promise<TestGateway> {
  const provider = await startProvider();
  const process = await startGateway({
    ...stack.functionEnv,
    OPENAI_API_KEY: DEFAULT_API_KEY,
    OPENAI_BASE_URL: `${provider.url}/v1`,
    ANTHROPIC_API_KEY: DEFAULT_API_KEY,
    ANTHROPIC_BASE_URL: provider.url,
    // Tokens are issued for the main stack's URL: keep it as this server's SUPABASE_URL too.
    SUPABASE_URL: stack.supabaseUrl,
    ...env,
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
