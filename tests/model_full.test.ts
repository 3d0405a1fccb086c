import assert from "node:assert/strict";
import { Engine, FullEngine } from "../runtime/model/engine.ts";
import { Rng } from "../runtime/model/rng.ts";
import { resolveSource } from "../runtime/model/hub.ts";
import { loadWeights } from "../runtime/model/weights.ts";
import { fromKernelLayout, type KernelWeights } from "../runtime/model/train_step.ts";
import { patternBatch, perturbedAdapter, randomBatch, tinyModel } from "./model_fixtures.ts";
import { AdamW } from "../runtime/model/optim.ts";

Deno.test("model_full: full-parameter gradients match directional finite differences", async () => {
  const { model } = await tinyModel({
    config: { modelType: "qwen2", qkvBias: true, tieWordEmbeddings: true },
    seed: 8,
  });
  const engine = await FullEngine.create(model.config, { backend: "node" });
  const w = model.kernelWeights;
  const batch = randomBatch(model.config.vocabSize, [9, 6], 10, 3);
  const { grads } = await engine.step(batch, w);
  assert.equal(grads.size, w.size);
  const rng = new Rng(4);
  const dir = new Map([...w].map(([n, t]) => [n, Float32Array.from(t.data, () => rng.normal())]));
  let norm = 0, gd = 0;
  for (const d of dir.values()) for (let i = 0; i < d.length; i++) norm += d[i] * d[i];
  norm = Math.sqrt(norm);
  for (const [n, d] of dir) for (let i = 0; i < d.length; i++) gd += grads.get(n)![i] * d[i] / norm;
  const shifted = (h: number): KernelWeights =>
    new Map(
      [...w].map((
        [n, t],
      ) => [n, { shape: t.shape, data: t.data.map((v, i) => v + h * dir.get(n)![i] / norm) }]),
    );
  const lossAt = async (k: KernelWeights) => {
    const r = await engine.evalNll(batch, k);
    return r.nllSum / r.tokens;
  };
  const h = 1e-2;
  const fd = ((await lossAt(shifted(h))) - (await lossAt(shifted(-h)))) / (2 * h);
  assert.ok(Math.abs(gd) > 1e-3);
  assert.ok(Math.abs(fd - gd) <= 0.01 * Math.abs(gd) + 1e-4, `finite difference ${fd} vs gradient ${gd}`);
});

Deno.test("model_full: a few full-parameter AdamW steps lower the loss; kernel layout round-trips", async () => {
  const { dir, model } = await tinyModel({ seed: 9 });
  const engine = await FullEngine.create(model.config, { backend: "node" });
  const w = model.kernelWeights;
  const back = fromKernelLayout(w);
  const file = await loadWeights(await resolveSource(dir));
  assert.equal(back.size, file.size);
  for (const [n, t] of file) assert.deepEqual(back.get(n)!.data, t.data, n);
  const batch = patternBatch(model.config.vocabSize, [0, 7, 11], 12);
  const names = [...w.keys()];
  const opts = new Map(names.map((n) => [n, new AdamW(w.get(n)!.data.length, { lr: 1e-2 })]));
  const work: KernelWeights = new Map(
    names.map((n) => [n, { shape: w.get(n)!.shape, data: w.get(n)!.data.slice() }]),
  );
  const first = (await engine.step(batch, work)).loss;
  let last = first;
  for (let s = 0; s < 15; s++) {
    const r = await engine.step(batch, work);
    for (const n of names) opts.get(n)!.step(work.get(n)!.data, r.grads.get(n)!);
    last = r.loss;
  }
  assert.ok(last < 0.6 * first, `loss ${first} -> ${last}`);
});

Deno.test("model_engine: the WASM backend gives the same loss and gradients as onnxruntime-node", async () => {
  const { model } = await tinyModel({ config: { numKvHeads: 1 }, seed: 10 });
  const spec = { rank: 2, alpha: 4, targets: ["q", "v", "o"] as ("q" | "v" | "o")[] };
  const node = await Engine.create(model, spec, { backend: "node" });
  const wasm = await Engine.create(model, spec, { backend: "wasm", numThreads: 1 });
  assert.equal(wasm.backend, "wasm");
  const batch = randomBatch(model.config.vocabSize, [8, 5], 8, 4);
  const adapter = perturbedAdapter(node.layout.size, 5);
  const mask = new Uint8Array(adapter.length).fill(1);
  const a = await node.trainStep(batch, adapter, mask);
  const b = await wasm.trainStep(batch, adapter, mask);
  assert.ok(Math.abs(a.loss - b.loss) < 1e-5, `${a.loss} vs ${b.loss}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.grads.length; i++) {
    num += (a.grads[i] - b.grads[i]) ** 2;
    den += a.grads[i] ** 2;
  }
  assert.ok(den > 0 && Math.sqrt(num / den) < 1e-4, `gradient mismatch ${Math.sqrt(num / den)}`);
  const e1 = await node.evalNll(batch, adapter), e2 = await wasm.evalNll(batch, adapter);
  assert.equal(e1.tokens, e2.tokens);
  assert.ok(Math.abs(e1.nllSum - e2.nllSum) < 1e-4);
});

Deno.test({
  // Software WebGPU (llvmpipe) needs ~20 s to build and ~80 s for the first step of even this tiny
  // model (shader compilation), so this check is opt-in: PERFIT_TEST_WEBGPU=1.
  name: "model_engine: the WebGPU backend gives the same loss and gradients as onnxruntime-node",
  ignore: Deno.env.get("PERFIT_TEST_WEBGPU") !== "1",
  fn: async () => {
    const { model } = await tinyModel({ config: { numKvHeads: 2 }, seed: 10 });
    const spec = { rank: 2, alpha: 4, targets: ["q", "v"] as ("q" | "v")[] };
    const node = await Engine.create(model, spec, { backend: "node" });
    const gpu = await Engine.create(model, spec, { backend: "webgpu" });
    const batch = randomBatch(model.config.vocabSize, [8, 5], 8, 4);
    const adapter = perturbedAdapter(node.layout.size, 5);
    const mask = new Uint8Array(adapter.length).fill(1);
    const a = await node.trainStep(batch, adapter, mask);
    const b = await gpu.trainStep(batch, adapter, mask);
    assert.ok(Math.abs(a.loss - b.loss) < 1e-5, `${a.loss} vs ${b.loss}`);
    let num = 0, den = 0;
    for (let i = 0; i < a.grads.length; i++) {
      num += (a.grads[i] - b.grads[i]) ** 2;
      den += a.grads[i] ** 2;
    }
    assert.ok(den > 0 && Math.sqrt(num / den) < 1e-4, `gradient mismatch ${Math.sqrt(num / den)}`);
  },
});
