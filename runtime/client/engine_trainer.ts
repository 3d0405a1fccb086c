/**
 * A `FederatedClient` trainer backed by the ORT engine and the same PerFIT client logic the Deno
 * simulations use (`FlClient`: masked AdamW, expand-then-prune search, personalized evaluation).
 * Works in browsers and in Deno alike; the page only adds a progress callback.
 *
 * The coordinator works in the run's global layout (rank r * e_max); this client trains in its own
 * rank-(r*e) layout, so values and masks are extracted from / embedded into the global layout here.
 */
import { Engine, type LoadedModel } from "../model/engine.ts";
import { type AdapterLayout, adapterLayout, initAdapter, type TargetModule } from "../model/lora.ts";
import { embed, extract } from "../perfit/layout.ts";
import { FlClient } from "../federation/client.ts";
import { strategyFor } from "../federation/strategies.ts";
import { DEFAULT_SIM, type SimConfig, type TrainEngine } from "../federation/types.ts";
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
  model: LoadedModel;
  tokenizer: TextTokenizer;
  /** The client's local data, already split. */
  data: { id: string; train: Example[]; test: Example[] };
  backend?: "auto" | "node" | "wasm" | "webgpu";
  onProgress?: (p: TrainProgress) => void;
  /** Called after each round's local training with its metrics (mean loss, held-out perplexity). */
  onMetrics?: (round: number, metrics: Record<string, number>) => void;
  /** Called after every optimizer step with that step's loss, for live plots. */
  onLoss?: (round: number, step: number, loss: number) => void;
}

/** Training hyper-parameters read from the run's `train` object (unknown or bad fields use defaults). */
export interface LocalHyper {
  steps: number;
  lr: number;
  batchSize: number;
  maxLen: number;
  pruneStages: number;
  searchFraction: number;
  clipNorm: number;
}

/** Reads the run's opaque `train` settings with defaults sized for tiny models. */
export function localHyper(train: Record<string, unknown>): LocalHyper {
  const pick = (keys: string[], dflt: number, ok: (v: number) => boolean) => {
    for (const k of keys) {
      const v = train[k];
      if (typeof v === "number" && Number.isFinite(v) && ok(v)) return v;
    }
    return dflt;
  };
  const posInt = (v: number) => Number.isInteger(v) && v > 0;
  return {
    steps: pick(["localSteps", "steps"], DEFAULT_SIM.localSteps, posInt),
    lr: pick(["lr"], DEFAULT_SIM.lr, (v) => v > 0),
    batchSize: pick(["batchSize"], 4, posInt),
    maxLen: pick(["maxLen"], 128, posInt),
    pruneStages: pick(["pruneStages"], DEFAULT_SIM.pruneStages, posInt),
    searchFraction: pick(["searchFraction"], DEFAULT_SIM.searchFraction, (v) => v > 0 && v <= 1),
    clipNorm: pick(["clipNorm"], DEFAULT_SIM.clipNorm, (v) => v >= 0),
  };
}

/** The run's global layout: its size is linear in the rank, so the global rank is N / size(rank 1). */
export function globalLayoutOf(task: TaskInfo, model: LoadedModel): AdapterLayout {
  const targets = task.lora.targets as TargetModule[];
  const unit = adapterLayout(model.config, { rank: 1, alpha: task.lora.alpha, targets });
  const rank = task.adapterSize / unit.size;
  if (!Number.isInteger(rank) || rank < task.rank) {
    throw new Error(
      `run adapter size ${task.adapterSize} does not fit this model with targets ${targets.join(",")}`,
    );
  }
  return adapterLayout(model.config, { rank, alpha: task.lora.alpha, targets });
}

/** Builds the trainer; engines are created per client rank on first use. */
export function engineTrainer(opts: EngineTrainerOptions): Trainer & {
  backend(): string;
  initAdapter(task: TaskInfo): Float32Array;
  personalized(): { layout: AdapterLayout; adapter: Float32Array; mask: Uint8Array; scale: number } | null;
} {
  let lastTask: TaskInfo | null = null;
  let fl: FlClient | null = null;
  let engine: Engine | null = null;
  let current = { round: 0, step: 0 };
  // Reports every step's loss as it happens (FlClient only returns the round's mean).
  const withLoss = (e: Engine): TrainEngine => ({
    layout: e.layout,
    trainStep: async (b, a, m) => {
      const r = await e.trainStep(b, a, m);
      opts.onLoss?.(current.round, ++current.step, r.loss);
      return r;
    },
    evalNll: (b, a, m) => e.evalNll(b, a, m),
  });
  let searched = false;
  const layouts = (task: TaskInfo) => {
    const global = globalLayoutOf(task, opts.model);
    const client = adapterLayout(opts.model.config, {
      rank: task.rank,
      alpha: task.lora.alpha,
      targets: task.lora.targets as TargetModule[],
    });
    return { global, client };
  };
  const trainer = async (
    task: TaskInfo,
    adapter: Float32Array,
    mask: Uint8Array | null,
  ): Promise<TrainerOutput> => {
    const h = localHyper(task.train);
    lastTask = task;
    const { global, client } = layouts(task);
    if (!engine || engine.layout.rank !== task.rank) {
      opts.onProgress?.({ round: task.round, step: 0, steps: h.steps, phase: "engine" });
      engine = await Engine.create(opts.model, {
        rank: task.rank,
        alpha: task.lora.alpha,
        targets: task.lora.targets as TargetModule[],
      }, {
        backend: opts.backend ?? "auto",
        scale: task.lora.alpha / task.lora.rank,
      });
      fl = null;
    }
    const own = extract(global, adapter, client);
    current = { round: task.round, step: 0 };
    if (!fl) {
      fl = new FlClient(
        { ...opts.data, categories: {} },
        task.tier,
        task.expansion,
        withLoss(engine),
        task.lora.rank,
        own,
        {
          tokenizer: opts.tokenizer,
          batchSize: h.batchSize,
          maxLen: h.maxLen,
        },
        task.seed,
      );
      if (mask) {
        fl.setMask(extract(global, mask, client));
        searched = true; // resumed after a crash: the saved mask is the searched architecture
      }
    } else {
      fl.adapter = own;
    }
    const cfg: SimConfig = {
      ...DEFAULT_SIM,
      method: task.method,
      rank: task.lora.rank,
      alpha: task.lora.alpha,
      targets: task.lora.targets as TargetModule[],
      localSteps: h.steps,
      lr: h.lr,
      clipNorm: h.clipNorm,
      pruneStages: h.pruneStages,
      searchFraction: h.searchFraction,
      seed: task.seed,
    };
    const plan = strategyFor(task.method).configure(task.round, !searched, 0);
    let lastLossStep = 0;
    const res = await fl.fit(
      { round: task.round, steps: h.steps, ...plan },
      cfg,
      null,
      (_id, step, steps) => {
        lastLossStep = step;
        opts.onProgress?.({ round: task.round, step, steps, phase: "train" });
      },
    );
    searched ||= plan.search;
    opts.onProgress?.({ round: task.round, step: lastLossStep, steps: lastLossStep, phase: "eval" });
    const ev = await fl.evaluate();
    const metrics: Record<string, number> = { loss: res.meanLoss };
    if (ev.tokens > 0) metrics.ppl = Math.exp(ev.nllSum / ev.tokens);
    opts.onMetrics?.(task.round, metrics);
    return {
      values: embed(client, fl.adapter, global),
      mask: embed(client, fl.mask, global),
      support: embed(client, new Uint8Array(client.size).fill(1), global),
      samples: Math.max(1, fl.samples),
      metrics,
    };
  };
  return Object.assign(trainer, {
    backend: () => engine?.backend ?? "none",
    /** The personalized adapter in the client's own layout, for export (null before training). */
    personalized: ():
      | { layout: AdapterLayout; adapter: Float32Array; mask: Uint8Array; scale: number }
      | null =>
      fl && lastTask
        ? {
          layout: fl.layout,
          adapter: fl.adapter,
          mask: fl.mask,
          scale: lastTask.lora.alpha / lastTask.lora.rank,
        }
        : null,
    /** The client's fresh adapter (A seeded per run, B = 0) in the global layout. */
    initAdapter(task: TaskInfo): Float32Array {
      const { global, client } = layouts(task);
      return embed(client, initAdapter(client, task.seed), global);
    },
  });
}
