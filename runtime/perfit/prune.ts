/**
 * Iterative pruning: over T stages the mask shrinks from the expanded space N to exactly the budget B,
 * keeping the highest accumulated importance. Allocation is global across layers or per module.
 */
import { kernels } from "../kernels/mod.ts";
import type { Kernels } from "../kernels/types.ts";
import { type AdapterLayout, moduleGroups, rankLayout } from "./layout.ts";

/** Shape of the keep schedule between N (stage 0) and B (stage T). */
export type PruneSchedule = "cubic" | "linear" | "one-shot";
/** Budget allocation: one top-k over the whole adapter, or one per (layer, module). */
export type Allocation = "global" | "per-module";

/**
 * Positions kept after stage t of T: B + (N-B)(1-t/T)^p with p = 3 (cubic) or 1 (linear);
 * one-shot prunes straight to B. keep(0) = N, keep(T) = B, non-increasing in t.
 */
export function keepAt(
  total: number,
  budget: number,
  t: number,
  stages: number,
  schedule: PruneSchedule = "cubic",
): number {
  if (!(budget >= 0 && budget <= total)) throw new RangeError(`budget ${budget} must be in [0, ${total}]`);
  if (!Number.isInteger(stages) || stages < 1) {
    throw new RangeError(`stages must be a positive integer, got ${stages}`);
  }
  if (t <= 0) return total;
  if (t >= stages || schedule === "one-shot") return budget;
  const frac = 1 - t / stages;
  const p = schedule === "cubic" ? 3 : 1;
  return budget + Math.round((total - budget) * Math.pow(frac, p));
}

/** A pruning plan: groups of positions, each with its own expanded size and budget. */
export interface PrunePlan {
  groups: { key: string; ranges: [number, number][]; total: number; budget: number }[];
  total: number;
  budget: number;
}

/** Builds the plan for an expanded layout whose budget is the rank-`baseRank` layout of the same modules. */
export function makePrunePlan(
  expanded: AdapterLayout,
  baseRank: number,
  allocation: Allocation = "global",
): PrunePlan {
  const base = rankLayout(expanded, baseRank);
  if (allocation === "global") {
    return {
      groups: [{ key: "*", ranges: [[0, expanded.size]], total: expanded.size, budget: base.size }],
      total: expanded.size,
      budget: base.size,
    };
  }
  const eg = moduleGroups(expanded);
  const bg = moduleGroups(base);
  const groups = eg.map((g, i) => {
    const total = g.ranges.reduce((s, [, n]) => s + n, 0);
    const budget = bg[i].ranges.reduce((s, [, n]) => s + n, 0);
    return { key: g.key, ranges: g.ranges, total, budget };
  });
  return { groups, total: expanded.size, budget: base.size };
}

/**
 * One pruning stage: within each group, keep the `keepAt(t)` highest-importance positions among those
 * still in `mask` (ties to the lower index). Returns a new mask, a subset of `mask`.
 */
export function pruneStage(
  importance: Float32Array,
  mask: Uint8Array,
  plan: PrunePlan,
  t: number,
  stages: number,
  schedule: PruneSchedule = "cubic",
  k: Kernels = kernels(),
): Uint8Array {
  if (importance.length !== plan.total || mask.length !== plan.total) {
    throw new RangeError(`importance ${importance.length} / mask ${mask.length} != plan size ${plan.total}`);
  }
  const out = new Uint8Array(plan.total);
  for (const g of plan.groups) {
    const keep = keepAt(g.total, g.budget, t, stages, schedule);
    const scores = new Float32Array(g.total);
    const sub = new Uint8Array(g.total);
    let j = 0;
    let alive = 0;
    for (const [off, n] of g.ranges) {
      for (let i = 0; i < n; i++, j++) {
        const live = mask[off + i] !== 0;
        alive += live ? 1 : 0;
        // Pruned positions can never come back: they rank below every live one.
        scores[j] = live ? importance[off + i] : -Infinity;
      }
    }
    if (keep > alive) throw new RangeError(`group ${g.key}: cannot keep ${keep} of ${alive} live positions`);
    k.topkMask(scores, keep, sub);
    j = 0;
    for (const [off, n] of g.ranges) {
      out.set(sub.subarray(j, j + n), off);
      j += n;
    }
  }
  return out;
}

/** Prunes in one call through all stages with fixed importance (used by tests and re-search). */
export function pruneToBudget(
  importance: Float32Array,
  plan: PrunePlan,
  stages = 1,
  schedule: PruneSchedule = "cubic",
  k: Kernels = kernels(),
): Uint8Array {
  let mask: Uint8Array = new Uint8Array(plan.total).fill(1);
  for (let t = 1; t <= stages; t++) mask = pruneStage(importance, mask, plan, t, stages, schedule, k);
  return mask;
}

/** Random mask of the same budget (the ablation): seeded uniform scores through the same top-k. */
export function randomMask(plan: PrunePlan, seed: number, k: Kernels = kernels()): Uint8Array {
  let s = seed >>> 0;
  const scores = new Float32Array(plan.total);
  for (let i = 0; i < scores.length; i++) {
    // xorshift32: cheap, seeded, good enough to scatter a mask.
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    scores[i] = s / 4294967296;
  }
  return pruneToBudget(scores, plan, 1, "one-shot", k);
}
