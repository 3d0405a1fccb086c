/**
 * Base-model weights: Hugging Face safetensors (single file or sharded index), any float dtype, read
 * into f32 under their HF names, then checked against the config so a wrong checkpoint fails loudly
 * here instead of as a shape error deep inside an ONNX session.
 */
import { decodeSafetensors, readSafetensors, type TensorOut, tensorToFloat32 } from "../io/safetensors.ts";
import type { ModelConfig } from "./config.ts";
import { fileLocation, type ModelSource, ModelSourceError, openOptional, readJsonOptional } from "./hub.ts";

/** One f32 weight tensor (row-major). */
export interface WeightTensor {
  shape: number[];
  data: Float32Array;
}

/** HF weight name -> tensor. */
export type Weights = Map<string, WeightTensor>;

/** A checkpoint that does not fit its config, or cannot be read. */
export class WeightsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WeightsError";
  }
}

const isFloat = (t: TensorOut) => t.dtype === "F32" || t.dtype === "F16" || t.dtype === "BF16";

/** Decodes one safetensors buffer into f32 weights (F32, F16 and BF16 tensors; others are skipped). */
export function decodeWeights(bytes: Uint8Array, into: Weights = new Map()): Weights {
  const { tensors } = decodeSafetensors(bytes);
  for (const [name, t] of tensors) {
    if (isFloat(t)) into.set(name, { shape: t.shape.slice(), data: tensorToFloat32(t) });
  }
  return into;
}

/**
 * Hands every float tensor of a source's weights to `visit`, decoded to f32 in HF layout: those of
 * `model.safetensors`, or of the shards `model.safetensors.index.json` lists. The files are read in
 * pieces, one tensor at a time, so memory holds what `visit` keeps plus one tensor's bytes: never a
 * whole file beside its decoded weights.
 */
export async function forEachWeight(
  src: ModelSource,
  visit: (name: string, w: WeightTensor) => void,
): Promise<void> {
  const fromFile = async (file: string, missing: () => Error, onName?: (name: string) => void) => {
    const reader = await openOptional(src, file);
    if (reader === null) throw missing();
    try {
      await readSafetensors(reader, (name, t) => {
        if (!isFloat(t)) return;
        onName?.(name);
        visit(name, { shape: t.shape.slice(), data: tensorToFloat32(t) });
      });
    } finally {
      await reader.close();
    }
  };
  const index = await readJsonOptional(src, "model.safetensors.index.json");
  if (index === null) {
    return await fromFile(
      "model.safetensors",
      () => new WeightsError(`no model.safetensors or model.safetensors.index.json at ${src.location}`),
    );
  }
  const map = (index as { weight_map?: Record<string, string> }).weight_map;
  if (!map || typeof map !== "object") {
    throw new WeightsError(`${fileLocation(src, "model.safetensors.index.json")}: missing "weight_map"`);
  }
  const shards = [...new Set(Object.values(map))].sort();
  for (const shard of shards) {
    if (typeof shard !== "string" || shard.includes("..") || shard.startsWith("/")) {
      throw new WeightsError(`bad shard name ${JSON.stringify(shard)} in the safetensors index`);
    }
  }
  const seen = new Set<string>();
  for (const shard of shards) {
    const missing = () => new ModelSourceError(`missing model file: ${fileLocation(src, shard)}`);
    await fromFile(shard, missing, (name) => seen.add(name));
  }
  for (const name of Object.keys(map)) {
    if (!seen.has(name)) {
      throw new WeightsError(`weight ${name} listed in the index is missing from ${map[name]}`);
    }
  }
}

/** Loads a source's weights (see `forEachWeight`) under their HF names, in HF layout. */
export async function loadWeights(src: ModelSource): Promise<Weights> {
  const weights: Weights = new Map();
  await forEachWeight(src, (name, w) => weights.set(name, w));
  return weights;
}

/** The HF names and shapes a config's checkpoint must hold. */
export function expectedWeightShapes(cfg: ModelConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const h = cfg.hiddenSize, q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  const f = cfg.intermediateSize;
  m.set("model.embed_tokens.weight", [cfg.vocabSize, h]);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    m.set(`${p}.input_layernorm.weight`, [h]);
    m.set(`${p}.self_attn.q_proj.weight`, [q, h]);
    m.set(`${p}.self_attn.k_proj.weight`, [kv, h]);
    m.set(`${p}.self_attn.v_proj.weight`, [kv, h]);
    m.set(`${p}.self_attn.o_proj.weight`, [h, q]);
    if (cfg.qkvBias) {
      m.set(`${p}.self_attn.q_proj.bias`, [q]);
      m.set(`${p}.self_attn.k_proj.bias`, [kv]);
      m.set(`${p}.self_attn.v_proj.bias`, [kv]);
    }
    if (cfg.oBias) m.set(`${p}.self_attn.o_proj.bias`, [h]);
    m.set(`${p}.post_attention_layernorm.weight`, [h]);
    m.set(`${p}.mlp.gate_proj.weight`, [f, h]);
    m.set(`${p}.mlp.up_proj.weight`, [f, h]);
    m.set(`${p}.mlp.down_proj.weight`, [h, f]);
    if (cfg.mlpBias) {
      m.set(`${p}.mlp.gate_proj.bias`, [f]);
      m.set(`${p}.mlp.up_proj.bias`, [f]);
      m.set(`${p}.mlp.down_proj.bias`, [h]);
    }
  }
  m.set("model.norm.weight", [h]);
  if (!cfg.tieWordEmbeddings) m.set("lm_head.weight", [cfg.vocabSize, h]);
  return m;
}

/**
 * Checks every expected weight is present with its shape and finite values. A tied model that also
 * ships `lm_head.weight` is accepted (the tie wins, as in transformers).
 */
export function checkWeights(cfg: ModelConfig, weights: Weights): void {
  for (const [name, shape] of expectedWeightShapes(cfg)) {
    const w = weights.get(name);
    if (!w) throw new WeightsError(`checkpoint lacks weight ${name} (shape [${shape}])`);
    checkWeightTensor(name, w, shape);
  }
}

/** Checks one weight against the shape its config expects, and that its values are finite. */
export function checkWeightTensor(name: string, w: WeightTensor, shape: number[]): void {
  if (w.shape.length !== shape.length || w.shape.some((d, i) => d !== shape[i])) {
    throw new WeightsError(`weight ${name} has shape [${w.shape}], config expects [${shape}]`);
  }
  for (let i = 0; i < w.data.length; i++) {
    if (!Number.isFinite(w.data[i])) {
      throw new WeightsError(`weight ${name} holds a non-finite value at ${i}`);
    }
  }
}
