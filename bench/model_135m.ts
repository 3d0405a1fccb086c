/**
 * The random-weight SmolLM2-135M-shaped model and the fixed batch of the 135M train-step benches,
 * in a module of its own so the Deno bench (bench/model_train_step.ts) and the Chromium page
 * (bench/browser/train_step_page.ts) generate the same weights and tokens from the same seeds, and
 * so their losses can be compared. Nothing here touches Deno or Node, so it bundles for the page.
 */
import { parseConfig } from "../runtime/model/config.ts";
import { type Batch, setKernelWeights } from "../runtime/model/engine.ts";
import type { KernelWeights } from "../runtime/model/train_step.ts";
import { expectedWeightShapes, type Weights } from "../runtime/model/weights.ts";
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

/** Rows and tokens per row of the bench batch. */
export const BENCH_BATCH = 4, BENCH_SEQ = 256;

/**
 * A random-weight model of the bench shape. The linear weights are generated directly in kernel layout
 * (a transposed N(0, 0.02) matrix is another N(0, 0.02) matrix), so no HF-layout copy ever exists:
 * the process holds one copy of the 135M weights (540 MB) instead of briefly two.
 */
export function benchModel(layers?: number): LoadedModel {
  const config = parseConfig({
    ...SMOLLM2_135M,
    num_hidden_layers: layers ?? SMOLLM2_135M.num_hidden_layers,
  });
  const rng = new Rng(0);
  const weights: Weights = new Map();
  const kernel: KernelWeights = new Map();
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("norm.weight")) data.fill(1);
    else rng.fillNormal(data, 0.02);
    if (isLinearWeight(name)) kernel.set(name, { shape: [shape[1], shape[0]], data });
    else {
      weights.set(name, { shape: shape.slice(), data });
      kernel.set(name, { shape: shape.slice(), data });
    }
  }
  const model: LoadedModel = { config, weights, source: "random SmolLM2-135M shape" };
  setKernelWeights(model, kernel);
  return model;
}

/** The bench batch: `BENCH_BATCH` x `BENCH_SEQ` uniform random tokens, the same every step. */
export function benchBatch(vocab: number): Batch {
  const rng = new Rng(1);
  const n = BENCH_BATCH * BENCH_SEQ;
  const lossMask = new Float32Array(n);
  // The last position of a row has nothing to predict.
  for (let i = 0; i < n; i++) lossMask[i] = i % BENCH_SEQ === BENCH_SEQ - 1 ? 0 : 1;
  return {
    inputIds: BigInt64Array.from({ length: n }, () => BigInt(rng.int(vocab))),
    attentionMask: new Float32Array(n).fill(1),
    lossMask,
    batch: BENCH_BATCH,
    seq: BENCH_SEQ,
  };
}
