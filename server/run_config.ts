/**
 * The run a coordinator hosts: what the admin posts, validated field by field, and the derived sizes
 * (adapter length N in the global layout at the largest expanded rank, and the parameter budget of
 * the plain rank-r adapter that every PerFIT mask must fit in).
 */
import { invalid } from "./errors.ts";
import { parseConfig } from "../runtime/model/config.ts";
import { type AdapterLayout, adapterLayout, type TargetModule } from "../runtime/model/lora.ts";
import { budgetOf } from "../runtime/perfit/expansion.ts";
import {
  DEPLOYED_METHODS,
  type DeployedMethod,
  OWN_WEIGHT_DEFAULT,
  OWN_WEIGHTED,
  ownWeightProblem,
  strategyFor,
} from "../runtime/federation/strategies.ts";
import { type Aggregation, AGGREGATIONS, type Weighting, WEIGHTINGS, WIRE_MAX_SAMPLES } from "./robust.ts";
import { parseTrainSettings, type TrainSettings } from "../runtime/client/train_settings.ts";

const TARGETS: TargetModule[] = ["q", "k", "v", "o", "gate", "up", "down"];

/** A validated run configuration, as stored. */
export interface RunConfig {
  baseModel: string;
  lora: { rank: number; alpha: number; targets: TargetModule[] };
  method: DeployedMethod;
  rounds: number;
  clientsPerRound: number;
  quorum: number;
  roundDeadlineMs: number;
  /** Tier name -> expansion factor e (client rank r*e). FedIT/local: `{base: 1}`. */
  expansionTiers: Record<string, number>;
  /** N: length of the flat adapter in the global layout (rank r * max e). */
  adapterSize: number;
  /** Max ones in a mask (the rank-r parameter count); N for FedIT. */
  budget: number;
  /** Upper bound on the L2 norm of uploaded values. */
  maxNorm: number;
  maxClients: number;
  // The next four are always set by parseRunConfig; runs stored before they existed lack them, so
  // they are read through `maxSamplesOf`, `weightOf`, `ruleFor` (server/robust.ts) and `?? "open"`.
  /** Largest self-reported `samples` an upload may carry (422 `too_many_samples` above). */
  maxSamples?: number;
  /** What an upload weighs in the parameter-wise aggregation: its samples, or 1 (server/robust.ts). */
  weighting?: Weighting;
  /** How the holders of a position are combined (server/robust.ts). */
  aggregation?: Aggregation;
  /** trimmed-mean: the fraction of weight dropped at each end of a position's sorted holders. */
  trim?: number;
  /** clipped-mean: each upload's values are scaled to an L2 norm of at most this before the fold. */
  clipNorm?: number;
  /**
   * Own-weighted methods (perfit-own): how many times its weight a client's own upload counts in its
   * slice (server/own_weighted.ts); set for those runs only.
   */
  ownWeight?: number;
  /**
   * Who may join: anyone who knows the run id ("open"), a client presenting the run's join key
   * ("key"; only its salted hash is stored, apart from the run record), or one holding a
   * single-use invite the admin issued ("invite"). See server/enrollment.ts.
   */
  enrollment?: Enrollment;
  seed: number;
  /** Training hyper-parameters handed to clients with each task (runtime/client/train_settings.ts). */
  train: Record<string, unknown>;
  /** The model config.json the sizes were computed from (dashboards rebuild the layout from it). */
  model?: Record<string, unknown>;
}

/** Who may join a run. */
export const ENROLLMENTS = ["open", "key", "invite"] as const;
export type Enrollment = typeof ENROLLMENTS[number];

/** Hard caps that keep one run's state (and a misconfigured request) bounded. */
export const LIMITS = {
  maxAdapterSize: 64 * 1024 * 1024,
  maxRounds: 100_000,
  maxClients: 1_000_000,
  /**
   * Values a round may hold for an aggregation that does not stream (trimmed-mean, median):
   * clientsPerRound × adapterSize, i.e. 256 MiB of f32 in memory and in KV for the open round.
   */
  maxHeldValues: 64 * 1024 * 1024,
} as const;

/** Join keys: long enough that guessing one through the rate limit is hopeless. */
export const JOIN_KEY = { min: 16, max: 256 } as const;

function int(o: Record<string, unknown>, k: string, lo: number, hi: number, dflt?: number): number {
  const v = o[k] ?? dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < lo || v > hi) {
    throw invalid("invalid_config", `${k} must be an integer in [${lo}, ${hi}], got ${JSON.stringify(o[k])}`);
  }
  return v;
}

function num(o: Record<string, unknown>, k: string, lo: number, hi: number, dflt?: number): number {
  const v = o[k] ?? dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= lo || v > hi) {
    throw invalid("invalid_config", `${k} must be a number in (${lo}, ${hi}], got ${JSON.stringify(o[k])}`);
  }
  return v;
}

function oneOf<T extends string>(o: Record<string, unknown>, k: string, allowed: readonly T[], dflt: T): T {
  const v = o[k] ?? dflt;
  if (typeof v !== "string" || !(allowed as readonly string[]).includes(v)) {
    throw invalid("invalid_config", `${k} must be one of ${allowed.join(", ")}, got ${JSON.stringify(o[k])}`);
  }
  return v as T;
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw invalid("invalid_config", `${what} must be an object`);
  }
  return v as Record<string, unknown>;
}

/**
 * A tier name a client may ask for: short, plain, and not one that every object inherits
 * (`__proto__`, `constructor`, `toString`, `hasOwnProperty`, …). A client's `tier` indexes this
 * table, so such a name would be found on every table, or set its prototype when assigned.
 */
export function validTierName(n: string): boolean {
  return /^[A-Za-z0-9_-]{1,32}$/.test(n) && n !== "__proto__" && !(n in Object.prototype);
}

/**
 * Validates a create-run body. N comes from `adapterSize`, or is computed from a `model` config
 * (Hugging Face config.json) with the model area's layout; `budget` defaults to the rank-r size.
 */
export function parseRunConfig(raw: unknown): RunConfig {
  const o = obj(raw, "body");
  const baseModel = o.baseModel;
  if (typeof baseModel !== "string" || baseModel.length < 1 || baseModel.length > 200) {
    throw invalid("invalid_config", "baseModel must be a string of 1..200 characters");
  }
  const lo = obj(o.lora, "lora");
  const rank = int(lo, "rank", 1, 1024);
  const alpha = num(lo, "alpha", 0, 1e6);
  const targets = lo.targets;
  if (!Array.isArray(targets) || targets.length === 0 || !targets.every((t) => TARGETS.includes(t))) {
    throw invalid("invalid_config", `lora.targets must be a non-empty subset of ${TARGETS.join(",")}`);
  }
  const method = o.method as DeployedMethod;
  if (typeof method !== "string" || !DEPLOYED_METHODS.includes(method)) {
    throw invalid("invalid_config", `method must be one of ${DEPLOYED_METHODS.join(", ")}`);
  }
  const strategy = strategyFor(method);
  const rounds = int(o, "rounds", 1, LIMITS.maxRounds);
  const clientsPerRound = int(o, "clientsPerRound", 1, LIMITS.maxClients);
  const quorum = int(o, "quorum", 1, clientsPerRound, clientsPerRound);
  const roundDeadlineMs = int(o, "roundDeadlineMs", 1, 30 * 24 * 3600_000);
  let tiers: Record<string, number> = { base: strategy.dual ? 2 : 1 };
  if (o.expansionTiers !== undefined) {
    const t = obj(o.expansionTiers, "expansionTiers");
    const names = Object.keys(t);
    if (names.length < 1 || names.length > 16) {
      throw invalid("invalid_config", "expansionTiers needs 1..16 tiers");
    }
    for (const n of names) {
      if (!validTierName(n)) {
        throw invalid(
          "invalid_config",
          `bad tier name ${JSON.stringify(n)}: 1..32 of A-Z a-z 0-9 _ -, and not a name of Object.prototype`,
        );
      }
    }
    // Own data properties only (defineProperty semantics): no name can reach a setter such as
    // `__proto__`, and every name was checked above against what a plain object inherits.
    tiers = Object.fromEntries(names.map((n) => [n, int(t, n, 1, 64)]));
  }
  const maxE = Math.max(...Object.values(tiers));
  if (strategy.dual && Object.values(tiers).some((e) => e !== 2)) {
    throw invalid(
      "invalid_config",
      `${method} trains a global and a local rank-r adapter side by side: every expansion tier must be 2`,
    );
  }
  if (!strategy.expands && !strategy.dual && maxE !== 1) {
    throw invalid(
      "invalid_config",
      `${method} trains the plain rank-r adapter: every expansion tier must be 1`,
    );
  }
  let adapterSize: number;
  let budget: number;
  const slots = slotsOf(strategy, o);
  if (o.model !== undefined) {
    try {
      const cfg = parseConfig(o.model);
      const layout = adapterLayout(cfg, { rank: rank * maxE, alpha, targets: targets as TargetModule[] });
      adapterSize = layout.size * slots;
      budget = budgetOf(layout, rank);
    } catch (e) {
      throw invalid("invalid_config", `model: ${(e as Error).message}`);
    }
    if (adapterSize > LIMITS.maxAdapterSize) {
      throw invalid("invalid_config", `adapter of ${adapterSize} exceeds limit`);
    }
    if (JSON.stringify(o.model).length > 16384) {
      throw invalid("invalid_config", "model config must serialize to ≤ 16 KiB");
    }
  } else {
    adapterSize = int(o, "adapterSize", 1, LIMITS.maxAdapterSize);
    budget = Math.floor(adapterSize / maxE);
  }
  if (o.budget !== undefined) budget = int(o, "budget", 1, adapterSize);
  if (!strategy.prunes) budget = adapterSize / slots;
  if (strategy.aggregation.needsLayout && o.model === undefined) {
    throw invalid(
      "invalid_config",
      `${method} aggregates per projection: create the run with its model's config (model), not adapterSize alone`,
    );
  }
  const maxNorm = num(o, "maxNorm", 0, 1e12, 1e4);
  const maxClients = int(o, "maxClients", 1, LIMITS.maxClients, 10_000);
  const seed = int(o, "seed", 0, 2 ** 31 - 1, 0);
  const maxSamples = int(o, "maxSamples", 1, WIRE_MAX_SAMPLES, WIRE_MAX_SAMPLES);
  const weighting = oneOf(o, "weighting", WEIGHTINGS, "samples");
  const aggregation = oneOf(o, "aggregation", AGGREGATIONS, "mean");
  if (!strategy.aggregates && aggregation !== "mean") {
    throw invalid("invalid_config", `${method} runs aggregate nothing: aggregation must be mean`);
  }
  if (strategy.aggregation.name !== "holders" && aggregation !== "mean" && aggregation !== "clipped-mean") {
    throw invalid(
      "invalid_config",
      `${method} has its own aggregation: the run may clip updates (clipped-mean) but not replace its mean`,
    );
  }
  if (o.trim !== undefined && aggregation !== "trimmed-mean") {
    throw invalid("invalid_config", "trim is the parameter of aggregation trimmed-mean");
  }
  if (o.clipNorm !== undefined && aggregation !== "clipped-mean") {
    throw invalid("invalid_config", "clipNorm is the parameter of aggregation clipped-mean");
  }
  let trim: number | undefined;
  let clipNorm: number | undefined;
  if (aggregation === "trimmed-mean") {
    trim = o.trim as number;
    if (typeof trim !== "number" || !(trim > 0 && trim < 0.5)) {
      throw invalid("invalid_config", `trimmed-mean needs trim in (0, 0.5), got ${JSON.stringify(o.trim)}`);
    }
  }
  if (aggregation === "clipped-mean") clipNorm = num(o, "clipNorm", 0, maxNorm);
  if (
    (aggregation === "trimmed-mean" || aggregation === "median") &&
    clientsPerRound * adapterSize > LIMITS.maxHeldValues
  ) {
    throw invalid(
      "invalid_config",
      `${aggregation} holds the round's uploads until it closes: clientsPerRound × adapterSize ` +
        `(${clientsPerRound} × ${adapterSize}) must be at most ${LIMITS.maxHeldValues}`,
    );
  }
  let ownWeight: number | undefined;
  if (strategy.ownWeighted) {
    if (aggregation !== "mean" && aggregation !== "clipped-mean") {
      throw invalid(
        "invalid_config",
        `${method} reweighs the round's fold in each slice: aggregation must be mean or clipped-mean`,
      );
    }
    const v = o.ownWeight === undefined ? OWN_WEIGHT_DEFAULT : o.ownWeight;
    const bad = ownWeightProblem(v);
    if (bad) throw invalid("invalid_config", `ownWeight ${bad}, got ${JSON.stringify(o.ownWeight)}`);
    ownWeight = v as number;
  } else if (o.ownWeight !== undefined) {
    throw invalid(
      "invalid_config",
      `ownWeight is the setting of own-weighted methods (${OWN_WEIGHTED.join(", ")}), not ${method}`,
    );
  }
  const enrollment = oneOf(o, "enrollment", ENROLLMENTS, "open");
  parseJoinKey(o, enrollment);
  const train = o.train === undefined ? {} : obj(o.train, "train");
  if (JSON.stringify(train).length > 8192) throw invalid("invalid_config", "train must serialize to ≤ 8 KiB");
  let settings: TrainSettings;
  try {
    // Every key a client reads, typed and ranged; unknown keys are refused.
    settings = parseTrainSettings(train);
  } catch (e) {
    throw invalid("invalid_config", (e as Error).message);
  }
  if (settings.rankPruning === "on" && !strategy.selfPrunes) {
    throw invalid(
      "invalid_config",
      `train.rankPruning is HetLoRA's rank self-pruning; ${method} has no rank to prune`,
    );
  }
  if (settings.finetuneSteps > 0) {
    // Fine-tuning starts from the adapter the federation gave a client: FLoRA's model is its merged
    // base (no adapter), FedDPA keeps a local adapter already, local-only has no federation to start from.
    const why = strategy.stacks
      ? "FLoRA's model is its merged base, with no adapter to fine-tune"
      : strategy.dual
      ? "FedDPA keeps a local adapter of its own already"
      : strategy.shares === "none"
      ? "local-only trains alone throughout (raise localSteps instead)"
      : null;
    if (why) throw invalid("invalid_config", `train.finetuneSteps is not offered for ${method}: ${why}`);
  } else if (settings.finetuneLrScale !== 1) {
    throw invalid(
      "invalid_config",
      "train.finetuneLrScale sets the fine-tuning's rate: it needs train.finetuneSteps ≥ 1",
    );
  }
  if (settings.optimizerState === "kept" && strategy.stacks) {
    throw invalid(
      "invalid_config",
      `train.optimizerState "kept" is not offered for ${method}: it starts a fresh LoRA every round, ` +
        "so the last round's moments belong to other parameters",
    );
  }
  return {
    baseModel,
    lora: { rank, alpha, targets: targets as TargetModule[] },
    method,
    rounds,
    clientsPerRound,
    quorum,
    roundDeadlineMs,
    expansionTiers: tiers,
    adapterSize,
    budget,
    maxNorm,
    maxClients,
    maxSamples,
    weighting,
    aggregation,
    ...(trim !== undefined ? { trim } : {}),
    ...(clipNorm !== undefined ? { clipNorm } : {}),
    ...(ownWeight !== undefined ? { ownWeight } : {}),
    enrollment,
    seed,
    train,
    ...(o.model !== undefined ? { model: o.model as Record<string, unknown> } : {}),
  };
}

/**
 * The join key of a create-run body: required (a string of JOIN_KEY.min..max characters) when
 * `enrollment` is "key", refused otherwise. It is not part of the RunConfig: the coordinator stores
 * only a salted hash of it, apart from the run record that GET returns.
 */
export function parseJoinKey(raw: unknown, enrollment: Enrollment = "open"): string | null {
  const k = (raw as Record<string, unknown>)?.joinKey;
  if (enrollment !== "key") {
    if (k !== undefined) throw invalid("invalid_config", 'joinKey is only for enrollment "key"');
    return null;
  }
  if (typeof k !== "string" || k.length < JOIN_KEY.min || k.length > JOIN_KEY.max) {
    throw invalid(
      "invalid_config",
      `enrollment "key" needs a joinKey of ${JOIN_KEY.min}..${JOIN_KEY.max} characters`,
    );
  }
  return k;
}

/** Most clients of a stacking run (FLoRA): its layout holds one slot per client. */
export const MAX_STACK_SLOTS = 64;

/** Slots of a create-run body: `maxClients` for a stacking method (required, ≤ MAX_STACK_SLOTS), else 1. */
function slotsOf(strategy: { stacks?: boolean; name: string }, o: Record<string, unknown>): number {
  if (!strategy.stacks) return 1;
  const m = o.maxClients;
  if (typeof m !== "number" || !Number.isInteger(m) || m < 1 || m > MAX_STACK_SLOTS) {
    throw invalid(
      "invalid_config",
      `${strategy.name} stacks one slot per client: maxClients must be an integer in 1..${MAX_STACK_SLOTS}`,
    );
  }
  return m;
}

/** Where client number `seq` (join order) starts in a stacking run's layout, in rank components. */
export function slotOf(cfg: RunConfig, seq: number): number {
  return seq * cfg.lora.rank * Math.max(...Object.values(cfg.expansionTiers));
}

/** The run's `researchEvery` train setting (0: search only the first time). */
export function researchEveryOf(cfg: RunConfig): number {
  const every = cfg.train.researchEvery;
  return typeof every === "number" ? every : 0;
}

const layouts = new WeakMap<RunConfig, AdapterLayout | null>();

/**
 * The run's global layout (rank r·max e), from the model config it was created with; null for a run
 * created from `adapterSize` alone. Computed once per config object.
 */
export function runLayout(cfg: RunConfig): AdapterLayout | null {
  let l = layouts.get(cfg);
  if (l === undefined) {
    const maxE = Math.max(...Object.values(cfg.expansionTiers));
    const slots = strategyFor(cfg.method).stacks ? cfg.maxClients : 1;
    l = cfg.model === undefined
      ? null
      : adapterLayout(parseConfig(cfg.model), { ...cfg.lora, rank: cfg.lora.rank * maxE * slots });
    if (l && l.size !== cfg.adapterSize) {
      throw new Error(`run layout ${l.size} != adapterSize ${cfg.adapterSize}`);
    }
    layouts.set(cfg, l);
  }
  return l;
}
