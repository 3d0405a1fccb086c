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
  /** Each decoder layer's input (the residual stream) [batch, seq, hidden]: checkpoints for `grad`. */
  layerInputs: Tensor[];
  /** Output embedding rows [vocab, hidden] (the tied embedding, or lm_head transposed back). */
  headRows: Tensor;
  /** The head weight as stored: the tied embedding [vocab, hidden] or lm_head in kernel layout [hidden, vocab]. */
  head: { weight: Tensor; layout: "rows" | "cols" };
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
  const layerInputs: Tensor[] = [];
  for (let i = 0; i < cfg.numLayers; i++) {
    layerInputs.push(x);
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
    return {
      logits: g.matmul(xn, g.transposeLast(emb)),
      hidden: xn,
      layerInputs,
      headRows: emb,
      head: { weight: emb, layout: "rows" },
    };
  }
  const head = w("lm_head.weight", [H, cfg.vocabSize]);
  return {
    logits: g.matmul(xn, head),
    hidden: xn,
    layerInputs,
    headRows: g.transposeLast(head),
    head: { weight: head, layout: "cols" },
  };
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

/** Default vocabulary chunk of `chunkedHeadLoss`: [1024 tokens, 8192] f32 logits are 32 MiB. */
export const HEAD_CHUNK = 8192;

/** What `chunkedHeadLoss` yields. */
export interface HeadLoss {
  /** Per-token NLL [batch, seq] (same value as `tokenNll`). */
  nll: Tensor;
  /** Masked mean NLL (scalar) and its parts. */
  loss: Tensor;
  sum: Tensor;
  count: Tensor;
  /** d loss / d hidden [batch, seq, hidden], when asked for. */
  dHidden?: Tensor;
}

/**
 * The LM head, per-token NLL, masked mean loss and (optionally) the loss gradient with respect to the
 * final hidden states, computed over vocabulary chunks so no [batch, seq, vocab] tensor ever exists.
 *
 * Per chunk c: logits_c = hidden @ W_c, lse_c = logsumexp(logits_c), and
 * d_c = softmax(logits_c) * w @ W_c^T with w = lossMask / max(count, 1). Then lse = logsumexp_c(lse_c)
 * and dHidden = sum_c exp(lse_c - lse) * d_c - w * W[target]. Each chunk's logits are dead once its
 * d_c is formed, so the head's working set is a few [batch, seq, chunk] tensors instead of the three
 * to four vocab-wide copies that autodiff of the same loss keeps alive into the backward pass. The
 * caller seeds autodiff with dHidden (`grad(hidden, params, dHidden)`); no node here is differentiated.
 */
export function chunkedHeadLoss(
  g: Graph,
  out: DecoderOut,
  targets: Tensor,
  lossMask: Tensor,
  opts: { chunk?: number; withGrad?: boolean } = {},
): HeadLoss {
  const { weight, layout } = out.head;
  const V = (layout === "rows" ? weight.shape[0] : weight.shape[1]) as number;
  const chunk = Math.max(1, Math.min(V, opts.chunk ?? HEAD_CHUNK));
  const xn = out.hidden;
  const count = g.reduceSum(lossMask, [0, 1]);
  const denom = g.max(count, 1); // an all-padding batch gives loss 0 instead of NaN
  const w3 = g.unsqueeze(g.div(lossMask, denom), [-1]); // [B, S, 1]
  const lses: Tensor[] = [], ds: Tensor[] = [];
  for (let v0 = 0; v0 < V; v0 += chunk) {
    const v1 = Math.min(V, v0 + chunk);
    // rows: [Vc, H] slice of the embedding; cols: [H, Vc] slice of lm_head.
    const wc = layout === "rows" ? g.slice(weight, [v0], [v1], [0]) : g.slice(weight, [v0], [v1], [1]);
    const logits = g.matmul(xn, layout === "rows" ? g.transposeLast(wc) : wc); // [B, S, Vc]
    const m = g.reduceMax(logits, [-1], true);
    const e = g.exp(g.sub(logits, m));
    const s = g.reduceSum(e, [-1], true);
    lses.push(g.add(m, g.log(s)));
    if (opts.withGrad) {
      const pw = g.mul(e, g.div(w3, s));
      ds.push(g.matmul(pw, layout === "rows" ? wc : g.transposeLast(wc))); // [B, S, H]
    }
  }
  let lse: Tensor, ratios: Tensor | undefined;
  if (lses.length === 1) lse = lses[0];
  else {
    const all = g.concat(lses, -1); // [B, S, chunks]
    const m = g.reduceMax(all, [-1], true);
    lse = g.add(m, g.log(g.reduceSum(g.exp(g.sub(all, m)), [-1], true)));
    if (opts.withGrad) ratios = g.exp(g.sub(all, lse));
  }
  const rowsAt = layout === "rows"
    ? g.gather(weight, targets, 0) // [B, S, H]
    : g.transpose(g.gather(weight, targets, 1), [1, 2, 0]); // [H, B, S] -> [B, S, H]
  const target = g.reduceSum(g.mul(xn, rowsAt), [-1], true);
  const nll = g.squeeze(g.sub(lse, target), [-1]);
  const sum = g.reduceSum(g.mul(nll, lossMask), [0, 1]);
  const res: HeadLoss = { nll, loss: g.div(sum, denom), sum, count };
  if (opts.withGrad) {
    let d = ds.length === 1 ? ds[0] : g.mul(ds[0], g.slice(ratios!, [0], [1], [2]));
    for (let c = 1; c < ds.length; c++) d = g.add(d, g.mul(ds[c], g.slice(ratios!, [c], [c + 1], [2])));
    res.dHidden = g.sub(d, g.mul(rowsAt, w3));
  }
  return res;
}
