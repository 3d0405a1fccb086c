/** End to end on loopback: a real HTTP server and 8 FederatedClients finish 3 rounds of each method. */
import assert from "node:assert/strict";
import {
  assertMatchesReference,
  createRun,
  fakeClients,
  makeApp,
  maxDiff,
  runBody,
  runMetrics,
} from "./server_helpers.ts";

async function federate(method: "perfit" | "fedit" | "local", foldWorker: boolean) {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv, { foldWorker });
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen: () => {} }, app.fetch);
  const url = `http://127.0.0.1:${server.addr.port}`;
  try {
    const runId = await createRun(app, runBody(method));
    const clients = await fakeClients((i) => ({ serverUrl: url, runId, pollMs: 2, name: `c${i}` }));
    // Concurrent joins: their order is irrelevant, masks are keyed by trainer index.
    await Promise.all(clients.map((c) => c.join()));
    const outcomes = await Promise.all(clients.map((c) => c.run({ maxSteps: 2000 })));
    const metrics = await runMetrics((path, init) => fetch(url + path, init), runId);
    // Masks are stored once per client: later rounds upload the same mask and only reference it.
    const maskRounds = new Set<string>();
    for await (const e of kv.list({ prefix: ["mask", runId] })) {
      maskRounds.add(`${String(e.key[2])}/${String(e.key[3])}`);
    }
    return { clients, outcomes, metrics, runId, maskRounds: [...maskRounds] };
  } finally {
    await server.shutdown();
    await app.close();
    kv.close();
  }
}

const cases = [
  ["perfit", false],
  ["fedit", false],
  ["local", false],
  ["perfit", true],
  ["fedit", true],
] as const;
for (const [method, foldWorker] of cases) {
  const where = foldWorker ? " (folds on a worker thread)" : "";
  Deno.test(`server e2e: 8 clients finish 3 ${method} rounds over loopback and match the reference federation${where}`, async () => {
    const { clients, outcomes, metrics, maskRounds } = await federate(method, foldWorker);
    assert.equal(maskRounds.length, method === "fedit" ? 0 : 8, `stored masks: ${maskRounds}`);
    assert.ok(maskRounds.every((k) => k.endsWith("/1")));
    for (let i = 0; i < 8; i++) {
      const trained = outcomes[i].filter((o) => o.kind === "trained");
      assert.deepEqual(trained.map((o) => o.round), [1, 2, 3], `client ${i} trained each round once`);
      assert.ok(trained.every((o) => o.status === "accepted"));
      assert.equal(outcomes[i].at(-1)!.kind, "done");
    }
    assertMatchesReference(method, clients);
    assert.equal(metrics.run.status, "done");
    assert.equal(metrics.rounds.length, 3);
    for (const r of metrics.rounds) {
      assert.equal(r.status, "closed");
      assert.equal(r.accepted, 8);
      assert.equal(r.clients.length, 8);
      assert.equal(r.samples, 8 * 5 + 28);
      assert.ok(Number.isFinite(r.summary.metrics.loss));
    }
    // Personalization actually differs between clients (PerFIT/local) or is shared (FedIT).
    const same = maxDiff(clients[0].adapter!, clients[1].adapter!) < 1e-7;
    assert.equal(same, method === "fedit");
  });
}
