/**
 * The coordinator with real local training: 8 FederatedClients fine-tune the generated tiny model
 * through the ORT engine (PerFIT masks from accumulated Taylor importance, and FedIT), 3 rounds each.
 */
import assert from "node:assert/strict";
import { FederatedClient, type TaskInfo, type TrainerOutput } from "../runtime/client/mod.ts";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { Engine, loadModel } from "../runtime/model/engine.ts";
import { initAdapter } from "../runtime/model/lora.ts";
import { trainLora } from "../runtime/model/trainer.ts";
import { makeBatches } from "../runtime/data/mod.ts";
import { kernels } from "../runtime/kernels/mod.ts";
import { ADMIN, makeApp } from "./server_helpers.ts";

const TOPICS = [
  ["cache", "a small fast memory that holds recent data."],
  ["kludge", "a clumsy but working solution."],
  ["house", "maison."],
  ["tree", "a tall perennial woody plant."],
  ["CPU", "Central Processing Unit."],
  ["fox", "quick and brown."],
  ["dog", "lazy."],
  ["data", "recent and fast."],
];

function examplesFor(i: number) {
  const [w, a] = TOPICS[i];
  return Array.from(
    { length: 4 },
    (_, k) => ({ prompt: `What does "${w}" mean? (${k}) `, response: `${w} is ${a}` }),
  );
}

const lora = { rank: 2, alpha: 4, targets: ["q", "v"] as ("q" | "v")[] };
let shared:
  | Promise<
    {
      cfg: Awaited<ReturnType<typeof generateTinyModel>>;
      model: Awaited<ReturnType<typeof loadModel>>;
      engine: Engine;
    }
  >
  | null = null;

/** The tiny model and its engine, built once for both tests. */
function tiny() {
  shared ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "perfit-real-" });
    const cfg = await generateTinyModel(`${dir}/model`, { seed: 3 });
    const model = await loadModel(`${dir}/model`);
    await Deno.remove(dir, { recursive: true });
    const engine = await Engine.create(model, lora, { backend: "wasm", scale: lora.alpha / lora.rank });
    return { cfg, model, engine };
  })();
  return shared;
}

async function federate(method: "perfit" | "fedit") {
  const { cfg, model, engine } = await tiny();
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, app.fetch);
  const url = `http://127.0.0.1:${server.addr.port}`;
  let lock = Promise.resolve();
  try {
    const res = await fetch(`${url}/v1/runs`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: JSON.stringify({
        baseModel: "tiny",
        model: toHfConfig(cfg),
        lora,
        method,
        rounds: 3,
        clientsPerRound: 8,
        quorum: 8,
        roundDeadlineMs: 600_000,
        ...(method === "perfit" ? { budget: Math.floor(engine.layout.size / 2) } : {}),
        seed: 9,
      }),
    });
    assert.equal(res.status, 201);
    const runId = (await res.json()).run.id;
    const trainer = (i: number) =>
    (
      task: TaskInfo,
      adapter: Float32Array,
      mask: Uint8Array | null,
    ): Promise<TrainerOutput> => {
      // One engine serves every client: serialize its sessions.
      const run = lock.then(async () => {
        const batches = makeBatches(examplesFor(i), model.tokenizer!, {
          maxLen: 32,
          batchSize: 2,
          seed: i,
        });
        let m = mask;
        if (!m) {
          if (task.method === "fedit") m = new Uint8Array(adapter.length).fill(1);
          else {
            // PerFIT: score every position by accumulated |theta * grad| on a scratch copy, keep the budget.
            const probe = await trainLora(
              engine,
              batches,
              adapter.slice(),
              new Uint8Array(adapter.length).fill(1),
              { steps: 2, lr: 1e-2, seed: i },
            );
            m = kernels().topkMask(probe.importance, task.budget);
          }
        }
        const values = adapter.slice();
        const r = await trainLora(engine, batches, values, m, {
          steps: 4,
          lr: 2e-2,
          seed: task.round * 100 + i,
        });
        const loss = r.losses.reduce((a, b) => a + b, 0) / r.losses.length;
        return { values, mask: m, samples: 4, metrics: { loss, ppl: Math.exp(loss) } };
      });
      lock = run.then(() => {}, () => {});
      return run;
    };
    const clients = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        FederatedClient.create({
          serverUrl: url,
          runId,
          trainer: trainer(i),
          pollMs: 5,
          initAdapter: (t) => initAdapter(engine.layout, t.seed),
        })),
    );
    await Promise.all(clients.map((c) => c.run({ maxSteps: 5000 })));
    const metrics = await (await fetch(`${url}/v1/runs/${runId}/metrics`, {
      headers: { authorization: `Bearer ${ADMIN}` },
    })).json();
    return { metrics, clients, size: engine.layout.size };
  } finally {
    await server.shutdown();
    await app.close();
    kv.close();
  }
}

for (const method of ["perfit", "fedit"] as const) {
  Deno.test({
    name: `server real training: 8 clients fine-tune the tiny model for 3 ${method} rounds; loss falls`,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      const { metrics, clients, size } = await federate(method);
      assert.equal(metrics.run.status, "done");
      assert.deepEqual(metrics.rounds.map((r: { accepted: number }) => r.accepted), [8, 8, 8]);
      const loss = metrics.rounds.map((r: { summary: { metrics: { loss: number } } }) =>
        r.summary.metrics.loss
      );
      assert.ok(loss[2] < loss[0], `mean training loss should fall over rounds: ${loss}`);
      for (const c of clients) {
        assert.equal(c.adapter!.length, size);
        assert.ok(c.adapter!.every(Number.isFinite));
        const ones = c.mask!.reduce((a, b) => a + b, 0);
        assert.equal(ones, method === "perfit" ? Math.floor(size / 2) : size);
      }
    },
  });
}
