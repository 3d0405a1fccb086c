/** Expansion of the search space by client tier, and the parameter budget it prunes back to. */
import { type AdapterLayout, rankLayout } from "./layout.ts";

/** Resource tier of a client: stronger tiers search a larger space. */
export type Tier = string;
/** Expansion factor per tier. */
export type TierTable = Record<Tier, number>;

/** Default tiers: e = 1, 2, 4. */
export const DEFAULT_TIERS: TierTable = { low: 1, mid: 2, high: 4 };

/** Expansion factor of a tier; unknown tiers are an error rather than a silent default. */
export function expansionFactor(tier: Tier, table: TierTable = DEFAULT_TIERS): number {
  const e = table[tier];
  if (e === undefined) {
    throw new RangeError(`unknown tier "${tier}" (known: ${Object.keys(table).join(", ")})`);
  }
  if (!Number.isInteger(e) || e < 1) throw new RangeError(`tier "${tier}" has invalid expansion factor ${e}`);
  return e;
}

/** Budget B: the parameter count of the plain rank-r adapter on the same modules. */
export function budgetOf(layout: AdapterLayout, baseRank: number): number {
  return rankLayout(layout, baseRank).size;
}

/** Client layout at rank r*e for a base layout of rank r. */
export function expandedLayout(base: AdapterLayout, baseRank: number, e: number): AdapterLayout {
  return rankLayout(base, baseRank * e);
}
