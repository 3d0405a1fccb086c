/**
 * FLoRA's client side (runtime/federation/strategies.ts `flora`): the client keeps its own copy of
 * the base, merges every round's stacked aggregate into it once (W += scale · B_stack · A_stack,
 * PEFT's merge_and_unload), and trains a fresh LoRA in its slot of the stacked layout each round.
 *
 * The merged base lives in memory: a client that restarts cannot rebuild it (it would need every
 * earlier round's stack), and a client that joins late starts from the latest round's stack only.
 */
import { mergeAdapter } from "../export/merge.ts";
import { type AdapterLayout, initAdapter } from "../model/lora.ts";
import { deriveSeed } from "../data/rng.ts";
import { embed } from "../perfit/layout.ts";
import type { TrainEngine } from "../federation/types.ts";

/** The client's base with every stack merged up to `round`, and the engine over it. */
export class MergedBase {
  private round = 0;
  private engine: TrainEngine;

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
      const base = this.engine.model!;
      // Merged in the engine's own layout: only the adapted matrices are copied, the rest is shared.
      const kernelWeights = mergeAdapter(base.kernelWeights, global, stack, scale, undefined, "kernel");
      this.engine = await this.original.rebased!({ ...base, kernelWeights });
      this.round = globalRound;
    }
    return this.engine;
  }

  /** The global round whose stack is merged last (0: the original base). */
  get mergedRound(): number {
    return this.round;
  }
}

/** A fresh LoRA (A random, B zero) for `round`, as FLoRA re-initializes every round. */
export const freshAdapter = (own: AdapterLayout, seed: number, round: number, slot: number): Float32Array =>
  initAdapter(own, deriveSeed(seed, round, slot, 0xf1));

/** The client's slot in the stacked layout: its own layout's positions, from rank component `slot` on. */
export const slotMask = (own: AdapterLayout, global: AdapterLayout, slot: number): Uint8Array =>
  embed(own, new Uint8Array(own.size).fill(1), global, undefined, slot);
