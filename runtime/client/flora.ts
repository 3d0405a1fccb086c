/**
 * FLoRA's client side (runtime/federation/strategies.ts `flora`): the client keeps its own copy of
 * the base, merges every round's stacked aggregate into it once (W += scale · B_stack · A_stack,
 * PEFT's merge_and_unload), and trains a fresh LoRA in its slot of the stacked layout each round.
 *
 * The merged base lives in memory: a client that restarts cannot rebuild it (it would need every
 * earlier round's stack), and a client that joins late starts from the latest round's stack only.
 * Its export is every merged stack side by side as one LoRA (`stackedDelta`): base + that LoRA is the
 * merged base, so the personalized model travels as a PEFT adapter like every other method's.
 */
import { mergeAdapter } from "../export/merge.ts";
import { type AdapterLayout, initAdapter } from "../model/lora.ts";
import { deriveSeed } from "../data/rng.ts";
import { embed, kindMask, LayoutError, rankLayout } from "../perfit/layout.ts";
import { pickMix } from "../perfit/mix.ts";
import type { TrainEngine } from "../federation/types.ts";

/** The client's base with every stack merged up to `round`, and the engine over it. */
export class MergedBase {
  private round = 0;
  private engine: TrainEngine;
  /** Every stack merged so far, in round order (the export needs them all). */
  private readonly stacks: Float32Array[] = [];

  constructor(private readonly original: TrainEngine) {
    if (!original.model || !original.rebased) {
      throw new Error("FLoRA needs an engine that can change its base weights (Engine.rebased)");
    }
    this.engine = original;
  }

  /**
   * The engine over the base with the stack of `globalRound` merged (once per round; rounds must
   * come in order). `stack` is the whole global adapter: every slot's A (scaled by its client's
   * sample weight) and B.
   */
  async engineFor(globalRound: number, global: AdapterLayout, stack: Float32Array, scale: number) {
    if (globalRound < this.round) {
      throw new RangeError(`stack of round ${globalRound} is older than the merged round ${this.round}`);
    }
    if (globalRound > this.round) {
      this.engine = await this.engineWith(global, stack, scale);
      this.round = globalRound;
      this.stacks.push(stack.slice());
    }
    return this.engine;
  }

  /** The engine over the merged base with `stack` merged too, leaving the merged base as it is. */
  async engineWith(global: AdapterLayout, stack: Float32Array, scale: number): Promise<TrainEngine> {
    const base = this.engine.model!;
    // Merged in the engine's own layout: only the adapted matrices are copied, the rest is shared.
    const kernelWeights = mergeAdapter(base.kernelWeights, global, stack, scale, undefined, "kernel");
    return await this.original.rebased!({ ...base, kernelWeights });
  }

  /**
   * The personalized model as one LoRA over the original base: the merged stacks, and `latest` too when
   * it is a stack not merged yet (a slice that arrived before the next train or evaluate merges it).
   */
  delta(
    global: AdapterLayout,
    latest?: Float32Array | null,
  ): { layout: AdapterLayout; adapter: Float32Array } {
    const last = this.stacks.at(-1);
    const pending = latest && !(last && sameValues(last, latest)) ? [latest] : [];
    return stackedDelta(global, [...this.stacks, ...pending]);
  }

  /** The global round whose stack is merged last (0: the original base). */
  get mergedRound(): number {
    return this.round;
  }
}

/**
 * Stacks of one stacked layout side by side, round t's at rank components t·R on (R the stacked rank):
 * one LoRA whose B·A is the sum of every stack's, at the same scale. Exact, so the merged base and the
 * original base with this LoRA are one model (up to float summation order).
 */
export function stackedDelta(
  global: AdapterLayout,
  stacks: readonly Float32Array[],
): { layout: AdapterLayout; adapter: Float32Array } {
  if (stacks.length === 0) throw new LayoutError("no stack to export: no round was merged");
  const layout = rankLayout(global, global.rank * stacks.length);
  const adapter = new Float32Array(layout.size);
  stacks.forEach((s, t) => {
    const part = embed(global, s, layout, undefined, t * global.rank);
    for (let i = 0; i < part.length; i++) adapter[i] += part[i];
  });
  return { layout, adapter };
}

/** The own-slot weights `flora-mix` picks from on each client's validation split (1: FLoRA's stack). */
export const OWN_SLOT_GRID: readonly number[] = [1, 2, 3, 5, 10];

/**
 * The share p the coordinator gave a client's slot in a plain FLoRA stack: the stack holds p·A of the
 * A the client uploaded (`trained`), at the positions `ownA`. 0 when the slot is empty (not sampled).
 * Refuses an upload with no A there, whose share no stack can tell.
 */
export function slotShare(stack: Float32Array, trained: Float32Array, ownA: Uint8Array): number {
  let dot = 0, norm = 0;
  for (let i = 0; i < ownA.length; i++) {
    if (!ownA[i]) continue;
    dot += stack[i] * trained[i];
    norm += trained[i] * trained[i];
  }
  if (!(norm > 0)) throw new RangeError("the client's slot holds no A to find its share by");
  const p = dot / norm;
  if (!(p >= 0 && p <= 1 + 1e-6)) {
    throw new RangeError(`slot share ${p} is outside [0, 1]: not this client's stack`);
  }
  return Math.min(p, 1);
}

/**
 * flora-own's rule applied by the client to the plain stack (flora-mix): its own slot counted `s`
 * times, so its A ×s/(1 + (s − 1)·p) and every other slot's A ×1/(1 + (s − 1)·p), B as is; the
 * products' weights still sum to 1. The same stack as the coordinator's flora-own at that s.
 */
export function reweighOwnSlot(
  stack: Float32Array,
  ownA: Uint8Array,
  isA: Uint8Array,
  p: number,
  s: number,
): Float32Array {
  if (!(s >= 1 && Number.isFinite(s))) throw new RangeError(`own-slot weight must be ≥ 1, got ${s}`);
  if (!(p >= 0 && p <= 1)) throw new RangeError(`slot share must be in [0, 1], got ${p}`);
  if (ownA.length !== stack.length || isA.length !== stack.length) {
    throw new RangeError(`masks of ${ownA.length}/${isA.length} positions for a stack of ${stack.length}`);
  }
  const d = 1 + (s - 1) * p;
  return stack.map((v, i) => (ownA[i] ? (v * s) / d : isA[i] ? v / d : v));
}

/**
 * flora-mix's pick: the plain stack with the client's slot reweighed at the s its validation loss
 * (`validate`, of an engine over the merged base with a candidate merged) prefers, ties to the smaller
 * s; the stack as it is, and no s, when the client has no part in it (before its first upload, or not
 * sampled this round). `trained` is the client's upload (global layout), `own` its layout.
 */
export async function pickOwnSlot(
  merged: MergedBase,
  validate: (engine: TrainEngine) => Promise<number>,
  stack: Float32Array,
  trained: Float32Array,
  at: { own: AdapterLayout; global: AdapterLayout; slot: number; scale: number },
): Promise<{ stack: Float32Array; s: number | null }> {
  const isA = kindMask(at.global, "A");
  const ownA = slotMask(at.own, at.global, at.slot).map((m, i) => m & isA[i]);
  if (!trained.some((v, i) => ownA[i] && v !== 0)) return { stack, s: null };
  const p = slotShare(stack, trained, ownA);
  if (p === 0) return { stack, s: null };
  const best = await pickMix(
    OWN_SLOT_GRID,
    async (s) =>
      await validate(await merged.engineWith(at.global, reweighOwnSlot(stack, ownA, isA, p, s), at.scale)),
  );
  return { stack: reweighOwnSlot(stack, ownA, isA, p, best.lambda), s: best.lambda };
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** A fresh LoRA (A random, B zero) for `round`, as FLoRA re-initializes every round. */
export const freshAdapter = (own: AdapterLayout, seed: number, round: number, slot: number): Float32Array =>
  initAdapter(own, deriveSeed(seed, round, slot, 0xf1));

/** The client's slot in the stacked layout: its own layout's positions, from rank component `slot` on. */
export const slotMask = (own: AdapterLayout, global: AdapterLayout, slot: number): Uint8Array =>
  embed(own, new Uint8Array(own.size).fill(1), global, undefined, slot);
