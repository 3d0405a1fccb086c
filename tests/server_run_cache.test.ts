/**
 * What stays in memory and in KV over a run's life: the load sweep deletes what lost clean-ups left
 * behind (and nothing that a record names or a close in flight may still need), and the cache of
 * loaded runs is bounded without ever dropping a run that has work in flight.
 */
import assert from "node:assert/strict";
import { Coordinator } from "../server/coordinator.ts";
import { InlineFolder } from "../server/folder.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { K } from "../server/records.ts";
import { childParts, CHUNK_BYTES, writeChunks } from "../server/kv_chunks.ts";
import { newGen } from "../server/round_close.ts";
import { SWEEP_GRACE_MS } from "../server/sweep.ts";
import { type DecodedUpdate, packMask, popcountBits } from "../runtime/client/wire.ts";
import { runBody } from "./server_helpers.ts";
import { faultyKv, isGroupCommit } from "./server_faults.ts";

const N = 4096;

function update(run: string, round: number, every: number, value = 0.5): DecodedUpdate {
  const maskBits = packMask(new Uint8Array(N).map((_, i) => (i % every === 0 ? 1 : 0)));
  const values = new Float32Array(popcountBits(maskBits)).fill(value);
  return {
    run,
    round,
    samples: 2,
    metrics: { loss: 1 },
    maskBits,
    values,
    popcount: values.length,
    sumSq: value * value * values.length,
  };
}

const config = (over: Record<string, unknown> = {}) =>
  parseRunConfig(runBody("perfit", { adapterSize: N, budget: N, clientsPerRound: 2, quorum: 2, ...over }));

/** The blobs stored for a run: "acc/<round>/<slot>", "global/<gen>", "mask/<client>/<round>". */
async function blobs(kv: Deno.Kv, run: string): Promise<string[]> {
  const out = new Set<string>();
  for (const [kind, depth] of [["acc", 2], ["global", 1], ["mask", 2]] as const) {
    for await (const e of kv.list({ prefix: [kind, run] })) {
      out.add([kind, ...e.key.slice(2, 2 + depth)].join("/"));
    }
  }
  return [...out].sort();
}

Deno.test("server sweep: loading a run deletes what lost clean-ups left, and keeps what is named or may be in flight", async () => {
  const raw = await Deno.openKv(":memory:");
  const { kv, faults } = faultyKv(raw);
  // Every clean-up of this instance is lost, as if the process died right after each close.
  faults.drop = (op) => op.deletes.length > 0;
  const a = new Coordinator(kv, Date.now, new InlineFolder());
  const later = Date.now() + 2 * SWEEP_GRACE_MS;
  const b = new Coordinator(raw, () => later, new InlineFolder());
  try {
    const run = await a.createRun(config());
    const ca = (await a.join(run.id, {})).id;
    const cb = (await a.join(run.id, {})).id;
    // Round 1: both store a mask. Round 2: A changes its mask, B keeps (references) its own.
    await a.upload(run.id, ca, 1, update(run.id, 1, 4), "a1");
    await a.upload(run.id, cb, 1, update(run.id, 1, 5), "b1");
    await a.settled();
    await a.upload(run.id, ca, 2, update(run.id, 2, 3), "a2");
    await a.upload(run.id, cb, 2, update(run.id, 2, 5), "b2");
    await a.settled();
    // Round 3 open with B's upload in; A's next mask staged by a commit that has not flipped yet.
    await a.upload(run.id, cb, 3, update(run.id, 3, 5), "b3");
    await a.settled();
    await raw.set([...K.mask(run.id, ca, 3), 0], new Uint8Array(N / 8));
    const { run: r } = await a.getRun(run.id);
    assert.equal(r.round, 3);
    const current = r.globalGen!;
    // A close in flight on another instance has just written its adapter (younger than the grace).
    const young = newGen(later - 60_000);
    await writeChunks(raw, K.global(run.id, young, "v"), new Uint8Array(Math.min(CHUNK_BYTES, N * 4)));
    const old = (await blobs(raw, run.id)).filter((k) => k.startsWith("global/")).map((k) => k.slice(7));
    assert.equal(old.length, 3, `generations: ${old}`);
    const slot = (await blobs(raw, run.id)).find((k) => /^acc\/3\/[^/]+\.[01]$/.test(k));
    assert.ok(slot, "round 3 has a sum slot");
    assert.deepEqual(
      [
        ...new Set(
          (await blobs(raw, run.id)).filter((k) => k.startsWith("acc/")).map((k) => k.split("/")[1]),
        ),
      ],
      ["1", "2", "3"],
      "the closed rounds' slots were left behind",
    );

    await b.getRun(run.id); // first load by a new instance (a restart)
    await b.settled();
    assert.deepEqual(
      await blobs(raw, run.id),
      [
        slot,
        "acc/3/claim", // the open round's claims (B's upload)
        "acc/3/shard", // and shard records (A's)
        "acc/3/shards", // and their list
        `global/${current}`,
        `global/${young}`,
        `mask/${ca}/2`, // A's latest (its round-1 mask, replaced in the closed round 2, is gone)
        `mask/${ca}/3`, // staged in the open round: kept
        `mask/${cb}/1`, // B's latest, referenced since round 1
      ].sort(),
    );

    // The run goes on from what was kept.
    assert.deepEqual((await b.slice(run.id, ca)).maskBits, update(run.id, 2, 3).maskBits);
    assert.equal((await b.upload(run.id, ca, 3, update(run.id, 3, 3), "a3")).status, "accepted");
    await b.settled();
    assert.equal((await b.getRun(run.id)).run.status, "done");
  } finally {
    await a.close();
    await b.close();
    raw.close();
  }
});

Deno.test("server run cache: idle runs are evicted least recently used first; a run with work in flight never is", async () => {
  const raw = await Deno.openKv(":memory:");
  const { kv, faults } = faultyKv(raw);
  const coord = new Coordinator(kv, Date.now, new InlineFolder(), { maxLoadedRuns: 2 });
  try {
    const runs: string[] = [];
    const clients: string[][] = [];
    for (let i = 0; i < 4; i++) {
      const run = await coord.createRun(config());
      runs.push(run.id);
      clients.push([(await coord.join(run.id, {})).id, (await coord.join(run.id, {})).id]);
      await coord.getRun(run.id); // (a join reads the run record only; this loads the run)
    }
    const [r0, r1, r2, r3] = runs;
    // Each run was loaded in turn; only the two used last are left.
    assert.deepEqual(coord.loadedRuns(), [r2, r3]);
    await coord.getRun(r0);
    assert.deepEqual(coord.loadedRuns(), [r3, r0]);
    // r0 gets an upload whose commit is held: it has work in flight.
    faults.hold = isGroupCommit;
    const held = coord.upload(r0, clients[0][0], 1, update(r0, 1, 4, 0.25), "x0");
    while (faults.held === 0 || coord.inFlight(r0) === 0) await new Promise((r) => setTimeout(r, 1));
    await coord.getRun(r1);
    await coord.getRun(r2);
    // r0 is the least recently used, but busy: r3, then r1 went instead.
    assert.deepEqual(coord.loadedRuns(), [r0, r2], "r0 was evicted with an upload in flight");
    faults.release();
    assert.equal((await held).status, "accepted");
    await coord.settled();
    // Idle now: the next loads evict it first.
    await coord.getRun(r3);
    assert.ok(!coord.loadedRuns().includes(r0), `${coord.loadedRuns()}`);
    assert.equal(coord.loadedRuns().length, 2);

    // Reloaded from KV, r0 goes on from its durable state: the accepted upload still counts.
    assert.equal((await coord.upload(r0, clients[0][1], 1, update(r0, 1, 4, 0.75), "y0")).status, "accepted");
    await coord.settled();
    assert.equal((await coord.getRun(r0)).run.globalRound, 1);
    const slice = await coord.slice(r0, clients[0][0]);
    assert.equal(slice.values.length, N / 4);
    assert.ok(slice.values.every((v) => v === 0.5), "the mean of 0.25 and 0.75 at equal samples");
  } finally {
    faults.release();
    await coord.close();
    raw.close();
  }
});

Deno.test("server kv chunks: childParts walks the distinct parts below a prefix, once each, in key order", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const parts = ["a", "a\0", "a\0b", "ab", "b", -2.5, -0.5, 0, Number.MIN_VALUE, 1, 1.5, 3];
    for (const p of parts) for (const i of [0, 1, 2]) await kv.set(["p", p, "x", i], i);
    await kv.set(["p"], 0); // the prefix itself is not below it
    await kv.set(["q", "z"], 0); // nor is a neighbour
    const seen: (string | number)[] = [];
    for await (const p of childParts(kv, ["p"])) seen.push(p);
    // KV orders strings before numbers.
    const strings = parts.filter((p) => typeof p === "string");
    assert.deepEqual(seen, [...strings, ...parts.filter((p) => typeof p === "number")]);
    const empty: unknown[] = [];
    for await (const p of childParts(kv, ["nothing"])) empty.push(p);
    assert.deepEqual(empty, []);
  } finally {
    kv.close();
  }
});
