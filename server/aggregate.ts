/**
 * Parameter-wise aggregation math on compact (sparse) updates. Pure functions over flat arrays; the
 * coordinator owns the buffers. The dense equivalents are the kernels' `accumulate`/`finalize`
 * (tests check they agree); folding straight from the bitmask skips the N-length scatter that the
 * dense kernel would need for every upload.
 */
import { forEachBit } from "../runtime/client/wire.ts";
import type { Kernels } from "../runtime/kernels/mod.ts";

/** `sum[p] += n*v; weight[p] += n` for every set bit p of `bits`, with values in bit order. */
export function foldSparse(
  sum: Float32Array,
  weight: Float32Array,
  bits: Uint32Array,
  values: Float32Array,
  n: number,
): void {
  const w = Math.fround(n);
  let r = 0;
  for (let wi = 0; wi < bits.length; wi++) {
    let x = bits[wi];
    const base = wi << 5;
    while (x !== 0) {
      const t = x & -x;
      const p = base + (31 - Math.clz32(t));
      sum[p] += Math.fround(w * values[r++]);
      weight[p] += w;
      x ^= t;
    }
  }
}

/** L2 norm of a vector (in f64). */
export function l2norm(v: Float32Array): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i] * v[i];
  return Math.sqrt(s);
}

/**
 * Closes a round into the global adapter: `global = sum/weight` where some client held the position
 * this round, previous global elsewhere (the kernels' `finalize`), and marks those positions covered.
 */
export function finalizeInto(
  k: Kernels,
  sum: Float32Array,
  weight: Float32Array,
  global: Float32Array,
  covered: Uint32Array,
): void {
  k.finalize(sum, weight, global, global);
  for (let i = 0; i < weight.length; i++) if (weight[i] > 0) covered[i >>> 5] |= 1 << (i & 31);
}

/** Values of `dense` at the set bits of `bits`, in index order. */
export function gatherBits(dense: Float32Array, bits: Uint32Array, count: number): Float32Array {
  const out = new Float32Array(count);
  forEachBit(bits, (p, r) => (out[r] = dense[p]));
  return out;
}

/** Bitwise AND of two equally long bitmasks. */
export function andBits(a: Uint32Array, b: Uint32Array): Uint32Array {
  const out = new Uint32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] & b[i];
  return out;
}

/** A bitmask with the first n bits set. */
export function fullBits(n: number): Uint32Array {
  const bits = new Uint32Array(Math.ceil(n / 32)).fill(0xffffffff);
  if (n % 32) bits[bits.length - 1] = (1 << (n % 32)) - 1;
  return bits;
}
