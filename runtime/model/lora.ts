/**
 * LoRA adapter layout: one flat Float32Array holds every A and B matrix, so masks, importance,
 * uploads and aggregation are all plain flat-array math shared by every area.
 */
import type { ModelConfig } from "./config.ts";
import { Rng } from "./rng.ts";

export type TargetModule = "q" | "k" | "v" | "o" | "gate" | "up" | "down";
export interface LoraSpec {
  rank: number;
  alpha: number;
  targets: TargetModule[];
  /**
   * The un-expanded rank r whose alpha / r sets the scale (default `rank`). A PerFIT client trains
   * at rank r·e but keeps the scale of rank r, so its pruned adapter stays comparable to a plain one.
   */
  baseRank?: number;
}
export interface AdapterEntry {
  name: string;
  layer: number;
  module: TargetModule;
  kind: "A" | "B";
  shape: [number, number];
  offset: number;
  size: number;
}
export interface AdapterLayout {
  rank: number;
  entries: AdapterEntry[];
  size: number;
}

/** Canonical module order: layouts do not depend on how a user lists the targets. */
export const TARGET_ORDER: readonly TargetModule[] = ["q", "k", "v", "o", "gate", "up", "down"];

/** HF projection name of each target (`model.layers.N.<path>.weight`). */
export const TARGET_WEIGHT: Record<TargetModule, string> = {
  q: "self_attn.q_proj",
  k: "self_attn.k_proj",
  v: "self_attn.v_proj",
  o: "self_attn.o_proj",
  gate: "mlp.gate_proj",
  up: "mlp.up_proj",
  down: "mlp.down_proj",
};

/** Bad LoRA spec or adapter. */
export class LoraError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LoraError";
  }
}

/** [in, out] features of a target projection. */
export function moduleDims(cfg: ModelConfig, m: TargetModule): [number, number] {
  const h = cfg.hiddenSize, q = cfg.numHeads * cfg.headDim, kv = cfg.numKvHeads * cfg.headDim;
  switch (m) {
    case "q":
      return [h, q];
    case "k":
    case "v":
      return [h, kv];
    case "o":
      return [q, h];
    case "gate":
    case "up":
      return [h, cfg.intermediateSize];
    case "down":
      return [cfg.intermediateSize, h];
  }
}

/** Validates a spec; returns its targets in canonical order without duplicates. */
export function normalizeTargets(spec: LoraSpec): TargetModule[] {
  if (!Number.isInteger(spec.rank) || spec.rank <= 0) {
    throw new LoraError(`LoRA rank must be a positive integer, got ${spec.rank}`);
  }
  if (!Number.isFinite(spec.alpha) || spec.alpha <= 0) {
    throw new LoraError(`LoRA alpha must be > 0, got ${spec.alpha}`);
  }
  if (!Array.isArray(spec.targets) || spec.targets.length === 0) {
    throw new LoraError("LoRA needs at least one target module");
  }
  for (const t of spec.targets) {
    if (!TARGET_ORDER.includes(t)) {
      throw new LoraError(`unknown LoRA target ${JSON.stringify(t)} (use ${TARGET_ORDER.join(", ")})`);
    }
  }
  return TARGET_ORDER.filter((t) => spec.targets.includes(t));
}

/** The flat layout: per layer, per target (canonical order), A [rank, in] then B [out, rank]. */
export function adapterLayout(config: ModelConfig, spec: LoraSpec): AdapterLayout {
  const targets = normalizeTargets(spec);
  const entries: AdapterEntry[] = [];
  let offset = 0;
  for (let layer = 0; layer < config.numLayers; layer++) {
    for (const module of targets) {
      const [inF, outF] = moduleDims(config, module);
      for (const kind of ["A", "B"] as const) {
        const shape: [number, number] = kind === "A" ? [spec.rank, inF] : [outF, spec.rank];
        const size = shape[0] * shape[1];
        entries.push({ name: `layers.${layer}.${module}.${kind}`, layer, module, kind, shape, offset, size });
        offset += size;
      }
    }
  }
  return { rank: spec.rank, entries, size: offset };
}

/** A ~ kaiming-uniform (PEFT's bound 1/sqrt(in)), B = 0, so a fresh adapter leaves the model unchanged. */
export function initAdapter(layout: AdapterLayout, seed: number): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(layout.size);
  for (const e of layout.entries) {
    if (e.kind !== "A") continue;
    const bound = 1 / Math.sqrt(e.shape[1]);
    for (let i = 0; i < e.size; i++) out[e.offset + i] = rng.uniform(-bound, bound);
  }
  return out;
}

/** A view (no copy) of one entry inside a flat adapter-shaped array. */
export function entryView<T extends Float32Array | Uint8Array>(flat: T, e: AdapterEntry): T {
  return flat.subarray(e.offset, e.offset + e.size) as T;
}

/** The LoRA scale alpha / baseRank (baseRank = the un-expanded rank, see COMMON.md). */
export function loraScale(spec: LoraSpec, baseRank = spec.baseRank ?? spec.rank): number {
  return spec.alpha / baseRank;
}
