/**
 * Group commit under a stalled KV: while a commit is blocked, uploads queue up to one atomic operation's
 * worth; the next one is refused with a retryable error before it is folded, and after the stall every
 * queued upload is committed exactly once (the durable sum holds exactly the acknowledged uploads).
 */
import assert from "node:assert/strict";
import { Coordinator, RetryableError } from "../server/coordinator.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { K, type RoundRecord, type UploadRecord } from "../server/records.ts";
import { readChunks } from "../server/kv_chunks.ts";
import { readShards } from "../server/shards.ts";
import { MAX_GROUP } from "../server/admission.ts";
import { type Accumulators, InlineFolder } from "../server/folder.ts";
import { type DecodedUpdate, packMask, popcountBits } from "../runtime/client/wire.ts";

/**
 * A KV whose group commits (the atomic operations that write a shard record) wait while
 * `gate.closed`; joins, claims and reads are unaffected.
 */
function gatedKv(kv: Deno.Kv) {
  const gate = { closed: false, open: () => {}, waiters: [] as (() => void)[] };
  gate.open = () => {
    gate.closed = false;
    for (const w of gate.waiters.splice(0)) w();
  };
  const wrapOp = (op: Deno.AtomicOperation): Deno.AtomicOperation => {
    let group = false;
    const w: Deno.AtomicOperation = new Proxy(op, {
      get(t, p) {
        if (p === "commit") {
          return async () => {
            if (group && gate.closed) await new Promise<void>((r) => gate.waiters.push(r));
            return t.commit();
          };
        }
        if (p === "set") {
          return (key: Deno.KvKey, value: unknown) => {
            if (key.includes("shard")) group = true;
            t.set(key, value);
            return w;
          };
        }
        const v = Reflect.get(t, p);
        return typeof v === "function"
          ? (...a: unknown[]) => {
            const r = v.apply(t, a);
            return r === t ? w : r;
          }
          : v;
      },
    });
    return w;
  };
  const proxy = new Proxy(kv, {
    get(t, p) {
      if (p === "atomic") return () => wrapOp(t.atomic());
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
  return { kv: proxy as Deno.Kv, gate };
}

/** Round 1's accepted count and durable sum, over the shards of the instances that committed to it. */
async function shardSum(
  kv: Deno.Kv,
  run: string,
  n: number,
): Promise<{ accepted: number; sum: Float32Array }> {
  const round = (await kv.get<RoundRecord>(K.round(run, 1))).value!;
  const sum = new Float32Array(n);
  const part = new Float32Array(n);
  let accepted = round.accepted;
  for (const sh of (await readShards(kv, round)).shards) {
    accepted += sh.value!.accepted;
    await readChunks(kv, K.acc(run, 1, sh.value!.accGen!, "s"), new Uint8Array(part.buffer));
    for (let p = 0; p < n; p++) sum[p] += part[p];
  }
  return { accepted, sum };
}

/** A one-round PerFIT run over an adapter of `n` values whose budget is all of it. */
function runConfig(n: number, clientsPerRound: number) {
  return parseRunConfig({
    baseModel: "m",
    lora: { rank: 1, alpha: 1, targets: ["q"] },
    method: "perfit",
    rounds: 1,
    clientsPerRound,
    roundDeadlineMs: 3_600_000,
    adapterSize: n,
    budget: n,
    expansionTiers: { low: 1 },
    maxNorm: 1e6,
  });
}

function update(run: string, n: number, seed: number): DecodedUpdate {
  const mask = new Uint8Array(n);
  const dense = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    if ((i * 7 + seed) % 3 === 0) {
      mask[i] = 1;
      dense[i] = ((i + seed) % 11) / 10 - 0.5;
    }
  }
  const maskBits = packMask(mask);
  const values = dense.filter((_, i) => mask[i] === 1);
  let sumSq = 0;
  for (const v of values) sumSq += v * v;
  return {
    run,
    round: 1,
    samples: 1 + (seed % 5),
    metrics: {},
    maskBits,
    values,
    popcount: popcountBits(maskBits),
    sumSq,
  };
}

Deno.test("server commit queue: a full queue answers retry before folding; the stalled group then commits exactly once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-queue-" });
  const raw = await Deno.openKv(`${dir}/q.kv`);
  const { kv, gate } = gatedKv(raw);
  const coord = new Coordinator(kv);
  try {
    const n = 64;
    const run = await coord.createRun(runConfig(n, 1000));
    const clients: string[] = [];
    for (let i = 0; i < MAX_GROUP + 2; i++) clients.push((await coord.join(run.id, {})).id);

    gate.closed = true;
    const results: Promise<unknown>[] = [];
    const first = coord.upload(run.id, clients[0], 1, update(run.id, n, 0), "id-0");
    results.push(first);
    // Let the first upload's commit start (and block on the gate) before the rest queue behind it.
    while (gate.waiters.length === 0) await new Promise((r) => setTimeout(r, 5));
    for (let i = 1; i <= MAX_GROUP; i++) {
      results.push(coord.upload(run.id, clients[i], 1, update(run.id, n, i), `id-${i}`));
    }
    // Wait until all MAX_GROUP are admitted (the first is still pending too: its commit is stalled).
    while (coord.inFlight(run.id) < MAX_GROUP + 1) await new Promise((r) => setTimeout(r, 5));
    // MAX_GROUP are queued behind the stalled commit: one atomic operation's worth. The next is refused.
    await assert.rejects(
      coord.upload(run.id, clients[MAX_GROUP + 1], 1, update(run.id, n, MAX_GROUP + 1), "id-next"),
      (e) => e instanceof RetryableError && /queue is full/.test(e.message),
    );
    gate.open();
    const settled = await Promise.all(results);
    assert.equal(settled.length, MAX_GROUP + 1);
    for (const r of settled) assert.equal((r as { status: string }).status, "accepted");

    // The durable sum holds exactly the MAX_GROUP + 1 accepted uploads (not the refused one).
    const { accepted, sum } = await shardSum(raw, run.id, n);
    assert.equal(accepted, MAX_GROUP + 1);
    const ref = new Float32Array(n);
    for (let i = 0; i <= MAX_GROUP; i++) {
      const u = update(run.id, n, i);
      let r = 0;
      for (let p = 0; p < n; p++) {
        if ((u.maskBits[p >>> 5] >>> (p & 31)) & 1) {
          ref[p] += Math.fround(Math.fround(u.samples) * u.values[r++]);
        }
      }
    }
    // Folds land in arrival order, which the async hash/KV steps may permute: compare up to f32 rounding.
    for (let p = 0; p < n; p++) {
      assert.ok(Math.abs(sum[p] - ref[p]) <= 1e-4 * Math.max(1, Math.abs(ref[p])), `position ${p}`);
    }
    assert.ok(ref.some((x) => Math.abs(x) > 1), "the reference is not trivially zero");
    // Once the queue drained, the refused client's retry is accepted.
    const retry = await coord.upload(
      run.id,
      clients[MAX_GROUP + 1],
      1,
      update(run.id, n, MAX_GROUP + 1),
      "id-next",
    );
    assert.equal(retry.status, "accepted");
  } finally {
    gate.open();
    await coord.close();
    raw.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A folder that applies each fold at once (as the snapshot contract requires) but acknowledges it
 * only when told: the state of an upload whose fold landed and whose continuation has not run yet.
 */
class LateAckFolder extends InlineFolder {
  hold = false;
  snapshots = 0;
  private held: (() => void)[] = [];
  override fold(acc: Accumulators, bits: Uint32Array, values: Float32Array, samples: number): Promise<void> {
    const done = super.fold(acc, bits, values, samples);
    if (!this.hold) return done;
    return done.then(() => new Promise<void>((r) => this.held.push(r)));
  }
  override snapshot(acc: Accumulators): Promise<Float32Array> {
    this.snapshots++;
    return super.snapshot(acc);
  }
  get waiting(): number {
    return this.held.length;
  }
  release(): void {
    for (const r of this.held.splice(0)) r();
  }
}

/** The round's durable sum, and the sum of the uploads its markers name (f32 products, as folded). */
async function durableSums(kv: Deno.Kv, run: string, n: number, updates: Map<string, DecodedUpdate>) {
  const { accepted, sum } = await shardSum(kv, run, n);
  const marked = new Float32Array(n);
  let markers = 0;
  for await (const e of kv.list<UploadRecord>({ prefix: K.uploadsOf(run, 1) })) {
    markers++;
    const u = updates.get(e.value.client)!;
    let r = 0;
    for (let p = 0; p < n; p++) {
      if ((u.maskBits[p >>> 5] >>> (p & 31)) & 1) {
        marked[p] += Math.fround(Math.fround(u.samples) * u.values[r++]);
      }
    }
  }
  let off = 0;
  for (let p = 0; p < n; p++) off = Math.max(off, Math.abs(sum[p] - marked[p]));
  return { off, markers, accepted, marked };
}

/** A KV that, after every atomic commit that lands, runs `after` (which reads through the raw KV). */
function watchedKv(kv: Deno.Kv, after: () => Promise<void>): Deno.Kv {
  const wrapOp = (op: Deno.AtomicOperation): Deno.AtomicOperation => {
    const w: Deno.AtomicOperation = new Proxy(op, {
      get(t, p) {
        if (p === "commit") {
          return async () => {
            const res = await t.commit();
            if (res.ok) await after();
            return res;
          };
        }
        const v = Reflect.get(t, p);
        return typeof v === "function" ? (...a: unknown[]) => (v.apply(t, a) === t ? w : v.apply(t, a)) : v;
      },
    });
    return w;
  };
  return new Proxy(kv, {
    get(t, p) {
      if (p === "atomic") return () => wrapOp(t.atomic());
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  });
}

Deno.test("server commit queue: an upload folded into a snapshot joins that commit's group, even before its fold is acknowledged", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-lateack-" });
  const raw = await Deno.openKv(`${dir}/q.kv`);
  const n = 64;
  let runId = "";
  let updates = new Map<string, DecodedUpdate>();
  /** Every commit that lands must leave a sum that holds exactly the uploads its markers name. */
  const seen: Awaited<ReturnType<typeof durableSums>>[] = [];
  const kv = watchedKv(raw, async () => {
    if (updates.size > 0) seen.push(await durableSums(raw, runId, n, updates));
  });
  const folder = new LateAckFolder();
  const coord = new Coordinator(kv, Date.now, folder);
  try {
    const run = await coord.createRun(runConfig(n, 3));
    runId = run.id;
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await coord.join(run.id, {})).id);
    const fresh = (i: number) => update(run.id, n, i + 1); // the coordinator consumes what it folds
    updates = new Map(ids.map((id, i) => [id, fresh(i)]));

    // Client 1's fold lands in the sum but its acknowledgement waits; client 0's comes back at once
    // and starts a commit, whose snapshot holds both.
    folder.hold = true;
    const late = coord.upload(run.id, ids[1], 1, fresh(1), "id-1");
    while (folder.waiting === 0) await new Promise((r) => setTimeout(r, 1));
    folder.hold = false;
    const first = coord.upload(run.id, ids[0], 1, fresh(0), "id-0");
    while (folder.snapshots === 0) await new Promise((r) => setTimeout(r, 1));
    folder.release();
    assert.equal((await first).status, "accepted");
    assert.equal((await late).status, "accepted");

    assert.ok(seen.length >= 1, "some commit landed");
    for (const s of seen) {
      assert.equal(s.markers, s.accepted);
      assert.ok(s.off <= 1e-5, `a commit left a sum ${s.off} off the uploads its ${s.markers} markers name`);
    }
    const end = seen.at(-1)!;
    assert.equal(end.accepted, 2);
    assert.ok(end.marked.some((x) => x !== 0), "the markers name some values");
  } finally {
    folder.release();
    await coord.close();
    raw.close();
    await Deno.remove(dir, { recursive: true });
  }
});
