/**
 * One federated run on a data folder with a model folder: the shared shell behind `deno task demo`,
 * `deno task simulate` and the results table.
 */
import { loadModel } from "../model/engine.ts";
import { type ClientData, partition, type PartitionSpec, splitValidation } from "./partition.ts";
import { deriveSeed } from "../data/rng.ts";
import { ProgressBar } from "./progress.ts";
import { engineFactory, loadFolder, PRETRAIN_STRIDE } from "./setup.ts";
import { simulate } from "./simulate.ts";
import { remoteCoordinator } from "./coordinator_link.ts";
import { writePeftAdapter } from "../export/write.ts";
import { toHfConfig } from "../model/config.ts";
import { strategyFor } from "./strategies.ts";
import type { SimConfig, SimResult, SimRound } from "./types.ts";

/** Where the bundled base model and data live, relative to this module. */
export const BUNDLED_MODEL = new URL("../../models/perfit-tiny", import.meta.url).pathname;
export const BUNDLED_DATA = new URL("../../datasets/lexicon-instruct", import.meta.url).pathname;

/** Options of a run beyond the simulation config. */
export interface RunOptions {
  modelDir?: string;
  dataDir?: string;
  partition: PartitionSpec;
  backend?: "auto" | "node" | "wasm" | "webgpu";
  batchSize: number;
  maxLen: number;
  maxTrain: number;
  maxTest: number;
  testFraction?: number;
  /**
   * What the clients are scored on: their test split (the results), or a validation split carved from
   * their training data (`validationShare` of it, trained on by no one) for choosing knobs without
   * seeing a test example (bench/tune.ts).
   */
  evaluateOn?: "test" | "validation";
  validationShare?: number;
  /** Skip the records the bundled base was pre-trained on (default: when using the bundled data). */
  skipPretrained?: boolean;
  /** Show a progress bar on stderr. */
  progress?: boolean;
  /** Drive a running coordinator (`deno task serve`) instead of the app in this process. */
  server?: { url: string; adminToken: string };
  /** Write each client's personalized adapter as a PEFT folder `DIR/<client>/` after the last round. */
  saveAdapters?: string;
  onRound?: (r: SimRound) => void;
}

/**
 * The clients of a run: the data folder partitioned with the run's seed and caps. Anything that must
 * see a run's exact splits again (the ROUGE-L pass over saved adapters) calls this, not a copy of it.
 */
export async function loadClients(
  seed: number,
  opts: Pick<
    RunOptions,
    | "dataDir"
    | "partition"
    | "maxTrain"
    | "maxTest"
    | "testFraction"
    | "skipPretrained"
    | "evaluateOn"
    | "validationShare"
  >,
): Promise<ClientData[]> {
  // The bundled base saw every 4th record of the bundled data; other data folders are used whole.
  const skip = opts.skipPretrained ?? (opts.dataDir === undefined || opts.dataDir === BUNDLED_DATA);
  const examples = await loadFolder(opts.dataDir ?? BUNDLED_DATA, { skipEvery: skip ? PRETRAIN_STRIDE : 0 });
  const clients = partition(examples, opts.partition, {
    seed,
    testFraction: opts.testFraction ?? 0.1,
    maxTrain: opts.maxTrain,
    maxTest: opts.maxTest,
  });
  if ((opts.evaluateOn ?? "test") === "test") return clients;
  // The test split goes unused: a tuned knob has then never been scored on it.
  return clients.map((c) => {
    const { fit, validation } = splitValidation(
      c.train,
      opts.validationShare ?? 0.1,
      deriveSeed(seed, 0x7e57),
    );
    return { ...c, train: fit, test: validation.slice(0, opts.maxTest) };
  });
}

/** Loads model and data, partitions, and runs the simulation. */
export async function runFederated(cfg: SimConfig, opts: RunOptions): Promise<SimResult> {
  const modelDir = opts.modelDir ?? BUNDLED_MODEL;
  let model;
  try {
    model = await loadModel(modelDir);
  } catch (e) {
    throw new Error(`cannot load the base model from ${modelDir}: ${(e as Error).message}`);
  }
  if (!model.tokenizer) throw new Error(`model at ${modelDir} has no tokenizer`);
  const clients = await loadClients(cfg.seed, opts);
  const factory = engineFactory(model, cfg, opts.backend ?? "auto");
  const trains = strategyFor(cfg.method).trains;
  const perRound = clients.length * ((trains ? cfg.localSteps : 0) + 1);
  const bar = opts.progress ? new ProgressBar(cfg.rounds * perRound) : undefined;
  let round = 1;
  const result = await simulate(cfg, {
    clients,
    tokenizer: model.tokenizer,
    engineFactory: factory,
    modelConfig: toHfConfig(model.config) as Record<string, unknown>,
    batchSize: opts.batchSize,
    maxLen: opts.maxLen,
    evalBatchSize: opts.batchSize * 2,
    onStep: (id, s, n) => {
      // Search rounds may run a few extra steps; the bar only counts the nominal ones.
      if (s <= cfg.localSteps) bar?.tick(`${cfg.method} round ${round}/${cfg.rounds} train ${id} ${s}/${n}`);
    },
    onEval: (id) => bar?.tick(`${cfg.method} round ${round}/${cfg.rounds} eval ${id}`),
    coordinator: opts.server ? remoteCoordinator(opts.server.url, opts.server.adminToken) : undefined,
    baseModel: modelDir,
    inspect: opts.saveAdapters === undefined ? undefined : async (r, views) => {
      if (r !== cfg.rounds) return;
      for (const v of views) {
        // The model each client would export (FedDPA's fixed mix, FLoRA's merged stacks), as a PEFT folder.
        const exported = v.exported();
        if (exported) {
          await writePeftAdapter(`${opts.saveAdapters}/${v.id}`, { ...exported, baseModel: modelDir });
        }
      }
    },
    onRound: (r) => {
      bar?.clear();
      round = r.round + 1;
      opts.onRound?.(r);
    },
  });
  bar?.clear();
  result.backend = factory.backendName();
  return result;
}

/** A fixed-width text table of one round (what the demo prints). */
export function formatRound(r: SimRound): string {
  const lines = [
    `round ${r.round}  mean personalized perplexity ${r.meanPerplexity.toFixed(3)}  (${
      r.seconds.toFixed(1)
    } s)`,
  ];
  lines.push(
    `  ${"client".padEnd(16)} ${"e".padStart(2)} ${"ppl".padStart(9)} ${"loss".padStart(7)} ${
      "upload B".padStart(9)
    } mask`,
  );
  for (const c of r.clients) {
    lines.push(
      `  ${c.clientId.padEnd(16)} ${String(c.expansion).padStart(2)} ${c.perplexity.toFixed(3).padStart(9)} ${
        (c.meanLoss === null ? "-" : c.meanLoss.toFixed(3)).padStart(7)
      } ${String(c.uploadBytes).padStart(9)} ${c.maskMode ?? "-"}`,
    );
  }
  return lines.join("\n");
}
