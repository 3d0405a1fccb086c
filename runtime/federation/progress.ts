/** A minimal progress bar on stderr (stdout stays clean for results). */

/** Where a bar writes: a terminal it redraws in place, or a log that gets one plain line per step of 10%. */
export interface ProgressSink {
  tty: boolean;
  write(s: string): void;
}

/** Node's `process.stderr`, which Deno 2 has too (a global there as well: no import, nothing to bundle). */
interface Stderr {
  isTTY?: boolean;
  write(s: string): unknown;
}

function stderrSink(): ProgressSink {
  const err = (globalThis as { process?: { stderr?: Stderr } }).process?.stderr;
  if (!err) throw new Error("ProgressBar: this runtime has no stderr (a browser?): pass a sink");
  return { tty: err.isTTY === true, write: (s) => void err.write(s) };
}

/**
 * Renders `[#####.....] 42% label` in place on a terminal. Elsewhere (a CI log, a pipe) a redrawn
 * line would be noise and silence would look like a hang, so it prints `progress 40% label` lines at
 * every tenth instead.
 */
export class ProgressBar {
  private done = 0;
  private lastDraw = 0;
  private lastTenth = 0;

  constructor(private total: number, private readonly width = 30, private readonly sink = stderrSink()) {}

  /** Advances by `n` and redraws (at most every 100 ms, and always at the end). */
  tick(label = "", n = 1): void {
    this.done = Math.min(this.total, this.done + n);
    if (!this.sink.tty) {
      const tenth = this.total > 0 ? Math.floor((this.done / this.total) * 10) : 10;
      if (tenth > this.lastTenth) {
        this.lastTenth = tenth;
        this.sink.write(`progress ${tenth * 10}% ${label}\n`);
      }
      return;
    }
    const now = performance.now();
    if (now - this.lastDraw < 100 && this.done < this.total) return;
    this.lastDraw = now;
    this.sink.write(`\r${this.render(label).slice(0, 100).padEnd(100)}`);
  }

  /** Line for the current state (exposed for tests). */
  render(label = ""): string {
    const frac = this.total > 0 ? this.done / this.total : 1;
    const fill = Math.round(frac * this.width);
    return `[${"#".repeat(fill)}${".".repeat(this.width - fill)}] ${
      String(Math.round(frac * 100)).padStart(3)
    }% ${label}`;
  }

  /** Clears the bar line so the next stdout line starts clean. */
  clear(): void {
    if (this.sink.tty) this.sink.write(`\r${" ".repeat(100)}\r`);
  }
}
