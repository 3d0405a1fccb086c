import assert from "node:assert/strict";
import {
  adapterLayout,
  entryView,
  initAdapter,
  LoraError,
  loraScale,
  type TargetModule,
} from "../runtime/model/lora.ts";
import { AdamW, clipGradNorm, cosineSchedule } from "../runtime/model/optim.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";

Deno.test("model_lora: layout order, shapes and offsets follow COMMON.md", () => {
  const cfg = tinyConfig(); // hidden 32, 4 heads x 8, 2 kv heads, ffn 64, 2 layers
  const L = adapterLayout(cfg, { rank: 4, alpha: 8, targets: ["v", "q", "down"] });
  assert.deepEqual(L.entries.slice(0, 6).map((e) => [e.name, e.shape, e.offset]), [
    ["layers.0.q.A", [4, 32], 0],
    ["layers.0.q.B", [32, 4], 128],
    ["layers.0.v.A", [4, 32], 256],
    ["layers.0.v.B", [16, 4], 384],
    ["layers.0.down.A", [4, 64], 448],
    ["layers.0.down.B", [32, 4], 704],
  ]);
  assert.equal(L.size, 2 * 832);
  assert.equal(L.entries.at(-1)!.offset + L.entries.at(-1)!.size, L.size);
  assert.throws(() => adapterLayout(cfg, { rank: 0, alpha: 1, targets: ["q"] }), LoraError);
  assert.throws(
    () => adapterLayout(cfg, { rank: 2, alpha: 1, targets: ["qkv" as unknown as TargetModule] }),
    /unknown LoRA target/,
  );
  assert.equal(loraScale({ rank: 16, alpha: 16, targets: ["q"] }, 8), 2);
  // An expanded PerFIT adapter keeps the scale of its base rank by default.
  assert.equal(loraScale({ rank: 16, alpha: 16, targets: ["q"], baseRank: 4 }), 4);
  assert.equal(loraScale({ rank: 16, alpha: 16, targets: ["q"] }), 1);
});

Deno.test("model_lora: init is seeded kaiming-uniform A with zero B", () => {
  const L = adapterLayout(tinyConfig(), { rank: 4, alpha: 8, targets: ["q", "v"] });
  const a = initAdapter(L, 7);
  assert.deepEqual(a, initAdapter(L, 7));
  assert.notDeepEqual(a, initAdapter(L, 8));
  for (const e of L.entries) {
    const v = entryView(a, e);
    if (e.kind === "B") assert.ok(v.every((x) => x === 0));
    else {
      const bound = 1 / Math.sqrt(e.shape[1]);
      assert.ok(v.every((x) => Math.abs(x) <= bound));
      assert.ok(v.some((x) => Math.abs(x) > bound / 2));
    }
  }
});

Deno.test("model_optim: AdamW matches the reference update and never moves masked positions", () => {
  const opt = new AdamW(3, { lr: 0.1, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 });
  const p = new Float32Array([1, -2, 3]);
  const g = new Float32Array([0.5, -1, 2]);
  opt.step(p, g, new Uint8Array([1, 0, 1]));
  // Step 1: m_hat = g, v_hat = g^2, so the update is lr * sign(g) (plus decoupled decay).
  assert.ok(Math.abs(p[0] - (1 * (1 - 0.001) - 0.1)) < 1e-6);
  assert.equal(p[1], -2);
  assert.ok(Math.abs(p[2] - (3 * (1 - 0.001) - 0.1)) < 1e-6);
  assert.equal(opt.m[1], 0);
  opt.step(p, g, new Uint8Array([1, 0, 1]), 0.05);
  assert.equal(p[1], -2);
  assert.throws(() => opt.step(new Float32Array(2), g), RangeError);
});

Deno.test("model_optim: clipping scales to the max norm; schedule warms up then decays", () => {
  const g = new Float32Array([3, 4]);
  assert.equal(clipGradNorm(g, 1), 5);
  assert.ok(Math.abs(Math.hypot(g[0], g[1]) - 1) < 1e-5);
  const small = new Float32Array([0.3, 0.4]);
  clipGradNorm(small, 1);
  assert.deepEqual(small, new Float32Array([0.3, 0.4]));
  const s = cosineSchedule({ warmup: 10, total: 110, peak: 1, min: 0.1 });
  assert.ok(Math.abs(s(0) - 0.1) < 1e-12);
  assert.equal(s(9), 1);
  assert.equal(s(10), 1);
  assert.ok(Math.abs(s(60) - 0.55) < 1e-12);
  assert.ok(Math.abs(s(110) - 0.1) < 1e-12);
  for (let t = 11; t < 110; t++) assert.ok(s(t) <= s(t - 1));
});
