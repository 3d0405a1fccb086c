/**
 * Durability: the KV is closed under in-flight uploads (a crash, not a graceful stop), a new app is
 * built on the reopened file, and the run finishes with every accepted upload counted exactly once.
 */
import assert from "node:assert/strict";
import type { FederatedClient } from "../runtime/client/mod.ts";
import type { PerfitApp } from "../server/app.ts";
import {
  ADMIN,
  appFetch,
  assertMatchesReference,
  createRun,
  dumpKv,
  fakeClients,
  makeApp,
  runBody,
  runMetrics,
} from "./server_helpers.ts";

const URL_ = "http://perfit.test";

Deno.test("server restart: crash mid-round, reopen the KV file, the run finishes with no upload lost or double-counted", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-restart-" });
  const path = `${dir}/perfit.kv`;
  let kv = await Deno.openKv(path);
  let app: PerfitApp = makeApp(kv);
  const route = appFetch(() => app);
  const bodies = new Map<string, Uint8Array>(); // "client/round" -> upload body as sent
  let dropNextAckOf: string | null = null;
  const fetchVia: typeof fetch = async (input, init) => {
    const url = String(input);
    const m = /clients\/([^/]+)\/rounds\/(\d+)\/update$/.exec(url);
    if (m) bodies.set(`${m[1]}/${m[2]}`, new Uint8Array(init!.body as Uint8Array));
    const res = await route(input, init);
    if (m && dropNextAckOf === m[1]) {
      dropNextAckOf = null;
      throw new TypeError("connection reset after the server accepted"); // the ack never arrives
    }
    return res;
  };
  try {
    const runId = await createRun(app, runBody("perfit"));
    const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.min(ms, 25)));
    const clients = await fakeClients(() => ({
      serverUrl: URL_,
      runId,
      fetch: fetchVia,
      sleep,
      pollMs: 1,
      retry: { attempts: 12, baseMs: 5, maxMs: 40 },
    }));
    for (const c of clients) await c.join();

    const r1 = await Promise.all(clients.map((c) => c.step()));
    assert.ok(r1.every((o) => o.kind === "trained" && o.round === 1 && o.status === "accepted"));

    // Round 2: four clients upload normally.
    for (const i of [0, 1, 2, 3]) assert.equal((await untilUpload(clients[i])).status, "accepted");
    // Client 4's upload is accepted but its ack is lost: the client re-sends, the server says replay.
    dropNextAckOf = clients[4].clientId;
    const o4 = await untilUpload(clients[4]);
    assert.deepEqual([o4.kind, o4.round, o4.status], ["trained", 2, "replay"]);

    // Crash: clients 5 and 6 are mid-request when the store goes away; no graceful drain.
    const inFlight = [untilUpload(clients[5]), untilUpload(clients[6])];
    await new Promise((r) => setTimeout(r, 0));
    kv.close();
    kv = await Deno.openKv(path);
    app = makeApp(kv);
    const o56 = await Promise.all(inFlight);
    for (const o of o56) {
      assert.equal(o.round, 2);
      assert.ok(o.status === "accepted" || o.status === "replay", `in-flight upload ended as ${o.status}`);
    }
    // The new server knows the 7 round-2 uploads and their sum; a replay of an early one changes nothing.
    await app.coordinator.settled();
    const before = await dumpKv(kv);
    const replay = await app.request(`/v1/runs/${runId}/clients/${clients[0].clientId}/rounds/2/update`, {
      method: "POST",
      headers: { authorization: `Bearer ${(await clientToken(clients[0]))}` },
      body: bodies.get(`${clients[0].clientId}/2`)! as Uint8Array<ArrayBuffer>,
    });
    assert.equal(replay.status, 200);
    assert.equal((await replay.json()).status, "replay");
    await app.coordinator.settled();
    assert.deepEqual(await dumpKv(kv), before);
    const mid =
      await (await app.request(`/v1/runs/${runId}`, { headers: { authorization: `Bearer ${ADMIN}` } }))
        .json();
    assert.equal(mid.round.index, 2);
    assert.equal(mid.round.accepted, 7);

    await Promise.all(clients.map((c) => c.run({ maxSteps: 3000 })));
    assertMatchesReference("perfit", clients);
    const metrics = await runMetrics((path, init) => app.request(path, init), runId);
    assert.equal(metrics.run.status, "done");
    for (const r of metrics.rounds) {
      assert.equal(r.accepted, 8, `round ${r.index} accepted ${r.accepted}`);
      assert.equal(r.clients.length, 8);
      assert.equal(r.samples, 68);
    }
  } finally {
    await app.close();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** Steps until the client uploaded something (the previous round may still be closing). */
async function untilUpload(c: FederatedClient) {
  for (;;) {
    const o = await c.step();
    if (o.kind === "trained" || o.kind === "resumed") return o;
    if (o.kind === "done") throw new Error("run ended early");
  }
}

/** Reads the token a client saved (tests only: the storage is the default MemoryStorage). */
async function clientToken(c: FederatedClient): Promise<string> {
  // deno-lint-ignore no-explicit-any
  const raw = await (c as any).storage.get("state.json");
  return JSON.parse(new TextDecoder().decode(raw)).token;
}
