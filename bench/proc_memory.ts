/**
 * Memory of the processes a benchmark starts, read from /proc/<pid>/status: VmHWM (the kernel's
 * resident high-water mark) and VmRSS. Chromium's processes are found below the benchmark's own
 * (through /proc/<pid>/stat's parent pid) and told apart by their `--type`, so the page's renderer
 * can be named among Chromium's own processes.
 */
import { procStatusMb } from "./machine.ts";

/** How often the samplers read /proc (ms). */
export const SAMPLE_MS = 1000;

/** One Chromium process's figures (MB), the largest seen while sampling. */
export interface ProcPeak {
  type: string;
  hwm: number;
  rss: number;
}

/** The pids below `root`, through /proc/<pid>/stat's parent pid. */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      // The command name (2nd field) may hold spaces and parentheses; the parent pid follows it.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...children.get(ppid) ?? [], Number(e.name)]);
    } catch { /* exited meanwhile */ }
  }
  const out: number[] = [];
  const todo = [root];
  while (todo.length) {
    for (const c of children.get(todo.pop()!) ?? []) (out.push(c), todo.push(c));
  }
  return out;
}

/** "renderer", "gpu-process", "utility (network.mojom.NetworkService)", "browser"...; null if not Chromium's. */
export function chromiumType(pid: number): string | null {
  // Chromium rewrites its children's argv into one space-separated string (its process title).
  const argv = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split(/[\0 ]/);
  if (!/chrom/i.test(argv[0].split("/").at(-1) ?? "")) return null;
  const flag = (n: string) => argv.find((a) => a.startsWith(`--${n}=`))?.slice(n.length + 3);
  const type = flag("type");
  if (!type) return "browser";
  const sub = flag("utility-sub-type");
  return sub ? `${type} (${sub})` : type;
}

export function statusMb(pid: number): { hwm: number; rss: number } | null {
  const hwm = procStatusMb(pid, "VmHWM"), rss = procStatusMb(pid, "VmRSS");
  return Number.isFinite(hwm) ? { hwm, rss } : null; // a zombie has no memory lines
}

/**
 * Samples the memory of this process's Chromium descendants until `stop()`. VmHWM is the kernel's
 * own peak of each process whatever the sampling rate (to the ~10 MB its per-thread RSS counters
 * lag); the sums of VmRSS across processes are only as good as the samples.
 */
export class ChromiumMemory {
  readonly procs = new Map<number, ProcPeak>();
  /** Highest sum of VmRSS over all Chromium processes, and over the renderers, in one sample. */
  rssSum = 0;
  rendererRssSum = 0;
  #timer: ReturnType<typeof setInterval>;
  constructor() {
    this.#timer = setInterval(() => this.sample(), SAMPLE_MS);
  }
  sample(): void {
    let sum = 0, renderers = 0;
    for (const pid of descendants(Deno.pid)) {
      try {
        const type = this.procs.get(pid)?.type ?? chromiumType(pid);
        const m = type && statusMb(pid);
        if (!type || !m) continue;
        const p = this.procs.get(pid) ?? { type, hwm: 0, rss: 0 };
        p.hwm = Math.max(p.hwm, m.hwm);
        p.rss = Math.max(p.rss, m.rss);
        this.procs.set(pid, p);
        sum += m.rss;
        if (type === "renderer") renderers += m.rss;
      } catch { /* exited meanwhile */ }
    }
    this.rssSum = Math.max(this.rssSum, sum);
    this.rendererRssSum = Math.max(this.rendererRssSum, renderers);
  }
  /**
   * The page's renderer now, for the phase log: the live renderer with the highest peak. Chromium
   * also keeps a spare renderer and others of its own, and DevTools does not say which pid holds
   * the page, but only the page's runs ORT, so it is by far the largest once a session exists.
   */
  renderer(): string {
    this.sample();
    let best: { pid: number; hwm: number; rss: number } | undefined;
    for (const [pid, p] of this.procs) {
      if (p.type !== "renderer") continue;
      try {
        const m = statusMb(pid);
        if (m && (!best || m.hwm > best.hwm)) best = { pid, ...m };
      } catch { /* exited */ }
    }
    return best
      ? `pid ${best.pid} ${best.rss.toFixed(0)} MB resident, peak ${best.hwm.toFixed(0)} MB`
      : "no live renderer";
  }
  stop(): void {
    clearInterval(this.#timer);
  }
}
