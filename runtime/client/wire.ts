/**
 * Wire format between `FederatedClient` and the coordinator: safetensors bodies.
 *
 * Update (client -> server), format "perfit-update/1". The mask comes in exactly one of three forms:
 *   - `mask`: U32 `[ceil(N/32)]` LSB-first bitmask (bit i&31 of word i>>5 is position i; bits past N
 *     are zero), or U8/BOOL `[N]` of 0/1;
 *   - `mask_code`: U8 `[bytes]`, the mask in a compact code named by `__metadata__.maskCode`
 *     (`bits`, `deltas`, `rice-gaps:K`, `rice-runs:K1:K2` or `rice-runs-rle:K1:K2:K3`, see
 *     runtime/kernels/mask_code.ts); values must then be sparse, and their count is the mask's.
 *     Optionally relative to a support: `support_code` (U8) with `__metadata__.supportCode` and
 *     `supportSize` codes the positions the client's own layout occupies in the global one (a few
 *     runs per matrix), and `mask_code` then codes the mask over those `supportSize` positions only,
 *     so an e < e_max client pays for its own search space, not the run's;
 *   - no mask tensor and `__metadata__.maskRef`: the SHA-256 hex of the bitmask (`maskRef` in
 *     runtime/kernels/bits.ts) of a mask the coordinator already holds for this client: after the
 *     search round an unchanged mask costs 64 bytes of header instead of N/8. A coordinator that does
 *     not hold it answers 409 `mask_unknown`, and the client resends with the mask.
 *   - `values`: F32/F16/BF16, either sparse `[popcount(mask)]` (values at the mask's ones in index
 *     order: the compact form clients send) or dense `[N]` (positions outside the mask are ignored;
 *     not with `mask_code` or `maskRef`).
 *   - `__metadata__`: `format`, `run`, `round`, `samples` (positive integer), `metrics` (JSON object
 *     of finite numbers, e.g. `{"loss":2.1,"ppl":8.2}`).
 * Slice (server -> client), format "perfit-slice/1":
 *   - `covered`: U32 bitmask of the positions the server has an aggregate for (subset of the client's
 *     mask); `values`: F32 `[popcount(covered)]`; `mask`: U32 bitmask the server holds for the client.
 *   - either bitmask may instead come as `covered_code` / `mask_code` (U8) in a mask code named by
 *     `__metadata__.coveredCode` / `maskCode`, the mask's count in `maskCount` (covered's is the
 *     values'): the coordinator sends whichever form is smaller.
 *   - `__metadata__`: `format`, `run`, `round` (last aggregated round, 0 = none), `adapterSize`.
 */
import {
  decodeSafetensors,
  encodeSafetensors,
  SafetensorsError,
  type TensorIn,
  type TensorOut,
  tensorToFloat32,
} from "../io/safetensors.ts";
import { bitWords, forEachBit, maskRef, popcountBits } from "../kernels/bits.ts";
import {
  decodeMask as decodeMaskCode,
  encodeMask,
  type MaskCode,
  maskCodeName,
  parseMaskCodeName,
} from "../kernels/mask_code.ts";
import { scalarKernels } from "../kernels/scalar.ts";

export { bitWords, forEachBit, popcountBits };

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
  /** How the mask travelled (set by `decodeUpdate` and `resolveMaskRef`). */
  maskForm?: MaskForm;
}

/** How an update's mask travelled: a U32 bitmask, U8/BOOL bytes, a compact code, or by reference. */
export type MaskForm = "u32" | "u8" | MaskCode["mode"] | "ref";

/**
 * An update that names its mask by reference: everything of a `DecodedUpdate` but the mask, which the
 * coordinator supplies from its store (`resolveMaskRef`).
 */
export interface MaskRefUpdate {
  run: string;
  round: number;
  samples: number;
  metrics: Record<string, number>;
  /** SHA-256 hex of the bitmask (runtime/kernels/bits.ts `maskRef`). */
  maskRef: string;
  /** Sparse values; their count is checked against the stored mask. */
  values: Float32Array;
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
  /** The mask's `maskRef`, when the coordinator already holds this mask: the mask is not sent. */
  maskRef?: string;
  /** Send a new mask in its smallest form (`mask_code`, maybe over `support`) rather than a U32 bitmask. */
  compactMask?: boolean;
  /** 0/1 over N: the positions this client can ever hold (its own layout in the global one). */
  support?: Uint8Array;
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

/** 0/1 mask -> LSB-first bitmask. */
export const packMask = (mask: Uint8Array): Uint32Array => scalarKernels.maskToBits(mask);

/** Bitmask -> 0/1 mask of length n. */
export const unpackMask = (bits: Uint32Array, n: number): Uint8Array => scalarKernels.bitsToMask(bits, n);

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

/**
 * Most metrics one upload may report. Every name an upload reports is kept in its record and may
 * reach the round summary, so names are few and short.
 */
export const MAX_METRICS = 8;
/** A metric name: an identifier-like word of at most 32 characters. */
export const METRIC_NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,31}$/;

/** Refuses metrics outside the rule (both when encoding and when decoding an update). */
function checkMetricEntries(entries: [string, unknown][]): void {
  if (entries.length > MAX_METRICS) {
    throw new WireError(422, "bad_metrics", `at most ${MAX_METRICS} metrics, got ${entries.length}`);
  }
  for (const [k, v] of entries) {
    if (!METRIC_NAME.test(k)) {
      throw new WireError(
        422,
        "bad_metrics",
        `metric names must match ${METRIC_NAME.source}, got ${JSON.stringify(k)}`,
      );
    }
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new WireError(422, "bad_metrics", `metric ${k} must be a finite number`);
    }
  }
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
  const entries = Object.entries(m as Record<string, unknown>);
  checkMetricEntries(entries);
  return Object.fromEntries(entries) as Record<string, number>;
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

const MASK_REF = /^[0-9a-f]{64}$/;
function parseMaskCode(name: string, bytes: Uint8Array, key: string): MaskCode {
  const code = parseMaskCodeName(name, bytes);
  if (!code) {
    throw new WireError(
      422,
      "bad_metadata",
      `${key} must be bits, deltas, rice-gaps:K, rice-runs:K1:K2 or rice-runs-rle:K1:K2:K3`,
    );
  }
  return code;
}

function codeBytes(t: TensorOut, name: string): Uint8Array {
  if (t.dtype !== "U8" || t.shape.length !== 1) {
    throw new WireError(422, "bad_dtype", `${name} must be a 1-D U8 tensor`);
  }
  return t.bytes;
}

/** A parsed code's mask of n positions with `count` ones; a code that does not decode is a 422 naming `tensor`. */
function decodeCodeOf(code: MaskCode, tensor: string, n: number, count: number): Uint8Array {
  try {
    return decodeMaskCode(code, n, count, scalarKernels);
  } catch (e) {
    throw new WireError(422, "bad_mask", `${tensor} (${code.mode}): ${(e as Error).message}`);
  }
}

/** The mask of a `mask_code` body (maybe relative to a `support_code`) with `count` ones. */
function decodeCodedMask(
  meta: Record<string, string>,
  codeT: TensorOut,
  supportT: TensorOut | undefined,
  n: number,
  count: number,
): Uint8Array {
  const code = parseMaskCode(parseMeta(meta, "maskCode"), codeBytes(codeT, "mask_code"), "maskCode");
  if (!supportT) {
    if (meta.supportCode !== undefined || meta.supportSize !== undefined) {
      throw new WireError(422, "bad_metadata", "supportCode and supportSize need a `support_code` tensor");
    }
    return decodeCodeOf(code, "mask_code", n, count);
  }
  const sc = parseMaskCode(
    parseMeta(meta, "supportCode"),
    codeBytes(supportT, "support_code"),
    "supportCode",
  );
  const sizeS = parseMeta(meta, "supportSize");
  const size = Number(sizeS);
  if (!/^[0-9]{1,10}$/.test(sizeS) || size > n || size < count) {
    throw new WireError(422, "bad_metadata", `supportSize must be an integer in [${count}, ${n}]`);
  }
  let support: Uint8Array, inner: Uint8Array;
  try {
    support = decodeMaskCode(sc, n, size, scalarKernels);
    inner = decodeMaskCode(code, size, count, scalarKernels);
  } catch (e) {
    throw new WireError(422, "bad_mask", `mask_code over support_code: ${(e as Error).message}`);
  }
  const mask = new Uint8Array(n);
  for (let p = 0, r = 0; p < n; p++) if (support[p]) mask[p] = inner[r++];
  return mask;
}

function valuesOf(vt: TensorOut | undefined): Float32Array {
  if (!vt) throw new WireError(422, "missing_tensor", "update needs a `values` tensor");
  if (vt.dtype !== "F32" && vt.dtype !== "F16" && vt.dtype !== "BF16") {
    throw new WireError(422, "bad_dtype", `values dtype must be F32, F16 or BF16, got ${vt.dtype}`);
  }
  if (vt.shape.length !== 1) throw new WireError(422, "bad_shape", `values must be 1-D, got [${vt.shape}]`);
  return f32Of(vt);
}

/** Σv², refusing NaN/Inf in the same pass (either makes the sum non-finite). */
function finiteSumSquares(values: Float32Array): number {
  const sumSq = sumSquares(values);
  if (!Number.isFinite(sumSq)) {
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) {
        throw new WireError(422, "non_finite", `values contain NaN or Inf (index ${i})`);
      }
    }
  }
  return sumSq;
}

/** Refuses more values than the adapter has positions (the sparse forms' count is the mask's). */
function checkSparseCount(values: Float32Array, n: number): void {
  if (values.length > n) {
    throw new WireError(422, "bad_shape", `values [${values.length}] exceed the adapter's ${n}`);
  }
}

/**
 * Decodes and validates an update for an adapter of length `n`: container, tensor names, dtypes,
 * shapes, mask bits or code, NaN/Inf values, metadata. An update that names its mask by reference
 * comes back as a `MaskRefUpdate` (see `resolveMaskRef`). Budget and norm are the caller's policy.
 */
export function decodeUpdate(body: Uint8Array, n: number): DecodedUpdate | MaskRefUpdate {
  let dec;
  try {
    dec = decodeSafetensors(body, { maxHeaderBytes: 64 * 1024 });
  } catch (e) {
    if (e instanceof SafetensorsError) throw new WireError(400, "malformed_safetensors", e.message);
    throw e;
  }
  for (const name of dec.tensors.keys()) {
    if (name !== "mask" && name !== "mask_code" && name !== "support_code" && name !== "values") {
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
  const maskT = dec.tensors.get("mask");
  const codeT = dec.tensors.get("mask_code");
  const ref = meta.maskRef;
  if ((maskT ? 1 : 0) + (codeT ? 1 : 0) + (ref !== undefined ? 1 : 0) > 1) {
    throw new WireError(422, "ambiguous_mask", "send exactly one of `mask`, `mask_code` and maskRef");
  }
  const raw = valuesOf(dec.tensors.get("values"));
  if (ref !== undefined) {
    if (!MASK_REF.test(ref)) {
      throw new WireError(422, "bad_metadata", "maskRef must be 64 lowercase hex digits (SHA-256)");
    }
    checkSparseCount(raw, n);
    return { run, round, samples, metrics, maskRef: ref, values: raw, sumSq: finiteSumSquares(raw) };
  }
  let maskBits: Uint32Array;
  let maskForm: MaskForm;
  const supportT = dec.tensors.get("support_code");
  if (supportT && !codeT) throw new WireError(422, "missing_tensor", "`support_code` needs a `mask_code`");
  if (codeT) {
    checkSparseCount(raw, n);
    maskBits = packMask(decodeCodedMask(meta, codeT, supportT, n, raw.length));
    maskForm = parseMaskCode(meta.maskCode, new Uint8Array(0), "maskCode").mode;
  } else {
    maskBits = decodeMask(maskT, n);
    maskForm = maskT!.dtype === "U32" ? "u32" : "u8";
  }
  const popcount = popcountBits(maskBits);
  if (raw.length !== popcount && raw.length !== n) {
    throw new WireError(
      422,
      "bad_shape",
      `values must have shape [${popcount}] (sparse) or [${n}] (dense), got [${raw.length}]`,
    );
  }
  let values = raw;
  if (values.length === n && n !== popcount) {
    values = new Float32Array(popcount);
    forEachBit(maskBits, (p, r) => (values[r] = raw[p]));
  }
  const sumSq = finiteSumSquares(values);
  return { run, round, samples, metrics, maskBits, values, popcount, sumSq, maskForm };
}

/** True for an update that names its mask by reference. */
export function isMaskRef(u: DecodedUpdate | MaskRefUpdate): u is MaskRefUpdate {
  return "maskRef" in u;
}

/**
 * Completes a by-reference update with the mask the coordinator holds under that reference (the
 * caller has checked the reference names it); the values must be sparse over that mask.
 */
export function resolveMaskRef(u: MaskRefUpdate, maskBits: Uint32Array): DecodedUpdate {
  const popcount = popcountBits(maskBits);
  if (u.values.length !== popcount) {
    throw new WireError(
      422,
      "bad_shape",
      `values must have shape [${popcount}] (sparse over the referenced mask), got [${u.values.length}]`,
    );
  }
  const { maskRef: _, ...rest } = u;
  return { ...rest, maskBits, popcount, maskForm: "ref" };
}

/**
 * Encodes an update in the compact (sparse) form. Without `maskRef` the mask travels as a U32
 * bitmask, or with `compactMask` in its smallest code.
 */
export function encodeUpdate(u: UpdateIn): Uint8Array {
  if (u.values.length !== u.mask.length) throw new RangeError("values and mask lengths differ");
  const bits = packMask(u.mask);
  const sparse = new Float32Array(popcountBits(bits));
  forEachBit(bits, (p, r) => (sparse[r] = u.values[p]));
  checkMetricEntries(Object.entries(u.metrics ?? {}));
  const meta: Record<string, string> = {
    format: "perfit-update/1",
    run: u.run,
    round: String(u.round),
    samples: String(u.samples),
    metrics: JSON.stringify(u.metrics ?? {}),
  };
  const tensors: Record<string, TensorIn> = {
    values: { dtype: "F32", shape: [sparse.length], data: sparse },
  };
  if (u.maskRef !== undefined) {
    meta.maskRef = u.maskRef;
    return encodeSafetensors(tensors, meta);
  }
  return withMask(tensors, meta, bits, u.compactMask ? codedForms(u.mask, u.support) : []);
}

/**
 * A client's body for one round, the one encoder behind `FederatedClient` and the simulation: the
 * mask by reference when it is the one the coordinator acknowledged last (`ackedMaskRef`), else in
 * its smallest code. Returns the mask's reference too, to remember once the upload is acknowledged.
 */
export async function encodeRoundUpdate(
  u: Omit<UpdateIn, "maskRef" | "compactMask">,
  ackedMaskRef: string | undefined,
): Promise<{ body: Uint8Array; maskRef: string }> {
  const ref = await maskRef(packMask(u.mask));
  const body = encodeUpdate({ ...u, maskRef: ref === ackedMaskRef ? ref : undefined, compactMask: true });
  return { body, maskRef: ref };
}

/** How an encoded update's mask travels, read from its header alone (for reports). */
export function maskFormOf(body: Uint8Array): MaskForm {
  const u = decodeSafetensors(body, { maxHeaderBytes: 64 * 1024 });
  if (u.metadata.maskRef !== undefined) return "ref";
  const code = u.metadata.maskCode;
  if (code !== undefined) return parseMaskCode(code, new Uint8Array(0), "maskCode").mode;
  return u.tensors.get("mask")?.dtype === "U32" ? "u32" : "u8";
}

/**
 * The same update with its mask attached (smallest code) instead of a `maskRef`: what a client sends
 * after a 409 `mask_unknown`. `mask` is the 0/1 mask the reference named.
 */
export function attachMask(body: Uint8Array, mask: Uint8Array): Uint8Array {
  const dec = decodeSafetensors(body);
  const vt = dec.tensors.get("values");
  if (!vt || vt.dtype !== "F32") throw new RangeError("attachMask needs an update with F32 values");
  const { maskRef: _, ...meta } = dec.metadata;
  const tensors: Record<string, TensorIn> = {
    values: { dtype: "F32", shape: vt.shape, data: f32Of(vt) },
  };
  const count = scalarKernels.popcount(mask);
  if (count !== vt.shape[0]) throw new RangeError(`mask has ${count} ones, update has ${vt.shape[0]} values`);
  return withMask(tensors, meta, packMask(mask), codedForms(mask, undefined));
}

/**
 * The smallest body of the update with its mask as a U32 bitmask or one of the coded `forms` (a code
 * a few bytes under the bitmask can lose them again to its longer header entry).
 */
function withMask(
  tensors: Record<string, TensorIn>,
  meta: Record<string, string>,
  bits: Uint32Array,
  forms: CodedForm[],
): Uint8Array {
  let best = encodeSafetensors(
    { ...tensors, mask: { dtype: "U32", shape: [bits.length], data: bits } },
    meta,
  );
  for (const form of forms) {
    const body = encodeSafetensors({ ...tensors, ...form.tensors }, { ...meta, ...form.meta });
    if (body.length < best.length) best = body;
  }
  return best;
}

interface CodedForm {
  tensors: Record<string, TensorIn>;
  meta: Record<string, string>;
}

/** The coded forms of a new mask: over all positions, and over the client's support when given. */
function codedForms(
  mask: Uint8Array,
  support: Uint8Array | undefined,
): CodedForm[] {
  const u8 = (b: Uint8Array): TensorIn => ({ dtype: "U8", shape: [b.length], data: b });
  const out: CodedForm[] = [];
  // (A plain bitmask is the U32 `mask` tensor that `withMask` always tries.)
  const code = encodeMask(mask, scalarKernels);
  if (code.mode !== "bits") {
    out.push({ tensors: { mask_code: u8(code.bytes) }, meta: { maskCode: maskCodeName(code) } });
  }
  if (support) {
    if (support.length !== mask.length) throw new RangeError("support and mask lengths differ");
    const inner: number[] = [];
    for (let p = 0; p < mask.length; p++) {
      if (support[p]) inner.push(mask[p]);
      else if (mask[p]) throw new RangeError(`mask position ${p} is outside the support`);
    }
    const sc = encodeMask(support, scalarKernels);
    const ic = encodeMask(Uint8Array.from(inner), scalarKernels);
    out.push({
      tensors: { mask_code: u8(ic.bytes), support_code: u8(sc.bytes) },
      meta: { maskCode: maskCodeName(ic), supportCode: maskCodeName(sc), supportSize: String(inner.length) },
    });
  }
  return out;
}

/**
 * Revisions of the slice body that change its size, not its meaning (every revision decodes): 1, plain
 * bitmasks and a stack with its zeros; 2 (2026-12-04), a stack's exact zeros dropped and both bitmasks
 * in their smallest code. A simulation records the one its download bytes were measured on, so a
 * table built from older cached runs can say which of its download figures are stale.
 */
export const SLICE_REVISION = 2;

/** Encodes a personalized slice (server side); each bitmask in its smallest form. */
export function encodeSlice(s: DecodedSlice): Uint8Array {
  const tensors: Record<string, TensorIn> = {
    values: { dtype: "F32", shape: [s.values.length], data: s.values },
  };
  const meta: Record<string, string> = {
    format: "perfit-slice/1",
    run: s.run,
    round: String(s.round),
    adapterSize: String(s.adapterSize),
  };
  for (const [name, bits] of [["mask", s.maskBits], ["covered", s.coveredBits]] as const) {
    const code = encodeMask(unpackMask(bits, s.adapterSize), scalarKernels);
    if (code.bytes.length < bits.byteLength) {
      tensors[`${name}_code`] = { dtype: "U8", shape: [code.bytes.length], data: code.bytes };
      meta[`${name}Code`] = maskCodeName(code);
      if (name === "mask") meta.maskCount = String(popcountBits(bits));
    } else {
      tensors[name] = { dtype: "U32", shape: [bits.length], data: bits };
    }
  }
  return encodeSafetensors(tensors, meta);
}

const SLICE_TENSORS = new Set(["mask", "mask_code", "covered", "covered_code", "values"]);

/** One of a slice's bitmasks, from its U32 form or its code with `count` ones (`count` null: the metadata's). */
function sliceBits(
  dec: { tensors: Map<string, TensorOut>; metadata: Record<string, string> },
  name: "mask" | "covered",
  n: number,
  count: number | null,
): Uint32Array {
  const plain = dec.tensors.get(name), coded = dec.tensors.get(`${name}_code`);
  if ((plain ? 1 : 0) + (coded ? 1 : 0) !== 1) {
    throw new WireError(422, "missing_tensor", `slice needs exactly one of ${name} and ${name}_code`);
  }
  if (plain) {
    if (plain.dtype !== "U32" || plain.bytes.length !== 4 * bitWords(n)) {
      throw new WireError(422, "bad_shape", "slice bitmasks do not match adapterSize");
    }
    return u32Of(plain);
  }
  const code = parseMaskCode(
    parseMeta(dec.metadata, `${name}Code`),
    codeBytes(coded!, `${name}_code`),
    `${name}Code`,
  );
  const c = count ?? Number(parseMeta(dec.metadata, "maskCount"));
  return packMask(decodeCodeOf(code, `${name}_code`, n, c));
}

/** Decodes a slice (client side) and checks it is self-consistent. */
export function decodeSlice(body: Uint8Array): DecodedSlice {
  let dec;
  try {
    dec = decodeSafetensors(body);
  } catch (e) {
    if (e instanceof SafetensorsError) throw new WireError(400, "malformed_safetensors", e.message);
    throw e;
  }
  for (const name of dec.tensors.keys()) {
    if (!SLICE_TENSORS.has(name)) throw new WireError(422, "unknown_tensor", `unexpected tensor ${name}`);
  }
  const n = Number(dec.metadata.adapterSize);
  if (!Number.isSafeInteger(n) || n < 0) throw new WireError(422, "bad_metadata", "slice adapterSize");
  const valuesT = dec.tensors.get("values");
  if (!valuesT) throw new WireError(422, "missing_tensor", "slice lacks values");
  const values = f32Of(valuesT);
  const maskBits = sliceBits(dec, "mask", n, null);
  const coveredBits = sliceBits(dec, "covered", n, values.length);
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
