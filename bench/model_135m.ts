/**
 * The random-weight SmolLM2-135M- and SmolLM2-360M-shaped models and the fixed batch of the
 * train-step benches, in a module of its own so the Deno bench (bench/model_train_step.ts) and the
 * Chromium page (bench/browser/train_step_page.ts) generate the same weights and tokens from the
 * same seeds, and so their losses can be compared. Nothing here touches Deno or Node, so it bundles
 * for the page.
 */
import { type ModelConfig, parseConfig } from "../runtime/model/config.ts";
import type { Batch } from "../runtime/model/engine.ts";
import type { KernelWeights } from "../runtime/model/train_step.ts";
import { expectedWeightShapes } from "../runtime/model/weights.ts";
import type { LoadedModel } from "../runtime/model/load.ts";
import { isLinearWeight } from "../runtime/model/llama.ts";
import { Rng } from "../runtime/model/rng.ts";

/** SmolLM2-135M's config.json fields that matter. */
export const SMOLLM2_135M = {
  model_type: "llama",
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  vocab_size: 49152,
  tie_word_embeddings: true,
  rms_norm_eps: 1e-5,
  rope_theta: 100000,
  max_position_embeddings: 8192,
};

/** SmolLM2-360M's config.json fields that matter (the same family: llama, GQA, tied embeddings). */
export const SMOLLM2_360M = {
  ...SMOLLM2_135M,
  hidden_size: 960,
  intermediate_size: 2560,
  num_hidden_layers: 32,
  num_attention_heads: 15,
  num_key_value_heads: 5,
};

/** The bench shapes by name (`--model=135m|360m`). */
export type BenchShape = "135m" | "360m";
export const BENCH_SHAPES: Record<BenchShape, typeof SMOLLM2_135M> = {
  "135m": SMOLLM2_135M,
  "360m": SMOLLM2_360M,
};

/** Parameters of the base model (tied embeddings counted once), from the shapes the loader expects. */
export function parameterCount(config: ModelConfig): number {
  let n = 0;
  for (const shape of expectedWeightShapes(config).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}

/** Rows and tokens per row of the bench batch. */
export const BENCH_BATCH = 4, BENCH_SEQ = 256;

/**
 * A random-weight model of a bench shape (default 135M). The linear weights are generated directly in
 * kernel layout (a transposed N(0, 0.02) matrix is another N(0, 0.02) matrix), the layout a
 * `LoadedModel` holds, so the process holds one copy of the weights (540 MB for 135M, 1447 MB for
 * 360M). `layers` cuts the decoder short, for quick iteration and tests.
 */
export function benchModel(layers?: number, shape: BenchShape = "135m"): LoadedModel {
  const raw = BENCH_SHAPES[shape];
  if (!raw) throw new Error(`unknown bench shape "${shape}": one of ${Object.keys(BENCH_SHAPES).join(", ")}`);
  const config = parseConfig({ ...raw, num_hidden_layers: layers ?? raw.num_hidden_layers });
  const rng = new Rng(0);
  const kernelWeights: KernelWeights = new Map();
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("norm.weight")) data.fill(1);
    else rng.fillNormal(data, 0.02);
    kernelWeights.set(name, { shape: isLinearWeight(name) ? [shape[1], shape[0]] : shape.slice(), data });
  }
  return { config, kernelWeights, source: `random SmolLM2-${shape.toUpperCase()} shape` };
}

/**
 * The bench batch: `batch` x `seq` (default `BENCH_BATCH` x `BENCH_SEQ`) uniform random tokens, the
 * same every step. The tokens are drawn row after row from one seed, so a smaller batch is the
 * leading rows of a larger one at the same `seq`.
 */
export function benchBatch(vocab: number, batch = BENCH_BATCH, seq = BENCH_SEQ): Batch {
  if (!(Number.isInteger(batch) && batch >= 1 && Number.isInteger(seq) && seq >= 2)) {
    throw new Error(`bench batch must be at least 1 x 2 tokens, got ${batch} x ${seq}`);
  }
  const rng = new Rng(1);
  const n = batch * seq;
  const lossMask = new Float32Array(n);
  // The last position of a row has nothing to predict.
  for (let i = 0; i < n; i++) lossMask[i] = i % seq === seq - 1 ? 0 : 1;
  return {
    inputIds: BigInt64Array.from({ length: n }, () => BigInt(rng.int(vocab))),
    attentionMask: new Float32Array(n).fill(1),
    lossMask,
    batch,
    seq,
  };
}
