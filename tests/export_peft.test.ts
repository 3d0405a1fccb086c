/**
 * PEFT adapter export: tensor names, shapes and config as PEFT expects, masked positions as zeros,
 * and lora_alpha chosen so PEFT's lora_alpha / r equals our alpha / baseRank.
 */
import assert from "node:assert/strict";
import { decodeSafetensors, tensorToFloat32 } from "../runtime/io/safetensors.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";
import {
  addLowRank,
  baseWeightName,
  ExportError,
  mergeAdapter,
  peftAdapterFiles,
  peftTensorName,
  writePeftAdapter,
} from "../runtime/export/mod.ts";

const cfg = tinyConfig();

function seeded(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from(
    { length: n },
    () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5,
  );
}

Deno.test("export_peft: names, shapes, zeros at masked positions, config fields", () => {
  // An expanded rank-8 adapter pruned to a rank-4 budget: PEFT sees r=8, scale must stay alpha/4.
  const layout = adapterLayout(cfg, {
    rank: 8,
    alpha: 16,
    targets: ["q", "k", "v", "o", "gate", "up", "down"],
  });
  const adapter = seeded(layout.size, 1);
  const mask = new Uint8Array(layout.size).map((_, i) => (i * 7919) % 3 === 0 ? 0 : 1);
  const { adapterConfig, safetensors } = peftAdapterFiles({
    layout,
    adapter,
    mask,
    scale: 16 / 4,
    baseModel: "perfit/tiny",
  });
  assert.equal(adapterConfig.r, 8);
  assert.equal(adapterConfig.lora_alpha, 32); // 32 / 8 == 16 / 4
  assert.equal(adapterConfig.peft_type, "LORA");
  assert.equal(adapterConfig.task_type, "CAUSAL_LM");
  assert.deepEqual(adapterConfig.target_modules, [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
  ]);
  const { tensors } = decodeSafetensors(safetensors);
  assert.equal(tensors.size, layout.entries.length);
  assert.ok(tensors.has("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
  assert.ok(tensors.has("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
  let zeros = 0;
  for (const e of layout.entries) {
    const t = tensors.get(peftTensorName(e.layer, e.module, e.kind))!;
    assert.equal(t.dtype, "F32");
    assert.deepEqual(t.shape, e.shape, e.name);
    const v = tensorToFloat32(t);
    for (let i = 0; i < e.size; i++) {
      const want = mask[e.offset + i] ? adapter[e.offset + i] : 0;
      if (v[i] !== want) assert.fail(`${e.name}[${i}] = ${v[i]}, want ${want}`);
      if (!mask[e.offset + i]) zeros++;
    }
  }
  assert.ok(zeros > 0);
  // q_proj: A [r, hidden], B [heads*headDim, r]; k_proj B uses the kv heads (GQA).
  assert.deepEqual(tensors.get(peftTensorName(0, "q", "A"))!.shape, [8, cfg.hiddenSize]);
  assert.deepEqual(tensors.get(peftTensorName(0, "k", "B"))!.shape, [cfg.numKvHeads * cfg.headDim, 8]);
  assert.deepEqual(tensors.get(peftTensorName(0, "down", "A"))!.shape, [8, cfg.intermediateSize]);
});

Deno.test("export_peft: bad input is refused with a clear error", () => {
  const layout = adapterLayout(cfg, { rank: 2, alpha: 4, targets: ["q"] });
  const ok = new Float32Array(layout.size);
  assert.throws(
    () => peftAdapterFiles({ layout, adapter: new Float32Array(3), scale: 2, baseModel: "x" }),
    /adapter has 3 values/,
  );
  assert.throws(
    () => peftAdapterFiles({ layout, adapter: ok, mask: new Uint8Array(1), scale: 2, baseModel: "x" }),
    /mask has 1 entries/,
  );
  const nan = ok.slice();
  nan[5] = NaN;
  assert.throws(() => peftAdapterFiles({ layout, adapter: nan, scale: 2, baseModel: "x" }), ExportError);
  // A NaN behind a zero mask is dropped, not exported.
  const m = new Uint8Array(layout.size).fill(1);
  m[5] = 0;
  assert.doesNotThrow(() => peftAdapterFiles({ layout, adapter: nan, mask: m, scale: 2, baseModel: "x" }));
  assert.throws(
    () => peftAdapterFiles({ layout, adapter: ok, scale: 0, baseModel: "x" }),
    /scale must be > 0/,
  );
});

Deno.test("export_peft: writes adapter_config.json and adapter_model.safetensors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const layout = adapterLayout(cfg, { rank: 2, alpha: 4, targets: ["q", "v"] });
    await writePeftAdapter(dir, {
      layout,
      adapter: seeded(layout.size, 3),
      scale: 2,
      baseModel: "perfit/tiny",
    });
    const conf = JSON.parse(await Deno.readTextFile(`${dir}/adapter_config.json`));
    assert.equal(conf.lora_alpha / conf.r, 2);
    assert.equal(conf.base_model_name_or_path, "perfit/tiny");
    const st = decodeSafetensors(await Deno.readFile(`${dir}/adapter_model.safetensors`));
    assert.equal(st.tensors.size, 2 * 2 * cfg.numLayers);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("export_peft: merge folds scale * B @ A into exactly the adapted weights", () => {
  // Hand-checked 2x3 case.
  const w = new Float32Array([1, 2, 3, 4, 5, 6]);
  addLowRank(w, new Float32Array([1, 2]), new Float32Array([1, 0, -1]), 2, 3, 1, 0.5);
  assert.deepEqual([...w], [1.5, 2, 2.5, 5, 5, 5]);

  const layout = adapterLayout(cfg, { rank: 3, alpha: 6, targets: ["v", "up"] });
  const weights = new Map<string, { shape: number[]; data: Float32Array }>();
  weights.set("model.layers.0.self_attn.v_proj.weight", {
    shape: [cfg.numKvHeads * cfg.headDim, cfg.hiddenSize],
    data: seeded(cfg.numKvHeads * cfg.headDim * cfg.hiddenSize, 4),
  });
  weights.set("model.layers.1.self_attn.v_proj.weight", {
    shape: [cfg.numKvHeads * cfg.headDim, cfg.hiddenSize],
    data: seeded(cfg.numKvHeads * cfg.headDim * cfg.hiddenSize, 5),
  });
  weights.set("model.layers.0.mlp.up_proj.weight", {
    shape: [cfg.intermediateSize, cfg.hiddenSize],
    data: seeded(cfg.intermediateSize * cfg.hiddenSize, 6),
  });
  weights.set("model.layers.1.mlp.up_proj.weight", {
    shape: [cfg.intermediateSize, cfg.hiddenSize],
    data: seeded(cfg.intermediateSize * cfg.hiddenSize, 7),
  });
  const untouched = { shape: [cfg.hiddenSize], data: seeded(cfg.hiddenSize, 8) };
  weights.set("model.norm.weight", untouched);
  const adapter = seeded(layout.size, 9);
  const mask = new Uint8Array(layout.size).map((_, i) => i % 2);
  const merged = mergeAdapter(weights, layout, adapter, 2, mask);
  assert.equal(merged.get("model.norm.weight"), untouched);
  const e = layout.entries.filter((x) => x.layer === 1 && x.module === "up");
  const [A, B] = [e.find((x) => x.kind === "A")!, e.find((x) => x.kind === "B")!];
  const base = weights.get("model.layers.1.mlp.up_proj.weight")!;
  const out = merged.get("model.layers.1.mlp.up_proj.weight")!;
  for (const [o, i] of [[0, 0], [5, 17], [cfg.intermediateSize - 1, cfg.hiddenSize - 1]]) {
    let d = 0;
    for (let k = 0; k < 3; k++) {
      const b = mask[B.offset + o * 3 + k] ? adapter[B.offset + o * 3 + k] : 0;
      const a = mask[A.offset + k * cfg.hiddenSize + i] ? adapter[A.offset + k * cfg.hiddenSize + i] : 0;
      d += b * a;
    }
    const want = base.data[o * cfg.hiddenSize + i] + 2 * d;
    assert.ok(
      Math.abs(out.data[o * cfg.hiddenSize + i] - want) < 1e-6,
      `[${o},${i}] ${out.data[o * cfg.hiddenSize + i]} vs ${want}`,
    );
  }
  assert.notDeepEqual(out.data, base.data);
  weights.delete("model.layers.0.mlp.up_proj.weight");
  assert.throws(
    () => mergeAdapter(weights, layout, adapter, 2),
    /base weights have no model.layers.0.mlp.up_proj.weight/,
  );
});

Deno.test("export_peft: a merge in kernel layout gives the HF-layout merge's bits, transposed", () => {
  const layout = adapterLayout(cfg, { rank: 3, alpha: 6, targets: ["q", "v", "down"] });
  const hf = new Map<string, { shape: number[]; data: Float32Array }>();
  let seed = 30;
  for (const e of layout.entries.filter((x) => x.kind === "A")) {
    const b = layout.entries.find((x) => x.kind === "B" && x.layer === e.layer && x.module === e.module)!;
    const [out, inDim] = [b.shape[0], e.shape[1]];
    hf.set(baseWeightName(e.layer, e.module), { shape: [out, inDim], data: seeded(out * inDim, seed++) });
  }
  const kernel = new Map([...hf].map(([n, t]) => [n, { shape: [t.shape[1], t.shape[0]], data: t2(t) }]));
  // Zeros in B (skipped terms) and a mask, so that every branch of the sum is taken.
  const adapter = seeded(layout.size, 40).map((v, i) => (i % 5 === 0 ? 0 : v));
  const mask = new Uint8Array(layout.size).map((_, i) => (i % 7 === 3 ? 0 : 1));
  const want = mergeAdapter(hf, layout, adapter, 1.75, mask);
  const got = mergeAdapter(kernel, layout, adapter, 1.75, mask, "kernel");
  assert.equal(got.size, want.size);
  for (const [n, w] of want) {
    const k = got.get(n)!;
    assert.deepEqual(k.shape, [w.shape[1], w.shape[0]], n);
    assert.notDeepEqual(new Uint32Array(k.data.buffer), new Uint32Array(kernel.get(n)!.data.buffer), n);
    assert.deepEqual(new Uint32Array(k.data.buffer), new Uint32Array(t2(w).buffer), `${n}: bit for bit`);
  }
  // A kernel-layout weight taken for an HF one (or the reverse) is refused where the shapes tell.
  assert.throws(() => mergeAdapter(kernel, layout, adapter, 1.75), /shape mismatch/);
  assert.throws(
    () => mergeAdapter(kernel, layout, adapter, 1, undefined, "rows" as "hf"),
    /weight layout must be/,
  );
});

/** An HF [out, in] tensor's data transposed to [in, out]. */
function t2(t: { shape: number[]; data: Float32Array }): Float32Array {
  const [r, c] = t.shape;
  const out = new Float32Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = t.data[i * c + j];
  return out;
}

Deno.test("export_peft: an exported adapter reads back into the same layout, values and scale", async () => {
  const { parsePeftAdapter } = await import("../runtime/export/mod.ts");
  const layout = adapterLayout(cfg, { rank: 4, alpha: 8, targets: ["q", "v", "gate"] });
  const adapter = seeded(layout.size, 12);
  const mask = new Uint8Array(layout.size).map((_, i) => i % 5 ? 1 : 0);
  const files = peftAdapterFiles({ layout, adapter, mask, scale: 4, baseModel: "b" });
  const back = parsePeftAdapter(files.adapterConfig, files.safetensors);
  assert.equal(back.scale, 4);
  assert.equal(back.baseModel, "b");
  assert.deepEqual(
    back.layout.entries.map((e) => [e.name, e.offset, e.size]),
    layout.entries.map((e) => [e.name, e.offset, e.size]),
  );
  assert.deepEqual(back.adapter, adapter.map((v, i) => mask[i] ? v : 0));
  assert.throws(
    () => parsePeftAdapter({ ...files.adapterConfig, peft_type: "IA3" }, files.safetensors),
    /peft_type must be LORA/,
  );
  assert.throws(
    () => parsePeftAdapter({ ...files.adapterConfig, r: 3 }, files.safetensors),
    /does not have rank 3/,
  );
});
