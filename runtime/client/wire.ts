/**
 * Wire format between `FederatedClient` and the coordinator: safetensors bodies.
 *
 * Update (client -> server), format "perfit-update/1":
 *   - `mask`: U32 `[ceil(N/32)]` LSB-first bitmask (bit i&31 of word i>>5 is position i; bits past N
 *     are zero), or U8/BOOL `[N]` of 0/1.
 *   - `values`: F32/F16/BF16, either sparse `[popcount(mask)]` (values at the mask's ones in index
 *     order: the compact form clients send) or dense `[N]` (positions outside the mask are ignored).
 *   - `__metadata__`: `format`, `run`, `round`, `samples` (positive integer), `metrics` (JSON object
 *     of finite numbers, e.g. `{"loss":2.1,"ppl":8.2}`).
 * Slice (server -> client), format "perfit-slice/1":
 *   - `covered`: U32 bitmask of the positions the server has an aggregate for (subset of the client's
 *     mask); `values`: F32 `[popcount(covered)]`; `mask`: U32 bitmask the server holds for the client.
 *   - `__metadata__`: `format`, `run`, `round` (last aggregated round, 0 = none), `adapterSize`.
 */
import {
  decodeSafetensors,
  encodeSafetensors,
  SafetensorsError,
  type TensorOut,
  tensorToFloat32,
} from "../io/safetensors.ts";

/** A rejected body; `code` is stable for programs, `status` is the HTTP status a server answers with. */
export class WireError extends Error {
  override name = "WireError";
  constructor(readonly status: 400 | 422, readonly code: string, message: string) {
    super(message);
  }
}

/** A decoded, validated update in compact form. */
export interface DecodedUpdate {
  run: string;
  round: number;
  samples: number;
  metrics: Record<string, number>;
  maskBits: Uint32Array;
  /** Values at the mask's ones, in index order. */
  values: Float32Array;
  popcount: number;
  /** Σ values² (f64; +Inf when finite values overflow it): the norm bound needs no second pass. */
  sumSq: number;
}

/** What a client sends for one round. */
export interface UpdateIn {
  run: string;
  round: number;
  samples: number;
  metrics?: Record<string, number>;
  /** Dense adapter (length N): only the mask's positions are sent. */
  values: Float32Array;
  mask: Uint8Array;
}

/** A decoded personalized slice. */
export interface DecodedSlice {
  run: string;
  round: number;
  adapterSize: number;
  maskBits: Uint32Array;
  coveredBits: Uint32Array;
  values: Float32Array;
}

/** Words of a bitmask over n positions. */
export const bitWords = (n: number): number => Math.ceil(n / 32);

/** Number of set bits. */
export function popcountBits(bits: Uint32Array): number {
  let c = 0;
  for (let i = 0; i < bits.length; i++) {
    let x = bits[i];
    x = x - ((x >>> 1) & 0x55555555);
    x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
    c += (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
  }
  return c;
}

/** 0/1 mask -> LSB-first bitmask. */
export function packMask(mask: Uint8Array): Uint32Array {
  const bits = new Uint32Array(bitWords(mask.length));
  for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) bits[i >>> 5] |= 1 << (i & 31);
  return bits;
}

/** Bitmask -> 0/1 mask of length n. */
export function unpackMask(bits: Uint32Array, n: number): Uint8Array {
  const m = new Uint8Array(n);
  for (let i = 0; i < n; i++) m[i] = (bits[i >>> 5] >>> (i & 31)) & 1;
  return m;
}

/** Calls `f(position, rank)` for every set bit in index order (rank = index among the ones). */
export function forEachBit(bits: Uint32Array, f: (pos: number, rank: number) => void): void {
  let r = 0;
  for (let w = 0; w < bits.length; w++) {
    let x = bits[w];
    while (x !== 0) {
      const t = x & -x;
      f((w << 5) + (31 - Math.clz32(t)), r++);
      x ^= t;
    }
  }
}

function u32Of(t: TensorOut): Uint32Array {
  return new Uint32Array(t.bytes.slice().buffer);
}

function f32Of(t: TensorOut): Float32Array {
  // Little-endian hosts (all we target) can reinterpret the bytes; far faster than DataView. Our
  // encoder pads the header to 8 bytes, so the data is aligned and needs no copy at all.
  if (t.dtype !== "F32") return tensorToFloat32(t);
  const b = t.bytes;
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  return new Float32Array(b.slice().buffer);
}

function decodeMask(t: TensorOut | undefined, n: number): Uint32Array {
  if (!t) throw new WireError(422, "missing_tensor", "update needs a `mask` tensor");
  if (t.dtype === "U32") {
    if (t.shape.length !== 1 || t.shape[0] !== bitWords(n)) {
      throw new WireError(422, "bad_shape", `mask U32 must have shape [${bitWords(n)}], got [${t.shape}]`);
    }
    const bits = u32Of(t);
    const tail = n % 32;
    if (tail !== 0 && (bits[bits.length - 1] >>> tail) !== 0) {
      throw new WireError(422, "bad_mask", `mask has bits set past position ${n}`);
    }
    return bits;
  }
  if (t.dtype === "U8" || t.dtype === "BOOL") {
    if (t.shape.length !== 1 || t.shape[0] !== n) {
      throw new WireError(422, "bad_shape", `mask ${t.dtype} must have shape [${n}], got [${t.shape}]`);
    }
    for (let i = 0; i < n; i++) {
      if (t.bytes[i] > 1) {
        throw new WireError(422, "bad_mask", `mask byte ${i} is ${t.bytes[i]}, expected 0 or 1`);
      }
    }
    return packMask(t.bytes);
  }
  throw new WireError(422, "bad_dtype", `mask dtype must be U32, U8 or BOOL, got ${t.dtype}`);
}

function parseMeta(meta: Record<string, string>, key: string): string {
  const v = meta[key];
  if (typeof v !== "string") throw new WireError(422, "missing_metadata", `__metadata__.${key} is required`);
  return v;
}

function parseMetrics(s: string | undefined): Record<string, number> {
  if (s === undefined) return {};
  if (s.length > 1024) throw new WireError(422, "bad_metrics", "metrics must be at most 1 KiB of JSON");
  let m: unknown;
  try {
    m = JSON.parse(s);
  } catch {
    throw new WireError(400, "malformed_json", "__metadata__.metrics is not valid JSON");
  }
  if (m === null || typeof m !== "object" || Array.isArray(m)) {
    throw new WireError(422, "bad_metrics", "metrics must be a JSON object");
  }
  const out: Record<string, number> = {};
  const entries = Object.entries(m as Record<string, unknown>);
  if (entries.length > 16) throw new WireError(422, "bad_metrics", "at most 16 metrics");
  for (const [k, v] of entries) {
    if (!/^[A-Za-z0-9_.-]{1,32}$/.test(k)) {
      throw new WireError(422, "bad_metrics", `bad metric name ${JSON.stringify(k)}`);
    }
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new WireError(422, "bad_metrics", `metric ${k} must be a finite number`);
    }
    out[k] = v;
  }
  return out;
}

/**
 * Σ v² in f64. Kept out of `decodeUpdate`, whose closure captures its `values` binding (a captured
 * binding is read through the context on every iteration: ~6x slower); four partial sums break the
 * add dependency chain.
 */
export function sumSquares(v: Float32Array): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  const m = v.length & ~3;
  let i = 0;
  for (; i < m; i += 4) {
    const a = v[i], b = v[i + 1], c = v[i + 2], d = v[i + 3];
    s0 += a * a;
    s1 += b * b;
    s2 += c * c;
    s3 += d * d;
  }
  for (; i < v.length; i++) s0 += v[i] * v[i];
  return (s0 + s1) + (s2 + s3);
}

/**
 * Decodes and validates an update for an adapter of length `n`: container, tensor names, dtypes,
 * shapes, mask bits, NaN/Inf values, metadata. Budget and norm are the caller's policy.
 */
export function decodeUpdate(body: Uint8Array, n: number): DecodedUpdate {
  let dec;
  try {
    dec = decodeSafetensors(body, { maxHeaderBytes: 64 * 1024 });
  } catch (e) {
    if (e instanceof SafetensorsError) throw new WireError(400, "malformed_safetensors", e.message);
    throw e;
  }
  for (const name of dec.tensors.keys()) {
    if (name !== "mask" && name !== "values") {
      throw new WireError(422, "unknown_tensor", `unexpected tensor ${name}`);
    }
  }
  const meta = dec.metadata;
  const format = meta.format ?? "perfit-update/1";
  if (format !== "perfit-update/1") throw new WireError(422, "bad_format", `unsupported format ${format}`);
  const run = parseMeta(meta, "run");
  const round = Number(parseMeta(meta, "round"));
  if (!Number.isSafeInteger(round) || round < 1) {
    throw new WireError(422, "bad_metadata", "round must be a positive integer");
  }
  const samplesS = parseMeta(meta, "samples");
  const samples = Number(samplesS);
  if (!/^[0-9]{1,10}$/.test(samplesS) || samples < 1 || samples > 1e9) {
    throw new WireError(422, "bad_metadata", "samples must be an integer in [1, 1e9]");
  }
  const metrics = parseMetrics(meta.metrics);
  const maskBits = decodeMask(dec.tensors.get("mask"), n);
  const popcount = popcountBits(maskBits);
  const vt = dec.tensors.get("values");
  if (!vt) throw new WireError(422, "missing_tensor", "update needs a `values` tensor");
  if (vt.dtype !== "F32" && vt.dtype !== "F16" && vt.dtype !== "BF16") {
    throw new WireError(422, "bad_dtype", `values dtype must be F32, F16 or BF16, got ${vt.dtype}`);
  }
  if (vt.shape.length !== 1 || (vt.shape[0] !== popcount && vt.shape[0] !== n)) {
    throw new WireError(
      422,
      "bad_shape",
      `values must have shape [${popcount}] (sparse) or [${n}] (dense), got [${vt.shape}]`,
    );
  }
  let values = f32Of(vt);
  if (values.length === n && n !== popcount) {
    const dense = values;
    values = new Float32Array(popcount);
    forEachBit(maskBits, (p, r) => (values[r] = dense[p]));
  }
  // One pass for both checks: a NaN or Inf makes the sum of squares non-finite.
  const sumSq = sumSquares(values);
  if (!Number.isFinite(sumSq)) {
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) {
        throw new WireError(422, "non_finite", `values contain NaN or Inf (index ${i})`);
      }
    }
  }
  return { run, round, samples, metrics, maskBits, values, popcount, sumSq };
}

/** Encodes an update in the compact (sparse) form. */
export function encodeUpdate(u: UpdateIn): Uint8Array {
  if (u.values.length !== u.mask.length) throw new RangeError("values and mask lengths differ");
  const bits = packMask(u.mask);
  const sparse = new Float32Array(popcountBits(bits));
  forEachBit(bits, (p, r) => (sparse[r] = u.values[p]));
  return encodeSafetensors(
    {
      mask: { dtype: "U32", shape: [bits.length], data: bits },
      values: { dtype: "F32", shape: [sparse.length], data: sparse },
    },
    {
      format: "perfit-update/1",
      run: u.run,
      round: String(u.round),
      samples: String(u.samples),
      metrics: JSON.stringify(u.metrics ?? {}),
    },
  );
}

/** Encodes a personalized slice (server side). */
export function encodeSlice(s: DecodedSlice): Uint8Array {
  return encodeSafetensors(
    {
      mask: { dtype: "U32", shape: [s.maskBits.length], data: s.maskBits },
      covered: { dtype: "U32", shape: [s.coveredBits.length], data: s.coveredBits },
      values: { dtype: "F32", shape: [s.values.length], data: s.values },
    },
    { format: "perfit-slice/1", run: s.run, round: String(s.round), adapterSize: String(s.adapterSize) },
  );
}

/** Decodes a slice (client side) and checks it is self-consistent. */
export function decodeSlice(body: Uint8Array): DecodedSlice {
  const dec = decodeSafetensors(body);
  const n = Number(dec.metadata.adapterSize);
  const get = (k: string) => {
    const t = dec.tensors.get(k);
    if (!t) throw new WireError(422, "missing_tensor", `slice lacks ${k}`);
    return t;
  };
  const maskBits = u32Of(get("mask"));
  const coveredBits = u32Of(get("covered"));
  const values = f32Of(get("values"));
  if (!Number.isSafeInteger(n) || maskBits.length !== bitWords(n) || coveredBits.length !== bitWords(n)) {
    throw new WireError(422, "bad_shape", "slice bitmasks do not match adapterSize");
  }
  if (values.length !== popcountBits(coveredBits)) {
    throw new WireError(422, "bad_shape", "slice values/covered mismatch");
  }
  return {
    run: dec.metadata.run,
    round: Number(dec.metadata.round),
    adapterSize: n,
    maskBits,
    coveredBits,
    values,
  };
}
