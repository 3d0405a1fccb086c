/**
 * What a benchmark records about the machine it ran on, so a figure can be judged: the 1-minute load
 * average before and after (a figure taken under load is no figure), and the summary statistics
 * every interleaved comparison reports.
 */

/** 1-, 5- and 15-minute load averages, or null where /proc/loadavg does not exist. */
export function loadAverage(): [number, number, number] | null {
  try {
    const [a, b, c] = Deno.readTextFileSync("/proc/loadavg").split(" ").map(Number);
    return [a, b, c];
  } catch {
    return null;
  }
}

/** "0.12 0.34 0.56": the three load averages as /proc/loadavg prints them, or "n/a". */
export function loadAverages(): string {
  return loadAverage()?.map((x) => x.toFixed(2)).join(" ") ?? "n/a";
}

/**
 * A memory field of /proc/<pid>/status in MiB (VmHWM: the resident high-water mark; VmRSS: resident
 * now), or NaN where it cannot be read (not Linux, the process gone, a zombie with no memory lines).
 */
export function procStatusMb(pid: number | "self", field: "VmHWM" | "VmRSS"): number {
  try {
    const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(Deno.readTextFileSync(`/proc/${pid}/status`));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** "0.12" style 1-minute load, or "n/a". */
export function load1(): string {
  return loadAverage()?.[0].toFixed(2) ?? "n/a";
}

/** Median, minimum and maximum of a non-empty sample. */
export function spread(xs: number[]): { median: number; min: number; max: number } {
  if (xs.length === 0) throw new Error("spread of an empty sample");
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  const median = s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  return { median, min: s[0], max: s[s.length - 1] };
}

/** "12.3 (11.9–13.0)": median and range at `digits` decimals. */
export function fmtSpread(xs: number[], digits = 2): string {
  const { median, min, max } = spread(xs);
  return `${median.toFixed(digits)} (${min.toFixed(digits)}–${max.toFixed(digits)})`;
}

/**
 * Runs every case once per repetition, in turn (A, B, A, B…) after one warm-up call each (JIT tiers,
 * page faults), so load from other processes hits them alike. Returns each case's seconds per
 * repetition.
 */
export function interleave(
  cases: Record<string, (i: number) => void>,
  reps: number,
): Record<string, number[]> {
  const times: Record<string, number[]> = {};
  for (const [name, f] of Object.entries(cases)) (f(0), times[name] = []);
  for (let i = 0; i < reps; i++) {
    for (const [name, f] of Object.entries(cases)) {
      const t0 = performance.now();
      f(i);
      times[name].push((performance.now() - t0) / 1000);
    }
  }
  return times;
}

/** "5.80× (median; 5.41–6.02 per repetition)": how many times slower `slow` is than `fast`, paired by repetition. */
export function fmtRatio(slow: number[], fast: number[], digits = 2): string {
  const per = slow.map((s, i) => s / fast[i]);
  const { median, min, max } = spread(per);
  return `${median.toFixed(digits)}× (median; ${min.toFixed(digits)}–${max.toFixed(digits)} per repetition)`;
}

/**
 * "Intel(R) Xeon(R) ... , 2 logical cores, 23.4 GiB, linux/x86_64, Deno 2.x": what the machine is,
 * from /proc/cpuinfo and /proc/meminfo where they exist.
 */
export function machineLine(): string {
  const read = (p: string) => {
    try {
      return Deno.readTextFileSync(p);
    } catch {
      return "";
    }
  };
  const cpu = /^model name\s*:\s*(.+)$/m.exec(read("/proc/cpuinfo"))?.[1]?.trim() ?? "unknown CPU";
  const kb = Number(/^MemTotal:\s+(\d+) kB/m.exec(read("/proc/meminfo"))?.[1] ?? NaN);
  const mem = Number.isFinite(kb) ? `${(kb / 2 ** 20).toFixed(1)} GiB` : "memory n/a";
  return `${cpu}, ${navigator.hardwareConcurrency} logical cores, ${mem}, ${Deno.build.os}/${Deno.build.arch}, ` +
    `Deno ${Deno.version.deno}`;
}
