/**
 * Parameter-wise aggregation math on compact (sparse) updates. Pure functions over flat arrays; the
 * coordinator owns the buffers. The math itself is the kernels' (`accumulateSparse`, `finalize`);
 * folding straight from the bitmask skips the N-length scatter that the dense `accumulate` would need
 * for every upload.
 */
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
