/**
 * `perfit-mix`: each client's B is λ·own + (1 − λ)·global, λ picked on a validation split carved from
 * its training data. The pure mix and pick, the split, the trainer's choice when one side is spoilt,
 * and a simulated federation where every client reports a pick from the grid.
 */
import assert from "node:assert/strict";
import { partitionByCategory, splitValidation } from "../runtime/federation/partition.ts";
import { simulate } from "../runtime/federation/simulate.ts";
import { DEFAULT_SIM } from "../runtime/federation/types.ts";
import { strategyFor } from "../runtime/federation/strategies.ts";
import { kindMask } from "../runtime/perfit/layout.ts";
import { MIX_GRID, mixAt, pickMix } from "../runtime/perfit/mix.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { Engine } from "../runtime/model/engine.ts";
import { engineTrainer } from "../runtime/client/engine_trainer.ts";
import type { TaskInfo } from "../runtime/client/federated_client.ts";
import { parseTrainSettings } from "../runtime/client/train_settings.ts";
import { parseKnobs, withKnobs } from "../runtime/federation/knobs.ts";
import { federationTinyModel, wordData } from "./federation_fixtures.ts";

const tiny = federationTinyModel;
const data = wordData(40);

Deno.test("perfit-mix: mixAt mixes only the given positions, and refuses what is not a mix", () => {
  const own = Float32Array.from([1, 2, 3, 4]), global = Float32Array.from([5, 6, 7, 8]);
  const at = Uint8Array.from([1, 0, 1, 0]);
  assert.deepEqual(Array.from(mixAt(own, global, at, 0)), [5, 6, 7, 8]);
  assert.deepEqual(Array.from(mixAt(own, global, at, 1)), [1, 6, 3, 8]);
  assert.deepEqual(Array.from(mixAt(own, global, at, 0.25)), [4, 6, 6, 8]);
  assert.deepEqual(Array.from(global), [5, 6, 7, 8], "the inputs are not changed");
  assert.throws(() => mixAt(own, global, at, 1.5), RangeError);
  assert.throws(() => mixAt(own, global, at, NaN), RangeError);
  assert.throws(() => mixAt(own, global.subarray(1), at, 0.5), RangeError);
  assert.throws(() => mixAt(own, global, at.subarray(1), 0.5), RangeError);
});

Deno.test("perfit-mix: pickMix takes the lowest validation loss, the earlier on a tie; refuses NaN and an empty grid", async () => {
  const losses = new Map([[0, 3], [0.25, 2], [0.5, 1], [0.75, 1], [1, 4]]);
  assert.deepEqual(await pickMix(MIX_GRID, (l) => Promise.resolve(losses.get(l)!)), { lambda: 0.5, loss: 1 });
  await assert.rejects(() => pickMix([], () => Promise.resolve(1)), RangeError);
  await assert.rejects(() => pickMix(MIX_GRID, (l) => Promise.resolve(l === 0.75 ? NaN : 1)), RangeError);
});

Deno.test("perfit-mix: the validation split is a seeded part of the training data, disjoint from what is trained", () => {
  const a = splitValidation(data, 0.1, 7),
    b = splitValidation(data, 0.1, 7),
    c = splitValidation(data, 0.1, 8);
  assert.equal(a.validation.length, 8);
  assert.equal(a.fit.length, data.length - 8);
  assert.deepEqual(a, b, "same seed, same split");
  assert.notDeepEqual(a.validation, c.validation, "another seed, another split");
  assert.ok(a.validation.every((x) => !a.fit.includes(x)));
  assert.equal(new Set([...a.fit, ...a.validation]).size, data.length);
  for (const bad of [0, 1, -0.1, NaN]) assert.throws(() => splitValidation(data, bad, 0), RangeError);
  assert.throws(() => splitValidation(data.slice(0, 1), 0.1, 0), RangeError);
  assert.equal(splitValidation(data.slice(0, 2), 0.01, 0).validation.length, 1, "at least one held out");
  assert.throws(() => parseTrainSettings({ validationShare: 0.9 }), /validationShare/);
  assert.equal(parseTrainSettings({}).validationShare, 0.1);
});

/** A perfit-mix trainer over 40 training examples (a quarter held out) and its round-1 task, dense rank 2. */
async function mixTrainer(train: Record<string, unknown> = {}) {
  const m = await tiny();
  const R = 2;
  const trainer = engineTrainer({
    model: m,
    tokenizer: m.tokenizer!,
    data: { id: "c", train: data.slice(0, 40), test: data.slice(40, 50) },
    backend: "node",
  });
  const size = adapterLayout(m.config, { rank: R, alpha: 4, targets: ["q", "v"] }).size;
  const task: TaskInfo = {
    run: "r",
    round: 1,
    status: "train",
    deadline: null,
    method: "perfit-mix",
    baseModel: "tiny",
    lora: { rank: R, alpha: 4, targets: ["q", "v"] },
    tier: "base",
    expansion: 1,
    rank: R,
    budget: size,
    adapterSize: size,
    seed: 1,
    globalRound: 0,
    train: { maxLen: 32, batchSize: 4, localSteps: 12, lr: 0.02, validationShare: 0.25, ...train },
    plan: { search: false, randomMask: false },
  };
  return { trainer, task };
}

Deno.test("perfit-mix: the trainer keeps its own B when the average is spoilt, takes the average when its own is", async () => {
  const { trainer, task: t1 } = await mixTrainer();
  const out = await trainer(t1, await trainer.initAdapter(t1), null);
  const learner = trainer.learner()!;
  assert.equal(learner.samples, 30, "a quarter of the 40 training examples is held out, never trained on");
  assert.equal(out.samples, 30);
  const own = out.values;
  const B = kindMask(learner.layout, "B");
  const spoilt = (v: Float32Array) => v.map((x, i) => (B[i] ? x + (i % 2 ? 3 : -3) : x));
  // Before an aggregation has moved anything there is nothing to choose.
  assert.equal(await trainer.mixSlice(t1, own, own, out.mask), own);
  const keep = await trainer.mixSlice(t1, own, spoilt(own), out.mask);
  assert.equal(trainer.mixWeight(), 1);
  assert.deepEqual(Array.from(keep), Array.from(own));
  const take = await trainer.mixSlice(t1, spoilt(own), own, out.mask);
  assert.equal(trainer.mixWeight(), 0);
  assert.deepEqual(Array.from(take), Array.from(own));
  // A positions always come from the average, whatever λ.
  const otherA = own.map((x, i) => (B[i] ? x : x + 0.01));
  const mixed = await trainer.mixSlice(t1, own, otherA, out.mask);
  assert.ok(mixed.every((x, i) => B[i] || x === otherA[i]));
  // The next upload reports the weight picked.
  const again = await trainer(t1, mixed, out.mask);
  assert.equal(again.metrics?.mix, trainer.mixWeight());
});

Deno.test("perfit-mix: in a federation every client searches like PerFIT and reports a weight from the grid", async () => {
  const m = await tiny();
  assert.equal(strategyFor("perfit-mix").mixes, true);
  const kept: number[][] = [];
  const r = await simulate({
    ...DEFAULT_SIM,
    method: "perfit-mix",
    rounds: 2,
    localSteps: 6,
    rank: 2,
    alpha: 4,
    pruneStages: 3,
    clientTiers: ["high", "low"],
    seed: 1,
  }, {
    clients: partitionByCategory(data, 1, { seed: 1, testFraction: 0.15 }),
    tokenizer: m.tokenizer!,
    engineFactory: (rank) => Engine.create(m, { rank, alpha: 4, targets: DEFAULT_SIM.targets, baseRank: 2 }),
    batchSize: 4,
    maxLen: 32,
    inspect: (_, c) => void kept.push(c.map((v) => v.mask.reduce((a, b) => a + b, 0))),
  });
  assert.deepEqual(kept, [[r.budget, r.budget], [r.budget, r.budget]], "PerFIT's exact budget");
  for (const rd of r.rounds) {
    for (const c of rd.clients) {
      assert.ok(c.mix !== undefined && MIX_GRID.includes(c.mix), `round ${rd.round} ${c.clientId}: ${c.mix}`);
      assert.ok(Number.isFinite(c.perplexity));
    }
  }
});

Deno.test("perfit-mix: with mixPart all the A positions are mixed too, so a spoilt average A is refused", async () => {
  const { trainer, task } = await mixTrainer({ mixPart: "all" });
  const out = await trainer(task, await trainer.initAdapter(task), null);
  const own = out.values;
  const A = kindMask(trainer.learner()!.layout, "A");
  const spoiltA = own.map((x, i) => (A[i] ? x + (i % 2 ? 3 : -3) : x));
  const keep = await trainer.mixSlice(task, own, spoiltA, out.mask);
  assert.equal(trainer.mixWeight(), 1, "its own A is better than a spoilt one");
  assert.deepEqual(Array.from(keep), Array.from(own));
  const take = await trainer.mixSlice(task, spoiltA, own, out.mask);
  assert.equal(trainer.mixWeight(), 0);
  assert.deepEqual(Array.from(take), Array.from(own));
  assert.throws(() => parseTrainSettings({ mixPart: "A" }), /mixPart/);
  assert.deepEqual(parseKnobs({ mixPart: "all" }), { mixPart: "all" });
  assert.throws(() => parseKnobs({ mixPart: "AB" }), /mixPart/);
  assert.equal(withKnobs(DEFAULT_SIM, { mixPart: "all" }).mixPart, "all");
  assert.equal(withKnobs(DEFAULT_SIM, {}).mixPart, undefined, "unset, the run's settings carry no key");
});
