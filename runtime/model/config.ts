/**
 * Model configuration of a LLaMA-family decoder, read from a Hugging Face `config.json`.
 *
 * Only the fields the decoder graph needs are kept, under camelCase names, with the defaults that
 * `transformers` itself applies, so a config written by either library means the same model here.
 */
import { readText } from "../io/files.ts";

/** Decoder families we build. qwen2 differs from llama only by its q/k/v biases. */
export type ModelType = "llama" | "qwen2";

/** The decoder's shape and numerics. */
export interface ModelConfig {
  modelType: ModelType;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** Biases on q_proj, k_proj, v_proj (qwen2 always; llama when `attention_bias`). */
  qkvBias: boolean;
  /** Bias on o_proj (llama `attention_bias` only). */
  oBias: boolean;
  /** Biases on gate/up/down (llama `mlp_bias`). */
  mlpBias: boolean;
  bosTokenId?: number;
  eosTokenId?: number;
  padTokenId?: number;
}

/** Raised for a config we cannot build a decoder from; the message names the field. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

type Json = Record<string, unknown>;

function num(raw: Json, key: string, fallback?: number): number {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ConfigError(`config.json: missing required field "${key}"`);
  }
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new ConfigError(`config.json: field "${key}" must be a finite number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function posInt(raw: Json, key: string, fallback?: number): number {
  const v = num(raw, key, fallback);
  if (!Number.isInteger(v) || v <= 0) {
    throw new ConfigError(`config.json: field "${key}" must be a positive integer, got ${v}`);
  }
  return v;
}

function optTokenId(raw: Json, key: string): number | undefined {
  const v = raw[key];
  // eos_token_id may be a list in newer configs; the first entry is the generation stop token.
  const first = Array.isArray(v) ? v[0] : v;
  return typeof first === "number" && Number.isInteger(first) && first >= 0 ? first : undefined;
}

/** Parses a `config.json` object (already JSON-decoded) into a validated ModelConfig. */
export function parseConfig(raw: unknown): ModelConfig {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new ConfigError("config.json: expected a JSON object");
  }
  const r = raw as Json;
  const modelType = r.model_type;
  if (modelType !== "llama" && modelType !== "qwen2") {
    throw new ConfigError(
      `config.json: unsupported model_type ${JSON.stringify(modelType)} (supported: "llama", "qwen2")`,
    );
  }
  const ropeScaling = r.rope_scaling;
  if (ropeScaling !== undefined && ropeScaling !== null) {
    // Scaled RoPE variants change the frequencies; silently ignoring them would give a wrong model.
    throw new ConfigError(`config.json: rope_scaling ${JSON.stringify(ropeScaling)} is not supported`);
  }
  const hiddenSize = posInt(r, "hidden_size");
  const numHeads = posInt(r, "num_attention_heads");
  const numKvHeads = posInt(r, "num_key_value_heads", numHeads);
  const headDim = posInt(r, "head_dim", Math.floor(hiddenSize / numHeads));
  if (r.head_dim === undefined && hiddenSize % numHeads !== 0) {
    throw new ConfigError(
      `config.json: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`,
    );
  }
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(
      `config.json: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`,
    );
  }
  const attentionBias = r.attention_bias === true;
  const cfg: ModelConfig = {
    modelType,
    vocabSize: posInt(r, "vocab_size"),
    hiddenSize,
    intermediateSize: posInt(r, "intermediate_size"),
    numLayers: posInt(r, "num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: num(r, "rms_norm_eps", 1e-6),
    ropeTheta: num(r, "rope_theta", 10000),
    maxPositionEmbeddings: posInt(r, "max_position_embeddings", 2048),
    // transformers defaults tie_word_embeddings to false for both families.
    tieWordEmbeddings: r.tie_word_embeddings === true,
    qkvBias: modelType === "qwen2" ? true : attentionBias,
    oBias: modelType === "llama" ? attentionBias : false,
    mlpBias: modelType === "llama" && r.mlp_bias === true,
    bosTokenId: optTokenId(r, "bos_token_id"),
    eosTokenId: optTokenId(r, "eos_token_id"),
    padTokenId: optTokenId(r, "pad_token_id"),
  };
  // Absent token ids stay absent (not `undefined` keys), so configs compare and serialize cleanly.
  for (const k of ["bosTokenId", "eosTokenId", "padTokenId"] as const) {
    if (cfg[k] === undefined) delete cfg[k];
  }
  if (!(cfg.rmsNormEps > 0)) throw new ConfigError("config.json: rms_norm_eps must be > 0");
  if (!(cfg.ropeTheta > 0)) throw new ConfigError("config.json: rope_theta must be > 0");
  return cfg;
}

/** Writes a ModelConfig back as a Hugging Face `config.json` object (what tiny-model generation saves). */
export function toHfConfig(cfg: ModelConfig): Json {
  const out: Json = {
    architectures: [cfg.modelType === "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"],
    model_type: cfg.modelType,
    vocab_size: cfg.vocabSize,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    hidden_act: "silu",
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.ropeTheta,
    rope_scaling: null,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    torch_dtype: "float32",
  };
  if (cfg.modelType === "llama") {
    out.attention_bias = cfg.qkvBias;
    out.mlp_bias = cfg.mlpBias;
  }
  if (cfg.bosTokenId !== undefined) out.bos_token_id = cfg.bosTokenId;
  if (cfg.eosTokenId !== undefined) out.eos_token_id = cfg.eosTokenId;
  if (cfg.padTokenId !== undefined) out.pad_token_id = cfg.padTokenId;
  return out;
}

/** Reads and parses `<dir>/config.json` from the local file system. */
export async function readConfigFile(dir: string): Promise<ModelConfig> {
  const path = `${dir.replace(/\/+$/, "")}/config.json`;
  let text: string;
  try {
    text = await readText(path);
  } catch (e) {
    throw new ConfigError(`cannot read ${path}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path}: malformed JSON: ${(e as Error).message}`);
  }
  return parseConfig(raw);
}

/**
 * Loads a config through Transformers.js `AutoConfig` (local folder or, where reachable, a hub id)
 * and parses it. Transformers.js keeps the raw fields, so the same parser applies.
 */
export async function loadConfigAuto(pathOrId: string): Promise<ModelConfig> {
  const { AutoConfig } = await (await import("../deps.ts")).importTransformers();
  const { resolveSource, transformersOptions } = await import("./hub.ts");
  const src = await resolveSource(pathOrId);
  const cfg = await AutoConfig.from_pretrained(src.location, transformersOptions(src));
  // PretrainedConfig copies every field of config.json onto itself.
  return parseConfig(JSON.parse(JSON.stringify(cfg)));
}
