/**
 * A private PostgreSQL 15 cluster with pg_cron preloaded and a Supabase-faithful
 * bootstrap (roles, `auth`, `extensions`): the database half of the local stack.
 */
import { fileURLToPath } from "node:url";
import { assertPortFree, freePortBelowEphemeral, progress, run } from "./util.ts";

const pgBin = "/usr/lib/postgresql/15/bin";
const bootstrapSql = fileURLToPath(new URL("./bootstrap.sql", import.meta.url));

export interface Cluster {
  /** `postgres` role: what migrations, the gateway and Studio-like tools use. */
  url: string;
  /** The cluster's superuser, for bootstrap and teardown only. */
  adminUrl: string;
  port: number;
  stop(): Promise<void>;
}

// initdb and postgres refuse to run as root; as root, run them as the OS user `postgres`
// that Debian's package creates.
const asDbOwner = (cmd: string[]) => Deno.uid() === 0 ? ["runuser", "-u", "postgres", "--", ...cmd] : cmd;

export async function startCluster(
  dataDir: string,
  options: { port?: number; fresh: boolean },
): Promise<Cluster> {
  const port = options.port ?? freePortBelowEphemeral();
  assertPortFree(port);
  const exists = await Deno.stat(`${dataDir}/PG_VERSION`).then(() => true, () => false);
  if (exists && options.fresh) await Deno.remove(dataDir, { recursive: true });
  const initialize = !exists || options.fresh;

  if (initialize) {
    progress(`creating a PostgreSQL cluster in ${dataDir}`);
    await Deno.mkdir(dataDir, { recursive: true, mode: 0o700 });
    if (Deno.uid() === 0) await run(["chown", "-R", "postgres:postgres", dataDir]);
    await run(asDbOwner([
      `${pgBin}/initdb`,
      "-D",
      dataDir,
      "-U",
      "supabase_admin",
      "--auth=trust",
      "--encoding=UTF8",
      "--locale=C.UTF-8",
    ]));
    await Deno.writeTextFile(`${dataDir}/postgresql.auto.conf`, serverSettings(), { append: true });
  }

  progress(`starting PostgreSQL on port ${port}`);
  await run(
    asDbOwner([
      `${pgBin}/pg_ctl`,
      "-D",
      dataDir,
      "-l",
      `${dataDir}/server.log`,
      "-o",
      `-p ${port} -k ${dataDir}`,
      "-w",
      "start",
    ]),
    { hint: `see ${dataDir}/server.log` },
  );

  const adminUrl = `postgresql://supabase_admin@127.0.0.1:${port}/postgres`;
  const url = `postgresql://postgres:postgres@127.0.0.1:${port}/postgres`;
  if (initialize) {
    progress("bootstrapping Supabase roles and the auth schema");
    await run(["psql", adminUrl, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", bootstrapSql]);
  }
  return {
    url,
    adminUrl,
    port,
    stop: () => run(asDbOwner([`${pgBin}/pg_ctl`, "-D", dataDir, "-m", "fast", "-w", "stop"])).then(() => {}),
  };
}

// Test-speed settings (durability off) and pg_cron, as the notes on Supabase's Postgres require.
function serverSettings(): string {
  return [
    "listen_addresses = '127.0.0.1'",
    "max_connections = 300",
    "shared_buffers = '256MB'",
    "fsync = off",
    "synchronous_commit = off",
    "full_page_writes = off",
    "shared_preload_libraries = 'pg_cron'",
    "cron.database_name = 'postgres'",
    "cron.use_background_workers = on",
    "max_worker_processes = 16",
    "timezone = 'UTC'",
    "",
  ].join("\n");
}
