/**
 * The admin's end of a run over the in-process Hono app: cancel (no joins, tasks, uploads or closes
 * after it, on this instance, on another one holding the run, and after a restart), delete (every key
 * of the run and nothing else), and the global adapter download (its values are the aggregate).
 */
import assert from "node:assert/strict";
import {
  ADMIN,
  appFetch,
  createRun,
  dumpKv,
  fakeMask,
  fakeTrainer,
  makeApp,
  runBody,
} from "./server_helpers.ts";
import { FederatedClient, FederatedClientError } from "../runtime/client/mod.ts";
import { join, type Joined, JSON_HEADERS, updateBody, upload } from "./server_hardening_util.ts";
import type { PerfitApp } from "../server/app.ts";
import { ReadModel } from "../server/read_model.ts";
import { kvDashboardSource } from "../server/ui/dashboard_data.ts";
import { K, type LiveRecord, runFamilies } from "../server/records.ts";
import { markDeleting } from "../server/run_life.ts";
import { decodeGlobalAdapter } from "../runtime/client/global_adapter.ts";
import { encodeUpdate, unpackMask } from "../runtime/client/wire.ts";

const ADMIN_AUTH = { authorization: `Bearer ${ADMIN}` };

async function call(
  app: PerfitApp,
  method: string,
  path: string,
  headers: Record<string, string> = ADMIN_AUTH,
  body?: string,
): Promise<{ status: number; code?: string; json?: Record<string, unknown>; bytes?: Uint8Array }> {
  const res = await app.request(path, { method, headers, body });
  if ((res.headers.get("content-type") ?? "").includes("octet-stream")) {
    return { status: res.status, bytes: new Uint8Array(await res.arrayBuffer()) };
  }
  const text = await res.text();
  const json = text ? JSON.parse(text) : undefined;
  return { status: res.status, code: json?.error?.code, json };
}

const task = (app: PerfitApp, c: Joined) =>
  call(app, "GET", `/v1/runs/${c.run}/clients/${c.id}/task`, { authorization: `Bearer ${c.token}` });

/** Posts an upload; retries while the coordinator says retry (503), at most `tries` times. */
async function uploadStatus(app: PerfitApp, c: Joined, round: number, idx: number, tries = 1) {
  for (let i = 0;; i++) {
    const res = await upload((p, init) => app.request(p, init), c, updateBody(c.run, round, idx), round);
    const code = res.status >= 400 ? (await res.json()).error.code : undefined;
    if (res.status !== 503 || i + 1 >= tries) return { status: res.status, code };
  }
}

Deno.test("admin lifecycle: cancel refuses later joins, tasks and uploads with 409, stops closes, and reads still answer", async () => {
  const kv = await Deno.openKv(":memory:");
  let t = 1_000_000;
  const app = makeApp(kv, {}, () => t);
  try {
    const run = await createRun(app, runBody("perfit", { clientsPerRound: 2, quorum: 2, rounds: 3 }));
    const [a, b, c] = [await join(app, run), await join(app, run), await join(app, run)];
    assert.equal((await uploadStatus(app, a, 1, 0)).status, 201);
    assert.equal((await uploadStatus(app, b, 1, 1)).status, 201);
    await app.coordinator.settled();
    assert.equal((await uploadStatus(app, a, 2, 0)).status, 201, "round 2 is open");

    const cancelled = await call(app, "POST", `/v1/runs/${run}/cancel`);
    assert.equal(cancelled.status, 200, JSON.stringify(cancelled.json));
    const rec = cancelled.json!.run as { status: string; round: number; cancelledAt: number };
    assert.equal(rec.status, "cancelled");
    assert.equal(rec.round, 2);
    assert.equal(rec.cancelledAt, t);
    // Reload the run once (its load sweep runs then), so that the snapshot below is what stays.
    assert.equal((await call(app, "GET", `/v1/runs/${run}`)).json!.round, null);
    await app.coordinator.settled();
    const before = await dumpKv(kv);

    assert.deepEqual(await uploadStatus(app, b, 2, 1), { status: 409, code: "run_cancelled" });
    assert.deepEqual(
      await uploadStatus(app, a, 2, 0),
      { status: 409, code: "run_cancelled" },
      "a replay too",
    );
    const tk = await task(app, c);
    assert.equal(tk.status, 409);
    assert.equal(tk.code, "run_cancelled");
    const j = await call(app, "POST", `/v1/runs/${run}/join`, JSON_HEADERS, "{}");
    assert.deepEqual([j.status, j.code], [409, "run_cancelled"]);
    const again = await call(app, "POST", `/v1/runs/${run}/cancel`);
    assert.deepEqual([again.status, again.code], [409, "run_cancelled"]);
    // Past the deadline: the round of the cancel does not close, and no round opens.
    t += 3_600_000;
    await app.coordinator.tick();
    await call(app, "GET", `/v1/runs/${run}`);
    await app.coordinator.settled();
    assert.deepEqual(await dumpKv(kv), before, "refusals and ticks changed nothing");

    const m = await call(app, "GET", `/v1/runs/${run}/metrics`);
    assert.equal(m.status, 200);
    const metrics = m.json as {
      run: { status: string; round: number; globalRound: number };
      rounds: { index: number; status: string; accepted: number; summary: unknown }[];
    };
    assert.deepEqual(
      [metrics.run.status, metrics.run.round, metrics.run.globalRound],
      ["cancelled", 2, 1],
    );
    assert.deepEqual(
      metrics.rounds.map((r) => [r.index, r.status, r.accepted, r.summary === null]),
      [[1, "closed", 2, false], [2, "closed", 1, true]],
      "round 2 closed by the cancel, with no summary: nothing of it was aggregated",
    );
    const dash = await kvDashboardSource(new ReadModel(kv))();
    const info = dash.runs.find((r) => r.id === run)!;
    assert.equal(info.state, "cancelled");
    assert.deepEqual(info.rounds.map((r) => r.state), ["closed", "cancelled"]);
    // The adapter of round 1 and a client's slice are still served.
    const g = await call(app, "GET", `/v1/runs/${run}/adapter`);
    assert.equal(g.status, 200);
    const body = decodeGlobalAdapter(g.bytes!);
    assert.deepEqual([body.round, body.status], [1, "cancelled"]);
    const slice = await call(app, "GET", `/v1/runs/${run}/clients/${a.id}/slice`, {
      authorization: `Bearer ${a.token}`,
    });
    assert.equal(slice.status, 200);
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("admin lifecycle: a done run is not cancelled (409); unknown, __proto__ and malformed ids, forged or missing tokens: nothing changes", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await createRun(app, runBody("perfit", { clientsPerRound: 1, quorum: 1, rounds: 1 }));
    const a = await join(app, run);
    assert.equal((await uploadStatus(app, a, 1, 0)).status, 201);
    await app.coordinator.settled();
    assert.equal(
      ((await call(app, "GET", `/v1/runs/${run}`)).json!.run as { status: string }).status,
      "done",
    );
    const before = await dumpKv(kv);
    const done = await call(app, "POST", `/v1/runs/${run}/cancel`);
    assert.deepEqual([done.status, done.code], [409, "run_done"]);
    const routes = (id: string): [string, string][] => [
      ["POST", `/v1/runs/${id}/cancel`],
      ["DELETE", `/v1/runs/${id}`],
      ["GET", `/v1/runs/${id}/adapter`],
    ];
    for (const id of ["run_nope", "__proto__", "constructor", "toString"]) {
      for (const [method, path] of routes(id)) {
        const r = await call(app, method, path);
        assert.deepEqual([r.status, r.code], [404, "not_found"], `${method} ${path}`);
      }
    }
    for (const id of ["bad.id", "a%20b", "x".repeat(65)]) {
      for (const [method, path] of routes(id)) {
        const r = await call(app, method, path);
        assert.deepEqual([r.status, r.code], [400, "bad_parameter"], `${method} ${path}`);
      }
    }
    for (
      const headers of [
        {},
        { authorization: "Bearer not-the-admin-token" },
        { authorization: `Bearer ${a.token}` },
        { authorization: ADMIN },
      ] as Record<string, string>[]
    ) {
      for (const [method, path] of routes(run)) {
        const r = await call(app, method, path, headers);
        assert.equal(r.status, 401, `${method} ${path} with ${JSON.stringify(headers)}`);
      }
    }
    await app.coordinator.settled();
    assert.deepEqual(await dumpKv(kv), before);
    // The done run's adapter still downloads; a method that aggregates nothing has none.
    assert.equal((await call(app, "GET", `/v1/runs/${run}/adapter`)).status, 200);
    const local = await createRun(app, runBody("local"));
    const none = await call(app, "GET", `/v1/runs/${local}/adapter`);
    assert.deepEqual([none.status, none.code], [409, "no_global_adapter"]);
  } finally {
    await app.close();
    kv.close();
  }
});

/** Every key part that names one of `ids`, anywhere in the key. */
function keysOf(dump: string[], ids: string[]): string[] {
  return dump.filter((line) => ids.some((id) => line.slice(0, line.indexOf("=")).includes(`"${id}"`)));
}

Deno.test("admin lifecycle: delete removes every key of the run and nothing else; then the run is 404 everywhere", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const keep = await createRun(app, runBody("perfit", { clientsPerRound: 2, quorum: 2 }));
    const k1 = await join(app, keep);
    assert.equal((await uploadStatus(app, k1, 1, 0)).status, 201);
    // Two doomed runs between them have a key of every family: a join key and held values (median),
    // invites and a streaming sum (mean); rounds, a global adapter, masks, uploads, a revocation.
    const keyed = await createRun(
      app,
      runBody("perfit", {
        clientsPerRound: 2,
        quorum: 2,
        aggregation: "median",
        enrollment: "key",
        joinKey: "k".repeat(16),
      }),
    );
    const joinKeyed = async () => {
      const r = await app.request(`/v1/runs/${keyed}/join`, {
        method: "POST",
        headers: JSON_HEADERS,
        body: JSON.stringify({ key: "k".repeat(16) }),
      });
      const j = await r.json();
      return { run: keyed, id: j.clientId, token: j.token } as Joined;
    };
    const [x, y] = [await joinKeyed(), await joinKeyed()];
    assert.equal((await uploadStatus(app, x, 1, 0)).status, 201);
    assert.equal((await uploadStatus(app, y, 1, 1)).status, 201);
    await app.coordinator.settled();
    assert.equal((await uploadStatus(app, x, 2, 2)).status, 201, "a new mask in round 2, held");
    assert.equal((await call(app, "DELETE", `/v1/runs/${keyed}/clients/${y.id}/token`)).status, 200);
    const invited = await createRun(
      app,
      runBody("perfit", { clientsPerRound: 2, quorum: 2, enrollment: "invite" }),
    );
    const inv = await call(
      app,
      "POST",
      `/v1/runs/${invited}/invites`,
      { ...ADMIN_AUTH, ...JSON_HEADERS },
      '{"count":2}',
    );
    const r = await app.request(`/v1/runs/${invited}/join`, {
      method: "POST",
      headers: JSON_HEADERS,
      body: JSON.stringify({ invite: (inv.json!.invites as string[])[0] }),
    });
    const zj = await r.json();
    const z: Joined = { run: invited, id: zj.clientId, token: zj.token };
    assert.equal((await uploadStatus(app, z, 1, 3)).status, 201);
    await app.coordinator.settled();

    const before = await dumpKv(kv);
    const doomed = keysOf(before, [keyed, invited]);
    const families = new Set(doomed.map((l) => JSON.parse(l.slice(0, l.indexOf("=")))[0]));
    const expected = runFamilies(keyed);
    for (const k of [...expected.keys, ...expected.prefixes]) {
      assert.ok(
        families.has(k[0]),
        `the doomed runs have a ${String(k[0])} key (families seen: ${[...families]})`,
      );
    }
    const others = before.filter((l) => !doomed.includes(l));
    assert.ok(keysOf(others, [keep]).length > 0, "the kept run has keys");

    for (const id of [keyed, invited]) {
      const d = await call(app, "DELETE", `/v1/runs/${id}`);
      assert.equal(d.status, 200, JSON.stringify(d.json));
      assert.deepEqual(d.json, { run: id, deleted: true });
    }
    await app.coordinator.settled();
    const after = await dumpKv(kv);
    assert.deepEqual(keysOf(after, [keyed, invited]), [], "no key of a deleted run is left");
    assert.deepEqual(after, others, "every other key is as it was");

    // 404 everywhere; a deleted run's client token no longer works; nothing is written back.
    for (
      const [method, path, headers] of [
        ["DELETE", `/v1/runs/${keyed}`, ADMIN_AUTH],
        ["GET", `/v1/runs/${keyed}`, ADMIN_AUTH],
        ["GET", `/v1/runs/${keyed}/metrics`, ADMIN_AUTH],
        ["GET", `/v1/runs/${keyed}/masks`, ADMIN_AUTH],
        ["GET", `/v1/runs/${keyed}/adapter`, ADMIN_AUTH],
        ["POST", `/v1/runs/${keyed}/cancel`, ADMIN_AUTH],
        ["GET", `/v1/runs/${keyed}/join`, {}],
        ["POST", `/v1/runs/${invited}/invites`, { ...ADMIN_AUTH, ...JSON_HEADERS }],
        ["POST", `/v1/runs/${keyed}/clients/${x.id}/token`, ADMIN_AUTH],
        ["DELETE", `/v1/runs/${keyed}/clients/${x.id}/token`, ADMIN_AUTH],
      ] as [string, string, Record<string, string>][]
    ) {
      const res = await call(
        app,
        method,
        path,
        headers,
        method === "POST" && path.endsWith("invites") ? "{}" : undefined,
      );
      assert.equal(res.status, 404, `${method} ${path}: ${JSON.stringify(res.json)}`);
    }
    const j = await app.request(`/v1/runs/${keyed}/join`, {
      method: "POST",
      headers: JSON_HEADERS,
      body: JSON.stringify({ key: "k".repeat(16) }),
    });
    assert.equal(j.status, 404);
    for (const p of ["task", "slice", "token"]) {
      const res = await call(app, p === "token" ? "POST" : "GET", `/v1/runs/${keyed}/clients/${x.id}/${p}`, {
        authorization: `Bearer ${x.token}`,
      });
      // The client record may still be cached (404: no run) or not (401: not registered).
      assert.ok(res.status === 404 || res.status === 401, `${p}: ${res.status}`);
    }
    assert.equal(
      (await upload((p, init) => app.request(p, init), x, updateBody(keyed, 2, 1), 2)).status,
      404,
    );
    const list = await call(app, "GET", "/v1/runs");
    assert.deepEqual((list.json!.runs as { id: string }[]).map((r) => r.id), [keep]);
    await app.coordinator.settled();
    assert.deepEqual(await dumpKv(kv), others, "the 404s wrote nothing");
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("admin lifecycle: a delete cut short after its first step refuses every write of the run (404, nothing written); repeated, it leaves nothing", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await createRun(
      app,
      runBody("perfit", { clientsPerRound: 3, quorum: 3, enrollment: "invite" }),
    );
    const issue = () =>
      call(app, "POST", `/v1/runs/${run}/invites`, { ...ADMIN_AUTH, ...JSON_HEADERS }, '{"count":2}');
    const [i1, i2] = (await issue()).json!.invites as string[];
    const joinWith = async (invite: string): Promise<Joined> => {
      const r = await app.request(`/v1/runs/${run}/join`, {
        method: "POST",
        headers: JSON_HEADERS,
        body: JSON.stringify({ invite }),
      });
      const j = await r.json();
      return { run, id: j.clientId, token: j.token };
    };
    const [x, y] = [await joinWith(i1), await joinWith(i2)];
    assert.equal((await uploadStatus(app, x, 1, 0)).status, 201, "the app holds the run's state");
    await app.coordinator.settled();
    // The delete's first step (its own commit), then a crash: the run's records are all still there.
    await markDeleting(kv, run, Date.now());
    const before = await dumpKv(kv);
    assert.ok(keysOf(before, [run]).some((l) => l.startsWith(`["upload","${run}"`)));
    assert.deepEqual(await uploadStatus(app, y, 1, 1), { status: 404, code: "not_found" });
    assert.equal((await issue()).status, 404);
    assert.equal((await call(app, "DELETE", `/v1/runs/${run}/clients/${x.id}/token`)).status, 404);
    assert.equal((await task(app, x)).status, 404);
    assert.equal((await call(app, "GET", `/v1/runs/${run}`)).status, 404);
    const listed = (await call(app, "GET", "/v1/runs", ADMIN_AUTH)).json!.runs as { id: string }[];
    assert.ok(!listed.some((r) => r.id === run), "a run being deleted is not listed");
    await app.coordinator.settled();
    assert.deepEqual(await dumpKv(kv), before, "the refused writes wrote nothing");
    assert.equal((await call(app, "DELETE", `/v1/runs/${run}`)).status, 200);
    await app.coordinator.settled();
    assert.deepEqual(keysOf(await dumpKv(kv), [run]), [], "no key of the run is left");
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("admin lifecycle: runs from before the live key load, take joins, uploads and revocations, and their delete leaves nothing", async () => {
  const kv = await Deno.openKv(":memory:");
  const old = makeApp(kv);
  const used = await createRun(old, runBody("perfit", { clientsPerRound: 2, quorum: 2 }));
  const idle = await createRun(old, runBody("perfit", { clientsPerRound: 2, quorum: 2 }));
  await old.close();
  // What a coordinator from before the key left: the same records, no live key.
  for (const id of [used, idle]) await kv.delete(K.live(id));
  const app = makeApp(kv);
  try {
    const [p, q] = [await join(app, used), await join(app, used)];
    assert.equal((await uploadStatus(app, p, 1, 0)).status, 201);
    assert.equal((await uploadStatus(app, q, 1, 1)).status, 201);
    await app.coordinator.settled();
    const round = (await call(app, "GET", `/v1/runs/${used}`)).json!.run as { round: number };
    assert.equal(round.round, 2, "round 1 closed");
    assert.deepEqual((await kv.get<LiveRecord>(K.live(used))).value, { deleting: null }, "written on load");
    assert.equal((await call(app, "DELETE", `/v1/runs/${used}/clients/${q.id}/token`)).status, 200);
    assert.equal((await kv.get(K.live(idle))).value, null, "a run nothing loaded has none yet");
    for (const id of [used, idle]) assert.equal((await call(app, "DELETE", `/v1/runs/${id}`)).status, 200);
    await app.coordinator.settled();
    assert.deepEqual(keysOf(await dumpKv(kv), [used, idle]), [], "no key of the runs is left");
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("admin lifecycle: a cancel holds across a restart and for another instance that holds the run", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-admin-" });
  const path = `${dir}/kv`;
  let t = 1_000_000;
  const now = () => t;
  const kvA = await Deno.openKv(path);
  const kvB = await Deno.openKv(path);
  const a = makeApp(kvA, {}, now);
  const b = makeApp(kvB, {}, now);
  let c: PerfitApp | null = null;
  let kvC: Deno.Kv | null = null;
  let aOpen = true;
  try {
    const run = await createRun(a, runBody("perfit", { clientsPerRound: 3, quorum: 3 }));
    const [p, q] = [await join(a, run), await join(a, run)];
    // B holds the run (an accepted upload of its own) when A cancels it.
    assert.equal((await uploadStatus(b, p, 1, 0)).status, 201);
    assert.ok(b.coordinator.loadedRuns().includes(run));
    assert.equal((await call(a, "POST", `/v1/runs/${run}/cancel`)).status, 200);
    // B's copy is stale: its commit fails (503, retry), and the retry finds the run cancelled.
    // (Two handles on one SQLite file may also answer 503 "database is locked": retried alike.)
    assert.deepEqual(await uploadStatus(b, q, 1, 1, 10), { status: 409, code: "run_cancelled" });
    assert.deepEqual([(await task(b, p)).code, (await task(b, q)).code], ["run_cancelled", "run_cancelled"]);
    const j = await call(b, "POST", `/v1/runs/${run}/join`, JSON_HEADERS, "{}");
    assert.equal(j.code, "run_cancelled");
    t += 3_600_000;
    await b.coordinator.tick();
    await a.coordinator.settled();
    await b.coordinator.settled();
    const m = await call(b, "GET", `/v1/runs/${run}/metrics`);
    const metrics = m.json as { run: { status: string }; rounds: { accepted: number; status: string }[] };
    assert.equal(metrics.run.status, "cancelled");
    assert.deepEqual(metrics.rounds.map((r) => [r.status, r.accepted]), [["closed", 1]]);
    // What B's failed commit wrote (its sum slot, q's mask) was swept when B reloaded the cancelled run.
    const dump = await dumpKv(kvA);
    assert.deepEqual(dump.filter((l) => l.startsWith(`["acc","${run}"`)), []);
    assert.deepEqual(dump.filter((l) => l.startsWith(`["mask","${run}","${q.id}"`)), []);
    assert.ok(dump.some((l) => l.startsWith(`["mask","${run}","${p.id}",1,`)), "p's accepted mask is kept");

    // A restart: a fresh app on the same KV file.
    await a.close();
    kvA.close();
    aOpen = false;
    kvC = await Deno.openKv(path);
    c = makeApp(kvC, {}, now);
    assert.equal(
      ((await call(c, "GET", `/v1/runs/${run}`)).json!.run as { status: string }).status,
      "cancelled",
    );
    assert.deepEqual(await uploadStatus(c, q, 1, 1), { status: 409, code: "run_cancelled" });
    assert.equal((await task(c, q)).code, "run_cancelled");
    assert.equal((await call(c, "POST", `/v1/runs/${run}/cancel`)).code, "run_cancelled");
  } finally {
    await c?.close();
    kvC?.close();
    await b.close();
    kvB.close();
    if (aOpen) {
      await a.close();
      kvA.close();
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("admin lifecycle: the global adapter is the aggregate of the closed rounds, with its coverage", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await createRun(app, runBody("perfit", { clientsPerRound: 2, quorum: 2 }));
    const first = decodeGlobalAdapter((await call(app, "GET", `/v1/runs/${run}/adapter`)).bytes!);
    assert.deepEqual([first.round, first.status, first.rank, first.adapterSize], [0, "active", 8, 1000]);
    assert.ok(first.values.every((v) => v === 0) && first.covered.every((w) => w === 0));
    const clients = [await join(app, run), await join(app, run)];
    const masks = [fakeMask(0, 1000, 300, false), fakeMask(1, 1000, 300, false)];
    const fills = [0.02, 0.05];
    const samples = [3, 1];
    for (const [i, c] of clients.entries()) {
      const values = new Float32Array(1000).fill(fills[i]);
      const body = encodeUpdate({ run, round: 1, samples: samples[i], values, mask: masks[i], metrics: {} });
      assert.equal((await upload((p, init) => app.request(p, init), c, body, 1)).status, 201);
    }
    await app.coordinator.settled();
    const g = decodeGlobalAdapter((await call(app, "GET", `/v1/runs/${run}/adapter`)).bytes!);
    assert.deepEqual([g.run, g.round, g.method, g.rank, g.model], [run, 1, "perfit", 8, null]);
    const covered = unpackMask(g.covered, 1000);
    for (let p = 0; p < 1000; p++) {
      const w = masks.map((m, i) => m[p] * samples[i]);
      const want = w[0] + w[1] === 0 ? 0 : Math.fround((w[0] * fills[0] + w[1] * fills[1]) / (w[0] + w[1]));
      assert.equal(covered[p], w[0] + w[1] > 0 ? 1 : 0, `covered at ${p}`);
      assert.ok(Math.abs(g.values[p] - want) < 1e-7, `value at ${p}: ${g.values[p]} vs ${want}`);
    }
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("admin lifecycle: a FederatedClient of a cancelled run stops with run_cancelled instead of retrying", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await createRun(app, runBody("perfit", { clientsPerRound: 2, quorum: 2 }));
    const client = await FederatedClient.create({
      serverUrl: "http://x",
      runId: run,
      fetch: appFetch(() => app),
      trainer: fakeTrainer(0),
      sleep: () => Promise.resolve(),
      pollMs: 1,
    });
    assert.equal((await client.step()).kind, "trained");
    assert.equal((await call(app, "POST", `/v1/runs/${run}/cancel`)).status, 200);
    await assert.rejects(
      () => client.run({ maxSteps: 50 }),
      (e) => e instanceof FederatedClientError && e.status === 409 && e.code === "run_cancelled",
    );
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("admin lifecycle: uploads racing a cancel are each accepted and counted, or refused and not", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await createRun(app, runBody("perfit", { clientsPerRound: 17, quorum: 17 }));
    const clients = await Promise.all(Array.from({ length: 16 }, () => join(app, run)));
    // Half start before the cancel (which comes once some of them wait for their commit), half right
    // after it; none waits for another.
    let settled = 0;
    const early = clients.slice(0, 8).map((c, i) => uploadStatus(app, c, 1, i, 5).finally(() => settled++));
    while (app.coordinator.inFlight(run) === 0 && settled < 8) await new Promise((r) => setTimeout(r, 0));
    const cancel = call(app, "POST", `/v1/runs/${run}/cancel`);
    const late = clients.slice(8).map((c, i) => uploadStatus(app, c, 1, 8 + i, 5));
    assert.equal((await cancel).status, 200);
    const got = await Promise.all([...early, ...late]);
    for (const g of got) assert.ok(g.status === 201 || g.code === "run_cancelled", JSON.stringify(g));
    await app.coordinator.settled();
    const m = (await call(app, "GET", `/v1/runs/${run}/metrics`)).json as {
      rounds: { accepted: number; status: string; clients: { client: string }[] }[];
    };
    const accepted = new Set(got.flatMap((g, i) => (g.status === 201 ? [clients[i].id] : [])));
    assert.equal(m.rounds[0].status, "closed");
    assert.equal(m.rounds[0].accepted, accepted.size, "the round counts exactly the accepted uploads");
    assert.deepEqual(new Set(m.rounds[0].clients.map((u) => u.client)), accepted);
    console.log(`racing a cancel: ${accepted.size} of 16 uploads accepted, the rest refused`);
  } finally {
    await app.close();
    kv.close();
  }
});
