/**
 * Folds a personalized LoRA adapter into the base weights: W' = W + scale * B @ A for every adapted
 * projection, so the merged checkpoint runs in any plain LLaMA runtime (Transformers.js, transformers)
 * with no LoRA support at all.
 */
import type { AdapterLayoutLike, TargetModuleName } from "./types.ts";
import { ExportError } from "./types.ts";
import { HF_MODULE, maskedAdapter } from "./peft.ts";

/** An f32 row-major tensor (same shape as runtime/model's WeightTensor). */
export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

/** HF weight name of an adapted projection in decoder layer `layer`. */
export function baseWeightName(layer: number, module: TargetModuleName): string {
  return `model.layers.${layer}.${HF_MODULE[module]}.weight`;
}

/**
 * How a weight matrix is stored: HF layout W [out, in] (checkpoints, exports), or the engine's kernel
 * layout Wᵀ [in, out] (runtime/model `toKernelLayout`, what a `LoadedModel` holds).
 */
export type WeightLayout = "hf" | "kernel";

/**
 * Adds scale * B @ A to W in place. W [out, in] (or [in, out] in kernel layout), B [out, r], A [r, in].
 * Each element's sum is formed in the same order in both layouts, so both give the same bits.
 */
export function addLowRank(
  w: Float32Array,
  b: Float32Array,
  a: Float32Array,
  out: number,
  inDim: number,
  r: number,
  scale: number,
  layout: WeightLayout = "hf",
): void {
  // Where element (o, i) of W is: o * rowStride + i * colStride.
  const rowStride = layout === "hf" ? inDim : 1, colStride = layout === "hf" ? 1 : out;
  const row = new Float32Array(inDim);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let k = 0; k < r; k++) {
      const bk = b[o * r + k];
      if (bk === 0) continue;
      const aRow = k * inDim;
      for (let i = 0; i < inDim; i++) row[i] += bk * a[aRow + i];
    }
    const wRow = o * rowStride;
    for (let i = 0; i < inDim; i++) w[wRow + i * colStride] += scale * row[i];
  }
}

/**
 * Returns a new weight map with the adapter merged (untouched tensors are shared, adapted ones copied).
 * Masked-out adapter positions count as zero, exactly as in training. `weightLayout` says how the
 * weights are stored (default HF layout); the merge is the same either way.
 */
export function mergeAdapter(
  weights: Map<string, F32Tensor>,
  layout: AdapterLayoutLike,
  adapter: Float32Array,
  scale: number,
  mask?: Uint8Array,
  weightLayout: WeightLayout = "hf",
): Map<string, F32Tensor> {
  if (!Number.isFinite(scale)) throw new ExportError(`scale must be finite, got ${scale}`);
  if (weightLayout !== "hf" && weightLayout !== "kernel") {
    throw new ExportError(`weight layout must be "hf" or "kernel", got ${JSON.stringify(weightLayout)}`);
  }
  const values = maskedAdapter(layout, adapter, mask);
  const out = new Map(weights);
  const pairs = new Map<
    string,
    { a?: (typeof layout.entries)[number]; b?: (typeof layout.entries)[number] }
  >();
  for (const e of layout.entries) {
    const key = baseWeightName(e.layer, e.module);
    const p = pairs.get(key) ?? {};
    if (e.kind === "A") p.a = e;
    else p.b = e;
    pairs.set(key, p);
  }
  for (const [key, { a, b }] of pairs) {
    if (!a || !b) throw new ExportError(`adapter for ${key} lacks its ${a ? "B" : "A"} matrix`);
    const base = weights.get(key);
    if (!base) throw new ExportError(`base weights have no ${key}`);
    const [r, inDim] = a.shape;
    const [outDim, rb] = b.shape;
    const want = weightLayout === "hf" ? [outDim, inDim] : [inDim, outDim];
    if (rb !== r || base.shape.length !== 2 || base.shape[0] !== want[0] || base.shape[1] !== want[1]) {
      throw new ExportError(
        `shape mismatch for ${key}: W [${base.shape}], B [${b.shape}], A [${a.shape}]`,
      );
    }
    const w = base.data.slice();
    addLowRank(
      w,
      values.subarray(b.offset, b.offset + b.size),
      values.subarray(a.offset, a.offset + a.size),
      outDim,
      inDim,
      r,
      scale,
      weightLayout,
    );
    out.set(key, { shape: base.shape.slice(), data: w });
  }
  return out;
}
