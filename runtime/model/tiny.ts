/**
 * Generator of tiny LLaMA-family models for tests and as the starting point of pre-training:
 * a config.json, a Transformers.js-loadable byte-level BPE tokenizer trained on a corpus, and
 * seeded weights in safetensors (optionally f16/bf16 or sharded, to exercise every loader path).
 */
import { encodeSafetensors, floatToHalf, type TensorIn } from "../io/safetensors.ts";
import { makeDir, writeBytes, writeText } from "../io/files.ts";
import { type ModelConfig, toHfConfig } from "./config.ts";
import { trainBpe } from "./bpe.ts";
import { Rng } from "./rng.ts";
import { expectedWeightShapes, type Weights } from "./weights.ts";

/** Special tokens of generated tokenizers: id 0 ends a response, id 1 pads. */
export const EOS_TOKEN = "<|endoftext|>";
export const PAD_TOKEN = "<|pad|>";

/** A small built-in corpus so a tokenizer can be generated with no data at hand. */
export const DEFAULT_CORPUS = [
  "The quick brown fox jumps over the lazy dog.",
  'What does the computing term "cache" mean? A small fast memory that holds recent data.',
  "Translate to French: house -> maison. Translate to German: house -> Haus.",
  'Define the word "tree": a tall perennial woody plant with a main trunk.',
  "An acronym: CPU stands for Central Processing Unit.",
  "Hacker slang: a kludge is a clumsy but working solution.",
];

/** Options of `generateTinyModel`. */
export interface TinyModelOptions {
  /** Config overrides (vocabSize is set from the tokenizer). */
  config?: Partial<ModelConfig>;
  /** Texts the tokenizer is trained on. */
  corpus?: string[];
  /** BPE merges to learn. */
  merges?: number;
  seed?: number;
  /** Storage dtype of the weights file. */
  dtype?: "F32" | "F16" | "BF16";
  /** Split the weights over this many shards with an index (default 1 = single file). */
  shards?: number;
  /** Use these weights instead of a seeded init (e.g. a pre-trained model being saved). */
  weights?: Weights;
}

/** The default tiny shape: 2 layers, GQA 4:2 heads, small MLP. */
export function tinyConfig(over: Partial<ModelConfig> = {}): ModelConfig {
  return {
    modelType: "llama",
    vocabSize: 300,
    hiddenSize: 32,
    intermediateSize: 64,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 8,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    maxPositionEmbeddings: 256,
    tieWordEmbeddings: true,
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    eosTokenId: 0,
    padTokenId: 1,
    ...over,
  };
}

/**
 * Seeded initial weights for a config: N(0, 0.02) matrices (GPT-2/LLaMA init), unit norms, and small
 * random biases (random rather than zero so bias gradients and loaders are actually exercised).
 */
export function initWeights(cfg: ModelConfig, seed: number, std = 0.02): Weights {
  const rng = new Rng(seed);
  const w: Weights = new Map();
  for (const [name, shape] of expectedWeightShapes(cfg)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (name.endsWith("norm.weight")) data.fill(1);
    else if (name.endsWith(".bias")) rng.fillNormal(data, 0.02);
    else rng.fillNormal(data, std);
    w.set(name, { shape: shape.slice(), data });
  }
  return w;
}

function toStored(data: Float32Array, dtype: "F32" | "F16" | "BF16"): ArrayBufferView {
  if (dtype === "F32") return data;
  const out = new Uint16Array(data.length);
  if (dtype === "F16") {
    for (let i = 0; i < data.length; i++) out[i] = floatToHalf(data[i]);
  } else {
    const u = new Uint32Array(data.buffer, data.byteOffset, data.length);
    // Round-to-nearest-even on the dropped 16 bits.
    for (let i = 0; i < data.length; i++) out[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Writes weights as `model.safetensors`, or as `shards` files plus `model.safetensors.index.json`. */
export async function saveWeights(
  dir: string,
  weights: Weights,
  opts: { dtype?: "F32" | "F16" | "BF16"; shards?: number } = {},
): Promise<void> {
  const dtype = opts.dtype ?? "F32";
  const shards = Math.max(1, opts.shards ?? 1);
  const names = [...weights.keys()];
  const groups: string[][] = Array.from({ length: shards }, () => []);
  names.forEach((n, i) => groups[Math.floor((i * shards) / names.length)].push(n));
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = shards === 1
      ? "model.safetensors"
      : `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
    const tensors: Record<string, TensorIn> = {};
    for (const n of groups[s]) {
      const w = weights.get(n)!;
      tensors[n] = { dtype, shape: w.shape, data: toStored(w.data, dtype) };
      weightMap[n] = file;
    }
    await writeBytes(`${dir}/${file}`, encodeSafetensors(tensors, { format: "pt" }));
  }
  if (shards > 1) {
    await writeText(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 1),
    );
  }
}

/** Writes the tokenizer files for a trained tokenizer.json. */
export async function saveTokenizer(dir: string, tokenizerJson: unknown, maxLength: number): Promise<void> {
  await writeText(`${dir}/tokenizer.json`, JSON.stringify(tokenizerJson));
  await writeText(
    `${dir}/tokenizer_config.json`,
    JSON.stringify(
      {
        tokenizer_class: "PreTrainedTokenizerFast",
        eos_token: EOS_TOKEN,
        pad_token: PAD_TOKEN,
        bos_token: null,
        unk_token: null,
        add_bos_token: false,
        add_eos_token: false,
        model_max_length: maxLength,
        clean_up_tokenization_spaces: false,
      },
      null,
      1,
    ),
  );
}

/**
 * Generates a tiny model folder at `dir` (created if needed): tokenizer trained on the corpus, config
 * whose vocab matches it, seeded weights. Returns the config. Deterministic for equal options.
 */
export async function generateTinyModel(dir: string, opts: TinyModelOptions = {}): Promise<ModelConfig> {
  await makeDir(dir);
  const bpe = trainBpe(opts.corpus ?? DEFAULT_CORPUS, {
    merges: opts.merges ?? 40,
    specialTokens: [EOS_TOKEN, PAD_TOKEN],
  });
  const cfg = tinyConfig({ ...opts.config, vocabSize: bpe.vocabSize, eosTokenId: 0, padTokenId: 1 });
  await writeText(`${dir}/config.json`, JSON.stringify(toHfConfig(cfg), null, 1));
  await saveTokenizer(dir, bpe.tokenizerJson, cfg.maxPositionEmbeddings);
  await saveWeights(dir, opts.weights ?? initWeights(cfg, opts.seed ?? 0), {
    dtype: opts.dtype,
    shards: opts.shards,
  });
  return cfg;
}
