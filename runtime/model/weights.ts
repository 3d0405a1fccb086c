/**
 * Base-model weights: Hugging Face safetensors (single file or sharded index), any float dtype, read
 * into f32 under their HF names, then checked against the config so a wrong checkpoint fails loudly
 * here instead of as a shape error deep inside an ONNX session.
 */
import { decodeSafetensors, tensorToFloat32 } from "../io/safetensors.ts";
import type { ModelConfig } from "./config.ts";
import { fileLocation, type ModelSource, readJsonOptional, readOptional, readRequired } from "./hub.ts";

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

/** Decodes one safetensors buffer into f32 weights (F32, F16 and BF16 tensors; others are skipped). */
export function decodeWeights(bytes: Uint8Array, into: Weights = new Map()): Weights {
  const { tensors } = decodeSafetensors(bytes);
  for (const [name, t] of tensors) {
    if (t.dtype !== "F32" && t.dtype !== "F16" && t.dtype !== "BF16") continue;
    into.set(name, { shape: t.shape.slice(), data: tensorToFloat32(t) });
  }
  return into;
}

/**
 * Loads `model.safetensors`, or the shards listed by `model.safetensors.index.json`, from a source.
 * Each shard is decoded and dropped before the next is read, so peak memory is the f32 weights plus one shard.
 */
export async function loadWeights(src: ModelSource): Promise<Weights> {
  const index = await readJsonOptional(src, "model.safetensors.index.json");
  const weights: Weights = new Map();
  if (index !== null) {
    const map = (index as { weight_map?: Record<string, string> }).weight_map;
    if (!map || typeof map !== "object") {
      throw new WeightsError(`${fileLocation(src, "model.safetensors.index.json")}: missing "weight_map"`);
    }
    const shards = [...new Set(Object.values(map))].sort();
    for (const shard of shards) {
      if (typeof shard !== "string" || shard.includes("..") || shard.startsWith("/")) {
        throw new WeightsError(`bad shard name ${JSON.stringify(shard)} in the safetensors index`);
      }
      decodeWeights(await readRequired(src, shard), weights);
    }
    for (const name of Object.keys(map)) {
      if (!weights.has(name)) {
        throw new WeightsError(`weight ${name} listed in the index is missing from ${map[name]}`);
      }
    }
    return weights;
  }
  const single = await readOptional(src, "model.safetensors");
  if (single === null) {
    throw new WeightsError(`no model.safetensors or model.safetensors.index.json at ${src.location}`);
  }
  return decodeWeights(single, weights);
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
    if (w.shape.length !== shape.length || w.shape.some((d, i) => d !== shape[i])) {
      throw new WeightsError(`weight ${name} has shape [${w.shape}], config expects [${shape}]`);
    }
    for (let i = 0; i < w.data.length; i++) {
      if (!Number.isFinite(w.data[i])) {
        throw new WeightsError(`weight ${name} holds a non-finite value at ${i}`);
      }
    }
  }
}
