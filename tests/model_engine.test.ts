import assert from "node:assert/strict";
import { Engine, EngineError } from "../runtime/model/engine.ts";
import { initAdapter } from "../runtime/model/lora.ts";
import { evaluatePerplexity, trainLora } from "../runtime/model/trainer.ts";
import { Rng } from "../runtime/model/rng.ts";
import { expectedWeightShapes } from "../runtime/model/weights.ts";
import {
  patternBatch,
  perturbedAdapter,
  randomBatch,
  reachableBuffers,
  tinyModel,
} from "./model_fixtures.ts";

/**
 * Directional finite differences: (L(x+hd) - L(x-hd)) / 2h against grad·d for random directions.
 * Summing over every coordinate makes the f32 loss difference large enough to compare tightly.
 */
async function checkDirectional(
  engine: Engine,
  batch: ReturnType<typeof randomBatch>,
  adapter: Float32Array,
  mask: Uint8Array,
  seed: number,
) {
  const { grads } = await engine.trainStep(batch, adapter, mask);
  const rng = new Rng(seed);
  const lossAt = async (a: Float32Array) => {
    const r = await engine.evalNll(batch, a, mask);
    return r.nllSum / r.tokens;
  };
  for (let trial = 0; trial < 3; trial++) {
    const d = Float32Array.from({ length: adapter.length }, () => rng.normal());
    const norm = Math.sqrt(d.reduce((a, v) => a + v * v, 0));
    d.forEach((v, i) => (d[i] = v / norm));
    let gd = 0;
    for (let i = 0; i < d.length; i++) gd += grads[i] * d[i] * mask[i];
    const h = 1e-2;
    const plus = adapter.map((v, i) => v + h * d[i]);
    const minus = adapter.map((v, i) => v - h * d[i]);
    const fd = ((await lossAt(plus)) - (await lossAt(minus))) / (2 * h);
    // Masked coordinates are frozen: moving them must not change the loss.
    assert.ok(Math.abs(gd) > 1e-3, `directional derivative too small to test: ${gd}`);
    assert.ok(
      Math.abs(fd - gd) <= 0.01 * Math.abs(gd) + 1e-4,
      `trial ${trial}: finite difference ${fd} vs gradient ${gd}`,
    );
  }
}

Deno.test("model_engine: qwen2 (biases, GQA, tied) LoRA gradients match finite differences", async () => {
  const { model } = await tinyModel({ config: { modelType: "qwen2", qkvBias: true }, seed: 3 });
  const engine = await Engine.create(model, {
    rank: 4,
    alpha: 8,
    targets: ["q", "k", "v", "o", "gate", "up", "down"],
  }, { backend: "node" });
  const batch = randomBatch(model.config.vocabSize, [10, 7], 12, 5);
  const adapter = perturbedAdapter(engine.layout.size, 9);
  await checkDirectional(engine, batch, adapter, new Uint8Array(adapter.length).fill(1), 11);
});

Deno.test("model_engine: llama untied, masked LoRA gradients match finite differences and are zero where masked", async () => {
  const { model } = await tinyModel({ config: { tieWordEmbeddings: false, numKvHeads: 1 }, seed: 4 });
  const engine = await Engine.create(model, { rank: 3, alpha: 6, targets: ["q", "v"] }, { backend: "node" });
  const batch = randomBatch(model.config.vocabSize, [9, 12, 5], 12, 6);
  const adapter = perturbedAdapter(engine.layout.size, 10);
  const rng = new Rng(1);
  const mask = Uint8Array.from({ length: adapter.length }, () => (rng.next() < 0.5 ? 1 : 0));
  const r = await engine.trainStep(batch, adapter, mask);
  let nonzero = 0;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] === 0) {
      assert.ok(r.grads[i] === 0, `masked position ${i} has gradient ${r.grads[i]}`);
      assert.ok(r.importance[i] === 0);
    } else if (r.grads[i] !== 0) nonzero++;
    assert.ok(Math.abs(r.importance[i] - Math.abs(adapter[i] * r.grads[i])) <= 1e-6 * (1 + r.importance[i]));
  }
  assert.ok(nonzero > mask.length / 4, `too few non-zero gradients: ${nonzero}`);
  await checkDirectional(engine, batch, adapter, mask, 12);
});

Deno.test("model_engine: eval NLL agrees with the train-step loss; padding keys are masked", async () => {
  const { model } = await tinyModel({ seed: 5 });
  const engine = await Engine.create(model, { rank: 2, alpha: 4, targets: ["q", "v"] }, { backend: "node" });
  const adapter = perturbedAdapter(engine.layout.size, 2);
  const batch = randomBatch(model.config.vocabSize, [8, 5], 8, 7);
  const ones = new Uint8Array(adapter.length).fill(1);
  const step = await engine.trainStep(batch, adapter, ones);
  const ev = await engine.evalNll(batch, adapter, ones);
  assert.equal(ev.tokens, 6 + 3);
  assert.ok(Math.abs(ev.nllSum / ev.tokens - step.loss) < 1e-5);
  // Row 1 alone (cut to its 5 real tokens) must give the same NLL as inside the padded batch.
  const row = randomBatch(model.config.vocabSize, [5], 5, 0);
  row.inputIds.set(batch.inputIds.subarray(8, 13));
  const alone = await engine.evalNll(row, adapter, ones);
  const first = randomBatch(model.config.vocabSize, [8], 8, 0);
  first.inputIds.set(batch.inputIds.subarray(0, 8));
  const a0 = await engine.evalNll(first, adapter, ones);
  assert.ok(
    Math.abs(a0.nllSum + alone.nllSum - ev.nllSum) < 1e-4,
    `${a0.nllSum}+${alone.nllSum} vs ${ev.nllSum}`,
  );
  // Masking an early key changes later predictions (the padding mask reaches attention).
  const holed = { ...batch, attentionMask: batch.attentionMask.slice() };
  holed.attentionMask[2] = 0;
  const h = await engine.evalNll(holed, adapter, ones);
  assert.ok(Math.abs(h.nllSum - ev.nllSum) > 1e-4);
});

Deno.test("model_engine: training lowers the loss and masked positions never move", async () => {
  const { model } = await tinyModel({ seed: 6 });
  const engine = await Engine.create(model, { rank: 4, alpha: 8, targets: ["q", "v", "up"] }, {
    backend: "node",
  });
  const adapter = initAdapter(engine.layout, 1);
  const rng = new Rng(2);
  const mask = Uint8Array.from({ length: adapter.length }, () => (rng.next() < 0.6 ? 1 : 0));
  const before = adapter.slice();
  const batches = [
    patternBatch(model.config.vocabSize, [1, 5], 10),
    patternBatch(model.config.vocabSize, [9, 13], 10),
  ];
  const ppl0 = await evaluatePerplexity(engine, batches, adapter, mask);
  const res = await trainLora(engine, batches, adapter, mask, { steps: 60, lr: 5e-2, seed: 1 });
  const ppl1 = await evaluatePerplexity(engine, batches, adapter, mask);
  assert.ok(ppl1.perplexity < 0.7 * ppl0.perplexity, `perplexity ${ppl0.perplexity} -> ${ppl1.perplexity}`);
  assert.ok(res.losses.at(-1)! < res.losses[0]);
  let moved = 0;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] === 0) assert.equal(adapter[i], before[i], `masked position ${i} moved`);
    else if (adapter[i] !== before[i]) moved++;
    if (mask[i] === 0) assert.ok(res.importance[i] === 0);
  }
  assert.ok(moved > 0.5 * mask.reduce((a, b) => a + b, 0));
  // Determinism: the same run again gives a bit-identical adapter.
  const again = initAdapter(engine.layout, 1);
  await trainLora(engine, batches, again, mask, { steps: 60, lr: 5e-2, seed: 1 });
  assert.deepEqual(again, adapter);
});

Deno.test("model_engine: bad batches and adapters are rejected with clear errors", async () => {
  const { model } = await tinyModel({ seed: 7 });
  const engine = await Engine.create(model, { rank: 2, alpha: 2, targets: ["v"] }, { backend: "node" });
  const a = initAdapter(engine.layout, 0);
  const ones = new Uint8Array(a.length).fill(1);
  const good = randomBatch(model.config.vocabSize, [6], 6, 1);
  await assert.rejects(engine.trainStep({ ...good, seq: 7 }, a, ones), EngineError);
  const badIds = { ...good, inputIds: good.inputIds.slice() };
  badIds.inputIds[2] = BigInt(model.config.vocabSize);
  await assert.rejects(engine.trainStep(badIds, a, ones), /outside the vocabulary/);
  await assert.rejects(engine.trainStep(good, a.subarray(1), ones), /adapter must be/);
  const nan = a.slice();
  nan[3] = NaN;
  await assert.rejects(engine.trainStep(good, nan, ones), /non-finite/);
  await assert.rejects(engine.trainStep(good, a, ones.subarray(1)), /mask has/);
  const lastLoss = { ...good, lossMask: good.lossMask.slice() };
  lastLoss.lossMask[5] = 1;
  await assert.rejects(engine.trainStep(lastLoss, a, ones), /last position/);
  // The engine still works after the rejections.
  assert.ok(Number.isFinite((await engine.trainStep(good, a, ones)).loss));
});

Deno.test("model_engine: activation checkpointing gives the same loss, gradients and importance", async () => {
  const { model } = await tinyModel({ config: { modelType: "qwen2", qkvBias: true, numLayers: 3 }, seed: 5 });
  const spec = { rank: 4, alpha: 8, targets: ["q", "k", "v", "o", "gate", "up", "down"] as const };
  const plain = await Engine.create(model, { ...spec, targets: [...spec.targets] }, { backend: "node" });
  const ckpt = await Engine.create(model, { ...spec, targets: [...spec.targets] }, {
    backend: "node",
    checkpoint: true,
  });
  const batch = randomBatch(model.config.vocabSize, [10, 7, 12], 12, 8);
  const adapter = perturbedAdapter(plain.layout.size, 12);
  const mask = new Uint8Array(adapter.length).map((_, i) => (i % 3 === 0 ? 0 : 1));
  const a = await plain.trainStep(batch, adapter, mask);
  const b = await ckpt.trainStep(batch, adapter, mask);
  assert.ok(Math.abs(a.loss - b.loss) <= 1e-6 * Math.abs(a.loss), `loss ${a.loss} vs ${b.loss}`);
  let worst = 0, scale = 0;
  for (let i = 0; i < a.grads.length; i++) {
    worst = Math.max(worst, Math.abs(a.grads[i] - b.grads[i]));
    scale = Math.max(scale, Math.abs(a.grads[i]));
  }
  assert.ok(scale > 0, "gradients are all zero: nothing was compared");
  assert.ok(worst <= 1e-5 * scale, `worst gradient difference ${worst} (largest gradient ${scale})`);
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) assert.ok(b.grads[i] === 0, `masked position ${i} has gradient ${b.grads[i]}`);
    assert.ok(Math.abs(a.importance[i] - b.importance[i]) <= 1e-5 * scale * (1 + Math.abs(adapter[i])));
  }
});

Deno.test("model_engine: the model and its engines hold the base weights once, on every backend and weight mode", async () => {
  const { model } = await tinyModel({ seed: 12, config: { tieWordEmbeddings: false } });
  const cfg = model.config;
  let weightBytes = 0;
  for (const shape of expectedWeightShapes(cfg).values()) weightBytes += 4 * shape.reduce((a, b) => a * b, 1);
  const held = (roots: unknown[], skip = 0) => {
    let n = 0;
    for (const v of reachableBuffers(roots, [Engine]).values()) {
      if (v.byteLength !== skip) n += v.buffer.byteLength;
    }
    return n;
  };
  // The model: every weight once, in kernel layout, nothing else.
  assert.equal(held([model]), weightBytes);
  const own = new Set([...model.kernelWeights.values()].map((t) => t.data.buffer));
  const spec = { rank: 2, alpha: 4, targets: ["q", "v", "down"] as ("q" | "v" | "down")[] };
  const batch = randomBatch(cfg.vocabSize, [9, 6], 10, 3);
  const pick = new Float32Array(batch.batch * batch.seq);
  pick[2] = pick[batch.seq + 3] = 1;
  for (
    const opts of [
      { backend: "node", weightMode: "inputs" },
      { backend: "node", weightMode: "constants" },
      { backend: "wasm", weightMode: "constants", numThreads: 1 },
    ] as const
  ) {
    const engine = await Engine.create(model, spec, opts);
    const adapter = perturbedAdapter(engine.layout.size, 4);
    const mask = new Uint8Array(adapter.length).fill(1);
    mask[0] = 0;
    await engine.trainStep(batch, adapter, mask);
    await engine.evalNll(batch, adapter, mask);
    await engine.hiddenAt(batch, pick, adapter, mask);
    // Every weight-holding array the engine reaches is one of the model's own (its feeds are views of
    // them); beside them it keeps only its adapter-sized mask buffers.
    for (const v of reachableBuffers([engine], [Engine]).values()) {
      if (v.byteLength === 4 * engine.layout.size) continue;
      assert.ok(
        own.has(v.buffer),
        `${opts.backend}/${opts.weightMode}: a ${v.byteLength}-byte array of its own`,
      );
    }
    assert.equal(
      held([model, engine], 4 * engine.layout.size),
      weightBytes,
      `${opts.backend}/${opts.weightMode}`,
    );
  }
});
