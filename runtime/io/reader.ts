/**
 * Reading a file front to back in pieces, so that a large file (a model's weights) is never in memory
 * whole: from a local file (io/files.ts `openFileReader`) or from a response body as it arrives.
 */

/** A file read in order, piece by piece. */
export interface SequentialReader {
  /** Total bytes, where known before reading (a local file; not a response, which may be compressed). */
  readonly size?: number;
  /** The next `n` bytes, in a buffer of their own; fewer only at the end of the file. */
  read(n: number): Promise<Uint8Array>;
  /** Releases the file or the connection (also before the end). */
  close(): Promise<void>;
}

/** Reads a stream (e.g. a fetch `Response.body`) as a `SequentialReader`. */
export function streamReader(body: ReadableStream<Uint8Array>): SequentialReader {
  const reader = body.getReader();
  let rest: Uint8Array = new Uint8Array(0);
  let done = false;
  return {
    async read(n: number): Promise<Uint8Array> {
      checkCount(n);
      const out = new Uint8Array(n);
      let got = 0;
      while (got < n) {
        if (rest.length === 0) {
          if (done) break;
          const r = await reader.read();
          if (r.done) {
            done = true;
            break;
          }
          rest = r.value;
        }
        const take = Math.min(n - got, rest.length);
        out.set(rest.subarray(0, take), got);
        got += take;
        rest = rest.subarray(take);
      }
      return got === n ? out : out.slice(0, got);
    },
    async close(): Promise<void> {
      rest = new Uint8Array(0);
      if (!done) await reader.cancel().catch(() => {});
      done = true;
    },
  };
}

/** A byte count a reader can be asked for. */
export function checkCount(n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`cannot read ${n} bytes`);
}
