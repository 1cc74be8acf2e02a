/**
 * Applies supabase/migrations with the real Supabase CLI and lints them, so what runs here
 * is what `supabase db push` runs against a hosted project.
 */
import { CommandError, progress, run } from "./util.ts";

const projectRoot = new URL("../../", import.meta.url).pathname;
const cliEnv = { PGSSLMODE: "disable", SUPABASE_YES: "1", DO_NOT_TRACK: "1" };
/** Schemas that hold our code (the rest belong to Supabase or to extensions). */
const ownSchemas = "public,tollgate";

export async function applyMigrations(dbUrl: string): Promise<void> {
  progress("applying supabase/migrations with the Supabase CLI");
  try {
    await run(["supabase", "db", "push", `--remote=${dbUrl}`, "--yes", "--workdir", projectRoot], { env: cliEnv });
  } catch (error) {
    if (error instanceof CommandError) throw new CommandError(await explainMigrationFailure(error.message));
    throw error;
  }
}

export async function lintDatabase(dbUrl: string): Promise<void> {
  progress("checking the database with `supabase db lint`");
  await run([
    "supabase",
    "db",
    "lint",
    `--remote=${dbUrl}`,
    "--schema",
    ownSchemas,
    "--fail-on",
    "error",
    "--workdir",
    projectRoot,
  ], { env: cliEnv });
}

/** Points at the failing file and line: the CLI names the file and quotes the statement. */
async function explainMigrationFailure(output: string): Promise<string> {
  const file = [...output.matchAll(/Applying migration (\S+)\.\.\./g)].at(-1)?.[1];
  const statement = output.match(/At statement: \d+\n([^\n]+)/)?.[1]?.trim();
  if (!file) return output;
  const path = `supabase/migrations/${file}`;
  const text = await Deno.readTextFile(`${projectRoot}${path}`).catch(() => "");
  const line = statement ? text.split("\n").findIndex((l) => l.includes(statement)) + 1 : 0;
  return `migration ${path}${line > 0 ? `:${line}` : ""} failed\n${output}`;
}
