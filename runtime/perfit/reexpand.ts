/**
 * Re-opening the expanded space for a repeated search. Taylor importance |θ·g| is zero wherever θ = 0,
 * so pruned positions could never win back a place; a rank component (row i of A and column i of B)
 * that was pruned entirely gets a fresh A row (kaiming-uniform, seeded) and a zero B column, exactly
 * like a fresh LoRA component: the model's function is unchanged and the component can learn again.
 */
import { mulberry32 } from "../data/rng.ts";
import type { AdapterLayout } from "./layout.ts";

/** Re-initializes dead rank components in place; returns how many were revived. */
export function reviveDeadComponents(layout: AdapterLayout, adapter: Float32Array, seed: number): number {
  if (adapter.length !== layout.size) {
    throw new RangeError(`adapter ${adapter.length} != layout ${layout.size}`);
  }
  const rand = mulberry32(seed);
  let revived = 0;
  for (let i = 0; i + 1 < layout.entries.length; i++) {
    const a = layout.entries[i];
    const b = layout.entries[i + 1];
    if (a.kind !== "A" || b.kind !== "B" || a.layer !== b.layer || a.module !== b.module) continue;
    const [rank, inF] = a.shape;
    const outF = b.shape[0];
    const bound = 1 / Math.sqrt(inF);
    for (let r = 0; r < rank; r++) {
      let dead = true;
      for (let j = 0; j < inF && dead; j++) if (adapter[a.offset + r * inF + j] !== 0) dead = false;
      for (let o = 0; o < outF && dead; o++) if (adapter[b.offset + o * rank + r] !== 0) dead = false;
      if (!dead) continue;
      for (let j = 0; j < inF; j++) adapter[a.offset + r * inF + j] = (rand() * 2 - 1) * bound;
      revived++;
    }
  }
  return revived;
}

/**
 * Steps after which pruning stages 1..T end, spread over `searchSteps` after a warm-up of about
 * searchSteps/(T+1) steps: at the first step B = 0, so every Taylor score is zero and pruning
 * then would only follow index order.
 */
export function stageBoundaries(searchSteps: number, stages: number): number[] {
  const steps = Math.max(searchSteps, stages + 1);
  const warm = Math.max(1, Math.floor(steps / (stages + 1)));
  return Array.from({ length: stages }, (_, t) => warm + Math.round(((t + 1) * (steps - warm)) / stages));
}
