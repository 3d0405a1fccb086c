/**
 * `deno task simulate`: one federated run with flags, results as JSON and CSV.
 *
 *   deno task simulate --method perfit --clients 8 --rounds 3 --partition category --backend auto --out out/perfit
 *
 * --method perfit|fedit|local|base|perfit-random-mask|perfit-e1
 * --partition category | category:K | dirichlet:ALPHA   (--clients sets the Dirichlet client count;
 *   for category partitions a multiple of the category count gives several clients per category)
 * Also: --local-steps --rank --alpha --lr --seed --max-train --max-test --batch-size --max-len
 *       --prune-stages --schedule cubic|linear|one-shot --allocation global|per-module --research-every
 *       --fraction-fit --tiers high,mid,low --targets q,v --model DIR --data DIR --quiet
 */
import {
  DEFAULT_SIM,
  formatRound,
  intFlag,
  type Method,
  METHODS,
  numFlag,
  parseFlags,
  parsePartition,
  resultToCsv,
  runFederated,
  type SimConfig,
} from "../runtime/federation/mod.ts";

const KNOWN = [
  "method",
  "clients",
  "rounds",
  "partition",
  "backend",
  "out",
  "local-steps",
  "rank",
  "alpha",
  "lr",
  "seed",
  "max-train",
  "max-test",
  "batch-size",
  "max-len",
  "prune-stages",
  "schedule",
  "allocation",
  "research-every",
  "fraction-fit",
  "tiers",
  "model",
  "data",
  "targets",
  "quiet",
  "server",
  "admin-token",
  "save-adapters",
  "help",
];

async function main(args: string[]): Promise<number> {
  const f = parseFlags(args, KNOWN);
  if (f.help) {
    console.log(
      "usage: deno task simulate --method perfit --clients 8 --rounds 3 --partition category --backend auto --out out/run",
    );
    return 0;
  }
  const method = (f.method ?? "perfit") as Method;
  if (!METHODS.includes(method)) throw new Error(`unknown --method "${method}" (use ${METHODS.join(", ")})`);
  const clients = intFlag(f, "clients", 8);
  let spec = parsePartition(f.partition ?? "category", clients);
  if (spec.kind === "category" && f.clients !== undefined && !(f.partition ?? "").includes(":")) {
    // 8 categories: --clients 16 means two clients per category.
    spec = { kind: "category", clientsPerCategory: Math.max(1, Math.round(clients / 8)) };
  }
  const schedule = (f.schedule ?? DEFAULT_SIM.schedule) as SimConfig["schedule"];
  if (!["cubic", "linear", "one-shot"].includes(schedule)) throw new Error(`bad --schedule ${schedule}`);
  const allocation = (f.allocation ?? DEFAULT_SIM.allocation) as SimConfig["allocation"];
  if (!["global", "per-module"].includes(allocation)) throw new Error(`bad --allocation ${allocation}`);
  const backend = (f.backend ?? "auto") as "auto" | "node" | "wasm" | "webgpu";
  if (!["auto", "node", "wasm", "webgpu"].includes(backend)) throw new Error(`bad --backend ${backend}`);
  const cfg: SimConfig = {
    ...DEFAULT_SIM,
    method,
    rounds: intFlag(f, "rounds", DEFAULT_SIM.rounds),
    localSteps: intFlag(f, "local-steps", DEFAULT_SIM.localSteps),
    rank: intFlag(f, "rank", DEFAULT_SIM.rank),
    alpha: numFlag(f, "alpha", DEFAULT_SIM.alpha),
    lr: numFlag(f, "lr", DEFAULT_SIM.lr),
    seed: intFlag(f, "seed", DEFAULT_SIM.seed),
    pruneStages: intFlag(f, "prune-stages", DEFAULT_SIM.pruneStages),
    schedule,
    allocation,
    researchEvery: intFlag(f, "research-every", 0),
    fractionFit: numFlag(f, "fraction-fit", 1),
    clientTiers: (f.tiers ?? "high,mid,low").split(","),
    targets: (f.targets ? f.targets.split(",") : DEFAULT_SIM.targets) as SimConfig["targets"],
  };
  const quiet = f.quiet === "true";
  const result = await runFederated(cfg, {
    modelDir: f.model,
    dataDir: f.data,
    partition: spec,
    backend,
    batchSize: intFlag(f, "batch-size", 8),
    maxLen: intFlag(f, "max-len", 96),
    maxTrain: intFlag(f, "max-train", 400),
    maxTest: intFlag(f, "max-test", 32),
    progress: !quiet,
    server: f.server === undefined ? undefined : { url: f.server, adminToken: f["admin-token"] ?? "" },
    saveAdapters: f["save-adapters"],
    onRound: (r) => quiet || console.log(formatRound(r) + "\n"),
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
    console.error(`simulate: ${(e as Error).message}`);
    Deno.exit(2);
  }
}
