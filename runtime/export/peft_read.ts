/**
 * Reads a PEFT LoRA adapter folder (ours or one trained with PEFT) back into the flat layout, so a
 * personalized adapter can be merged, evaluated or generated from wherever it was saved.
 */
import { decodeSafetensors, tensorToFloat32 } from "../io/safetensors.ts";
import { readBytes, readText } from "../io/files.ts";
import { HF_MODULE } from "./peft.ts";
import {
  type AdapterEntryLike,
  type AdapterLayoutLike,
  ExportError,
  type TargetModuleName,
} from "./types.ts";

const ORDER: TargetModuleName[] = ["q", "k", "v", "o", "gate", "up", "down"];
const BY_HF = new Map(ORDER.map((m) => [HF_MODULE[m], m]));
const NAME =
  /^base_model\.model\.model\.layers\.(\d+)\.((?:self_attn|mlp)\.[a-z_]+)\.lora_([AB])(?:\.[A-Za-z0-9_-]+)?\.weight$/;

/** A decoded adapter: flat values in our layout order and the LoRA scale PEFT applies. */
export interface ReadAdapter {
  layout: AdapterLayoutLike;
  adapter: Float32Array;
  scale: number;
  baseModel: string | null;
}

/** Parses adapter_config.json + adapter_model.safetensors bytes (pure). */
export function parsePeftAdapter(configJson: unknown, safetensors: Uint8Array): ReadAdapter {
  const c = configJson as Record<string, unknown>;
  if (!c || typeof c !== "object" || c.peft_type !== "LORA") {
    throw new ExportError("adapter_config.json: peft_type must be LORA");
  }
  const r = c.r, alpha = c.lora_alpha;
  if (typeof r !== "number" || !Number.isInteger(r) || r <= 0) {
    throw new ExportError(`adapter_config.json: bad r ${JSON.stringify(r)}`);
  }
  if (typeof alpha !== "number" || !(alpha > 0)) {
    throw new ExportError(`adapter_config.json: bad lora_alpha ${JSON.stringify(alpha)}`);
  }
  if (c.use_dora === true) throw new ExportError("DoRA adapters are not supported");
  if (c.fan_in_fan_out === true) throw new ExportError("fan_in_fan_out adapters are not supported");
  const patterns = [c.rank_pattern, c.alpha_pattern].filter((p) =>
    p && typeof p === "object" && Object.keys(p).length > 0
  );
  if (patterns.length) throw new ExportError("per-module rank_pattern/alpha_pattern are not supported");
  const scale = c.use_rslora === true ? alpha / Math.sqrt(r) : alpha / r;
  const { tensors } = decodeSafetensors(safetensors);
  const found: {
    layer: number;
    module: TargetModuleName;
    kind: "A" | "B";
    shape: number[];
    data: Float32Array;
  }[] = [];
  for (const [name, t] of tensors) {
    const m = NAME.exec(name);
    if (!m) throw new ExportError(`unexpected tensor ${name} in the adapter`);
    const module = BY_HF.get(m[2]);
    if (!module) throw new ExportError(`unsupported target module ${m[2]}`);
    const kind = m[3] as "A" | "B";
    if (t.shape.length !== 2 || t.shape[kind === "A" ? 0 : 1] !== r) {
      throw new ExportError(`${name}: shape [${t.shape}] does not have rank ${r}`);
    }
    found.push({ layer: Number(m[1]), module, kind, shape: t.shape, data: tensorToFloat32(t) });
  }
  if (found.length === 0) throw new ExportError("the adapter holds no LoRA tensors");
  found.sort((a, b) =>
    a.layer - b.layer || ORDER.indexOf(a.module) - ORDER.indexOf(b.module) || a.kind.localeCompare(b.kind)
  );
  const entries: AdapterEntryLike[] = [];
  let offset = 0;
  for (const f of found) {
    const size = f.shape[0] * f.shape[1];
    entries.push({
      name: `layers.${f.layer}.${f.module}.${f.kind}`,
      layer: f.layer,
      module: f.module,
      kind: f.kind,
      shape: [f.shape[0], f.shape[1]],
      offset,
      size,
    });
    offset += size;
  }
  const adapter = new Float32Array(offset);
  entries.forEach((e, i) => adapter.set(found[i].data, e.offset));
  const baseModel = typeof c.base_model_name_or_path === "string" ? c.base_model_name_or_path : null;
  return { layout: { rank: r, entries, size: offset }, adapter, scale, baseModel };
}

/** Reads a PEFT adapter folder. */
export async function readPeftAdapter(dir: string): Promise<ReadAdapter> {
  const config = JSON.parse(await readText(`${dir}/adapter_config.json`));
  return parsePeftAdapter(config, await readBytes(`${dir}/adapter_model.safetensors`));
}
