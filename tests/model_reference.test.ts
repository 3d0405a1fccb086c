/**
 * Reference check against PyTorch + Hugging Face transformers (float64, eager attention): the same tiny
 * model folder, batch and masked LoRA adapter give the same loss and LoRA gradients (relative error
 * <= 1e-4). Needs the venv that tests/reference/setup.sh creates; skipped with a message without it
 * (set PERFIT_REFERENCE_SETUP=1 to let this test run the set-up itself).
 */
import assert from "node:assert/strict";
import { Engine } from "../runtime/model/engine.ts";
import { Rng } from "../runtime/model/rng.ts";
import type { ModelConfig } from "../runtime/model/config.ts";
import type { TargetModule } from "../runtime/model/lora.ts";
import { perturbedAdapter, randomBatch, tinyModel } from "./model_fixtures.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const PY = `${ROOT}tests/.tmp/torchvenv/bin/python`;

async function venvReady(): Promise<boolean> {
  const probe = async () => {
    try {
      const r = await new Deno.Command(PY, {
        args: ["-c", "import torch, transformers, numpy"],
        stdout: "null",
        stderr: "null",
      }).output();
      return r.success;
    } catch {
      return false;
    }
  };
  if (await probe()) return true;
  if (Deno.env.get("PERFIT_REFERENCE_SETUP") === "1") {
    const r = await new Deno.Command("bash", { args: [`${ROOT}tests/reference/setup.sh`] }).output();
    if (r.success) return await probe();
  }
  return false;
}

const ready = await venvReady();
if (!ready) {
  console.warn(
    "model_reference: SKIPPED: PyTorch reference venv missing; run `bash tests/reference/setup.sh` " +
      "(installs torch + transformers from PyPI into tests/.tmp/torchvenv) or set PERFIT_REFERENCE_SETUP=1",
  );
}

interface Prepared {
  caseDir: string;
  check: () => Promise<void>;
}

async function prepare(
  config: Partial<ModelConfig>,
  targets: TargetModule[],
  seed: number,
): Promise<Prepared> {
  const { dir, model } = await tinyModel({ config, seed, merges: 40 });
  const engine = await Engine.create(model, { rank: 4, alpha: 8, targets }, { backend: "node" });
  const batch = randomBatch(model.config.vocabSize, [12, 9, 6], 12, seed);
  const adapter = perturbedAdapter(engine.layout.size, seed + 1, 0.2);
  const rng = new Rng(seed + 2);
  const mask = Uint8Array.from({ length: adapter.length }, () => (rng.next() < 0.7 ? 1 : 0));
  const ours = await engine.trainStep(batch, adapter, mask);

  const caseDir = await Deno.makeTempDir({ prefix: "perfit_ref_" });
  await Deno.writeTextFile(
    `${caseDir}/case.json`,
    JSON.stringify({
      model_dir: dir,
      batch: batch.batch,
      seq: batch.seq,
      input_ids: Array.from(batch.inputIds, Number),
      attention_mask: Array.from(batch.attentionMask),
      loss_mask: Array.from(batch.lossMask),
      scale: engine.scale,
      entries: engine.layout.entries,
    }),
  );
  await Deno.writeFile(`${caseDir}/adapter.f32`, new Uint8Array(adapter.buffer));
  await Deno.writeFile(`${caseDir}/mask.u8`, mask);
  return {
    caseDir,
    check: async () => {
      const ref = JSON.parse(await Deno.readTextFile(`${caseDir}/result.json`));
      const refGrads = new Float64Array((await Deno.readFile(`${caseDir}/grads.f64`)).buffer);

      const lossErr = Math.abs(ours.loss - ref.loss) / Math.abs(ref.loss);
      assert.ok(lossErr <= 1e-4, `loss ${ours.loss} vs torch ${ref.loss} (rel ${lossErr})`);
      let worst = 0;
      for (const e of engine.layout.entries) {
        let num = 0, den = 0;
        for (let i = e.offset; i < e.offset + e.size; i++) {
          num += (ours.grads[i] - refGrads[i]) ** 2;
          den += refGrads[i] ** 2;
          if (mask[i] === 0) assert.ok(refGrads[i] === 0, `${e.name}: torch moved a masked position`);
        }
        if (den === 0) {
          assert.equal(num, 0, `${e.name}: torch gradient is zero, ours is not`);
          continue;
        }
        const rel = Math.sqrt(num / den);
        worst = Math.max(worst, rel);
        assert.ok(rel <= 1e-4, `${e.name}: gradient relative error ${rel}`);
      }
      console.log(
        `model_reference: ${model.config.modelType} loss rel err ${
          lossErr.toExponential(2)
        }, worst grad rel err ${worst.toExponential(2)} (torch ${ref.torch})`,
      );
    },
  };
}

Deno.test({
  name:
    "model_reference: loss and masked LoRA grads match PyTorch/transformers (qwen2 biases+GQA+untied; llama tied+GQA)",
  ignore: !ready,
  fn: async () => {
    const cases = [
      await prepare({ modelType: "qwen2", qkvBias: true, tieWordEmbeddings: false }, [
        "q",
        "k",
        "v",
        "o",
        "gate",
        "up",
        "down",
      ], 21),
      await prepare({ modelType: "llama", tieWordEmbeddings: true, numKvHeads: 2 }, ["q", "v"], 22),
    ];
    // One Python process for all cases: importing torch dominates the run time.
    const run = await new Deno.Command(PY, {
      args: [`${ROOT}tests/reference/torch_reference.py`, ...cases.map((c) => c.caseDir)],
    }).output();
    assert.ok(run.success, `torch_reference.py failed: ${new TextDecoder().decode(run.stderr)}`);
    for (const c of cases) await c.check();
  },
});
