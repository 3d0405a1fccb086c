/**
 * The methods' aggregation (Flower's `aggregate_fit`) in the form the coordinator streams it. An
 * accepted upload becomes fold terms; each term adds `sum[p] += w·v` and `weight[p] += w` at the set
 * bits of one range of the global layout, and the round closes to `sum / weight` wherever some term
 * reached, keeping the previous global elsewhere (server/aggregate.ts `finalizeInto`, one finalize
 * for every method). What differs between methods is only which terms an upload makes:
 *
 *  - `holders`: one term over the upload's mask, weighing the run's weight of its samples. Each
 *    position is the weighted mean over the clients that hold it: PerFIT's rule, and FedIT's with
 *    all-ones masks. The run's robust rules (median, trimmed mean) may replace it.
 *  - `zero-padded`: HetLoRA's sparsity-weighted aggregation. One term per adapted projection (its A
 *    and B, contiguous in the layout), covering every position of it: the positions beyond the
 *    client's rank enter as zeros (zero padding to the largest rank), so a position's mean divides
 *    by the weight of every client of the round, not only its holders. The term's weight is the
 *    Frobenius norm of that projection's update ‖B·A‖_F, so clients whose update is sparser (smaller)
 *    count less; sample counts do not enter, as in the method's description.
 *  - `stacked`: FLoRA's stacking. The run's layout holds one slot of rank components per client
 *    (runtime/client/flora.ts); a client uploads its slot. Its B enters over its own positions (one
 *    holder: the value itself), its A over every A position of every slot with zeros outside its
 *    own (as zero padding does), both weighing its samples: each slot's A comes out as p_k·A_k with
 *    p_k = n_k / Σ n over the round, B as B_k, so B_stack·A_stack = Σ_k p_k B_k A_k, which is the
 *    authors' stacking (fed_utils/model_aggregation.py: A scaled by the sample weight, B not). Slots
 *    of clients absent from the round get A = 0 and add nothing.
 *
 * A term's weight is recomputed from the mask alone for `holders`; other rules' weights are
 * recorded with the upload (`termWeights`) so a restarted coordinator can rebuild its weight sums.
 */
import type { AdapterLayout } from "../model/lora.ts";
import { kindMask, moduleGroups } from "../perfit/layout.ts";
import { scalarKernels } from "../kernels/mod.ts";
import { andBits, forEachBit, fullBits, gatherBits, popcountBits } from "../kernels/bits.ts";

/** The positions one fold term covers: the set bits of `bits` (local), offset by `start`. */
export interface TermShape {
  start: number;
  length: number;
  /** ceil(length / 32) words; bit i is position start + i. */
  bits: Uint32Array;
}

/** One fold term: its positions, their values in bit order, and its weight. */
export interface FoldTerm extends TermShape {
  values: Float32Array;
  weight: number;
}

/** An accepted upload in the global layout: its mask, its values in bit order, the run's weight of its samples. */
export interface AcceptedUpload {
  bits: Uint32Array;
  values: Float32Array;
  weight: number;
}

/** How a method turns an accepted upload into fold terms. */
export interface RoundAggregation {
  readonly name: "holders" | "zero-padded" | "stacked";
  /** The coordinator needs the run's layout (the run is created with its model's config). */
  readonly needsLayout: boolean;
  /** The positions of each term of an upload with mask `bits`, in term order. */
  shapes(bits: Uint32Array, size: number, layout: AdapterLayout | null): TermShape[];
  /** Each term's weight, in term order. */
  weights(u: AcceptedUpload, layout: AdapterLayout | null): number[];
}

export class AggregationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AggregationError";
  }
}

/** Every position of one adapted projection (its A then its B): contiguous ranges of the layout. */
export function projectionRanges(layout: AdapterLayout): { start: number; length: number }[] {
  return moduleGroups(layout).map(({ key, ranges }) => {
    const start = ranges[0][0];
    let end = start;
    for (const [o, n] of ranges) {
      if (o !== end) throw new AggregationError(`projection ${key} is not contiguous in the layout`);
      end = o + n;
    }
    return { start, length: end - start };
  });
}

/** The upload's values scattered over the global layout (zeros where its mask is 0). */
export function denseValues(u: AcceptedUpload, size: number): Float32Array {
  const out = new Float32Array(size);
  let count = 0;
  forEachBit(u.bits, (p, r) => {
    if (p >= size) throw new AggregationError(`mask bit ${p} is outside the adapter of ${size}`);
    out[p] = u.values[r];
    count = r + 1;
  });
  if (count !== u.values.length) {
    throw new AggregationError(`mask selects ${count} positions, values hold ${u.values.length}`);
  }
  return out;
}

/**
 * ‖B·A‖_F of one projection, A [rank, in] and B [out, rank] row-major in `v`, without forming B·A:
 * ‖BA‖² = Σ_ij (A·Aᵀ)_ij (Bᵀ·B)_ij, r²·(in + out) work instead of r·in·out.
 */
export function productNorm(v: Float32Array, a: { offset: number; shape: [number, number] }, b: {
  offset: number;
  shape: [number, number];
}): number {
  const [r, inF] = a.shape;
  const [outF, rb] = b.shape;
  if (rb !== r) throw new AggregationError(`A has rank ${r}, B has rank ${rb}`);
  const g = new Float64Array(r * r), h = new Float64Array(r * r);
  for (let i = 0; i < r; i++) {
    for (let j = i; j < r; j++) {
      let s = 0;
      const ai = a.offset + i * inF, aj = a.offset + j * inF;
      for (let k = 0; k < inF; k++) s += v[ai + k] * v[aj + k];
      g[i * r + j] = g[j * r + i] = s;
    }
  }
  for (let o = 0; o < outF; o++) {
    const row = b.offset + o * r;
    for (let i = 0; i < r; i++) {
      const bi = v[row + i];
      if (bi === 0) continue;
      for (let j = 0; j < r; j++) h[i * r + j] += bi * v[row + j];
    }
  }
  let s = 0;
  for (let i = 0; i < r * r; i++) s += g[i] * h[i];
  return Math.sqrt(Math.max(0, s));
}

/** The weighted mean over each position's holders (PerFIT, FedIT, FedSA-LoRA, FFA-LoRA). */
export const HOLDERS: RoundAggregation = {
  name: "holders",
  needsLayout: false,
  shapes: (bits, size) => [{ start: 0, length: size, bits }],
  weights: (u) => [u.weight],
};

const needLayout = (layout: AdapterLayout | null): AdapterLayout => {
  if (!layout) {
    throw new AggregationError("zero-padded aggregation needs the run's layout (create it with a model)");
  }
  return layout;
};

/** HetLoRA's zero-padded, ‖B·A‖_F-weighted mean (see the module comment). */
export const ZERO_PADDED: RoundAggregation = {
  name: "zero-padded",
  needsLayout: true,
  shapes: (_bits, _size, layout) =>
    projectionRanges(needLayout(layout)).map((r) => ({ ...r, bits: fullBits(r.length) })),
  weights: (u, layout) => {
    const l = needLayout(layout);
    const v = denseValues(u, l.size);
    const out: number[] = [];
    for (let i = 0; i + 1 < l.entries.length; i += 2) {
      const a = l.entries[i], b = l.entries[i + 1];
      if (a.kind !== "A" || b.kind !== "B" || a.module !== b.module || a.layer !== b.layer) {
        throw new AggregationError(`entries ${a.name} and ${b.name} are not one projection's A and B`);
      }
      out.push(productNorm(v, a, b));
    }
    return out;
  },
};

const kindBits = (() => {
  const memo = new WeakMap<AdapterLayout, { A: Uint32Array; B: Uint32Array }>();
  return (l: AdapterLayout, kind: "A" | "B"): Uint32Array => {
    let m = memo.get(l);
    if (!m) {
      const pack = (u8: Uint8Array) => scalarKernels.maskToBits(u8);
      memo.set(l, m = { A: pack(kindMask(l, "A")), B: pack(kindMask(l, "B")) });
    }
    return m[kind];
  };
})();

/** FLoRA's stacking (see the module comment): every slot's A as zero-padded terms, the own B as held. */
export const STACKED: RoundAggregation = {
  name: "stacked",
  needsLayout: true,
  shapes: (bits, size, layout) => {
    const l = needLayout(layout);
    return [
      { start: 0, length: size, bits: kindBits(l, "A") },
      { start: 0, length: size, bits: andBits(bits, kindBits(l, "B")) },
    ];
  },
  weights: (u) => [u.weight, u.weight],
};

/** The fold terms of an accepted upload: shapes, weights and each term's values in its bit order. */
export function foldTerms(
  agg: RoundAggregation,
  u: AcceptedUpload,
  size: number,
  layout: AdapterLayout | null,
): FoldTerm[] {
  const shapes = agg.shapes(u.bits, size, layout);
  const weights = agg.weights(u, layout);
  if (weights.length !== shapes.length) {
    throw new AggregationError(`${shapes.length} term shapes but ${weights.length} weights`);
  }
  if (shapes.length === 1 && shapes[0].bits === u.bits) {
    return [{ ...shapes[0], values: u.values, weight: weights[0] }];
  }
  const dense = denseValues(u, size);
  return shapes.map((s, t) => {
    const range = dense.subarray(s.start, s.start + s.length);
    const count = popcountBits(s.bits);
    // A term over a whole range (HetLoRA's projections) takes its values as they lie.
    const values = count === s.length ? range.slice() : gatherBits(range, s.bits, count);
    return { ...s, values, weight: weights[t] };
  });
}
