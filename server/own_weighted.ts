/**
 * An own-weighted slice (perfit-own, flora-own): the round that made the global, folded again with
 * the asking client's own fold terms counted `ownWeight` (s) times. At a position p where the round's
 * terms have total weight W and mean g, and the client's own terms there weigh w in all and add up to
 * Σ w·v, the slice value is
 *
 *     (g·W + (s − 1)·Σ w·v) / (W + (s − 1)·w)
 *
 * so s = 1 is the method's own fold and s → ∞ the client's own terms alone. Under PerFIT's holders
 * mean the own terms are the upload's mask (its values, weighing its samples); under FLoRA's stacking
 * they also cover every other slot's A with zeros, so those shrink by W / (W + (s − 1)·w) while the
 * client's own A grows, and the stack's weights still sum to 1. Elsewhere (positions no own term
 * covers, or a client absent from that round) it is the global. Pure: the coordinator reads the
 * global, its weights and the client's upload (server/coordinator.ts `slice`).
 */
import { forEachBit, popcountBits } from "../runtime/kernels/bits.ts";
import { ownWeightProblem } from "../runtime/federation/strategies.ts";
import type { FoldTerm } from "../runtime/federation/aggregation.ts";

/**
 * The slice's values at the set bits of `covered`, in bit order: `global` reweighed by the client's
 * own fold terms `own` (null: absent from the round, the global as it is). `weight` is each
 * position's total weight in that round. Refuses arrays that do not fit and own terms heavier than
 * their position's total, which only a global not made from that upload can have.
 */
export function ownWeightedValues(
  global: Float32Array,
  weight: Float32Array,
  covered: Uint32Array,
  own: readonly FoldTerm[] | null,
  ownWeight: number,
): Float32Array {
  const n = global.length;
  if (weight.length !== n) throw new RangeError(`weights hold ${weight.length} values, the global ${n}`);
  const bad = ownWeightProblem(ownWeight);
  if (bad) throw new RangeError(`ownWeight ${bad}, got ${ownWeight}`);
  const extra = ownWeight - 1;
  // The own terms, dense: what they add at each position and what they weigh there.
  const ownSum = own ? new Float64Array(n) : null;
  const ownW = own ? new Float64Array(n) : null;
  for (const t of own ?? []) {
    const count = popcountBits(t.bits);
    if (t.values.length !== count) {
      throw new RangeError(`an own term selects ${count} positions but holds ${t.values.length} values`);
    }
    if (t.start < 0 || t.start + t.length > n) {
      throw new RangeError(
        `an own term spans ${t.start}..${t.start + t.length}, outside the adapter of ${n}`,
      );
    }
    forEachBit(t.bits, (i, r) => {
      if (i >= t.length) throw new RangeError(`an own term's bit ${i} is outside its ${t.length} positions`);
      ownSum![t.start + i] += t.weight * t.values[r];
      ownW![t.start + i] += t.weight;
    });
  }
  const out = new Float32Array(popcountBits(covered));
  forEachBit(covered, (p, r) => {
    if (p >= n) throw new RangeError(`covered bit ${p} is outside the adapter of ${n}`);
    const w = ownW === null ? 0 : ownW[p];
    if (w === 0 || extra === 0) {
      out[r] = global[p];
      return;
    }
    if (!(weight[p] >= w * (1 - 1e-6))) {
      throw new RangeError(`position ${p} weighs ${weight[p]} in the round, less than the own upload's ${w}`);
    }
    out[r] = (global[p] * weight[p] + extra * ownSum![p]) / (weight[p] + extra * w);
  });
  return out;
}
