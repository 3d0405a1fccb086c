/**
 * A Deno PerFIT client written from `mod.ts` alone: `FederatedClient` + `engineTrainer` on the ORT
 * engine join a PerFIT run with expanded tiers, search and prune to the budget in round 1, and send
 * their unchanged masks by reference after that; a deployed FLoRA client's adapter is its merged base.
 */
import assert from "node:assert/strict";
import { client, Engine, engineTrainer, FederatedClient, loadModel, makeBatches } from "../mod.ts";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { appFetch, createRun, makeApp } from "./server_helpers.ts";

const WORDS = ["cache", "kludge", "house", "tree", "fox", "dog"];
const examples = (i: number, k: number) =>
  Array.from({ length: k }, (_, j) => ({
    prompt: `Define "${WORDS[(i + j) % WORDS.length]}". (${j})`,
    response: `${WORDS[(i + j) % WORDS.length]} is a word number ${i}.`,
  }));

/** The tiny model of this file's runs, loaded from a folder that is gone once it is loaded. */
async function tinyModel(seed: number) {
  const dir = await Deno.makeTempDir({ prefix: "perfit-client-" });
  const cfg = await generateTinyModel(`${dir}/model`, { seed });
  const model = await loadModel(`${dir}/model`);
  await Deno.remove(dir, { recursive: true });
  return { cfg, model };
}

/** A 2-round run of this file's two clients (tiers high ×2 and low) on the tiny model, with `over` on top. */
const twoClientRun = (cfg: Parameters<typeof toHfConfig>[0], over: Record<string, unknown>) => ({
  baseModel: "tiny",
  model: toHfConfig(cfg),
  lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
  rounds: 2,
  clientsPerRound: 2,
  quorum: 2,
  roundDeadlineMs: 600_000,
  expansionTiers: { low: 1, high: 2 },
  seed: 4,
  ...over,
});

/** One FederatedClient per trainer in `runId`, the first one high tier and the others low. */
function joinAll(
  trainers: ReturnType<typeof engineTrainer>[],
  runId: string,
  fetch: typeof globalThis.fetch,
) {
  return Promise.all(trainers.map((trainer, i) =>
    FederatedClient.create({
      serverUrl: "http://perfit.test",
      runId,
      trainer,
      tier: i === 0 ? "high" : "low",
      initAdapter: trainer.initAdapter,
      pollMs: 1,
      sleep: () => new Promise((r) => setTimeout(r, 0)),
      fetch,
    })
  ));
}

Deno.test({
  name:
    "client: a PerFIT client from mod.ts (FederatedClient + engineTrainer) trains expanded tiers to the budget",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const { cfg, model } = await tinyModel(5);
    const kv = await Deno.openKv(":memory:");
    const app = makeApp(kv);
    try {
      const runId = await createRun(
        app,
        twoClientRun(cfg, {
          method: "perfit",
          train: { localSteps: 4, batchSize: 2, maxLen: 32, pruneStages: 2 },
        }),
      );
      const { adapterSize, budget } = (await app.coordinator.getRun(runId)).run.config;
      const sent: { round: number; ref: boolean }[] = [];
      const route: typeof fetch = async (input, init) => {
        const m = /\/rounds\/(\d+)\/update$/.exec(String(input));
        if (m) {
          const u = client.decodeUpdate(init!.body as Uint8Array, adapterSize);
          sent.push({ round: Number(m[1]), ref: client.isMaskRef(u) });
        }
        return await app.request(input as string, init);
      };
      const trainers = [0, 1].map((i) =>
        engineTrainer({
          model,
          tokenizer: model.tokenizer!,
          data: { id: `c${i}`, train: examples(i, 6), test: examples(i + 3, 2) },
          // Both trainers' sessions run concurrently in this one process: onnxruntime-node handles
          // that; the WASM backend once read a non-tensor output under a parallel test run.
          backend: "node",
        })
      );
      const clients = await joinAll(trainers, runId, route);
      await Promise.all(clients.map((c) => c.run({ maxSteps: 500 })));
      const { run: done } = await app.coordinator.getRun(runId);
      assert.equal(done.status, "done");
      for (const [i, c] of clients.entries()) {
        // Every client keeps exactly the rank-r budget in the run's global layout (rank r · 2).
        assert.equal(c.mask!.reduce((a, b) => a + b, 0), budget, `client ${i}`);
        const p = trainers[i].personalized(c.adapter, c.mask)!;
        assert.equal(p.layout.rank, i === 0 ? 4 : 2);
        assert.ok(p.adapter.every(Number.isFinite));
      }
      assert.deepEqual(sent.map((s) => [s.round, s.ref]).sort(), [[1, false], [1, false], [2, true], [
        2,
        true,
      ]]);
    } finally {
      await app.close();
      kv.close();
    }
  },
});

Deno.test({
  name:
    "client: a deployed FLoRA client's personalized adapter is its merged base (every stack, the last one before it is merged too)",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const { cfg, model } = await tinyModel(6);
    const kv = await Deno.openKv(":memory:");
    const app = makeApp(kv);
    try {
      const runId = await createRun(
        app,
        twoClientRun(cfg, {
          method: "flora",
          maxClients: 2,
          train: { localSteps: 4, batchSize: 2, maxLen: 32 },
        }),
      );
      const data = [0, 1].map((i) => ({ id: `c${i}`, train: examples(i, 6), test: examples(i + 3, 3) }));
      const trainers = data.map((d) =>
        engineTrainer({
          model,
          tokenizer: model.tokenizer!,
          data: d,
          backend: "node",
          evaluateAfterTraining: false,
        })
      );
      const clients = await joinAll(trainers, runId, appFetch(() => app));
      await Promise.all(clients.map((c) => c.run({ maxSteps: 500 })));
      assert.equal((await app.coordinator.getRun(runId)).run.status, "done");
      const slots = 2, stackRank = slots * 2 * 2; // two slots of the widest tier's rank r·2
      for (const [i, c] of clients.entries()) {
        // What a deployed client writes (runtime/client/data_owner.ts) once the last slice is in.
        const x = trainers[i].personalized(c.adapter, c.mask)!;
        assert.equal(x.layout.rank, 2 * stackRank, `client ${i}: both rounds' stacks`);
        const wide = await Engine.create(model, { rank: x.layout.rank, alpha: 4, targets: ["q", "v"] }, {
          backend: "node",
          scale: x.scale,
        });
        let nll = 0, tokens = 0;
        for (
          const b of makeBatches(data[i].test, model.tokenizer!, { maxLen: 32, batchSize: 2, shuffle: false })
        ) {
          const e = await wide.evalNll(b, x.adapter);
          nll += e.nllSum;
          tokens += e.tokens;
        }
        // The trainer's own evaluation merges the last stack into its base and scores that.
        const want = await trainers[i].evaluate(await c.task(), c.adapter!, c.mask);
        assert.equal(tokens, want.tokens);
        assert.ok(Math.abs(nll - want.nllSum) < 1e-4 * want.nllSum, `client ${i}: ${nll} vs ${want.nllSum}`);
      }
    } finally {
      await app.close();
      kv.close();
    }
  },
});
