/**
 * FLoRA's client side (runtime/federation/strategies.ts `flora`): the client keeps its own copy of
 * the base, merges every round's stacked aggregate into it once (W += scale · B_stack · A_stack,
 * PEFT's merge_and_unload), and trains a fresh LoRA in its slot of the stacked layout each round.
 *
 * The merged base lives in memory: a client that restarts cannot rebuild it (it would need every
 * earlier round's stack), and a client that joins late starts from the latest round's stack only.
 * Its export is one LoRA over the original base whose product is the merged base's change, so the
 * personalized model travels as a PEFT adapter like every other method's: every merged stack side by
 * side (`stackedDelta`) while their rank is below the projections' own, the dense change after
 * (`denseDelta`), so the export and the stacks kept for it stop growing after a few rounds.
 */
import { addLowRank, baseWeightName, mergeAdapter } from "../export/merge.ts";
import { type AdapterLayout, initAdapter } from "../model/lora.ts";
import { deriveSeed } from "../data/rng.ts";
import { embed, kindMask, LayoutError, rankLayout } from "../perfit/layout.ts";
import { pickMix } from "../perfit/mix.ts";
import type { TrainEngine } from "../federation/types.ts";

/** The client's base with every stack merged up to `round`, and the engine over it. */
export class MergedBase {
  private round = 0;
  private engine: TrainEngine;
  /**
   * Every stack merged so far, in round order, while their rank is within `denseRank` (the export is
   * them side by side); null once past it (the export is the merged weights' change).
   */
  private stacks: Float32Array[] | null = [];
  private last: Float32Array | null = null;

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
      this.last = stack.slice();
      this.stacks?.push(this.last);
      if (this.stacks && this.stacks.length * global.rank > denseRank(global)) this.stacks = null;
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
   * it is a stack not merged yet (a slice that arrived before the next train or evaluate merges it);
   * side by side while their rank is within `denseRank`, else the dense change at that rank. `scale`
   * is the merges' (alpha / r), and the export's.
   */
  delta(
    global: AdapterLayout,
    scale: number,
    latest?: Float32Array | null,
  ): { layout: AdapterLayout; adapter: Float32Array } {
    const pending = latest && !(this.last && sameValues(this.last, latest)) ? latest : null;
    const count = (this.stacks?.length ?? Infinity) + (pending ? 1 : 0);
    if (this.stacks && count * global.rank <= denseRank(global)) {
      return stackedDelta(global, pending ? [...this.stacks, pending] : this.stacks);
    }
    const before = this.original.model!.kernelWeights, after = this.engine.model!.kernelWeights;
    return denseDelta(global, scale, (e, out, inDim) => {
      // The merged base's change, in HF layout [out, in] (the engine holds Wᵀ), and the pending stack's.
      const name = baseWeightName(e.layer, e.module);
      const w0 = before.get(name)!.data, w1 = after.get(name)!.data;
      const d = new Float32Array(out * inDim);
      for (let i = 0; i < inDim; i++) {
        for (let o = 0; o < out; o++) d[o * inDim + i] = w1[i * out + o] - w0[i * out + o];
      }
      if (pending) {
        const a = pairOf(global, e, "A"), b = pairOf(global, e, "B");
        addLowRank(
          d,
          pending.subarray(b.offset, b.offset + b.size),
          pending.subarray(a.offset, a.offset + a.size),
          out,
          inDim,
          global.rank,
          scale,
        );
      }
      return d;
    });
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

/**
 * The rank at which any change of the layout's projections is exact: the largest min(in, out) of its
 * projections (a change of W [out, in] has rank at most min(in, out)).
 */
export function denseRank(layout: AdapterLayout): number {
  let rank = 0;
  for (const e of layout.entries) {
    if (e.kind === "B") rank = Math.max(rank, Math.min(e.shape[0], pairOf(layout, e, "A").shape[1]));
  }
  return rank;
}

type Entry = AdapterLayout["entries"][number];

/** The `kind` matrix of `e`'s projection in `layout`. */
const pairOf = (layout: AdapterLayout, e: Entry, kind: "A" | "B"): Entry =>
  layout.entries.find((x) => x.kind === kind && x.layer === e.layer && x.module === e.module)!;

/**
 * A dense change ΔW [out, in] of each adapted projection (`change`, HF layout) as one LoRA of rank
 * `denseRank` at `scale`, exact: scale·B·A = ΔW with the smaller side's factor the identity (A = I
 * where in ≤ out, B = I where out < in) and the other ΔW / scale; rank components past a projection's
 * min(in, out) are zero.
 */
export function denseDelta(
  global: AdapterLayout,
  scale: number,
  change: (b: Entry, out: number, inDim: number) => Float32Array,
): { layout: AdapterLayout; adapter: Float32Array } {
  if (!(Number.isFinite(scale) && scale > 0)) throw new RangeError(`scale must be > 0, got ${scale}`);
  const layout = rankLayout(global, denseRank(global));
  const adapter = new Float32Array(layout.size);
  const k = layout.rank;
  for (const b of layout.entries) {
    if (b.kind !== "B") continue;
    const a = pairOf(layout, b, "A");
    const out = b.shape[0], inDim = a.shape[1];
    const d = change(b, out, inDim);
    if (d.length !== out * inDim) {
      throw new LayoutError(`${b.name}: change of ${d.length} values for [${out}, ${inDim}]`);
    }
    if (inDim <= out) {
      // A = I (rows 0..in-1), B = ΔW / scale in columns 0..in-1.
      for (let i = 0; i < inDim; i++) adapter[a.offset + i * inDim + i] = 1;
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inDim; i++) adapter[b.offset + o * k + i] = d[o * inDim + i] / scale;
      }
    } else {
      // B = I (columns 0..out-1), A = ΔW / scale in rows 0..out-1.
      for (let o = 0; o < out; o++) adapter[b.offset + o * k + o] = 1;
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inDim; i++) adapter[a.offset + o * inDim + i] = d[o * inDim + i] / scale;
      }
    }
  }
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
