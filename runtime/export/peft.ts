/**
 * PEFT-compatible serialization of one client's personalized LoRA adapter.
 *
 * PEFT scales B@A by `lora_alpha / r` where r is the (expanded) stored rank, while our engine scales by
 * `alpha / baseRank` (the un-expanded rank, so pruned expanded adapters stay comparable to plain ones).
 * We therefore write `lora_alpha = scale * r`, which makes PEFT's scale equal to ours.
 */
import { encodeSafetensors } from "../io/safetensors.ts";
import type { AdapterLayoutLike, TargetModuleName } from "./types.ts";
import { ExportError } from "./types.ts";
import { TARGET_WEIGHT } from "../model/lora.ts";

/** HF module path of each of our target names inside a LLaMA decoder layer (the model's own table). */
export const HF_MODULE: Readonly<Record<TargetModuleName, string>> = TARGET_WEIGHT;

/** The PEFT tensor name of one adapter matrix (as PEFT saves it: no adapter name inside). */
export function peftTensorName(layer: number, module: TargetModuleName, kind: "A" | "B"): string {
  return `base_model.model.model.layers.${layer}.${HF_MODULE[module]}.lora_${kind}.weight`;
}

/** Options of a PEFT adapter export. */
export interface PeftExportOptions {
  layout: AdapterLayoutLike;
  /** Flat adapter values (layout order). */
  adapter: Float32Array;
  /** 0/1 per position; masked-out positions are written as zeros. Omitted: the adapter is dense. */
  mask?: Uint8Array;
  /** Our LoRA scale (alpha / baseRank). */
  scale: number;
  /** `base_model_name_or_path` written into adapter_config.json. */
  baseModel: string;
  /** Extra string metadata for the safetensors header. */
  metadata?: Record<string, string>;
}

/** The two files PEFT's `PeftModel.from_pretrained` reads. */
export interface PeftFiles {
  adapterConfig: Record<string, unknown>;
  safetensors: Uint8Array;
}

/** Copies the adapter with masked-out positions zeroed, checking lengths and finiteness. */
export function maskedAdapter(
  layout: AdapterLayoutLike,
  adapter: Float32Array,
  mask?: Uint8Array,
): Float32Array {
  if (adapter.length !== layout.size) {
    throw new ExportError(`adapter has ${adapter.length} values but the layout holds ${layout.size}`);
  }
  if (mask && mask.length !== layout.size) {
    throw new ExportError(`mask has ${mask.length} entries but the layout holds ${layout.size}`);
  }
  const out = new Float32Array(adapter.length);
  for (let i = 0; i < adapter.length; i++) {
    const v = mask && mask[i] === 0 ? 0 : adapter[i];
    if (!Number.isFinite(v)) throw new ExportError(`adapter value at position ${i} is not finite (${v})`);
    out[i] = v;
  }
  return out;
}

/** Builds adapter_config.json and adapter_model.safetensors for PEFT (pure; no I/O). */
export function peftAdapterFiles(opts: PeftExportOptions): PeftFiles {
  const { layout } = opts;
  if (!(Number.isFinite(opts.scale) && opts.scale > 0)) {
    throw new ExportError(`scale must be > 0, got ${opts.scale}`);
  }
  if (!Number.isInteger(layout.rank) || layout.rank <= 0) {
    throw new ExportError(`bad layout rank ${layout.rank}`);
  }
  const values = maskedAdapter(layout, opts.adapter, opts.mask);
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  const modules = new Set<TargetModuleName>();
  for (const e of layout.entries) {
    const [rows, cols] = e.shape;
    if (rows * cols !== e.size || e.offset < 0 || e.offset + e.size > layout.size) {
      throw new ExportError(`layout entry ${e.name} has inconsistent shape/offset/size`);
    }
    const expectRank = e.kind === "A" ? rows : cols;
    if (expectRank !== layout.rank) {
      throw new ExportError(`layout entry ${e.name} has rank ${expectRank}, layout says ${layout.rank}`);
    }
    if (!(e.module in HF_MODULE)) throw new ExportError(`unknown target module ${JSON.stringify(e.module)}`);
    modules.add(e.module);
    tensors[peftTensorName(e.layer, e.module, e.kind)] = {
      dtype: "F32",
      shape: [rows, cols],
      data: values.subarray(e.offset, e.offset + e.size),
    };
  }
  const targetModules = [...modules].map((m) => HF_MODULE[m].split(".")[1]);
  const adapterConfig = {
    peft_type: "LORA",
    task_type: "CAUSAL_LM",
    base_model_name_or_path: opts.baseModel,
    r: layout.rank,
    lora_alpha: opts.scale * layout.rank,
    lora_dropout: 0.0,
    target_modules: targetModules,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    use_rslora: false,
    use_dora: false,
    modules_to_save: null,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
    revision: null,
  };
  const safetensors = encodeSafetensors(tensors, { format: "pt", ...(opts.metadata ?? {}) });
  return { adapterConfig, safetensors };
}
