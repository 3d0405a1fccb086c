/**
 * Parameter-wise aggregation math on compact (sparse) updates. Pure functions over flat arrays; the
 * coordinator owns the buffers. The math itself is the kernels' (`accumulateSparse`, `finalize`);
 * folding straight from the bitmask skips the N-length scatter that the dense `accumulate` would need
 * for every upload.
 */
import { forEachBit } from "../runtime/client/wire.ts";
import { type Kernels, scalarKernels } from "../runtime/kernels/mod.ts";

/**
 * `sum[p] += n*v; weight[p] += n` for every set bit p of `bits`, with values in bit order: the scalar
 * kernels' `accumulateSparse`, so the fold has one implementation (and its argument checks); it
 * throws `KernelError` on inconsistent arrays before touching `sum` or `weight`.
 */
export function foldSparse(
  sum: Float32Array,
  weight: Float32Array,
  bits: Uint32Array,
  values: Float32Array,
  n: number,
): void {
  scalarKernels.accumulateSparse(sum, weight, bits, values, n);
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
