/** The read model: display reads of the coordinator's records, in order, paged, and tolerant of moved masks. */
import assert from "node:assert/strict";
import { ReadModel } from "../server/read_model.ts";
import { packMask } from "../runtime/client/wire.ts";
import { appFetch, createRun, fakeTrainer, makeApp, runBody } from "./server_helpers.ts";
import { FederatedClient } from "../runtime/client/mod.ts";
import { K } from "../server/records.ts";
import { deleteChunks } from "../server/kv_chunks.ts";

Deno.test("read model: rounds, clients, uploads and latest masks of a finished run; a missing mask reads as none", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const run = await createRun(app, runBody("perfit", { clientsPerRound: 3, quorum: 3, rounds: 2 }));
  const clients = await Promise.all([0, 1, 2].map((i) =>
    FederatedClient.create({
      serverUrl: "http://t",
      runId: run,
      trainer: fakeTrainer(i),
      fetch: appFetch(() => app),
      sleep: () => new Promise((r) => setTimeout(r, 0)),
    })
  ));
  for (const c of clients) await c.join(); // join order = seq order
  await Promise.all(clients.map((c) => c.run()));
  const reads = new ReadModel(kv);
  const [rec] = await reads.runs();
  assert.equal(rec.id, run);
  assert.deepEqual((await reads.rounds(run)).map((r) => [r.index, r.status, r.accepted]), [[1, "closed", 3], [
    2,
    "closed",
    3,
  ]]);
  const all = await reads.clients(run);
  assert.deepEqual(all.map((c) => c.id), clients.map((c) => c.clientId));
  const page = await reads.clients(run, 1, 1);
  assert.equal(page.length, 1);
  assert.ok(all.some((c) => c.id === page[0].id));
  assert.equal((await reads.uploads(run)).length, 6);
  for (const c of clients) {
    const m = await reads.latestMask(rec, c.clientId!);
    assert.deepEqual(m?.bits, packMask(c.mask!), "the latest mask is the client's own");
  }
  const metrics = await reads.metrics(rec);
  assert.deepEqual(metrics.rounds.map((r) => r.clients.length), [3, 3]);
  assert.equal(metrics.clients.length, 3);
  // A mask a round close has dropped (its pointer moved on) reads as none, not as an error.
  const first = clients[0].clientId!;
  const round = (await reads.lastMaskRound(run, first))!;
  await deleteChunks(kv, K.mask(run, first, round), packMask(clients[0].mask!).byteLength);
  assert.equal(await reads.latestMask(rec, first), null);
  await app.close();
  kv.close();
});
