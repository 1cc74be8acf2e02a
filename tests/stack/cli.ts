/**
 * The two commands of the README:
 *   dev   — the local stack, kept running: database, function, provider stand-in, demo page
 *   test  — a fresh stack, pgTAP through pg_prove, then every Deno test; ends with `N passed, N failed`
 */
import { type StackInfo, startStack } from "./stack.ts";
import { generateSigningKey, signAccessToken, type SigningKey } from "./keys.ts";
import { CommandError, fail, progress } from "./util.ts";
import { generateTypes, typesFile } from "./types.ts";
import postgres from "postgres";
import { bundleSupabaseJs, writeDevSession } from "../../web/prepare.ts";

const projectRoot = new URL("../../", import.meta.url).pathname;
// Real providers for `dev`, when the shell has their keys (extra keys too: OPENAI_API_KEY_BACKUP, …).
const providerVariable = /^(OPENAI|ANTHROPIC)_(API_KEY(_[A-Z0-9_]+)?|BASE_URL)$/;

function providerEnv(): Record<string, string> {
  return Object.fromEntries(Object.entries(Deno.env.toObject()).filter(([name]) => providerVariable.test(name)));
}

// ---------------------------------------------------------------------------------------
// test
// ---------------------------------------------------------------------------------------

interface Tally {
  passed: number;
  failed: number;
}

async function test(filters: string[]): Promise<number> {
  const tally: Tally = { passed: 0, failed: 0 };
  const dataDir = await Deno.makeTempDir({ prefix: "tollgate-test-" });
  if (Deno.uid() === 0) await Deno.chmod(dataDir, 0o755);
  const stack = await startStack({ dataDir: `${dataDir}/pgdata`, fresh: true, providerEnv: {} });
  try {
    await pauseCronJobs(stack);
    await checkSources(tally);
    await checkDatabaseTypes(stack, tally);
    await pgTap(stack, tally);
    await denoTests(stack, tally, filters);
  } finally {
    progress("tearing down the stack");
    await stack.stop();
    await Deno.remove(dataDir, { recursive: true });
  }
  console.log(`${tally.passed} passed, ${tally.failed} failed`);
  return tally.failed === 0 ? 0 : 1;
}

/**
 * Tests call the jobs' SQL themselves, with generated history: a job run by the clock in the
 * middle of a test (a budget check seeing another test's spend) would make results depend on
 * timing. The schedules stay in place (pgTAP checks them); they just do not fire.
 */
async function pauseCronJobs(stack: StackInfo): Promise<void> {
  const admin = postgres(stack.adminDbUrl, { max: 1, onnotice: () => {} });
  try {
    await admin`update cron.job set active = false`;
  } finally {
    await admin.end();
  }
}

/** deno fmt and deno lint count as one check each. */
async function checkSources(tally: Tally): Promise<void> {
  for (const [name, args] of [["deno fmt --check", ["fmt", "--check"]], ["deno lint", ["lint"]]] as const) {
    progress(`running ${name}`);
    const { success } = await new Deno.Command(Deno.execPath(), { args: [...args], cwd: projectRoot }).output();
    tally[success ? "passed" : "failed"]++;
    if (!success) console.log(`not ok - ${name} (run \`npx deno ${args[0]}\` to see and fix)`);
  }
}

/** The committed database types must be what `supabase gen types` makes of the migrations. */
async function checkDatabaseTypes(stack: StackInfo, tally: Tally): Promise<void> {
  progress("checking supabase/functions/_shared/database.types.ts against the migrations");
  const fresh = await generateTypes(stack.dbUrl);
  const committed = await Deno.readTextFile(typesFile).catch(() => "");
  const same = fresh === committed;
  tally[same ? "passed" : "failed"]++;
  if (!same) console.log("not ok - database.types.ts is out of date: run `npm run gen-types` and commit it");
}

async function pgTap(stack: StackInfo, tally: Tally): Promise<void> {
  progress("running pgTAP tests (supabase/tests) with pg_prove");
  const output = await new Deno.Command("pg_prove", {
    args: ["--dbname", stack.dbUrl, "--verbose", "--ext", ".sql", "-r", `${projectRoot}supabase/tests`],
    env: { PGSSLMODE: "disable" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  console.log(text.trimEnd());
  const passed = text.match(/^\s*ok \d+/gm)?.length ?? 0;
  const failed = text.match(/^\s*not ok \d+/gm)?.length ?? 0;
  tally.passed += passed;
  // A file that dies before its plan completes has no `not ok` line but still failed.
  tally.failed += failed || (output.success ? 0 : 1);
}

async function denoTests(stack: StackInfo, tally: Tally, filters: string[]): Promise<void> {
  progress("running Deno tests (tests/)");
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--no-prompt", ...(filters.length ? filters : ["tests/"])],
    cwd: projectRoot,
    env: { TOLLGATE_STACK: JSON.stringify(stack) },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let tail = "";
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    await Deno.stdout.write(new TextEncoder().encode(chunk));
    tail = (tail + chunk).slice(-4000);
  }
  const status = await child.status;
  const summary = tail.match(/(\d+) passed.*?\|\s*(\d+) failed/);
  if (summary) {
    tally.passed += Number(summary[1]);
    tally.failed += Number(summary[2]);
  }
  // Type errors or a crash end the run without a summary: that is a failure too.
  if (!status.success && (!summary || Number(summary[2]) === 0)) tally.failed++;
}

// ---------------------------------------------------------------------------------------
// dev
// ---------------------------------------------------------------------------------------

async function dev(): Promise<void> {
  const stateDir = `${projectRoot}.stack/dev`;
  await Deno.mkdir(stateDir, { recursive: true });
  if (Deno.uid() === 0) await Deno.chmod(stateDir, 0o755);
  const signingKey = await loadOrCreateKey(`${stateDir}/signing-key.json`);
  const dbUrl = Deno.env.get("TOLLGATE_DB_URL");
  const stack = await startStack({
    dataDir: `${stateDir}/pgdata`,
    fresh: false,
    dbUrl,
    dbPort: dbUrl ? undefined : Number(Deno.env.get("TOLLGATE_DB_PORT") ?? 54322),
    gatewayPort: Number(Deno.env.get("PORT") ?? 54321),
    signingKey,
    providerEnv: providerEnv(),
    staticDir: `${projectRoot}web`,
  });

  const devUserId = "00000000-0000-4000-8000-00000000d0e5";
  const admin = postgres(stack.adminDbUrl, { max: 1, onnotice: () => {} });
  await admin`
    insert into auth.users (id, aud, role, email, email_confirmed_at, raw_app_meta_data)
    values (${devUserId}, 'authenticated', 'authenticated', 'dev@tollgate.local', now(), '{"provider":"email"}')
    on conflict (id) do nothing`;
  await admin.end();
  const token = await signAccessToken(signingKey, stack.supabaseUrl, {
    sub: devUserId,
    email: "dev@tollgate.local",
    expiresIn: 30 * 24 * 3600,
  });
  await Deno.writeTextFile(`${stateDir}/dev-token.txt`, token);
  // The demo page: its "Use dev user" button, and supabase-js for signing in to hosted projects.
  await writeDevSession({ accessToken: token, email: "dev@tollgate.local" });
  await bundleSupabaseJs().catch((error) =>
    progress(`the demo page cannot sign in to hosted projects: ${error.message}`)
  );

  const base = `${stack.supabaseUrl}/functions/v1/ai/v1`;
  console.log(`
Tollgate is running.

  function     ${stack.supabaseUrl}/functions/v1/ai
  JWKS         ${stack.supabaseUrl}/auth/v1/.well-known/jwks.json
  database     ${stack.dbUrl}
  provider     ${stack.providerUrl ?? "real providers (keys from the environment)"}
  demo page    ${stack.supabaseUrl}/

Dev user access token (also in .stack/dev/dev-token.txt):
  ${token}

Try it:
  curl ${base}/chat/completions \\
    -H "Authorization: Bearer $(cat .stack/dev/dev-token.txt)" -H "content-type: application/json" \\
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'

  // OpenAI SDK
  const openai = new OpenAI({ baseURL: "${base}", apiKey: token });
  await openai.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello" }] });

Press Ctrl-C to stop.`);

  await new Promise<void>((resolve) => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, () => resolve());
  });
  progress("stopping");
  await stack.stop();
}

async function loadOrCreateKey(path: string): Promise<SigningKey> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    const key = await generateSigningKey();
    await Deno.writeTextFile(path, JSON.stringify(key), { mode: 0o600 });
    return key;
  }
}

// ---------------------------------------------------------------------------------------

if (import.meta.main) {
  const [command, ...rest] = Deno.args;
  try {
    if (command === "test") Deno.exit(await test(rest));
    else if (command === "dev") await dev();
    else fail(`unknown command ${command ?? "(none)"}: use dev or test`);
  } catch (error) {
    if (error instanceof CommandError) fail(error.message);
    throw error;
  }
}
