/**
 * What the benchmark reads from Linux's /proc: resident memory and CPU time of processes, and
 * the CPU time of the whole machine (to tell our load from a neighbour's).
 */

/** VmRSS of a process, in MB. */
export async function rssMb(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(status.match(/^VmRSS:\s+(\d+) kB/m)![1]) / 1024;
}

const clockTicks = 100; // USER_HZ, 100 on every Linux this runs on (getconf CLK_TCK)

/** CPU time (user + system, ms) of processes; with `children`, also of their reaped children. */
export function cpuMs(pids: number[], children = false): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      // Fields after the parenthesised command name; utime is field 14 of the whole line.
      const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
      ticks += Number(fields[11]) + Number(fields[12]);
      if (children) ticks += Number(fields[13]) + Number(fields[14]);
    } catch { /* the process ended: its time is in its parent's children counters */ }
  }
  return ticks * 1000 / clockTicks;
}

/** CPU time the whole machine spent busy (ms, summed over cores), from /proc/stat. */
export function machineBusyMs(): number {
  const [user, nice, system, _idle, _iowait, irq, softirq, steal] = Deno.readTextFileSync("/proc/stat")
    .split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  return (user + nice + system + irq + softirq + steal) * 1000 / clockTicks;
}

/** A process and its live children (Postgres: the postmaster and its backends). */
export function withChildren(pid: number): number[] {
  const out = [pid];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      if (Number(stat.split(") ")[1].split(" ")[1]) === pid) out.push(Number(entry.name));
    } catch { /* gone */ }
  }
  return out;
}
