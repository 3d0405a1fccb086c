/** A counting semaphore: bounds how many request bodies are read and decoded at once. */
export class Semaphore {
  private waiters: (() => void)[] = [];
  private active = 0;

  constructor(private readonly limit: number) {}

  /** Runs `f` once a permit is free (FIFO), releasing it when `f` settles. */
  async run<T>(f: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.waiters.push(r));
    else this.active++;
    try {
      return await f();
    } finally {
      const next = this.waiters.shift();
      if (next) next(); // the permit passes straight to the next waiter
      else this.active--;
    }
  }
}
