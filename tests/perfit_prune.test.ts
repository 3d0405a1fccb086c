import assert from "node:assert/strict";
import {
  accumulateImportance,
  type AdapterLayout,
  budgetOf,
  embed,
  expandedLayout,
  expansionFactor,
  extract,
  keepAt,
  makePrunePlan,
  pruneStage,
  pruneToBudget,
  randomMask,
  rankLayout,
  reviveDeadComponents,
  stageBoundaries,
  taylorImportance,
} from "../runtime/perfit/mod.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";
import { mulberry32 } from "../runtime/data/rng.ts";

function base(rank = 2): AdapterLayout {
  const cfg = tinyConfig({
    numLayers: 2,
    hiddenSize: 16,
    intermediateSize: 24,
    numHeads: 2,
    numKvHeads: 1,
    headDim: 8,
  });
  return adapterLayout(cfg, { rank, alpha: 4, targets: ["q", "v", "down"] });
}

function randScores(n: number, seed: number): Float32Array {
  const r = mulberry32(seed);
  return Float32Array.from({ length: n }, () => r());
}

const ones = (m: Uint8Array) => m.reduce((s, v) => s + v, 0);

Deno.test("perfit: rankLayout matches the model's layout at that rank", () => {
  const cfg = tinyConfig({
    numLayers: 2,
    hiddenSize: 16,
    intermediateSize: 24,
    numHeads: 2,
    numKvHeads: 1,
    headDim: 8,
  });
  const spec = { alpha: 4, targets: ["q", "v", "down"] as const };
  const r8 = adapterLayout(cfg, { rank: 8, ...spec, targets: [...spec.targets] });
  assert.deepEqual(rankLayout(base(2), 8), r8);
  assert.equal(budgetOf(r8, 2), base(2).size);
  assert.equal(expandedLayout(base(2), 2, 4).size, r8.size);
  assert.equal(expansionFactor("high"), 4);
  assert.equal(expansionFactor("x", { x: 3 }), 3);
  assert.throws(() => expansionFactor("ultra"), /unknown tier/);
});

Deno.test("perfit: embed/extract place a small client in the leading rank rows/cols", () => {
  const small = rankLayout(base(2), 2);
  const big = rankLayout(base(2), 8);
  const v = Float32Array.from({ length: small.size }, (_, i) => i + 1);
  const g = embed(small, v, big);
  assert.equal(g.length, big.size);
  assert.deepEqual(extract(big, g, small), v);
  // A: rows 0..1 of [8, in]; B: cols 0..1 of [out, 8].
  const eA = small.entries[0], gA = big.entries[0];
  assert.equal(g[gA.offset + 0], v[eA.offset + 0]);
  assert.equal(g[gA.offset + 2 * gA.shape[1]], 0);
  const eB = small.entries[1], gB = big.entries[1];
  assert.equal(g[gB.offset + 8], v[eB.offset + 2]); // row 1, col 0
  assert.equal(g[gB.offset + 2], 0); // row 0, col 2 is outside the client
  // The count of non-zeros is preserved (nothing lost, nothing invented).
  assert.equal(g.reduce((s, x) => s + (x !== 0 ? 1 : 0), 0), small.size);
  const m = embed(small, new Uint8Array(small.size).fill(1), big);
  assert.equal(ones(m), small.size);
  assert.throws(() => embed(big, new Float32Array(big.size), small), /exceeds global rank/);
});

Deno.test("perfit: keep schedule is monotone, starts at N and ends exactly at B", () => {
  for (const schedule of ["cubic", "linear", "one-shot"] as const) {
    let prev = Infinity;
    for (let t = 0; t <= 7; t++) {
      const k = keepAt(1000, 250, t, 7, schedule);
      assert.ok(k <= prev && k >= 250 && k <= 1000, `${schedule} t=${t} k=${k}`);
      prev = k;
    }
    assert.equal(keepAt(1000, 250, 0, 7, schedule), 1000);
    assert.equal(keepAt(1000, 250, 7, 7, schedule), 250);
  }
  // Cubic prunes more early than linear.
  assert.ok(keepAt(1000, 250, 1, 4, "cubic") < keepAt(1000, 250, 1, 4, "linear"));
  assert.equal(keepAt(1000, 250, 1, 4, "one-shot"), 250);
});

Deno.test("perfit: iterative pruning hits the exact budget, nests masks and is deterministic", () => {
  const L = rankLayout(base(2), 8);
  const plan = makePrunePlan(L, 2);
  assert.equal(plan.budget, base(2).size);
  const imp = randScores(L.size, 7);
  let mask: Uint8Array = new Uint8Array(L.size).fill(1);
  let prev = L.size;
  for (let t = 1; t <= 5; t++) {
    const next = pruneStage(imp, mask, plan, t, 5);
    assert.equal(ones(next), keepAt(L.size, plan.budget, t, 5));
    for (let i = 0; i < next.length; i++) {
      if (next[i]) assert.equal(mask[i], 1, "pruned positions never return");
    }
    assert.ok(ones(next) <= prev);
    prev = ones(next);
    mask = next;
  }
  assert.equal(ones(mask), plan.budget);
  assert.deepEqual(pruneToBudget(imp, plan, 5), mask);
  // With fixed importance, iterative pruning keeps the global top-B.
  const sorted = Array.from(imp).sort((a, b) => b - a);
  const thr = sorted[plan.budget - 1];
  for (let i = 0; i < imp.length; i++) assert.equal(mask[i], imp[i] >= thr ? 1 : 0);
});

Deno.test("perfit: ties break toward the lower index", () => {
  const L = rankLayout(base(1), 2);
  const plan = makePrunePlan(L, 1);
  const mask = pruneToBudget(new Float32Array(L.size), plan, 3);
  assert.equal(ones(mask), plan.budget);
  for (let i = 0; i < L.size; i++) assert.equal(mask[i], i < plan.budget ? 1 : 0);
});

Deno.test("perfit: per-module allocation gives each module exactly its rank-r share", () => {
  const L = rankLayout(base(2), 4);
  const plan = makePrunePlan(L, 2, "per-module");
  assert.equal(plan.groups.length, 6);
  // Importance concentrated on layer 0 q: a global top-k would put everything there.
  const imp = randScores(L.size, 3);
  for (let i = 0; i < L.entries[1].offset + L.entries[1].size; i++) imp[i] += 10;
  const mask = pruneToBudget(imp, plan, 4);
  const small = rankLayout(L, 2);
  for (let gi = 0; gi < plan.groups.length; gi++) {
    const g = plan.groups[gi];
    const kept = g.ranges.reduce((s, [o, n]) => s + ones(mask.subarray(o, o + n)), 0);
    const want = small.entries[2 * gi].size + small.entries[2 * gi + 1].size;
    assert.equal(kept, want, g.key);
  }
  const globalMask = pruneToBudget(imp, makePrunePlan(L, 2, "global"), 4);
  assert.equal(ones(globalMask), plan.budget);
  assert.notDeepEqual(globalMask, mask);
});

Deno.test("perfit: random mask has the budget and depends on the seed only", () => {
  const L = rankLayout(base(2), 8);
  const plan = makePrunePlan(L, 2);
  const a = randomMask(plan, 1), b = randomMask(plan, 1), c = randomMask(plan, 2);
  assert.equal(ones(a), plan.budget);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
});

Deno.test("perfit: importance accumulation (EMA and sum) and Taylor scores", () => {
  const acc = new Float32Array(2);
  accumulateImportance(acc, Float32Array.from([1, 2]), { mode: "ema", beta: 0.5 });
  accumulateImportance(acc, Float32Array.from([3, 0]), { mode: "ema", beta: 0.5 });
  assert.deepEqual(Array.from(acc), [0.5 * 0.5 + 1.5, 0.5]);
  const s = new Float32Array(2);
  accumulateImportance(s, Float32Array.from([1, 2]), { mode: "sum" });
  accumulateImportance(s, Float32Array.from([3, 0]), { mode: "sum" });
  assert.deepEqual(Array.from(s), [4, 2]);
  assert.throws(() => accumulateImportance(s, Float32Array.from([NaN, 0])), /NaN/);
  assert.throws(() => accumulateImportance(s, Float32Array.from([1, 0]), { beta: 1 }), /beta/);
  assert.deepEqual(Array.from(taylorImportance(Float32Array.from([2, -3]), Float32Array.from([-0.5, 2]))), [
    1,
    6,
  ]);
});

Deno.test("perfit: stage boundaries start after a warm-up and end at the search length", () => {
  assert.deepEqual(stageBoundaries(10, 4), [4, 6, 8, 10]);
  const b = stageBoundaries(3, 4); // too short: stretched to T+1 steps
  assert.equal(b.length, 4);
  assert.ok(b[0] >= 2, "no pruning at step 1, where every Taylor score is zero");
  for (let i = 1; i < b.length; i++) assert.ok(b[i] > b[i - 1]);
});

Deno.test("perfit: re-search revives only fully dead rank components, function-preserving", () => {
  const L = rankLayout(base(1), 3);
  const ad = new Float32Array(L.size);
  const [a, b] = [L.entries[0], L.entries[1]];
  const inF = a.shape[1];
  // component 0: live in A only; component 1: live in B only; component 2: dead.
  ad[a.offset + 0 * inF + 1] = 0.5;
  ad[b.offset + 0 * 3 + 1] = 0.25;
  const before = ad.slice();
  const n = reviveDeadComponents(L, ad, 9);
  // Every other module pair is fully dead: 3 components each; the first pair has one dead component.
  const pairs = L.entries.length / 2;
  assert.equal(n, 1 + (pairs - 1) * 3);
  assert.deepEqual(ad.subarray(a.offset, a.offset + 2 * inF), before.subarray(a.offset, a.offset + 2 * inF));
  assert.ok(
    ad.subarray(a.offset + 2 * inF, a.offset + 3 * inF).every((v) =>
      v !== 0 && Math.abs(v) <= 1 / Math.sqrt(inF)
    ),
  );
  // B stays as it was (zero for revived components), so A·B is unchanged.
  assert.deepEqual(ad.subarray(b.offset, b.offset + b.size), before.subarray(b.offset, b.offset + b.size));
});
