/**
 * Byte blobs larger than one Deno KV value (64 KiB) stored as numbered chunks under a key prefix.
 * Writes are batched into atomic operations that stay under KV's per-commit limits (1000 mutations,
 * 800 KiB total); a blob is only *visible* through whatever record points at its prefix, so writing
 * chunks non-atomically and flipping a pointer afterwards is crash-safe. The coordinator passes every
 * write the run's live check (run_life.ts), so that no chunk lands once the run's delete has begun.
 */

/** A blob's chunks are gone: the pointer that led here is stale (another writer replaced and GC'd it). */
export class MissingBlobError extends Error {
  override name = "MissingBlobError";
}

/** Payload bytes per chunk: under the 65 536-byte value limit with room for KV's encoding. */
export const CHUNK_BYTES = 60 * 1024;
/** Bytes of chunk payload per atomic commit: under the 800 KiB (819 200 B) commit limit. */
const COMMIT_BYTES = 12 * CHUNK_BYTES;

/** Number of chunks a blob of `bytes` bytes occupies. */
export function chunkCount(bytes: number): number {
  return Math.ceil(bytes / CHUNK_BYTES);
}

/**
 * Writes `data` as chunks `[...prefix, i]`. Resolves once every chunk is durable; every commit checks
 * `guard` (when given), and a failed check fails the write.
 */
export async function writeChunks(
  kv: Deno.Kv,
  prefix: Deno.KvKey,
  data: Uint8Array,
  guard?: Deno.AtomicCheck,
): Promise<number> {
  const n = chunkCount(data.byteLength);
  const commits: Promise<unknown>[] = [];
  const atomic = () => guard ? kv.atomic().check(guard) : kv.atomic();
  let op = atomic();
  let opBytes = 0;
  for (let i = 0; i < n; i++) {
    const part = data.slice(i * CHUNK_BYTES, Math.min(data.byteLength, (i + 1) * CHUNK_BYTES));
    op.set([...prefix, i], part);
    opBytes += part.byteLength;
    if (opBytes + CHUNK_BYTES > COMMIT_BYTES) {
      commits.push(op.commit());
      op = atomic();
      opBytes = 0;
    }
  }
  if (opBytes > 0) commits.push(op.commit());
  for (const r of await Promise.all(commits)) {
    if (!(r as Deno.KvCommitResult).ok) throw new Error("chunk write failed");
  }
  return n;
}

/**
 * Writes several blobs (which must not change until it resolves), packing their chunks into as few
 * atomic commits as the limits allow (each commit costs an fsync, which dominates for many small
 * blobs such as masks). Every commit checks `guard` (when given), as in `writeChunks`.
 */
export async function writeBlobs(
  kv: Deno.Kv,
  blobs: [Deno.KvKey, Uint8Array][],
  guard?: Deno.AtomicCheck,
): Promise<void> {
  const commits: Promise<Deno.KvCommitResult | Deno.KvCommitError>[] = [];
  const atomic = () => guard ? kv.atomic().check(guard) : kv.atomic();
  let op = atomic();
  let opBytes = 0;
  for (const [prefix, data] of blobs) {
    const n = chunkCount(data.byteLength);
    for (let i = 0; i < n; i++) {
      // A view, not a copy: KV copies the bytes when it commits, and callers keep `data` unchanged.
      const part = data.subarray(i * CHUNK_BYTES, Math.min(data.byteLength, (i + 1) * CHUNK_BYTES));
      if (opBytes + part.byteLength > COMMIT_BYTES) {
        commits.push(op.commit());
        op = atomic();
        opBytes = 0;
      }
      op.set([...prefix, i], part);
      opBytes += part.byteLength;
    }
  }
  if (opBytes > 0) commits.push(op.commit());
  for (const r of await Promise.all(commits)) if (!r.ok) throw new Error("blob write failed");
}

/** Deletes the `count` chunks of a blob by key (no range read), in one commit when ≤ 1000. */
export async function deleteChunks(kv: Deno.Kv, prefix: Deno.KvKey, bytes: number): Promise<void> {
  const n = chunkCount(bytes);
  for (let start = 0; start < n; start += 1000) {
    const op = kv.atomic();
    for (let i = start; i < Math.min(n, start + 1000); i++) op.delete([...prefix, i]);
    await op.commit();
  }
}

/** Reads `count` chunks under `prefix` back into `out` (which must have the blob's exact size). */
export async function readChunks(kv: Deno.Kv, prefix: Deno.KvKey, out: Uint8Array): Promise<Uint8Array> {
  const n = chunkCount(out.byteLength);
  let found = 0;
  // kv.list is one range read: far cheaper than n point reads (getMany caps at 10 keys).
  for await (const e of kv.list<Uint8Array>({ prefix }, { batchSize: 500 })) {
    const i = e.key[e.key.length - 1];
    if (typeof i !== "number" || i < 0 || i >= n) continue;
    out.set(e.value, i * CHUNK_BYTES);
    found++;
  }
  if (found !== n) throw new MissingBlobError(`blob ${JSON.stringify(prefix)} has ${found} of ${n} chunks`);
  return out;
}

/** Deletes every key under `prefix` (best effort, batched). */
export async function deletePrefix(kv: Deno.Kv, prefix: Deno.KvKey): Promise<void> {
  let op = kv.atomic();
  let count = 0;
  for await (const e of kv.list({ prefix }, { batchSize: 500 })) {
    op.delete(e.key);
    if (++count % 500 === 0) {
      await op.commit();
      op = kv.atomic();
    }
  }
  if (count % 500 !== 0) await op.commit();
}

/** A Float32Array's bytes (no copy). */
export function f32Bytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * The distinct key parts right below `prefix`, in key order: one single-entry read per part, so a
 * walk over a few blob generations reads a chunk of each instead of every chunk. Parts other than
 * strings and numbers end the walk (this store writes none below the prefixes walked).
 */
export async function* childParts(kv: Deno.Kv, prefix: Deno.KvKey): AsyncGenerator<string | number> {
  let start: Deno.KvKey | null = null;
  for (;;) {
    const selector: Deno.KvListSelector = start ? { prefix, start } : { prefix };
    const first: IteratorResult<Deno.KvEntry<unknown>> = await kv.list(selector, { limit: 1 }).next();
    if (first.done) return;
    const part: Deno.KvKeyPart | undefined = first.value.key[prefix.length];
    if (typeof part === "string") start = [...prefix, `${part}\0`];
    else if (typeof part === "number" && part < Infinity) start = [...prefix, nextUp(part)];
    else return;
    yield part;
  }
}

/** The least number above x (x finite): the first key part after every key below `[..., x]`. */
function nextUp(x: number): number {
  if (x === 0) return Number.MIN_VALUE;
  const b = new DataView(new ArrayBuffer(8));
  b.setFloat64(0, x);
  const bits = b.getBigUint64(0);
  b.setBigUint64(0, x > 0 ? bits + 1n : bits - 1n);
  return b.getFloat64(0);
}
