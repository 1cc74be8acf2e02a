/**
 * `npm run bench`: runs every benchmark section and writes bench/RESULTS.md.
 *
 * A section is a script in bench/ (gateway.ts, db.ts, streaming.ts) run as its own process as
 * `deno run -A bench/<name>.ts --out <file> [its options]`: it shows progress on stderr and
 * writes its Markdown (starting with a `## ` heading) to <file>. This file adds what every
 * section shares: the machine, the date, how to reproduce. With `--only`, the other sections
 * of the existing RESULTS.md are kept as they were (each carries the date it was measured).
 *
 * Options: --soak <s> (gateway memory soak, default 60; the test is 600)
 *          --requests <n> (gateway requests per cell at concurrency 10 and 50, default 2000)
 *          --targets <list> (gateway targets, default direct,floor,portkey,tollgate,tollgate-queue)
 *          --seconds <s>, --sizes <list>, --rounds <n> (db: seconds per throughput cell, default 10;
 *          ai_api_calls sizes for the views, default 1000000, "" for none; rounds per cell, default 1)
 *          --only <section> (gateway, db or streaming)   --out <file> (default bench/RESULTS.md)
 */
import { parseArgs } from "node:util";

const benchDir = new URL(".", import.meta.url).pathname;

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    soak: { type: "string" },
    requests: { type: "string" },
    targets: { type: "string" },
    seconds: { type: "string" },
    sizes: { type: "string" },
    rounds: { type: "string" },
    only: { type: "string" },
    out: { type: "string", default: `${benchDir}RESULTS.md` },
  },
});

const say = (message: string) => console.error(`\x1b[1mbench:\x1b[0m ${message}`);

const sections: { name: string; args: string[] }[] = [
  {
    name: "gateway",
    args: [
      ...(args.soak ? ["--soak", args.soak] : []),
      ...(args.requests ? ["--requests", args.requests] : []),
      ...(args.targets ? ["--targets", args.targets] : []),
    ],
  },
  {
    name: "db",
    args: [
      ...(args.seconds ? ["--seconds", args.seconds] : []),
      ...(args.sizes !== undefined ? ["--sizes", args.sizes] : []),
      ...(args.rounds ? ["--rounds", args.rounds] : []),
    ],
  },
  { name: "streaming", args: [] },
];

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

async function machine(): Promise<string> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  const kernel = await Deno.readTextFile("/proc/sys/kernel/osrelease").catch(() => "?");
  const model = cpuinfo.match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "unknown CPU";
  const memGb = Number(meminfo.match(/^MemTotal:\s+(\d+) kB/m)?.[1] ?? 0) / 1024 / 1024;
  return `${navigator.hardwareConcurrency} CPUs (${model}), ${memGb.toFixed(1)} GB memory, ` +
    `${Deno.build.os} ${kernel.trim()} (${Deno.build.arch})`;
}

/** The sections of an existing RESULTS.md, by name. */
function existingSections(text: string): Map<string, string> {
  const found = new Map<string, string>();
  for (const match of text.matchAll(/<!-- bench:(\w+) -->\n([\s\S]*?)\n<!-- \/bench:\1 -->/g)) {
    found.set(match[1], match[2]);
  }
  return found;
}

class Interrupted extends Error {}

async function runSection(name: string, sectionArgs: string[]): Promise<string> {
  const out = await Deno.makeTempFile({ prefix: `tollgate-bench-${name}-`, suffix: ".md" });
  try {
    say(`running bench/${name}.ts`);
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-prompt", `${benchDir}${name}.ts`, "--out", out, ...sectionArgs],
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    // Stopped, we let the section stop its own servers (it handles SIGTERM) before we go.
    const forward = () => {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
    };
    Deno.addSignalListener("SIGINT", forward);
    Deno.addSignalListener("SIGTERM", forward);
    const status = await child.status;
    Deno.removeSignalListener("SIGINT", forward);
    Deno.removeSignalListener("SIGTERM", forward);
    if (status.signal === "SIGTERM" || status.code === 130) throw new Interrupted();
    if (!status.success) throw new Error(`bench/${name}.ts failed (see above)`);
    const text = (await Deno.readTextFile(out)).trim();
    if (!text) throw new Error(`bench/${name}.ts wrote nothing`);
    const date = new Date().toISOString().slice(0, 16).replace("T", " ");
    return `${text}\n\n_Measured ${date} UTC._`;
  } finally {
    await Deno.remove(out).catch(() => {});
  }
}

if (import.meta.main) {
  const previous = existingSections(await Deno.readTextFile(args.out!).catch(() => ""));
  const results = new Map<string, string>();
  let failed = false;
  for (const section of sections) {
    if (args.only && args.only !== section.name) {
      if (previous.has(section.name)) results.set(section.name, previous.get(section.name)!);
      continue;
    }
    if (!(await exists(`${benchDir}${section.name}.ts`))) continue;
    try {
      results.set(section.name, await runSection(section.name, section.args));
    } catch (error) {
      if (error instanceof Interrupted) Deno.exit(130);
      say(`\x1b[31m${(error as Error).message}\x1b[0m`);
      failed = true;
      // A failed run does not erase the last good numbers.
      if (previous.has(section.name)) results.set(section.name, previous.get(section.name)!);
    }
  }
  if (results.size === 0) {
    say("no section succeeded; RESULTS.md left as it was");
    Deno.exit(1);
  }
  const body = [...results].map(([name, text]) => `<!-- bench:${name} -->\n${text}\n<!-- /bench:${name} -->`);
  await Deno.writeTextFile(
    args.out!,
    [
      "# Benchmark results",
      "",
      "Written by `npm run bench` (bench/run.ts); see bench/README.md for what is measured and how. " +
      "Numbers from one machine, one run: compare rows within a run, not across machines.",
      "",
      `Machine: ${await machine()}.`,
      "",
      ...body.flatMap((section) => [section, ""]),
    ].join("\n"),
  );
  // Formatted as the rest of the repository is, so that `deno fmt --check` stays clean.
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", args.out!], stdout: "null", stderr: "inherit" })
    .output();
  say(`results written to ${args.out}`);
  if (failed) Deno.exit(1);
}
