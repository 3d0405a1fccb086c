/**
 * `deno task tune`: chooses each method's own knobs on a validation split carved from every client's
 * training data (the test split is never read), with the same budget of settings per method, and
 * writes the choices as JSON for `deno task results --knobs FILE`.
 *
 *   deno task tune [--methods fedit,perfit] [--seeds 0] [--partition category] [--cache bench/results/runs]
 *                  [--out bench/results/tuning-category.md] [--knobs-out bench/results/knobs-category.json] [--cached-only]
 *                  [--plan FILE] [--rounds 4]
 *
 * Each setting is one results run (bench/results_table.ts) scored on the validation split, cached under
 * `--cache` with the knobs and the split in its key, so a tuning can be resumed or split over processes.
 */
import { defineCli } from "../runtime/cli/flags.ts";
import { BACKENDS, partitionCheck, seedsCheck } from "../runtime/cli/common.ts";
import { type Method, METHODS } from "../runtime/federation/mod.ts";
import { parsePartition } from "../runtime/federation/partition.ts";
import {
  type Knobs,
  knobsLabel,
  mergeKnobs,
  parseJsonText,
  parseKnobs,
  parseKnobsFile,
  parseMethodTable,
} from "../runtime/federation/knobs.ts";
import { DEFAULT_RESULTS, meanSd, partitionName, type ResultsOptions, runMethod } from "./results_table.ts";

/**
 * A method's tuning plan, in two stages with the same budget for every method. Stage 1 is the learning
 * rate, the knob every method has and the one that moves the baselines most. Stage 2 is the method's
 * own knobs, each applied on top of stage 1's winner: PerFIT's never-tuned search knobs (the share of
 * round 1 spent pruning, the EMA of importance), FedDPA's mix weight (its authors' only knob), and for
 * the federated methods whose papers name no knob of their own FedProx's μ (the issue's option for any
 * method that trains shared parameters). Local-only shares nothing, so its stage 2 is two more learning
 * rates. The `perfit` variants with a search share PerFIT's plan.
 */
export interface TuningPlan {
  /** Stage 1, the defaults first. */
  lr: Knobs[];
  /** Stage 2, each merged onto stage 1's winner (a key here replaces the winner's). */
  own: Knobs[];
}

export const TUNING_GRID: Record<Method, TuningPlan> = (() => {
  // Halving from the shared 5e-3: 1e-2 was the worst of {1e-2, 5e-3, 2.5e-3} on validation (category,
  // seed 0) for all five methods tried with it (bench/results/tuning-category.md's notes).
  const lr: Knobs[] = [{}, { lr: 2.5e-3 }, { lr: 1.25e-3 }];
  const search = { lr, own: [{ searchFraction: 0.25 }, { importanceBeta: 0.5 }] };
  const prox = { lr, own: [{ proximalMu: 0.1 }, { proximalMu: 1 }] };
  return {
    perfit: search,
    "perfit-mix": search,
    "perfit-sa": search,
    // Its own knob, either side of the default weight 3 of a client's own upload.
    "perfit-own": { lr, own: [{ ownWeight: 2 }, { ownWeight: 5 }] },
    "flora-own": { lr, own: [{ ownWeight: 2 }, { ownWeight: 5 }] },
    "perfit-stack": { lr, own: [{ ownWeight: 2 }, { ownWeight: 5 }] },
    "perfit-random-mask": prox,
    "perfit-e1": search,
    fedit: prox,
    local: { lr, own: [{ lr: 1e-2 }, { lr: 6.25e-4 }] },
    base: { lr: [{}], own: [] },
    fedsa: prox,
    ffa: prox,
    hetlora: prox,
    flora: prox,
    // Its own knob: how much of each client's data it holds out to pick the weight on.
    "flora-mix": { lr, own: [{ validationShare: 0.05 }, { validationShare: 0.2 }] },
    feddpa: { lr, own: [{ dpaLocalWeight: 0.3 }, { dpaLocalWeight: 0.7 }] },
  };
})();

/**
 * Plans read from a file (`--plan`), replacing the grid's for the methods they name: a JSON object of
 * method: { lr: [knobs…], own: [knobs…] }. For settings beyond the fixed budget (a method's other knobs),
 * reported apart from the equal-budget tuning. Refuses unknown methods, empty stage 1 and bad knobs.
 */
export function parsePlans(text: string, where: string): Partial<Record<Method, TuningPlan>> {
  return parseMethodTable(parseJsonText(text, where), where, "{ lr, own }", parsePlan);
}

function parsePlan(v: unknown, where: string): TuningPlan {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new TypeError(`${where} must be an object { lr, own }`);
  }
  const p = v as Record<string, unknown>;
  const extra = Object.keys(p).filter((k) => k !== "lr" && k !== "own");
  if (extra.length) {
    throw new TypeError(`${where}: unknown stage ${JSON.stringify(extra[0])} (known: lr, own)`);
  }
  const stage = (k: "lr" | "own", min: number): Knobs[] => {
    const list = p[k] ?? [];
    if (!Array.isArray(list) || list.length < min) {
      throw new TypeError(`${where}.${k} must be a list of knobs${min ? ", not empty" : ""}`);
    }
    return list.map((x, i) => parseKnobs(x, `${where}.${k}[${i}]`));
  };
  return { lr: stage("lr", 1), own: stage("own", 0) };
}

/** One setting's validation score: the mean over its seeds of the clients' mean perplexity. */
export interface TuningRow {
  method: Method;
  knobs: Knobs;
  seedMeans: number[];
  mean: number;
}

/** The chosen setting of each method: the lowest mean validation perplexity, the earlier setting on a tie. */
export function chooseKnobs(rows: TuningRow[]): Partial<Record<Method, Knobs>> {
  const best = new Map<Method, TuningRow>();
  for (const r of rows) {
    if (!Number.isFinite(r.mean)) continue;
    const b = best.get(r.method);
    if (!b || r.mean < b.mean) best.set(r.method, r);
  }
  return Object.fromEntries([...best].map(([m, r]) => [m, r.knobs])) as Partial<Record<Method, Knobs>>;
}

/** Runs each method's plan on the validation split: stage 1, then stage 2 on its winner; rows in run order (left out: not cached). */
export async function tune(o: ResultsOptions, grid = TUNING_GRID): Promise<TuningRow[]> {
  const rows: TuningRow[] = [];
  const run = async (method: Method, knobs: Knobs) => {
    const s = await runMethod(
      { ...o, evaluateOn: "validation", knobs: { [method]: knobs }, rouge: false },
      method,
    );
    if (!s) return;
    rows.push({ method, knobs, seedMeans: s.seedMeans, mean: s.meanPpl });
    o.log?.(`tune ${method} ${knobsLabel(knobs)}: validation mean ppl ${s.meanPpl.toFixed(3)}`);
  };
  for (const method of o.methods) {
    const plan = grid[method];
    for (const knobs of plan.lr) await run(method, knobs);
    const first = chooseKnobs(rows.filter((r) => r.method === method))[method] ?? {};
    for (const own of plan.own) await run(method, mergeKnobs(first, own));
  }
  return rows;
}

/** The tuning report: every setting's validation score, the chosen one in bold. */
export function renderTuning(o: ResultsOptions, rows: TuningRow[], command: string, plan?: string): string {
  const chosen = chooseKnobs(rows);
  const lines = [
    `# Knobs chosen on validation (${partitionName(o.partition)}, seeds ${o.seeds.join(", ")})`,
    "",
    `Command: \`${command}\` — backend ${o.backend}.`,
    "",
    `Every client holds out 10% of its training examples (seeded, \`splitValidation\`), trains on the rest, ` +
    `and is scored on the held-out part after the last round; the test split is not read. Each method ` +
    `gets the same budget in two stages: three learning rates (the default first), then two settings of ` +
    `its own knobs on top of the best of those (FedProx's μ where the method's paper names none; two ` +
    `more learning rates for local-only, which shares nothing). The lowest mean validation perplexity ` +
    `of all five wins, the earlier setting on a tie. Settings otherwise as \`deno task results\`: ${o.rounds} rounds × ` +
    `${o.localSteps} steps, lr ${o.lr} unless a knob says otherwise.`,
    ...(plan === undefined ? [] : [
      "",
      `**Not the equal budget**: \`${plan}\` replaced the plans of the methods it names with settings of its own.`,
    ]),
    "",
    "| method | setting | validation mean ppl | per seed |",
    "|---|---|---:|---|",
  ];
  for (const r of rows) {
    const win = chosen[r.method] === r.knobs;
    const label = knobsLabel(r.knobs);
    lines.push(
      `| ${r.method} | ${win ? `**${label}**` : label} | ${
        win ? `**${meanSd(r.seedMeans)}**` : meanSd(r.seedMeans)
      } | ${r.seedMeans.map((x) => x.toFixed(3)).join(", ")} |`,
    );
  }
  return lines.join("\n") + "\n";
}

export const tuneCli = defineCli({
  name: "tune",
  summary: "Chooses each method's own knobs on a validation split of the clients' training data.",
  flags: {
    methods: {
      type: "list",
      choices: METHODS,
      default: ["fedit", "local", "fedsa", "feddpa", "perfit", "perfit-mix"],
      help: "methods to tune",
    },
    seeds: {
      type: "list",
      value: "0",
      default: ["0"],
      validate: seedsCheck,
      help: "seeds each setting runs (its score is their mean)",
    },
    partition: {
      type: "string",
      value: "P",
      default: "category",
      validate: partitionCheck,
      help: "category, category:K, or dirichlet:ALPHA (with --clients)",
    },
    clients: { type: "int", min: 2, default: 16, help: "clients of a Dirichlet partition" },
    rounds: {
      type: "int",
      min: 1,
      default: DEFAULT_RESULTS.rounds,
      help: "federated rounds of every setting",
    },
    backend: {
      type: "string",
      choices: BACKENDS,
      default: DEFAULT_RESULTS.backend,
      help: "onnxruntime backend",
    },
    cache: {
      type: "string",
      value: "DIR",
      defaultText: "bench/results/runs",
      help: "finished runs, reused and saved",
    },
    out: {
      type: "string",
      value: "PATH",
      defaultText: "bench/results/tuning-<partition>.md",
      help: "the report",
    },
    "knobs-out": {
      type: "string",
      value: "PATH",
      defaultText: "bench/results/knobs-<partition>.json",
      help: "the chosen knobs (merged into the file's other methods), for `deno task results --knobs`",
    },
    "cached-only": { type: "boolean", help: "report only the settings already in --cache" },
    plan: {
      type: "string",
      value: "FILE",
      help:
        "JSON of method: { lr: [knobs], own: [knobs] } replacing those methods' plans (settings beyond the equal budget)",
    },
  },
});

if (import.meta.main) {
  const { values: f } = tuneCli.parse();
  const here = (p: string) => new URL(p, import.meta.url).pathname;
  const o: ResultsOptions = {
    ...DEFAULT_RESULTS,
    seeds: f.seeds.map(Number),
    methods: f.methods,
    backend: f.backend,
    rounds: f.rounds,
    partition: parsePartition(f.partition, f.clients),
    cacheDir: f.cache ?? here("./results/runs"),
    cachedOnly: f["cached-only"],
    log: (s) => console.error(s),
  };
  const command = ["deno task tune", `--methods ${f.methods.join(",")}`, `--seeds ${f.seeds.join(",")}`]
    .concat(o.backend === DEFAULT_RESULTS.backend ? [] : [`--backend ${o.backend}`])
    .concat(o.rounds === DEFAULT_RESULTS.rounds ? [] : [`--rounds ${o.rounds}`])
    .concat(o.partition.kind === "dirichlet" ? [`--partition ${f.partition} --clients ${f.clients}`] : [])
    .concat(f.plan === undefined ? [] : [`--plan ${f.plan}`])
    .join(" ");
  try {
    const plans = f.plan === undefined ? {} : parsePlans(await Deno.readTextFile(f.plan), f.plan);
    const rows = await tune(o, { ...TUNING_GRID, ...plans });
    if (rows.length === 0) throw new Error("no setting to report (--cached-only with an empty cache?)");
    const md = renderTuning(o, rows, command, f.plan);
    // One file per partition: a Dirichlet tuning must not overwrite the category one.
    const tag = partitionName(o.partition).replace(/:/g, "-");
    const out = f.out ?? here(`./results/tuning-${tag}.md`);
    await Deno.writeTextFile(out, md);
    const knobsOut = f["knobs-out"] ?? here(`./results/knobs-${tag}.json`);
    let prior = {};
    try {
      prior = parseKnobsFile(await Deno.readTextFile(knobsOut), knobsOut);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    await Deno.writeTextFile(knobsOut, JSON.stringify({ ...prior, ...chooseKnobs(rows) }, null, 2) + "\n");
    console.log(md);
    console.error(`wrote ${out} and ${knobsOut}`);
  } catch (e) {
    tuneCli.fail(e);
  }
}
