import assert from "node:assert/strict";
import { createSession, Graph, toOnnx } from "../runtime/graph/mod.ts";
import { sessionTuning, tuneNativeMalloc } from "../runtime/graph/session.ts";
import { Engine } from "../runtime/model/engine.ts";
import type { LoadedModel } from "../runtime/model/load.ts";
import { perturbedAdapter, randomBatch, tinyModel } from "./model_fixtures.ts";
import { renderProfile, summarizeProfile } from "../bench/profile_ops.ts";

function smallGraph(): Uint8Array {
  const g = new Graph();
  const a = g.input("a", "f32", [3, 4]);
  const w = g.constant(Float32Array.from({ length: 20 }, (_, i) => (i % 7) - 3), [4, 5]);
  g.output("y", g.softmax(g.matmul(g.exp(g.mul(a, 0.5)), w), -1));
  return toOnnx(g);
}

Deno.test("perf_session_options: defaults turn the CPU arena off on node only and validate knobs", () => {
  assert.deepEqual(sessionTuning("node"), {
    memArena: false,
    memPattern: undefined,
    executionMode: "sequential",
    graphOptimizationLevel: "all",
  });
  assert.equal(sessionTuning("wasm").memArena, undefined);
  assert.equal(sessionTuning("node", { memArena: true }).memArena, true);
  assert.equal(sessionTuning("wasm", { memPattern: false }).memPattern, false);
  assert.throws(
    () => sessionTuning("node", { executionMode: "fast" as "parallel" }),
    /executionMode must be/,
  );
  assert.throws(
    () => sessionTuning("node", { graphOptimizationLevel: "max" as "all" }),
    /graphOptimizationLevel must be/,
  );
  assert.throws(() => tuneNativeMalloc(-1), /mallocMmapThreshold/);
  assert.throws(() => tuneNativeMalloc(1.5), /mallocMmapThreshold/);
});

Deno.test("perf_session_options: every tuning combination gives the same outputs (node and wasm)", async () => {
  const bytes = smallGraph();
  const a = Float32Array.from({ length: 12 }, (_, i) => Math.sin(i));
  for (const backend of ["node", "wasm"] as const) {
    const ref = await createSession(bytes, { backend, noCache: true, memArena: true });
    const want = (await ref.run({ a: { data: a, dims: [3, 4] } })).y.data as Float32Array;
    await ref.release();
    const variants = [
      { memArena: false, memPattern: false },
      { memArena: false, executionMode: "parallel" as const },
      { graphOptimizationLevel: "disabled" as const, mallocMmapThreshold: false as const },
      {},
    ];
    for (const v of variants) {
      const s = await createSession(bytes, { backend, noCache: true, ...v });
      const got = (await s.run({ a: { data: a, dims: [3, 4] } })).y.data as Float32Array;
      await s.release();
      assert.equal(got.length, 15);
      for (let i = 0; i < got.length; i++) {
        assert.ok(
          Math.abs(got[i] - want[i]) <= 1e-6,
          `${backend} ${JSON.stringify(v)} [${i}]: ${got[i]} vs ${want[i]}`,
        );
      }
    }
  }
  await assert.rejects(
    () => createSession(bytes, { backend: "node", executionMode: "eager" as "parallel" }),
    /executionMode must be/,
  );
});

Deno.test("perf_session_options: engine session options and a hand-built kernel-layout model keep the step exact", async () => {
  const { model } = await tinyModel({ seed: 21 });
  const spec = { rank: 2, alpha: 4, targets: ["q", "v"] as ("q" | "v")[] };
  const batch = randomBatch(model.config.vocabSize, [9, 6], 10, 3);
  const base = await Engine.create(model, spec, { backend: "node", session: { memArena: true } });
  const adapter = perturbedAdapter(base.layout.size, 4);
  const mask = new Uint8Array(adapter.length).map((_, i) => (i % 3 === 0 ? 0 : 1));
  const want = await base.trainStep(batch, adapter, mask);
  assert.ok(want.grads.some((v) => v !== 0));

  // A model built by hand in kernel layout (what the benchmark does with its random weights).
  const built: LoadedModel = {
    ...model,
    kernelWeights: new Map(
      [...model.kernelWeights].map(([n, t]) => [n, { shape: t.shape, data: t.data.slice() }]),
    ),
  };
  const tuned = await Engine.create(built, spec, {
    backend: "node",
    session: { memArena: false, memPattern: false, mallocMmapThreshold: 1 << 20 },
  });
  const got = await tuned.trainStep(batch, adapter, mask);
  assert.ok(Math.abs(got.loss - want.loss) <= 1e-6 * Math.abs(want.loss), `${got.loss} vs ${want.loss}`);
  for (let i = 0; i < want.grads.length; i++) {
    assert.ok(Math.abs(got.grads[i] - want.grads[i]) <= 1e-5 * (1e-3 + Math.abs(want.grads[i])), `grad ${i}`);
    if (mask[i] === 0) assert.ok(got.grads[i] === 0, `masked grad ${i} = ${got.grads[i]}`);
  }
  const ev = await tuned.evalNll(batch, adapter, mask);
  assert.ok(Number.isFinite(ev.nllSum) && ev.tokens > 0);
});

Deno.test("perf_head_chunks: a vocabulary-chunked head gives the loss and gradients of the single-chunk head", async () => {
  for (const tied of [true, false]) {
    const { model } = await tinyModel({ config: { tieWordEmbeddings: tied }, seed: tied ? 31 : 32 });
    const V = model.config.vocabSize;
    const spec = { rank: 2, alpha: 4, targets: ["q", "v", "down"] as ("q" | "v" | "down")[] };
    const batch = randomBatch(V, [10, 4, 8], 10, 7);
    const one = await Engine.create(model, spec, { backend: "node", headChunk: V });
    // 37 does not divide the vocabulary: the last chunk is shorter.
    const many = await Engine.create(model, spec, { backend: "node", headChunk: 37 });
    assert.ok(V % 37 !== 0 && V > 3 * 37, `vocab ${V}`);
    const adapter = perturbedAdapter(one.layout.size, 5);
    const mask = new Uint8Array(adapter.length).fill(1);
    const a = await one.trainStep(batch, adapter, mask), b = await many.trainStep(batch, adapter, mask);
    assert.ok(
      a.loss > 1 && Math.abs(a.loss - b.loss) <= 1e-5 * a.loss,
      `tied=${tied}: ${a.loss} vs ${b.loss}`,
    );
    let worst = 0, scale = 0;
    for (let i = 0; i < a.grads.length; i++) {
      worst = Math.max(worst, Math.abs(a.grads[i] - b.grads[i]));
      scale = Math.max(scale, Math.abs(a.grads[i]));
    }
    assert.ok(scale > 0 && worst <= 1e-4 * scale, `tied=${tied}: worst grad diff ${worst} of ${scale}`);
    const ea = await one.evalNll(batch, adapter), eb = await many.evalNll(batch, adapter);
    assert.equal(ea.tokens, eb.tokens);
    assert.ok(Math.abs(ea.nllSum - eb.nllSum) <= 1e-5 * ea.nllSum);
    assert.ok(Math.abs(ea.nllSum / ea.tokens - a.loss) <= 1e-5 * a.loss, "eval and train losses agree");
  }
  const { model } = await tinyModel({ seed: 33 });
  await assert.rejects(
    () => Engine.create(model, { rank: 2, alpha: 4, targets: ["q"] }, { backend: "node", headChunk: 0 }),
    /headChunk must be a positive integer/,
  );
});

Deno.test("perf_profile: a profiled node session writes onnxruntime's profile on release, and profile_ops sums it by op", async () => {
  assert.throws(() => sessionTuning("wasm", { profile: "/tmp/x" }), /profile needs/);
  assert.throws(() => sessionTuning("node", { profile: "" }), /profile needs/);
  const dir = await Deno.makeTempDir();
  try {
    const s = await createSession(smallGraph(), { backend: "node", profile: `${dir}/p`, noCache: true });
    const a = Float32Array.from({ length: 12 }, (_, i) => i / 12);
    for (let i = 0; i < 3; i++) await s.run({ a: { data: a, dims: [3, 4] } });
    await s.release();
    const files = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.startsWith("p"));
    assert.equal(files.length, 1, `one profile file, got ${files}`);
    const events = JSON.parse(await Deno.readTextFile(`${dir}/${files[0]}`));
    const last = summarizeProfile(events);
    assert.equal(last.runs.length, 3);
    assert.deepEqual(last.counted, [3]);
    const ops = last.byOp.map((r) => r.op);
    for (const op of ["MatMul", "Softmax"]) assert.ok(ops.includes(op), `${op} in ${ops}`);
    assert.ok(last.byOp.every((r) => r.calls === 1), "each op of the graph runs once per run");
    assert.ok(Math.abs(last.byOp.reduce((x, r) => x + r.share, 0) - 1) < 1e-9);
    const all = summarizeProfile(events, "all");
    assert.equal(all.byOp.find((r) => r.op === "MatMul")!.calls, 3);
    // The activation's shape leads (onnxruntime leaves out a pre-packed constant's).
    assert.match(all.byShape.find((r) => r.op === "MatMul")!.shapes, /^\[\[3,4\]/);
    assert.throws(() => summarizeProfile(events, 4), /run 4 is not/);
    assert.throws(() => summarizeProfile({}), /JSON array/);
    assert.throws(() => summarizeProfile([{ cat: "Node", name: "x_kernel_time", ts: 1 }]), /no model_run/);
    assert.match(renderProfile(last, 10), /\| MatMul \| 1 \|/);
    assert.equal(
      renderProfile(last, 1).split("\n").filter((l) => /^\| [A-Z]/.test(l)).length,
      2,
      "top 1 of each table",
    );
    assert.throws(() => renderProfile(last, 0), /top must be/);
    assert.throws(() => renderProfile(last, Number("x")), /top must be/);
    assert.throws(() => summarizeProfile(events, Number("x")), /is not in the profile/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
