/**
 * Safetensors codec: the one tensor container every part of Perfit speaks (model weights,
 * uploads, personalized slices, PEFT exports). Format: u64 little-endian header length, a JSON
 * header `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}`,
 * then the raw little-endian bytes.
 */

import type { SequentialReader } from "./reader.ts";

export type DType = "F32" | "F16" | "BF16" | "I64" | "I32" | "U8" | "U32" | "BOOL";

/** What `encodeSafetensors` takes for one tensor. */
export interface TensorIn {
  dtype: DType;
  shape: number[];
  data: ArrayBufferView;
}

/** One decoded tensor: `bytes` is a view into the input buffer (no copy). */
export interface TensorOut {
  dtype: DType;
  shape: number[];
  bytes: Uint8Array;
}

export interface Decoded {
  metadata: Record<string, string>;
  tensors: Map<string, TensorOut>;
}

/** Every malformed container is reported with this error, never with garbage tensors. */
export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

const DTYPE_BYTES: Record<DType, number> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  U8: 1,
  U32: 4,
  BOOL: 1,
};

/** Bytes per element of a safetensors dtype. */
export function dtypeBytes(dtype: DType): number {
  const b = DTYPE_BYTES[dtype];
  if (b === undefined) throw new SafetensorsError(`unsupported dtype ${JSON.stringify(dtype)}`);
  return b;
}

function elementCount(shape: number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new SafetensorsError(`invalid shape ${JSON.stringify(shape)}`);
    }
    n *= d;
  }
  return n;
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** Serializes tensors (in insertion order) and string metadata into one safetensors buffer. */
export function encodeSafetensors(
  tensors: Record<string, TensorIn>,
  metadata?: Record<string, string>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") throw new SafetensorsError(`metadata ${k} must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    if (name === "__metadata__") throw new SafetensorsError("tensor name __metadata__ is reserved");
    const expected = elementCount(t.shape) * dtypeBytes(t.dtype);
    if (t.data.byteLength !== expected) {
      throw new SafetensorsError(
        `tensor ${name}: ${t.data.byteLength} bytes for shape ${
          JSON.stringify(t.shape)
        } ${t.dtype} (expected ${expected})`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + expected] };
    parts.push(bytesOf(t.data));
    offset += expected;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  // The spec recommends 8-byte alignment of the data section; pad the header with spaces.
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) {
    const padded = new Uint8Array(json.length + pad).fill(0x20);
    padded.set(json);
    json = padded;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let p = 8 + json.length;
  for (const part of parts) {
    out.set(part, p);
    p += part.length;
  }
  return out;
}

/** One tensor's header entry; `begin`/`end` are byte offsets into the data section. */
interface HeaderEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

/** The header length in a container's first 8 bytes, checked against the limit and the bytes there are. */
function headerLength(first8: Uint8Array, available: number, maxHeader: number): number {
  if (first8.byteLength < 8) throw new SafetensorsError("buffer shorter than the 8-byte header length");
  const hlen = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (hlen > BigInt(Math.min(maxHeader, available))) {
    throw new SafetensorsError(`header length ${hlen} exceeds the buffer or the ${maxHeader}-byte limit`);
  }
  return Number(hlen);
}

/**
 * Parses and checks a JSON header against a data section of `dataLen` bytes: dtypes, shapes against
 * byte ranges, overlapping or out-of-bounds ranges. Entries come in the header's order.
 */
function parseHeader(
  json: Uint8Array,
  dataLen: number,
): { metadata: Record<string, string>; entries: HeaderEntry[] } {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(json));
  } catch (e) {
    throw new SafetensorsError(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new SafetensorsError("header must be a JSON object");
  }
  const metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
        throw new SafetensorsError("__metadata__ must be an object of strings");
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== "string") throw new SafetensorsError(`__metadata__.${k} must be a string`);
        metadata[k] = v;
      }
      continue;
    }
    const info = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof info !== "object" || info === null) {
      throw new SafetensorsError(`tensor ${name}: entry must be an object`);
    }
    const dtype = info.dtype as DType;
    if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
      throw new SafetensorsError(`tensor ${name}: unsupported dtype ${JSON.stringify(info.dtype)}`);
    }
    if (!Array.isArray(info.shape)) throw new SafetensorsError(`tensor ${name}: shape must be an array`);
    const shape = info.shape as number[];
    const count = elementCount(shape);
    const offs = info.data_offsets;
    if (
      !Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offs[0] > offs[1] || offs[1] > dataLen
    ) {
      throw new SafetensorsError(
        `tensor ${name}: data_offsets ${JSON.stringify(offs)} out of bounds (data is ${dataLen} bytes)`,
      );
    }
    const [begin, end] = offs as [number, number];
    if (end - begin !== count * DTYPE_BYTES[dtype]) {
      throw new SafetensorsError(
        `tensor ${name}: ${end - begin} bytes do not match shape ${JSON.stringify(shape)} of ${dtype}`,
      );
    }
    entries.push({ name, dtype, shape, begin, end });
  }
  const ranges = [...entries].sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i].begin < ranges[i - 1].end) {
      throw new SafetensorsError(`tensors ${ranges[i - 1].name} and ${ranges[i].name} overlap`);
    }
  }
  return { metadata, entries };
}

/**
 * Parses a safetensors buffer. Checks everything a hostile upload could get wrong: header length,
 * JSON, dtypes, shapes against byte ranges, overlapping or out-of-bounds ranges.
 */
export function decodeSafetensors(
  bytes: Uint8Array,
  opts: { maxHeaderBytes?: number } = {},
): Decoded {
  const maxHeader = opts.maxHeaderBytes ?? 100 * 1024 * 1024;
  const headerEnd = 8 + headerLength(bytes.subarray(0, 8), bytes.byteLength - 8, maxHeader);
  const { metadata, entries } = parseHeader(bytes.subarray(8, headerEnd), bytes.byteLength - headerEnd);
  const tensors = new Map<string, TensorOut>();
  for (const e of entries) {
    tensors.set(e.name, {
      dtype: e.dtype,
      shape: e.shape,
      bytes: bytes.subarray(headerEnd + e.begin, headerEnd + e.end),
    });
  }
  return { metadata, tensors };
}

/**
 * Reads a safetensors container front to back, handing each tensor to `visit` in the order of its
 * data, so that only one tensor's bytes are in memory at a time (a model's weights file is never held
 * whole). The same checks as `decodeSafetensors`; a file that ends early is refused. Returns the
 * metadata.
 */
export async function readSafetensors(
  reader: SequentialReader,
  visit: (name: string, tensor: TensorOut) => void,
  opts: { maxHeaderBytes?: number } = {},
): Promise<Record<string, string>> {
  const maxHeader = opts.maxHeaderBytes ?? 100 * 1024 * 1024;
  const known = reader.size;
  const hlen = headerLength(await reader.read(8), known === undefined ? Infinity : known - 8, maxHeader);
  const json = await reader.read(hlen);
  if (json.byteLength < hlen) throw new SafetensorsError(`file ends inside its ${hlen}-byte header`);
  const dataLen = known === undefined ? Number.MAX_SAFE_INTEGER : known - 8 - hlen;
  const { metadata, entries } = parseHeader(json, dataLen);
  let pos = 0;
  for (const e of [...entries].sort((a, b) => a.begin - b.begin)) {
    // Bytes between tensors belong to none (the format allows no gaps, but they cost nothing to skip).
    for (let gap = e.begin - pos; gap > 0;) {
      const skipped = (await reader.read(Math.min(gap, 1 << 20))).byteLength;
      if (skipped === 0) throw new SafetensorsError(`file ends before tensor ${e.name}`);
      gap -= skipped;
    }
    const bytes = await reader.read(e.end - e.begin);
    if (bytes.byteLength < e.end - e.begin) {
      throw new SafetensorsError(`file ends inside tensor ${e.name}`);
    }
    pos = e.end;
    visit(e.name, { dtype: e.dtype, shape: e.shape, bytes });
  }
  return metadata;
}

/** f16 bits to f32 value (IEEE 754 half: subnormals, inf and NaN included). */
function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Reads an F32, F16 or BF16 tensor into a fresh (aligned) Float32Array. */
export function tensorToFloat32(t: TensorOut): Float32Array {
  const n = elementCount(t.shape);
  const dv = new DataView(t.bytes.buffer, t.bytes.byteOffset, t.bytes.byteLength);
  const out = new Float32Array(n);
  switch (t.dtype) {
    case "F32":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
      break;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = halfToFloat(dv.getUint16(i * 2, true));
      break;
    case "BF16": {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = dv.getUint16(i * 2, true) << 16;
      break;
    }
    default:
      throw new SafetensorsError(`tensor of dtype ${t.dtype} is not a float tensor`);
  }
  return out;
}

/** f32 to f16 bits with round-to-nearest-even; used by writers of f16 checkpoints and tests. */
export function floatToHalf(x: number): number {
  const f32 = new Float32Array([x]);
  const u = new Uint32Array(f32.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}
