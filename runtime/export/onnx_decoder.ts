/**
 * ONNX export of a (merged) LLaMA/Qwen2 decoder for inference with a KV cache, in the I/O convention of
 * Hugging Face Optimum that Transformers.js expects of `onnx/model.onnx`:
 *   inputs  input_ids, attention_mask, position_ids (int64), past_key_values.{i}.key/value [b, kvHeads, past, headDim]
 *   outputs logits [b, seq, vocab], present.{i}.key/value [b, kvHeads, past+seq, headDim]
 * Without the cache I/O, Transformers.js would feed only the newest token on each generation step.
 *
 * This is an inference-only graph built straight from standard ONNX ops (opset 17), separate from the
 * training graphs, which have no cache and carry a backward pass.
 */
import { onnxProto } from "../deps.ts";
import { ExportError } from "./types.ts";
import type { F32Tensor } from "./merge.ts";
import type { ModelConfig } from "../model/config.ts";

// deno-lint-ignore no-explicit-any
const onnx: any = (onnxProto as any).onnx ?? onnxProto;

/** The decoder shape the graph needs: runtime/model's ModelConfig minus the fields it never reads. */
export type DecoderShape = Omit<ModelConfig, "modelType" | "maxPositionEmbeddings">;

const FLOAT = 1, INT64 = 7, BOOL = 9;
const ATTR_FLOAT = 1, ATTR_INT = 2, ATTR_INTS = 7;

type Attr = number | number[] | { f: number };

/** A tiny append-only ONNX graph builder: unique value names, initializers from typed arrays. */
class GraphBuilder {
  nodes: unknown[] = [];
  inits: unknown[] = [];
  private n = 0;

  fresh(prefix: string): string {
    return `${prefix}_${this.n++}`;
  }

  op(type: string, inputs: string[], attrs: Record<string, Attr> = {}, outName?: string): string {
    const out = outName ?? this.fresh(type.toLowerCase());
    const attribute = Object.entries(attrs).map(([name, v]) => {
      if (Array.isArray(v)) return { name, type: ATTR_INTS, ints: v };
      if (typeof v === "object") return { name, type: ATTR_FLOAT, f: v.f };
      return { name, type: ATTR_INT, i: v };
    });
    this.nodes.push({ opType: type, input: inputs, output: [out], name: this.fresh("n"), attribute });
    return out;
  }

  f32(name: string, dims: number[], data: Float32Array): string {
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    this.inits.push({ name, dims, dataType: FLOAT, rawData: bytes });
    return name;
  }

  i64(values: number[], dims: number[] = [values.length]): string {
    const name = this.fresh("c");
    const data = BigInt64Array.from(values.map((v) => BigInt(v)));
    this.inits.push({ name, dims, dataType: INT64, rawData: new Uint8Array(data.buffer) });
    return name;
  }

  scalarF(v: number): string {
    return this.f32(this.fresh("s"), [], Float32Array.of(v));
  }
}

function transpose2d(t: F32Tensor): { dims: number[]; data: Float32Array } {
  const [r, c] = t.shape;
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = t.data[i * c + j];
  return { dims: [c, r], data: out };
}

function need(weights: Map<string, F32Tensor>, name: string, shape: number[]): F32Tensor {
  const t = weights.get(name);
  if (!t) throw new ExportError(`weights lack ${name}`);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new ExportError(`${name} has shape [${t.shape}], expected [${shape}]`);
  }
  return t;
}

function valueInfo(name: string, elemType: number, dims: (number | string)[]) {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => typeof d === "number" ? { dimValue: d } : { dimParam: d }) },
      },
    },
  };
}

/** Builds the serialized ONNX model of the decoder from f32 HF-named weights. */
export function buildDecoderOnnx(cfg: DecoderShape, weights: Map<string, F32Tensor>): Uint8Array {
  const g = new GraphBuilder();
  const { hiddenSize: hd, numHeads: nh, numKvHeads: nkv, headDim: d, numLayers } = cfg;
  if (nh % nkv !== 0) throw new ExportError(`numHeads ${nh} is not a multiple of numKvHeads ${nkv}`);
  if (d % 2 !== 0) throw new ExportError(`headDim ${d} must be even for RoPE`);

  const linear = (x: string, name: string, outDim: number, inDim: number, bias: boolean): string => {
    const w = transpose2d(need(weights, `${name}.weight`, [outDim, inDim]));
    let y = g.op("MatMul", [x, g.f32(`${name}.weight_t`, w.dims, w.data)]);
    if (bias) {
      y = g.op("Add", [y, g.f32(`${name}.bias`, [outDim], need(weights, `${name}.bias`, [outDim]).data)]);
    }
    return y;
  };
  const eps = g.scalarF(cfg.rmsNormEps);
  const two = g.scalarF(2);
  const rmsNorm = (x: string, name: string): string => {
    const ms = g.op("ReduceMean", [g.op("Pow", [x, two])], { axes: [-1], keepdims: 1 });
    const inv = g.op("Sqrt", [g.op("Add", [ms, eps])]);
    const w = need(weights, `${name}.weight`, [hd]);
    return g.op("Mul", [g.op("Div", [x, inv]), g.f32(`${name}.weight`, [hd], w.data)]);
  };

  // Dynamic sizes: S (new tokens), T (all tokens incl. past), P = T - S.
  const zero = g.i64([0], []), one = g.i64([1], []);
  const sLen = g.op("Gather", [g.op("Shape", ["input_ids"]), one], { axis: 0 });
  const tLen = g.op("Gather", [g.op("Shape", ["attention_mask"]), one], { axis: 0 });
  const pLen = g.op("Sub", [tLen, sLen]);

  // Causal mask shifted by the cache length, combined with padding: [b, 1, S, T].
  const keyIdx = g.op("Unsqueeze", [g.op("Range", [zero, tLen, one]), g.i64([0])]);
  const qIdx = g.op("Unsqueeze", [g.op("Range", [pLen, tLen, one]), g.i64([1])]);
  const causal = g.op("LessOrEqual", [keyIdx, qIdx]);
  const pad = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], { to: BOOL }), g.i64([1, 2])]);
  const allowed = g.op("And", [causal, pad]);
  const negBig = g.scalarF(-1e9);

  // RoPE tables (HF rotate_half convention): [b, 1, S, d].
  const invFreq = new Float32Array(d / 2);
  for (let i = 0; i < d / 2; i++) invFreq[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / d);
  const pos = g.op("Unsqueeze", [g.op("Cast", ["position_ids"], { to: FLOAT }), g.i64([2])]);
  const freqs = g.op("Mul", [pos, g.f32("rope_inv_freq", [d / 2], invFreq)]);
  const emb = g.op("Unsqueeze", [g.op("Concat", [freqs, freqs], { axis: -1 }), g.i64([1])]);
  const cos = g.op("Cos", [emb]), sin = g.op("Sin", [emb]);
  const half0 = g.i64([0]), halfD = g.i64([d / 2]), fullD = g.i64([d]), ax3 = g.i64([3]);
  const rope = (x: string): string => {
    const x1 = g.op("Slice", [x, half0, halfD, ax3]);
    const x2 = g.op("Slice", [x, halfD, fullD, ax3]);
    const rot = g.op("Concat", [g.op("Neg", [x2]), x1], { axis: 3 });
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rot, sin])]);
  };
  const heads = (x: string, n: number): string =>
    g.op("Transpose", [g.op("Reshape", [x, g.i64([0, 0, n, d])])], { perm: [0, 2, 1, 3] });
  const groups = nh / nkv;
  const repeatKv = (x: string): string => {
    if (groups === 1) return x;
    const tiled = g.op("Tile", [g.op("Unsqueeze", [x, g.i64([2])]), g.i64([1, 1, groups, 1, 1])]);
    return g.op("Reshape", [tiled, g.i64([0, nh, -1, d])]);
  };
  const invSqrtD = g.scalarF(1 / Math.sqrt(d));

  const inputs = [
    valueInfo("input_ids", INT64, ["batch_size", "sequence_length"]),
    valueInfo("attention_mask", INT64, ["batch_size", "total_sequence_length"]),
    valueInfo("position_ids", INT64, ["batch_size", "sequence_length"]),
  ];
  const outputs = [valueInfo("logits", FLOAT, ["batch_size", "sequence_length", cfg.vocabSize])];

  const embed = need(weights, "model.embed_tokens.weight", [cfg.vocabSize, hd]);
  let x = g.op("Gather", [g.f32("model.embed_tokens.weight", [cfg.vocabSize, hd], embed.data), "input_ids"], {
    axis: 0,
  });
  for (let l = 0; l < numLayers; l++) {
    const p = `model.layers.${l}`;
    const h = rmsNorm(x, `${p}.input_layernorm`);
    const q = rope(heads(linear(h, `${p}.self_attn.q_proj`, nh * d, hd, cfg.qkvBias), nh));
    const k = rope(heads(linear(h, `${p}.self_attn.k_proj`, nkv * d, hd, cfg.qkvBias), nkv));
    const v = heads(linear(h, `${p}.self_attn.v_proj`, nkv * d, hd, cfg.qkvBias), nkv);
    const pastK = `past_key_values.${l}.key`, pastV = `past_key_values.${l}.value`;
    inputs.push(valueInfo(pastK, FLOAT, ["batch_size", nkv, "past_sequence_length", d]));
    inputs.push(valueInfo(pastV, FLOAT, ["batch_size", nkv, "past_sequence_length", d]));
    const kAll = g.op("Concat", [pastK, k], { axis: 2 }, `present.${l}.key`);
    const vAll = g.op("Concat", [pastV, v], { axis: 2 }, `present.${l}.value`);
    outputs.push(valueInfo(kAll, FLOAT, ["batch_size", nkv, "total_sequence_length", d]));
    outputs.push(valueInfo(vAll, FLOAT, ["batch_size", nkv, "total_sequence_length", d]));
    const kt = g.op("Transpose", [repeatKv(kAll)], { perm: [0, 1, 3, 2] });
    const scores = g.op("Mul", [g.op("MatMul", [q, kt]), invSqrtD]);
    const probs = g.op("Softmax", [g.op("Where", [allowed, scores, negBig])], { axis: -1 });
    const ctx = g.op("Transpose", [g.op("MatMul", [probs, repeatKv(vAll)])], { perm: [0, 2, 1, 3] });
    const attn = linear(
      g.op("Reshape", [ctx, g.i64([0, 0, nh * d])]),
      `${p}.self_attn.o_proj`,
      hd,
      nh * d,
      cfg.oBias,
    );
    x = g.op("Add", [x, attn]);
    const h2 = rmsNorm(x, `${p}.post_attention_layernorm`);
    const gate = linear(h2, `${p}.mlp.gate_proj`, cfg.intermediateSize, hd, cfg.mlpBias);
    const up = linear(h2, `${p}.mlp.up_proj`, cfg.intermediateSize, hd, cfg.mlpBias);
    const act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]);
    x = g.op("Add", [x, linear(act, `${p}.mlp.down_proj`, hd, cfg.intermediateSize, cfg.mlpBias)]);
  }
  const final = rmsNorm(x, "model.norm");
  const headName = cfg.tieWordEmbeddings || !weights.has("lm_head.weight") ? "model.embed_tokens" : "lm_head";
  if (headName === "model.embed_tokens" && !cfg.tieWordEmbeddings) {
    throw new ExportError("weights lack lm_head.weight and the config does not tie word embeddings");
  }
  const head = transpose2d(need(weights, `${headName}.weight`, [cfg.vocabSize, hd]));
  g.op("MatMul", [final, g.f32("lm_head.weight_t", head.dims, head.data)], {}, "logits");

  const model = {
    irVersion: 8,
    producerName: "perfit",
    opsetImport: [{ domain: "", version: 17 }],
    graph: { name: "perfit_decoder", node: g.nodes, initializer: g.inits, input: inputs, output: outputs },
  };
  const err = onnx.ModelProto.verify(model);
  if (err) throw new ExportError(`internal: invalid ONNX model: ${err}`);
  return onnx.ModelProto.encode(onnx.ModelProto.fromObject(model)).finish();
}
