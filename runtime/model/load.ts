/** Loads a whole model (config, f32 weights, tokenizer) from a folder, URL or hub id. */
import { type ModelConfig, parseConfig } from "./config.ts";
import { readJsonOptional, resolveSource } from "./hub.ts";
import { loadTokenizer, type ModelTokenizer } from "./tokenizer.ts";
import { checkWeights, loadWeights, type Weights } from "./weights.ts";

/** A model ready for the engine. */
export interface LoadedModel {
  config: ModelConfig;
  /** HF names, HF layout, f32. */
  weights: Weights;
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
 * and checks the weights against the config.
 */
export async function loadModel(dirOrUrl: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  const src = await resolveSource(dirOrUrl);
  const raw = await readJsonOptional(src, "config.json");
  if (raw === null) throw new Error(`no config.json at ${src.location}`);
  const config = parseConfig(raw);
  const weights = await loadWeights(src);
  checkWeights(config, weights);
  let tokenizer: ModelTokenizer | undefined;
  if (opts.tokenizer !== false && (await readJsonOptional(src, "tokenizer.json")) !== null) {
    tokenizer = await loadTokenizer(src);
  }
  return { config, weights, tokenizer, source: src.location };
}
