/**
 * `--tier auto`: a data owner picks the largest expansion tier its device can train in time. The rule
 * is pure (`pickTier`); the probe times one train step at each tier's rank on the real engine.
 */
import { Engine, type LoadedModel } from "../model/engine.ts";
import { initAdapter, type TargetModule } from "../model/lora.ts";
import { makeBatches } from "../data/batches.ts";
import type { Example } from "../data/types.ts";

/** What a joiner learns of a run before joining (the coordinator's `GET /v1/runs/:run/join`). */
export interface JoinInfo {
  method: string;
  tiers: Record<string, number>;
  lora: { rank: number; alpha: number; targets: TargetModule[] };
  roundDeadlineMs: number;
  localSteps: number;
  batchSize: number;
  maxLen: number;
}

/** The choice and why. */
export interface TierChoice {
  tier: string;
  expansion: number;
  /** Projected seconds of one round's training at that tier. */
  roundSeconds: number;
  why: string;
}

/**
 * The largest tier whose projected round (steps × measured step time at its rank, plus the search's
 * extra steps) takes at most `share` of the round deadline; the smallest tier when none does.
 */
export function pickTier(
  tiers: Record<string, number>,
  stepSeconds: Record<string, number>,
  steps: number,
  deadlineMs: number,
  share = 0.5,
): TierChoice {
  const names = Object.keys(tiers).filter((t) => Object.hasOwn(tiers, t));
  if (names.length === 0) throw new RangeError("the run has no tiers");
  for (const t of names) {
    if (!(stepSeconds[t] > 0)) throw new RangeError(`no step time measured for tier ${t}`);
  }
  if (!(steps > 0) || !(deadlineMs > 0) || !(share > 0 && share <= 1)) {
    throw new RangeError("steps, deadline and share must be positive");
  }
  const byE = names.sort((a, b) => tiers[a] - tiers[b]);
  const budget = (deadlineMs / 1000) * share;
  let pick = byE[0];
  for (const t of byE) if (steps * stepSeconds[t] <= budget) pick = t;
  const roundSeconds = steps * stepSeconds[pick];
  const fits = roundSeconds <= budget;
  return {
    tier: pick,
    expansion: tiers[pick],
    roundSeconds,
    why: fits
      ? `${stepSeconds[pick].toFixed(3)} s/step at rank ${tiers[pick]}r: a round ≈ ${
        roundSeconds.toFixed(1)
      } s, within ${Math.round(share * 100)}% of the ${(deadlineMs / 1000).toFixed(0)} s deadline`
      : `even the smallest tier needs ≈ ${roundSeconds.toFixed(1)} s a round, over ${
        Math.round(share * 100)
      }% of the ${(deadlineMs / 1000).toFixed(0)} s deadline`,
  };
}

/** Times one train step (after one warm-up) at each tier's rank on this device. */
export async function probeStepSeconds(
  model: LoadedModel,
  info: JoinInfo,
  examples: Example[],
  opts: { backend?: "auto" | "node" | "wasm" | "webgpu"; batchSize?: number; maxLen?: number } = {},
): Promise<Record<string, number>> {
  const [batch] = makeBatches(examples.slice(0, opts.batchSize ?? 4), model.tokenizer!, {
    maxLen: opts.maxLen ?? 128,
    batchSize: opts.batchSize ?? 4,
    shuffle: false,
  });
  if (!batch) throw new Error("no example to probe the device with");
  const out: Record<string, number> = {};
  for (const [tier, e] of Object.entries(info.tiers)) {
    const engine = await Engine.create(model, {
      rank: info.lora.rank * e,
      alpha: info.lora.alpha,
      targets: info.lora.targets,
      baseRank: info.lora.rank,
    }, { backend: opts.backend ?? "auto" });
    const adapter = initAdapter(engine.layout, 0);
    const mask = new Uint8Array(adapter.length).fill(1);
    await engine.trainStep(batch, adapter, mask);
    const t0 = performance.now();
    await engine.trainStep(batch, adapter, mask);
    out[tier] = (performance.now() - t0) / 1000;
  }
  return out;
}
