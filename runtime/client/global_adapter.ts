/**
 * The run's global adapter as the coordinator serves it to the admin (`GET /v1/runs/:run/adapter`,
 * `deno task admin adapter`): one safetensors body of the aggregated values in the run's global layout
 * (rank r · max expansion) and the bitmask of the positions some round has aggregated, with what is
 * needed to read it (method, LoRA, model config) in its metadata. `globalPeftAdapter` turns it into the
 * inputs of a PEFT folder (runtime/export): a position no round aggregated is 0, as PEFT exports of a
 * client's adapter write the positions its mask pruned.
 */
import { decodeSafetensors, encodeSafetensors, type TensorOut } from "../io/safetensors.ts";
import { bitWords, popcountBits } from "../kernels/bits.ts";
import { type AdapterLayout, adapterLayout, type TargetModule } from "../model/lora.ts";
import { type ModelConfig, parseConfig } from "../model/config.ts";

/** The `format` metadata of a global adapter body. */
export const GLOBAL_ADAPTER_FORMAT = "perfit-global/1";

/** A run's global adapter and what reading it needs. */
export interface GlobalAdapterBody {
  run: string;
  /** Last round aggregated into it (0: none yet, every value 0 and nothing covered). */
  round: number;
  /** The run's status when it was read ("active", "done" or "cancelled"). */
  status: string;
  method: string;
  baseModel: string;
  /** The run's LoRA: `rank` is the base rank r, whose alpha/r is the scale. */
  lora: { rank: number; alpha: number; targets: TargetModule[] };
  /** Rank of the global layout: r · the run's largest expansion tier. */
  rank: number;
  adapterSize: number;
  /** The Hugging Face config.json the run was sized from, when it was created with one. */
  model: Record<string, unknown> | null;
  /** Aggregated values, global layout (0 where `covered` is 0). */
  values: Float32Array;
  /** LSB-first bitmask over `adapterSize`: the positions some round has aggregated. */
  covered: Uint32Array;
}

/** A malformed global adapter body. */
export class GlobalAdapterError extends Error {
  override name = "GlobalAdapterError";
}

/** Encodes a global adapter body (the coordinator's answer). */
export function encodeGlobalAdapter(g: GlobalAdapterBody): Uint8Array {
  return encodeSafetensors(
    {
      values: { dtype: "F32", shape: [g.values.length], data: g.values },
      covered: { dtype: "U32", shape: [g.covered.length], data: g.covered },
    },
    {
      format: GLOBAL_ADAPTER_FORMAT,
      run: g.run,
      round: String(g.round),
      status: g.status,
      method: g.method,
      baseModel: g.baseModel,
      lora: JSON.stringify(g.lora),
      rank: String(g.rank),
      adapterSize: String(g.adapterSize),
      coveredCount: String(popcountBits(g.covered)),
      ...(g.model ? { model: JSON.stringify(g.model) } : {}),
    },
  );
}

const copyOf = <T>(t: TensorOut, dtype: string, make: (b: ArrayBuffer) => T): T => {
  if (t.dtype !== dtype) throw new GlobalAdapterError(`tensor of dtype ${t.dtype}, expected ${dtype}`);
  return make(t.bytes.slice().buffer);
};

/** Decodes and checks a global adapter body. */
export function decodeGlobalAdapter(bytes: Uint8Array): GlobalAdapterBody {
  const dec = decodeSafetensors(bytes);
  const m = dec.metadata;
  if (m.format !== GLOBAL_ADAPTER_FORMAT) {
    throw new GlobalAdapterError(`not a global adapter (format ${JSON.stringify(m.format)})`);
  }
  const get = (k: string) => {
    const t = dec.tensors.get(k);
    if (!t) throw new GlobalAdapterError(`global adapter lacks ${k}`);
    return t;
  };
  const values = copyOf(get("values"), "F32", (b) => new Float32Array(b));
  const covered = copyOf(get("covered"), "U32", (b) => new Uint32Array(b));
  const n = Number(m.adapterSize);
  if (!Number.isSafeInteger(n) || values.length !== n || covered.length !== bitWords(n)) {
    throw new GlobalAdapterError("global adapter tensors do not match adapterSize");
  }
  let lora: GlobalAdapterBody["lora"];
  let model: Record<string, unknown> | null;
  try {
    lora = JSON.parse(m.lora);
    model = m.model === undefined ? null : JSON.parse(m.model);
  } catch (e) {
    throw new GlobalAdapterError(`global adapter metadata: ${(e as Error).message}`);
  }
  return {
    run: m.run,
    round: Number(m.round),
    status: m.status,
    method: m.method,
    baseModel: m.baseModel,
    lora,
    rank: Number(m.rank),
    adapterSize: n,
    model,
    values,
    covered,
  };
}

/**
 * What `writePeftAdapter` needs for the global adapter on the model of `config` (default: the run's
 * own `model`): its layout at the global rank, its values, and the run's scale alpha / r. Refuses a
 * model whose layout is not the run's size.
 */
export function globalPeftAdapter(
  g: GlobalAdapterBody,
  config?: ModelConfig,
): { layout: AdapterLayout; adapter: Float32Array; scale: number } {
  const cfg = config ?? (g.model ? parseConfig(g.model) : null);
  if (!cfg) {
    throw new GlobalAdapterError(
      `run ${g.run} was created without a model config: give the model folder it was sized for`,
    );
  }
  const layout = adapterLayout(cfg, { rank: g.rank, alpha: g.lora.alpha, targets: g.lora.targets });
  if (layout.size !== g.adapterSize) {
    throw new GlobalAdapterError(
      `this model's rank-${g.rank} adapter has ${layout.size} values, the run's has ${g.adapterSize}: ` +
        "not the model the run was sized for",
    );
  }
  return { layout, adapter: g.values, scale: g.lora.alpha / g.lora.rank };
}
