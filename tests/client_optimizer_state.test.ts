/**
 * `train.optimizerState`: a client's AdamW moments start afresh every round (`round`, the default), or
 * carry over from its last round (`kept`). Kept, two rounds of n steps are one run of 2n steps; the
 * setting travels with the task to every client; a restarted client resumes its moments from its
 * storage; the coordinator refuses it where a round starts a fresh LoRA (FLoRA).
 */
import assert from "node:assert/strict";
import { Engine } from "../runtime/model/engine.ts";
import { initAdapter } from "../runtime/model/lora.ts";
import { LocalLearner } from "../runtime/client/local_update.ts";
import { partitionByCategory } from "../runtime/federation/partition.ts";
import { simulate } from "../runtime/federation/simulate.ts";
import { DEFAULT_SIM, type FitIns, type SimConfig } from "../runtime/federation/types.ts";
import { parseKnobs, withKnobs } from "../runtime/federation/knobs.ts";
import { parseTrainSettings } from "../runtime/client/train_settings.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { engineTrainer, FederatedClient } from "../runtime/client/mod.ts";
import { FileStorage } from "../runtime/client/storage.ts";
import { AdamW } from "../runtime/model/optim.ts";
import { ADMIN, appFetch, createRun, makeApp, runBody } from "./server_helpers.ts";
import { federationTinyModel, smallSimConfig, wordData } from "./federation_fixtures.ts";

const data = wordData(24, ["define", "translate"]);

/** A learner over the tiny model at rank 2 (no search: every position trains). */
async function learner(): Promise<LocalLearner> {
  const m = await federationTinyModel();
  const engine = await Engine.create(m, { rank: 2, alpha: 4, targets: ["q", "v"] });
  return new LocalLearner(
    { id: "c", train: data, test: data.slice(0, 4), categories: {} },
    "low",
    1,
    engine,
    2,
    initAdapter(engine.layout, 7),
    { tokenizer: m.tokenizer!, batchSize: 4, maxLen: 32 },
    5,
  );
}

const ins = (round: number, steps: number): FitIns => ({ round, steps, search: false, randomMask: false });
const cfg = (optimizerState: "round" | "kept"): SimConfig => ({ ...DEFAULT_SIM, lr: 0.01, optimizerState });

Deno.test("optimizerState kept: two rounds of 3 steps are one round of 6; fresh each round, they are not", async () => {
  const once = await learner();
  await once.fit(ins(1, 6), cfg("round"));
  const kept = await learner(), fresh = await learner();
  for (const round of [1, 2]) {
    await kept.fit(ins(round, 3), cfg("kept"));
    await fresh.fit(ins(round, 3), cfg("round"));
  }
  // The same batches in the same order: only the optimizer's state differs between the three.
  assert.deepEqual(kept.adapter, once.adapter);
  assert.notDeepEqual(fresh.adapter, once.adapter);
  // A fresh AdamW's first step moves each position by about lr; a kept one's is damped by its history.
  const a = kept.adapter.slice(), b = fresh.adapter.slice();
  await kept.fit(ins(3, 1), cfg("kept"));
  await fresh.fit(ins(3, 1), cfg("round"));
  const moved = (x: Float32Array, y: Float32Array) => Math.max(...x.map((v, i) => Math.abs(v - y[i])));
  assert.ok(
    moved(kept.adapter, a) < moved(fresh.adapter, b),
    `${moved(kept.adapter, a)} vs ${moved(fresh.adapter, b)}`,
  );
});

Deno.test("optimizerState kept: a kept optimizer steps at the round's own rate", async () => {
  const slow = await learner(), fast = await learner();
  await slow.fit(ins(1, 3), cfg("kept"));
  await fast.fit(ins(1, 3), cfg("kept"));
  assert.deepEqual(slow.adapter, fast.adapter);
  const start = slow.adapter.slice();
  await slow.fit(ins(2, 3), { ...cfg("kept"), lr: 0.001 });
  await fast.fit(ins(2, 3), cfg("kept"));
  const dist = (x: Float32Array) => Math.hypot(...x.map((v, i) => v - start[i]));
  assert.ok(dist(slow.adapter) > 0 && dist(slow.adapter) < dist(fast.adapter) / 4, "lr 0.001 moves less");
});

Deno.test("optimizerState kept: the simulation's clients keep their moments from round 2 on", async () => {
  const m = await federationTinyModel();
  const run = async (over: Partial<SimConfig>) => {
    const c = smallSimConfig("perfit", over);
    const engines = new Map<number, Engine>();
    return await simulate(c, {
      clients: partitionByCategory(data, 1, { seed: 1, testFraction: 0.2 }),
      tokenizer: m.tokenizer!,
      engineFactory: async (rank) => {
        if (!engines.has(rank)) {
          engines.set(rank, await Engine.create(m, { rank, alpha: c.alpha, targets: c.targets }));
        }
        return engines.get(rank)!;
      },
      batchSize: 4,
      maxLen: 32,
      modelConfig: toHfConfig(m.config) as Record<string, unknown>,
    });
  };
  const fresh = await run({});
  const kept = await run({ optimizerState: "kept" });
  const ppl = (r: typeof fresh, round: number) => r.rounds[round - 1].clients.map((c) => c.perplexity);
  assert.deepEqual(ppl(kept, 1), ppl(fresh, 1), "round 1 starts every optimizer afresh either way");
  const differs = ppl(kept, 2).map((p, i) => p !== ppl(fresh, 2)[i]);
  assert.ok(differs.every(Boolean), `every client's round 2 changed: ${differs}`);
  assert.equal(kept.config.optimizerState, "kept");
});

Deno.test("optimizerState: the setting and the knob take round or kept only; FLoRA is refused, nothing stored", async () => {
  assert.equal(parseTrainSettings({}).optimizerState, "round");
  assert.equal(parseTrainSettings({ optimizerState: "kept" }).optimizerState, "kept");
  for (const bad of ["KEPT", "", 1, null, ["kept"], "__proto__"]) {
    assert.throws(() => parseTrainSettings({ optimizerState: bad }), /optimizerState must be one of/);
    assert.throws(() => parseKnobs({ optimizerState: bad }), /optimizerState/);
  }
  assert.equal(withKnobs(DEFAULT_SIM, { optimizerState: "kept" }).optimizerState, "kept");
  assert.equal(withKnobs(DEFAULT_SIM, {}).optimizerState, undefined, "unset, the settings carry no key");

  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const count = async () => (await Array.fromAsync(kv.list({ prefix: [] }))).length;
  const before = await count();
  const create = (body: Record<string, unknown>) =>
    app.request("/v1/runs", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN}` },
      body: JSON.stringify(body),
    });
  const model = toHfConfig((await federationTinyModel()).config);
  const flora = await create({
    ...runBody("perfit"),
    method: "flora",
    model,
    adapterSize: undefined,
    budget: undefined,
    maxClients: 8,
    expansionTiers: { low: 1, high: 2 },
    train: { optimizerState: "kept" },
  });
  const body = await flora.json();
  assert.equal(flora.status, 422, JSON.stringify(body));
  assert.match(body.error.message, /optimizerState "kept" is not offered for flora/);
  const bad = await create({ ...runBody("perfit"), train: { optimizerState: "always" } });
  assert.equal(bad.status, 422);
  assert.match((await bad.json()).error.message, /train\.optimizerState must be one of "round", "kept"/);
  assert.equal(await count(), before, "nothing was stored");
  const ok = await create({ ...runBody("perfit"), train: { optimizerState: "kept" } });
  assert.equal(ok.status, 201, JSON.stringify(await ok.clone().json()));
  await app.close();
  kv.close();
});

/** The step count a saved AdamW state holds (its first 8 bytes). */
const stepsOf = (b: Uint8Array | null) => b && new DataView(b.slice(0, 8).buffer).getFloat64(0, true);

Deno.test("optimizerState kept: a restarted client resumes its moments from storage, saved with each generation", async () => {
  const m = await federationTinyModel();
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const dir = await Deno.makeTempDir({ prefix: "perfit-optimizer-" });
  try {
    const steps = 3;
    const body = (optimizerState: string) => ({
      baseModel: "tiny",
      model: toHfConfig(m.config),
      lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
      method: "fedit",
      rounds: 2,
      clientsPerRound: 1,
      quorum: 1,
      roundDeadlineMs: 600_000,
      train: { localSteps: steps, batchSize: 4, maxLen: 32, optimizerState },
      seed: 2,
    });
    const trainer = () =>
      engineTrainer({
        model: m,
        tokenizer: m.tokenizer!,
        data: { id: "c", train: data, test: data.slice(0, 4) },
        backend: "node",
        evaluateAfterTraining: false,
      });
    const opts = (runId: string) => ({
      serverUrl: "http://t",
      runId,
      fetch: appFetch(() => app),
      sleep: () => Promise.resolve(),
      pollMs: 0,
    });
    const runId = await createRun(app, body("kept"));
    const first = trainer();
    const c1 = await FederatedClient.create({
      ...opts(runId),
      trainer: first,
      storage: new FileStorage(dir),
    });
    while ((await c1.step()).kind !== "trained");
    assert.equal(stepsOf(first.optimizerState()), steps);
    // The process ends after round 1: a new one on the same storage, with a new trainer.
    const second = trainer();
    const c2 = await FederatedClient.create({
      ...opts(runId),
      trainer: second,
      storage: new FileStorage(dir),
    });
    const out = await c2.run({ maxSteps: 50 });
    assert.equal(out.at(-1)!.kind, "done");
    assert.equal(stepsOf(second.optimizerState()), 2 * steps, "round 2 stepped on from round 1's moments");
    const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name);
    assert.equal(names.filter((n) => n.startsWith("optimizer")).length, 1, `one generation kept: ${names}`);
    // A bad saved state is refused when the learner takes it, not trained on.
    const third = trainer();
    third.restoreOptimizerState(new Uint8Array(12));
    const run2 = await createRun(app, body("kept"));
    const c3 = await FederatedClient.create({ ...opts(run2), trainer: third });
    await assert.rejects(() => c3.run({ maxSteps: 50 }), /AdamW state of 12 bytes/);
    // Fresh each round, nothing is kept or saved.
    const run3 = await createRun(app, body("round"));
    const plain = trainer();
    const dir3 = await Deno.makeTempDir({ prefix: "perfit-optimizer-" });
    const c4 = await FederatedClient.create({
      ...opts(run3),
      trainer: plain,
      storage: new FileStorage(dir3),
    });
    await c4.run({ maxSteps: 50 });
    assert.equal(plain.optimizerState(), null);
    assert.ok(!(await Array.fromAsync(Deno.readDir(dir3))).some((e) => e.name.startsWith("optimizer")));
    await Deno.remove(dir3, { recursive: true });
  } finally {
    await Deno.remove(dir, { recursive: true });
    await app.close();
    kv.close();
  }
});

Deno.test("AdamW state: save and load round-trip; wrong sizes, step counts and moments are refused", () => {
  const a = new AdamW(4, { lr: 0.1 });
  a.step(new Float32Array([1, 2, 3, 4]), new Float32Array([0.5, -1, 2, 0]));
  const b = new AdamW(4, { lr: 0.1 });
  b.load(a.save());
  assert.deepEqual([b.t, [...b.m], [...b.v]], [a.t, [...a.m], [...a.v]]);
  assert.throws(() => new AdamW(5, { lr: 0.1 }).load(a.save()), /AdamW state of 40 bytes/);
  const bad = (f: (bytes: Uint8Array) => void) => {
    const bytes = a.save();
    f(bytes);
    return () => new AdamW(4, { lr: 0.1 }).load(bytes);
  };
  assert.throws(bad((x) => new DataView(x.buffer).setFloat64(0, 1.5, true)), /step count 1.5/);
  assert.throws(bad((x) => new DataView(x.buffer).setFloat32(8, NaN, true)), /bad moment at 0/);
  assert.throws(bad((x) => new DataView(x.buffer).setFloat32(8 + 16 + 4, -1, true)), /bad moment at 1/);
});
