/**
 * Round shards: two coordinator instances on one KV file each sum the uploads they accept into a
 * shard of their own, so that their commits do not conflict;
 * the close merges the shards; an upload one instance accepted and another is sent again is a
 * replay there, counted once.
 */
import assert from "node:assert/strict";
import { Coordinator, RetryableError } from "../server/coordinator.ts";
import { InlineFolder } from "../server/folder.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { K, type RoundRecord } from "../server/records.ts";
import { MAX_SHARDS, readShards } from "../server/shards.ts";
import { type Faults, faultyKv, isGroupCommit, type OpView } from "./server_faults.ts";
import { dumpKv, isApiError } from "./server_helpers.ts";
import { type DecodedUpdate, packMask, popcountBits } from "../runtime/client/wire.ts";

const N = 256;

function config(clients: number) {
  return parseRunConfig({
    baseModel: "m",
    lora: { rank: 1, alpha: 1, targets: ["q"] },
    method: "perfit",
    rounds: 2,
    clientsPerRound: clients,
    roundDeadlineMs: 3_600_000,
    adapterSize: N,
    budget: N,
    expansionTiers: { low: 1 },
    maxNorm: 1e6,
  });
}

/** Client `seed`'s update: a seeded mask of about a third of the positions, seeded values. */
function update(run: string, seed: number): DecodedUpdate {
  const mask = new Uint8Array(N);
  const values: number[] = [];
  for (let i = 0; i < N; i++) {
    if ((i * 7 + seed * 3) % 3 === 0) {
      mask[i] = 1;
      values.push(((i + seed * 5) % 13) / 10 - 0.6);
    }
  }
  const maskBits = packMask(mask);
  const v = Float32Array.from(values);
  return {
    run,
    round: 1,
    samples: 1 + seed,
    metrics: {},
    maskBits,
    values: v,
    popcount: popcountBits(maskBits),
    sumSq: v.reduce((a, x) => a + x * x, 0),
  };
}

/** Two handles on one SQLite file may find it locked (HTTP answers 503): not a conflict, try again. */
const locked = (e: unknown) => e instanceof Error && /database is locked/.test(e.message);

/** `f()`, again while the file is locked (see `locked`). */
async function unlocked<T>(f: () => Promise<T>): Promise<T> {
  for (let i = 0;; i++) {
    try {
      return await f();
    } catch (e) {
      if (!locked(e) || i >= 50) throw e;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

/** Uploads through `coord`, retrying what it answers as retryable; returns the tries that conflicted. */
async function upload(coord: Coordinator, run: string, client: string, u: () => DecodedUpdate, id: string) {
  let tries = 1;
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      const r = await coord.upload(run, client, 1, u(), id);
      return { status: r.status, tries };
    } catch (e) {
      if (e instanceof RetryableError && !locked(e)) tries++;
      else if (!locked(e)) throw e;
    }
  }
  throw new Error(`upload ${id} kept failing`);
}

/** The global adapter after round 1 of `run` on `coord`. */
async function global(coord: Coordinator, run: string) {
  const { adapter } = await unlocked(() => coord.admin.globalAdapter(run));
  return adapter;
}

/** Round 1 of the same uploads through one instance: what the merged shards must close to. */
async function reference(clients: number): Promise<{ v: Float32Array; c: Uint32Array }> {
  const kv = await Deno.openKv(":memory:");
  const one = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const run = await one.createRun(config(clients));
    for (let i = 0; i < clients; i++) {
      const id = (await one.join(run.id, {})).id;
      assert.equal((await one.upload(run.id, id, 1, update(run.id, i), `u${i}`)).status, "accepted");
    }
    await one.settled();
    const g = await global(one, run.id);
    return { v: g.v.slice(), c: g.c.slice() };
  } finally {
    await one.close();
    kv.close();
  }
}

/**
 * Two coordinators on one KV file: `a` through `faults` (tests inject failures and holds), `b` on
 * its own handle; `rawA` reads the file directly.
 */
async function twoInstances(
  f: (a: Coordinator, b: Coordinator, rawA: Deno.Kv, faults: Faults) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "perfit-shards-" });
  const rawA = await Deno.openKv(`${dir}/kv`);
  const rawB = await Deno.openKv(`${dir}/kv`);
  const { kv: kvA, faults } = faultyKv(rawA);
  const a = new Coordinator(kvA, Date.now, new InlineFolder());
  const b = new Coordinator(rawB, Date.now, new InlineFolder());
  try {
    await f(a, b, rawA, faults);
  } finally {
    faults.release();
    await a.close();
    await b.close();
    rawA.close();
    rawB.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** A run of `clients` per round created on `coord`, and the ids of `clients` joined clients. */
async function runWith(coord: Coordinator, clients: number): Promise<{ run: string; ids: string[] }> {
  const run = (await unlocked(() => coord.createRun(config(clients)))).id;
  const ids: string[] = [];
  for (let i = 0; i < clients; i++) ids.push((await unlocked(() => coord.join(run, {}))).id);
  return { run, ids };
}

function assertClose(got: { v: Float32Array; c: Uint32Array }, want: { v: Float32Array; c: Uint32Array }) {
  assert.deepEqual(got.c, want.c, "covered positions");
  assert.ok(want.v.some((x) => Math.abs(x) > 0.05), "the reference is not trivially zero");
  for (let p = 0; p < N; p++) {
    assert.ok(Math.abs(got.v[p] - want.v[p]) <= 1e-6, `position ${p}: ${got.v[p]} vs ${want.v[p]}`);
  }
}

Deno.test("round shards: uploads alternating between two instances all commit at the first try; the close merges both shards", async () => {
  const want = await reference(6);
  await twoInstances(async (a, b, raw) => {
    const { run, ids } = await runWith(a, 6);
    await unlocked(() => b.getRun(run)); // both hold the run's state before any upload
    const tries: number[] = [];
    for (let i = 0; i < 6; i++) {
      const r = await upload(i % 2 ? b : a, run, ids[i], () => update(run, i), `u${i}`);
      assert.equal(r.status, "accepted");
      tries.push(r.tries);
    }
    // Neither instance's commits touch what the other's check: the first commit of each (which
    // registers its shard in the round's shard list) included.
    assert.deepEqual(tries, [1, 1, 1, 1, 1, 1], `tries per upload: ${tries}`);
    await unlocked(() => a.settled());
    await unlocked(() => b.settled());
    const r1 = (await unlocked(() => raw.get<RoundRecord>(K.round(run, 1)))).value!;
    assert.deepEqual([r1.status, r1.accepted, r1.summary?.clients, r1.shards?.length], ["closed", 6, 6, 2]);
    assert.equal(r1.samples, [0, 1, 2, 3, 4, 5].reduce((s, i) => s + 1 + i, 0));
    assertClose(await global(a, run), want);
    assertClose(await global(b, run), want);
    // The closed round's shards are cleaned up with its sums.
    await unlocked(() => a.settled());
    const left = await readShards(raw, { ...r1, status: "open" });
    assert.deepEqual([left.list.value, left.shards.length], [null, 0]);
  });
});

Deno.test("round shards: an upload one instance accepted, sent again to another, is a replay there and counted once", async () => {
  const want = await reference(3);
  await twoInstances(async (a, b, raw) => {
    const { run, ids } = await runWith(a, 3);
    assert.equal((await upload(b, run, ids[1], () => update(run, 1), "u1")).status, "accepted");
    // B holds the run's state from before A accepts client 0's upload; client 0 then sends it again
    // to B (its acknowledgement lost on the way back, a balancer picking another instance).
    assert.equal((await upload(a, run, ids[0], () => update(run, 0), "u0")).status, "accepted");
    const again = await upload(b, run, ids[0], () => update(run, 0), "u0");
    assert.equal(again.status, "replay");
    const open = (await raw.get<RoundRecord>(K.round(run, 1))).value!;
    const counted = (await readShards(raw, open)).shards.reduce((s, e) => s + (e.value?.accepted ?? 0), 0);
    assert.equal(counted, 2, "client 0 is counted once");
    assert.equal((await upload(b, run, ids[2], () => update(run, 2), "u2")).status, "accepted");
    await unlocked(() => a.settled());
    await unlocked(() => b.settled());
    const r1 = (await unlocked(() => raw.get<RoundRecord>(K.round(run, 1)))).value!;
    assert.deepEqual([r1.status, r1.accepted], ["closed", 3]);
    assertClose(await global(b, run), want);
  });
});

Deno.test("round shards: the metrics of an open round count every instance's uploads", async () => {
  await twoInstances(async (a, b) => {
    const { run, ids } = await runWith(a, 4);
    await upload(a, run, ids[0], () => update(run, 0), "u0");
    await upload(b, run, ids[1], () => update(run, 1), "u1");
    await upload(b, run, ids[2], () => update(run, 2), "u2");
    await unlocked(() => a.settled());
    await unlocked(() => b.settled());
    for (const c of [a, b]) {
      const m = await unlocked(() => c.metrics(run));
      assert.deepEqual(
        [m.rounds[0].status, m.rounds[0].accepted, m.rounds[0].samples, m.rounds[0].clients.length],
        ["open", 3, 1 + 2 + 3, 3],
      );
    }
  });
});

Deno.test("round shards: another instance takes a claim over at once; the claimer's commit of it then fails, and its retry is a replay", async () => {
  const want = await reference(3);
  await twoInstances(async (a, b, rawA, faults) => {
    const { run, ids } = await runWith(a, 3);
    // A claims client 0's upload and folds it; its group commit waits (A is slow, or dying).
    faults.hold = isGroupCommit;
    const onA = a.upload(run, ids[0], 1, update(run, 0), "u0");
    while (faults.held === 0) await new Promise((r) => setTimeout(r, 1));
    // The client, answered nothing, sends it to B: B takes the claim over and accepts it.
    assert.equal((await upload(b, run, ids[0], () => update(run, 0), "u0")).status, "accepted");
    // A's commit goes on: the takeover bumped A's shard record, so it fails instead of counting it twice.
    faults.release();
    await assert.rejects(onA, RetryableError);
    assert.equal((await upload(a, run, ids[0], () => update(run, 0), "u0")).status, "replay");
    for (const i of [1, 2]) {
      assert.equal(
        (await upload(i === 1 ? a : b, run, ids[i], () => update(run, i), `u${i}`)).status,
        "accepted",
      );
    }
    await unlocked(() => a.settled());
    await unlocked(() => b.settled());
    const r1 = (await unlocked(() => rawA.get<RoundRecord>(K.round(run, 1)))).value!;
    assert.deepEqual([r1.status, r1.accepted, r1.summary?.clients], ["closed", 3, 3]);
    assertClose(await global(a, run), want);
  });
});

Deno.test("round shards: past MAX_SHARDS instances in one round, a new instance refuses to register (retry elsewhere), and nothing is written", async () => {
  const kv = await Deno.openKv(":memory:");
  const coord = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const run = await coord.createRun(config(2));
    const id = (await coord.join(run.id, {})).id;
    const key = K.shardList(run.id, 1);
    const others = Array.from({ length: MAX_SHARDS }, (_, i) => `other${i}`);
    await kv.set(key, { instances: others });
    await assert.rejects(
      coord.upload(run.id, id, 1, update(run.id, 0), "u0"),
      (e) => e instanceof RetryableError && /shards/.test(e.message),
    );
    assert.deepEqual((await kv.get<{ instances: string[] }>(key)).value!.instances, others);
    assert.equal((await kv.get(K.upload(run.id, 1, id))).value, null);
  } finally {
    await coord.close();
    kv.close();
  }
});

Deno.test("round shards: an upload refused for a full round, or beside a different one in flight, claims nothing (KV unchanged)", async () => {
  const raw = await Deno.openKv(":memory:");
  const { kv, faults } = faultyKv(raw);
  const coord = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const { run, ids } = await runWith(coord, 2);
    const third = (await coord.join(run, {})).id;
    assert.equal((await coord.upload(run, ids[0], 1, update(run, 0), "u0")).status, "accepted");
    // Client 1's upload takes the last seat; its commit is held, so the round is full but open.
    faults.hold = isGroupCommit;
    const held = coord.upload(run, ids[1], 1, update(run, 1), "u1");
    while (faults.held === 0) await new Promise((r) => setTimeout(r, 1));
    const before = await dumpKv(raw);
    await assert.rejects(coord.upload(run, third, 1, update(run, 2), "u2"), isApiError("round_full"));
    await assert.rejects(
      coord.upload(run, ids[1], 1, update(run, 3), "u1-other"),
      isApiError("already_uploaded"),
    );
    assert.deepEqual(await dumpKv(raw), before, "the refusals wrote nothing");
    faults.release();
    assert.equal((await held).status, "accepted");
  } finally {
    faults.release();
    await coord.close();
    raw.close();
  }
});

Deno.test("round shards: a delete on one instance leaves no key of the run, though another was writing an upload's and a close's blobs meanwhile", async () => {
  await twoInstances(async (a, b, raw, faults) => {
    const up = await runWith(a, 2); // A stages an upload in it: the client's mask and A's sum slot
    const closing = await runWith(a, 1); // A closes its round: the new global adapter
    const blobOf = (op: OpView, run: string) =>
      op.sets.some((k) =>
        k[1] === run &&
        (run === up.run ? k[0] === "mask" || (k[0] === "acc" && k[4] === "s") : k[0] === "global")
      );
    // A is held with its blob commits sent and not landed (a slow isolate): B deletes both runs then.
    const held: OpView[] = [];
    faults.hold = (op) => {
      const h = blobOf(op, up.run) || blobOf(op, closing.run);
      if (h) held.push(op);
      return h;
    };
    const onUp = a.upload(up.run, up.ids[0], 1, update(up.run, 0), "u0");
    onUp.catch(() => {});
    const onClose = a.upload(closing.run, closing.ids[0], 1, update(closing.run, 0), "c0");
    const sum = (op: OpView) => op.sets.some((k) => k[0] === "acc" && k[1] === up.run);
    const adapter = (op: OpView) => op.sets.some((k) => k[0] === "global");
    while (!held.some(sum) || !held.some(adapter)) await new Promise((r) => setTimeout(r, 1));
    assert.equal((await onClose).status, "accepted", "the upload that fills the round committed");
    for (const run of [up.run, closing.run]) await unlocked(() => b.admin.delete(run));
    faults.release();
    await assert.rejects(onUp, RetryableError);
    await unlocked(() => a.settled());
    await unlocked(() => b.settled());
    assert.ok(held.length >= 2, `${held.length} blob commits were held`);
    const left = (await unlocked(() => dumpKv(raw))).filter((l) =>
      [up.run, closing.run].some((id) => l.slice(0, l.indexOf("=")).includes(`"${id}"`))
    );
    assert.deepEqual(left, [], "no key of a deleted run is left");
  });
});
