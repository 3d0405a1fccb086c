/**
 * Local fine-tuning once the run is done (`train.finetuneSteps`): each client trains its final
 * personalized model on its own data and keeps it. The simulation and a deployed client take the same
 * path (the done-step of `FederatedClient`); the coordinator refuses it where there is no adapter to
 * tune; a client tunes once, also across a restart. `finetuneLrScale` sets the rate of those steps.
 */
import assert from "node:assert/strict";
import { Engine } from "../runtime/model/engine.ts";
import { partitionByCategory } from "../runtime/federation/partition.ts";
import { type SimClientView, simulate } from "../runtime/federation/simulate.ts";
import { DEFAULT_SIM, type SimConfig } from "../runtime/federation/types.ts";
import type { Method } from "../runtime/federation/strategies.ts";
import { parseKnobs, withKnobs } from "../runtime/federation/knobs.ts";
import { parseTrainSettings } from "../runtime/client/train_settings.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { kindMask } from "../runtime/perfit/layout.ts";
import { FederatedClient, type TaskInfo } from "../runtime/client/mod.ts";
import { FileStorage } from "../runtime/client/storage.ts";
import { ADMIN, appFetch, createRun, fakeTrainer, makeApp, runBody } from "./server_helpers.ts";
import { federationTinyModel, smallSimConfig, wordData } from "./federation_fixtures.ts";

const data = wordData(60, ["define", "translate", "acronym"]);

/** A 2-round simulation on the tiny model; the views each round ends with. */
async function run(method: Method, over: Partial<SimConfig> = {}) {
  const m = await federationTinyModel();
  const cfg = smallSimConfig(method, over);
  const engines = new Map<number, Engine>();
  const views: SimClientView[][] = [];
  const result = await simulate(cfg, {
    clients: partitionByCategory(data, 1, { seed: 1, testFraction: 0.15 }),
    tokenizer: m.tokenizer!,
    engineFactory: async (rank) => {
      if (!engines.has(rank)) {
        engines.set(rank, await Engine.create(m, { rank, alpha: cfg.alpha, targets: cfg.targets }));
      }
      return engines.get(rank)!;
    },
    batchSize: 4,
    maxLen: 48,
    inspect: (_r, c) =>
      void views.push(c.map((v) => ({ ...v, adapter: v.adapter.slice(), mask: v.mask.slice() }))),
    modelConfig: toHfConfig(m.config) as Record<string, unknown>,
  });
  return { result, views };
}

const ppl = (r: Awaited<ReturnType<typeof run>>["result"], round: number) =>
  r.rounds[round - 1].clients.map((c) => c.perplexity);

Deno.test("finetune: only the final models change, each on its own data, masks and budgets kept", async () => {
  const plain = await run("perfit");
  const tuned = await run("perfit", { finetuneSteps: 8 });
  assert.deepEqual(ppl(tuned.result, 1), ppl(plain.result, 1), "round 1 is the same federation");
  const before = ppl(plain.result, 2), after = ppl(tuned.result, 2);
  for (const [i, p] of after.entries()) {
    assert.notEqual(p, before[i], `client ${i}'s final model was tuned`);
  }
  // Trained on its own category's examples, each client's held-out perplexity falls.
  const mean = (x: number[]) => x.reduce((s, v) => s + v, 0) / x.length;
  assert.ok(mean(after) < mean(before), `${mean(after)} vs ${mean(before)}`);
  for (const [i, v] of tuned.views[1].entries()) {
    const p = plain.views[1][i];
    assert.deepEqual(v.mask, p.mask, "the searched mask stays");
    assert.equal(v.mask.reduce((s, b) => s + b, 0), tuned.result.budget);
    for (let j = 0; j < v.mask.length; j++) {
      if (!v.mask[j]) assert.equal(v.adapter[j], 0, "nothing outside the mask is trained");
    }
    assert.notDeepEqual(v.adapter, p.adapter);
  }
  // Nothing is uploaded for it: the last round's bytes up are the plain run's.
  assert.deepEqual(
    tuned.result.rounds[1].clients.map((c) => c.uploadBytes),
    plain.result.rounds[1].clients.map((c) => c.uploadBytes),
  );
  assert.equal(tuned.result.config.finetuneSteps, 8);
});

Deno.test("finetune: finetuneLrScale sets the fine-tuning's rate, and only the fine-tuning's", async () => {
  const plain = await run("perfit");
  const full = await run("perfit", { finetuneSteps: 6 });
  const slow = await run("perfit", { finetuneSteps: 6, finetuneLrScale: 0.05 });
  assert.deepEqual(ppl(slow.result, 1), ppl(plain.result, 1), "the federation's rate is the run's");
  const moved = (r: typeof plain) =>
    r.views[1].map((v, i) => Math.hypot(...v.adapter.map((x, j) => x - plain.views[1][i].adapter[j])));
  const fast = moved(full);
  for (const [i, d] of moved(slow).entries()) {
    assert.ok(d > 0, `client ${i} was tuned`);
    assert.ok(d < fast[i], `client ${i}: ${d} at 0.05× vs ${fast[i]} at 1×`);
  }
  assert.equal(slow.result.config.finetuneLrScale, 0.05);
});

Deno.test("finetune: FedIT's shared final model becomes one per client; FFA-LoRA's A stays at its init", async () => {
  const fedit = await run("fedit", { finetuneSteps: 6 });
  const [a, b] = fedit.views[1];
  assert.notDeepEqual(a.adapter, b.adapter, "each client tuned the global model on its own data");
  const ffa = await run("ffa");
  const ffaTuned = await run("ffa", { finetuneSteps: 6 });
  for (const [i, v] of ffaTuned.views[1].entries()) {
    const A = kindMask(v.layout, "A");
    const p = ffa.views[1][i].adapter;
    for (let j = 0; j < A.length; j++) if (A[j]) assert.equal(v.adapter[j], p[j], "A is frozen");
    assert.notDeepEqual(v.adapter, p, "B was tuned");
  }
});

Deno.test("finetune: the setting and the knob refuse what is not a step count; the coordinator refuses methods with nothing to tune", async () => {
  assert.equal(parseTrainSettings({}).finetuneSteps, 0);
  assert.equal(parseTrainSettings({ finetuneSteps: 40 }).finetuneSteps, 40);
  for (const bad of [-1, 1.5, "6", NaN, 1e9]) {
    assert.throws(() => parseTrainSettings({ finetuneSteps: bad }), /finetuneSteps/);
    assert.throws(() => parseKnobs({ finetuneSteps: bad }), /finetuneSteps/);
  }
  assert.deepEqual(parseKnobs({ finetuneSteps: 40 }), { finetuneSteps: 40 });
  assert.equal(withKnobs(DEFAULT_SIM, { finetuneSteps: 40 }).finetuneSteps, 40);
  assert.equal(withKnobs(DEFAULT_SIM, {}).finetuneSteps, undefined, "unset, the settings carry no key");
  assert.equal(parseTrainSettings({}).finetuneLrScale, 1);
  for (const bad of [0, -0.5, 1.5, "0.5", NaN]) {
    assert.throws(() => parseTrainSettings({ finetuneLrScale: bad }), /finetuneLrScale/);
    assert.throws(() => parseKnobs({ finetuneLrScale: bad }), /finetuneLrScale/);
  }
  assert.equal(withKnobs(DEFAULT_SIM, { finetuneLrScale: 0.25 }).finetuneLrScale, 0.25);

  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const count = async () => (await Array.fromAsync(kv.list({ prefix: [] }))).length;
  const before = await count();
  const model = toHfConfig((await federationTinyModel()).config);
  const extra: Record<string, Record<string, unknown>> = {
    local: {},
    feddpa: {},
    flora: { model, adapterSize: undefined, maxClients: 8, expansionTiers: { low: 1, high: 2 } },
  };
  for (const method of ["local", "feddpa", "flora"]) {
    const res = await app.request("/v1/runs", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN}` },
      body: JSON.stringify({
        ...runBody("perfit"),
        method,
        expansionTiers: undefined,
        budget: undefined,
        train: { finetuneSteps: 4 },
        ...extra[method],
      }),
    });
    const body = await res.json();
    assert.equal(res.status, 422, `${method}: ${JSON.stringify(body)}`);
    assert.match(body.error.message, /finetuneSteps is not offered for/);
  }
  // A fine-tuning rate with no fine-tuning is a mistake in the config, not a no-op.
  const rate = await app.request("/v1/runs", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${ADMIN}` },
    body: JSON.stringify({ ...runBody("perfit"), train: { finetuneLrScale: 0.25 } }),
  });
  assert.equal(rate.status, 422);
  assert.match((await rate.json()).error.message, /finetuneLrScale .* needs train\.finetuneSteps/);
  assert.equal(await count(), before, "nothing was stored");
  await app.close();
  kv.close();
});

Deno.test("finetune: a client tunes its final model once, and a restarted one keeps the tuned model", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const runId = await createRun(
    app,
    runBody("perfit", { clientsPerRound: 1, quorum: 1, rounds: 1, train: { finetuneSteps: 3 } }),
  );
  const route = appFetch(() => app);
  const dir = await Deno.makeTempDir({ prefix: "perfit-finetune-" });
  const tunes: number[] = [];
  const trainer = (calls: number[]) =>
    Object.assign(fakeTrainer(0), {
      finetune: (task: TaskInfo, adapter: Float32Array, mask: Uint8Array | null) => {
        calls.push(task.globalRound);
        assert.equal(parseTrainSettings(task.train).finetuneSteps, 3);
        return Promise.resolve(adapter.map((v, i) => (mask?.[i] ? v + 1 : v)));
      },
    });
  const opts = { serverUrl: "http://t", runId, fetch: route, sleep: () => Promise.resolve(), pollMs: 0 };
  const c = await FederatedClient.create({ ...opts, trainer: trainer(tunes), storage: new FileStorage(dir) });
  const out = await c.run({ maxSteps: 20 });
  assert.equal(out.at(-1)!.kind, "done");
  assert.deepEqual(tunes, [1], "tuned once, on the final round's model");
  const tunedAdapter = c.adapter!.slice();
  assert.equal((await c.step()).kind, "done");
  assert.deepEqual(tunes, [1], "a second done-step does not tune again");
  // A new process on the same storage: it has the tuned model and does not tune it again.
  const again: number[] = [];
  const c2 = await FederatedClient.create({
    ...opts,
    trainer: trainer(again),
    storage: new FileStorage(dir),
  });
  assert.equal((await c2.step()).kind, "done");
  assert.deepEqual(again, []);
  assert.deepEqual(c2.adapter, tunedAdapter);
  // A trainer that cannot fine-tune is told so, not silently skipped.
  const runId2 = await createRun(
    app,
    runBody("perfit", { clientsPerRound: 1, quorum: 1, rounds: 1, train: { finetuneSteps: 3 } }),
  );
  const plain = await FederatedClient.create({ ...opts, runId: runId2, trainer: fakeTrainer(0) });
  await assert.rejects(() => plain.run({ maxSteps: 20 }), /cannot fine-tune/);
  await Deno.remove(dir, { recursive: true });
  await app.close();
  kv.close();
});
