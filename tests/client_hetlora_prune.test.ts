/**
 * HetLoRA's rank self-pruning as pure math (runtime/client/hetlora_prune.ts): the tail norm, its
 * gradient, the prune decision, the rank a mask holds; and the train keys that switch it on.
 */
import assert from "node:assert/strict";
import {
  addTailGradient,
  checkRankPruning,
  heldRank,
  leadingMask,
  nextRank,
  prunedRank,
  tailScore,
} from "../runtime/client/hetlora_prune.ts";
import { parseTrainSettings } from "../runtime/client/train_settings.ts";
import { localHyper } from "../runtime/client/engine_trainer.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { mulberry32 } from "../runtime/data/rng.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { runBody } from "./server_helpers.ts";

const L = adapterLayout(tinyConfig(), { rank: 8, alpha: 8, targets: ["q", "v"] });

/** Random values at the leading `rank` components, zero beyond; the tail (from `from`) scaled by `tail`. */
function adapter(seed: number, rank: number, from: number, tail: number): Float32Array {
  const rnd = mulberry32(seed);
  const v = new Float32Array(L.size);
  for (const e of L.entries) {
    const [rows, cols] = e.shape;
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const comp = e.kind === "A" ? i : j;
        if (comp < rank) v[e.offset + i * cols + j] = (rnd() - 0.5) * (comp >= from ? tail : 1);
      }
    }
  }
  return v;
}

/** Σ over projections of ‖A[from:rank]‖_F·‖B[:, from:rank]‖_F, written out independently. */
function referenceTail(v: Float32Array, rank: number, from: number): number {
  let s = 0;
  for (let i = 0; i < L.entries.length; i += 2) {
    const a = L.entries[i], b = L.entries[i + 1];
    let sa = 0, sb = 0;
    for (let r = from; r < rank; r++) {
      for (let c = 0; c < a.shape[1]; c++) sa += v[a.offset + r * a.shape[1] + c] ** 2;
      for (let o = 0; o < b.shape[0]; o++) sb += v[b.offset + o * b.shape[1] + r] ** 2;
    }
    s += Math.sqrt(sa) * Math.sqrt(sb);
  }
  return s;
}

Deno.test("rank pruning: the prune keeps ⌊γ·rank⌋ components, at least one; bad γ and λ are refused", () => {
  assert.deepEqual(
    [prunedRank(16, 0.99), prunedRank(8, 0.99), prunedRank(8, 0.5), prunedRank(2, 0.3), prunedRank(1, 0.5)],
    [15, 7, 4, 1, 1],
  );
  for (const decay of [0, 1, -0.5, 1.5, NaN]) {
    assert.throws(() => prunedRank(8, decay), /decay γ must be in \(0, 1\)/);
    assert.throws(() => checkRankPruning({ decay, tailWeight: 0.01 }), /decay γ/);
  }
  for (const tailWeight of [-1, Infinity, NaN]) {
    assert.throws(
      () => checkRankPruning({ decay: 0.5, tailWeight }),
      /tail weight λ must be a finite number ≥ 0/,
    );
  }
  assert.throws(() => prunedRank(0, 0.5), /positive integer/);
  assert.throws(() => nextRank({ before: -1, after: 0, rank: 4, decay: 0.5 }), /before tail norm/);
  assert.throws(() => nextRank({ before: 1, after: NaN, rank: 4, decay: 0.5 }), /after tail norm/);
});

Deno.test("rank pruning: a round that shrank the tail prunes by γ, one that did not keeps the rank", () => {
  const decay = 0.5, rank = 8, from = prunedRank(rank, decay);
  const received = adapter(1, rank, from, 1);
  // Local training pushed the tail components toward zero: prune to ⌊γ·8⌋ = 4.
  const tiny = adapter(2, rank, from, 1e-3);
  // Local training left the tail as large as it came (or larger): keep all 8.
  const kept = adapter(3, rank, from, 2);
  const before = tailScore(L, received, rank, decay);
  assert.ok(Math.abs(before - referenceTail(received, rank, from)) < 1e-9 * before);
  const afterTiny = tailScore(L, tiny, rank, decay);
  const afterKept = tailScore(L, kept, rank, decay);
  assert.ok(afterTiny < 1e-4 * before && afterKept > before, `${before} ${afterTiny} ${afterKept}`);
  assert.equal(nextRank({ before, after: afterTiny, rank, decay }), 4);
  assert.equal(nextRank({ before, after: afterKept, rank, decay }), 8);
  // Equal is not smaller: no prune (a round-1 tail with B = 0 starts and may end at 0).
  assert.equal(nextRank({ before: 0, after: 0, rank, decay }), 8);
  // Only the tail counts: the leading components can be anything.
  const lead = adapter(4, rank, from, 1e-3);
  for (let p = 0; p < L.size; p++) if (!leadingMask(L, from)[p]) lead[p] = tiny[p];
  assert.equal(tailScore(L, lead, rank, decay), afterTiny);
  // The γ = 0.99 default prunes one component of 8, so its tail is the last one.
  assert.ok(Math.abs(tailScore(L, kept, 8, 0.99) - referenceTail(kept, 8, 7)) < 1e-9 * afterKept);
  // At rank 1 there is no tail: nothing to penalise, nothing to prune.
  assert.equal(tailScore(L, adapter(5, 1, 1, 1), 1, decay), 0);
  assert.equal(nextRank({ before: 1, after: 0, rank: 1, decay }), 1);
  assert.throws(() => tailScore(L, received, 9, decay), /rank must be an integer in \[1, 8\]/);
});

Deno.test("rank pruning: the tail penalty's gradient is λ·∇ tailScore, and zero off the tail", () => {
  const decay = 0.5, rank = 6, weight = 0.3;
  const v = adapter(7, rank, 0, 1);
  const g = new Float32Array(L.size);
  addTailGradient(L, v, g, rank, { decay, tailWeight: weight });
  const from = prunedRank(rank, decay);
  const inTail = new Uint8Array(L.size);
  for (let p = 0; p < L.size; p++) inTail[p] = leadingMask(L, rank)[p] & (1 - leadingMask(L, from)[p]);
  let checked = 0;
  const rnd = mulberry32(9);
  for (let p = 0; p < L.size; p++) {
    if (!inTail[p]) {
      assert.equal(g[p], 0, `position ${p} is not in the tail`);
      continue;
    }
    if (rnd() > 0.05) continue;
    const h = 1e-3, x = v[p];
    v[p] = x + h;
    const up = tailScore(L, v, rank, decay);
    v[p] = x - h;
    const down = tailScore(L, v, rank, decay);
    v[p] = x;
    const numeric = weight * (up - down) / (2 * h);
    assert.ok(
      Math.abs(g[p] - numeric) < 1e-3 * Math.max(1e-3, Math.abs(numeric)),
      `${p}: ${g[p]} vs ${numeric}`,
    );
    checked++;
  }
  assert.ok(checked > 10, `${checked} positions checked`);
  // B's tail all zero (a fresh LoRA): A gets λ·0, B the subgradient 0: nothing moves.
  const fresh = adapter(8, rank, 0, 1);
  for (const e of L.entries) if (e.kind === "B") fresh.fill(0, e.offset, e.offset + e.size);
  const g0 = new Float32Array(L.size);
  addTailGradient(L, fresh, g0, rank, { decay, tailWeight: weight });
  assert.ok(g0.every((x) => x === 0));
  assert.throws(() => addTailGradient(L, v, g, rank, { decay: 1, tailWeight: weight }), /decay γ/);
});

Deno.test("rank pruning: a mask's rank is its leading components; other masks are refused", () => {
  for (const k of [1, 3, 8]) assert.equal(heldRank(L, leadingMask(L, k)), k);
  const holes = leadingMask(L, 4);
  holes[L.entries[1].offset + 1] = 0; // one B position of component 1
  assert.throws(() => heldRank(L, holes), /leading rank components/);
  assert.throws(() => heldRank(L, new Uint8Array(L.size)), /leading rank components/);
  assert.throws(() => heldRank(L, new Uint8Array(3)), /mask has 3 positions/);
  assert.throws(() => leadingMask(L, 0), /rank must be an integer/);
});

Deno.test("rank pruning: the train keys are off by default, ranged, and only HetLoRA takes them", () => {
  assert.equal(localHyper({}).rankPruning, null);
  assert.equal(localHyper({ rankDecay: 0.5, rankTailWeight: 2 }).rankPruning, null, "off: γ and λ unused");
  assert.deepEqual(localHyper({ rankPruning: "on" }).rankPruning, { decay: 0.99, tailWeight: 0.01 });
  assert.deepEqual(localHyper({ rankPruning: "on", rankDecay: 0.5, rankTailWeight: 0 }).rankPruning, {
    decay: 0.5,
    tailWeight: 0,
  });
  const bad: [unknown, RegExp][] = [
    [{ rankPruning: true }, /train\.rankPruning must be one of "off", "on", got true/],
    [{ rankDecay: 1 }, /train\.rankDecay must be a number in \(0, 1\), got 1/],
    [{ rankDecay: 0 }, /train\.rankDecay must be a number in \(0, 1\)/],
    [{ rankTailWeight: -0.1 }, /train\.rankTailWeight must be a number in \[0, 1000\]/],
  ];
  for (const [raw, re] of bad) assert.throws(() => parseTrainSettings(raw), re);
  assert.throws(
    () => parseRunConfig(runBody("perfit", { train: { rankPruning: "on" } })),
    /train\.rankPruning is HetLoRA's rank self-pruning; perfit has no rank to prune/,
  );
  assert.doesNotThrow(() => parseRunConfig(runBody("perfit", { train: { rankPruning: "off" } })));
  const hetlora = (train: unknown) =>
    parseRunConfig({
      ...runBody("perfit", { budget: undefined, adapterSize: undefined }),
      method: "hetlora",
      model: toHfConfig(tinyConfig()),
      train,
    });
  assert.deepEqual(hetlora({ rankPruning: "on", rankDecay: 0.5 }).train, {
    rankPruning: "on",
    rankDecay: 0.5,
  });
});
