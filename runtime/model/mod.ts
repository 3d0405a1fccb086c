/**
 * Model area: LLaMA-family decoder graphs, loaders (config, safetensors weights, tokenizer), LoRA
 * layout, the training engine and loop, and the tiny-model generator.
 */
export {
  ConfigError,
  loadConfigAuto,
  type ModelConfig,
  type ModelType,
  parseConfig,
  readConfigFile,
  toHfConfig,
} from "./config.ts";
export {
  checkWeights,
  checkWeightTensor,
  decodeWeights,
  expectedWeightShapes,
  forEachWeight,
  loadWeights,
  type Weights,
  WeightsError,
  type WeightTensor,
} from "./weights.ts";
export { loadTokenizer, type ModelTokenizer, TokenizerError, tokenizerFromJson } from "./tokenizer.ts";
export { type LoadedModel, loadModel, type LoadOptions } from "./load.ts";
export {
  type AdapterEntry,
  type AdapterLayout,
  adapterLayout,
  entryView,
  initAdapter,
  LoraError,
  loraScale,
  type LoraSpec,
  moduleDims,
  TARGET_ORDER,
  type TargetModule,
} from "./lora.ts";
export { AdamW, type AdamWOptions, clipGradNorm, cosineSchedule } from "./optim.ts";
export { Rng } from "./rng.ts";
export {
  type Batch,
  batchFeeds,
  Engine,
  EngineError,
  type EngineOptions,
  FullEngine,
  type SessionTuningOptions,
  type StepResult,
} from "./engine.ts";
export {
  evaluatePerplexity,
  type Perplexity,
  trainLora,
  type TrainOptions,
  type TrainResult,
} from "./trainer.ts";
export {
  DEFAULT_CORPUS,
  generateTinyModel,
  initWeights,
  saveTokenizer,
  saveWeights,
  tinyConfig,
  type TinyModelOptions,
} from "./tiny.ts";
export { trainBpe } from "./bpe.ts";
export { fromKernelLayout, kernelTensor, type KernelWeights, toKernelLayout } from "./train_step.ts";
