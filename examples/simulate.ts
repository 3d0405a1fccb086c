/**
 * `deno task simulate`: one federated run with flags, results as JSON and CSV.
 *
 *   deno task simulate --method perfit --clients 8 --rounds 3 --partition category --backend auto --out out/perfit
 *
 * `deno task simulate --help` lists every flag with its default.
 */
import { defineCli, isDirectory } from "../runtime/cli/flags.ts";
import {
  BACKENDS,
  COORDINATOR_FLAGS,
  coordinatorOf,
  partitionCheck,
  TARGET_CHOICES,
} from "../runtime/cli/common.ts";
import {
  DEFAULT_SIM,
  formatRound,
  METHODS,
  OWN_WEIGHT_DEFAULT,
  OWN_WEIGHT_RANGE,
  OWN_WEIGHTED,
  parsePartition,
  resultToCsv,
  runFederated,
  type SimConfig,
} from "../runtime/federation/mod.ts";
import { RANK_PRUNING_DEFAULTS } from "../runtime/client/hetlora_prune.ts";

/** The simulate CLI's flags (also what --help prints). */
export const simulateCli = defineCli({
  name: "simulate",
  summary:
    "One federated run in this process (or against a coordinator with --server); writes OUT.json and OUT.csv.",
  flags: {
    method: { type: "string", value: "M", choices: METHODS, default: "perfit", help: "federated method" },
    clients: {
      type: "int",
      min: 1,
      default: 8,
      help: "clients: the Dirichlet client count; for category partitions a multiple of the 8 categories",
    },
    rounds: { type: "int", min: 1, default: DEFAULT_SIM.rounds, help: "federated rounds" },
    partition: {
      type: "string",
      value: "P",
      default: "category",
      validate: partitionCheck,
      help: "category (one client per category), category:K (K per category) or dirichlet:ALPHA",
    },
    backend: { type: "string", choices: BACKENDS, default: "auto", help: "onnxruntime backend" },
    out: {
      type: "string",
      value: "PATH",
      defaultText: "out/<method>",
      help: "writes PATH.json and PATH.csv",
    },
    "local-steps": {
      type: "int",
      min: 1,
      default: DEFAULT_SIM.localSteps,
      help: "optimizer steps per round",
    },
    rank: { type: "int", min: 1, default: DEFAULT_SIM.rank, help: "LoRA base rank r" },
    alpha: { type: "number", min: 0, exclusiveMin: true, default: DEFAULT_SIM.alpha, help: "LoRA alpha" },
    lr: { type: "number", min: 0, exclusiveMin: true, default: DEFAULT_SIM.lr, help: "learning rate" },
    seed: { type: "int", min: 0, default: DEFAULT_SIM.seed, help: "seed of partition, init and sampling" },
    "max-train": { type: "int", min: 1, default: 400, help: "training examples per client, at most" },
    "max-test": { type: "int", min: 1, default: 32, help: "held-out examples per client, at most" },
    "batch-size": { type: "int", min: 1, default: 8, help: "examples per step" },
    "max-len": { type: "int", min: 2, default: 96, help: "tokens per example, at most" },
    "prune-stages": { type: "int", min: 1, default: DEFAULT_SIM.pruneStages, help: "PerFIT pruning stages" },
    schedule: {
      type: "string",
      choices: ["cubic", "linear", "one-shot"],
      default: DEFAULT_SIM.schedule,
      help: "PerFIT pruning schedule",
    },
    allocation: {
      type: "string",
      choices: ["global", "per-module"],
      default: DEFAULT_SIM.allocation,
      help: "PerFIT budget allocation",
    },
    "research-every": {
      type: "int",
      min: 0,
      default: DEFAULT_SIM.researchEvery,
      help: "re-run the PerFIT search every K rounds; 0 = only in round 1",
    },
    "fraction-fit": {
      type: "number",
      min: 0,
      exclusiveMin: true,
      max: 1,
      default: DEFAULT_SIM.fractionFit,
      help: "fraction of clients sampled per round",
    },
    tiers: {
      type: "list",
      choices: Object.keys(DEFAULT_SIM.tiers),
      default: ["high", "mid", "low"],
      help: "device tiers assigned to clients in turn",
    },
    targets: {
      type: "list",
      choices: TARGET_CHOICES,
      default: DEFAULT_SIM.targets,
      help: "LoRA target modules",
    },
    model: {
      type: "string",
      value: "DIR",
      validate: isDirectory,
      defaultText: "models/perfit-tiny",
      help: "base model folder",
    },
    data: {
      type: "string",
      value: "DIR",
      validate: isDirectory,
      defaultText: "datasets/lexicon-instruct",
      help: "folder of JSONL files, one category per file",
    },
    "proximal-mu": {
      type: "number",
      min: 0,
      default: 0,
      help: "FedProx: μ of the proximal term on the shared positions (0 = off)",
    },
    "own-weight": {
      type: "number",
      min: OWN_WEIGHT_RANGE.min,
      max: OWN_WEIGHT_RANGE.max,
      help: `${
        OWN_WEIGHTED.join(", ")
      }: how many times its weight a client's own upload counts in its slice (default ${OWN_WEIGHT_DEFAULT})`,
    },
    "rank-pruning": {
      type: "boolean",
      help: "HetLoRA: rank self-pruning (train.rankPruning on); off by default",
    },
    "rank-decay": {
      type: "number",
      min: 0,
      exclusiveMin: true,
      max: 1,
      default: RANK_PRUNING_DEFAULTS.decay,
      validate: (v) => (v < 1 ? undefined : "a number below 1"),
      help: "HetLoRA self-pruning: γ, a prune keeps ⌊γ·rank⌋ components",
    },
    "rank-tail-weight": {
      type: "number",
      min: 0,
      default: RANK_PRUNING_DEFAULTS.tailWeight,
      help: "HetLoRA self-pruning: λ of the tail penalty in the local loss",
    },
    "local-weight": {
      type: "number",
      min: 0,
      max: 1,
      default: DEFAULT_SIM.dpa.localWeight,
      help: "FedDPA: the local adapter's weight at evaluation and export (the global's is 1 − it)",
    },
    "local-train-weight": {
      type: "number",
      min: 0,
      exclusiveMin: true,
      max: 1,
      default: DEFAULT_SIM.dpa.localTrainWeight,
      help: "FedDPA: the local adapter's weight while it trains (the frozen global's is 1 − it)",
    },
    combine: {
      type: "string",
      choices: ["fixed", "instance"],
      default: DEFAULT_SIM.dpa.combine,
      help: "FedDPA: --local-weight for every test instance, or a weight per instance by similarity",
    },
    "instance-max-weight": {
      type: "number",
      min: 0,
      max: 1,
      default: DEFAULT_SIM.dpa.instanceMaxWeight,
      help: "FedDPA instance-wise: the global adapter's weight is this × the mean cosine similarity",
    },
    "instance-refs": {
      type: "int",
      min: 1,
      max: 1000,
      default: DEFAULT_SIM.dpa.instanceRefs,
      help: "FedDPA instance-wise: training instances each test instance is compared with",
    },
    "save-adapters": {
      type: "string",
      value: "DIR",
      help: "write each client's PEFT adapter under DIR/<client>",
    },
    ...COORDINATOR_FLAGS,
    quiet: { type: "boolean", help: "no progress bar, no per-round table" },
  },
});

async function main(args: string[]): Promise<number> {
  const { values: f, sources } = simulateCli.parse(args);
  const server = coordinatorOf(f, sources);
  const method = f.method;
  const clients = f.clients;
  let spec = parsePartition(f.partition, clients);
  if (spec.kind === "category" && sources.clients !== "default" && !f.partition.includes(":")) {
    // 8 categories: --clients 16 means two clients per category.
    spec = { kind: "category", clientsPerCategory: Math.max(1, Math.round(clients / 8)) };
  }
  const cfg: SimConfig = {
    ...DEFAULT_SIM,
    method,
    rounds: f.rounds,
    localSteps: f["local-steps"],
    rank: f.rank,
    alpha: f.alpha,
    lr: f.lr,
    seed: f.seed,
    pruneStages: f["prune-stages"],
    schedule: f.schedule,
    allocation: f.allocation,
    researchEvery: f["research-every"],
    proximalMu: f["proximal-mu"],
    dpa: {
      localWeight: f["local-weight"],
      localTrainWeight: f["local-train-weight"],
      combine: f.combine as SimConfig["dpa"]["combine"],
      instanceMaxWeight: f["instance-max-weight"],
      instanceRefs: f["instance-refs"],
    },
    ...(f["rank-pruning"]
      ? { rankPruning: { decay: f["rank-decay"], tailWeight: f["rank-tail-weight"] } }
      : {}),
    ...(f["own-weight"] !== undefined ? { ownWeight: f["own-weight"] } : {}),
    fractionFit: f["fraction-fit"],
    clientTiers: f.tiers,
    targets: f.targets,
  };
  const quiet = f.quiet;
  const result = await runFederated(cfg, {
    modelDir: f.model,
    dataDir: f.data,
    partition: spec,
    backend: f.backend,
    batchSize: f["batch-size"],
    maxLen: f["max-len"],
    maxTrain: f["max-train"],
    maxTest: f["max-test"],
    progress: !quiet,
    onRound: (r) => quiet || console.log(formatRound(r) + "\n"),
    ...(server ? { server } : {}),
    ...(f["save-adapters"] !== undefined ? { saveAdapters: f["save-adapters"] } : {}),
  });
  const out = f.out ?? `out/${method}`;
  const dir = out.includes("/") ? out.slice(0, out.lastIndexOf("/")) : ".";
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${out}.json`, JSON.stringify(result, null, 1));
  await Deno.writeTextFile(`${out}.csv`, resultToCsv(result));
  console.log(
    `wrote ${out}.json and ${out}.csv (${result.wallSeconds.toFixed(1)} s, backend ${result.backend})`,
  );
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    simulateCli.fail(e);
  }
}
