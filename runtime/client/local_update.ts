/**
 * One client's local update (Flower's NumPyClient `fit`/`evaluate`): masked AdamW, the PerFIT
 * expand-then-prune search, and evaluation, all in the client's own rank-(r*e) layout. It knows
 * nothing of the wire or the coordinator: `engineTrainer` hands it the adapter and takes its result.
 */
import { makeBatches } from "../data/batches.ts";
import { deriveSeed } from "../data/rng.ts";
import type { Batch, TextTokenizer } from "../data/types.ts";
import { AdamW, clipGradNorm } from "../model/optim.ts";
import { kernels } from "../kernels/mod.ts";
import { accumulateImportance } from "../perfit/importance.ts";
import { type AdapterLayout, kindMask } from "../perfit/layout.ts";
import { type Allocation, makePrunePlan, type PrunePlan, pruneStage, randomMask } from "../perfit/prune.ts";
import { reviveDeadComponents, stageBoundaries } from "../perfit/reexpand.ts";
import type { ClientData } from "../federation/partition.ts";
import type { FitIns, FitRes, SimConfig, TrainEngine } from "../federation/types.ts";
import { evaluateInstanceWise, type InstanceWeighting } from "./feddpa_eval.ts";
import { addTailGradient } from "./hetlora_prune.ts";

/** Positions a round keeps as they are: a frozen matrix kind, and whatever `trainable` leaves out. */
function frozenOf(layout: AdapterLayout, ins: FitIns): Uint8Array | null {
  const kind = ins.frozen ? kindMask(layout, ins.frozen) : null;
  if (!ins.trainable) return kind;
  if (ins.trainable.length !== layout.size) {
    throw new RangeError(`trainable has ${ins.trainable.length} positions, the layout ${layout.size}`);
  }
  return ins.trainable.map((t, i) => (t ? kind?.[i] ?? 0 : 1));
}

/** Data-loading options of a client. */
export interface ClientDataOptions {
  tokenizer: TextTokenizer;
  batchSize: number;
  maxLen: number;
  evalBatchSize?: number;
}

/** Per-step progress callback (drives progress bars). */
export type StepHook = (clientId: string, step: number, steps: number) => void;

/** A client's data, its adapter in its own rank-(r*e) layout, and its mask. */
export class LocalLearner {
  readonly id: string;
  readonly samples: number;
  plan: PrunePlan;
  /** Dense adapter values over the client layout; zero outside the mask. */
  adapter: Float32Array;
  /** Positions this client trains and uploads (all ones before the first search). */
  mask: Uint8Array;
  private trainBatches: Batch[];
  private readonly testBatches: Batch[];
  private readonly validationBatches: Batch[];
  private cursor = 0;
  private searched = false;
  private epoch = 0;
  private allocation: Allocation = "global";
  /** The optimizer of the last round, carried into the next under `optimizerState: "kept"`. */
  private adam: AdamW | null = null;

  constructor(
    readonly data: ClientData,
    readonly tier: string,
    readonly expansion: number,
    public engine: TrainEngine,
    readonly baseRank: number,
    init: Float32Array,
    private readonly opts: ClientDataOptions,
    private readonly seed: number,
  ) {
    this.id = data.id;
    this.samples = data.train.length;
    if (init.length !== engine.layout.size) {
      throw new RangeError(`client ${this.id}: init ${init.length} != layout ${engine.layout.size}`);
    }
    this.adapter = init.slice();
    this.mask = new Uint8Array(engine.layout.size).fill(1);
    this.plan = makePrunePlan(engine.layout, baseRank);
    this.trainBatches = this.batchesForEpoch(0);
    const held = (examples: ClientData["test"]) =>
      makeBatches(examples, opts.tokenizer, {
        maxLen: opts.maxLen,
        batchSize: opts.evalBatchSize ?? opts.batchSize,
        shuffle: false,
      });
    this.testBatches = held(data.test);
    this.validationBatches = held(data.validation ?? []);
  }

  /** The client's own layout (rank r*e). */
  get layout(): AdapterLayout {
    return this.engine.layout;
  }

  private batchesForEpoch(epoch: number): Batch[] {
    return makeBatches(this.data.train, this.opts.tokenizer, {
      maxLen: this.opts.maxLen,
      batchSize: this.opts.batchSize,
      seed: deriveSeed(this.seed, epoch),
    });
  }

  private nextBatch(): Batch {
    if (this.trainBatches.length === 0) throw new RangeError(`client ${this.id} has no training batches`);
    if (this.cursor >= this.trainBatches.length) {
      this.trainBatches = this.batchesForEpoch(++this.epoch);
      this.cursor = 0;
    }
    return this.trainBatches[this.cursor++];
  }

  /** The optimizer state `optimizerState: "kept"` carries into the next round (null unless kept). */
  optimizerState(): Uint8Array | null {
    return this.adam?.save() ?? null;
  }

  /** Resumes the kept optimizer from `optimizerState`'s bytes (a restarted client); refuses a bad state. */
  restoreOptimizer(bytes: Uint8Array, cfg: Pick<SimConfig, "lr" | "weightDecay">): void {
    const adam = new AdamW(this.adapter.length, { lr: cfg.lr, weightDecay: cfg.weightDecay });
    adam.load(bytes);
    this.adam = adam;
  }

  /** Installs a new mask; pruned positions become zero so they drop out of the architecture. */
  setMask(mask: Uint8Array): void {
    this.mask = mask;
    for (let i = 0; i < mask.length; i++) if (mask[i] === 0) this.adapter[i] = 0;
  }

  /**
   * One local round: `ins.steps` masked AdamW steps. In a search round the first `searchFraction`
   * of the steps also accumulate importance and prune at T evenly spaced stage boundaries.
   */
  async fit(ins: FitIns, cfg: SimConfig, onStep?: StepHook): Promise<FitRes> {
    if (cfg.allocation !== this.allocation) {
      this.plan = makePrunePlan(this.engine.layout, this.baseRank, cfg.allocation);
      this.allocation = cfg.allocation;
    }
    const k = kernels();
    // A kept optimizer steps on from its moments and bias correction, so a round does not open with
    // a fresh AdamW's full-size first steps on every parameter.
    const adam = cfg.optimizerState === "kept" && this.adam?.size === this.adapter.length &&
        this.adam.weightDecay === cfg.weightDecay
      ? this.adam
      : new AdamW(this.adapter.length, { lr: cfg.lr, weightDecay: cfg.weightDecay });
    // Held on only when kept: a fresh-every-round client carries no optimizer between rounds.
    this.adam = cfg.optimizerState === "kept" ? adam : null;
    const T = cfg.pruneStages;
    let importance: Float32Array | null = null;
    let boundaries: number[] = [];
    if (ins.randomMask) {
      this.setMask(randomMask(this.plan, deriveSeed(cfg.seed, ins.round, this.samples, this.expansion)));
    } else if (ins.search && this.plan.total > this.plan.budget) {
      // Re-searches reopen the whole expanded space; fully pruned rank components restart like fresh LoRA.
      if (this.searched) {
        reviveDeadComponents(this.layout, this.adapter, deriveSeed(cfg.seed, ins.round, 0x7e));
      }
      this.mask = new Uint8Array(this.adapter.length).fill(1);
      importance = new Float32Array(this.adapter.length);
      boundaries = stageBoundaries(Math.round(ins.steps * cfg.searchFraction), T);
      this.searched = true;
    }
    let stage = 0;
    let lossSum = 0;
    const steps = Math.max(ins.steps, boundaries.length ? boundaries[T - 1] : 0);
    // Frozen matrices take part in the forward pass but get no update (and no share of the clip norm).
    const frozen = frozenOf(this.layout, ins);
    if (ins.forwardScale && ins.forwardScale.length !== this.adapter.length) {
      throw new RangeError(
        `forwardScale has ${ins.forwardScale.length} positions, the adapter ${this.adapter.length}`,
      );
    }
    const scaled = ins.forwardScale ? new Float32Array(this.adapter.length) : null;
    // The positions the optimizer may move: recomputed only when the mask itself changes (a search).
    let trainMask: { of: Uint8Array; bits: Uint8Array } | null = null;
    const trainable = (mask: Uint8Array) => {
      if (trainMask?.of !== mask) trainMask = { of: mask, bits: mask.map((m, i) => m & (1 - frozen![i])) };
      return trainMask.bits;
    };
    for (let s = 1; s <= steps; s++) {
      if (scaled) {
        for (let i = 0; i < scaled.length; i++) scaled[i] = this.adapter[i] * ins.forwardScale![i];
      }
      const res = await this.engine.trainStep(this.nextBatch(), scaled ?? this.adapter, this.mask);
      // d loss / d θ = d loss / d (θ·c) · c for a forward pass that saw θ·c.
      if (scaled) { for (let i = 0; i < scaled.length; i++) res.grads[i] *= ins.forwardScale![i]; }
      if (!Number.isFinite(res.loss)) {
        throw new RangeError(`client ${this.id}: non-finite loss at round ${ins.round} step ${s}`);
      }
      lossSum += res.loss;
      if (importance && stage < T) accumulateImportance(importance, res.importance, cfg.importance);
      if (frozen) { for (let i = 0; i < frozen.length; i++) if (frozen[i]) res.grads[i] = 0; }
      if (ins.proximal && ins.proximal.mu > 0) {
        const { mu, anchor, positions } = ins.proximal;
        for (let i = 0; i < positions.length; i++) {
          if (positions[i]) res.grads[i] += mu * (this.adapter[i] - anchor[i]);
        }
      }
      if (ins.tailPenalty) {
        addTailGradient(this.layout, this.adapter, res.grads, ins.tailPenalty.rank, ins.tailPenalty);
      }
      if (cfg.clipNorm > 0) clipGradNorm(res.grads, cfg.clipNorm);
      adam.step(this.adapter, res.grads, frozen ? trainable(this.mask) : this.mask, cfg.lr);
      while (importance && stage < T && s === boundaries[stage]) {
        stage++;
        this.setMask(pruneStage(importance, this.mask, this.plan, stage, T, cfg.schedule, k));
      }
      onStep?.(this.id, s, steps);
    }
    return { clientId: this.id, numExamples: this.samples, meanLoss: lossSum / Math.max(1, steps) };
  }

  /** Summed response-token NLL on the client's own test split. */
  evaluate(): Promise<{ nllSum: number; tokens: number }> {
    return this.evaluateWith(this.adapter, this.mask);
  }

  /** FedDPA: the test split with each instance under its own mix of the two adapters (feddpa_eval.ts). */
  evaluateInstanceWise(
    adapter: Float32Array,
    mask: Uint8Array,
    r: number,
    w: InstanceWeighting,
  ): Promise<{ nllSum: number; tokens: number; globalWeights: number[] }> {
    return evaluateInstanceWise(
      this.engine,
      { layout: this.layout, adapter, mask, r },
      this.data,
      this.opts,
      w,
    );
  }

  /** The same for another adapter and mask of this client's layout (e.g. a personalized slice merged in). */
  evaluateWith(adapter: Float32Array, mask: Uint8Array): Promise<{ nllSum: number; tokens: number }> {
    return this.nllOn(this.testBatches, adapter, mask);
  }

  /** Mean response-token NLL on the validation split carved from the training data (none: refused). */
  async validate(adapter: Float32Array, mask: Uint8Array): Promise<number> {
    if (this.validationBatches.length === 0) {
      throw new RangeError(`client ${this.id} has no validation split`);
    }
    const r = await this.nllOn(this.validationBatches, adapter, mask);
    return r.nllSum / Math.max(1, r.tokens);
  }

  private async nllOn(
    batches: Batch[],
    adapter: Float32Array,
    mask: Uint8Array,
  ): Promise<{ nllSum: number; tokens: number }> {
    let nllSum = 0;
    let tokens = 0;
    for (const b of batches) {
      const r = await this.engine.evalNll(b, adapter, mask);
      nllSum += r.nllSum;
      tokens += r.tokens;
    }
    return { nllSum, tokens };
  }
}
