/**
 * The `train` object of a run: the hyper-parameters every client reads from its task. ONE descriptor
 * table (type, range, default, doc) that the coordinator validates a create-run body with, that clients
 * read their settings through, and that the docs are printed from (`trainSettingsDoc()`).
 *
 * The defaults are the client's (runtime/client/engine_trainer.ts `localHyper`, and DEFAULT_SIM for the
 * PerFIT search keys it hands on), so a run that sets nothing trains as before.
 *
 * @module
 */
import { DEFAULT_SIM } from "../federation/types.ts";
import { RANK_PRUNING_DEFAULTS } from "./hetlora_prune.ts";

/** The validated, complete training settings a client uses. */
export interface TrainSettings {
  localSteps: number;
  lr: number;
  batchSize: number;
  maxLen: number;
  pruneStages: number;
  searchFraction: number;
  clipNorm: number;
  weightDecay: number;
  researchEvery: number;
  schedule: "cubic" | "linear" | "one-shot";
  allocation: "global" | "per-module";
  importanceMode: "ema" | "sum";
  importanceBeta: number;
  proximalMu: number;
  rankPruning: "off" | "on";
  rankDecay: number;
  rankTailWeight: number;
  localWeight: number;
  localTrainWeight: number;
  combine: "fixed" | "instance";
  instanceMaxWeight: number;
  instanceRefs: number;
  validationShare: number;
  mixPart: "B" | "all";
  finetuneSteps: number;
  finetuneLrScale: number;
  optimizerState: "round" | "kept";
}

/** One key of the table. */
export type TrainSettingSpec =
  & { doc: string }
  & (
    | { type: "int"; min: number; max: number; default: number }
    | {
      type: "number";
      min: number;
      max: number;
      /** The bounds themselves are excluded. */
      minExclusive?: boolean;
      maxExclusive?: boolean;
      default: number;
    }
    | { type: "enum"; choices: readonly string[]; default: string }
  );

/** The table: every `train` key a client reads. */
export const TRAIN_SETTINGS: { readonly [K in keyof TrainSettings]: TrainSettingSpec } = {
  localSteps: {
    type: "int",
    min: 1,
    max: 100_000,
    default: DEFAULT_SIM.localSteps,
    doc: "optimizer steps per client per round (alias: `steps`)",
  },
  lr: {
    type: "number",
    min: 0,
    minExclusive: true,
    max: 10,
    default: DEFAULT_SIM.lr,
    doc: "AdamW learning rate",
  },
  batchSize: { type: "int", min: 1, max: 4096, default: 4, doc: "examples per optimizer step" },
  maxLen: { type: "int", min: 2, max: 65_536, default: 128, doc: "tokens per example, longer ones are cut" },
  pruneStages: {
    type: "int",
    min: 1,
    max: 1000,
    default: DEFAULT_SIM.pruneStages,
    doc: "PerFIT: stages of the expand-then-prune search",
  },
  searchFraction: {
    type: "number",
    min: 0,
    minExclusive: true,
    max: 1,
    default: DEFAULT_SIM.searchFraction,
    doc: "PerFIT: share of a search round's steps spent pruning",
  },
  clipNorm: {
    type: "number",
    min: 0,
    max: 1e6,
    default: DEFAULT_SIM.clipNorm,
    doc: "gradient-norm clip; 0 = no clipping",
  },
  weightDecay: {
    type: "number",
    min: 0,
    max: 1,
    default: DEFAULT_SIM.weightDecay,
    doc: "AdamW weight decay",
  },
  researchEvery: {
    type: "int",
    min: 0,
    max: 100_000,
    default: DEFAULT_SIM.researchEvery,
    doc: "PerFIT: search again every K rounds; 0 = only the first time a client is sampled",
  },
  schedule: {
    type: "enum",
    choices: ["cubic", "linear", "one-shot"],
    default: DEFAULT_SIM.schedule,
    doc: "PerFIT: how the kept share falls over the pruning stages",
  },
  allocation: {
    type: "enum",
    choices: ["global", "per-module"],
    default: DEFAULT_SIM.allocation,
    doc: "PerFIT: the budget is ranked over the whole adapter, or split per module",
  },
  importanceMode: {
    type: "enum",
    choices: ["ema", "sum"],
    default: DEFAULT_SIM.importance.mode ?? "ema",
    doc: "PerFIT: how per-step importance accumulates over the search (EMA, or a plain sum)",
  },
  importanceBeta: {
    type: "number",
    min: 0,
    max: 1,
    maxExclusive: true,
    default: DEFAULT_SIM.importance.beta ?? 0.85,
    doc: "PerFIT: EMA factor of the Taylor importance scores (θ·∇θ magnitudes)",
  },
  proximalMu: {
    type: "number",
    min: 0,
    max: 1e3,
    default: 0,
    doc: "FedProx: μ of the proximal term μ/2·‖θ − θ_round‖² on the shared positions; 0 = off",
  },
  // HetLoRA's optional rank self-pruning (runtime/client/hetlora_prune.ts); γ and λ default to the
  // public re-implementations' (the authors published no code).
  rankPruning: {
    type: "enum",
    choices: ["off", "on"],
    default: "off",
    doc: "HetLoRA: a client shrinks its rank when its tail norm falls in a round (rank self-pruning)",
  },
  rankDecay: {
    type: "number",
    min: 0,
    minExclusive: true,
    max: 1,
    maxExclusive: true,
    default: RANK_PRUNING_DEFAULTS.decay,
    doc: "HetLoRA self-pruning: γ; a prune keeps ⌊γ·rank⌋ components (≥ 1), the others are the tail",
  },
  rankTailWeight: {
    type: "number",
    min: 0,
    max: 1e3,
    default: RANK_PRUNING_DEFAULTS.tailWeight,
    doc: "HetLoRA self-pruning: λ of the tail penalty λ·Σ‖A_tail‖·‖B_tail‖ in the local loss",
  },
  localWeight: {
    type: "number",
    min: 0,
    max: 1,
    default: DEFAULT_SIM.dpa.localWeight,
    doc: "FedDPA: the local adapter's weight at evaluation and export; the global adapter's is 1 − it",
  },
  localTrainWeight: {
    type: "number",
    min: 0,
    minExclusive: true,
    max: 1,
    default: DEFAULT_SIM.dpa.localTrainWeight,
    doc: "FedDPA: the local adapter's weight while it trains, the frozen global adapter's 1 − it",
  },
  combine: {
    type: "enum",
    choices: ["fixed", "instance"],
    default: DEFAULT_SIM.dpa.combine,
    doc: "FedDPA: `localWeight` for every test instance, or a weight per instance from its similarity",
  },
  instanceMaxWeight: {
    type: "number",
    min: 0,
    max: 1,
    default: DEFAULT_SIM.dpa.instanceMaxWeight,
    doc: "FedDPA instance-wise: the global adapter's weight is this × the mean cosine similarity",
  },
  instanceRefs: {
    type: "int",
    min: 1,
    max: 1000,
    default: DEFAULT_SIM.dpa.instanceRefs,
    doc: "FedDPA instance-wise: training instances each test instance is compared with",
  },
  validationShare: {
    type: "number",
    min: 0,
    max: 0.5,
    minExclusive: true,
    default: 0.1,
    doc:
      "perfit-mix, flora-mix: share of a client's training examples held out (never trained on) to pick its mix weight",
  },
  mixPart: {
    type: "enum",
    choices: ["B", "all"],
    default: "B",
    doc: "perfit-mix: the mask positions mixed between own and average, `B` only or `all` (A and B)",
  },
  finetuneSteps: {
    type: "int",
    min: 0,
    max: 100_000,
    default: 0,
    doc:
      "steps each client trains its final personalized model on its own data once the run is done, kept private (local fine-tuning); 0 = off",
  },
  finetuneLrScale: {
    type: "number",
    min: 0,
    max: 1,
    minExclusive: true,
    default: 1,
    doc: "the fine-tuning steps' learning rate, as a share of `lr` (needs finetuneSteps ≥ 1)",
  },
  optimizerState: {
    type: "enum",
    choices: ["round", "kept"],
    default: "round",
    doc:
      "a client's AdamW moments: fresh every round (`round`), or `kept` across its rounds and into fine-tuning (private, never uploaded; saved with the adapter, so a restarted client resumes them)",
  },
};

/** Older names still accepted for a key (a run config may carry them). */
export const TRAIN_ALIASES: Readonly<Record<string, keyof TrainSettings>> = { steps: "localSteps" };

const KEYS = Object.keys(TRAIN_SETTINGS) as (keyof TrainSettings)[];

/** The defaults: what a run with an empty `train` object trains with. */
export function defaultTrainSettings(): TrainSettings {
  return Object.fromEntries(KEYS.map((k) => [k, TRAIN_SETTINGS[k].default])) as unknown as TrainSettings;
}

/** "an integer in [1, 100000]", "a number in (0, 1]", "one of cubic, linear, one-shot". */
function expected(s: TrainSettingSpec): string {
  if (s.type === "enum") return `one of ${s.choices.map((c) => JSON.stringify(c)).join(", ")}`;
  if (s.type === "int") return `an integer in [${s.min}, ${s.max}]`;
  return `a number in ${s.minExclusive ? "(" : "["}${s.min}, ${s.max}${s.maxExclusive ? ")" : "]"}`;
}

function valid(s: TrainSettingSpec, v: unknown): boolean {
  if (s.type === "enum") return typeof v === "string" && s.choices.includes(v);
  if (typeof v !== "number" || !Number.isFinite(v)) return false;
  if (s.type === "int" && !Number.isInteger(v)) return false;
  if (s.type === "int") return v >= s.min && v <= s.max;
  return (s.minExclusive ? v > s.min : v >= s.min) && (s.maxExclusive ? v < s.max : v <= s.max);
}

/** Why `v` is not a value of the setting `key` ("must be an integer in [0, 100000]"); undefined if it is. */
export function settingProblem(key: keyof TrainSettings, v: unknown): string | undefined {
  const s = TRAIN_SETTINGS[key];
  return valid(s, v) ? undefined : `must be ${expected(s)}`;
}

/**
 * Validates a run's `train` object and fills in the defaults. Throws `RangeError` with a message naming
 * the key and what it takes, for an unknown key, a bad value, or a key given twice (name and alias).
 */
export function parseTrainSettings(raw: unknown): TrainSettings {
  if (raw === undefined || raw === null) return defaultTrainSettings();
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new RangeError(`train must be an object, got ${Array.isArray(raw) ? "an array" : typeof raw}`);
  }
  const out = defaultTrainSettings() as unknown as Record<string, unknown>;
  const seen = new Map<string, string>();
  for (const [given, v] of Object.entries(raw as Record<string, unknown>)) {
    // Own keys only: a key like "constructor" must not find Object.prototype's.
    const key = Object.hasOwn(TRAIN_SETTINGS, given)
      ? given
      : Object.hasOwn(TRAIN_ALIASES, given)
      ? TRAIN_ALIASES[given]
      : undefined;
    if (!key) {
      const known = [...KEYS, ...Object.keys(TRAIN_ALIASES)];
      const near = known.find((k) => k.toLowerCase() === given.toLowerCase().replace(/[-_]/g, ""));
      throw new RangeError(
        `train.${given} is not a training setting${near ? ` (did you mean ${near}?)` : ""}; known: ${
          KEYS.join(", ")
        }`,
      );
    }
    if (seen.has(key)) throw new RangeError(`train.${given} and train.${seen.get(key)} set the same setting`);
    seen.set(key, given);
    const s = TRAIN_SETTINGS[key as keyof TrainSettings];
    if (!valid(s, v)) {
      throw new RangeError(`train.${given} must be ${expected(s)}, got ${JSON.stringify(v) ?? String(v)}`);
    }
    out[key] = v;
  }
  return out as unknown as TrainSettings;
}

/** The table as markdown (key, type, range, default, meaning), for the README and `--help` texts. */
export function trainSettingsDoc(): string {
  const lines = ["| key | type | range | default | meaning |", "|---|---|---|---|---|"];
  for (const k of KEYS) {
    const s = TRAIN_SETTINGS[k];
    const type = s.type === "enum" ? "string" : s.type === "int" ? "integer" : "number";
    const range = s.type === "enum"
      ? s.choices.map((c) => `\`${c}\``).join(", ")
      : expected(s).replace(/^an? (integer|number) in /, "");
    lines.push(`| \`${k}\` | ${type} | ${range} | \`${JSON.stringify(s.default)}\` | ${s.doc} |`);
  }
  return lines.join("\n");
}
