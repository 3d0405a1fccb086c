/**
 * Binding of the Rust SIMD module `wasm/perfit_kernels.wasm` (plain C ABI, no glue code).
 *
 * Arrays that already live in the module's linear memory (from `allocF32`/`allocU8`) are passed by
 * pointer. Other arrays are copied in (and outputs back): the element-wise kernels (accumulate,
 * accumulateSparse, finalize, maskedAdamW, jaccard, countNonFinite) stream them through a fixed 1.3 MB
 * staging area that never grows memory; the others use one reused scratch block that grows as needed.
 */
import { type AdamWStep, KernelError, type Kernels } from "./types.ts";
import {
  adamWConstants,
  checkAccumulateArgs,
  checkAdamWArgs,
  checkFinalizeArgs,
  checkScatterArgs,
  checkSparseArgs,
  keyToBits,
} from "./scalar.ts";
import {
  checkBits,
  checkK,
  checkLength,
  checkSameLength,
  checkType,
  deltaBound,
  outArray,
} from "./validate.ts";
import { LinearArena } from "./memory.ts";
import { hasFileSystem, readBytes } from "../io/files.ts";

/** Where to load the module from: bytes, a compiled module, or a URL (string or URL object). */
export type WasmSource = BufferSource | WebAssembly.Module | URL | string;

// deno-fmt-ignore
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

/** True when this engine validates a module using v128 (WebAssembly SIMD). */
export function simdSupported(): boolean {
  try {
    return typeof WebAssembly === "object" && WebAssembly.validate(SIMD_PROBE);
  } catch {
    return false;
  }
}

interface Exports {
  memory: WebAssembly.Memory;
  __heap_base: WebAssembly.Global;
  pk_find_nan(x: number, n: number): number;
  pk_topk_select(x: number, n: number, k: number, out: number): number;
  pk_topk_mask(x: number, n: number, t: number, ties: number, mask: number): void;
  pk_mask_to_bits(mask: number, n: number, bits: number): void;
  pk_bits_to_mask(bits: number, n: number, mask: number): number;
  pk_popcount_u8(mask: number, n: number): number;
  pk_popcount_u32(bits: number, words: number): number;
  pk_encode_deltas(mask: number, n: number, out: number): number;
  pk_decode_deltas(bytes: number, len: number, n: number, mask: number): number;
  pk_gather(dense: number, mask: number, n: number, out: number): number;
  pk_scatter(values: number, mask: number, n: number, out: number): void;
  pk_accumulate(sum: number, weight: number, values: number, mask: number, n: number, w: number): void;
  pk_accumulate_sparse(
    sum: number,
    weight: number,
    n: number,
    bits: number,
    values: number,
    count: number,
    w: number,
  ): void;
  pk_finalize(sum: number, weight: number, own: number, out: number, n: number): void;
  pk_masked_adamw(p: number, g: number, m: number, v: number, mask: number, n: number, c: number): void;
  pk_overlap(a: number, b: number, n: number, out: number): void;
  pk_count_nonfinite(x: number, n: number): number;
}

type View = Float32Array | Uint8Array | Uint32Array;
/** Elements per staging slot (256 KiB of f32), and slots (the most arrays an element-wise kernel takes). */
const STAGE_ELEMS = 65536;
const STAGE_SLOTS = 5;
const IN = 0, OUT = 1, INOUT = 2;
type Mode = typeof IN | typeof OUT | typeof INOUT;

async function fetchBytes(url: URL): Promise<BufferSource> {
  // Deno and Node read file: URLs from disk (fetch of a file: URL is Deno's only); browsers fetch.
  if (url.protocol === "file:" && hasFileSystem()) return (await readBytes(url)) as Uint8Array<ArrayBuffer>;
  const res = await fetch(url);
  if (!res.ok) throw new KernelError(`could not fetch ${url}: HTTP ${res.status}`);
  return await res.arrayBuffer();
}

async function compile(source: WasmSource | undefined): Promise<WebAssembly.Module> {
  if (source instanceof WebAssembly.Module) return source;
  if (source === undefined || typeof source === "string" || source instanceof URL) {
    const url = source === undefined
      ? new URL("../../wasm/perfit_kernels.wasm", import.meta.url)
      : new URL(source, import.meta.url);
    return await WebAssembly.compile(await fetchBytes(url));
  }
  return await WebAssembly.compile(source);
}

/** Compiles and instantiates the kernel module. Throws `KernelError` if WASM SIMD is unavailable. */
export async function loadWasmKernels(source?: WasmSource): Promise<Kernels> {
  if (!simdSupported()) throw new KernelError("WebAssembly SIMD is not supported by this engine");
  const module = await compile(source);
  const instance = await WebAssembly.instantiate(module, {});
  return new WasmKernels(instance.exports as unknown as Exports);
}

function isDetached(v: View): boolean {
  // `ArrayBuffer.prototype.detached` is ES2024; older engines report undefined and are not checked.
  return (v.buffer as ArrayBuffer & { detached?: boolean }).detached === true;
}

class WasmKernels implements Kernels {
  readonly name = "wasm-simd";
  private readonly memory: WebAssembly.Memory;
  private readonly arena: LinearArena;
  private scratchOff = -1;
  private scratchSize = 0;
  /** 64 bytes for small results and the AdamW constants. */
  private readonly small: number;
  /** Fixed staging area for streaming ordinary arrays through element-wise kernels: never grows. */
  private readonly stage: number;

  constructor(private readonly x: Exports) {
    this.memory = x.memory;
    this.arena = new LinearArena(x.memory, x.__heap_base.value as number);
    this.small = this.arena.alloc(64);
    this.stage = this.arena.alloc(STAGE_SLOTS * STAGE_ELEMS * 4);
  }

  allocF32(n: number): Float32Array {
    checkLength("n", n);
    const off = this.arena.alloc(n * 4);
    const v = new Float32Array(this.memory.buffer, off, n);
    v.fill(0);
    return v;
  }

  allocU8(n: number): Uint8Array {
    checkLength("n", n);
    const off = this.arena.alloc(n);
    const v = new Uint8Array(this.memory.buffer, off, n);
    v.fill(0);
    return v;
  }

  free(view: Float32Array | Uint8Array): void {
    if (view.buffer !== this.memory.buffer) return;
    this.arena.free(view.byteOffset);
  }

  reserve(bytes: number): void {
    this.arena.reserve(bytes);
  }

  /**
   * Gives each array a pointer: resident arrays by offset, others through the scratch block (copied in
   * unless OUT). Returns the pointers and a function that copies outputs back.
   */
  private marshal(args: Array<[View, Mode]>): { p: number[]; done: () => void } {
    const plan: Array<{ resident: boolean; off: number }> = [];
    let need = 0;
    for (const [v] of args) {
      this.checkAttached(v);
      if (v.buffer === this.memory.buffer || v.byteLength === 0) {
        plan.push({ resident: true, off: v.byteOffset });
      } else {
        plan.push({ resident: false, off: need });
        need += Math.ceil(v.byteLength / 16) * 16;
      }
    }
    if (need > this.scratchSize) {
      if (this.scratchOff >= 0) this.arena.free(this.scratchOff);
      this.scratchOff = -1;
      this.scratchSize = 0;
      this.scratchOff = this.arena.alloc(need);
      this.scratchSize = need;
    }
    const mem = new Uint8Array(this.memory.buffer);
    const p = plan.map((q, i) => {
      if (q.resident) return q.off;
      const ptr = this.scratchOff + q.off;
      const [v, mode] = args[i];
      if (mode !== OUT) mem.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), ptr);
      return ptr;
    });
    const done = () => {
      const m = new Uint8Array(this.memory.buffer);
      plan.forEach((q, i) => {
        const [v, mode] = args[i];
        if (q.resident || mode === IN) return;
        new Uint8Array(v.buffer, v.byteOffset, v.byteLength).set(m.subarray(p[i], p[i] + v.byteLength));
      });
    };
    return { p, done };
  }

  /**
   * Runs an element-wise kernel over n positions. Resident arrays are passed in place; ordinary arrays
   * are streamed chunk by chunk through the fixed staging area, so this path never grows memory (and
   * so never detaches the caller's `alloc*` views) and each chunk is still in cache when the kernel
   * reads it.
   */
  private streamed(args: Array<[View, Mode]>, n: number, kernel: (p: number[], len: number) => void): void {
    for (const [v] of args) this.checkAttached(v);
    const resident = args.map(([v]) => v.buffer === this.memory.buffer);
    if (resident.every((r) => r) || n === 0) {
      kernel(args.map(([v]) => v.byteOffset), n);
      return;
    }
    for (let start = 0; start < n; start += STAGE_ELEMS) {
      const len = Math.min(STAGE_ELEMS, n - start);
      const mem = new Uint8Array(this.memory.buffer);
      const p = args.map(([v, mode], i) => {
        const bpe = v.BYTES_PER_ELEMENT;
        if (resident[i]) return v.byteOffset + start * bpe;
        const slot = this.stage + i * STAGE_ELEMS * 4;
        if (mode !== OUT) mem.set(new Uint8Array(v.buffer, v.byteOffset + start * bpe, len * bpe), slot);
        return slot;
      });
      kernel(p, len);
      args.forEach(([v, mode], i) => {
        if (resident[i] || mode === IN) return;
        const bpe = v.BYTES_PER_ELEMENT;
        new Uint8Array(v.buffer, v.byteOffset + start * bpe, len * bpe).set(
          mem.subarray(p[i], p[i] + len * bpe),
        );
      });
    }
  }

  private checkAttached(v: View): void {
    if (isDetached(v)) {
      throw new KernelError(
        "array is detached: WASM memory grew after it was allocated; call kernels().reserve(bytes) before allocating",
      );
    }
  }

  private u32(i: number): number {
    return new Uint32Array(this.memory.buffer, this.small, 16)[i];
  }

  private nanError(scores: Float32Array, ptr: number): KernelError {
    const i = this.x.pk_find_nan(ptr, scores.length);
    return new KernelError(`score at index ${i} is NaN`);
  }

  /** Runs the radix select; returns undefined for k = 0 (after checking for NaN). */
  private select(scores: Float32Array, k: number, ptr: number): { key: number; ties: number } | undefined {
    if (k === 0) {
      if (this.x.pk_find_nan(ptr, scores.length) >= 0) throw this.nanError(scores, ptr);
      return undefined;
    }
    if (this.x.pk_topk_select(ptr, scores.length, k, this.small) !== 0) throw this.nanError(scores, ptr);
    return { key: this.u32(0), ties: this.u32(1) };
  }

  topkThreshold(scores: Float32Array, k: number): number {
    checkType("scores", scores, Float32Array);
    checkK(k, scores.length);
    const { p } = this.marshal([[scores, IN]]);
    const sel = this.select(scores, k, p[0]);
    if (sel === undefined) return Infinity;
    return new Float32Array(new Uint32Array([keyToBits(sel.key)]).buffer)[0];
  }

  topkMask(scores: Float32Array, k: number, out?: Uint8Array): Uint8Array {
    checkType("scores", scores, Float32Array);
    checkK(k, scores.length);
    const mask = outArray(out, Uint8Array, scores.length, "input");
    const { p, done } = this.marshal([[scores, IN], [mask, OUT]]);
    const sel = this.select(scores, k, p[0]);
    if (sel === undefined) {
      mask.fill(0);
      return mask;
    }
    this.x.pk_topk_mask(p[0], scores.length, sel.key, sel.ties, p[1]);
    done();
    return mask;
  }

  maskToBits(mask: Uint8Array, out?: Uint32Array): Uint32Array {
    checkType("mask", mask, Uint8Array);
    const words = Math.ceil(mask.length / 32);
    const bits = outArray(out, Uint32Array, words, "ceil(mask.length/32)");
    const { p, done } = this.marshal([[mask, IN], [bits, OUT]]);
    this.x.pk_mask_to_bits(p[0], mask.length, p[1]);
    done();
    return bits;
  }

  bitsToMask(bits: Uint32Array, n: number, out?: Uint8Array): Uint8Array {
    checkType("bits", bits, Uint32Array);
    checkLength("n", n);
    checkBits(bits, n);
    const mask = outArray(out, Uint8Array, n, "input");
    const { p, done } = this.marshal([[bits, IN], [mask, OUT]]);
    this.x.pk_bits_to_mask(p[0], n, p[1]);
    done();
    return mask;
  }

  popcount(x: Uint8Array | Uint32Array): number {
    if (x instanceof Uint8Array) {
      const { p } = this.marshal([[x, IN]]);
      return this.x.pk_popcount_u8(p[0], x.length) >>> 0;
    }
    if (x instanceof Uint32Array) {
      const { p } = this.marshal([[x, IN]]);
      return this.x.pk_popcount_u32(p[0], x.length) >>> 0;
    }
    throw new KernelError(`popcount needs a Uint8Array mask or Uint32Array bitmask`);
  }

  encodeDeltas(mask: Uint8Array): Uint8Array {
    checkType("mask", mask, Uint8Array);
    const ones = this.popcount(mask);
    const buf = new Uint8Array(deltaBound(ones, mask.length));
    const { p } = this.marshal([[mask, IN], [buf, OUT]]);
    const len = this.x.pk_encode_deltas(p[0], mask.length, p[1]) >>> 0;
    return new Uint8Array(this.memory.buffer, p[1], len).slice();
  }

  decodeDeltas(bytes: Uint8Array, n: number, out?: Uint8Array): Uint8Array {
    checkType("bytes", bytes, Uint8Array);
    checkLength("n", n);
    const mask = outArray(out, Uint8Array, n, "input");
    const { p, done } = this.marshal([[bytes, IN], [mask, OUT]]);
    const r = this.x.pk_decode_deltas(p[0], bytes.length, n, p[1]);
    if (r === -1) throw new KernelError(`delta code truncated at its end`);
    if (r === -2) throw new KernelError(`delta code has a varint that overflows 32 bits`);
    if (r === -3) throw new KernelError(`delta code points at an index past mask length n = ${n}`);
    done();
    return mask;
  }

  gather(dense: Float32Array, mask: Uint8Array, out?: Float32Array): Float32Array {
    checkType("dense", dense, Float32Array);
    checkType("mask", mask, Uint8Array);
    checkSameLength("dense", dense.length, "mask", mask.length);
    const ones = this.popcount(mask);
    const values = outArray(out, Float32Array, ones, "popcount(mask)");
    const { p, done } = this.marshal([[dense, IN], [mask, IN], [values, OUT]]);
    this.x.pk_gather(p[0], p[1], mask.length, p[2]);
    done();
    return values;
  }

  scatter(values: Float32Array, mask: Uint8Array, out: Float32Array): void {
    checkScatterArgs(values, mask, out, (m) => this.popcount(m));
    const { p, done } = this.marshal([[values, IN], [mask, IN], [out, INOUT]]);
    this.x.pk_scatter(p[0], p[1], mask.length, p[2]);
    done();
  }

  accumulate(
    sum: Float32Array,
    weight: Float32Array,
    values: Float32Array,
    mask: Uint8Array,
    n: number,
  ): void {
    checkAccumulateArgs(sum, weight, values, mask, n);
    this.streamed(
      [[sum, INOUT], [weight, INOUT], [values, IN], [mask, IN]],
      sum.length,
      (p, len) => this.x.pk_accumulate(p[0], p[1], p[2], p[3], len, n),
    );
  }

  accumulateSparse(
    sum: Float32Array,
    weight: Float32Array,
    bits: Uint32Array,
    values: Float32Array,
    n: number,
  ): void {
    checkSparseArgs(sum, weight, bits, values, n, (b) => this.popcount(b));
    const mem = this.memory.buffer;
    const res = [sum, weight, bits, values].map((v) => v.buffer === mem);
    if (res.every((r) => r)) {
      const x = this.x;
      x.pk_accumulate_sparse(
        sum.byteOffset,
        weight.byteOffset,
        sum.length,
        bits.byteOffset,
        values.byteOffset,
        values.length,
        n,
      );
      return;
    }
    // Stream STAGE_ELEMS positions (a whole number of bitmask words) at a time through the staging area.
    const slot = (i: number) => this.stage + i * STAGE_ELEMS * 4;
    let r = 0;
    for (let start = 0; start < sum.length; start += STAGE_ELEMS) {
      const len = Math.min(STAGE_ELEMS, sum.length - start);
      const w0 = start / 32, words = Math.ceil(len / 32);
      const u8 = new Uint8Array(this.memory.buffer);
      const bitsP = res[2] ? bits.byteOffset + w0 * 4 : slot(2);
      if (!res[2]) u8.set(new Uint8Array(bits.buffer, bits.byteOffset + w0 * 4, words * 4), bitsP);
      const count = this.x.pk_popcount_u32(bitsP, words) >>> 0;
      if (count === 0) continue;
      const ptr = (i: number, v: Float32Array, from: number, elems: number) => {
        if (res[i]) return v.byteOffset + from * 4;
        u8.set(new Uint8Array(v.buffer, v.byteOffset + from * 4, elems * 4), slot(i));
        return slot(i);
      };
      const sumP = ptr(0, sum, start, len), weightP = ptr(1, weight, start, len);
      const valuesP = ptr(3, values, r, count);
      this.x.pk_accumulate_sparse(sumP, weightP, len, bitsP, valuesP, count, n);
      r += count;
      for (const [i, v, p] of [[0, sum, sumP], [1, weight, weightP]] as const) {
        if (!res[i]) {
          new Uint8Array(v.buffer, v.byteOffset + start * 4, len * 4).set(u8.subarray(p, p + len * 4));
        }
      }
    }
  }

  finalize(sum: Float32Array, weight: Float32Array, own: Float32Array, out: Float32Array): void {
    checkFinalizeArgs(sum, weight, own, out);
    this.streamed(
      [[sum, IN], [weight, IN], [own, IN], [out, OUT]],
      sum.length,
      (p, len) => this.x.pk_finalize(p[0], p[1], p[2], p[3], len),
    );
  }

  maskedAdamW(
    params: Float32Array,
    grads: Float32Array,
    m: Float32Array,
    v: Float32Array,
    mask: Uint8Array | undefined,
    opts: AdamWStep,
  ): void {
    checkAdamWArgs(params, grads, m, v, mask, opts);
    const c = adamWConstants(opts);
    const args: Array<[View, Mode]> = [[params, INOUT], [grads, IN], [m, INOUT], [v, INOUT]];
    if (mask !== undefined) args.push([mask, IN]);
    new Float32Array(this.memory.buffer, this.small, 8).set([
      c.b1,
      c.b2,
      c.omb1,
      c.omb2,
      c.decay,
      c.stepSize,
      c.bc2,
      c.eps,
    ]);
    this.streamed(args, params.length, (p, len) => {
      this.x.pk_masked_adamw(p[0], p[1], p[2], p[3], mask === undefined ? 0 : p[4], len, this.small);
    });
  }

  jaccard(a: Uint8Array, b: Uint8Array): number {
    checkType("a", a, Uint8Array);
    checkType("b", b, Uint8Array);
    checkSameLength("a", a.length, "b", b.length);
    let inter = 0, union = 0;
    this.streamed([[a, IN], [b, IN]], a.length, (p, len) => {
      this.x.pk_overlap(p[0], p[1], len, this.small);
      inter += this.u32(0);
      union += this.u32(1);
    });
    return union === 0 ? 1 : inter / union;
  }

  countNonFinite(x: Float32Array): number {
    checkType("x", x, Float32Array);
    let count = 0;
    this.streamed([[x, IN]], x.length, (p, len) => (count += this.x.pk_count_nonfinite(p[0], len) >>> 0));
    return count;
  }
}
