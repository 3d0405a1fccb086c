/**
 * Regression tests for the coordinator bugs of issue 12: a run jammed by what clients report, a
 * round left open by a crash right after its last upload, and client strings that named
 * Object.prototype's members.
 */
import assert from "node:assert/strict";
import { Coordinator, RetryableError, summarize } from "../server/coordinator.ts";
import { InlineFolder } from "../server/folder.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { K, type RoundRecord, type UploadRecord } from "../server/records.ts";
import { strategyFor, weightedMetrics } from "../runtime/federation/strategies.ts";
import { type DecodedUpdate, encodeUpdate, packMask, popcountBits } from "../runtime/client/wire.ts";
import { ADMIN, createRun, dumpKv, fakeMask, isApiError, makeApp, runBody } from "./server_helpers.ts";
import { faultyKv, isClose, keyCount } from "./server_faults.ts";

const N = 1000;

/** An update selecting every `every`-th position, all values 0.5. */
function update(
  run: string,
  round: number,
  every: number,
  metrics: Record<string, number> = { loss: 1 },
  samples = 3,
): DecodedUpdate {
  const maskBits = packMask(new Uint8Array(N).map((_, i) => (i % every === 0 ? 1 : 0)));
  const values = new Float32Array(popcountBits(maskBits)).fill(0.5);
  return {
    run,
    round,
    samples,
    metrics,
    maskBits,
    values,
    popcount: values.length,
    sumSq: 0.25 * values.length,
  };
}

/**
 * The same safetensors body with its metadata's `metrics` replaced: what an attacker sends, since
 * our own encoder refuses metrics outside the rule.
 */
function withMetrics(body: Uint8Array, metrics: Record<string, number>): Uint8Array {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const hlen = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(body.subarray(8, 8 + hlen)));
  header.__metadata__.metrics = JSON.stringify(metrics);
  const text = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (text.length % 8)) % 8;
  const out = new Uint8Array(8 + text.length + pad + body.length - 8 - hlen);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length + pad), true);
  out.set(text, 8);
  out.fill(0x20, 8 + text.length, 8 + text.length + pad);
  out.set(body.subarray(8 + hlen), 8 + text.length + pad);
  return out;
}

Deno.test("server hardening: 110 clients × 16 metric names are refused (bad_metrics); the round closes with a bounded summary and the run keeps serving", async () => {
  const kv = await Deno.openKv(":memory:");
  let t = 1_000_000;
  const app = makeApp(kv, {}, () => t);
  try {
    const runId = await createRun(
      app,
      runBody("perfit", { clientsPerRound: 200, quorum: 110, roundDeadlineMs: 1000 }),
    );
    const clients: { id: string; token: string }[] = [];
    for (let i = 0; i < 110; i++) {
      const r = await app.request(`/v1/runs/${runId}/join`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      assert.equal(r.status, 201);
      const j = await r.json();
      clients.push({ id: j.clientId, token: j.token });
    }
    const name = (i: number, k: number) => `m${i}_${k}_`.padEnd(32, "x");
    const upload = (i: number, metrics: Record<string, number>) =>
      app.request(`/v1/runs/${runId}/clients/${clients[i].id}/rounds/1/update`, {
        method: "POST",
        headers: { authorization: `Bearer ${clients[i].token}` },
        body: withMetrics(
          encodeUpdate({
            run: runId,
            round: 1,
            samples: 1 + (i % 3),
            values: new Float32Array(N).fill(0.01),
            mask: fakeMask(i, N, 300, false),
            metrics: {},
          }),
          metrics,
        ) as Uint8Array<ArrayBuffer>,
      });

    // The attack of issue 12: every client reports 16 distinct names (the wire format lets them through).
    const before = await dumpKv(kv);
    for (let i = 0; i < 110; i++) {
      // Doubles, as a loss would be: 1760 such entries are past KV's 64 KiB for one value.
      const metrics = Object.fromEntries(Array.from({ length: 16 }, (_, k) => [name(i, k), k + 0.5]));
      const res = await upload(i, metrics);
      assert.equal(res.status, 422, `client ${i}: ${res.status}`);
      assert.equal((await res.json()).error.code, "bad_metrics");
    }
    await app.coordinator.settled();
    assert.deepEqual(await dumpKv(kv), before, "a refused upload changed the KV");
    for (const bad of [{ "1loss": 1 }, { "_x": 1 }, { "a b": 1 }] as Record<string, number>[]) {
      const res = await upload(0, bad);
      assert.ok(res.status === 422 || res.status === 400, `${JSON.stringify(bad)}: ${res.status}`);
      assert.equal((await res.json()).error.code, "bad_metrics");
    }

    // The most an upload may report: 8 names, one shared, 7 of its own (770 distinct in the round).
    let lossSum = 0;
    let samples = 0;
    for (let i = 0; i < 110; i++) {
      const loss = 1 + (i % 2);
      const metrics = { loss, ...Object.fromEntries(Array.from({ length: 7 }, (_, k) => [name(i, k), k])) };
      const res = await upload(i, metrics);
      assert.equal(res.status, 201, `client ${i}: ${await res.text()}`);
      lossSum += loss * (1 + (i % 3));
      samples += 1 + (i % 3);
    }
    t += 2000; // past the deadline with a quorum: the next request closes round 1

    const get = (path: string, token = ADMIN) =>
      app.request(path, { headers: { authorization: `Bearer ${token}` } });
    const run = await get(`/v1/runs/${runId}`);
    assert.equal(run.status, 200, await run.clone().text());
    assert.equal((await run.json()).round.index, 2);
    const r1 = (await kv.get<RoundRecord>(K.round(runId, 1))).value!;
    assert.equal(r1.status, "closed");
    const names = Object.keys(r1.summary!.metrics);
    assert.ok(names.length <= 16, `summary keeps ${names.length} metrics`);
    assert.ok(Math.abs(r1.summary!.metrics.loss - lossSum / samples) < 1e-12);
    assert.ok(JSON.stringify(r1).length < 4096, `round record is ${JSON.stringify(r1).length} B`);
    // What the jammed run answered 503 to, 20 times over (and each time left an adapter copy).
    for (let k = 0; k < 20; k++) {
      const i = k % 5;
      assert.equal((await get(`/v1/runs/${runId}/metrics`)).status, 200);
      assert.equal((await get(`/v1/runs/${runId}`)).status, 200);
      const task = await get(`/v1/runs/${runId}/clients/${clients[i].id}/task`, clients[i].token);
      assert.equal(task.status, 200);
      const { round, status } = await task.json();
      assert.deepEqual([round, status], [2, "train"]);
    }
    await app.coordinator.settled();
    let globals = 0;
    for await (const _ of kv.list({ prefix: ["global", runId] })) globals++;
    assert.equal(globals, 2, "one adapter generation: its values and covered chunks");
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("server hardening: at most 8 finite metrics per upload, named like identifiers (coordinator admission)", async () => {
  const kv = await Deno.openKv(":memory:");
  const coord = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const run = await coord.createRun(
      parseRunConfig(runBody("perfit", { budget: N, clientsPerRound: 2, quorum: 2 })),
    );
    const c = (await coord.join(run.id, {})).id;
    const nine = Object.fromEntries(Array.from({ length: 9 }, (_, k) => [`m${k}`, k]));
    const eight = Object.fromEntries(Array.from({ length: 8 }, (_, k) => [`m${k}`, k]));
    for (const m of [nine, { "9lives": 1 }, { ["x".repeat(33)]: 1 }, { loss: NaN }, { loss: Infinity }]) {
      await assert.rejects(
        coord.upload(run.id, c, 1, update(run.id, 1, 4, m), "u"),
        isApiError("bad_metrics"),
      );
    }
    assert.equal((await coord.upload(run.id, c, 1, update(run.id, 1, 4, eight), "u8")).status, "accepted");
  } finally {
    await coord.close();
    kv.close();
  }
});

Deno.test("server hardening: a round summary stays a few KiB whatever the upload records hold", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    // Records as an older server could have stored them: 20 uploads × 100 names of 32 characters.
    const uploads: UploadRecord[] = Array.from({ length: 20 }, (_, i) => ({
      uploadId: `u${i}`,
      client: `c${i}`,
      round: 1,
      samples: 1 + i,
      metrics: {
        loss: i,
        ...Object.fromEntries(Array.from({ length: 100 }, (_, k) => [`n${i}_${k}_`.padEnd(32, "y"), k])),
      },
      popcount: 1,
      norm: 1,
      at: 0,
      maskRound: 1,
      maskHash: "",
    }));
    const s = summarize(strategyFor("perfit"), uploads, 5);
    assert.ok(Object.keys(s.metrics).length <= 16, `${Object.keys(s.metrics).length} metrics`);
    const w = uploads.reduce((a, u) => a + u.samples, 0);
    assert.ok(
      Math.abs(s.metrics.loss - uploads.reduce((a, u) => a + u.metrics.loss * u.samples, 0) / w) < 1e-12,
    );
    assert.deepEqual([s.clients, s.samples, s.covered], [20, w, 5]);
    assert.ok(JSON.stringify(s).length < 2048, `summary is ${JSON.stringify(s).length} B of JSON`);
    await kv.set(["summary"], s); // a KV value: must fit in 64 KiB
  } finally {
    kv.close();
  }
});

Deno.test("server hardening: a close whose commit fails leaves no adapter copy behind (20 failing retries)", async () => {
  const raw = await Deno.openKv(":memory:");
  const { kv, faults } = faultyKv(raw);
  let t = 1_000_000;
  const coord = new Coordinator(kv, () => t, new InlineFolder());
  try {
    const run = await coord.createRun(
      parseRunConfig(runBody("perfit", { budget: N, clientsPerRound: 4, quorum: 2, roundDeadlineMs: 1000 })),
    );
    for (let i = 0; i < 2; i++) {
      const c = (await coord.join(run.id, {})).id;
      assert.equal((await coord.upload(run.id, c, 1, update(run.id, 1, 3 + i), `u${i}`)).status, "accepted");
    }
    await coord.settled();
    faults.fail = isClose;
    t += 2000;
    const keys = await keyCount(raw);
    for (let attempt = 0; attempt < 20; attempt++) {
      await assert.rejects(
        coord.getRun(run.id),
        (e) => e instanceof RetryableError && /closing/.test(e.message),
      );
      await coord.settled();
      assert.equal(await keyCount(raw), keys, `attempt ${attempt} left keys behind`);
    }
    assert.equal(faults.failed, 20);
    faults.fail = () => false;
    assert.equal((await coord.getRun(run.id)).run.round, 2);
    await coord.settled();
    assert.equal(
      await keyCount(raw, ["global", run.id]),
      2,
      "one generation: its values and covered chunks",
    );
  } finally {
    await coord.close();
    raw.close();
  }
});

Deno.test("server hardening: a crash right after the last upload of a round: on load the full round closes at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-full-round-" });
  const path = `${dir}/kv`;
  const rawA = await Deno.openKv(path);
  const { kv, faults } = faultyKv(rawA);
  const a = new Coordinator(kv, Date.now, new InlineFolder());
  let b: Coordinator | null = null;
  // The second handle opens only once the first process is gone: two live SQLite connections
  // (one opening while the other commits) answer "database is locked" on a loaded machine.
  let rawB: Deno.Kv | null = null;
  let aOpen = true;
  try {
    const run = await a.createRun(
      parseRunConfig(
        runBody("perfit", { budget: N, clientsPerRound: 4, quorum: 4, roundDeadlineMs: 3_600_000 }),
      ),
    );
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await a.join(run.id, {})).id);
    // The process dies between the last group commit and the close: the close never lands.
    faults.fail = isClose;
    const acks = await Promise.all(
      ids.map((c, i) => a.upload(run.id, c, 1, update(run.id, 1, 3 + i), `u${i}`)),
    );
    assert.ok(acks.every((r) => r.status === "accepted"));
    await a.settled();
    assert.equal(faults.failed, 1, "the close was attempted once and lost");
    assert.equal((await rawA.get<RoundRecord>(K.round(run.id, 1))).value!.status, "open");
    await a.close();
    rawA.close();
    aOpen = false;

    rawB = await Deno.openKv(path);
    b = new Coordinator(rawB, Date.now, new InlineFolder());
    // Loading the run (here for a join) closes the full round; `settled` reports when it landed.
    const late = await b.join(run.id, {});
    await b.settled();
    const task = await b.task(run.id, late);
    assert.deepEqual([task.round, task.status], [2, "train"]);
    await assert.rejects(
      b.upload(run.id, late.id, 1, update(run.id, 1, 7), "late1"),
      isApiError("round_closed"),
    );
    assert.equal((await b.upload(run.id, late.id, 2, update(run.id, 2, 7), "late2")).status, "accepted");
    const r1 = (await rawB.get<RoundRecord>(K.round(run.id, 1))).value!;
    assert.deepEqual([r1.status, r1.accepted, r1.summary?.clients], ["closed", 4, 4]);
    const { run: now, round } = await b.getRun(run.id);
    assert.deepEqual([now.round, now.globalRound, round?.status, round?.accepted], [2, 1, "open", 1]);
  } finally {
    if (aOpen) {
      await a.close();
      rawA.close();
    }
    await b?.close();
    rawB?.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("server hardening: tiers named after Object.prototype members are unknown (422), and the KV is unchanged", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const runId = await createRun(app, runBody("perfit"));
    const join = (tier: string) =>
      app.request(`/v1/runs/${runId}/join`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ tier }),
      });
    assert.equal((await join("mid")).status, 201);
    await app.coordinator.settled();
    const before = await dumpKv(kv);
    for (
      const tier of ["toString", "constructor", "hasOwnProperty", "__proto__", "valueOf", "isPrototypeOf"]
    ) {
      const res = await join(tier);
      const text = await res.text();
      assert.equal(res.status, 422, `tier ${tier}: ${res.status} ${text}`);
      assert.equal(JSON.parse(text).error.code, "unknown_tier", text);
    }
    await app.coordinator.settled();
    assert.deepEqual(await dumpKv(kv), before);
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("server hardening: metrics named after Object.prototype members aggregate like any other", async () => {
  const m = weightedMetrics([
    { samples: 1, metrics: { constructor: 4, toString: 1, ["__proto__"]: 2, hasOwnProperty: 8 } },
    { samples: 3, metrics: { constructor: 2, valueOf: 5, ["__proto__"]: 6 } },
  ]);
  const want = JSON.parse(
    '{"constructor":2.5,"toString":1,"__proto__":5,"hasOwnProperty":8,"valueOf":5}',
  );
  assert.deepEqual(JSON.parse(JSON.stringify(m)), want, "JSON round trip");
  for (const k of Object.keys(want)) {
    assert.ok(Object.hasOwn(m, k), `${k} is an own property`);
    assert.equal(m[k], want[k], k);
  }
  assert.equal(Object.getPrototypeOf(m), Object.prototype, "a plain object");

  // Through the coordinator: "constructor" is a valid metric name, and its summary is a number.
  const kv = await Deno.openKv(":memory:");
  const coord = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const run = await coord.createRun(
      parseRunConfig(runBody("perfit", { budget: N, clientsPerRound: 2, quorum: 2 })),
    );
    for (let i = 0; i < 2; i++) {
      const c = (await coord.join(run.id, {})).id;
      await coord.upload(
        run.id,
        c,
        1,
        update(run.id, 1, 3 + i, { constructor: 1 + i, loss: 1 }, 1 + i),
        `u${i}`,
      );
    }
    await coord.settled();
    const summary = (await kv.get<RoundRecord>(K.round(run.id, 1))).value!.summary!;
    assert.deepEqual(summary.metrics, { constructor: (1 + 2 * 2) / 3, loss: 1 });
  } finally {
    await coord.close();
    kv.close();
  }
});
