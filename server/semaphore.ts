/**
 * Bounds on upload work: a counting semaphore (how many received bodies are decoded and handed to
 * the coordinator at once) and a byte budget (how many body bytes are held in memory at once).
 */

/** A counting semaphore: bounds how many received bodies are decoded at once. */
export class Semaphore {
  private waiters: (() => void)[] = [];
  private active = 0;

  constructor(private readonly limit: number) {}

  /** Runs `f` once a permit is free (FIFO), releasing it when `f` settles. */
  async run<T>(f: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await f();
    } finally {
      release();
    }
  }

  /** Waits for a permit (FIFO); the returned function gives it back (idempotent). */
  async acquire(): Promise<() => void> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.waiters.push(r));
    else this.active++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      const next = this.waiters.shift();
      if (next) next(); // the permit passes straight to the next waiter
      else this.active--;
    };
  }

  /** Permits held now. */
  get held(): number {
    return this.active;
  }

  /** Callers waiting for a permit. */
  get waiting(): number {
    return this.waiters.length;
  }
}

/**
 * Bytes held against a fixed capacity. `take` never waits: past the capacity it refuses, so no
 * request can hold another's progress hostage (the caller answers 503 and the client retries).
 */
export class ByteBudget {
  private used = 0;

  constructor(readonly capacity: number) {}

  /**
   * Takes `n` bytes; false (and nothing taken) when they would exceed the capacity, unless the
   * caller already holds everything held (`mine`): one body larger than the capacity still passes
   * when it is alone.
   */
  take(n: number, mine = 0): boolean {
    if (this.used + n > this.capacity && this.used > mine) return false;
    this.used += n;
    return true;
  }

  /** Gives back `n` bytes taken earlier. */
  give(n: number): void {
    this.used = Math.max(0, this.used - n);
  }

  /** Bytes held now. */
  get held(): number {
    return this.used;
  }
}
