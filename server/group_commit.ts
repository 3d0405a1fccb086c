/**
 * Group commit: an admitted upload is folded into this instance's shard of the open round (its
 * in-memory accumulators) at once, then waits for the next commit. A commit writes the shard's sum as
 * a blob (`stage`) and, in ONE atomic operation guarded by the round's and the shard's
 * versionstamps, points the shard at it and writes every upload marker of the group (`flip`). So an
 * upload is acknowledged only once its contribution and its marker are durable together, and a
 * replay finds the marker (idempotent, never counted twice). A crash loses only unacknowledged
 * uploads, which clients retry. Commits run one at a time per run; while one is in flight the next
 * group gathers (see `gather`).
 */
import { f32Bytes, writeBlobs } from "./kv_chunks.ts";
import { strategyFor } from "../runtime/federation/strategies.ts";
import { K, type ShardList, type ShardRecord } from "./records.ts";
import type { DecodedUpdate } from "../runtime/client/wire.ts";
import type { Folder } from "./folder.ts";
import { MAX_GROUP, roundComplete } from "./admission.ts";
import { MAX_SHARDS, refreshAccepted } from "./shards.ts";
import { lastMaskRecord } from "./mask_store.ts";
import { liveGuard, type Pending, RetryableError, type RunCache, type RunState } from "./run_state.ts";
import { weightOf } from "./robust.ts";
import { foldTerms } from "../runtime/federation/aggregation.ts";
import { runLayout } from "./run_config.ts";

const DEBUG = (() => {
  try {
    return Deno.env.get("PERFIT_DEBUG") === "1";
  } catch {
    return false;
  }
})();

/** Longest a group waits for uploads still being received (see `gather`). */
const MAX_GATHER_MS = 250;

/** A group whose blobs are written and whose pointer flip is next. */
interface Staged {
  group: Pending[];
  /** The sum slot written, or null for runs without a sum (local). */
  slot: string | null;
  t0: number;
  t1: number;
}

/** Folds admitted uploads and commits them in groups. */
export class GroupCommit {
  /**
   * `instance` names this instance's shards and claims; `closeNow` closes a round that the last
   * commit filled (called inside the run's chain).
   */
  constructor(
    private readonly kv: Deno.Kv,
    private readonly folder: Folder,
    private readonly runs: RunCache,
    private readonly instance: string,
    private readonly closeNow: (st: RunState) => Promise<void>,
  ) {}

  /**
   * Takes an admitted upload: it counts as pending from the first (synchronous) statement, so the
   * caller must call this with no await between its checks and here; resolves once durable.
   */
  async commit(st: RunState, p: Pending, u: DecodedUpdate, folded?: () => void): Promise<void> {
    // From here on a duplicate of this upload waits for this one instead of folding twice.
    st.pending.set(p.client, p);
    folded?.(); // from here on `gather` counts it among the group-to-be (queued)
    const weight = weightOf(st.run.config, u.samples);
    // Own copies, as for held values: a view into the request body would keep the body alive.
    if (strategyFor(st.run.config.method).ownWeighted) p.kept = u.values.slice();
    if (st.held) {
      // Held until the round closes (and written with this upload's group commit): own copies, so
      // a view into a larger request body does not keep the whole body alive.
      st.held.set(p.client, { bits: u.maskBits.slice(), values: u.values.slice(), weight });
    } else if (st.acc) {
      // The method's aggregation makes the terms; all are posted before any await, so the folder's
      // order (which `stage`'s snapshot relies on) keeps this upload's terms together.
      const cfg = st.run.config;
      const agg = strategyFor(cfg.method).aggregation;
      const terms = foldTerms(
        agg,
        { bits: u.maskBits, values: u.values, weight },
        cfg.adapterSize,
        runLayout(cfg),
      );
      if (agg.name !== "holders") p.record.termWeights = terms.map((t) => t.weight);
      const acc = st.acc;
      // A term folds into its range of the accumulators (the whole adapter for a mask's term).
      p.folded = Promise.all(terms.map((t) => {
        const range = {
          sum: acc.sum.subarray(t.start, t.start + t.length),
          weight: acc.weight.subarray(t.start, t.start + t.length),
        };
        return this.folder.fold(range, t.bits, t.values, t.weight);
      })).then(() => {});
      p.folded.catch(() => {});
    }
    // Queued in the same synchronous stretch as its fold request: a snapshot taken from here on
    // holds its fold, and the group cut from that snapshot holds it too, whether or not the fold's
    // acknowledgement has come back yet (a sum must never become durable without its markers).
    st.queue.push(p);
    try {
      await p.folded;
    } catch (e) {
      // Inputs are validated before this, so a failed fold means a broken worker, which may have
      // left a partial fold behind: reload the run from KV (every uncommitted upload is retried).
      this.runs.kill(st, e);
      throw new RetryableError(`fold failed: ${(e as Error).message}`);
    }
    u.values = new Float32Array(0); // the values live on only in the accumulator: free them now
    if (st.dead) throw new RetryableError("run state was reloaded, retry");
    this.kickFlush(st);
    await p.done;
  }

  private kickFlush(st: RunState): void {
    if (st.dead) {
      this.runs.kill(st, new Error("state reloaded"));
      return;
    }
    if (st.flushing) return;
    st.flushing = true;
    this.runs.enqueue(st, async () => {
      try {
        while (st.queue.length > 0 && !st.dead) {
          await this.gather(st);
          if (st.dead || st.queue.length === 0) break;
          await this.flush(st);
        }
      } finally {
        st.flushing = false;
      }
      if (st.dead || !st.round || st.closing) return;
      // Other instances' commits are not seen as they land: count their shards before deciding.
      if (st.accepted < st.run.config.clientsPerRound) await refreshAccepted(this.kv, st);
      if (!st.dead && st.round && !st.closing && roundComplete(st.run.config, st.accepted)) {
        await this.closeNow(st);
      }
    }).catch(() => {});
  }

  /**
   * Before a commit, waits (at most MAX_GATHER_MS) while more uploads of the run are still being
   * received than are queued. Every commit rewrites the whole sum (4·N bytes), so a commit started
   * by the first upload of a burst would write it for that one upload while the rest of the burst
   * waits for the next. Waiting only while arrivals outnumber the queue makes a closed loop of C
   * clients settle into groups of about C/2: one committing on KV's writer thread while the other
   * is received and folded on the JS thread, so both cores work. With nothing arriving (light load)
   * it commits at once.
   */
  private async gather(st: RunState): Promise<void> {
    const until = performance.now() + MAX_GATHER_MS;
    const full = () =>
      st.queue.length >= MAX_GROUP || st.accepted + st.pending.size >= st.run.config.clientsPerRound;
    const arriving = () => this.runs.arrivals(st.run.id);
    while (!st.dead && !full() && arriving() > st.queue.length && performance.now() < until) {
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  /**
   * One group commit: `stage`, then `flip`. Must run inside the run's chain. (Pipelining the next
   * group's `stage` under this group's `flip`, with a third slot, was measured and did not help:
   * the writer thread is busy either way, and the groups got smaller.)
   */
  async flush(st: RunState): Promise<void> {
    const staged = await this.stage(st);
    await this.flip(st, staged).catch(() => {});
  }

  /**
   * First half of a group commit: takes the queued uploads, snapshots the sum and writes it and the
   * group's new masks as blobs. Nothing is visible until `flip`. Each instance keeps two sum slots
   * of its own and writes the one the round does not point at: rewriting a key with a value of the
   * same size lets SQLite overwrite its pages in place (~2.7x less writer time than inserting a fresh
   * generation and deleting the old one), and per-instance slots mean two instances (Deno Deploy
   * isolates) never write the same keys.
   */
  private async stage(st: RunState): Promise<Staged> {
    const runId = st.run.id;
    const round = st.round!;
    const t0 = performance.now();
    const maskBlob = (p: Pending): [Deno.KvKey, Uint8Array] => [
      K.mask(runId, p.client, round.index),
      new Uint8Array(p.maskBits!.buffer, p.maskBits!.byteOffset, p.maskBits!.byteLength),
    ];
    // Uploads queued now belong to this group whatever else does: their masks are written while the
    // folder catches up with the snapshot (masks are under round-specific keys: harmless if the flip
    // never happens, and swept at the next load once the round is closed).
    const early = st.queue.filter((p) => p.maskBits);
    // Each blob commit checks the run's live key: none lands once a delete of the run has begun.
    const guard = liveGuard(st);
    const earlyWrite = early.length > 0 ? writeBlobs(this.kv, early.map(maskBlob), guard) : null;
    earlyWrite?.catch(() => {});
    let group: Pending[] = [];
    try {
      // The snapshot holds every fold requested so far (the folder keeps them in order), and each
      // upload was queued when its fold was requested: the group is exactly those, so no
      // contribution becomes durable without its marker. Admission keeps them within MAX_GROUP.
      const last = st.foldSeq;
      const snapshot = st.acc ? await this.folder.snapshot(st.acc) : null;
      let take = 0;
      while (take < st.queue.length && (snapshot === null || st.queue[take].seq <= last)) take++;
      group = st.queue.splice(0, take);
      // Its marker is written only with its contribution: a fold that failed kills the state.
      await Promise.all(group.map((p) => p.folded));
      if (st.dead) throw new Error("state was reloaded");
      const slot = st.shard?.accGen === `${this.instance}.0` ? `${this.instance}.1` : `${this.instance}.0`;
      const blobs: [Deno.KvKey, Uint8Array][] = [];
      if (snapshot) blobs.push([K.acc(runId, round.index, slot, "s"), f32Bytes(snapshot)]);
      const written = new Set(early);
      for (const p of group) if (p.maskBits && !written.has(p)) blobs.push(maskBlob(p));
      // Held values are named by the upload's id, so a staged blob that never gets its marker (or a
      // stale instance's) never overwrites the values an accepted marker names.
      for (const p of st.held ? group : []) {
        const h = st.held!.get(p.client);
        if (!h) throw new Error(`held upload of ${p.client} is missing`);
        blobs.push([K.held(runId, round.index, p.client, p.uploadId), f32Bytes(h.values)]);
      }
      for (const p of group) {
        if (p.kept) blobs.push([K.held(runId, round.index, p.client, p.uploadId), f32Bytes(p.kept)]);
      }
      await Promise.all([writeBlobs(this.kv, blobs, guard), earlyWrite]);
      for (const p of group) delete p.kept;
      return { group, slot: snapshot ? slot : null, t0, t1: performance.now() };
    } catch (e) {
      for (const p of group) p.reject(new RetryableError(`commit failed: ${(e as Error).message}`));
      this.runs.kill(st, e);
      throw e;
    }
  }

  /**
   * Second half: in one atomic operation, points this instance's shard at the staged sum and writes
   * every upload marker of the group; then acknowledges the group. It is guarded by the round
   * record (unchanged until the round closes) and our shard's versionstamp (only our first commit
   * of the round also checks the shard list): instances' commits do not conflict.
   */
  private async flip(st: RunState, staged: Staged): Promise<void> {
    const { group, slot } = staged;
    const runId = st.run.id;
    try {
      if (st.dead) throw new Error("state was reloaded");
      const round = st.round!;
      const dense = strategyFor(st.run.config.method).denseMask;
      const t1 = performance.now();
      const samples = group.reduce((a, p) => a + p.record.samples, 0);
      const next: ShardRecord = {
        instance: this.instance,
        accepted: (st.shard?.accepted ?? 0) + group.length,
        samples: (st.shard?.samples ?? 0) + samples,
        accGen: slot,
        listed: true,
        ...(st.shard?.takeovers ? { takeovers: st.shard.takeovers } : {}),
      };
      const shardKey = K.shard(runId, round.index, this.instance);
      const op = this.kv.atomic()
        .check({ key: K.round(runId, round.index), versionstamp: st.roundVs })
        .check({ key: shardKey, versionstamp: st.shardVs })
        .set(shardKey, next);
      // Our first commit of the round registers the shard, so that the close cannot miss it.
      if (!st.shard?.listed) {
        const list = await this.kv.get<ShardList>(K.shardList(runId, round.index));
        const instances = list.value?.instances ?? [];
        if (instances.length >= MAX_SHARDS) {
          throw new Error(`round ${round.index} has ${MAX_SHARDS} shards, the most a close can check`);
        }
        op.check(list).set(list.key, { instances: [...instances, this.instance] } satisfies ShardList);
      }
      // Claimed for us when admitted (shards.ts): another instance that took one over since has
      // bumped our shard record, and this commit fails its shard check.
      for (const p of group) {
        p.record.shard = this.instance;
        op.set(K.upload(runId, round.index, p.client), p.record);
        if (!dense) op.set(K.lastMask(runId, p.client), lastMaskRecord(p.record));
      }
      const res = await op.commit();
      if (DEBUG) {
        console.error(
          `flush: group ${group.length}, blobs ${(staged.t1 - staged.t0).toFixed(0)} ms, flip ${
            (performance.now() - t1).toFixed(0)
          } ms`,
        );
      }
      if (!res.ok) throw new Error("the round closed (or another instance registered a shard meanwhile)");
      st.shard = next;
      st.shardVs = res.versionstamp;
      st.accepted += group.length;
      st.samples += samples;
      st.commits++;
      for (const p of group) {
        st.uploads.set(p.client, p.record);
        if (!dense) st.lastMasks.set(p.client, lastMaskRecord(p.record));
        st.pending.delete(p.client);
        p.maskBits = null;
        p.resolve();
      }
    } catch (e) {
      for (const p of group) p.reject(new RetryableError(`commit failed: ${(e as Error).message}`));
      this.runs.kill(st, e);
      throw e;
    }
  }
}
