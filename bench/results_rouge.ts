/**
 * The results table's generation metric: ROUGE-L F1 of greedy completions on each client's test split,
 * from the personalized adapters a run saved (`deno task results --save-adapters DIR`), stored beside the
 * run's cache JSON as `<cache key>.rouge.json`.
 *
 * The test splits are made again with the run's seed and caps (runtime/federation/run.ts `loadClients`,
 * the function the run itself used) and checked against the clients the cached run recorded.
 */
import type { Method, SimResult } from "../runtime/federation/mod.ts";
import { BUNDLED_MODEL, loadClients } from "../runtime/federation/run.ts";
import { strategyFor } from "../runtime/federation/strategies.ts";
import type { PartitionSpec } from "../runtime/federation/partition.ts";
import { type LoadedModel, loadModel } from "../runtime/model/load.ts";
import { readPeftAdapter } from "../runtime/export/peft_read.ts";
import {
  checkRougeSettings,
  type ClientAdapter,
  type ClientRouge,
  clientRouge,
  type RougeSettings,
} from "../runtime/eval/mod.ts";

/** Defaults of `--rouge-examples` and `--rouge-new-tokens`: every test example of the default split (48). */
export const DEFAULT_ROUGE = { maxExamples: 48, maxNewTokens: 32 } as const;

/** What `<key>.rouge.json` holds. */
export interface RunRouge {
  key: string;
  method: Method;
  seed: number;
  settings: RougeSettings;
  /** Mean over the clients that have test examples of their mean F1 (the run's figure, like mean ppl). */
  meanF: number;
  clients: ClientRouge[];
  /** Wall time of the ROUGE pass of this run (loading adapters, generating, scoring). */
  seconds: number;
  /** The base alone (methods that train nothing). */
  noAdapter: boolean;
}

/** The run settings a ROUGE pass needs to rebuild the clients' test splits. */
export interface RougeRunContext {
  modelDir?: string;
  partition: PartitionSpec;
  maxTrain: number;
  maxTest: number;
  maxLen: number;
  backend?: "auto" | "node" | "wasm" | "webgpu";
}

/** Mean F1 over the clients that were scored; refuses a run where none was. */
export function runMeanF(clients: readonly ClientRouge[]): number {
  const fs = clients.map((c) => c.f).filter((f): f is number => f !== null);
  if (fs.length === 0) throw new RangeError("no client has a ROUGE-L score");
  return fs.reduce((a, b) => a + b, 0) / fs.length;
}

/** True when a stored result was made with these settings. */
export function sameRougeSettings(a: RougeSettings, b: RougeSettings): boolean {
  return a.maxExamples === b.maxExamples && a.maxNewTokens === b.maxNewTokens && a.maxLen === b.maxLen;
}

/** Reads `<dir>/<key>.rouge.json`, or null when there is none. */
export async function readRunRouge(dir: string, key: string): Promise<RunRouge | null> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/${key}.rouge.json`)) as RunRouge;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Writes `<dir>/<key>.rouge.json`. */
export async function writeRunRouge(dir: string, r: RunRouge): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/${r.key}.rouge.json`, JSON.stringify(r, null, 1));
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await Deno.stat(p)).isDirectory;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

const models = new Map<string, Promise<LoadedModel>>();

/**
 * ROUGE-L of one finished run: each client's saved adapter (`<adaptersDir>/<key>/<client>/`) on its test
 * split; a method that trains nothing (the frozen base) is the base model alone. Returns null, saying why
 * through `log`, when a training method's adapters are missing (a run cached before `--save-adapters`).
 */
export async function computeRunRouge(
  ctx: RougeRunContext,
  run: SimResult,
  key: string,
  adaptersDir: string,
  settings: RougeSettings,
  log: (s: string) => void = () => {},
): Promise<RunRouge | null> {
  checkRougeSettings(settings);
  const t0 = performance.now();
  const noAdapter = !strategyFor(run.method).trains;
  const dir = `${adaptersDir}/${key}`;
  if (!noAdapter) {
    const missing = [];
    for (const c of run.clients) if (!(await isDir(`${dir}/${c.id}`))) missing.push(c.id);
    if (missing.length) {
      log(`${key}: no saved adapters for ${missing.join(", ")} under ${dir}: ROUGE-L skipped`);
      return null;
    }
  }
  const modelDir = ctx.modelDir ?? BUNDLED_MODEL;
  if (!models.has(modelDir)) models.set(modelDir, loadModel(modelDir));
  const model = await models.get(modelDir)!;
  if (!model.tokenizer) throw new Error(`model at ${modelDir} has no tokenizer`);
  const clients = await loadClients(run.config.seed, ctx);
  const byId = new Map(clients.map((c) => [c.id, c]));
  const out: ClientRouge[] = [];
  for (const rc of run.clients) {
    const c = byId.get(rc.id);
    // The same split or nothing: a mismatch means these settings did not make this run.
    if (!c || c.test.length !== rc.test || c.train.length !== rc.train) {
      throw new Error(
        `${key}: client ${rc.id} had ${rc.train}/${rc.test} train/test examples, the rebuilt split has ${
          c ? `${c.train.length}/${c.test.length}` : "no such client"
        }`,
      );
    }
    let adapter: ClientAdapter | undefined;
    if (!noAdapter) {
      const a = await readPeftAdapter(`${dir}/${c.id}`);
      adapter = { layout: a.layout, adapter: a.adapter, scale: a.scale };
    }
    out.push(await clientRouge(model, model.tokenizer, c, adapter, settings, { backend: ctx.backend }));
  }
  const seconds = (performance.now() - t0) / 1000;
  return {
    key,
    method: run.method,
    seed: run.config.seed,
    settings,
    meanF: runMeanF(out),
    clients: out,
    seconds,
    noAdapter,
  };
}
