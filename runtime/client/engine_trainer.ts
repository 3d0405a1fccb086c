/**
 * The client's local round on the ORT engine: the `Trainer` a `FederatedClient` calls, with the
 * PerFIT update of `LocalLearner` (masked AdamW, expand-then-prune search) and evaluation on the
 * client's own test split. The browser page, a Deno process and the simulation all use it; the
 * simulation only hands it engines it shares between clients of the same rank.
 *
 * The coordinator works in the run's global layout (rank r * e_max); this client trains in its own
 * rank-(r*e) layout, so values and masks are extracted from / embedded into the global layout here.
 */
import { Engine, type EngineOptions, type LoadedModel } from "../model/engine.ts";
import { type AdapterLayout, initAdapter, type TargetModule } from "../model/lora.ts";
import { embed, extract, kindMask, rankLayout } from "../perfit/layout.ts";
import { strategyFor } from "../federation/strategies.ts";
import { splitValidation } from "../federation/partition.ts";
import { MIX_GRID, mixAt, pickMix } from "../perfit/mix.ts";
import type { Allocation, PruneSchedule } from "../perfit/prune.ts";
import { deriveSeed } from "../data/rng.ts";
import { parseTrainSettings } from "./train_settings.ts";
import { LocalLearner } from "./local_update.ts";
import { freshAdapter, MergedBase, pickOwnSlot, slotMask, stackedDelta } from "./flora.ts";
import {
  DEFAULT_SIM,
  type DualSettings,
  type EngineFactory,
  type SimConfig,
  type TrainEngine,
} from "../federation/types.ts";
import { combineDual, dualFit, leadMask } from "./feddpa.ts";
import {
  checkRankPruning,
  heldRank,
  leadingMask,
  nextRank,
  type RankPruning,
  tailScore,
} from "./hetlora_prune.ts";
import type { Example, TextTokenizer } from "../data/types.ts";
import type { TaskInfo, Trainer, TrainerOutput } from "./federated_client.ts";

/** Progress of local training. */
export interface TrainProgress {
  round: number;
  step: number;
  steps: number;
  phase: "engine" | "train" | "eval";
}

/** Options of `engineTrainer`. */
export interface EngineTrainerOptions {
  /** The base model: engines are created from it per rank. */
  model?: LoadedModel;
  /** Or engines handed in (the simulation shares one per rank between its clients). */
  engines?: EngineFactory;
  tokenizer: TextTokenizer;
  /** The client's local data, already split. */
  data: { id: string; train: Example[]; test: Example[] };
  backend?: "auto" | "node" | "wasm" | "webgpu";
  /**
   * How the engines hold the model: activation checkpointing (about half the memory of a step for
   * one more forward pass) and whether the base weights are session constants or fed as inputs.
   */
  engine?: Pick<EngineOptions, "checkpoint" | "weightMode">;
  /**
   * Report the round's training throughput with the upload (default false): `tokens`, the real
   * (unpadded) tokens of the round's training batches, and `trainS`, the seconds of local training
   * (evaluation excluded). Off in the simulation, whose upload bytes are compared across carriers.
   */
  reportThroughput?: boolean;
  /** Seed of this client's batch order (default: the run's seed). */
  seed?: number;
  /** Evaluation batch size (default: twice the training batch). */
  evalBatchSize?: number;
  /**
   * Evaluate on the test split after local training and report `ppl` with the upload (default
   * true). The simulation evaluates the personalized model itself instead.
   */
  evaluateAfterTraining?: boolean;
  onProgress?: (p: TrainProgress) => void;
  /** Called after each round's local training with its metrics (mean loss, held-out perplexity). */
  onMetrics?: (round: number, metrics: Record<string, number>) => void;
  /** Called after every optimizer step with that step's loss, for live plots. */
  onLoss?: (round: number, step: number, loss: number) => void;
}

/** The local round's settings, from the run's `train` object (validated by the coordinator already). */
export interface LocalHyper {
  steps: number;
  lr: number;
  weightDecay: number;
  batchSize: number;
  maxLen: number;
  pruneStages: number;
  searchFraction: number;
  clipNorm: number;
  schedule: PruneSchedule;
  allocation: Allocation;
  importance: SimConfig["importance"];
  /** FedProx's μ (0: off). */
  proximalMu: number;
  /** FedDPA's weights of its two adapters. */
  dpa: DualSettings;
  /** perfit-mix: share of the training examples held out to pick the mix weight on. */
  validationShare: number;
  /** perfit-mix: the positions mixed, the mask's B only or all of it. */
  mixPart: "B" | "all";
  /** Local fine-tuning steps once the run is done (0: off). */
  finetuneSteps: number;
  /** Their learning rate, as a share of `lr`. */
  finetuneLrScale: number;
  /** A client's AdamW moments: fresh every round, or kept across its rounds. */
  optimizerState: "round" | "kept";
  /** HetLoRA's rank self-pruning, γ and λ (null: off). */
  rankPruning: RankPruning | null;
}

/** Reads the run's `train` settings through the one table (runtime/client/train_settings.ts). */
export function localHyper(train: Record<string, unknown>): LocalHyper {
  const t = parseTrainSettings(train);
  return {
    steps: t.localSteps,
    lr: t.lr,
    weightDecay: t.weightDecay,
    batchSize: t.batchSize,
    maxLen: t.maxLen,
    pruneStages: t.pruneStages,
    searchFraction: t.searchFraction,
    clipNorm: t.clipNorm,
    schedule: t.schedule,
    allocation: t.allocation,
    importance: { mode: t.importanceMode, beta: t.importanceBeta },
    proximalMu: t.proximalMu,
    dpa: {
      localWeight: t.localWeight,
      localTrainWeight: t.localTrainWeight,
      combine: t.combine,
      instanceMaxWeight: t.instanceMaxWeight,
      instanceRefs: t.instanceRefs,
    },
    validationShare: t.validationShare,
    mixPart: t.mixPart,
    finetuneSteps: t.finetuneSteps,
    finetuneLrScale: t.finetuneLrScale,
    optimizerState: t.optimizerState,
    rankPruning: t.rankPruning === "on"
      ? checkRankPruning({ decay: t.rankDecay, tailWeight: t.rankTailWeight })
      : null,
  };
}

/** The run's global layout: its size is linear in the rank, so the global rank is N / size(rank 1). */
export function globalLayoutOf(task: TaskInfo, client: AdapterLayout): AdapterLayout {
  const unit = rankLayout(client, 1);
  const rank = task.adapterSize / unit.size;
  if (!Number.isInteger(rank) || rank < task.rank) {
    throw new Error(
      `run adapter size ${task.adapterSize} does not fit this model with targets ${
        task.lora.targets.join(",")
      }`,
    );
  }
  return rankLayout(client, rank);
}

/**
 * The seed every client of a run draws its initial adapter from, in the global layout: positions
 * mean the same thing in every client, whatever its rank.
 */
export const initSeed = (runSeed: number): number => deriveSeed(runSeed, 0x1417);

/** The run's shared initial adapter at this client's own positions (its own layout). */
const sharedInit = (task: TaskInfo, global: AdapterLayout, own: AdapterLayout): Float32Array =>
  extract(global, initAdapter(global, initSeed(task.seed)), own);

/** What `engineTrainer` returns: the `Trainer`, plus what the client's owner asks of it. */
export type EngineTrainer = Trainer & {
  backend(): string;
  /** The client's fresh adapter in the global layout (the run's shared init, in its own positions). */
  initAdapter(task: TaskInfo): Promise<Float32Array>;
  /** Summed response-token NLL of an adapter (global layout) on the client's test split. */
  evaluate(
    task: TaskInfo,
    adapter: Float32Array,
    mask: Uint8Array | null,
  ): Promise<{ nllSum: number; tokens: number }>;
  /**
   * The personalized adapter in the client's own layout, for export: of `adapter`/`mask` (global
   * layout, e.g. the `FederatedClient`'s after the last slice) when given, else of the last round.
   * A stacking method's (FLoRA) is its merged base as one LoRA of every stack's rank over the original
   * base (runtime/client/flora.ts `stackedDelta`), so its layout is not the client's own.
   */
  personalized(
    adapter?: Float32Array | null,
    mask?: Uint8Array | null,
  ): { layout: AdapterLayout; adapter: Float32Array; mask: Uint8Array; scale: number } | null;
  /** The learner (its layout, prune plan, adapter), once created. */
  learner(): LocalLearner | null;
  /**
   * The adapter (global layout) the client holds once a slice is merged: `merged` itself, or for a
   * mixing method (`perfit-mix`) its B positions mixed with `own` (the adapter before the merge) at
   * the weight the client's validation split prefers.
   */
  mixSlice(
    task: TaskInfo,
    own: Float32Array,
    merged: Float32Array,
    mask: Uint8Array | null,
  ): Promise<Float32Array>;
  /** perfit-mix: the weight of the last slice's mix; null before one (or for other methods). */
  mixWeight(): number | null;
  /** A stacking method's slot: the first rank component of this client's in the stacked layout (0 before a task, or unstacked). */
  slot(): number;
  /**
   * Local fine-tuning once the run is done: `finetuneSteps` masked AdamW steps on the client's own
   * training data from `adapter` (global layout, the final personalized model), under `mask`, with the
   * method's frozen matrices kept. Returns the fine-tuned adapter (global layout; positions outside
   * this client's layout as given). Nothing of it is uploaded.
   */
  finetune(task: TaskInfo, adapter: Float32Array, mask: Uint8Array | null): Promise<Float32Array>;
  /** The kept optimizer's state after the last round (`train.optimizerState: "kept"`); null otherwise. */
  optimizerState(): Uint8Array | null;
  /**
   * Resumes the kept optimizer from what `optimizerState` gave (a restarted client); it takes effect
   * when the learner is created, which refuses a state of another size.
   */
  restoreOptimizerState(bytes: Uint8Array): void;
};

/** The A or B positions of a layout, computed once per layout. */
const kindOf = (() => {
  const memo = new WeakMap<AdapterLayout, { A: Uint8Array; B: Uint8Array }>();
  const get = (l: AdapterLayout) => {
    let m = memo.get(l);
    if (!m) memo.set(l, m = { A: kindMask(l, "A"), B: kindMask(l, "B") });
    return m;
  };
  return { A: (l: AdapterLayout) => get(l).A, B: (l: AdapterLayout) => get(l).B };
})();

/** FedDPA's global-adapter positions, computed once per layout. */
const leadOf = (() => {
  const memo = new WeakMap<AdapterLayout, Uint8Array>();
  return (l: AdapterLayout, r: number) => {
    let m = memo.get(l);
    if (!m) memo.set(l, m = leadMask(l, r));
    return m;
  };
})();

/**
 * Summed test NLL of an adapter of the learner's layout as the method evaluates it: FedDPA mixes its
 * global and local adapter (fixed weight, or per instance), everything else is the adapter itself.
 */
function evaluateOwn(
  task: TaskInfo,
  h: LocalHyper,
  learner: LocalLearner,
  adapter: Float32Array,
  mask: Uint8Array,
): Promise<{ nllSum: number; tokens: number }> {
  if (!strategyFor(task.method).dual) return learner.evaluateWith(adapter, mask);
  const r = task.lora.rank;
  if (h.dpa.combine === "fixed") {
    return learner.evaluateWith(combineDual(learner.layout, adapter, r, h.dpa.localWeight), mask);
  }
  return learner.evaluateInstanceWise(adapter, mask, r, {
    maxWeight: h.dpa.instanceMaxWeight,
    refs: h.dpa.instanceRefs,
    seed: deriveSeed(task.seed, task.globalRound),
  });
}

/** The learner's view of a task's settings (the round's `SimConfig`). */
function simConfigOf(task: TaskInfo, h: LocalHyper): SimConfig {
  return {
    ...DEFAULT_SIM,
    method: task.method,
    rank: task.lora.rank,
    alpha: task.lora.alpha,
    targets: task.lora.targets as TargetModule[],
    localSteps: h.steps,
    lr: h.lr,
    weightDecay: h.weightDecay,
    clipNorm: h.clipNorm,
    pruneStages: h.pruneStages,
    searchFraction: h.searchFraction,
    schedule: h.schedule,
    allocation: h.allocation,
    importance: h.importance,
    optimizerState: h.optimizerState,
    seed: task.seed,
  };
}

/** Builds the trainer; engines are created (or fetched from `engines`) per client rank on first use. */
export function engineTrainer(opts: EngineTrainerOptions): EngineTrainer {
  if (!opts.model && !opts.engines) throw new Error("engineTrainer needs a model or an engine factory");
  let lastTask: TaskInfo | null = null;
  let fl: LocalLearner | null = null;
  let engine: TrainEngine | null = null;
  let backendName = "none";
  let current = { round: 0, step: 0, tokens: 0 };
  /** A saved optimizer state for the learner not created yet (a restarted client). */
  let savedOptimizer: Uint8Array | null = null;
  const created = new Map<number, Promise<TrainEngine>>();
  const engineFor = (task: TaskInfo, steps: number): Promise<TrainEngine> => {
    if (opts.engines) return opts.engines(task.rank);
    let e = created.get(task.rank);
    if (!e) {
      opts.onProgress?.({ round: task.round, step: 0, steps, phase: "engine" });
      e = Engine.create(opts.model!, {
        rank: task.rank,
        alpha: task.lora.alpha,
        targets: task.lora.targets as TargetModule[],
        baseRank: task.lora.rank,
      }, { ...opts.engine, backend: opts.backend ?? "auto" }).then((x) => {
        backendName = x.backend;
        return x;
      });
      created.set(task.rank, e);
    }
    return e;
  };
  // Reports every step's loss as it happens (the learner only returns the round's mean).
  const withLoss = (e: TrainEngine): TrainEngine => ({
    layout: e.layout,
    trainStep: async (b, a, m) => {
      const r = await e.trainStep(b, a, m);
      for (let i = 0; i < b.attentionMask.length; i++) current.tokens += b.attentionMask[i];
      opts.onLoss?.(current.round, ++current.step, r.loss);
      return r;
    },
    evalNll: (b, a, m) => e.evalNll(b, a, m),
    model: e.model,
    rebased: e.rebased && (async (model) => withLoss(await e.rebased!(model))),
    ...(e.hiddenAt ? { hiddenAt: e.hiddenAt.bind(e) } : {}),
  });
  /** The learner for this task's rank (a new one when the rank changed). */
  const learnerFor = async (task: TaskInfo, h: LocalHyper) => {
    const e = await engineFor(task, h.steps);
    const global = globalLayoutOf(task, e.layout);
    if (!fl || engine?.layout.rank !== e.layout.rank) {
      engine = e;
      // A mixing method trains on the rest of its training data and picks its mix on the part held out.
      const held = strategyFor(task.method).mixes
        ? (({ fit, validation }) => ({ train: fit, validation }))(
          splitValidation(opts.data.train, h.validationShare, opts.seed ?? task.seed),
        )
        : {};
      fl = new LocalLearner(
        { ...opts.data, ...held, categories: {} },
        task.tier,
        task.expansion,
        withLoss(e),
        task.lora.rank,
        sharedInit(task, global, e.layout),
        {
          tokenizer: opts.tokenizer,
          batchSize: h.batchSize,
          maxLen: h.maxLen,
          evalBatchSize: opts.evalBatchSize,
        },
        opts.seed ?? task.seed,
      );
      if (savedOptimizer) {
        fl.restoreOptimizer(savedOptimizer, h);
        savedOptimizer = null;
      }
    }
    return { learner: fl, global, layout: e.layout };
  };
  let merged: MergedBase | null = null;
  /** perfit-mix: the weight of the last slice's mix (reported with the next upload). */
  let lastMix: number | null = null;
  /** FLoRA: the learner over the base with the slice's stack merged (once per global round). */
  const rebase = async (
    task: TaskInfo,
    learner: LocalLearner,
    global: AdapterLayout,
    stack: Float32Array,
  ) => {
    merged ??= new MergedBase(learner.engine);
    learner.engine = await merged.engineFor(
      task.globalRound,
      global,
      stack,
      task.lora.alpha / task.lora.rank,
    );
  };
  const trainer = async (
    task: TaskInfo,
    adapter: Float32Array,
    mask: Uint8Array | null,
  ): Promise<TrainerOutput> => {
    const h = localHyper(task.train);
    lastTask = task;
    const { learner, global, layout } = await learnerFor(task, h);
    const stacks = strategyFor(task.method).stacks === true;
    const slot = task.plan.slot ?? 0;
    if (stacks) {
      // A fresh LoRA every round, over the base with every earlier round merged.
      await rebase(task, learner, global, adapter);
      learner.adapter = freshAdapter(layout, task.seed, task.round, slot);
    } else {
      learner.adapter = extract(global, adapter, layout);
      // Resumed after a crash, or a new learner: the saved mask is the searched architecture.
      if (mask) learner.setMask(extract(global, mask, layout));
    }
    current = { round: task.round, step: 0, tokens: 0 };
    const cfg = simConfigOf(task, h);
    const strategy = strategyFor(task.method);
    const part = strategy.shares;
    const r = task.lora.rank;
    // What this client shares of its layout.
    const sharedOf = (mask: Uint8Array) =>
      part === "mask"
        ? mask
        : part === "none"
        ? new Uint8Array(layout.size)
        : part === "lead"
        ? mask.map((m, i) => m & leadOf(layout, r)[i])
        : mask.map((m, i) => m & kindOf[part](layout)[i]);
    const proximal = h.proximalMu > 0 && part !== "none"
      ? { mu: h.proximalMu, anchor: learner.adapter.slice(), positions: sharedOf(learner.mask) }
      : undefined;
    // HetLoRA's self-pruning: the client's rank is its mask's (runtime/client/hetlora_prune.ts).
    const prune = strategy.selfPrunes && h.rankPruning ? h.rankPruning : null;
    const rank = prune ? heldRank(layout, learner.mask) : 0;
    const tailBefore = prune ? tailScore(layout, learner.adapter, rank, prune.decay) : 0;
    const tailPenalty = prune && prune.tailWeight > 0 ? { rank, ...prune } : null;
    let lastStep = 0;
    const ins = {
      round: task.round,
      steps: h.steps,
      ...task.plan,
      frozen: strategy.frozen,
      proximal,
      ...(tailPenalty ? { tailPenalty } : {}),
    };
    const onStep = (_id: string, step: number, steps: number) => {
      lastStep = step;
      opts.onProgress?.({ round: task.round, step, steps, phase: "train" });
    };
    const t0 = performance.now();
    const res: { meanLoss: number; localLoss?: number } = strategy.dual
      ? await dualFit(learner, ins, cfg, r, h.dpa.localTrainWeight, onStep)
      : await learner.fit(ins, cfg, onStep);
    const metrics: Record<string, number> = { loss: res.meanLoss };
    if (res.localLoss !== undefined) metrics.localLoss = res.localLoss;
    if (strategy.mixes && lastMix !== null) metrics.mix = lastMix;
    if (prune) {
      // A prune takes effect at once: this round's upload already holds only the kept components.
      const after = tailScore(layout, learner.adapter, rank, prune.decay);
      const kept = nextRank({ before: tailBefore, after, rank, decay: prune.decay });
      if (kept < rank) learner.setMask(leadingMask(layout, kept));
    }
    if (opts.reportThroughput) {
      metrics.tokens = current.tokens;
      metrics.trainS = (performance.now() - t0) / 1000;
    }
    if (opts.evaluateAfterTraining ?? true) {
      opts.onProgress?.({ round: task.round, step: lastStep, steps: lastStep, phase: "eval" });
      const ev = await evaluateOwn(task, h, learner, learner.adapter, learner.mask);
      if (ev.tokens > 0) metrics.ppl = Math.exp(ev.nllSum / ev.tokens);
    }
    opts.onMetrics?.(task.round, metrics);
    if (stacks) {
      const own = slotMask(layout, global, slot);
      // A pruning method's slot holds its kept positions only (the rest are zero and do not travel).
      const kept = strategy.prunes ? embed(layout, learner.mask, global, undefined, slot) : own;
      return {
        values: embed(layout, learner.adapter, global, undefined, slot),
        mask: kept,
        share: kept,
        support: own,
        samples: Math.max(1, learner.samples),
        metrics,
      };
    }
    // What the strategy shares of the mask; the rest stays on this client.
    const shared = sharedOf(learner.mask);
    return {
      values: embed(layout, learner.adapter, global),
      mask: embed(layout, learner.mask, global),
      share: embed(layout, shared, global),
      support: embed(layout, new Uint8Array(layout.size).fill(1), global),
      samples: Math.max(1, learner.samples),
      metrics,
    };
  };
  return Object.assign(trainer, {
    backend: () => (opts.engines ? "shared" : backendName),
    async initAdapter(task: TaskInfo): Promise<Float32Array> {
      const e = await engineFor(task, 0);
      const global = globalLayoutOf(task, e.layout);
      return embed(e.layout, sharedInit(task, global, e.layout), global);
    },
    async evaluate(task: TaskInfo, adapter: Float32Array, mask: Uint8Array | null) {
      const h = localHyper(task.train);
      const { learner, global, layout } = await learnerFor(task, h);
      if (strategyFor(task.method).stacks) {
        // The model is the merged base; its fresh LoRA (B = 0) adds nothing.
        await rebase(task, learner, global, adapter);
        return await learner.evaluateWith(new Float32Array(layout.size), new Uint8Array(layout.size).fill(1));
      }
      const own = extract(global, adapter, layout);
      const m = mask ? extract(global, mask, layout) : new Uint8Array(layout.size).fill(1);
      return await evaluateOwn(task, h, learner, own, m);
    },
    personalized(adapter?: Float32Array | null, mask?: Uint8Array | null) {
      if (!fl || !lastTask) return null;
      const global = globalLayoutOf(lastTask, fl.layout);
      const { rank, alpha } = lastTask.lora;
      if (strategyFor(lastTask.method).stacks) {
        // The model is the merged base: exported as its stacks side by side, or its dense change once wider.
        const d = merged ? merged.delta(global, alpha / rank, adapter) : stackedDelta(global, [
          adapter ?? embed(fl.layout, fl.adapter, global, undefined, lastTask.plan.slot ?? 0),
        ]);
        return { ...d, mask: new Uint8Array(d.layout.size).fill(1), scale: alpha / rank };
      }
      const own = adapter ? extract(global, adapter, fl.layout) : fl.adapter;
      return {
        layout: fl.layout,
        // FedDPA exports its fixed mix (an instance-wise weight has no single adapter to write).
        adapter: strategyFor(lastTask.method).dual
          ? combineDual(fl.layout, own, rank, localHyper(lastTask.train).dpa.localWeight)
          : own,
        mask: mask ? extract(global, mask, fl.layout) : fl.mask,
        scale: alpha / rank,
      };
    },
    learner: () => fl,
    mixWeight: () => lastMix,
    slot: () => lastTask?.plan.slot ?? 0,
    optimizerState: () => fl?.optimizerState() ?? null,
    restoreOptimizerState(bytes: Uint8Array) {
      savedOptimizer = bytes.slice();
    },
    async finetune(task: TaskInfo, adapter: Float32Array, mask: Uint8Array | null) {
      const h = localHyper(task.train);
      const strategy = strategyFor(task.method);
      if (h.finetuneSteps < 1) throw new RangeError("finetune needs train.finetuneSteps ≥ 1");
      if (strategy.stacks || strategy.dual || !strategy.trains) {
        throw new RangeError(`${task.method} has no personalized adapter to fine-tune`);
      }
      const { learner, global, layout } = await learnerFor(task, h);
      learner.adapter = extract(global, adapter, layout);
      if (mask) learner.setMask(extract(global, mask, layout));
      const round = task.round + 1;
      current = { round, step: 0, tokens: 0 };
      await learner.fit(
        { round, steps: h.finetuneSteps, search: false, randomMask: false, frozen: strategy.frozen },
        { ...simConfigOf(task, h), lr: h.lr * h.finetuneLrScale },
        (_id, step, steps) => opts.onProgress?.({ round, step, steps, phase: "train" }),
      );
      const tuned = embed(layout, learner.adapter, global);
      const inOwn = embed(layout, new Uint8Array(layout.size).fill(1), global);
      return adapter.map((v, i) => (inOwn[i] ? tuned[i] : v));
    },
    async mixSlice(task: TaskInfo, own: Float32Array, mergedIn: Float32Array, mask: Uint8Array | null) {
      // Nothing to choose between before the first aggregation has moved anything.
      if (!strategyFor(task.method).mixes || own.every((v, i) => v === mergedIn[i])) return mergedIn;
      const h = localHyper(task.train);
      const { learner, global, layout } = await learnerFor(task, h);
      if (strategyFor(task.method).stacks) {
        // flora-mix: candidates are scored over the merged base, the learner's own engine put back after.
        merged ??= new MergedBase(learner.engine);
        const kept = learner.engine;
        const zero = new Float32Array(layout.size), all = new Uint8Array(layout.size).fill(1);
        try {
          const pick = await pickOwnSlot(
            merged,
            (e) => {
              learner.engine = e;
              return learner.validate(zero, all);
            },
            mergedIn,
            own,
            { own: layout, global, slot: task.plan.slot ?? 0, scale: task.lora.alpha / task.lora.rank },
          );
          if (pick.s !== null) lastMix = pick.s;
          return pick.stack;
        } finally {
          learner.engine = kept;
        }
      }
      const ownL = extract(global, own, layout);
      const globalL = extract(global, mergedIn, layout);
      const m = mask ? extract(global, mask, layout) : learner.mask;
      const at = h.mixPart === "all" ? m : kindOf.B(layout).map((b, i) => b & m[i]);
      const best = await pickMix(MIX_GRID, (l) => learner.validate(mixAt(ownL, globalL, at, l), m));
      lastMix = best.lambda;
      const mixed = embed(layout, mixAt(ownL, globalL, at, best.lambda), global);
      const inOwn = embed(layout, new Uint8Array(layout.size).fill(1), global);
      return mergedIn.map((v, i) => (inOwn[i] ? mixed[i] : v));
    },
  });
}
