/** Small process and console helpers shared by the stack scripts. */
import { sleep } from "../../supabase/functions/_shared/runtime.ts";

export function progress(message: string): void {
  console.error(`\x1b[1mtollgate:\x1b[0m ${message}`);
}

/** Ends the process with a message that says what to do, not a stack trace. */
export function fail(message: string): never {
  console.error(`\x1b[1;31mtollgate:\x1b[0m ${message}`);
  Deno.exit(1);
}

export class CommandError extends Error {}

/** Runs a command to completion; on failure throws with its output and a hint. */
export async function run(
  cmd: string[],
  options: { hint?: string; env?: Record<string, string>; cwd?: string; stdoutOnly?: boolean } = {},
): Promise<string> {
  const output = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    env: options.env,
    cwd: options.cwd,
    stdout: "piped",
    stderr: "piped",
  }).output().catch((error) => {
    throw new CommandError(`could not run ${cmd[0]}: ${error.message}`);
  });
  const stdout = new TextDecoder().decode(output.stdout);
  const text = stdout + new TextDecoder().decode(output.stderr);
  if (!output.success) {
    throw new CommandError(
      `\`${cmd.join(" ")}\` failed:\n${text.trim()}${options.hint ? `\n(${options.hint})` : ""}`,
    );
  }
  return options.stdoutOnly ? stdout : text;
}

export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/**
 * A free port below the kernel's range of ephemeral ports, for a server that its clients keep
 * reconnecting to while it is down (the database, restarted mid-load). Connecting again and
 * again to a closed port inside that range ends, now and then, in a connection to itself: the
 * kernel picks that same port as the connection's own, and the client waits out its connect
 * timeout talking to itself.
 */
export function freePortBelowEphemeral(): number {
  const [ephemeralLow] = Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range").trim().split(/\s+/)
    .map(Number);
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * (ephemeralLow - 10_000));
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return port;
    } catch {
      // taken: try another
    }
  }
  fail(`no free port between 10000 and ${ephemeralLow} for PostgreSQL`);
}

/** Stops with a clear message, not a stack trace, when something already listens on `port`. */
export function assertPortFree(port: number): void {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
  } catch {
    fail(`port ${port} is in use. Stop what listens there, or choose another port (see README).`);
  }
}

/** Waits until `check` holds, looking every 5 ms; fails after `timeoutMs`. */
export async function until(check: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`condition not reached within ${timeoutMs} ms`);
    await sleep(5);
  }
}

/** A server process this stack started. */
export interface Server {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

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
  return { url: options.url ?? match[1], pid: child.pid, stop: () => stopProcess(child) };
}

/** Asks a child process to end (SIGTERM) and waits until it has; one already gone is fine. */
export async function stopProcess(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGTERM");
  } catch { /* already gone */ }
  await child.status;
}
