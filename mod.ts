/**
 * Perfit: personalized federated instruction tuning (PerFIT) of language models on the edge.
 *
 * One library for Deno, Node and browsers. Data flows one way:
 * dataset → tokens → graph → ORT session → update → coordinator → aggregate → personalized slice.
 *
 * A PerFIT client in Deno (the browser page runs the same two calls):
 *
 * ```ts
 * import { engineTrainer, FederatedClient, loadModel } from "./mod.ts";
 * const model = await loadModel("models/perfit-tiny");
 * const trainer = engineTrainer({ model, tokenizer: model.tokenizer!, data: { id: "me", train, test } });
 * const client = await FederatedClient.create({ serverUrl, runId, trainer });
 * await client.run(); // join, then per round: task, slice, search/prune/train, upload; resumes after a crash
 * ```
 *
 * A simulated federation is the same clients against the coordinator's Hono app in process (or a
 * running coordinator): `simulate(cfg, inputs)`, or `runFederated(cfg, options)` on data and model
 * folders. In process both need Deno with `--unstable-kv` (that coordinator keeps its state in Deno KV);
 * against a running coordinator (`remoteCoordinator`) they run under Node too.
 *
 * Import it from anywhere, with no config and no flag beyond permissions (its packages are `npm:`
 * specifiers pinned to package.json's versions, in runtime/deps.ts):
 * - Deno, by path or URL: `import { loadModel } from "/path/to/perfit/mod.ts"` (or `https://…/mod.ts`);
 * - npm: `npm install ./perfit-0.1.0.tgz` (`npm run pack` makes it), then `import … from "perfit"` (Deno,
 *   Node);
 * - browsers: `import … from "…/perfit/dist/browser/perfit.js"` (the prebuilt ESM bundle in the tarball).
 *
 * Under Node everything a data owner needs runs (models, data, the engine, `runDataOwner` /
 * `FederatedClient`, PEFT export); the coordinator, the in-process coordinator of `simulate` and the CLIs
 * need Deno and throw a `NeedsDenoError` elsewhere (README, "Under Node").
 *
 * Each area is also exported whole as a namespace (`graph`, `model`, `data`, `perfit`,
 * `federation`, `client`, `exporter`, `evaluation`, `io`), because some helper names (an `Rng`, a
 * `Batch`) exist in more than one area.
 *
 * @module
 */

// The headline API: what a federated client or a simulation needs.
export {
  type Batch,
  Engine,
  type LoadedModel,
  loadModel,
  type LoraSpec,
  type StepResult,
} from "./runtime/model/mod.ts";
export { AdamW, clipGradNorm, cosineSchedule, evaluatePerplexity, trainLora } from "./runtime/model/mod.ts";
export { type Example, loadJsonl, makeBatches } from "./runtime/data/mod.ts";
export {
  type EngineTrainer,
  engineTrainer,
  FederatedClient,
  FederatedClientError,
  LocalLearner,
  runDataOwner,
  type TaskInfo,
  type Trainer,
} from "./runtime/client/mod.ts";
export {
  type CoordinatorLink,
  inProcessCoordinator,
  type Method,
  type MethodStrategy,
  remoteCoordinator,
  runFederated,
  type SimConfig,
  type SimResult,
  simulate,
  STRATEGIES,
  strategyFor,
} from "./runtime/federation/mod.ts";
export {
  defaultTrainSettings,
  parseTrainSettings,
  TRAIN_SETTINGS,
  type TrainSettings,
  trainSettingsDoc,
} from "./runtime/client/train_settings.ts";
export {
  GpuKernels,
  initKernels,
  KernelError,
  type Kernels,
  kernels,
  scalarKernels,
} from "./runtime/kernels/mod.ts";
export { createSession, grad, type GradOptions, Graph, toOnnx } from "./runtime/graph/mod.ts";
export { decodeSafetensors, encodeSafetensors, SafetensorsError } from "./runtime/io/safetensors.ts";
export { peftAdapterFiles, writeMergedModel, writePeftAdapter } from "./runtime/export/mod.ts";
export { clientRouge, greedyGenerate, openDecoder, rougeL } from "./runtime/eval/mod.ts";
export { NeedsDenoError } from "./runtime/deno_only.ts";

// Every area, whole.
export * as graph from "./runtime/graph/mod.ts";
export * as model from "./runtime/model/mod.ts";
export * as data from "./runtime/data/mod.ts";
export * as perfit from "./runtime/perfit/mod.ts";
export * as federation from "./runtime/federation/mod.ts";
export * as client from "./runtime/client/mod.ts";
export * as exporter from "./runtime/export/mod.ts";
export * as evaluation from "./runtime/eval/mod.ts";
export * as io from "./runtime/io/safetensors.ts";
