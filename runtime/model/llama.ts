/**
 * The LLaMA-family decoder (llama, qwen2) as a graph: RMSNorm, rotary embeddings, grouped-query
 * attention with causal + padding mask, SwiGLU MLP, tied or untied LM head, optional biases, and
 * LoRA on any projection. Matches Hugging Face `LlamaForCausalLM` / `Qwen2ForCausalLM` in float32.
 *
 * Weights reach the builder through a callback, so the same code builds a graph whose base weights
 * are initializers (constants), frozen graph inputs (one session serves any base model of the
 * shape), or trainable inputs (full-parameter training).
 */
import { END, type Graph, MASK_VALUE, type Tensor } from "../graph/mod.ts";
import type { ModelConfig } from "./config.ts";
import { TARGET_WEIGHT, type TargetModule } from "./lora.ts";

/**
 * Supplies a base weight by its HF name. Linear weights (`*_proj.weight`, `lm_head.weight`) are asked
 * for in kernel layout [in, out] (the transpose of the HF [out, in] tensor) so no per-step transpose is
 * needed; everything else (embeddings, norms, biases) in HF layout.
 */
export type WeightFn = (name: string, shape: number[]) => Tensor;

/** LoRA tensors of one projection: A [r, in], B [out, r] and their 0/1 masks (f32). */
export interface LoraTensors {
  A: Tensor;
  B: Tensor;
  mA: Tensor;
  mB: Tensor;
}

/** Supplies the LoRA tensors of (layer, module), or undefined when that projection has none. */
export type LoraFn = (layer: number, module: TargetModule) => LoraTensors | undefined;

/** True for weights handed over in kernel layout [in, out]. */
export function isLinearWeight(name: string): boolean {
  return name.endsWith("_proj.weight") || name === "lm_head.weight";
}

/** Transposes a row-major [rows, cols] matrix (HF [out, in] -> kernel [in, out] and back). */
export function transpose2d(
  data: Float32Array,
  rows: number,
  cols: number,
  out = new Float32Array(data.length),
): Float32Array {
  const B = 32;
  for (let i0 = 0; i0 < rows; i0 += B) {
    for (let j0 = 0; j0 < cols; j0 += B) {
      const i1 = Math.min(rows, i0 + B), j1 = Math.min(cols, j0 + B);
      for (let i = i0; i < i1; i++) for (let j = j0; j < j1; j++) out[j * rows + i] = data[i * cols + j];
    }
  }
  return out;
}

/** Rotary tables cos/sin [positions, headDim] in HF's layout (frequencies repeated for both halves). */
export function ropeTables(
  headDim: number,
  theta: number,
  positions: number,
): { cos: Float32Array; sin: Float32Array } {
  const half = headDim / 2;
  const cos = new Float32Array(positions * headDim), sin = new Float32Array(positions * headDim);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      // Same f32 rounding of the inverse frequency as transformers' float32 computation.
      const invFreq = Math.fround(1 / Math.pow(theta, (2 * i) / headDim));
      const a = Math.fround(p * invFreq);
      cos[p * headDim + i] = cos[p * headDim + half + i] = Math.cos(a);
      sin[p * headDim + i] = sin[p * headDim + half + i] = Math.sin(a);
    }
  }
  return { cos, sin };
}

/** Inputs of a decoder graph. */
export interface DecoderIO {
  /** i64 [batch, seq]. */
  inputIds: Tensor;
  /** f32 [batch, seq]: 1 for real tokens, 0 for padding (keys at 0 are never attended to). */
  attentionMask: Tensor;
}

/** Options of `buildDecoder`. */
export interface DecoderOptions {
  lora?: LoraFn;
  /** LoRA scale alpha / baseRank. */
  loraScale?: number;
  /** Longest sequence the rotary table covers (default min(maxPositionEmbeddings, 4096)). */
  maxSeq?: number;
}

/** What the decoder graph yields: logits plus the pieces the fused loss needs. */
export interface DecoderOut {
  /** [batch, seq, vocab]. */
  logits: Tensor;
  /** Final-norm hidden states [batch, seq, hidden]. */
  hidden: Tensor;
  /** Output embedding rows [vocab, hidden] (the tied embedding, or lm_head transposed back). */
  headRows: Tensor;
}

/** Builds the decoder; returns logits [batch, seq, vocab] and the final hidden states. */
export function buildDecoder(
  g: Graph,
  cfg: ModelConfig,
  w: WeightFn,
  io: DecoderIO,
  opts: DecoderOptions = {},
): DecoderOut {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKv, headDim: hd, intermediateSize: F } = cfg;
  const G = nH / nKv;
  const scale = opts.loraScale ?? 1;
  const maxSeq = opts.maxSeq ?? Math.min(cfg.maxPositionEmbeddings, 4096);

  const linear = (x: Tensor, layer: number, module: TargetModule, inF: number, outF: number): Tensor => {
    const base = `model.layers.${layer}.${TARGET_WEIGHT[module]}`;
    let y = g.matmul(x, w(`${base}.weight`, [inF, outF]));
    const hasBias = (module === "q" || module === "k" || module === "v")
      ? cfg.qkvBias
      : module === "o"
      ? cfg.oBias
      : cfg.mlpBias;
    if (hasBias) y = g.add(y, w(`${base}.bias`, [outF]));
    const l = opts.lora?.(layer, module);
    if (l) {
      // The masks multiply the values, so the gradient of a masked position is exactly zero.
      const a = g.transposeLast(g.mul(l.A, l.mA));
      const b = g.transposeLast(g.mul(l.B, l.mB));
      y = g.add(y, g.mul(g.matmul(g.matmul(x, a), b), scale));
    }
    return y;
  };

  const x0 = g.gather(w("model.embed_tokens.weight", [cfg.vocabSize, H]), io.inputIds, 0); // [B, S, H]
  const [B, S] = io.inputIds.shape;

  // Additive attention mask [B, 1, 1, S, S]: causal plus padded keys.
  const causal = g.causalMask(S);
  const padKeys = g.mul(g.sub(1, io.attentionMask), MASK_VALUE); // [B, S]
  const mask = g.add(causal, g.reshape(padKeys, [B, 1, 1, 1, S]));

  const { cos, sin } = ropeTables(hd, cfg.ropeTheta, maxSeq);
  const cosT = g.slice(g.constant(cos, [maxSeq, hd]), [0], [S], [0]);
  const sinT = g.slice(g.constant(sin, [maxSeq, hd]), [0], [S], [0]);
  const rope = (t: Tensor): Tensor => {
    const r = t.rank - 1;
    const x1 = g.slice(t, [0], [hd / 2], [r]), x2 = g.slice(t, [hd / 2], [END], [r]);
    const rot = g.concat([g.neg(x2), x1], r);
    return g.add(g.mul(t, cosT), g.mul(rot, sinT));
  };
  const invSqrt = 1 / Math.sqrt(hd);

  let x = x0;
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    const h = g.rmsNorm(x, w(`${p}.input_layernorm.weight`, [H]), cfg.rmsNormEps);
    // q heads are grouped by the kv head they share: head = kv * G + j (transformers' repeat_kv order).
    const q = g.transpose(g.reshape(linear(h, i, "q", H, nH * hd), [B, S, nKv, G, hd]), [0, 2, 3, 1, 4]); // [B,nKv,G,S,hd]
    const k = g.transpose(g.reshape(linear(h, i, "k", H, nKv * hd), [B, S, nKv, 1, hd]), [0, 2, 3, 1, 4]); // [B,nKv,1,S,hd]
    const v = g.transpose(g.reshape(linear(h, i, "v", H, nKv * hd), [B, S, nKv, 1, hd]), [0, 2, 3, 1, 4]);
    const qr = g.mul(rope(q), invSqrt);
    const kr = rope(k);
    const scores = g.add(g.matmul(qr, g.transposeLast(kr)), mask); // [B,nKv,G,S,S]
    const att = g.matmul(g.softmax(scores, -1), v); // [B,nKv,G,S,hd]
    const merged = g.reshape(g.transpose(att, [0, 3, 1, 2, 4]), [B, S, nH * hd]);
    x = g.add(x, linear(merged, i, "o", nH * hd, H));

    const h2 = g.rmsNorm(x, w(`${p}.post_attention_layernorm.weight`, [H]), cfg.rmsNormEps);
    const act = g.mul(g.silu(linear(h2, i, "gate", H, F)), linear(h2, i, "up", H, F));
    x = g.add(x, linear(act, i, "down", F, H));
  }
  const xn = g.rmsNorm(x, w("model.norm.weight", [H]), cfg.rmsNormEps);
  if (cfg.tieWordEmbeddings) {
    const emb = w("model.embed_tokens.weight", [cfg.vocabSize, H]);
    return { logits: g.matmul(xn, g.transposeLast(emb)), hidden: xn, headRows: emb };
  }
  const head = w("lm_head.weight", [H, cfg.vocabSize]);
  return { logits: g.matmul(xn, head), hidden: xn, headRows: g.transposeLast(head) };
}

/**
 * Per-token negative log-likelihood [batch, seq] of `targets` (i64 [batch, seq], position t holds
 * token t+1): logsumexp(logits) - hidden . headRow[target].
 *
 * Written this way, rather than as LogSoftmax + pick, so the backward pass holds no [batch, seq, vocab]
 * one-hot or log-softmax gradient: the target logit is a [batch, seq, hidden] dot product, and the
 * logsumexp gradient is one softmax. The max shift goes through an i64 cast, which carries no gradient
 * (the logsumexp value and gradient do not depend on the shift, so this is exact).
 */
export function tokenNll(g: Graph, out: DecoderOut, targets: Tensor): Tensor {
  const shift = g.cast(g.cast(g.reduceMax(out.logits, [-1], true), "i64"), "f32");
  const lse = g.add(g.log(g.reduceSum(g.exp(g.sub(out.logits, shift)), [-1], false)), g.squeeze(shift, [-1]));
  const target = g.reduceSum(g.mul(out.hidden, g.gather(out.headRows, targets, 0)), [-1], false);
  return g.sub(lse, target);
}
