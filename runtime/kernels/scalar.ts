/**
 * Scalar TypeScript reference of every kernel. It defines the semantics the WASM SIMD and WebGPU
 * versions must reproduce bit-for-bit on integer outputs and masks, and serves as the fallback where
 * WebAssembly SIMD is missing.
 */
import { type AdamWStep, KernelError, type Kernels } from "./types.ts";
import { popcount32 } from "./bits.ts";
import {
  checkAdamW,
  checkBits,
  checkK,
  checkLength,
  checkSameLength,
  checkType,
  checkWeight,
  deltaBound,
  outArray,
} from "./validate.ts";

/** Radix-select digit layout over the 32-bit order key: 11 + 11 + 10 bits, top digit first. */
export const RADIX_PASSES: ReadonlyArray<{ shift: number; bits: number }> = [
  { shift: 21, bits: 11 },
  { shift: 10, bits: 11 },
  { shift: 0, bits: 10 },
];

/**
 * Maps float bits to an unsigned key whose integer order is the float order (-0 folded onto +0).
 * Callers must have rejected NaN.
 */
export function orderKey(bits: number): number {
  if (bits === 0x80000000) bits = 0;
  return (bits & 0x80000000) !== 0 ? (~bits >>> 0) : ((bits | 0x80000000) >>> 0);
}

/** Inverse of `orderKey`: the float bits of a key. */
export function keyToBits(key: number): number {
  return (key & 0x80000000) !== 0 ? ((key ^ 0x80000000) >>> 0) : (~key >>> 0);
}

function isNaNBits(bits: number): boolean {
  return (bits & 0x7fffffff) >>> 0 > 0x7f800000;
}

function bitsToFloat(bits: number): number {
  const u = new Uint32Array([bits]);
  return new Float32Array(u.buffer)[0];
}

/** Result of the radix select: the k-th largest key and how many of the ties at it the mask keeps. */
export interface TopkSelect {
  key: number;
  /** Number of elements equal to `key` that are kept (the lowest-index ones); >= 1 when k >= 1. */
  ties: number;
}

/** O(n) radix select of the k-th largest order key (k >= 1). Throws on NaN. */
export function topkSelect(scores: Float32Array, k: number): TopkSelect {
  const bits = new Uint32Array(scores.buffer, scores.byteOffset, scores.length);
  const n = bits.length;
  const hist = new Uint32Array(1 << 11);
  let prefix = 0;
  let prefixMask = 0;
  let remaining = k;
  for (let p = 0; p < RADIX_PASSES.length; p++) {
    const { shift, bits: width } = RADIX_PASSES[p];
    const digitMask = (1 << width) - 1;
    hist.fill(0);
    if (p === 0) {
      for (let i = 0; i < n; i++) {
        const b = bits[i];
        if (isNaNBits(b)) throw new KernelError(`score at index ${i} is NaN`);
        hist[orderKey(b) >>> shift]++;
      }
    } else {
      for (let i = 0; i < n; i++) {
        const key = orderKey(bits[i]);
        if (((key & prefixMask) >>> 0) === prefix) hist[(key >>> shift) & digitMask]++;
      }
    }
    let digit = digitMask;
    for (; digit > 0; digit--) {
      if (hist[digit] >= remaining) break;
      remaining -= hist[digit];
    }
    prefix = (prefix | (digit << shift)) >>> 0;
    prefixMask = (prefixMask | (digitMask << shift)) >>> 0;
  }
  return { key: prefix, ties: remaining };
}

function checkScores(scores: Float32Array, k: number): void {
  checkType("scores", scores, Float32Array);
  checkK(k, scores.length);
}

function countOnes(mask: Uint8Array): number {
  let c = 0;
  for (let i = 0; i < mask.length; i++) c += mask[i] !== 0 ? 1 : 0;
  return c;
}

/** Scalar TypeScript implementation of every kernel. */
export const scalarKernels: Kernels = {
  name: "scalar",

  allocF32(n: number): Float32Array {
    checkLength("n", n);
    return new Float32Array(n);
  },
  allocU8(n: number): Uint8Array {
    checkLength("n", n);
    return new Uint8Array(n);
  },
  free(_view: Float32Array | Uint8Array): void {},
  reserve(_bytes: number): void {},

  topkThreshold(scores: Float32Array, k: number): number {
    checkScores(scores, k);
    if (k === 0) {
      // Still reject NaN so k = 0 does not hide bad scores.
      topkSelectGuard(scores);
      return Infinity;
    }
    return bitsToFloat(keyToBits(topkSelect(scores, k).key));
  },

  topkMask(scores: Float32Array, k: number, out?: Uint8Array): Uint8Array {
    checkScores(scores, k);
    const mask = outArray(out, Uint8Array, scores.length, "input");
    if (k === 0) {
      topkSelectGuard(scores);
      mask.fill(0);
      return mask;
    }
    const { key: t, ties } = topkSelect(scores, k);
    const bits = new Uint32Array(scores.buffer, scores.byteOffset, scores.length);
    let need = ties;
    for (let i = 0; i < bits.length; i++) {
      const key = orderKey(bits[i]);
      if (key > t) mask[i] = 1;
      else if (key === t && need > 0) {
        mask[i] = 1;
        need--;
      } else mask[i] = 0;
    }
    return mask;
  },

  maskToBits(mask: Uint8Array, out?: Uint32Array): Uint32Array {
    checkType("mask", mask, Uint8Array);
    const words = Math.ceil(mask.length / 32);
    const bits = outArray(out, Uint32Array, words, "ceil(mask.length/32)");
    for (let w = 0; w < words; w++) {
      let word = 0;
      const base = w * 32;
      const end = Math.min(32, mask.length - base);
      for (let j = 0; j < end; j++) if (mask[base + j] !== 0) word |= 1 << j;
      bits[w] = word;
    }
    return bits;
  },

  bitsToMask(bits: Uint32Array, n: number, out?: Uint8Array): Uint8Array {
    checkType("bits", bits, Uint32Array);
    checkLength("n", n);
    checkBits(bits, n);
    const mask = outArray(out, Uint8Array, n, "input");
    for (let i = 0; i < n; i++) mask[i] = (bits[i >>> 5] >>> (i & 31)) & 1;
    return mask;
  },

  popcount(x: Uint8Array | Uint32Array): number {
    if (x instanceof Uint8Array) return countOnes(x);
    if (x instanceof Uint32Array) {
      let c = 0;
      for (let i = 0; i < x.length; i++) c += popcount32(x[i]);
      return c;
    }
    throw new KernelError(`popcount needs a Uint8Array mask or Uint32Array bitmask`);
  },

  encodeDeltas(mask: Uint8Array): Uint8Array {
    checkType("mask", mask, Uint8Array);
    const out = new Uint8Array(deltaBound(countOnes(mask), mask.length));
    let pos = 0;
    let gap = 0;
    for (let i = 0; i < mask.length; i++) {
      if (mask[i] === 0) {
        gap++;
        continue;
      }
      while (gap >= 0x80) {
        out[pos++] = (gap & 0x7f) | 0x80;
        gap >>>= 7;
      }
      out[pos++] = gap;
      gap = 0;
    }
    return out.slice(0, pos);
  },

  decodeDeltas(bytes: Uint8Array, n: number, out?: Uint8Array): Uint8Array {
    checkType("bytes", bytes, Uint8Array);
    checkLength("n", n);
    const mask = outArray(out, Uint8Array, n, "input");
    mask.fill(0);
    let idx = -1;
    let pos = 0;
    while (pos < bytes.length) {
      let gap = 0;
      let shift = 0;
      for (;;) {
        if (pos >= bytes.length) throw new KernelError(`delta code truncated at byte ${pos}`);
        const b = bytes[pos++];
        if (shift === 28 && b > 0x0f) {
          throw new KernelError(`delta code overflows 32 bits at byte ${pos - 1}`);
        }
        gap += (b & 0x7f) * 2 ** shift;
        if ((b & 0x80) === 0) break;
        shift += 7;
      }
      idx += gap + 1;
      if (idx >= n) throw new KernelError(`delta code points at index ${idx}, past mask length n = ${n}`);
      mask[idx] = 1;
    }
    return mask;
  },

  gather(dense: Float32Array, mask: Uint8Array, out?: Float32Array): Float32Array {
    checkType("dense", dense, Float32Array);
    checkType("mask", mask, Uint8Array);
    checkSameLength("dense", dense.length, "mask", mask.length);
    const ones = countOnes(mask);
    const values = outArray(out, Float32Array, ones, "popcount(mask)");
    let j = 0;
    for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) values[j++] = dense[i];
    return values;
  },

  scatter(values: Float32Array, mask: Uint8Array, out: Float32Array): void {
    checkScatterArgs(values, mask, out, countOnes);
    let j = 0;
    for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) out[i] = values[j++];
  },

  accumulate(
    sum: Float32Array,
    weight: Float32Array,
    values: Float32Array,
    mask: Uint8Array,
    n: number,
  ): void {
    checkAccumulateArgs(sum, weight, values, mask, n);
    const w = Math.fround(n);
    for (let i = 0; i < sum.length; i++) {
      if (mask[i] !== 0) {
        sum[i] += Math.fround(w * values[i]);
        weight[i] += w;
      }
    }
  },

  accumulateSparse(
    sum: Float32Array,
    weight: Float32Array,
    bits: Uint32Array,
    values: Float32Array,
    n: number,
  ): void {
    checkSparseArgs(sum, weight, bits, values, n, (b) => scalarKernels.popcount(b));
    const w = Math.fround(n);
    let r = 0;
    for (let wi = 0; wi < bits.length; wi++) {
      let x = bits[wi];
      const base = wi << 5;
      while (x !== 0) {
        const low = x & -x;
        const p = base + 31 - Math.clz32(low);
        sum[p] += Math.fround(w * values[r++]);
        weight[p] += w;
        x ^= low;
      }
    }
  },

  finalize(sum: Float32Array, weight: Float32Array, own: Float32Array, out: Float32Array): void {
    checkFinalizeArgs(sum, weight, own, out);
    for (let i = 0; i < sum.length; i++) {
      const w = weight[i];
      out[i] = w > 0 ? sum[i] / w : own[i];
    }
  },

  maskedAdamW(
    params: Float32Array,
    grads: Float32Array,
    m: Float32Array,
    v: Float32Array,
    mask: Uint8Array | undefined,
    o: AdamWStep,
  ): void {
    checkAdamWArgs(params, grads, m, v, mask, o);
    const c = adamWConstants(o);
    for (let i = 0; i < params.length; i++) {
      if (mask !== undefined && mask[i] === 0) continue;
      const g = grads[i];
      const mi = Math.fround(c.b1 * m[i] + c.omb1 * g);
      const vi = Math.fround(c.b2 * v[i] + c.omb2 * g * g);
      m[i] = mi;
      v[i] = vi;
      const p = Math.fround(params[i] * c.decay);
      params[i] = p - (c.stepSize * mi) / (Math.sqrt(vi * c.bc2) + c.eps);
    }
  },

  jaccard(a: Uint8Array, b: Uint8Array): number {
    checkType("a", a, Uint8Array);
    checkType("b", b, Uint8Array);
    checkSameLength("a", a.length, "b", b.length);
    let inter = 0;
    let union = 0;
    for (let i = 0; i < a.length; i++) {
      const x = a[i] !== 0;
      const y = b[i] !== 0;
      if (x && y) inter++;
      if (x || y) union++;
    }
    return union === 0 ? 1 : inter / union;
  },

  countNonFinite(x: Float32Array): number {
    checkType("x", x, Float32Array);
    let c = 0;
    for (let i = 0; i < x.length; i++) if (!Number.isFinite(x[i])) c++;
    return c;
  },
};

function topkSelectGuard(scores: Float32Array): void {
  const bits = new Uint32Array(scores.buffer, scores.byteOffset, scores.length);
  for (let i = 0; i < bits.length; i++) {
    if (isNaNBits(bits[i])) throw new KernelError(`score at index ${i} is NaN`);
  }
}

/** Validates the arrays and options of `maskedAdamW` (shared with the WASM binding). */
export function checkAdamWArgs(
  params: Float32Array,
  grads: Float32Array,
  m: Float32Array,
  v: Float32Array,
  mask: Uint8Array | undefined,
  o: AdamWStep,
): void {
  checkType("params", params, Float32Array);
  checkType("grads", grads, Float32Array);
  checkType("m", m, Float32Array);
  checkType("v", v, Float32Array);
  checkSameLength("grads", grads.length, "params", params.length);
  checkSameLength("m", m.length, "params", params.length);
  checkSameLength("v", v.length, "params", params.length);
  if (mask !== undefined) {
    checkType("mask", mask, Uint8Array);
    checkSameLength("mask", mask.length, "params", params.length);
  }
  checkAdamW(o);
}

/** Per-step AdamW scalars, rounded to f32 so every backend uses the same constants. */
export function adamWConstants(o: AdamWStep): {
  b1: number;
  b2: number;
  omb1: number;
  omb2: number;
  decay: number;
  stepSize: number;
  bc2: number;
  eps: number;
} {
  const f = Math.fround;
  const bc1 = 1 - o.beta1 ** o.step;
  const bc2 = 1 - o.beta2 ** o.step;
  return {
    b1: f(o.beta1),
    b2: f(o.beta2),
    omb1: f(1 - o.beta1),
    omb2: f(1 - o.beta2),
    decay: f(1 - o.lr * o.weightDecay),
    stepSize: f(o.lr / bc1),
    bc2: f(1 / bc2),
    eps: f(o.eps),
  };
}

/** Validates the arguments of `accumulate` (shared with the WASM binding). */
export function checkAccumulateArgs(
  sum: Float32Array,
  weight: Float32Array,
  values: Float32Array,
  mask: Uint8Array,
  n: number,
): void {
  checkType("sum", sum, Float32Array);
  checkType("weight", weight, Float32Array);
  checkType("values", values, Float32Array);
  checkType("mask", mask, Uint8Array);
  checkSameLength("weight", weight.length, "sum", sum.length);
  checkSameLength("values", values.length, "sum", sum.length);
  checkSameLength("mask", mask.length, "sum", sum.length);
  checkWeight(n);
}

/**
 * Validates the arguments of `scatter` (shared with the WASM binding). The mask's ones are counted by
 * the caller's own popcount, and only once the types are known to be right.
 */
export function checkScatterArgs(
  values: Float32Array,
  mask: Uint8Array,
  out: Float32Array,
  popcount: (mask: Uint8Array) => number,
): void {
  checkType("values", values, Float32Array);
  checkType("mask", mask, Uint8Array);
  checkType("out", out, Float32Array);
  checkSameLength("out", out.length, "mask", mask.length);
  checkSameLength("values", values.length, "popcount(mask)", popcount(mask));
}

/** Validates the arguments of `finalize` (shared with the WASM binding). */
export function checkFinalizeArgs(
  sum: Float32Array,
  weight: Float32Array,
  own: Float32Array,
  out: Float32Array,
): void {
  checkType("sum", sum, Float32Array);
  checkType("weight", weight, Float32Array);
  checkType("own", own, Float32Array);
  checkType("out", out, Float32Array);
  checkSameLength("weight", weight.length, "sum", sum.length);
  checkSameLength("own", own.length, "sum", sum.length);
  checkSameLength("out", out.length, "sum", sum.length);
}

/** Validates the arguments of `accumulateSparse` (shared with the WASM binding). */
export function checkSparseArgs(
  sum: Float32Array,
  weight: Float32Array,
  bits: Uint32Array,
  values: Float32Array,
  n: number,
  popcount: (bits: Uint32Array) => number,
): void {
  checkType("sum", sum, Float32Array);
  checkType("weight", weight, Float32Array);
  checkType("bits", bits, Uint32Array);
  checkType("values", values, Float32Array);
  checkSameLength("weight", weight.length, "sum", sum.length);
  checkBits(bits, sum.length);
  checkSameLength("values", values.length, "popcount(bits)", popcount(bits));
  checkWeight(n);
}
