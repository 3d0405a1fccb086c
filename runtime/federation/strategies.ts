/**
 * The methods as strategy objects (Flower's Strategy role): what a method is lives here and only
 * here, and the simulation, the coordinator, the client and the results table ask it rather than
 * compare method names. Each says whether clients train, upload and expand, how an upload's mask
 * is constrained, what a sampled client does in a round (`configure`), and how the round's
 * reported metrics are aggregated. The parameter-wise averaging itself is the same pure math for
 * every method (server/aggregate.ts, streaming): FedIT is the case where every mask is all ones.
 * Adding a method means adding one object to `STRATEGIES`.
 */
import { deriveSeed, shuffled } from "../data/rng.ts";
import { HOLDERS, type RoundAggregation, STACKED, ZERO_PADDED } from "./aggregation.ts";

/** Every method compared in the results table. */
export type Method =
  | "perfit"
  | "fedit"
  | "local"
  | "base"
  | "perfit-random-mask"
  | "perfit-e1"
  | "fedsa"
  | "ffa"
  | "hetlora"
  | "flora"
  | "feddpa"
  | "perfit-sa"
  | "perfit-mix"
  | "flora-mix"
  | "perfit-stack"
  | "perfit-own"
  | "flora-own";
/** The methods a coordinator serves: all but the frozen base, which has nothing to federate. */
export type DeployedMethod = Exclude<Method, "base">;

/** What a sampled client does this round (the method's part of Flower's FitIns). */
export interface ClientPlan {
  /** Run the expand-then-prune search this round. */
  search: boolean;
  /** Use a random mask of the budget instead of importance (ablation). */
  randomMask: boolean;
  /** FLoRA: the first rank component of this client's slot in the run's stacked layout. */
  slot?: number;
}

/** One upload's reported metrics and sample count, as the metrics aggregation sees it. */
export interface ReportedMetrics {
  samples: number;
  metrics: Record<string, number>;
}

/** A method. */
export interface MethodStrategy {
  readonly name: Method;
  /** Served by the coordinator. */
  readonly deployed: boolean;
  /** Clients train (false: the frozen base). */
  readonly trains: boolean;
  /** Clients upload and the coordinator aggregates (false: local-only and the frozen base). */
  readonly aggregates: boolean;
  /** Clients train at their tier's rank r·e (false: everyone trains the plain rank-r adapter). */
  readonly expands: boolean;
  /**
   * Expanded clients prune back to the rank-r budget (the PerFIT family); false: a client trains and
   * uploads its whole rank-r·e adapter (HetLoRA's heterogeneous ranks), so the run has no budget.
   */
  readonly prunes: boolean;
  /** Each client has a mask of its own, stored by the coordinator (the PerFIT family). */
  readonly personalMask: boolean;
  /** Every upload must cover every position (FedIT): the mask is all ones and never stored. */
  readonly denseMask: boolean;
  /**
   * The part of its mask a client uploads and gets back aggregated; the rest stays private:
   * everything (PerFIT, FedIT), only the A matrices (FedSA-LoRA keeps B local), only B (FFA-LoRA),
   * or nothing (local-only); `lead`: the leading r rank components, FedDPA's global adapter.
   */
  readonly shares: "mask" | "A" | "B" | "none" | "lead";
  /** Matrices kept at the run's shared initialisation and never trained (FFA-LoRA: A). */
  readonly frozen?: "A" | "B";
  /**
   * FedDPA's dual adapter: every client trains at rank 2r whatever its tier (each tier's expansion is
   * 2), a global adapter in rank components 0..r-1 and a local one in r..2r-1 (runtime/client/feddpa.ts).
   */
  readonly dual?: boolean;
  /**
   * `perfit-mix`: after each aggregation a client's B positions become λ·own + (1 − λ)·global, λ picked
   * on a validation split of its training data (runtime/perfit/mix.ts); everything is shared.
   */
  readonly mixes?: boolean;
  /**
   * `perfit-own`, `flora-own`: a client's slice is the last aggregated round's fold in which its own
   * upload's fold terms weigh `ownWeight` times (the run's setting) and every other upload's as the
   * method folds them (server/own_weighted.ts). The coordinator keeps each upload's values until the
   * next round closes, and the round's per-position weights with its global.
   */
  readonly ownWeighted?: boolean;
  /**
   * FLoRA's stacking: the run's layout holds one slot of r·max e rank components per client (its
   * join order), a client receives every slot, merges their product into its own copy of the base
   * and starts a fresh LoRA in its slot every round.
   */
  readonly stacks?: boolean;
  /**
   * HetLoRA's optional rank self-pruning (`train.rankPruning`): a client may shrink its own rank
   * after a round and keep the smaller rank (runtime/client/hetlora_prune.ts); other methods refuse it.
   */
  readonly selfPrunes?: boolean;
  /**
   * What a sampled client does in `round`: `firstTime` when it has no mask yet; `researchEvery`
   * re-runs the search every k rounds (0 = only the first time); `slot` is where its slot would
   * start in a stacked layout.
   */
  configure(round: number, firstTime: boolean, researchEvery: number, slot: number): ClientPlan;
  /** The round's metrics from its accepted uploads: sample-weighted means. */
  aggregateMetrics(uploads: ReportedMetrics[]): Record<string, number>;
  /** How an accepted upload is folded into the round (runtime/federation/aggregation.ts). */
  readonly aggregation: RoundAggregation;
}

/** The default weight of a client's own upload in its slice under an own-weighted method (a run's `ownWeight`). */
export const OWN_WEIGHT_DEFAULT = 3;
/** The range a run's `ownWeight` may take. */
export const OWN_WEIGHT_RANGE = { min: 1, max: 1000 } as const;

/** Why `v` is no `ownWeight` ("must be …"), or undefined: the one check of the run config, the knob and the rule. */
export function ownWeightProblem(v: unknown): string | undefined {
  return typeof v === "number" && v >= OWN_WEIGHT_RANGE.min && v <= OWN_WEIGHT_RANGE.max
    ? undefined
    : `must be a number in [${OWN_WEIGHT_RANGE.min}, ${OWN_WEIGHT_RANGE.max}]`;
}

/**
 * Sample-weighted means of every metric that some upload reported. Metric names are clients' data,
 * so they key a Map, never a plain object ("constructor" or "__proto__" would find Object.prototype's
 * members); the result is a plain object whose keys are all own data properties.
 */
export function weightedMetrics(uploads: ReportedMetrics[]): Record<string, number> {
  const acc = new Map<string, { sum: number; weight: number }>();
  for (const u of uploads) {
    for (const [k, v] of Object.entries(u.metrics)) {
      const a = acc.get(k);
      if (a) {
        a.sum += v * u.samples;
        a.weight += u.samples;
      } else acc.set(k, { sum: v * u.samples, weight: u.samples });
    }
  }
  return Object.fromEntries([...acc].map(([k, a]) => [k, a.sum / a.weight]));
}

const noSearch = (): ClientPlan => ({ search: false, randomMask: false });

/** PerFIT's search the first time a client is sampled, then every `researchEvery` rounds if set. */
const perfitPlan = (round: number, firstTime: boolean, every: number): ClientPlan => ({
  search: firstTime || (every > 0 && (round - 1) % every === 0),
  randomMask: false,
});

/** FLoRA's: no search; the client trains its slot of the stacked layout. */
const slotPlan = (_round: number, _first: boolean, _every: number, slot: number): ClientPlan => ({
  search: false,
  randomMask: false,
  slot,
});

const base = {
  deployed: false,
  trains: true,
  aggregates: true,
  expands: false,
  prunes: false,
  personalMask: false,
  denseMask: false,
  shares: "mask" as const,
  aggregateMetrics: weightedMetrics,
  aggregation: HOLDERS,
};

/** Every method, by name. */
export const STRATEGIES: Readonly<Record<Method, MethodStrategy>> = {
  perfit: {
    ...base,
    name: "perfit",
    deployed: true,
    expands: true,
    prunes: true,
    personalMask: true,
    configure: perfitPlan,
  },
  fedit: { ...base, name: "fedit", deployed: true, denseMask: true, configure: noSearch },
  local: { ...base, name: "local", deployed: true, aggregates: false, shares: "none", configure: noSearch },
  base: { ...base, name: "base", trains: false, aggregates: false, shares: "none", configure: noSearch },
  "perfit-random-mask": {
    ...base,
    name: "perfit-random-mask",
    deployed: true,
    expands: true,
    prunes: true,
    personalMask: true,
    // The random mask replaces the first search only; a re-search (researchEvery) still uses importance.
    configure: (round, firstTime, every) => ({
      search: !firstTime && perfitPlan(round, false, every).search,
      randomMask: firstTime,
    }),
  },
  // FedSA-LoRA (Guo et al., ICLR 2025; authors' code: `personalization.local_param: ['lora_B']` with
  // sample-weighted FedAvg of the rest): A and B trained, only A shared. Its fixed A mask is stored
  // once like a PerFIT mask and named by reference after.
  fedsa: { ...base, name: "fedsa", deployed: true, personalMask: true, shares: "A", configure: noSearch },
  // FFA-LoRA (Sun et al., ICLR 2024; FedSA-LoRA's code: `freeze_A` sets lora_A requires_grad False):
  // A stays at the shared random init, only B is trained and shared: half of FedIT's traffic.
  ffa: {
    ...base,
    name: "ffa",
    deployed: true,
    personalMask: true,
    shares: "B",
    frozen: "A",
    configure: noSearch,
  },
  // FedDPA (Yang et al., NeurIPS 2024; authors' code github.com/Lydia-yang/FedDPA @cf638c1, every
  // line cited in runtime/client/feddpa.ts and feddpa_eval.ts): a global and a local rank-r adapter
  // (same r, alpha) side by side in one rank-2r LoRA. From round 2 each client trains the local one
  // with the global one detached (main.py 208-225; fed_utils/client.py 110 weights a = 0.5 local,
  // 1 − a global; peft/tuners/lora/layer.py 228), then the global one alone (main.py 227-245); only
  // the global one is averaged (fed_utils/model_aggregation.py) and shared here, its fixed mask
  // stored once and named by reference after. Evaluation mixes them (GlobalModel_generated.py 154:
  // 0.5/0.5), or per instance: the global weight is 0.5 × the mean cosine similarity of the
  // instance's last-prompt-token state to 5 random local training instances' (lines 312-346, 383).
  feddpa: {
    ...base,
    name: "feddpa",
    deployed: true,
    personalMask: true,
    shares: "lead",
    dual: true,
    configure: noSearch,
  },
  // PerFIT's search with FedSA-LoRA's split, an attempt at closing the gap to local-only (#14's
  // "personalized positions that are never averaged"): the searched mask's A positions are shared
  // and aggregated, its B positions stay on the client.
  "perfit-sa": {
    ...base,
    name: "perfit-sa",
    deployed: true,
    expands: true,
    prunes: true,
    personalMask: true,
    shares: "A",
    configure: perfitPlan,
  },
  // PerFIT's search, with each client's B mixed between its own and the average on its own
  // validation split (runtime/perfit/mix.ts): λ = 0 is PerFIT, λ = 1 keeps B private like perfit-sa.
  "perfit-mix": {
    ...base,
    name: "perfit-mix",
    deployed: true,
    expands: true,
    prunes: true,
    personalMask: true,
    mixes: true,
    configure: perfitPlan,
  },
  // PerFIT's search and holders mean, with the client's own upload weighing more in its own slice:
  // #14's "aggregation weighted by mask overlap" measured on validation gained only through the weight
  // the overlap gave a client's own upload (1 against the others' Jaccard, about 0.3), as a constant
  // weight of the others did as well (bench/results/perfit-own.md).
  "perfit-own": {
    ...base,
    name: "perfit-own",
    deployed: true,
    expands: true,
    prunes: true,
    personalMask: true,
    ownWeighted: true,
    configure: perfitPlan,
  },
  // PerFIT with every client at e = 1: nothing to prune, so it must equal FedIT (a code-path check).
  "perfit-e1": {
    ...base,
    name: "perfit-e1",
    deployed: true,
    prunes: true,
    personalMask: true,
    configure: perfitPlan,
  },
  // HetLoRA (Cho et al., EMNLP 2024): each client trains the leading r·e rank components of the
  // global adapter (its tier's rank, the same tiers as PerFIT) and gets them back truncated; the
  // coordinator zero-pads to the largest rank and weighs each projection by its ‖B·A‖_F. No public
  // code from the authors; checked against two re-implementations (sparsity_weighted_aggregation:
  // per-projection norm weights over all of the round's clients, zero padding). Its fixed mask (the
  // leading components) is stored once and named by reference after.
  // Rank self-pruning, optional (`train.rankPruning: "on"`, off by default): local training adds
  // λ·Σ ‖A_tail‖_F·‖B_tail‖_F over the tail max(1, ⌊γ·k⌋)..k-1 of the client's rank k; when that tail
  // norm ends the round below where it started, the client prunes to max(1, ⌊γ·k⌋) components,
  // uploads only those (its mask shrinks, so the coordinator zero-pads it as the smaller rank and its
  // slice is truncated to it) and keeps that rank, as its saved mask, in every later round and across
  // a restart. γ = 0.99, λ = 0.01 by default. The paper's text of the rule was not available to us;
  // it follows the re-implementations PabloE-KAIST/FedLoRA-public @6628dea (heterolora_utils.py
  // `tail_penalty`, hetlora_client.py `_hetlora_prune_and_send_rank`), chenxingqiang/PFLoRA-lib
  // @2d0bb32 (hetlora_model.py `rank_self_pruning`) and measaverb/SplitHetLoRA (utils/etc.py
  // `self_pruning_regularisation`); what each does, and our one deviation, in
  // runtime/client/hetlora_prune.ts.
  hetlora: {
    ...base,
    name: "hetlora",
    deployed: true,
    expands: true,
    personalMask: true,
    selfPrunes: true,
    configure: noSearch,
    aggregation: ZERO_PADDED,
  },
  // FLoRA (Wang et al., NeurIPS 2024; authors' code ATP-1010/FederatedLLM, main.py and
  // fed_utils/model_aggregation.py with stacking and heter): each client trains a fresh LoRA of its
  // tier's rank every round (PEFT's init: A random, B zero; alpha/r the same for every rank); the
  // server stacks the A's (scaled by the sample weights p_k) and the B's, and the stacked product is
  // merged into the base (merge_and_unload) before the next round. The merged base travels as the
  // stack: every client downloads every slot's A and B and merges them into its own copy of the base.
  flora: {
    ...base,
    name: "flora",
    deployed: true,
    expands: true,
    personalMask: true,
    stacks: true,
    configure: slotPlan,
    aggregation: STACKED,
  },
  // FLoRA's exact stacking with perfit-own's rule (#14): the stack a client merges counts its own
  // slot `ownWeight` times against the others' (its A scaled s·p_k / (1 + (s − 1)·p_k), every other
  // slot's by 1 / (1 + (s − 1)·p_k), so the weights still sum to 1), so each client's merged base
  // leans to its own updates (server/own_weighted.ts). FLoRA's exactness is what wins where clients
  // mix categories, the own weight what wins where they differ (bench/results/flora-own.md).
  "flora-own": {
    ...base,
    name: "flora-own",
    deployed: true,
    expands: true,
    personalMask: true,
    stacks: true,
    ownWeighted: true,
    configure: slotPlan,
    aggregation: STACKED,
  },
  // flora-own with a weight per client: the coordinator serves FLoRA's plain stack, and each client
  // reweighs its own slot for s in OWN_SLOT_GRID (runtime/client/flora.ts) and merges the stack its
  // validation split (carved from its training data, as perfit-mix's) prefers, so a client whose data
  // sits with the others' can stay near FLoRA (s = 1) and one far from them can lean to its own.
  "flora-mix": {
    ...base,
    name: "flora-mix",
    deployed: true,
    expands: true,
    personalMask: true,
    stacks: true,
    mixes: true,
    configure: slotPlan,
    aggregation: STACKED,
  },
  // PerFIT's search inside flora-own's exact stacking: every round a fresh LoRA of the client's
  // expanded rank r·e in its slot, pruned by Taylor importance back to the rank-r budget during the
  // round's search share, uploaded as the kept positions only; the coordinator stacks the slots and
  // weighs the asking client's own slot `ownWeight` times, as flora-own's (server/own_weighted.ts).
  "perfit-stack": {
    ...base,
    name: "perfit-stack",
    deployed: true,
    expands: true,
    prunes: true,
    personalMask: true,
    stacks: true,
    ownWeighted: true,
    // A fresh LoRA every round has no searched mask to keep: every round searches.
    configure: (_round, _first, _every, slot) => ({ search: true, randomMask: false, slot }),
    aggregation: STACKED,
  },
};

/**
 * The clients sampled in a round (Flower's fraction_fit): a seeded share of them, in their given
 * order, or all of them at fraction 1.
 */
export function sampleClients<T>(clients: readonly T[], fraction: number, seed: number, round: number): T[] {
  if (!(fraction > 0 && fraction <= 1)) throw new RangeError(`fraction must be in (0, 1], got ${fraction}`);
  const n = Math.max(1, Math.round(clients.length * fraction));
  if (n >= clients.length) return [...clients];
  const chosen = new Set(shuffled(clients, deriveSeed(seed, round, 0x5a)).slice(0, n));
  return clients.filter((c) => chosen.has(c));
}

/** Every method name, for CLI validation. */
export const METHODS = Object.keys(STRATEGIES) as Method[];
/** The methods whose slices weigh the asking client's own upload (a run's `ownWeight`). */
export const OWN_WEIGHTED = METHODS.filter((m) => STRATEGIES[m].ownWeighted);
/** The methods a coordinator serves. */
export const DEPLOYED_METHODS = METHODS.filter((m) => STRATEGIES[m].deployed) as DeployedMethod[];

/** The strategy of a method name; refuses unknown names rather than defaulting. */
export function strategyFor(method: string): MethodStrategy {
  if (!Object.hasOwn(STRATEGIES, method)) {
    throw new RangeError(`unknown method ${JSON.stringify(method)} (known: ${METHODS.join(", ")})`);
  }
  return STRATEGIES[method as Method];
}
