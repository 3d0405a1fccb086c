/**
 * A Deno PerFIT client written from `mod.ts` alone: `FederatedClient` + `engineTrainer` on the ORT
 * engine join a PerFIT run with expanded tiers, search and prune to the budget in round 1, and send
 * their unchanged masks by reference after that; a deployed FLoRA client's adapter is its merged base.
 */
import assert from "node:assert/strict";
import { client, Engine, engineTrainer, FederatedClient, loadModel, makeBatches } from "../mod.ts";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { ADMIN, makeApp } from "./server_helpers.ts";

const WORDS = ["cache", "kludge", "house", "tree", "fox", "dog"];
const examples = (i: number, k: number) =>
  Array.from({ length: k }, (_, j) => ({
    prompt: `Define "${WORDS[(i + j) % WORDS.length]}". (${j})`,
    response: `${WORDS[(i + j) % WORDS.length]} is a word number ${i}.`,
  }));

Deno.test({
  name:
    "client: a PerFIT client from mod.ts (FederatedClient + engineTrainer) trains expanded tiers to the budget",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-client-" });
    const cfg = await generateTinyModel(`${dir}/model`, { seed: 5 });
    const model = await loadModel(`${dir}/model`);
    await Deno.remove(dir, { recursive: true });
    const kv = await Deno.openKv(":memory:");
    const app = makeApp(kv);
    try {
      const res = await app.request("/v1/runs", {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({
          baseModel: "tiny",
          model: toHfConfig(cfg),
          lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
          method: "perfit",
          rounds: 2,
          clientsPerRound: 2,
          quorum: 2,
          roundDeadlineMs: 600_000,
          expansionTiers: { low: 1, high: 2 },
          train: { localSteps: 4, batchSize: 2, maxLen: 32, pruneStages: 2 },
          seed: 4,
        }),
      });
      assert.equal(res.status, 201, await res.clone().text());
      const run = (await res.json()).run;
      const sent: { round: number; ref: boolean }[] = [];
      const route: typeof fetch = async (input, init) => {
        const m = /\/rounds\/(\d+)\/update$/.exec(String(input));
        if (m) {
          const u = client.decodeUpdate(init!.body as Uint8Array, run.config.adapterSize);
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
      const clients = await Promise.all(trainers.map((trainer, i) =>
        FederatedClient.create({
          serverUrl: "http://perfit.test",
          runId: run.id,
          trainer,
          tier: i === 0 ? "high" : "low",
          initAdapter: trainer.initAdapter,
          pollMs: 1,
          sleep: () => new Promise((r) => setTimeout(r, 0)),
          fetch: route,
        })
      ));
      await Promise.all(clients.map((c) => c.run({ maxSteps: 500 })));
      const { run: done } = await app.coordinator.getRun(run.id);
      assert.equal(done.status, "done");
      for (const [i, c] of clients.entries()) {
        // Every client keeps exactly the rank-r budget in the run's global layout (rank r · 2).
        assert.equal(c.mask!.reduce((a, b) => a + b, 0), run.config.budget, `client ${i}`);
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
    const dir = await Deno.makeTempDir({ prefix: "perfit-client-" });
    const cfg = await generateTinyModel(`${dir}/model`, { seed: 6 });
    const model = await loadModel(`${dir}/model`);
    await Deno.remove(dir, { recursive: true });
    const kv = await Deno.openKv(":memory:");
    const app = makeApp(kv);
    try {
      const res = await app.request("/v1/runs", {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({
          baseModel: "tiny",
          model: toHfConfig(cfg),
          lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
          method: "flora",
          rounds: 2,
          clientsPerRound: 2,
          quorum: 2,
          maxClients: 2,
          roundDeadlineMs: 600_000,
          expansionTiers: { low: 1, high: 2 },
          train: { localSteps: 4, batchSize: 2, maxLen: 32 },
          seed: 4,
        }),
      });
      assert.equal(res.status, 201, await res.clone().text());
      const run = (await res.json()).run;
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
      const clients = await Promise.all(trainers.map((trainer, i) =>
        FederatedClient.create({
          serverUrl: "http://perfit.test",
          runId: run.id,
          trainer,
          tier: i === 0 ? "high" : "low",
          initAdapter: trainer.initAdapter,
          pollMs: 1,
          sleep: () => new Promise((r) => setTimeout(r, 0)),
          fetch: async (input, init) => await app.request(input as string, init),
        })
      ));
      await Promise.all(clients.map((c) => c.run({ maxSteps: 500 })));
      assert.equal((await app.coordinator.getRun(run.id)).run.status, "done");
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
