/** Types of the in-process federation (Flower vocabulary: strategy, configure/aggregate fit). */
import type { Batch } from "../data/types.ts";
import type { AdapterLayout } from "../perfit/layout.ts";
import type { Allocation, PruneSchedule } from "../perfit/prune.ts";
import type { ImportanceOptions } from "../perfit/importance.ts";
import type { TierTable } from "../perfit/expansion.ts";
import type { TargetModule } from "../model/lora.ts";
import type { LoadedModel } from "../model/load.ts";
import type { Method } from "./strategies.ts";

/** The part of the model engine a client needs (structurally the `Engine` of runtime/model/engine.ts). */
export interface TrainEngine {
  readonly layout: AdapterLayout;
  trainStep(
    batch: Batch,
    adapter: Float32Array,
    mask: Float32Array | Uint8Array,
  ): Promise<{ loss: number; grads: Float32Array; importance: Float32Array }>;
  evalNll(
    batch: Batch,
    adapter: Float32Array,
    mask?: Float32Array | Uint8Array,
  ): Promise<{ nllSum: number; tokens: number }>;
  /** The base model it runs over (engines that can change base: FLoRA merges into it). */
  readonly model?: LoadedModel;
  /** The same graphs over other base weights of the same shapes (`Engine.rebased`). */
  rebased?(model: LoadedModel): Promise<TrainEngine>;
  /**
   * Final-norm hidden state of each row at the position `pick` marks (one per row): [batch × hidden].
   * Only FedDPA's instance-wise weighting needs it; `Engine` has it.
   */
  hiddenAt?(
    batch: Batch,
    pick: Float32Array,
    adapter: Float32Array,
    mask?: Float32Array | Uint8Array,
  ): Promise<Float32Array>;
}

/** Creates (or returns a cached) engine for LoRA rank `rank`, with the scale alpha / base rank. */
export type EngineFactory = (rank: number) => Promise<TrainEngine>;

/** Simulation hyper-parameters. */
export interface SimConfig {
  method: Method;
  rounds: number;
  /** Optimizer steps per client per round (the same for every method). */
  localSteps: number;
  /** LoRA base rank r and alpha; targets are fixed by the engine factory. */
  rank: number;
  alpha: number;
  targets: TargetModule[];
  lr: number;
  weightDecay: number;
  clipNorm: number;
  /** Fraction of clients sampled per round (Flower's fraction_fit). */
  fractionFit: number;
  seed: number;
  /** PerFIT search: pruning stages T, schedule, allocation, importance accumulation. */
  pruneStages: number;
  schedule: PruneSchedule;
  allocation: Allocation;
  importance: ImportanceOptions;
  /** Fraction of a search round's steps over which pruning happens (the rest trains the sparse mask). */
  searchFraction: number;
  /** Re-run the search every k rounds (0 = search once, in round 1). */
  researchEvery: number;
  /** FedProx's μ on the shared positions (0 = plain local training). */
  proximalMu: number;
  /** FedDPA's combination of the global and the local adapter (the `train` keys of the same names). */
  dpa: DualSettings;
  /**
   * HetLoRA's rank self-pruning, γ and λ (the `train` keys `rankDecay`, `rankTailWeight` with
   * `rankPruning: "on"`); absent: off, and the run's settings carry none of these keys.
   */
  rankPruning?: { decay: number; tailWeight: number };
  /** perfit-mix's mixed positions (the `train` key `mixPart`); absent: B only, and the settings carry no key. */
  mixPart?: "B" | "all";
  /**
   * The mixing methods' held-out share of each client's training data (the `train` key `validationShare`);
   * absent: the setting's default, and the settings carry no key.
   */
  validationShare?: number;
  /**
   * Local fine-tuning once the run is done (the `train` key `finetuneSteps`): each client trains its
   * final personalized model this many steps on its own data and keeps it; absent or 0: off, and the
   * settings carry no key.
   */
  finetuneSteps?: number;
  /** Their learning rate as a share of `lr` (the `train` key `finetuneLrScale`); absent: 1, no key. */
  finetuneLrScale?: number;
  /**
   * A client's AdamW moments and step count (the `train` key `optimizerState`): `round` starts them
   * afresh every round, `kept` carries them over from the client's last round; absent: `round`, no key.
   */
  optimizerState?: "round" | "kept";
  /**
   * perfit-own: how many times its weight a client's own upload counts in its slice (the run's
   * `ownWeight`); absent: the coordinator's default, and the run is created without the key.
   */
  ownWeight?: number;
  /** Tier table and the tier of each client (cycled when shorter than the client list). */
  tiers: TierTable;
  clientTiers: string[];
}

/** FedDPA's knobs (runtime/client/feddpa.ts): the authors' defaults. */
export interface DualSettings {
  /** The local adapter's weight at evaluation and export; the global adapter's is 1 − it. */
  localWeight: number;
  /** The local adapter's weight while it trains, the frozen global adapter's 1 − it. */
  localTrainWeight: number;
  /** `fixed`: `localWeight` for every instance; `instance`: weighted per test instance by similarity. */
  combine: "fixed" | "instance";
  /** Instance-wise: the global adapter's weight is this times the mean cosine similarity. */
  instanceMaxWeight: number;
  /** Instance-wise: training instances each test instance is compared with. */
  instanceRefs: number;
}

/** Defaults sized for the bundled tiny model on 2 CPU cores. */
export const DEFAULT_SIM: SimConfig = {
  method: "perfit",
  rounds: 4,
  localSteps: 20,
  rank: 4,
  alpha: 8,
  targets: ["q", "v"],
  lr: 5e-3,
  weightDecay: 0,
  clipNorm: 1,
  fractionFit: 1,
  seed: 0,
  pruneStages: 4,
  schedule: "cubic",
  allocation: "global",
  importance: { mode: "ema", beta: 0.85 },
  searchFraction: 0.5,
  researchEvery: 0,
  proximalMu: 0,
  dpa: { localWeight: 0.5, localTrainWeight: 0.5, combine: "fixed", instanceMaxWeight: 0.5, instanceRefs: 5 },
  tiers: { low: 1, mid: 2, high: 4 },
  clientTiers: ["high"],
};

/** Instructions for one client's local round (Flower FitIns). */
export interface FitIns {
  round: number;
  steps: number;
  /** Run the expand-then-prune search this round. */
  search: boolean;
  /** Use a random mask of the budget instead of importance (ablation). */
  randomMask: boolean;
  /** Matrices kept at their initialisation (FFA-LoRA freezes A). */
  frozen?: "A" | "B";
  /**
   * FedProx: adds μ·(θ − anchor) to the gradient at `positions` (the shared ones), pulling the local
   * round toward the adapter it started from.
   */
  proximal?: { mu: number; anchor: Float32Array; positions: Uint8Array };
  /**
   * Per-position factors the forward pass applies to the adapter (FedDPA weights its two adapters);
   * gradients are taken with respect to the unscaled values.
   */
  forwardScale?: Float32Array;
  /** The only positions the optimizer may move (FedDPA trains one adapter at a time); the rest stay. */
  trainable?: Uint8Array;
  /**
   * HetLoRA's self-pruning: adds the gradient of λ·Σ ‖A_tail‖_F·‖B_tail‖_F over the tail of the
   * client's current `rank` (runtime/client/hetlora_prune.ts).
   */
  tailPenalty?: { rank: number; decay: number; tailWeight: number };
}

/** A client's answer (Flower FitRes). */
export interface FitRes {
  clientId: string;
  numExamples: number;
  meanLoss: number;
}

/** Per-client, per-round record. */
export interface ClientRound {
  clientId: string;
  tier: string;
  expansion: number;
  trained: boolean;
  meanLoss: number | null;
  testNll: number;
  testTokens: number;
  perplexity: number;
  uploadBytes: number;
  maskMode: string | null;
  downloadBytes: number;
  /** Wall seconds of the client's round (task, slice, local training, upload); 0 when not sampled. */
  computeSeconds?: number;
  /** perfit-mix: the weight of the client's own B in the model evaluated (its validation split's pick). */
  mix?: number;
}

/** One round of a simulation. */
export interface SimRound {
  round: number;
  clients: ClientRound[];
  meanPerplexity: number;
  seconds: number;
}

/** The full result of a simulation run. */
export interface SimResult {
  method: Method;
  config: SimConfig;
  backend: string;
  clients: {
    id: string;
    tier: string;
    expansion: number;
    train: number;
    test: number;
    trainableParams: number;
    searchSpace: number;
  }[];
  budget: number;
  /** Final masks: share of kept positions in A matrices, Jaccard overlap with each client (in client order) and its mean over the others (global layout). */
  maskStats: { id: string; fractionInA: number; jaccard: number[]; meanJaccard: number }[];
  rounds: SimRound[];
  wallSeconds: number;
  /** The slice body revision its download bytes were measured on (wire.ts `SLICE_REVISION`); absent: 1. */
  sliceRevision?: number;
}
