/**
 * perfit-own's slice: the holders mean of the round that made the global, with the asking client's
 * own upload weighing `ownWeight` (s) times what it weighed in that mean. At a position p where the
 * round's holders have total weight W and mean g, and the client's own upload (weight w, value v)
 * holds p, the slice value is
 *
 *     (g·W + (s − 1)·w·v) / (W + (s − 1)·w)  =  (s·w·v + Σ_others wⱼ·vⱼ) / (s·w + Σ_others wⱼ)
 *
 * so s = 1 is PerFIT's mean and s → ∞ the client's own value. Elsewhere (positions its upload did
 * not hold, or a client absent from that round) it is the global, as for PerFIT. Pure: the
 * coordinator reads the global, its weights and the client's upload (server/coordinator.ts `slice`).
 */
import { forEachBit, popcountBits } from "../runtime/kernels/bits.ts";
import type { HeldUpdate } from "./robust.ts";
import { ownWeightProblem } from "../runtime/federation/strategies.ts";
import { denseValues } from "../runtime/federation/aggregation.ts";

/**
 * The slice's values at the set bits of `covered`, in bit order: `global` reweighed by the client's
 * own upload `own` (null: absent from the round, the global as it is). `weight` is each position's
 * total weight in that round. Refuses arrays that do not fit and an own upload heavier than its
 * position's total, which only a global not made from that upload can have.
 */
export function ownWeightedValues(
  global: Float32Array,
  weight: Float32Array,
  covered: Uint32Array,
  own: HeldUpdate | null,
  ownWeight: number,
): Float32Array {
  const n = global.length;
  if (weight.length !== n) throw new RangeError(`weights hold ${weight.length} values, the global ${n}`);
  const bad = ownWeightProblem(ownWeight);
  if (bad) throw new RangeError(`ownWeight ${bad}, got ${ownWeight}`);
  const ownDense = own ? denseValues(own, n) : null;
  const extra = own ? (ownWeight - 1) * own.weight : 0;
  const out = new Float32Array(popcountBits(covered));
  forEachBit(covered, (p, r) => {
    if (p >= n) throw new RangeError(`covered bit ${p} is outside the adapter of ${n}`);
    const holds = ownDense !== null && ((own!.bits[p >>> 5] >>> (p & 31)) & 1) === 1;
    if (!holds || extra === 0) {
      out[r] = global[p];
      return;
    }
    const w = weight[p];
    if (!(w >= own!.weight * (1 - 1e-6))) {
      throw new RangeError(
        `position ${p} weighs ${w} in the round, less than the own upload's ${own!.weight}`,
      );
    }
    out[r] = (global[p] * w + extra * ownDense![p]) / (w + extra);
  });
  return out;
}
