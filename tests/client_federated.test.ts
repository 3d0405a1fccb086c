/** FederatedClient: retries with back-off, and resuming after a crash from its saved state. */
import assert from "node:assert/strict";
import { FederatedClient, FederatedClientError, FileStorage, MemoryStorage } from "../runtime/client/mod.ts";
import { appFetch, createRun, fakeTrainer, makeApp, runBody } from "./server_helpers.ts";

/**
 * Sleeps for no time but yields a macrotask: a poll loop that only awaits microtasks and in-memory
 * KV reads can keep the event loop from delivering the server's own commit results, which a real
 * client, polling over the network every `pollMs`, never does.
 */
const yieldTask = () => new Promise<void>((r) => setTimeout(r, 0));

Deno.test("client: network errors, 503 and 429 are retried with exponential back-off; 4xx is not", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const runId = await createRun(app, runBody("perfit", { clientsPerRound: 1, quorum: 1, rounds: 1 }));
  const route = appFetch(() => app);
  const script = ["net", 503, 429, "net"];
  const sleeps: number[] = [];
  const flaky: typeof fetch = (input, init) => {
    const s = script.shift();
    if (s === "net") return Promise.reject(new TypeError("connection refused"));
    if (typeof s === "number") {
      return Promise.resolve(
        new Response(JSON.stringify({ error: { code: "x", message: "busy" } }), { status: s }),
      );
    }
    return route(input, init);
  };
  const c = await FederatedClient.create({
    serverUrl: "http://t",
    runId,
    trainer: fakeTrainer(0),
    fetch: flaky,
    sleep: (ms) => (sleeps.push(ms), yieldTask()),
    retry: { baseMs: 100, maxMs: 1000, attempts: 8 },
  });
  await c.join();
  assert.equal(sleeps.length, 4, "four failures, four back-offs");
  for (let i = 1; i < 4; i++) {
    assert.ok(sleeps[i] >= 0.5 * 100 * 2 ** i && sleeps[i] <= 100 * 2 ** i, `backoff ${i}: ${sleeps[i]}`);
  }
  const out = await c.run({ maxSteps: 50 });
  assert.equal(out.at(-1)!.kind, "done");
  const bad = await FederatedClient.create({
    serverUrl: "http://t",
    runId: "run_missing",
    trainer: fakeTrainer(0),
    fetch: route,
    sleep: () => Promise.resolve(),
  });
  await assert.rejects(() => bad.join(), (e) => e instanceof FederatedClientError && e.status === 404);
  await app.close();
  kv.close();
});

Deno.test("client: a crash after the server accepted resumes from storage and re-sends as a replay", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const runId = await createRun(app, runBody("perfit", { clientsPerRound: 2, quorum: 2, rounds: 2 }));
  const route = appFetch(() => app);
  const dir = await Deno.makeTempDir({ prefix: "perfit-client-" });
  let crash = true;
  const dying: typeof fetch = async (input, init) => {
    const res = await route(input, init);
    if (crash && String(input).endsWith("/update")) throw new Error("process killed"); // not a TypeError: not retried
    return res;
  };
  const calls: number[] = [];
  const opts = { serverUrl: "http://t", runId, sleep: yieldTask, pollMs: 0 };
  const a1 = await FederatedClient.create({
    ...opts,
    trainer: fakeTrainer(0, calls),
    storage: new FileStorage(dir),
    fetch: dying,
    retry: { attempts: 1 },
  });
  await assert.rejects(() => a1.step(), /process killed/);
  crash = false;
  // A new process: same storage, no memory of the first object.
  const a2 = await FederatedClient.create({
    ...opts,
    trainer: fakeTrainer(0, calls),
    storage: new FileStorage(dir),
    fetch: route,
  });
  assert.equal(a2.clientId, a1.clientId);
  const o = await a2.step();
  assert.deepEqual([o.kind, o.round, o.status], ["resumed", 1, "replay"]);
  assert.deepEqual(calls, [1], "the trainer did not run again for round 1");
  const b = await FederatedClient.create({
    ...opts,
    trainer: fakeTrainer(1),
    storage: new MemoryStorage(),
    fetch: route,
  });
  await Promise.all([a2.run({ maxSteps: 500 }), b.run({ maxSteps: 500 })]);
  assert.deepEqual(calls, [1, 2]);
  const m = await (await app.request(`/v1/runs/${runId}/metrics`, {
    headers: { authorization: "Bearer test-admin-token-0123456789" },
  })).json();
  assert.deepEqual(m.rounds.map((r: { accepted: number }) => r.accepted), [2, 2]);
  await app.close();
  kv.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("client: an all-zero or missing initial adapter is refused before anything is trained or sent", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const runId = await createRun(app, runBody("perfit", { clientsPerRound: 1, quorum: 1, rounds: 1 }));
  const route = appFetch(() => app);
  const calls: number[] = [];
  const sent: string[] = [];
  const spy: typeof fetch = (input, init) => {
    if (String(input).includes("/update")) sent.push(String(input));
    return route(input, init);
  };
  const plain = fakeTrainer(0, calls);
  const zeros = await FederatedClient.create({
    serverUrl: "http://t",
    runId,
    trainer: plain,
    initAdapter: (t) => new Float32Array(t.adapterSize),
    fetch: spy,
    sleep: yieldTask,
  });
  await assert.rejects(() => zeros.step(), /all zeros: LoRA then gets no gradient/);
  // A bare trainer function without an `initAdapter` of its own, and no option: refused too.
  const bare = await FederatedClient.create({
    serverUrl: "http://t",
    runId,
    trainer: (task, adapter, mask) => plain(task, adapter, mask),
    fetch: spy,
    sleep: yieldTask,
  });
  await assert.rejects(() => bare.step(), /needs initAdapter/);
  assert.deepEqual(calls, []);
  assert.deepEqual(sent, []);
  await app.close();
  kv.close();
});

Deno.test("client: the token is refreshed before it expires, so a run longer than the token TTL goes on", async () => {
  const kv = await Deno.openKv(":memory:");
  let t = 1_000_000;
  const app = makeApp(kv, { tokenTtlMs: 10_000 }, () => t);
  const runId = await createRun(app, runBody("perfit", { clientsPerRound: 1, quorum: 1, rounds: 3 }));
  const route = appFetch(() => app);
  const refreshes: string[] = [];
  const spy: typeof fetch = (input, init) => {
    if (String(input).endsWith("/token")) refreshes.push(String(input));
    return route(input, init);
  };
  const c = await FederatedClient.create({
    serverUrl: "http://t",
    runId,
    trainer: fakeTrainer(0),
    fetch: spy,
    sleep: yieldTask,
    now: () => t,
  });
  await c.join();
  // A step every 4 s: by the third (12 s) the join's token would have expired; it is traded for a
  // fresh one once past three quarters of its 10 s lifetime (at 8 s and again at 16 s).
  const kinds: string[] = [];
  for (let i = 0; i < 4; i++) {
    t += 4_000;
    // The previous round's close lands after its upload is acknowledged: wait for it, not for time.
    await app.coordinator.settled();
    kinds.push((await c.step()).kind);
  }
  assert.deepEqual(kinds, ["trained", "trained", "trained", "done"]);
  assert.equal(refreshes.length, 2);
  await app.close();
  kv.close();
});

/**
 * A 2-round run with one client (a deterministic fake trainer, and a mix that is not idempotent); the
 * process dies at the state write that follows adapter write `crashAt`, and a new client resumes.
 */
async function runCutShort(method: "perfit" | "perfit-mix", crashAt: number | null) {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const runId = await createRun(app, runBody("perfit", { method, clientsPerRound: 1, quorum: 1, rounds: 2 }));
  const route = appFetch(() => app);
  const inner = new MemoryStorage();
  let writes = 0;
  const storage = {
    get: (k: string) => inner.get(k),
    delete: (k: string) => inner.delete(k),
    set: (k: string, v: Uint8Array) => {
      if (k.startsWith("adapter.")) writes++;
      // The adapter is written, but the process dies before the state that names it.
      else if (k === "state.json" && writes === crashAt) {
        crashAt = null;
        return Promise.reject(new Error("process killed"));
      }
      return inner.set(k, v);
    },
  };
  // Not idempotent on purpose: mixing twice gives another adapter than mixing once.
  const trainer = Object.assign(fakeTrainer(0), {
    mixSlice: (_t: unknown, own: Float32Array, merged: Float32Array) =>
      Promise.resolve(merged.map((v, i) => 0.5 * v + 0.5 * own[i] + 0.25)),
  });
  const opts = { serverUrl: "http://t", runId, sleep: yieldTask, pollMs: 0, fetch: route, storage, trainer };
  let c = await FederatedClient.create(opts);
  let crashed = false;
  try {
    await c.run({ maxSteps: 500 });
  } catch (e) {
    assert.match(String(e), /process killed/);
    crashed = true;
    c = await FederatedClient.create(opts);
    await c.run({ maxSteps: 500 });
  }
  await app.close();
  kv.close();
  return { adapter: Array.from(c.adapter!), crashed };
}

// Adapter writes: 1 merges the initial slice, 2 ends round 1's training, 3 merges round 1's aggregate.
Deno.test("client: a crash between saving a trained adapter and the state that names it redoes the round from its start", async () => {
  const clean = await runCutShort("perfit", null);
  const cut = await runCutShort("perfit", 2);
  assert.ok(cut.crashed, "the crash happened");
  assert.deepEqual(cut.adapter, clean.adapter);
});

Deno.test("client: a mixing method's merge cut short by a crash is redone from the adapter before it", async () => {
  const clean = await runCutShort("perfit-mix", null);
  const cut = await runCutShort("perfit-mix", 3);
  assert.ok(cut.crashed, "the crash happened");
  assert.deepEqual(cut.adapter, clean.adapter);
});
