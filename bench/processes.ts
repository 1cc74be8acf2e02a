/**
 * The benchmark's processes: scripts run with Deno, and the load generator (load.ts), in a
 * process of its own so that it never takes the event loop of the server it measures (servers
 * start with the test stack's `spawnServer`).
 */
import type { LoadJob, LoadResult } from "./load.ts";

const benchDir = new URL(".", import.meta.url).pathname;

/** `deno run` of a script, as a command and its arguments. */
export const deno = (script: string, ...rest: string[]): [string, string[]] => [
  Deno.execPath(),
  ["run", "-A", "--no-prompt", script, ...rest],
];

/**
 * Runs one load job in its own process, calling `onMeasuring` when its warm-up is over.
 * Bounded by `limitMs`: past it the generator is killed and the job fails.
 */
export async function runLoad(
  job: LoadJob,
  limitMs: number,
  onMeasuring: () => void = () => {},
): Promise<LoadResult> {
  const [cmd, argv] = deno(`${benchDir}load.ts`);
  const child = new Deno.Command(cmd, { args: argv, stdin: "piped", stdout: "piped", stderr: "inherit" }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
  try {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(JSON.stringify(job)));
    await writer.close();
    let text = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      const before = text.length;
      text += chunk;
      if (before < "measuring\n".length && text.startsWith("measuring\n")) onMeasuring();
    }
    if (!(await child.status).success) throw new Error(`the load generator failed or ran past ${limitMs / 1000} s`);
    return JSON.parse(text.slice("measuring\n".length));
  } finally {
    clearTimeout(timer);
  }
}
