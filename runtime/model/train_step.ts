/**
 * The graphs the engine runs, built once per (config, LoRA layout):
 * - LoRA train step: loss, gradient and Taylor importance |theta * grad| of every A/B tensor;
 * - forward-only eval: summed response NLL and token count;
 * - forward-only hidden state at one picked position per row (FedDPA's instance representation);
 * - full-parameter train step: loss and gradient of every base weight (pre-training).
 *
 * Input names (all graphs): `input_ids` i64 [batch, seq], `attention_mask` f32, `targets` i64
 * (position t holds token t+1), `loss_mask` f32; LoRA tensors `lora.<entry>` with masks `mask.<entry>`;
 * base weights fed as inputs are `w.<hf name>` (linear weights in [in, out] layout).
 */
import { grad, Graph, type Tensor, toOnnx } from "../graph/mod.ts";
import type { ModelConfig } from "./config.ts";
import {
  buildDecoder,
  chunkedHeadLoss,
  type DecoderOut,
  isLinearWeight,
  type LoraFn,
  type LoraTensors,
  tokenNll,
  transpose2d,
} from "./llama.ts";
import type { AdapterLayout, TargetModule } from "./lora.ts";
import { expectedWeightShapes, type Weights, type WeightTensor } from "./weights.ts";

/** How base weights enter a graph: baked-in initializers, or inputs fed on every run. */
export type WeightMode = "constants" | "inputs";

/** The serialized graphs plus the names needed to feed them. */
export interface BuiltGraph {
  onnx: Uint8Array;
  /** `w.<name>` inputs, in the order the graph declares them (empty for constants). */
  weightInputs: string[];
}

/** Kernel-layout copy of one weight: linear [out, in] matrices transposed to [in, out]. */
export type KernelWeights = Map<string, { shape: number[]; data: Float32Array }>;

interface Common {
  g: Graph;
  targets: Tensor;
  lossMask: Tensor;
  out: DecoderOut;
  weightInputs: Map<string, Tensor>;
}

function decoderGraph(
  cfg: ModelConfig,
  mode: WeightMode,
  kernel: KernelWeights | undefined,
  lora?: LoraFn,
  scale?: number,
  g = new Graph(),
): Common {
  const inputIds = g.input("input_ids", "i64", ["batch", "seq"]);
  const attentionMask = g.input("attention_mask", "f32", ["batch", "seq"]);
  const targets = g.input("targets", "i64", ["batch", "seq"]);
  const lossMask = g.input("loss_mask", "f32", ["batch", "seq"]);
  const weightInputs = new Map<string, Tensor>();
  const cache = new Map<string, Tensor>();
  const w = (name: string, shape: number[]) => {
    let t = cache.get(name);
    if (t) return t;
    if (mode === "inputs") {
      t = g.input(`w.${name}`, "f32", shape);
      weightInputs.set(name, t);
    } else {
      const k = kernel?.get(name);
      if (!k) throw new Error(`weight ${name} is missing`);
      t = g.constant(k.data, shape);
    }
    cache.set(name, t);
    return t;
  };
  const out = buildDecoder(g, cfg, w, { inputIds, attentionMask }, { lora, loraScale: scale });
  return { g, targets, lossMask, out, weightInputs };
}

function declareLora(g: Graph, layout: AdapterLayout): { fn: LoraFn; params: { name: string; t: Tensor }[] } {
  const byKey = new Map<string, LoraTensors>();
  const params: { name: string; t: Tensor }[] = [];
  const pending = new Map<string, Partial<LoraTensors>>();
  for (const e of layout.entries) {
    const key = `${e.layer}.${e.module}`;
    const p = pending.get(key) ?? {};
    const t = g.input(`lora.${e.name}`, "f32", e.shape);
    const m = g.input(`mask.${e.name}`, "f32", e.shape);
    if (e.kind === "A") {
      p.A = t;
      p.mA = m;
    } else {
      p.B = t;
      p.mB = m;
    }
    params.push({ name: e.name, t });
    pending.set(key, p);
    if (p.A && p.B) byKey.set(key, p as LoraTensors);
  }
  return { fn: (layer: number, module: TargetModule) => byKey.get(`${layer}.${module}`), params };
}

function maskedMean(g: Graph, nll: Tensor, lossMask: Tensor): { loss: Tensor; sum: Tensor; count: Tensor } {
  const sum = g.reduceSum(g.mul(nll, lossMask), [0, 1]);
  const count = g.reduceSum(lossMask, [0, 1]);
  // max(count, 1): an all-padding batch gives loss 0 instead of NaN.
  return { loss: g.div(sum, g.max(count, 1)), sum, count };
}

/** Options of the LoRA graph builders. */
export interface LoraGraphOptions {
  /** Vocabulary chunk of the LM head and loss (default HEAD_CHUNK; see `chunkedHeadLoss`). */
  headChunk?: number;
  /**
   * Recompute each decoder layer's activations in the backward pass from the layer's input instead of
   * keeping them from the forward pass (activation checkpointing): one more forward pass of compute,
   * and the step holds one layer's activations instead of every layer's. Default false.
   */
  checkpoint?: boolean;
}

/**
 * LoRA train-step graph: outputs `loss`, `grad.<entry>`, `imp.<entry>` (= |value * grad|).
 *
 * The head and loss are differentiated by hand, over vocabulary chunks (`chunkedHeadLoss`), and
 * autodiff starts from the final hidden states: this keeps every [batch, seq, vocab] tensor out of the
 * step (the LM head's gradient is never needed, as base weights are frozen).
 */
export function buildLoraTrainGraph(
  cfg: ModelConfig,
  layout: AdapterLayout,
  scale: number,
  mode: WeightMode,
  kernel?: KernelWeights,
  opts: LoraGraphOptions = {},
): BuiltGraph {
  const g = new Graph();
  const lora = declareLora(g, layout);
  const c = decoderGraph(cfg, mode, kernel, lora.fn, scale, g);
  const head = chunkedHeadLoss(g, c.out, c.targets, c.lossMask, { chunk: opts.headChunk, withGrad: true });
  const loss = head.loss;
  const grads = grad(
    c.out.hidden,
    lora.params.map((p) => p.t),
    head.dHidden,
    opts.checkpoint ? { checkpoints: c.out.layerInputs } : {},
  );
  g.output("loss", loss);
  lora.params.forEach((p, i) => {
    g.output(`grad.${p.name}`, grads[i]);
    g.output(`imp.${p.name}`, g.abs(g.mul(p.t, grads[i])));
  });
  return { onnx: toOnnx(g, { name: "perfit_lora_train" }), weightInputs: [...c.weightInputs.keys()] };
}

/** Forward-only eval graph (LoRA applied): outputs `nll_sum` and `tokens` over loss-mask positions. */
export function buildLoraEvalGraph(
  cfg: ModelConfig,
  layout: AdapterLayout,
  scale: number,
  mode: WeightMode,
  kernel?: KernelWeights,
  opts: LoraGraphOptions = {},
): BuiltGraph {
  const g = new Graph();
  const lora = declareLora(g, layout);
  const c = decoderGraph(cfg, mode, kernel, lora.fn, scale, g);
  const { sum, count } = chunkedHeadLoss(g, c.out, c.targets, c.lossMask, { chunk: opts.headChunk });
  g.output("nll_sum", sum);
  g.output("tokens", count);
  return { onnx: toOnnx(g, { name: "perfit_lora_eval" }), weightInputs: [...c.weightInputs.keys()] };
}

/**
 * Forward-only graph (LoRA applied) of the final-norm hidden state at one position per row: outputs
 * `hidden` [batch, hidden] = Σ_t h[b, t, :] · loss_mask[b, t], so `loss_mask` carries a one-hot pick
 * per row (FedDPA's instance representation: the state at the last prompt token).
 */
export function buildLoraHiddenGraph(
  cfg: ModelConfig,
  layout: AdapterLayout,
  scale: number,
  mode: WeightMode,
  kernel?: KernelWeights,
): BuiltGraph {
  const g = new Graph();
  const lora = declareLora(g, layout);
  const c = decoderGraph(cfg, mode, kernel, lora.fn, scale, g);
  g.output("hidden", g.reduceSum(g.mul(c.out.hidden, g.unsqueeze(c.lossMask, [2])), [1]));
  return { onnx: toOnnx(g, { name: "perfit_lora_hidden" }), weightInputs: [...c.weightInputs.keys()] };
}

/** Full-parameter train graph: every base weight is a trainable input; outputs `loss`, `grad.<hf name>`. */
export function buildFullTrainGraph(cfg: ModelConfig): BuiltGraph {
  const c = decoderGraph(cfg, "inputs", undefined);
  const { loss } = maskedMean(c.g, tokenNll(c.g, c.out, c.targets), c.lossMask);
  const names = [...c.weightInputs.keys()];
  const grads = grad(loss, names.map((n) => c.weightInputs.get(n)!));
  c.g.output("loss", loss);
  names.forEach((n, i) => c.g.output(`grad.${n}`, grads[i]));
  return { onnx: toOnnx(c.g, { name: "perfit_full_train" }), weightInputs: names };
}

/** Forward-only eval graph without LoRA (base weights as inputs): `nll_sum`, `tokens`. */
export function buildFullEvalGraph(cfg: ModelConfig): BuiltGraph {
  const c = decoderGraph(cfg, "inputs", undefined);
  const { sum, count } = maskedMean(c.g, tokenNll(c.g, c.out, c.targets), c.lossMask);
  c.g.output("nll_sum", sum);
  c.g.output("tokens", count);
  return { onnx: toOnnx(c.g, { name: "perfit_full_eval" }), weightInputs: [...c.weightInputs.keys()] };
}

/** Converts HF-layout weights into the kernel layout the graphs take (linear weights transposed). */
export function toKernelLayout(cfg: ModelConfig, weights: Weights): KernelWeights {
  const out: KernelWeights = new Map();
  for (const name of expectedWeightShapes(cfg).keys()) {
    const w = weights.get(name);
    if (!w) throw new Error(`weight ${name} is missing`);
    out.set(name, kernelTensor(name, w));
  }
  return out;
}

/** One HF-layout weight in kernel layout: a linear weight transposed, any other one shared as it is. */
export function kernelTensor(name: string, w: WeightTensor): { shape: number[]; data: Float32Array } {
  if (!isLinearWeight(name)) return { shape: w.shape.slice(), data: w.data };
  const [rows, cols] = w.shape;
  return { shape: [cols, rows], data: transpose2d(w.data, rows, cols) };
}

/** Converts kernel-layout weights back to HF layout (for saving). */
export function fromKernelLayout(kernel: KernelWeights): Weights {
  const out: Weights = new Map();
  for (const [name, k] of kernel) {
    if (isLinearWeight(name)) {
      const [inF, outF] = k.shape;
      out.set(name, { shape: [outF, inF], data: transpose2d(k.data, inF, outF) });
    } else out.set(name, { shape: k.shape.slice(), data: k.data.slice() });
  }
  return out;
}
