/**
 * The run a coordinator hosts: what the admin posts, validated field by field, and the derived sizes
 * (adapter length N in the global layout at the largest expanded rank, and the parameter budget of
 * the plain rank-r adapter that every PerFIT mask must fit in).
 */
import { invalid } from "./errors.ts";
import { parseConfig } from "../runtime/model/config.ts";
import { adapterLayout, type TargetModule } from "../runtime/model/lora.ts";
import { budgetOf } from "../runtime/perfit/expansion.ts";
import { DEPLOYED_METHODS, type DeployedMethod, strategyFor } from "../runtime/federation/strategies.ts";
import { parseTrainSettings } from "../runtime/client/train_settings.ts";

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
  seed: number;
  /** Training hyper-parameters handed to clients with each task (runtime/client/train_settings.ts). */
  train: Record<string, unknown>;
  /** The model config.json the sizes were computed from (dashboards rebuild the layout from it). */
  model?: Record<string, unknown>;
}

/** Hard caps that keep one run's state (and a misconfigured request) bounded. */
export const LIMITS = {
  maxAdapterSize: 64 * 1024 * 1024,
  maxRounds: 100_000,
  maxClients: 1_000_000,
} as const;

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
  let tiers: Record<string, number> = { base: 1 };
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
  if (!strategy.expands && maxE !== 1) {
    throw invalid(
      "invalid_config",
      `${method} trains the plain rank-r adapter: every expansion tier must be 1`,
    );
  }
  let adapterSize: number;
  let budget: number;
  if (o.model !== undefined) {
    try {
      const cfg = parseConfig(o.model);
      const layout = adapterLayout(cfg, { rank: rank * maxE, alpha, targets: targets as TargetModule[] });
      adapterSize = layout.size;
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
  if (!strategy.expands) budget = adapterSize;
  const maxNorm = num(o, "maxNorm", 0, 1e12, 1e4);
  const maxClients = int(o, "maxClients", 1, LIMITS.maxClients, 10_000);
  const seed = int(o, "seed", 0, 2 ** 31 - 1, 0);
  const train = o.train === undefined ? {} : obj(o.train, "train");
  if (JSON.stringify(train).length > 8192) throw invalid("invalid_config", "train must serialize to ≤ 8 KiB");
  try {
    parseTrainSettings(train); // every key a client reads, typed and ranged; unknown keys are refused
  } catch (e) {
    throw invalid("invalid_config", (e as Error).message);
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
    seed,
    train,
    ...(o.model !== undefined ? { model: o.model as Record<string, unknown> } : {}),
  };
}
