/**
 * Database types for the function's code, generated from the migrated database with
 * `supabase gen types`. The test command regenerates them and fails when the committed file
 * has drifted from the migrations; `npm run gen-types` rewrites it.
 */
import { startCluster } from "./postgres.ts";
import { applyMigrations } from "./migrate.ts";
import { progress, run } from "./util.ts";

export const typesFile = new URL("../../supabase/functions/_shared/database.types.ts", import.meta.url).pathname;
const projectRoot = new URL("../../", import.meta.url).pathname;

export async function generateTypes(dbUrl: string): Promise<string> {
  const types = await run(
    [
      "supabase",
      "gen",
      "types",
      "typescript",
      `--remote=${dbUrl}`,
      "--schema",
      "public,tollgate",
      "--workdir",
      projectRoot,
    ],
    { env: { PGSSLMODE: "disable", DO_NOT_TRACK: "1" }, stdoutOnly: true },
  );
  // Formatted like the rest of the code, so that `deno fmt --check` and the drift check agree.
  const formatted = await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--ext", "ts", "-"],
    cwd: projectRoot,
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const writer = formatted.stdin.getWriter();
  await writer.write(new TextEncoder().encode(types));
  await writer.close();
  return new TextDecoder().decode((await formatted.output()).stdout);
}

if (import.meta.main) {
  const dataDir = await Deno.makeTempDir({ prefix: "tollgate-types-" });
  if (Deno.uid() === 0) await Deno.chmod(dataDir, 0o755);
  const cluster = await startCluster(`${dataDir}/pgdata`, { fresh: true });
  try {
    await applyMigrations(cluster.url);
    await Deno.writeTextFile(typesFile, await generateTypes(cluster.url));
    progress(`wrote ${typesFile}`);
  } finally {
    await cluster.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
}
