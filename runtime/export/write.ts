/**
 * File-system shell of the export: writes a PEFT adapter folder and a merged-model folder that
 * Transformers.js (ONNX) and transformers (safetensors) can load offline. All math lives in peft.ts,
 * merge.ts and onnx_decoder.ts.
 */
import { encodeSafetensors, type TensorIn } from "../io/safetensors.ts";
import { copyIfExists, makeDir, writeBytes, writeText } from "../io/files.ts";
import { type ModelConfig, readConfigFile, toHfConfig } from "../model/config.ts";
import { resolveSource } from "../model/hub.ts";
import { loadWeights } from "../model/weights.ts";
import { peftAdapterFiles, type PeftExportOptions } from "./peft.ts";
import { type F32Tensor, mergeAdapter } from "./merge.ts";
import { buildDecoderOnnx } from "./onnx_decoder.ts";
import type { AdapterLayoutLike } from "./types.ts";

/** Files copied from the base model folder when present (tokenizer and generation settings). */
export const TOKENIZER_FILES = [
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "generation_config.json",
];

/** Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if needed). */
export async function writePeftAdapter(dir: string, opts: PeftExportOptions): Promise<void> {
  const files = peftAdapterFiles(opts);
  await makeDir(dir);
  await writeText(`${dir}/adapter_config.json`, JSON.stringify(files.adapterConfig, null, 2));
  await writeBytes(`${dir}/adapter_model.safetensors`, files.safetensors);
}

/** Options of `writeMergedModel`. */
export interface MergedExportOptions {
  /** Local folder of the base model (config, weights, tokenizer). */
  baseDir: string;
  layout: AdapterLayoutLike;
  adapter: Float32Array;
  mask?: Uint8Array;
  scale: number;
  /** Also write `onnx/model.onnx` for Transformers.js (default true). */
  onnx?: boolean;
}

/** What `writeMergedModel` wrote. */
export interface MergedExportResult {
  config: ModelConfig;
  files: string[];
}

/** Serializes f32 weights as one `model.safetensors`. */
export function weightsToSafetensors(weights: Map<string, F32Tensor>): Uint8Array {
  const tensors: Record<string, TensorIn> = {};
  for (const name of [...weights.keys()].sort()) {
    const w = weights.get(name)!;
    tensors[name] = { dtype: "F32", shape: w.shape, data: w.data };
  }
  return encodeSafetensors(tensors, { format: "pt" });
}

/**
 * Writes a merged, personalized model folder: config.json, tokenizer files, model.safetensors and
 * (by default) onnx/model.onnx. The ONNX graph is a single protobuf, so models over 2 GB are refused
 * by protobuf itself; the tiny and small models of this project are far below that.
 */
export async function writeMergedModel(dir: string, opts: MergedExportOptions): Promise<MergedExportResult> {
  const config = await readConfigFile(opts.baseDir);
  const weights = await loadWeights(await resolveSource(opts.baseDir));
  const merged = mergeAdapter(weights, opts.layout, opts.adapter, opts.scale, opts.mask);
  await makeDir(dir);
  const files: string[] = [];
  const hfConfig = { ...toHfConfig(config), "transformers.js_config": { dtype: "fp32" } };
  await writeText(`${dir}/config.json`, JSON.stringify(hfConfig, null, 2));
  files.push("config.json");
  for (const f of TOKENIZER_FILES) {
    if (await copyIfExists(`${opts.baseDir}/${f}`, `${dir}/${f}`)) files.push(f);
  }
  await writeBytes(`${dir}/model.safetensors`, weightsToSafetensors(merged));
  files.push("model.safetensors");
  if (opts.onnx !== false) {
    await makeDir(`${dir}/onnx`);
    await writeBytes(`${dir}/onnx/model.onnx`, buildDecoderOnnx(config, merged));
    files.push("onnx/model.onnx");
  }
  return { config, files };
}
