/**
 * Readies the demo page for a local server (the dev command and the browser test call it):
 *
 * - `web/vendor/supabase-js.js`: an ES module build of supabase-js, bundled by `deno bundle`
 *   from npm. The page runs offline and without a build step of its own, and no third-party
 *   build output is committed: the bundle is made here, on demand, and gitignored.
 * - `web/.dev/session.json` (dev command only): the local dev user's access token, which the
 *   page offers as "Use dev user". Local stacks have no Supabase Auth server to sign in with.
 */

/** The supabase-js the page uses. */
export const SUPABASE_JS = "npm:@supabase/supabase-js@2.119.1";

const webDir = new URL(".", import.meta.url).pathname;
const projectRoot = new URL("..", import.meta.url).pathname;
export const vendorFile = `${webDir}vendor/supabase-js.js`;
const banner = `// ${SUPABASE_JS}, bundled for the browser by web/prepare.ts (generated: do not edit)\n`;

/** Bundles supabase-js into web/vendor/ unless the current version is already there. */
export async function bundleSupabaseJs(): Promise<void> {
  const existing = await Deno.readTextFile(vendorFile).catch(() => "");
  if (existing.startsWith(banner)) return;

  await Deno.mkdir(`${webDir}vendor`, { recursive: true });
  const workDir = await Deno.makeTempDir({ prefix: "tollgate-vendor-" });
  try {
    const entry = `${workDir}/entry.js`;
    await Deno.writeTextFile(entry, `export { createClient } from "${SUPABASE_JS}";\n`);
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform",
        "browser",
        "--format",
        "esm",
        "--minify",
        "-o",
        `${workDir}/out.js`,
        entry,
      ],
      cwd: projectRoot,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!output.success) {
      throw new Error(
        `could not bundle ${SUPABASE_JS} for the demo page (npm must be reachable the first time):\n` +
          new TextDecoder().decode(output.stderr).trim(),
      );
    }
    // Written next to the target and renamed, so that a dev server and a test run at the same
    // time never serve half a file.
    const staged = `${vendorFile}.${crypto.randomUUID()}.tmp`;
    await Deno.writeTextFile(staged, banner + await Deno.readTextFile(`${workDir}/out.js`));
    await Deno.rename(staged, vendorFile);
  } finally {
    await Deno.remove(workDir, { recursive: true });
  }
}

/** Offers the local dev user on the page (dev command only; the file is gitignored). */
export async function writeDevSession(session: { accessToken: string; email: string }): Promise<void> {
  await Deno.mkdir(`${webDir}.dev`, { recursive: true });
  await Deno.writeTextFile(`${webDir}.dev/session.json`, JSON.stringify(session), { mode: 0o600 });
}
