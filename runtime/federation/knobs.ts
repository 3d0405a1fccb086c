/**
 * A method's own knobs: the part of a run's config that tuning chooses per method (on a validation
 * split, bench/tune.ts), as opposed to the settings every method shares (rounds, steps, data, model).
 */
import type { DualSettings, SimConfig } from "./types.ts";
import { type Method, METHODS, ownWeightProblem } from "./strategies.ts";
import { settingProblem } from "../client/train_settings.ts";

/** The knobs a tuning grid may set; everything else of a `SimConfig` stays the run's. */
export interface Knobs {
  lr?: number;
  pruneStages?: number;
  searchFraction?: number;
  researchEvery?: number;
  importanceBeta?: number;
  proximalMu?: number;
  dpaLocalWeight?: number;
  /** perfit-mix: mix only the mask's B between own and average, or all of it. */
  mixPart?: "B" | "all";
  /** Local fine-tuning steps once the run is done (0: off). */
  finetuneSteps?: number;
  /** Their learning rate, as a share of `lr`. */
  finetuneLrScale?: number;
  /** A client's AdamW moments: fresh every round, or kept across its rounds. */
  optimizerState?: "round" | "kept";
  /** The own-weighted methods (perfit-own, flora-own, perfit-stack): the weight of a client's own upload in its slice, in multiples of its weight. */
  ownWeight?: number;
  /** The mixing methods (perfit-mix, flora-mix): the share of a client's training data held out to pick its mix on. */
  validationShare?: number;
  /** Expansion factor of each tier (low, mid, high): PerFIT's tiers, the same table for every client. */
  tiers?: Record<string, number>;
}

type Check = (v: unknown) => string | undefined;
const num = (ok: (x: number) => boolean, want: string): Check => (v) =>
  typeof v === "number" && Number.isFinite(v) && ok(v) ? undefined : `must be ${want}`;

const CHECKS: Record<keyof Knobs, Check> = {
  lr: num((x) => x > 0 && x < 1, "a number in (0, 1)"),
  pruneStages: num((x) => Number.isInteger(x) && x >= 1 && x <= 64, "an integer in [1, 64]"),
  searchFraction: num((x) => x > 0 && x <= 1, "a number in (0, 1]"),
  researchEvery: num((x) => Number.isInteger(x) && x >= 0, "an integer ≥ 0"),
  importanceBeta: num((x) => x >= 0 && x < 1, "a number in [0, 1)"),
  proximalMu: num((x) => x >= 0, "a number ≥ 0"),
  dpaLocalWeight: num((x) => x >= 0 && x <= 1, "a number in [0, 1]"),
  // The train settings' own checks, so a knob and its setting cannot drift apart.
  mixPart: (v) => settingProblem("mixPart", v),
  finetuneSteps: (v) => settingProblem("finetuneSteps", v),
  finetuneLrScale: (v) => settingProblem("finetuneLrScale", v),
  optimizerState: (v) => settingProblem("optimizerState", v),
  ownWeight: ownWeightProblem,
  validationShare: (v) => settingProblem("validationShare", v),
  tiers: (v) => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return "must be an object of tier: factor";
    const entries = Object.entries(v);
    if (entries.length === 0) return "must name at least one tier";
    for (const [k, e] of entries) {
      if (!/^[a-z][a-z0-9-]{0,31}$/.test(k)) return `has a bad tier name ${JSON.stringify(k)}`;
      if (!(Number.isInteger(e) && (e as number) >= 1 && (e as number) <= 16)) {
        return `tier ${k} must be an integer factor in [1, 16]`;
      }
    }
    return undefined;
  },
};

/** The knob names, for messages and CLIs. */
export const KNOB_NAMES = Object.keys(CHECKS) as (keyof Knobs)[];

/** Checks a parsed JSON value as knobs; refuses unknown names and out-of-range values rather than dropping them. */
export function parseKnobs(v: unknown, where = "knobs"): Knobs {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new TypeError(`${where} must be an object`);
  }
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (!Object.hasOwn(CHECKS, k)) {
      throw new TypeError(`${where}: unknown knob ${JSON.stringify(k)} (known: ${KNOB_NAMES.join(", ")})`);
    }
    const bad = CHECKS[k as keyof Knobs](x);
    if (bad) throw new RangeError(`${where}.${k} ${bad}, got ${JSON.stringify(x)}`);
    out[k] = x;
  }
  return out as Knobs;
}

/**
 * A JSON object keyed by method, each value read by `entry` (`what` names the values in the refusal);
 * refuses unknown methods, `__proto__` among them.
 */
export function parseMethodTable<T>(
  v: unknown,
  where: string,
  what: string,
  entry: (x: unknown, where: string) => T,
): Partial<Record<Method, T>> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new TypeError(`${where} must be an object of method: ${what}`);
  }
  const out: Partial<Record<Method, T>> = {};
  for (const [m, x] of Object.entries(v)) {
    if (!(METHODS as string[]).includes(m)) {
      throw new TypeError(`${where}: unknown method ${JSON.stringify(m)} (known: ${METHODS.join(", ")})`);
    }
    out[m as Method] = entry(x, `${where}.${m}`);
  }
  return out;
}

/** A JSON object of knobs per method (what bench/tune.ts writes); refuses unknown methods. */
export function parseKnobsTable(v: unknown, where = "knobs"): Partial<Record<Method, Knobs>> {
  return parseMethodTable(v, where, "knobs", parseKnobs);
}

/** A file's text as JSON, the file named in the refusal. */
export function parseJsonText(text: string, path: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new SyntaxError(`${path} is not JSON: ${(e as Error).message}`);
  }
}

/** A knobs file's text (JSON of method: knobs), named in every refusal. */
export function parseKnobsFile(text: string, path: string): Partial<Record<Method, Knobs>> {
  return parseKnobsTable(parseJsonText(text, path), path);
}

/** A run's config with a method's knobs applied (tiers replace the table; the tiers assigned stay). */
export function withKnobs(cfg: SimConfig, k: Knobs): SimConfig {
  const tiers = k.tiers ?? cfg.tiers;
  const missing = cfg.clientTiers.filter((t) => !Object.hasOwn(tiers, t));
  if (missing.length) throw new RangeError(`knob tiers lack the clients' tiers ${missing.join(", ")}`);
  const dpa: DualSettings = k.dpaLocalWeight === undefined
    ? cfg.dpa
    : { ...cfg.dpa, localWeight: k.dpaLocalWeight, localTrainWeight: k.dpaLocalWeight };
  return {
    ...cfg,
    lr: k.lr ?? cfg.lr,
    pruneStages: k.pruneStages ?? cfg.pruneStages,
    searchFraction: k.searchFraction ?? cfg.searchFraction,
    researchEvery: k.researchEvery ?? cfg.researchEvery,
    importance: k.importanceBeta === undefined
      ? cfg.importance
      : { ...cfg.importance, beta: k.importanceBeta },
    proximalMu: k.proximalMu ?? cfg.proximalMu,
    dpa,
    ...(k.mixPart === undefined ? {} : { mixPart: k.mixPart }),
    ...(k.finetuneSteps === undefined ? {} : { finetuneSteps: k.finetuneSteps }),
    ...(k.finetuneLrScale === undefined ? {} : { finetuneLrScale: k.finetuneLrScale }),
    ...(k.optimizerState === undefined ? {} : { optimizerState: k.optimizerState }),
    ...(k.ownWeight === undefined ? {} : { ownWeight: k.ownWeight }),
    ...(k.validationShare === undefined ? {} : { validationShare: k.validationShare }),
    tiers,
  };
}

/** The same knobs in the canonical order of the knob names, whatever order they were written or merged in. */
function canonical(k: Knobs): Knobs {
  const out: Record<string, unknown> = {};
  for (const n of KNOB_NAMES) if (Object.hasOwn(k, n)) out[n] = k[n];
  return out as Knobs;
}

/** `over` applied on top of `base` (its keys replace base's), in the canonical order. */
export function mergeKnobs(base: Knobs, over: Knobs): Knobs {
  return canonical({ ...base, ...over });
}

/**
 * Knobs as one short label ("default" when none): `lr=0.01 searchFraction=0.25`, in the canonical
 * order, so that one setting has one label and one results-cache key however a file orders it.
 */
export function knobsLabel(k: Knobs): string {
  const parts = Object.entries(canonical(k)).map(([n, v]) =>
    typeof v === "object" ? `${n}=${Object.entries(v).map(([t, e]) => `${t}:${e}`).join(",")}` : `${n}=${v}`
  );
  return parts.length ? parts.join(" ") : "default";
}
