/**
 * The bench model shapes (bench/model_135m.ts): the SmolLM2-135M and -360M configs give those
 * models' parameter counts, the 360M shape's geometry runs a train step whose loss is a random
 * model's (about ln vocab) and does not change with checkpointing, a smaller bench batch is the
 * leading rows of the larger one, and the browser bench refuses options that do not apply.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../runtime/model/config.ts";
import { Engine } from "../runtime/model/engine.ts";
import { initAdapter } from "../runtime/model/lora.ts";
import { clearSessionCache } from "../runtime/graph/mod.ts";
import {
  BENCH_SHAPES,
  benchBatch,
  benchModel,
  parameterCount,
  SMOLLM2_135M,
  SMOLLM2_360M,
} from "../bench/model_135m.ts";
import { resolveOptions } from "../bench/browser_train_step.ts";

Deno.test("bench shapes: SmolLM2-135M and -360M parse to their parameter counts (tied embeddings)", () => {
  // Hand counts: embedding V·h once (tied), per layer q,o h·h, k,v h·kv, 3 MLP h·i, 2 norms h; final norm h.
  const count = (h: number, i: number, layers: number, kv: number) =>
    49152 * h + layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h;
  const c135 = parseConfig(SMOLLM2_135M), c360 = parseConfig(SMOLLM2_360M);
  assert.equal(parameterCount(c135), count(576, 1536, 30, 192));
  assert.equal(parameterCount(c135), 134_515_008);
  assert.equal(parameterCount(c360), count(960, 2560, 32, 320));
  assert.equal(parameterCount(c360), 361_821_120);
  assert.deepEqual(
    [c360.hiddenSize, c360.intermediateSize, c360.numLayers, c360.numHeads, c360.numKvHeads, c360.headDim],
    [960, 2560, 32, 15, 5, 64],
  );
  assert.equal(c360.vocabSize, 49152);
  assert.equal(c360.tieWordEmbeddings, true);
  assert.equal(c360.rmsNormEps, 1e-5);
  assert.equal(c360.ropeTheta, 100000);
  assert.deepEqual(Object.keys(BENCH_SHAPES), ["135m", "360m"]);
});

Deno.test("bench shapes: a smaller bench batch is the leading rows of the default one; bad sizes refused", () => {
  const full = benchBatch(49152), one = benchBatch(49152, 1, 256);
  assert.deepEqual([full.batch, full.seq, one.batch, one.seq], [4, 256, 1, 256]);
  assert.deepEqual(one.inputIds, full.inputIds.subarray(0, 256));
  assert.deepEqual(one.lossMask, full.lossMask.subarray(0, 256));
  assert.equal(one.lossMask[255], 0);
  assert.equal(one.lossMask.reduce((a, b) => a + b, 0), 255);
  assert.throws(() => benchBatch(49152, 0, 256), /at least 1 x 2/);
  assert.throws(() => benchBatch(49152, 1, 1), /at least 1 x 2/);
});

Deno.test({
  name:
    "bench shapes: the 360M geometry (15:5 heads, hidden 960) trains one step, same loss with checkpointing",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const model = benchModel(1, "360m");
    assert.equal(model.config.numLayers, 1);
    assert.match(model.source, /360M/);
    const batch = benchBatch(model.config.vocabSize, 1, 8);
    const losses: number[] = [];
    for (const checkpoint of [false, true]) {
      const engine = await Engine.create(model, { rank: 8, alpha: 16, targets: ["q", "v"] }, {
        backend: "node",
        weightMode: "inputs",
        checkpoint,
      });
      const adapter = initAdapter(engine.layout, 0);
      const r = await engine.trainStep(batch, adapter, new Uint8Array(adapter.length).fill(1));
      losses.push(r.loss);
      assert.ok(r.grads.some((g) => g !== 0), "some LoRA gradient is non-zero");
      await clearSessionCache();
    }
    // N(0, 0.02) weights give a near-uniform next-token distribution, loss near ln(vocab) = 10.80; with
    // one layer the tied head still sees the input token's own embedding in the residual, which lifts
    // its logit and the loss above ln(vocab) (11.46 here), but by well under 1.5 nats.
    assert.ok(Number.isFinite(losses[0]), `loss ${losses[0]}`);
    assert.ok(losses[0] > Math.log(49152) - 0.5 && losses[0] < Math.log(49152) + 1.5, `loss ${losses[0]}`);
    assert.ok(Math.abs(losses[1] - losses[0]) < 1e-5, `checkpointing changed the loss: ${losses}`);
  },
});

Deno.test("browser bench options: 360m defaults to weights as inputs; tiny refuses --batch; bad sizes refused", () => {
  const o = resolveOptions({ model: "360m", checkpoint: true, batch: 1, seq: 256 });
  assert.deepEqual(
    [o.model, o.big, o.weightMode, o.steps, o.threads, o.batch, o.seq, o.checkpoint],
    ["360m", true, "inputs", 2, 2, 1, 256, true],
  );
  assert.equal(resolveOptions({}).weightMode, undefined);
  assert.equal(o.memArena, undefined);
  assert.equal(resolveOptions({ model: "360m", memArena: false }).memArena, false);
  assert.throws(() => resolveOptions({ model: "tiny", batch: 2 }), /apply to the SmolLM2 shapes/);
  assert.throws(() => resolveOptions({ model: "360m", threads: 0 }), /--threads must be a positive integer/);
  assert.throws(() => resolveOptions({ model: "360m", seq: 1 }), /--seq must be at least 2/);
  assert.throws(() => resolveOptions({ model: "1b" as "360m" }), /--model must be one of tiny, 135m, 360m/);
});

Deno.test("train step bench: refuses a bad --weights, --steps, --pairs or --model", async () => {
  const { run } = await import("../bench/model_train_step.ts");
  await assert.rejects(
    () => run({ weightMode: "weights" as "inputs" }),
    /--weights must be inputs or constants, got weights/,
  );
  await assert.rejects(() => run({ steps: 0 }), /--steps must be a positive integer/);
  await assert.rejects(() => run({ pairs: 1.5, torch: false }), /--pairs must be a positive integer/);
  await assert.rejects(() => run({ shape: "1b" as "135m" }), /--model must be one of/);
});
