/** A minimal progress bar on stderr (stdout stays clean for results). */

/** Renders `[#####.....] 42% label` in place; silent when stderr is not a terminal unless forced. */
export class ProgressBar {
  private done = 0;
  private lastDraw = 0;
  private readonly enc = new TextEncoder();
  private readonly tty: boolean;

  constructor(private total: number, private readonly width = 30, force = false) {
    let tty = false;
    try {
      tty = Deno.stderr.isTerminal();
    } catch {
      tty = false;
    }
    this.tty = tty || force;
  }

  /** Advances by `n` and redraws (at most every 100 ms, and always at the end). */
  tick(label = "", n = 1): void {
    this.done = Math.min(this.total, this.done + n);
    const now = performance.now();
    if (now - this.lastDraw < 100 && this.done < this.total) return;
    this.lastDraw = now;
    this.draw(label);
  }

  /** Line for the current state (exposed for tests). */
  render(label = ""): string {
    const frac = this.total > 0 ? this.done / this.total : 1;
    const fill = Math.round(frac * this.width);
    return `[${"#".repeat(fill)}${".".repeat(this.width - fill)}] ${
      String(Math.round(frac * 100)).padStart(3)
    }% ${label}`;
  }

  private draw(label: string): void {
    if (!this.tty) return;
    Deno.stderr.writeSync(this.enc.encode(`\r${this.render(label).slice(0, 100).padEnd(100)}`));
  }

  /** Clears the bar line so the next stdout line starts clean. */
  clear(): void {
    if (this.tty) Deno.stderr.writeSync(this.enc.encode(`\r${" ".repeat(100)}\r`));
  }
}
