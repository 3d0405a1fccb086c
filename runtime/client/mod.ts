/**
 * Client side of federated runs: `FederatedClient` (join, pull task and slice, train, upload,
 * resume), `engineTrainer` over `LocalLearner` (the PerFIT round on the ORT engine: search, prune,
 * masked training, evaluation, in the client's own layout; FedDPA's two-adapter round and mix in
 * feddpa.ts and feddpa_eval.ts; FLoRA's merged base in flora.ts; HetLoRA's rank self-pruning in
 * hetlora_prune.ts), its storage back-ends, the wire
 * format, `runDataOwner` (the `deno task client` process), and the run's global adapter as the admin
 * downloads it (`decodeGlobalAdapter`, `globalPeftAdapter`). The browser page, a Deno process and the
 * simulation all train through these.
 */
export {
  FederatedClient,
  FederatedClientError,
  type FederatedClientOptions,
  type OptimizerKeeper,
  type StepOutcome,
  type TaskInfo,
  type Trainer,
  type TrainerOutput,
} from "./federated_client.ts";
export { type ClientStorage, FileStorage, IndexedDbStorage, MemoryStorage, WebStorage } from "./storage.ts";
export { type DataOwnerOptions, type DataOwnerResult, runDataOwner } from "./data_owner.ts";
export {
  decodeGlobalAdapter,
  encodeGlobalAdapter,
  GLOBAL_ADAPTER_FORMAT,
  type GlobalAdapterBody,
  GlobalAdapterError,
  globalPeftAdapter,
} from "./global_adapter.ts";
export { LocalLearner, type StepHook } from "./local_update.ts";
export { adapterWeights, combineDual, dualFit, leadMask } from "./feddpa.ts";
export { evaluateInstanceWise, type InstanceWeighting } from "./feddpa_eval.ts";
export {
  addTailGradient,
  checkRankPruning,
  heldRank,
  leadingMask,
  nextRank,
  prunedRank,
  RANK_PRUNING_DEFAULTS,
  type RankPruning,
  tailScore,
} from "./hetlora_prune.ts";
export {
  type EngineTrainer,
  engineTrainer,
  type EngineTrainerOptions,
  globalLayoutOf,
  initSeed,
  type LocalHyper,
  localHyper,
  type TrainProgress,
} from "./engine_trainer.ts";
export {
  attachMask,
  decodeSlice,
  decodeUpdate,
  encodeRoundUpdate,
  encodeUpdate,
  isMaskRef,
  type MaskForm,
  type MaskRefUpdate,
  packMask,
  resolveMaskRef,
  SLICE_REVISION,
  unpackMask,
  WireError,
} from "./wire.ts";
