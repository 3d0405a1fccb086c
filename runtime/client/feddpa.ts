/**
 * FedDPA, the dual-personalizing adapter (Yang et al., NeurIPS 2024), on one client: a global adapter
 * (federated with FedAvg) and a local one (private), both rank r, held as ONE rank-2r LoRA: rank
 * components 0..r-1 are the global adapter, r..2r-1 the local one. B·A over the 2r components is
 * B_g·A_g + B_l·A_l, the scale stays alpha / r (`LoraSpec.baseRank`), and weighting an adapter is
 * scaling its columns of B. Only the global half is uploaded (`shares: "lead"`).
 *
 * The rule, from the authors' code (github.com/Lydia-yang/FedDPA, commit cf638c1):
 * - the round (code/main.py 202-245, `--local_model True`, the README's FedDPA-T): from the second
 *   round on, each client first trains its local adapter, then its global adapter, for the same
 *   `local_num_epochs` each (a fresh Trainer, so a fresh AdamW, per phase); in the first round only
 *   the global adapter trains;
 * - local phase: the local adapter is active and the global one rides along detached at weight 1 − a,
 *   the local one at weight a (fed_utils/client.py 108-110 `set_local(['default'], [a, 1-a])`, a =
 *   `--local_weight` 0.5; peft/tuners/lora/layer.py 221-231 `tmp_result.detach()`): the global adapter
 *   is frozen. The local adapter starts fresh (LoRA init) the first time and is kept after (client.py
 *   89-108);
 * - global phase: the local adapter is removed (client.py 182-185 `delete_adapter('local')`) and the
 *   global adapter trains alone at weight 1 from the round's aggregate (client.py 117-152, 177-178);
 *   only its weights are saved and averaged (client.py 164-175; fed_utils/model_aggregation.py 9-31,
 *   with equal client weights: the sample-count weights are commented out, lines 10-13);
 * - inference (GlobalModel_generated.py 152-156): global at `weight`, local at 1 − weight, 0.5 each by
 *   default, the same mix as the local phase. Both adapters have the run's r and alpha (main.py 175-183;
 *   the local adapter copies the global one's LoraConfig, peft/peft_model.py 457-460).
 * Here the local phase runs `localSteps` steps, then the global phase `localSteps` more (the authors'
 * equal epochs: twice FedIT's compute from round 2 on), each with its own AdamW at the run's constant
 * lr (the authors' Trainer decays it linearly; their LoRA dropout 0.05 has no counterpart in our
 * engine). The average is weighted as the run says (`weighting`: samples by default, `equal` is the
 * authors'). The evaluation mixes the two adapters as inference does, after every round, so after
 * round 1 (local B still zero) it sees the global adapter at half strength. The paper's other
 * schedule, FedDPA-F (the local adapter fine-tuned after federated training), has no path in the
 * released code and none here; the paper's F/T name learning schedules, not the fixed and the
 * instance-wise mix, which apply to both.
 */
import type { AdapterLayout } from "../perfit/layout.ts";
import type { FitIns, FitRes, SimConfig } from "../federation/types.ts";
import type { LocalLearner, StepHook } from "./local_update.ts";

function checkDual(layout: AdapterLayout, r: number): void {
  if (!Number.isInteger(r) || r < 1 || layout.rank !== 2 * r) {
    throw new RangeError(`FedDPA needs a rank-2r layout for r = ${r}, got rank ${layout.rank}`);
  }
}

/** 0/1 over the rank-2r layout: 1 at the global adapter (rows < r of each A, columns < r of each B). */
export function leadMask(layout: AdapterLayout, r: number): Uint8Array {
  checkDual(layout, r);
  const out = new Uint8Array(layout.size);
  for (const e of layout.entries) {
    if (e.kind === "A") out.fill(1, e.offset, e.offset + r * e.shape[1]);
    else {for (let row = 0; row < e.shape[0]; row++) {
        out.fill(1, e.offset + row * 2 * r, e.offset + row * 2 * r + r);
      }}
  }
  return out;
}

/**
 * Per-position factors that weight the two adapters: the global adapter's columns of B by `global`,
 * the local adapter's by `local`, every A by 1 (B·A is linear in B).
 */
export function adapterWeights(
  layout: AdapterLayout,
  r: number,
  global: number,
  local: number,
): Float32Array {
  checkDual(layout, r);
  if (!Number.isFinite(global) || !Number.isFinite(local)) {
    throw new RangeError(`adapter weights must be finite, got ${global}, ${local}`);
  }
  const out = new Float32Array(layout.size).fill(1);
  for (const e of layout.entries) {
    if (e.kind !== "B") continue;
    for (let row = 0; row < e.shape[0]; row++) {
      const o = e.offset + row * 2 * r;
      out.fill(global, o, o + r);
      out.fill(local, o + r, o + 2 * r);
    }
  }
  return out;
}

/**
 * The personalized adapter: (1 − localWeight)·B_g·A_g + localWeight·B_l·A_l as one rank-2r LoRA
 * (what evaluation sees and what the PEFT export writes).
 */
export function combineDual(
  layout: AdapterLayout,
  adapter: Float32Array,
  r: number,
  localWeight: number,
): Float32Array {
  if (adapter.length !== layout.size) {
    throw new RangeError(`adapter has ${adapter.length} values, the layout ${layout.size}`);
  }
  const w = adapterWeights(layout, r, 1 - localWeight, localWeight);
  return adapter.map((v, i) => v * w[i]);
}

/** One FedDPA client round: the local phase (from round 2 on), then the global phase. */
export async function dualFit(
  learner: LocalLearner,
  ins: FitIns,
  cfg: SimConfig,
  r: number,
  localTrainWeight: number,
  onStep?: StepHook,
): Promise<FitRes & { localLoss?: number }> {
  const layout = learner.layout;
  const lead = leadMask(layout, r);
  const steps = ins.steps;
  const phases = ins.round > 1 ? 2 : 1;
  let localLoss: number | undefined;
  if (phases === 2) {
    const a = localTrainWeight;
    const local = await learner.fit(
      {
        ...ins,
        proximal: undefined,
        forwardScale: adapterWeights(layout, r, 1 - a, a),
        trainable: lead.map((g) => 1 - g),
      },
      cfg,
      (id, s) => onStep?.(id, s, 2 * steps),
    );
    localLoss = local.meanLoss;
  }
  const offset = (phases - 1) * steps;
  const global = await learner.fit(
    {
      ...ins,
      forwardScale: adapterWeights(layout, r, 1, 0),
      trainable: lead,
    },
    cfg,
    (id, s) => onStep?.(id, offset + s, phases * steps),
  );
  return { ...global, ...(localLoss !== undefined ? { localLoss } : {}) };
}
