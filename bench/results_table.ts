/**
 * `deno task results`: PerFIT, FedIT, local-only, frozen base and the two ablations on lexicon-instruct
 * with 8 clients (one per category); writes the table to bench/results/perfit.md.
 *
 *   deno task results [--rounds 3] [--local-steps 10] [--seeds 0] [--tiers high,mid,low] [--max-train 400]
 *                     [--max-test 48] [--backend auto] [--out bench/results/perfit.md] [--methods a,b]
 *                     [--lr 0.005] [--max-len 64] [--batch-size 8] [--rank 4] [--targets q,v] [--cache DIR]
 *
 * `--cache DIR` saves every finished (method, seed) run as JSON under DIR and reuses it when the same
 * settings come again, so methods can run as parallel processes (`--methods fedit --cache DIR --out /dev/null`)
 * and one final `deno task results --cache DIR` assembles the table.
 *
 * `--rouge` adds the generation metric: ROUGE-L F1 of greedy completions on each client's test split, from
 * the adapters under `--save-adapters DIR`, stored as `<cache key>.rouge.json` beside the run's JSON
 * (bench/results_rouge.ts). With `--cached-only`, runs missing from the cache are left out instead of
 * run, so `deno task results --cache DIR --save-adapters ADIR --rouge --cached-only` scores finished runs
 * (and only those) while others are still training. The table shows a ROUGE-L column whenever such files
 * exist, with or without `--rouge`.
 */
import { defineCli, isDirectory } from "../runtime/cli/flags.ts";
import { SLICE_REVISION } from "../runtime/client/wire.ts";
import { BACKENDS, partitionCheck, seedsCheck, TARGET_CHOICES } from "../runtime/cli/common.ts";
import {
  DEFAULT_SIM,
  type Method,
  METHODS,
  runFederated,
  type SimConfig,
  type SimResult,
  strategyFor,
} from "../runtime/federation/mod.ts";
import { parsePartition, type PartitionSpec } from "../runtime/federation/partition.ts";
import { type Knobs, knobsLabel, parseKnobsFile, withKnobs } from "../runtime/federation/knobs.ts";
import {
  computeRunRouge,
  DEFAULT_ROUGE,
  readRunRouge,
  type RunRouge,
  sameRougeSettings,
  writeRunRouge,
} from "./results_rouge.ts";

/** Settings of a results run. */
export interface ResultsOptions {
  rounds: number;
  localSteps: number;
  seeds: number[];
  tiers: string[];
  maxTrain: number;
  maxTest: number;
  batchSize: number;
  maxLen: number;
  lr: number;
  rank: number;
  targets: SimConfig["targets"];
  backend: "auto" | "node" | "wasm" | "webgpu";
  methods: Method[];
  modelDir?: string;
  /** Folder of finished runs (one JSON per method and seed, keyed by the settings): reused, and new runs saved there. */
  cacheDir?: string;
  /** How the data is split into clients: one per category (8), or Dirichlet over categories. */
  partition: PartitionSpec;
  /** Write each run's final personalized PEFT adapters under DIR/<cache key>/<client> (for ROUGE-L later). */
  saveAdaptersDir?: string;
  /** Compute ROUGE-L of every run that lacks it (from the adapters under `saveAdaptersDir`). */
  rouge?: boolean;
  /** Held-out examples per client and new tokens per completion of the ROUGE-L pass. */
  rougeExamples?: number;
  rougeNewTokens?: number;
  /** Leave out (method, seed) runs that are not in the cache instead of running them. */
  cachedOnly?: boolean;
  /** Each method's own knobs (bench/tune.ts chooses them on a validation split); absent: the defaults. */
  knobs?: Partial<Record<Method, Knobs>>;
  /** The file the knobs came from, for the command line the report prints. */
  knobsFile?: string;
  /** Score the clients on a validation split of their training data instead of their test split (tuning). */
  evaluateOn?: "test" | "validation";
  log?: (s: string) => void;
}

/** Defaults: what `deno task results` runs. */
export const DEFAULT_RESULTS: ResultsOptions = {
  rounds: 4,
  // 40 steps of batch 8 per round (160 per client, 3.2 epochs of 400 examples): at 20 the runs were too short
  // for local-only training to beat FedAvg, i.e. there was no personalization headroom to measure.
  localSteps: 40,
  seeds: [0, 1, 2],
  tiers: ["high", "mid", "low"],
  maxTrain: 400,
  maxTest: 48,
  batchSize: 8,
  // 64 tokens makes a step ~1.5x cheaper than 96 on 2 cores, paying for the extra local steps.
  maxLen: 64,
  // Chosen on FedIT only (2 rounds x 40 steps, mean test ppl): 2e-3 76.84, 5e-3 75.87, 1e-2 76.92.
  lr: 5e-3,
  rank: DEFAULT_SIM.rank,
  targets: ["q", "k", "v", "o", "gate", "up", "down"],
  backend: "auto",
  methods: METHODS,
  partition: { kind: "category", clientsPerCategory: 1 },
};

/** One method's runs over the seeds, as the table reports them. */
export interface MethodSummary {
  method: Method;
  runs: SimResult[];
  meanPpl: number;
  /** Per seed, the last round's arithmetic and geometric means over the clients. */
  seedMeans: number[];
  seedGeoMeans: number[];
  perClient: Map<string, number[]>;
  curve: number[];
  /** Per run (same order as `runs`), its ROUGE-L pass, or null where there is none. */
  rouge: (RunRouge | null)[];
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

/** Sample standard deviation (n - 1); 0 for fewer than two values. */
export function stdDev(xs: number[]): number {
  if (xs.length < 2) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1));
}

/** Geometric mean: one hard client (a perplexity far above the rest) moves it less than the arithmetic mean. */
export function geoMean(xs: number[]): number {
  if (xs.length === 0 || xs.some((x) => !(x > 0))) {
    throw new RangeError("geometric mean needs positive values");
  }
  return Math.exp(mean(xs.map(Math.log)));
}

/** "mean ± sd" over seeds (just the mean for one seed). */
export function meanSd(xs: number[], digits = 3): string {
  return xs.length > 1
    ? `${mean(xs).toFixed(digits)} ± ${stdDev(xs).toFixed(digits)}`
    : mean(xs).toFixed(digits);
}

/** Summarizes a method's runs (one per seed) and their ROUGE-L passes (same order, null where none). */
export function summarizeMethod(
  method: Method,
  runs: SimResult[],
  rouge: (RunRouge | null)[],
): MethodSummary {
  const last = (r: SimResult) => r.rounds[r.rounds.length - 1].clients.map((c) => c.perplexity);
  const perClient = new Map<string, number[]>();
  for (const c of runs[0].clients) {
    perClient.set(
      c.id,
      runs.map((r) => r.rounds[r.rounds.length - 1].clients.find((x) => x.clientId === c.id)!.perplexity),
    );
  }
  const curve = runs[0].rounds.map((_, i) => mean(runs.map((r) => r.rounds[i].meanPerplexity)));
  const seedMeans = runs.map((r) => mean(last(r)));
  const seedGeoMeans = runs.map((r) => geoMean(last(r)));
  return { method, runs, meanPpl: mean(seedMeans), seedMeans, seedGeoMeans, perClient, curve, rouge };
}

function uploadStats(r: SimResult): { first: number; steady: number } {
  const per = r.rounds.map((rd) => mean(rd.clients.filter((c) => c.trained).map((c) => c.uploadBytes)));
  return { first: per[0] ?? 0, steady: per.length > 1 ? mean(per.slice(1)) : per[0] ?? 0 };
}

/** Whether any of the runs measured its downloads on a slice body older than today's. */
export const staleDownload = (runs: readonly Pick<SimResult, "sliceRevision">[]): boolean =>
  runs.some((r) => (r.sliceRevision ?? 1) < SLICE_REVISION);

/** Mean bytes a client downloads per round (its slice bodies). */
const downloadPerRound = (r: SimResult): number =>
  mean(r.rounds.flatMap((rd) => rd.clients.map((c) => c.downloadBytes)));

/** Whether the table marks a run's download figure (†): it downloaded something, on an older slice body. */
const staleMark = (r: SimResult): boolean => staleDownload([r]) && downloadPerRound(r) > 0;

/** Mean wall seconds of a sampled client's round, over the runs that recorded it (null: none did). */
function computePerRound(runs: SimResult[]): number | null {
  const xs = runs.flatMap((r) =>
    r.rounds.flatMap((rd) => rd.clients.filter((c) => c.trained && c.computeSeconds !== undefined))
  ).map((c) => c.computeSeconds!);
  return xs.length ? mean(xs) : null;
}

/** "a" or "a–b" over the clients' values. */
const span = (xs: number[]): string => {
  const lo = Math.min(...xs), hi = Math.max(...xs);
  return lo === hi ? `${lo}` : `${lo}–${hi}`;
};

/** Runs every method and returns the Markdown report. */
export async function runResults(o: ResultsOptions = DEFAULT_RESULTS): Promise<string> {
  const log = o.log ?? (() => {});
  if (o.rouge && o.saveAdaptersDir === undefined) {
    throw new Error(
      "--rouge reads each run's adapters: give --save-adapters DIR (where the runs saved them)",
    );
  }
  if (o.cachedOnly && o.cacheDir === undefined) throw new Error("--cached-only needs --cache DIR");
  const summaries: MethodSummary[] = [];
  const leftOut: string[] = [];
  const t0 = performance.now();
  for (const method of o.methods) {
    const sum = await runMethod(o, method, leftOut);
    if (sum) summaries.push(sum);
  }
  if (summaries.length === 0) throw new Error("no run to report (--cached-only with an empty cache?)");
  // Cached runs took no time now: report the runs' own wall times (serial equivalent) instead.
  const total = summaries.reduce((a, x) => a + x.runs.reduce((b, r) => b + r.wallSeconds, 0), 0);
  log(`this invocation: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  return renderResults(o, summaries, total, leftOut);
}

/**
 * One method's runs over the seeds (from the cache where there), or null when `cachedOnly` left them all
 * out; what was left out is pushed to `leftOut`.
 */
export async function runMethod(
  o: ResultsOptions,
  method: Method,
  leftOut: string[] = [],
): Promise<MethodSummary | null> {
  const log = o.log ?? (() => {});
  const rougeSettings = {
    maxExamples: o.rougeExamples ?? DEFAULT_ROUGE.maxExamples,
    maxNewTokens: o.rougeNewTokens ?? DEFAULT_ROUGE.maxNewTokens,
    maxLen: o.maxLen,
  };
  const runs: SimResult[] = [];
  const rouges: (RunRouge | null)[] = [];
  for (const seed of o.seeds) {
    const cfg: SimConfig = withKnobs({
      ...DEFAULT_SIM,
      method,
      rounds: o.rounds,
      localSteps: o.localSteps,
      seed,
      lr: o.lr,
      rank: o.rank,
      alpha: 2 * o.rank,
      targets: o.targets,
      clientTiers: o.tiers,
    }, o.knobs?.[method] ?? {});
    const key = cacheKey(o, method, seed);
    const cached = o.cacheDir ? await readCached(o.cacheDir, key) : null;
    if (!cached && o.cachedOnly) {
      log(`${method} seed ${seed}: not in the cache, left out (--cached-only)`);
      leftOut.push(`${method} seed ${seed}`);
      continue;
    }
    const r = cached ?? await runFederated(cfg, {
      modelDir: o.modelDir,
      partition: o.partition,
      backend: o.backend,
      saveAdapters: o.saveAdaptersDir === undefined ? undefined : `${o.saveAdaptersDir}/${key}`,
      batchSize: o.batchSize,
      maxLen: o.maxLen,
      maxTrain: o.maxTrain,
      maxTest: o.maxTest,
      evaluateOn: o.evaluateOn,
      progress: true,
    });
    if (o.cacheDir && !cached) {
      await Deno.mkdir(o.cacheDir, { recursive: true });
      await Deno.writeTextFile(`${o.cacheDir}/${key}.json`, JSON.stringify(r));
    }
    log(
      `${method} seed ${seed}${cached ? " (cached)" : ""}: mean ppl ${
        r.rounds[r.rounds.length - 1].meanPerplexity.toFixed(3)
      } (${r.wallSeconds.toFixed(0)} s)`,
    );
    runs.push(r);
    rouges.push(await rougeOf(o, r, key, rougeSettings, log));
  }
  return runs.length ? summarizeMethod(method, runs, rouges) : null;
}

/** A run's ROUGE-L: the stored pass (if its settings match when computing), else computed with `--rouge`. */
async function rougeOf(
  o: ResultsOptions,
  r: SimResult,
  key: string,
  settings: { maxExamples: number; maxNewTokens: number; maxLen: number },
  log: (s: string) => void,
): Promise<RunRouge | null> {
  const stored = o.cacheDir ? await readRunRouge(o.cacheDir, key) : null;
  if (!o.rouge || (stored && sameRougeSettings(stored.settings, settings))) return stored;
  const res = await computeRunRouge(o, r, key, o.saveAdaptersDir!, settings, log);
  if (!res) return stored;
  if (o.cacheDir) await writeRunRouge(o.cacheDir, res);
  log(
    `${r.method} seed ${r.config.seed}: ROUGE-L ${(res.meanF * 100).toFixed(2)} (${
      res.seconds.toFixed(1)
    } s, ${res.clients.reduce((a, c) => a + c.examples, 0)} completions)`,
  );
  return res;
}

/** File name of a cached run: every setting that changes the result, hashed (FNV-1a), plus method and seed. */
export function cacheKey(o: ResultsOptions, method: Method, seed: number): string {
  const relevant = JSON.stringify([
    o.rounds,
    o.localSteps,
    o.tiers,
    o.maxTrain,
    o.maxTest,
    o.batchSize,
    o.maxLen,
    o.lr,
    o.rank,
    o.targets,
    o.backend,
    o.modelDir ?? "",
    // Appended only off the default, so the category runs cached before partitions were a setting keep their keys.
    ...(partitionName(o.partition) === "category" ? [] : [partitionName(o.partition)]),
    // Likewise knobs and the validation scoring: only where they are set.
    ...(Object.keys(o.knobs?.[method] ?? {}).length ? [knobsLabel(o.knobs![method]!)] : []),
    ...((o.evaluateOn ?? "test") === "test" ? [] : ["validation"]),
  ]);
  let h = 0x811c9dc5;
  for (let i = 0; i < relevant.length; i++) h = Math.imul(h ^ relevant.charCodeAt(i), 0x01000193) >>> 0;
  return `${method}-seed${seed}-${h.toString(16).padStart(8, "0")}`;
}

async function readCached(dir: string, key: string): Promise<SimResult | null> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/${key}.json`)) as SimResult;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** A partition as its flag spells it: `category`, `category:2`, `dirichlet:0.5x16`. */
export function partitionName(p: PartitionSpec): string {
  if (p.kind === "category") {
    return p.clientsPerCategory === 1 ? "category" : `category:${p.clientsPerCategory}`;
  }
  return `dirichlet:${p.alpha}x${p.clients}`;
}

/** The `deno task results` command line that reproduces these options. */
export function commandLine(o: ResultsOptions): string {
  const d = DEFAULT_RESULTS;
  const flags: string[] = [];
  const add = (k: string, v: string, dv: string) => v !== dv && flags.push(`--${k} ${v}`);
  add("rounds", String(o.rounds), String(d.rounds));
  add("local-steps", String(o.localSteps), String(d.localSteps));
  add("seeds", o.seeds.join(","), d.seeds.join(","));
  add("tiers", o.tiers.join(","), d.tiers.join(","));
  add("max-train", String(o.maxTrain), String(d.maxTrain));
  add("max-test", String(o.maxTest), String(d.maxTest));
  add("batch-size", String(o.batchSize), String(d.batchSize));
  add("max-len", String(o.maxLen), String(d.maxLen));
  add("lr", String(o.lr), String(d.lr));
  add("rank", String(o.rank), String(d.rank));
  add("targets", o.targets.join(","), d.targets.join(","));
  add("methods", o.methods.join(","), d.methods.join(","));
  if (o.knobsFile) flags.push(`--knobs ${o.knobsFile}`);
  if (o.partition.kind === "dirichlet") {
    flags.push(`--partition dirichlet:${o.partition.alpha} --clients ${o.partition.clients}`);
  } else add("partition", partitionName(o.partition), "category");
  return ["deno task results", ...flags].join(" ");
}

function fmtBytes(b: number): string {
  return b === 0 ? "0" : b >= 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${b.toFixed(0)} B`;
}

/**
 * The Markdown report of summarized methods (`totalSeconds`: the runs' wall times, summed; `leftOut`: the
 * (method, seed) runs `--cached-only` did not find, named in the report so its means say what they cover).
 */
export function renderResults(
  o: ResultsOptions,
  s: MethodSummary[],
  totalSeconds: number,
  leftOut: string[] = [],
): string {
  const byName = new Map(s.map((x) => [x.method, x]));
  const fedit = byName.get("fedit");
  const ref = s[0].runs[0];
  const B = ref.budget;
  const lines: string[] = [];
  const split = o.partition.kind === "category"
    ? `${ref.clients.length} clients, ${
      o.partition.clientsPerCategory === 1 ? "one" : o.partition.clientsPerCategory
    } per category`
    : `${o.partition.clients} clients, Dirichlet α=${o.partition.alpha} over categories`;
  lines.push(`# PerFIT results on lexicon-instruct (${split})`, "");
  lines.push(
    `Command: \`${commandLine(o)}\` — backend **${ref.backend}**, ` +
      `2-core x86-64 VM shared with other jobs (wall times are noisy). Sum of the runs' wall times: ${
        totalSeconds.toFixed(0)
      } s.`,
    "",
  );
  lines.push(
    `Setup: bundled base \`models/perfit-tiny\` (frozen), LoRA r=${ref.config.rank}, alpha=${ref.config.alpha} on ${
      ref.config.targets.join(",")
    }; ` +
      `${o.rounds} rounds × ${o.localSteps} local AdamW steps (lr ${o.lr}, batch ${o.batchSize}, max length ${o.maxLen}); ` +
      `≤${o.maxTrain} train / ≤${o.maxTest} test examples per client (seeded split); seeds ${
        o.seeds.join(", ")
      }. ` +
      `Client tiers cycle ${o.tiers.join("/")} → e = ${
        o.tiers.map((t) => DEFAULT_SIM.tiers[t]).join("/")
      }. ` +
      `PerFIT search: ${ref.config.pruneStages} cubic pruning stages over the first ${
        Math.round(ref.config.searchFraction * 100)
      }% of round 1, ` +
      `EMA importance (beta ${ref.config.importance.beta}), global allocation. Budget B = ${B} parameters per client.`,
    "",
  );
  lines.push(
    "Personalized perplexity = exp(mean response-token NLL) of the model each client holds after the last round's aggregation, on its own held-out split (lower is better). " +
      "Mean ppl is the arithmetic mean over the clients, geo-mean ppl the geometric mean (one hard client dominates the arithmetic one); " +
      "with several seeds each is shown as mean ± sample standard deviation over the seeds, and so is each client's value.",
    "",
  );
  if (leftOut.length) {
    lines.push(
      `Not in the cache, so left out of every mean below (\`--cached-only\`): ${leftOut.join(", ")}.`,
      "",
    );
  }
  const tuned = s.filter((x) => Object.keys(o.knobs?.[x.method] ?? {}).length);
  if (tuned.length) {
    lines.push(
      `Knobs chosen on a validation split of each client's training data (\`deno task tune\`, bench/results/tuning-<partition>.md), not the defaults above: ${
        tuned.map((x) => `${x.method} ${knobsLabel(o.knobs![x.method]!)}`).join("; ")
      }.`,
      "",
    );
  }
  const withRouge = s.some((x) => x.rouge.some((q) => q !== null));
  if (withRouge) lines.push(rougeNote(s), "");
  lines.push(
    `| method | mean ppl | geo-mean ppl |${
      withRouge ? " ROUGE-L |" : ""
    } vs FedIT | trainable params / client | search space | upload / client, round 1 | upload / client, later rounds | download / client / round | client s / round | wall s |`,
  );
  lines.push(`|---|---:|---:|${withRouge ? "---:|" : ""}---:|---:|---:|---:|---:|---:|---:|---:|`);
  for (const x of s) {
    const r = x.runs[0];
    const up = uploadStats(r);
    const vs = fedit ? `${(((x.meanPpl - fedit.meanPpl) / fedit.meanPpl) * 100).toFixed(1)}%` : "-";
    const trains = strategyFor(x.method).trains;
    const space = !trains ? "0" : span(r.clients.map((c) => c.searchSpace));
    const train = trains ? span(r.clients.map((c) => c.trainableParams)) : "0";
    const compute = computePerRound(x.runs);
    lines.push(
      `| ${x.method} | ${meanSd(x.seedMeans)} | ${meanSd(x.seedGeoMeans)} |${
        withRouge ? ` ${rougeCell(x)} |` : ""
      } ${vs} | ${train} | ${space} | ${fmtBytes(up.first)} | ${fmtBytes(up.steady)} | ${
        fmtBytes(downloadPerRound(r))
      }${staleMark(r) ? " †" : ""} | ${compute === null ? "-" : compute.toFixed(1)} | ${
        mean(x.runs.map((q) => q.wallSeconds)).toFixed(0)
      } |`,
    );
  }
  lines.push(
    "",
    `FedIT upload reference: 4·B = ${4 * B} B of values; uploads are the HTTP bodies (safetensors, ` +
      `runtime/client/wire.ts): values, a ~300 B header, and a new mask in its smallest code (by reference after). ` +
      `Downloads are the slice bodies a client pulls (FLoRA: the whole stack, docs/methods.md). Client s / round: ` +
      `wall seconds of a sampled client's round (task, slice, local training, upload), on a shared 2-core machine ` +
      `("-" for runs cached before it was recorded).`,
    "",
  );
  if (s.some((x) => staleMark(x.runs[0]))) {
    lines.push(
      `† Measured on an older slice body (revision ${SLICE_REVISION} drops a stack's exact zeros and codes its ` +
        `bitmasks, wire.ts \`SLICE_REVISION\`): larger than today's; a rerun without the cache measures it anew.`,
      "",
    );
  }
  lines.push("## Per-client personalized perplexity (last round)", "");
  lines.push(`| client | e (PerFIT) | ${s.map((x) => x.method).join(" | ")} |`);
  lines.push(`|---|---:|${s.map(() => "---:").join("|")}|`);
  const perfit = byName.get("perfit") ?? s[0];
  for (const c of ref.clients) {
    const e = perfit.runs[0].clients.find((q) => q.id === c.id)?.expansion ?? 1;
    lines.push(`| ${c.id} | ${e} | ${s.map((x) => meanSd(x.perClient.get(c.id)!)).join(" | ")} |`);
  }
  if (withRouge) {
    lines.push("", "## Per-client ROUGE-L F1 × 100 (greedy completions, last round's model)", "");
    lines.push(`| client | ${s.map((x) => x.method).join(" | ")} |`);
    lines.push(`|---|${s.map(() => "---:").join("|")}|`);
    for (const c of ref.clients) {
      const cells = s.map((x) => {
        const fs = x.rouge.flatMap((q) => {
          const f = q?.clients.find((y) => y.id === c.id)?.f;
          return f === undefined || f === null ? [] : [f * 100];
        });
        return fs.length ? meanSd(fs, 2) : "-";
      });
      lines.push(`| ${c.id} | ${cells.join(" | ")} |`);
    }
  }
  const mixing = s.filter((x) => strategyFor(x.method).mixes);
  if (mixing.length) {
    lines.push(
      "",
      "## Mixing methods: each client's pick in its last-round model, per seed",
      "",
      "Picked by the client on its validation split (carved from its training data). perfit-mix: the weight λ " +
        "of its own B (0 = the average, 1 = its own); flora-mix: the weight s of its own slot in the stack it " +
        "merges (1 = FLoRA's stack).",
      "",
    );
    lines.push(`| client | ${mixing.map((x) => x.method).join(" | ")} |`);
    lines.push(`|---|${mixing.map(() => "---").join("|")}|`);
    for (const c of ref.clients) {
      const cells = mixing.map((x) =>
        x.runs.map((q) => q.rounds.at(-1)?.clients.find((y) => y.clientId === c.id)?.mix ?? "-").join(" / ")
      );
      lines.push(`| ${c.id} | ${cells.join(" | ")} |`);
    }
  }
  // A stacking method's slots are disjoint and its LoRA fresh every round: no position means the same in two clients.
  const withMasks = s.filter((x) => strategyFor(x.method).personalMask && !strategyFor(x.method).stacks);
  if (withMasks.length) {
    lines.push(
      "",
      "## Final masks: overlap with other clients (Jaccard, global layout) and share of kept positions in A",
      "",
    );
    lines.push(`| client | ${withMasks.map((x) => `${x.method} Jaccard | ${x.method} in A`).join(" | ")} |`);
    lines.push(`|---|${withMasks.map(() => "---:|---:").join("|")}|`);
    for (const c of ref.clients) {
      const cells = withMasks.map((x) => {
        const m = x.runs[0].maskStats.find((q) => q.id === c.id)!;
        return `${m.meanJaccard.toFixed(3)} | ${(m.fractionInA * 100).toFixed(0)}%`;
      });
      lines.push(`| ${c.id} | ${cells.join(" | ")} |`);
    }
  }
  lines.push("", "## Mean personalized perplexity per round", "");
  lines.push(`| method | ${ref.rounds.map((r) => `round ${r.round}`).join(" | ")} |`);
  lines.push(`|---|${ref.rounds.map(() => "---:").join("|")}|`);
  for (const x of s) lines.push(`| ${x.method} | ${x.curve.map((v) => v.toFixed(3)).join(" | ")} |`);
  lines.push("");
  return lines.join("\n");
}

/** A method's ROUGE-L cell: mean ± sd over the seeds that have it (× 100), and how many when not all. */
export function rougeCell(x: Pick<MethodSummary, "rouge">): string {
  const fs = x.rouge.flatMap((q) => (q ? [q.meanF * 100] : []));
  if (fs.length === 0) return "-";
  return fs.length === x.rouge.length
    ? meanSd(fs, 2)
    : `${meanSd(fs, 2)} (${fs.length}/${x.rouge.length} seeds)`;
}

/** The paragraph that says how ROUGE-L was made (settings as stored with the passes, and their cost). */
function rougeNote(s: MethodSummary[]): string {
  const passes = s.flatMap((x) => x.rouge.filter((q): q is RunRouge => q !== null));
  const kinds = [
    ...new Set(
      passes.map((q) => `${q.settings.maxExamples} examples, ${q.settings.maxNewTokens} new tokens`),
    ),
  ];
  const secs = passes.map((q) => q.seconds);
  return "ROUGE-L = F1 of the longest common subsequence between a greedy completion and the reference response " +
    "(rouge-score's definition: lowercased, non-alphanumerics dropped, no stemming; runtime/eval/rouge.ts), " +
    "averaged over each client's first held-out examples, then over the clients, × 100 (higher is better). " +
    "Each client's model is the base plus its saved final adapter (the base alone for `base`); the prompt is the one training " +
    `feeds (Alpaca template, truncated as in training); completions stop at EOS. Settings: ${
      kinds.join("; ")
    } per client ` +
    `(\`--rouge --rouge-examples N --rouge-new-tokens N\`); the pass took ${
      mean(secs).toFixed(1)
    } s per run on average ` +
    `(${Math.min(...secs).toFixed(1)}–${Math.max(...secs).toFixed(1)} s, ${passes.length} runs).`;
}

/** Bench entry point (bench/main.ts convention): a short run of every method. */
export async function run(): Promise<string> {
  return await runResults({ ...DEFAULT_RESULTS, rounds: 2, localSteps: 6, maxTrain: 200, maxTest: 24 });
}

/** The results CLI's flags. */
export const resultsCli = defineCli({
  name: "results",
  summary: "Every method on lexicon-instruct, 8 clients (one per category); writes the markdown table.",
  flags: {
    rounds: { type: "int", min: 1, default: DEFAULT_RESULTS.rounds, help: "federated rounds" },
    "local-steps": {
      type: "int",
      min: 1,
      default: DEFAULT_RESULTS.localSteps,
      help: "optimizer steps per round",
    },
    seeds: {
      type: "list",
      value: "0,1,2",
      default: DEFAULT_RESULTS.seeds.map(String),
      validate: seedsCheck,
      help: "one run per seed and method",
    },
    tiers: {
      type: "list",
      choices: Object.keys(DEFAULT_SIM.tiers),
      default: DEFAULT_RESULTS.tiers,
      help: "device tiers assigned to clients in turn",
    },
    "max-train": {
      type: "int",
      min: 1,
      default: DEFAULT_RESULTS.maxTrain,
      help: "training examples per client",
    },
    "max-test": {
      type: "int",
      min: 1,
      default: DEFAULT_RESULTS.maxTest,
      help: "held-out examples per client",
    },
    backend: {
      type: "string",
      choices: BACKENDS,
      default: DEFAULT_RESULTS.backend,
      help: "onnxruntime backend",
    },
    out: {
      type: "string",
      value: "PATH",
      defaultText: "bench/results/perfit.md",
      help: "where the markdown table goes",
    },
    methods: { type: "list", choices: METHODS, default: DEFAULT_RESULTS.methods, help: "methods to run" },
    model: {
      type: "string",
      value: "DIR",
      validate: isDirectory,
      defaultText: "models/perfit-tiny",
      help: "base model folder",
    },
    lr: { type: "number", min: 0, exclusiveMin: true, default: DEFAULT_RESULTS.lr, help: "learning rate" },
    "batch-size": { type: "int", min: 1, default: DEFAULT_RESULTS.batchSize, help: "examples per step" },
    "max-len": { type: "int", min: 2, default: DEFAULT_RESULTS.maxLen, help: "tokens per example, at most" },
    rank: { type: "int", min: 1, default: DEFAULT_RESULTS.rank, help: "LoRA base rank r" },
    targets: {
      type: "list",
      choices: TARGET_CHOICES,
      default: DEFAULT_RESULTS.targets,
      help: "LoRA targets",
    },
    partition: {
      type: "string",
      value: "P",
      default: "category",
      validate: partitionCheck,
      help: "category (one client per category), category:K, or dirichlet:ALPHA (with --clients)",
    },
    clients: { type: "int", min: 2, default: 16, help: "clients of a Dirichlet partition" },
    "save-adapters": {
      type: "string",
      value: "DIR",
      help: "write each run's final personalized PEFT adapters under DIR/<run key>/<client>",
    },
    cache: {
      type: "string",
      value: "DIR",
      help: "reuse finished (method, seed) runs saved under DIR, and save new ones there",
    },
    rouge: {
      type: "boolean",
      help:
        "score every run without a ROUGE-L pass from its adapters under --save-adapters (DIR/<key>.rouge.json)",
    },
    "rouge-examples": {
      type: "int",
      min: 1,
      default: DEFAULT_ROUGE.maxExamples,
      help: "held-out examples per client that ROUGE-L completes and scores, at most",
    },
    "rouge-new-tokens": {
      type: "int",
      min: 1,
      default: DEFAULT_ROUGE.maxNewTokens,
      help: "new tokens per greedy completion, at most (EOS ends it earlier)",
    },
    "cached-only": {
      type: "boolean",
      help: "leave out (method, seed) runs missing from --cache instead of running them",
    },
    knobs: {
      type: "string",
      value: "FILE",
      help: "each method's own knobs, a JSON object of method: knobs (what `deno task tune` writes)",
    },
  },
});

if (import.meta.main) {
  const { values: f } = resultsCli.parse();
  const opts: ResultsOptions = {
    ...DEFAULT_RESULTS,
    rounds: f.rounds,
    localSteps: f["local-steps"],
    seeds: f.seeds.map(Number),
    tiers: f.tiers,
    maxTrain: f["max-train"],
    maxTest: f["max-test"],
    batchSize: f["batch-size"],
    maxLen: f["max-len"],
    lr: f.lr,
    rank: f.rank,
    targets: f.targets,
    backend: f.backend,
    methods: f.methods,
    modelDir: f.model,
    cacheDir: f.cache,
    partition: parsePartition(f.partition, f.clients),
    saveAdaptersDir: f["save-adapters"],
    rouge: f.rouge,
    rougeExamples: f["rouge-examples"],
    rougeNewTokens: f["rouge-new-tokens"],
    cachedOnly: f["cached-only"],
    knobsFile: f.knobs,
    log: (s) => console.error(s),
  };
  try {
    if (f.knobs) opts.knobs = parseKnobsFile(await Deno.readTextFile(f.knobs), f.knobs);
    const md = await runResults(opts);
    const out = f.out ?? new URL("./results/perfit.md", import.meta.url).pathname;
    await Deno.writeTextFile(out, md);
    console.log(md);
    console.error(`wrote ${out}`);
  } catch (e) {
    resultsCli.fail(e);
  }
}
