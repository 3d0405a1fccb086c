/** Loads a whole model (config, f32 weights, tokenizer) from a folder, URL or hub id. */
import { type ModelConfig, parseConfig } from "./config.ts";
import { readJsonOptional, resolveSource } from "./hub.ts";
import { loadTokenizer, type ModelTokenizer } from "./tokenizer.ts";
import { kernelTensor, type KernelWeights } from "./train_step.ts";
import { checkWeightTensor, expectedWeightShapes, forEachWeight, WeightsError } from "./weights.ts";

/** A model ready for the engine. */
export interface LoadedModel {
  config: ModelConfig;
  /**
   * The base weights, held once: HF names, f32, in the layout the engine's graphs read (linear weights
   * transposed to [in, out], the others as in the checkpoint; see `toKernelLayout`). Engines feed or
   * bake these very arrays, so a client holds the frozen base once. HF layout, where a file format
   * needs it, is `fromKernelLayout(kernelWeights)`; a merged export re-reads the model folder.
   */
  kernelWeights: KernelWeights;
  /** Absent when the source has no tokenizer files. */
  tokenizer?: ModelTokenizer;
  /** Where it came from (absolute folder, URL or hub id). */
  source: string;
}

/** Options of `loadModel`. */
export interface LoadOptions {
  /** Skip the tokenizer (e.g. a weights-only benchmark model). */
  tokenizer?: boolean;
}

/**
 * Reads `config.json`, the safetensors weights (single or sharded; f32/f16/bf16) and the tokenizer,
 * and checks the weights against the config. Tensors the config does not read (a tied model's
 * `lm_head.weight`) are dropped.
 */
export async function loadModel(dirOrUrl: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const src = await resolveSource(dirOrUrl);
  const raw = await readJsonOptional(src, "config.json");
  if (raw === null) throw new Error(`no config.json at ${src.location}`);
  const config = parseConfig(raw);
  const expected = expectedWeightShapes(config);
  const kernelWeights: KernelWeights = new Map();
  // Checked and put in kernel layout as each tensor is read: a linear weight's HF-layout array lives
  // only until its transpose exists, so loading peaks at the weights plus one tensor.
  await forEachWeight(src, (name, w) => {
    const shape = expected.get(name);
    if (!shape) return;
    checkWeightTensor(name, w, shape);
    kernelWeights.set(name, kernelTensor(name, w));
  });
  for (const [name, shape] of expected) {
    if (!kernelWeights.has(name)) {
      throw new WeightsError(`checkpoint lacks weight ${name} (shape [${shape}])`);
    }
  }
  let tokenizer: ModelTokenizer | undefined;
  if (opts.tokenizer !== false && (await readJsonOptional(src, "tokenizer.json")) !== null) {
    tokenizer = await loadTokenizer(src);
  }
  return { config, kernelWeights, tokenizer, source: src.location };
}
