/**
 * The whole local stack: PostgreSQL (bootstrapped like Supabase's, migrated with the CLI),
 * the local provider server when no real provider key is set, and the `ai` function served
 * under Supabase's URL layout. Used by the dev command, the test runner and the benchmarks.
 */
import { type Cluster, startCluster } from "./postgres.ts";
import { applyMigrations, lintDatabase } from "./migrate.ts";
import { type GatewayProcess, startGateway } from "./gateway.ts";
import { generateSigningKey, jwksOf, type SigningKey } from "./keys.ts";
import { type ProviderServer, startProvider } from "./provider.ts";
import { progress } from "./util.ts";

/** What tests and tools need to reach the stack; passed to `deno test` as TOLLGATE_STACK. */
export interface StackInfo {
  /** `postgres` role URL (what SUPABASE_DB_URL is on hosted Supabase). */
  dbUrl: string;
  /** Superuser URL when the stack owns the cluster (creates auth.users rows in tests). */
  adminDbUrl: string;
  /** SUPABASE_URL of the local project: functions at /functions/v1/ai. */
  supabaseUrl: string;
  /** The local provider server, when used. */
  providerUrl?: string;
  signingKey: SigningKey;
  /** The environment the function runs with (to start more function servers in tests). */
  functionEnv: Record<string, string>;
}

export interface Stack extends StackInfo {
  provider?: ProviderServer;
  stop(): Promise<void>;
}

export interface StackOptions {
  /** Cluster data directory; ignored when `dbUrl` is given. */
  dataDir: string;
  fresh: boolean;
  /** Use an existing database (e.g. `supabase start`'s) instead of a private cluster. */
  dbUrl?: string;
  dbPort?: number;
  gatewayPort?: number;
  signingKey?: SigningKey;
  /** Provider keys from the environment; without them the local provider server is used. */
  providerEnv: Record<string, string>;
  staticDir?: string;
}

export async function startStack(options: StackOptions): Promise<Stack> {
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const step of stops.reverse()) await step();
  };
  try {
    let cluster: Cluster | undefined;
    if (!options.dbUrl) {
      cluster = await startCluster(options.dataDir, { port: options.dbPort, fresh: options.fresh });
      stops.push(cluster.stop);
    }
    const dbUrl = options.dbUrl ?? cluster!.url;
    await applyMigrations(dbUrl);
    await lintDatabase(dbUrl);

    let provider: ProviderServer | undefined;
    const providerEnv = { ...options.providerEnv };
    if (!providerEnv.OPENAI_API_KEY && !providerEnv.ANTHROPIC_API_KEY) {
      provider = await startProvider();
      stops.push(provider.close);
      progress(`no provider keys set: using the local provider at ${provider.url}`);
      Object.assign(providerEnv, {
        OPENAI_API_KEY: "local-provider-key",
        OPENAI_BASE_URL: `${provider.url}/v1`,
        ANTHROPIC_API_KEY: "local-provider-key",
        ANTHROPIC_BASE_URL: provider.url,
      });
    }

    const signingKey = options.signingKey ?? await generateSigningKey();
    const functionEnv: Record<string, string> = {
      SUPABASE_DB_URL: dbUrl,
      SUPABASE_JWKS: JSON.stringify(jwksOf(signingKey)),
      SUPABASE_PUBLISHABLE_KEYS: JSON.stringify({ default: `sb_publishable_${randomKey()}` }),
      SUPABASE_SECRET_KEYS: JSON.stringify({ default: `sb_secret_${randomKey()}` }),
      ...providerEnv,
      ...(options.staticDir ? { TOLLGATE_STATIC_DIR: options.staticDir } : {}),
    };
    progress("starting the ai function");
    const gateway: GatewayProcess = await startGateway(functionEnv, options.gatewayPort);
    stops.push(gateway.stop);
    functionEnv.SUPABASE_URL = gateway.url;

    return {
      dbUrl,
      adminDbUrl: cluster?.adminUrl ?? dbUrl,
      supabaseUrl: gateway.url,
      providerUrl: provider?.url,
      provider,
      signingKey,
      functionEnv,
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

function randomKey(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}
