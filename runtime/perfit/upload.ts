/**
 * Upload codec: the values at a client's mask positions (f32) plus the mask in its most compact form.
 *
 * Masks persist across rounds and the coordinator stores them, so after the search round an upload
 * names its mask by hash ("ref", zero mask bytes) and costs 4·B + a 24-byte header. When the mask is
 * new it is sent as the smallest of: all-ones (no bytes), bitmask, LEB128 gaps, Golomb-Rice gaps,
 * or Golomb-Rice run lengths (importance masks are clustered along rows, so runs often win).
 *
 * Layout (little-endian): "PFU1" | u8 mode | u8 k1 | u8 k2 | u8 0 | u32 n | u32 count | u32 maskHash |
 * u32 maskBytes | mask bytes | count × f32 values.
 */
import { kernels } from "../kernels/mod.ts";
import type { Kernels } from "../kernels/types.ts";
import { decodeMask as decodeMaskCode, encodeMaskAs, MASK_CODE_MODES } from "../kernels/mask_code.ts";

/** How the mask travels. */
export type MaskMode = "ref" | "all" | "bits" | "deltas" | "rice-gaps" | "rice-runs";
const MODES: MaskMode[] = ["ref", "all", "bits", "deltas", "rice-gaps", "rice-runs"];
const MAGIC = [0x50, 0x46, 0x55, 0x31]; // "PFU1"
/** Fixed header size in bytes. */
export const HEADER_BYTES = 24;

/** Malformed or inconsistent upload. */
export class UploadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UploadError";
  }
}

/** FNV-1a over the mask (0/1 per byte) and its length: identifies a stored mask. */
export function maskHash(mask: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < mask.length; i++) h = Math.imul(h ^ (mask[i] !== 0 ? 1 : 0), 0x01000193) >>> 0;
  return Math.imul(h ^ mask.length, 0x01000193) >>> 0;
}

interface MaskCode {
  mode: MaskMode;
  k1: number;
  k2: number;
  bytes: Uint8Array;
}

function candidates(mask: Uint8Array, count: number, k: Kernels): MaskCode[] {
  const out: MaskCode[] = [];
  if (count === mask.length) out.push({ mode: "all", k1: 0, k2: 0, bytes: new Uint8Array(0) });
  for (const m of MASK_CODE_MODES) out.push(encodeMaskAs(mask, m, k));
  return out;
}

function decodeMask(code: MaskCode, n: number, count: number, k: Kernels): Uint8Array {
  if (code.mode === "all") return new Uint8Array(n).fill(1);
  if (code.mode === "ref") throw new UploadError("cannot decode mask mode ref");
  try {
    return decodeMaskCode({ ...code, mode: code.mode }, n, count, k);
  } catch (e) {
    throw new UploadError(`bad ${code.mode} mask code: ${(e as Error).message}`);
  }
}

/** Options of `encodeUpload`. */
export interface EncodeOptions {
  /** Hash of the mask the coordinator already stores for this client; equal hash → "ref" mode. */
  storedMaskHash?: number;
  /** Force a mask mode (tests, benchmarks); default picks the smallest. */
  mode?: MaskMode;
  kernels?: Kernels;
}

/**
 * Encodes a client's upload. `values` is dense over the client's layout (length n); only the
 * positions in `mask` travel.
 */
export function encodeUpload(values: Float32Array, mask: Uint8Array, opts: EncodeOptions = {}): Uint8Array {
  const k = opts.kernels ?? kernels();
  if (values.length !== mask.length) throw new UploadError(`values ${values.length} != mask ${mask.length}`);
  const n = mask.length;
  const count = k.popcount(mask);
  const hash = maskHash(mask);
  let code: MaskCode;
  if (opts.mode === "ref" || (opts.mode === undefined && opts.storedMaskHash === hash)) {
    if (opts.storedMaskHash !== undefined && opts.storedMaskHash !== hash) {
      throw new UploadError("ref mode requested but the mask changed");
    }
    code = { mode: "ref", k1: 0, k2: 0, bytes: new Uint8Array(0) };
  } else {
    const all = candidates(mask, count, k);
    const pool = opts.mode ? all.filter((c) => c.mode === opts.mode) : all;
    if (pool.length === 0) throw new UploadError(`mask mode ${opts.mode} does not apply to this mask`);
    code = pool.reduce((a, b) => (b.bytes.length < a.bytes.length ? b : a));
  }
  const packed = k.gather(values, mask);
  const out = new Uint8Array(HEADER_BYTES + code.bytes.length + packed.length * 4);
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  dv.setUint8(4, MODES.indexOf(code.mode));
  dv.setUint8(5, code.k1);
  dv.setUint8(6, code.k2);
  dv.setUint32(8, n, true);
  dv.setUint32(12, count, true);
  dv.setUint32(16, hash, true);
  dv.setUint32(20, code.bytes.length, true);
  out.set(code.bytes, HEADER_BYTES);
  const vOff = HEADER_BYTES + code.bytes.length;
  for (let i = 0; i < packed.length; i++) dv.setFloat32(vOff + 4 * i, packed[i], true);
  return out;
}

/** A decoded upload. */
export interface DecodedUpload {
  mode: MaskMode;
  mask: Uint8Array;
  /** Dense over the client layout; zero outside the mask. */
  values: Float32Array;
  maskHash: number;
  maskBytes: number;
  totalBytes: number;
}

/** Options of `decodeUpload`. */
export interface DecodeOptions {
  /** Expected mask length (the client's layout size); mismatches are rejected. */
  n?: number;
  /** The client's stored mask, needed for "ref" uploads. */
  storedMask?: Uint8Array;
  kernels?: Kernels;
}

/** Decodes and validates an upload: magic, sizes, mask consistency, finite values. */
export function decodeUpload(bytes: Uint8Array, opts: DecodeOptions = {}): DecodedUpload {
  const k = opts.kernels ?? kernels();
  if (bytes.length < HEADER_BYTES) {
    throw new UploadError(`upload of ${bytes.length} bytes is shorter than the header`);
  }
  for (let i = 0; i < 4; i++) {
    if (bytes[i] !== MAGIC[i]) throw new UploadError("not a PerFIT upload (bad magic)");
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const modeIdx = dv.getUint8(4);
  if (modeIdx >= MODES.length) throw new UploadError(`unknown mask mode ${modeIdx}`);
  const mode = MODES[modeIdx];
  const n = dv.getUint32(8, true);
  const count = dv.getUint32(12, true);
  const hash = dv.getUint32(16, true);
  const maskBytes = dv.getUint32(20, true);
  if (opts.n !== undefined && n !== opts.n) throw new UploadError(`mask length ${n}, expected ${opts.n}`);
  if (count > n) throw new UploadError(`count ${count} exceeds mask length ${n}`);
  const expected = HEADER_BYTES + maskBytes + 4 * count;
  if (bytes.length !== expected) {
    throw new UploadError(`upload has ${bytes.length} bytes, header implies ${expected}`);
  }
  let mask: Uint8Array;
  if (mode === "ref") {
    if (!opts.storedMask) {
      throw new UploadError("upload refers to a stored mask but none is stored: resend the mask");
    }
    if (maskHash(opts.storedMask) !== hash) {
      throw new UploadError("upload refers to a different mask than the stored one: resend the mask");
    }
    if (opts.storedMask.length !== n) {
      throw new UploadError(`stored mask length ${opts.storedMask.length} != ${n}`);
    }
    mask = opts.storedMask.slice();
  } else {
    const code = {
      mode,
      k1: dv.getUint8(5),
      k2: dv.getUint8(6),
      bytes: bytes.subarray(HEADER_BYTES, HEADER_BYTES + maskBytes),
    };
    mask = decodeMask(code, n, count, k);
    if (maskHash(mask) !== hash) throw new UploadError("mask hash mismatch (corrupted upload)");
  }
  if (k.popcount(mask) !== count) {
    throw new UploadError(`mask has ${k.popcount(mask)} ones, header says ${count}`);
  }
  const packed = new Float32Array(count);
  const vOff = HEADER_BYTES + maskBytes;
  for (let i = 0; i < count; i++) packed[i] = dv.getFloat32(vOff + 4 * i, true);
  if (k.countNonFinite(packed) > 0) throw new UploadError("upload contains NaN or infinite values");
  const values = new Float32Array(n);
  k.scatter(packed, mask, values);
  return { mode, mask, values, maskHash: hash, maskBytes, totalBytes: bytes.length };
}

/** Bytes of a FedIT upload of `budget` values: the reference the 5% bound is measured against. */
export function feditBytes(budget: number): number {
  return 4 * budget;
}
