/**
 * FLoRA's client side and its stacking: the base with a round's stack merged computes what the
 * original base computes with that stack as a LoRA of the whole stacked rank; a rebased engine
 * shares its sessions; and the coordinator's stacked fold gives every slot p_k·A_k and B_k.
 */
import assert from "node:assert/strict";
import { Engine } from "../runtime/model/engine.ts";
import { resolveSource } from "../runtime/model/hub.ts";
import { toKernelLayout } from "../runtime/model/train_step.ts";
import { loadWeights } from "../runtime/model/weights.ts";
import { baseWeightName, mergeAdapter } from "../runtime/export/merge.ts";
import { type AdapterLayout, adapterLayout } from "../runtime/model/lora.ts";
import {
  denseDelta,
  denseRank,
  freshAdapter,
  MergedBase,
  slotMask,
  stackedDelta,
} from "../runtime/client/flora.ts";
import { rankLayout } from "../runtime/perfit/layout.ts";
import { foldTerms, STACKED } from "../runtime/federation/aggregation.ts";
import { scalarKernels } from "../runtime/kernels/mod.ts";
import { perturbedAdapter, randomBatch, tinyConfigLike, tinyModel } from "./model_fixtures.ts";

Deno.test("flora: the base with the stack merged equals the original base with the stack as one LoRA", async () => {
  const { model } = await tinyModel({ seed: 5 });
  const targets = ["q", "v", "down"] as const;
  const alpha = 4, r = 2;
  // The stacked rank (3 slots of rank 2) evaluated as a LoRA over the original base...
  const stacked = await Engine.create(model, { rank: 6, alpha, targets: [...targets], baseRank: r }, {
    backend: "node",
  });
  const stack = perturbedAdapter(stacked.layout.size, 21);
  const batch = randomBatch(model.config.vocabSize, [9, 7], 10, 3);
  const want = await stacked.evalNll(batch, stack);
  // ...and a rank-2 client's engine over the merged base with a zero LoRA.
  const own = await Engine.create(model, { rank: r, alpha, targets: [...targets], baseRank: r }, {
    backend: "node",
  });
  const base = new MergedBase(own);
  const merged = await base.engineFor(1, stacked.layout, stack, alpha / r);
  assert.equal(base.mergedRound, 1);
  assert.notEqual(merged, own);
  const got = await merged.evalNll(batch, new Float32Array(own.layout.size));
  assert.equal(got.tokens, want.tokens);
  assert.ok(
    Math.abs(got.nllSum - want.nllSum) < 1e-4 * Math.abs(want.nllSum),
    `${got.nllSum} vs ${want.nllSum}`,
  );
  // The original engine is untouched, a round is merged once, and rounds only go forward.
  const plain = await own.evalNll(batch, new Float32Array(own.layout.size));
  assert.notEqual(plain.nllSum, got.nllSum);
  assert.equal(await base.engineFor(1, stacked.layout, stack, alpha / r), merged);
  await assert.rejects(() => base.engineFor(0, stacked.layout, stack, alpha / r), /older/);
});

Deno.test("flora: the export is the merged stacks side by side, then the dense change: base + it = the merged base", async () => {
  const { model } = await tinyModel({ seed: 8 });
  const spec = { rank: 2, alpha: 4, targets: ["q", "down"] as ("q" | "down")[], baseRank: 2 };
  const stacked = adapterLayout(model.config, { ...spec, rank: 12 });
  // q is [32, 32], down [32, 64]: any change of either has rank ≤ 32, so two stacks of rank 12 fit side by side.
  assert.equal(denseRank(stacked), 32);
  const own = await Engine.create(model, spec, { backend: "node" });
  const base = new MergedBase(own);
  // Large enough that one stack more or less moves the loss well past the tolerance.
  const s = [31, 32, 33].map((seed) => perturbedAdapter(stacked.size, seed, 0.5));
  const batch = randomBatch(model.config.vocabSize, [9, 7], 10, 4);
  const score = async (d: { layout: { rank: number }; adapter: Float32Array }) =>
    (await (await Engine.create(model, { ...spec, rank: d.layout.rank }, { backend: "node" })).evalNll(
      batch,
      d.adapter,
    ))
      .nllSum;
  const close = (got: number, want: number, what: string) =>
    assert.ok(Math.abs(got - want) < 1e-4 * Math.abs(want), `${what}: ${got} vs ${want}`);
  await base.engineFor(1, stacked, s[0], 2);
  // The stack already merged is not counted twice; one that arrived since is.
  assert.deepEqual(base.delta(stacked, 2, s[0]), stackedDelta(stacked, [s[0]]));
  const pending = base.delta(stacked, 2, s[1]);
  const merged2 = await base.engineFor(2, stacked, s[1], 2);
  const d2 = base.delta(stacked, 2, s[1]);
  assert.deepEqual(d2, stackedDelta(stacked, [s[0], s[1]]));
  assert.deepEqual(pending, d2);
  // Round 2's stack sits at rank components 12..23: A's rows, B's columns.
  const [A, B] = d2.layout.entries, [gA, gB] = stacked.entries;
  const row = (flat: Float32Array, at: number) => flat.subarray(at, at + A.shape[1]);
  assert.deepEqual(row(d2.adapter, A.offset + 12 * A.shape[1]), row(s[1], gA.offset));
  assert.deepEqual(row(d2.adapter, A.offset), row(s[0], gA.offset));
  assert.equal(d2.adapter[B.offset + 12], s[1][gB.offset]);
  const nothing = new Float32Array(own.layout.size);
  close(await score(d2), (await merged2.evalNll(batch, nothing)).nllSum, "two stacks");
  // A third stack would make rank 36: the export becomes the dense change at rank 32 and stays there.
  const pending3 = base.delta(stacked, 2, s[2]);
  const merged3 = await base.engineFor(3, stacked, s[2], 2);
  const d3 = base.delta(stacked, 2);
  assert.equal(pending3.layout.rank, 32);
  assert.equal(d3.layout.rank, 32);
  assert.equal(
    base.delta(stacked, 2, s[2]).adapter.length,
    d3.adapter.length,
    "the merged stack is not added twice",
  );
  assert.deepEqual(base.delta(stacked, 2, s[2]), d3);
  const want3 = (await merged3.evalNll(batch, nothing)).nllSum;
  close(await score(d3), want3, "dense after merging");
  close(await score(pending3), want3, "dense with the stack pending");
  // The factor on the smaller side is the identity (q: A = I), the other the change / scale.
  const qA = d3.layout.entries[0];
  assert.equal(d3.adapter[qA.offset], 1);
  assert.equal(d3.adapter[qA.offset + 1], 0);
  assert.equal(d3.adapter[qA.offset + qA.shape[1] + 1], 1);
  // Merged into the original base, the export gives the merged base's weights; the last stack alone,
  // or the first two, give others.
  const gap = (d: { layout: AdapterLayout; adapter: Float32Array }) => {
    const w = mergeAdapter(model.kernelWeights, d.layout, d.adapter, 2, undefined, "kernel");
    let worst = 0;
    for (const [name, t] of merged3.model!.kernelWeights) {
      const got = w.get(name)!.data;
      t.data.forEach((v, i) => worst = Math.max(worst, Math.abs(v - got[i])));
    }
    return worst;
  };
  assert.ok(gap(d3) < 1e-5, `dense export off the merged base by ${gap(d3)}`);
  assert.ok(gap(pending3) < 1e-5, `pending dense export off by ${gap(pending3)}`);
  assert.ok(gap({ layout: stacked, adapter: s[2] }) > 0.1);
  assert.ok(gap(d2) > 0.1);
  assert.throws(() => stackedDelta(stacked, []), /no stack/);
  assert.throws(() => denseDelta(stacked, 0, () => new Float32Array(1024)), /scale/);
  assert.throws(() => denseDelta(stacked, 2, () => new Float32Array(3)), /change of 3 values/);
});

Deno.test("flora: the merged base copies only the adapted matrices, with the bits of the HF-layout merge", async () => {
  const { dir, model } = await tinyModel({ seed: 6 });
  const targets = ["q", "v", "down"] as const;
  const spec = { rank: 2, alpha: 4, targets: [...targets], baseRank: 2 };
  const stacked = adapterLayout(model.config, { ...spec, rank: 6 });
  const own = await Engine.create(model, spec, { backend: "node" });
  const base = new MergedBase(own);
  const stack = perturbedAdapter(stacked.size, 22);
  const merged = (await base.engineFor(1, stacked, stack, 2)).model!;
  // The reference: PEFT's merge of the checkpoint as the file holds it (HF layout), then transposed.
  const hf = mergeAdapter(await loadWeights(await resolveSource(dir)), stacked, stack, 2);
  const want = toKernelLayout(model.config, hf);
  const adapted = new Set(stacked.entries.map((e) => baseWeightName(e.layer, e.module)));
  assert.equal(merged.kernelWeights.size, want.size);
  for (const [name, w] of want) {
    const got = merged.kernelWeights.get(name)!;
    const orig = model.kernelWeights.get(name)!;
    assert.deepEqual(got.shape, w.shape, name);
    assert.deepEqual(
      new Uint32Array(got.data.buffer),
      new Uint32Array(w.data.buffer),
      `${name}: bit for bit`,
    );
    if (adapted.has(name)) assert.notEqual(got.data, orig.data, `${name} is a copy`);
    else assert.equal(got.data, orig.data, `${name} is shared with the original base`);
  }
  // The original base is left as it was.
  const file = toKernelLayout(model.config, await loadWeights(await resolveSource(dir)));
  for (const [name, w] of file) assert.deepEqual(model.kernelWeights.get(name)!.data, w.data, name);
});

Deno.test("flora: a fresh LoRA per round (A random, B zero) and a slot after the earlier ones", () => {
  const global = adapterLayout({ ...tinyConfigLike(), numLayers: 1 }, { rank: 8, alpha: 8, targets: ["q"] });
  const own = rankLayout(global, 2);
  const a1 = freshAdapter(own, 7, 1, 4), a2 = freshAdapter(own, 7, 2, 4);
  assert.notDeepEqual(a1, a2);
  for (const e of own.entries) {
    const part = a1.subarray(e.offset, e.offset + e.size);
    assert.ok(e.kind === "A" ? part.some((x) => x !== 0) : part.every((x) => x === 0), e.name);
  }
  const m = slotMask(own, global, 4);
  const [A, B] = global.entries;
  // A's rows 4 and 5, and B's columns 4 and 5, nothing else.
  for (let row = 0; row < A.shape[0]; row++) {
    for (let c = 0; c < A.shape[1]; c++) {
      assert.equal(m[A.offset + row * A.shape[1] + c], row === 4 || row === 5 ? 1 : 0);
    }
  }
  for (let o = 0; o < B.shape[0]; o++) {
    for (let k = 0; k < B.shape[1]; k++) {
      assert.equal(m[B.offset + o * B.shape[1] + k], k === 4 || k === 5 ? 1 : 0);
    }
  }
  assert.throws(() => slotMask(own, global, 7), /exceeds/);
});

Deno.test("flora: the stacked fold gives each slot p_k·A_k and B_k; an absent slot's A is zero", () => {
  const global = adapterLayout(tinyConfigLike(), { rank: 6, alpha: 4, targets: ["q", "v"] });
  const own = rankLayout(global, 2);
  const n = global.size;
  const sum = new Float32Array(n), weight = new Float32Array(n);
  const uploads = [{ slot: 0, samples: 10 }, { slot: 2, samples: 30 }].map((u, i) => {
    const mask = slotMask(own, global, 2 * u.slot);
    const positions: number[] = [];
    mask.forEach((v, p) => v && positions.push(p));
    const values = perturbedAdapter(positions.length, 40 + i); // in bit order
    const dense = new Float32Array(n);
    positions.forEach((p, r) => (dense[p] = values[r]));
    const bits = scalarKernels.maskToBits(mask);
    for (const t of foldTerms(STACKED, { bits, values, weight: u.samples }, n, global)) {
      scalarKernels.accumulateSparse(
        sum.subarray(t.start, t.start + t.length),
        weight.subarray(t.start, t.start + t.length),
        t.bits,
        t.values,
        t.weight,
      );
    }
    return { ...u, dense, mask };
  });
  const out = new Float32Array(n);
  scalarKernels.finalize(sum, weight, new Float32Array(n), out);
  const total = 40;
  for (const e of global.entries) {
    for (let i = 0; i < e.size; i++) {
      const p = e.offset + i;
      const holder = uploads.find((u) => u.mask[p]);
      if (e.kind === "A") {
        const want = holder ? (holder.samples / total) * holder.dense[p] : 0;
        assert.ok(Math.abs(out[p] - want) < 1e-6, `A at ${p}: ${out[p]} vs ${want}`);
        assert.equal(weight[p], total);
      } else {
        // One holder: its value back, up to the f32 rounding of (n·v)/n.
        const want = holder ? holder.dense[p] : 0;
        assert.ok(Math.abs(out[p] - want) <= 1e-7 * Math.abs(want), `B at ${p}: ${out[p]} vs ${want}`);
      }
    }
  }
});
