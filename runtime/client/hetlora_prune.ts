/**
 * HetLoRA's rank self-pruning (Cho et al., EMNLP 2024) on one client, as pure math over the client's
 * own rank-R layout. A client of current rank k (its leading k components; the rest are zero) calls
 * the components max(1, ⌊γ·k⌋)..k-1 its tail (γ the decay factor; one component is always kept):
 *
 *  - during local training the loss gets λ·Σ_projections ‖A_tail‖_F·‖B_tail‖_F, which pushes the
 *    tail toward zero where the data does not need it (`addTailGradient`);
 *  - after local training, if that tail norm Σ ‖A_tail‖_F·‖B_tail‖_F is smaller than it was when the
 *    round started (the received global adapter, truncated to k), the client prunes its rank to
 *    max(1, ⌊γ·k⌋) (`nextRank`): it uploads that many components and trains at that rank in every
 *    later round (the rank never grows back). The coordinator sees a smaller rank, zero-padded as
 *    usual.
 *
 * The authors published no code and the paper's full text was not in the stored corpora (its
 * abstract and the EMNLP/Google Research pages name "rank self-pruning locally" only), so the rule is
 * the one public re-implementations agree on:
 *  - PabloE-KAIST/FedLoRA-public @6628dea, federatedscope/contrib/common/heterolora_utils.py
 *    `tail_penalty` (Σ ‖B[:, ⌊γr⌋:r]‖_F·‖A[⌊γr⌋:r, :]‖_F, the regulariser and the score) and
 *    contrib/worker/methods/hetlora_client.py `_hetlora_prune_and_send_rank` (score before training vs
 *    after; prune to max(rank_min, ⌊γr⌋) when after < before; the upload of that round is truncated to
 *    the new rank, which is kept after); defaults γ = 0.99, λ = 0.01;
 *  - chenxingqiang/PFLoRA-lib @2d0bb32, system/flcore/trainmodel/hetlora_model.py `rank_self_pruning`
 *    (drops the trailing components when their ‖A_tail‖·‖B_tail‖ is below a norm taken when its model
 *    is built; γ = 0.99 by default);
 *  - measaverb/SplitHetLoRA, utils/etc.py `self_pruning_regularisation` (the same λ·‖A_tail‖·‖B_tail‖
 *    regulariser from ⌊γr⌋ on; γ ∈ {0.5, 0.85, 0.99, 1} in its configs).
 * One deviation: FedLoRA-public's tail at rank k·γ < 1 is the whole adapter; here the tail is exactly
 * what a prune would remove, so a client at rank 1 has none (nothing to penalise, nothing to prune).
 *
 * @module
 */
import { type AdapterLayout, embed, rankLayout } from "../perfit/layout.ts";

/** The rule's two knobs. */
export interface RankPruning {
  /** γ ∈ (0, 1): a prune keeps ⌊γ·k⌋ of the k components (at least one). */
  decay: number;
  /** λ ≥ 0: weight of the tail regulariser λ·Σ ‖A_tail‖_F·‖B_tail‖_F in the local loss (0: none). */
  tailWeight: number;
}

/** The re-implementations' defaults (FedLoRA-public's `decay`, `regularizer_weight`). */
export const RANK_PRUNING_DEFAULTS: Readonly<RankPruning> = { decay: 0.99, tailWeight: 0.01 };

/** Refuses a γ outside (0, 1) or a λ that is negative or not finite. */
export function checkRankPruning(p: RankPruning): RankPruning {
  if (!(typeof p.decay === "number" && p.decay > 0 && p.decay < 1)) {
    throw new RangeError(`rank pruning: the decay γ must be in (0, 1), got ${p.decay}`);
  }
  if (!(typeof p.tailWeight === "number" && Number.isFinite(p.tailWeight) && p.tailWeight >= 0)) {
    throw new RangeError(`rank pruning: the tail weight λ must be a finite number ≥ 0, got ${p.tailWeight}`);
  }
  return p;
}

const checkRank = (layout: AdapterLayout, rank: number): void => {
  if (!Number.isInteger(rank) || rank < 1 || rank > layout.rank) {
    throw new RangeError(`rank pruning: rank must be an integer in [1, ${layout.rank}], got ${rank}`);
  }
};

/** The rank a prune leaves: max(1, ⌊γ·rank⌋). */
export function prunedRank(rank: number, decay: number): number {
  if (!Number.isInteger(rank) || rank < 1) {
    throw new RangeError(`rank must be a positive integer, got ${rank}`);
  }
  checkRankPruning({ decay, tailWeight: 0 });
  return Math.max(1, Math.floor(decay * rank));
}

/** Each adapted projection's A and B entries (adjacent in every layout). */
function projections(layout: AdapterLayout) {
  const out: { a: AdapterLayout["entries"][number]; b: AdapterLayout["entries"][number] }[] = [];
  for (let i = 0; i + 1 < layout.entries.length; i += 2) {
    const a = layout.entries[i], b = layout.entries[i + 1];
    if (a.kind !== "A" || b.kind !== "B" || a.module !== b.module || a.layer !== b.layer) {
      throw new RangeError(`entries ${a.name} and ${b.name} are not one projection's A and B`);
    }
    out.push({ a, b });
  }
  return out;
}

/** Calls `fn(position)` for the tail components [from, to) of A (rows) and of B (columns). */
function tailPositions(
  a: AdapterLayout["entries"][number],
  b: AdapterLayout["entries"][number],
  from: number,
  to: number,
  fnA: (p: number) => void,
  fnB: (p: number) => void,
): void {
  const inF = a.shape[1];
  for (let p = a.offset + from * inF; p < a.offset + to * inF; p++) fnA(p);
  const [outF, r] = b.shape;
  for (let o = 0; o < outF; o++) {
    for (let j = from; j < to; j++) fnB(b.offset + o * r + j);
  }
}

/** ‖A_tail‖_F and ‖B_tail‖_F of every projection at `rank` (the tail starts at `prunedRank`). */
function tailNorms(layout: AdapterLayout, v: Float32Array, rank: number, decay: number) {
  checkRank(layout, rank);
  if (v.length !== layout.size) throw new RangeError(`adapter has ${v.length} values, layout ${layout.size}`);
  const from = prunedRank(rank, decay);
  return projections(layout).map(({ a, b }) => {
    let sa = 0, sb = 0;
    tailPositions(a, b, from, rank, (p) => (sa += v[p] * v[p]), (p) => (sb += v[p] * v[p]));
    return { a, b, from, nA: Math.sqrt(sa), nB: Math.sqrt(sb) };
  });
}

/** The tail norm Σ_projections ‖A_tail‖_F·‖B_tail‖_F of an adapter at `rank` (0 at rank 1: no tail). */
export function tailScore(layout: AdapterLayout, adapter: Float32Array, rank: number, decay: number): number {
  return tailNorms(layout, adapter, rank, decay).reduce((s, t) => s + t.nA * t.nB, 0);
}

/**
 * Adds the gradient of λ·Σ ‖A_tail‖_F·‖B_tail‖_F to `grads`: λ‖B_t‖·A_t/‖A_t‖ on A's tail rows and
 * λ‖A_t‖·B_t/‖B_t‖ on B's tail columns (0 where a factor is all zero, the subgradient at a kink).
 */
export function addTailGradient(
  layout: AdapterLayout,
  adapter: Float32Array,
  grads: Float32Array,
  rank: number,
  p: RankPruning,
): void {
  checkRankPruning(p);
  if (grads.length !== layout.size) {
    throw new RangeError(`grads has ${grads.length} values, layout ${layout.size}`);
  }
  if (p.tailWeight === 0) return;
  for (const { a, b, from, nA, nB } of tailNorms(layout, adapter, rank, p.decay)) {
    const ca = nA > 0 ? p.tailWeight * nB / nA : 0;
    const cb = nB > 0 ? p.tailWeight * nA / nB : 0;
    tailPositions(
      a,
      b,
      from,
      rank,
      (q) => (grads[q] += ca * adapter[q]),
      (q) => (grads[q] += cb * adapter[q]),
    );
  }
}

/**
 * The rank after a round: `prunedRank(rank)` when the tail norm fell during local training (`after`
 * below `before`), else `rank`.
 */
export function nextRank(s: { before: number; after: number; rank: number; decay: number }): number {
  for (const k of ["before", "after"] as const) {
    if (!(Number.isFinite(s[k]) && s[k] >= 0)) {
      throw new RangeError(`rank pruning: the ${k} tail norm must be finite and ≥ 0, got ${s[k]}`);
    }
  }
  const pruned = prunedRank(s.rank, s.decay);
  return s.after < s.before ? pruned : s.rank;
}

/** 0/1 over the layout: 1 at the leading `rank` components (rows of each A, columns of each B). */
export function leadingMask(layout: AdapterLayout, rank: number): Uint8Array {
  checkRank(layout, rank);
  const own = rankLayout(layout, rank);
  return embed(own, new Uint8Array(own.size).fill(1), layout);
}

/**
 * The rank a HetLoRA mask holds (its leading components; how a pruned rank survives across rounds
 * and restarts: it is the client's saved mask). Refuses any other mask.
 */
export function heldRank(layout: AdapterLayout, mask: Uint8Array): number {
  if (mask.length !== layout.size) {
    throw new RangeError(`mask has ${mask.length} positions, layout ${layout.size}`);
  }
  const a = layout.entries[0];
  let k = 0;
  while (k < layout.rank && mask[a.offset + k * a.shape[1]] === 1) k++;
  const want = k > 0 ? leadingMask(layout, k) : null;
  if (!want || want.some((m, i) => m !== mask[i])) {
    throw new RangeError(
      "a HetLoRA mask holds the leading rank components of every projection, and at least one",
    );
  }
  return k;
}
