/**
 * The benchmark's processes: servers it starts and waits for, and the load generator
 * (load.ts), each in a process of its own so that none takes the event loop of another.
 */
import type { LoadJob, LoadResult } from "./load.ts";

const benchDir = new URL(".", import.meta.url).pathname;

export interface Server {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** `deno run` of a script, as a command and its arguments. */
export const deno = (script: string, ...rest: string[]): [string, string[]] => [
  Deno.execPath(),
  ["run", "-A", "--no-prompt", script, ...rest],
];

/** Spawns a server and waits for `ready` on its stdout (group 1, when present, is its URL). */
export async function spawnServer(
  cmd: string,
  argv: string[],
  ready: RegExp,
  options: { cwd?: string; env?: Record<string, string>; url?: string } = {},
): Promise<Server> {
  const child = new Deno.Command(cmd, {
    args: argv,
    cwd: options.cwd,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  let match: RegExpMatchArray | null = null;
  while (!(match = seen.match(ready))) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${cmd} ${argv.join(" ")} exited before it was ready:\n${seen}`);
    seen += value;
  }
  // Keep reading so the child never blocks on a full pipe; what it says goes to stderr.
  (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      await Deno.stderr.write(new TextEncoder().encode(value));
    }
  })();
  return {
    url: options.url ?? match[1],
    pid: child.pid,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      await child.status;
    },
  };
}

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
