/**
 * /metrics (issue 12): a client sees its own records and every round's aggregates, the admin sees
 * all; the rounds come in bounded pages with a `next` cursor.
 */
import assert from "node:assert/strict";
import { ADMIN, appFetch, createRun, fakeTrainer, makeApp, runBody } from "./server_helpers.ts";
import { FederatedClient } from "../runtime/client/mod.ts";
import { METRICS_PAGE } from "../server/read_model.ts";
import type { PerfitApp } from "../server/app.ts";

const admin = { authorization: `Bearer ${ADMIN}` };

/** `count` clients run the whole run; returns them. */
async function runAll(app: PerfitApp, run: string, count: number): Promise<FederatedClient[]> {
  const clients = await Promise.all(Array.from({ length: count }, (_, i) =>
    FederatedClient.create({
      serverUrl: "http://t",
      runId: run,
      name: `client-${i}`,
      trainer: fakeTrainer(i),
      fetch: appFetch(() => app),
      sleep: () => new Promise((r) => setTimeout(r, 0)),
      pollMs: 1,
    })));
  for (const c of clients) await c.join();
  await Promise.all(clients.map((c) => c.run({ maxSteps: 5000 })));
  return clients;
}

/** The token a FederatedClient keeps (its stored state). */
function tokenOf(c: FederatedClient): string {
  return (c as unknown as { state: { token: string } }).state.token;
}

// deno-lint-ignore no-explicit-any
async function metrics(app: PerfitApp, run: string, token: string, query = ""): Promise<any> {
  const res = await app.request(`/v1/runs/${run}/metrics${query}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  assert.equal(res.status, 200, await res.clone().text());
  return await res.json();
}

Deno.test("server hardening: /metrics shows a client its own records and the round aggregates; the admin sees every client", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const run = await createRun(app, runBody("perfit", { clientsPerRound: 3, quorum: 3, rounds: 2 }));
  const clients = await runAll(app, run, 3);
  const all = await metrics(app, run, ADMIN);
  assert.equal(all.clients.length, 3);
  assert.deepEqual(all.rounds.map((r: { clients: unknown[] }) => r.clients.length), [3, 3]);
  for (const c of clients) {
    const mine = await metrics(app, run, tokenOf(c));
    assert.deepEqual(
      mine.clients.map((x: { id: string }) => x.id),
      [c.clientId],
      "only its own client record",
    );
    for (const r of mine.rounds) {
      assert.deepEqual(
        r.clients.map((u: { client: string }) => u.client),
        [c.clientId],
        "only its own uploads",
      );
      const full = all.rounds.find((x: { index: number }) => x.index === r.index);
      assert.deepEqual(r.summary, full.summary, "the round's aggregates in full");
      assert.equal(r.accepted, 3);
    }
    const text = JSON.stringify(mine);
    for (const o of clients) {
      if (o !== c) assert.ok(!text.includes(o.clientId!) && !text.includes(`client-${clients.indexOf(o)}`));
    }
  }
  await app.close();
  kv.close();
});

Deno.test("server hardening: /metrics pages its rounds (offset, limit, next) with a bounded default", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const rounds = METRICS_PAGE.default + 3;
  const run = await createRun(app, runBody("fedit", { clientsPerRound: 1, quorum: 1, rounds }));
  await runAll(app, run, 1);
  const first = await metrics(app, run, ADMIN);
  assert.equal(first.rounds.length, METRICS_PAGE.default, "the default page is bounded");
  assert.equal(first.next, METRICS_PAGE.default);
  const rest = await metrics(app, run, ADMIN, `?offset=${first.next}`);
  assert.deepEqual(
    rest.rounds.map((r: { index: number }) => r.index),
    [1, 2, 3].map((i) => METRICS_PAGE.default + i),
  );
  assert.equal(rest.next, null, "the last page has no next");
  // Walking the cursor with a small page visits every round once, in order.
  const seen: number[] = [];
  let offset: number | null = 0;
  while (offset !== null) {
    const page = await metrics(app, run, ADMIN, `?offset=${offset}&limit=5`);
    assert.ok(page.rounds.length <= 5);
    for (const r of page.rounds) {
      seen.push(r.index);
      assert.equal(r.clients.length, 1, `round ${r.index} carries its upload`);
    }
    offset = page.next;
  }
  assert.deepEqual(seen, Array.from({ length: rounds }, (_, i) => i + 1));
  const huge = await metrics(app, run, ADMIN, "?limit=100000");
  assert.equal(huge.limit, METRICS_PAGE.max);
  assert.ok(huge.rounds.length <= METRICS_PAGE.max);
  const past = await metrics(app, run, ADMIN, `?offset=${rounds + 10}`);
  assert.deepEqual([past.rounds, past.next], [[], null]);
  const bad = await app.request(`/v1/runs/${run}/metrics?limit=-1`, { headers: admin });
  assert.equal(bad.status, 400);
  await bad.body?.cancel();
  await app.close();
  kv.close();
});
