/**
 * Where uploads are folded into a round's accumulators: on a Worker thread when the platform has
 * Workers and SharedArrayBuffer, else on the calling thread.
 *
 * Why a Worker: the fold (a scattered read-modify-write of 8·N bytes per upload) was ~1.2–1.6 ms of
 * the ~4 ms an upload cost the JS thread, and that thread, which also parses HTTP and drives KV, is
 * what bounds a round's upload rate on a 2-core machine. The accumulators live in SharedArrayBuffers
 * so the worker folds in place and the JS thread reads them without copies once the worker is idle.
 *
 * Ordering is the contract: the worker runs jobs one at a time in the order they were posted, so a
 * `snapshot` holds exactly the folds requested before it (the group commit relies on this), and
 * `drain` resolves once every earlier fold is in.
 */
import { foldSparse } from "./aggregate.ts";

/** A round's accumulators. */
export interface Accumulators {
  sum: Float32Array;
  weight: Float32Array;
}

/** Folds updates into accumulators, in order. */
export interface Folder {
  /** Fresh zeroed accumulators for an adapter of n values (shared memory when on a worker). */
  alloc(n: number): Accumulators;
  /** `sum[p] += samples·v; weight[p] += samples` at the set bits; resolves once folded. */
  fold(acc: Accumulators, bits: Uint32Array, values: Float32Array, samples: number): Promise<void>;
  /** A copy of `acc.sum` with every fold requested before this call in it, and none after. */
  snapshot(acc: Accumulators): Promise<Float32Array>;
  /** Resolves once every fold requested before this call is in `acc`. */
  drain(): Promise<void>;
  /** Stops the worker (pending jobs are rejected). */
  close(): void;
}

/** Folds on the calling thread: for platforms without Workers (e.g. Deno Deploy) and for tests. */
export class InlineFolder implements Folder {
  alloc(n: number): Accumulators {
    return { sum: new Float32Array(n), weight: new Float32Array(n) };
  }
  fold(acc: Accumulators, bits: Uint32Array, values: Float32Array, samples: number): Promise<void> {
    try {
      foldSparse(acc.sum, acc.weight, bits, values, samples);
      return Promise.resolve();
    } catch (e) {
      return Promise.reject(e);
    }
  }
  snapshot(acc: Accumulators): Promise<Float32Array> {
    return Promise.resolve(acc.sum.slice());
  }
  drain(): Promise<void> {
    return Promise.resolve();
  }
  close(): void {}
}

type Job = { resolve: (v: unknown) => void; reject: (e: unknown) => void };

/**
 * Folds on one module Worker (started when the first accumulators are allocated) over
 * SharedArrayBuffer accumulators. Where the worker cannot be started (a platform that has the
 * `Worker` global but refuses to run one), it folds in-thread instead, for good.
 */
export class WorkerFolder implements Folder {
  private worker: Worker | null = null;
  private inline: InlineFolder | null = null;
  private jobs = new Map<number, Job>();
  private next = 0;
  private closed = false;

  alloc(n: number): Accumulators {
    // Folds will follow: start the worker now so its start-up is not on the first upload's path.
    if (!this.closed && !this.inline) {
      try {
        this.start();
      } catch {
        this.inline = new InlineFolder();
      }
    }
    if (this.inline) return this.inline.alloc(n);
    return {
      sum: new Float32Array(new SharedArrayBuffer(n * 4)),
      weight: new Float32Array(new SharedArrayBuffer(n * 4)),
    };
  }

  private start(): Worker {
    if (!this.worker) {
      const w = new Worker(new URL("./fold_worker.ts", import.meta.url), { type: "module" });
      w.onmessage = (e: MessageEvent<{ id: number; error?: string; sum?: ArrayBuffer }>) => {
        const job = this.jobs.get(e.data.id);
        if (!job) return;
        this.jobs.delete(e.data.id);
        if (e.data.error !== undefined) job.reject(new Error(e.data.error));
        else job.resolve(e.data.sum);
      };
      w.onerror = (e) => {
        e.preventDefault();
        this.fail(new Error(`fold worker failed: ${e.message}`));
      };
      this.worker = w;
    }
    return this.worker;
  }

  private post(msg: Record<string, unknown>, transfer: Transferable[] = []): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error("folder is closed"));
    const worker = this.start();
    const id = this.next++;
    const p = new Promise((resolve, reject) => this.jobs.set(id, { resolve, reject }));
    worker.postMessage({ ...msg, id }, transfer);
    return p;
  }

  fold(acc: Accumulators, bits: Uint32Array, values: Float32Array, samples: number): Promise<void> {
    if (this.inline && !this.closed) return this.inline.fold(acc, bits, values, samples);
    // The values are not needed here afterwards: hand their buffer over instead of copying it,
    // unless it is shared or also backs the mask.
    const transfer = values.buffer instanceof ArrayBuffer && values.buffer !== bits.buffer
      ? [values.buffer]
      : [];
    return this.post(
      { type: "fold", sum: acc.sum, weight: acc.weight, bits, values, samples },
      transfer,
    ) as Promise<void>;
  }

  async snapshot(acc: Accumulators): Promise<Float32Array> {
    if (this.inline && !this.closed) return this.inline.snapshot(acc);
    return new Float32Array((await this.post({ type: "snapshot", sum: acc.sum })) as ArrayBuffer);
  }

  async drain(): Promise<void> {
    if (this.worker) await this.post({ type: "drain" });
  }

  private fail(e: unknown): void {
    for (const job of this.jobs.values()) job.reject(e);
    this.jobs.clear();
    this.worker?.terminate();
    this.worker = null;
  }

  close(): void {
    this.closed = true;
    this.fail(new Error("folder is closed"));
  }
}

/** A WorkerFolder where the platform allows one, else an InlineFolder. */
export function defaultFolder(): Folder {
  try {
    if (typeof Worker === "function" && typeof SharedArrayBuffer === "function") return new WorkerFolder();
  } catch { /* no workers here */ }
  return new InlineFolder();
}
