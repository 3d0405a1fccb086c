/**
 * Round close: finalizes the open round's accumulators into a new global adapter generation and, in
 * one atomic operation guarded by the run's and the round's versionstamps, closes the round (with
 * its summary), points the run at the new adapter and opens the next round. The strategy of the
 * run's method decides what is aggregated and how the round's metrics are summarized.
 */
import { type EventLog, silentLog } from "./event_log.ts";
import { deletePrefix, f32Bytes, MissingBlobError, readChunks, writeChunks } from "./kv_chunks.ts";
import { finalizeInto } from "./aggregate.ts";
import { type MethodStrategy, type ReportedMetrics, strategyFor } from "../runtime/federation/strategies.ts";
import { K, type RoundRecord, type RoundSummary, type RunRecord, type UploadRecord } from "./records.ts";
import type { RunConfig } from "./run_config.ts";
import { bitWords, popcountBits } from "../runtime/kernels/bits.ts";
import { kernels } from "../runtime/kernels/mod.ts";
import { b64url } from "./tokens.ts";
import type { Folder } from "./folder.ts";
import { closeDue, METRIC_NAME, roundComplete } from "./admission.ts";
import type { GroupCommit } from "./group_commit.ts";
import type { MaskStore } from "./mask_store.ts";
import {
  type GlobalAdapter,
  liveGuard,
  readHeld,
  rebuildWeight,
  RetryableError,
  type RunCache,
  type RunState,
} from "./run_state.ts";
import { addOtherSums, readShards, refreshAccepted, uploadsOf } from "./shards.ts";
import { combineHeld, type HeldUpdate, ruleFor, weightOf } from "./robust.ts";

/**
 * Most metric names a round summary keeps. A summary is one KV value (64 KiB at most) written by
 * the close: with this many names of ≤ 32 characters it stays around 1 KiB whatever clients report.
 */
export const SUMMARY_METRICS = 16;

/** A fresh global generation id; it starts with its creation time, which the load sweep reads. */
export function newGen(t: number): string {
  return `${Math.max(0, Math.floor(t)).toString(36)}-${b64url(crypto.getRandomValues(new Uint8Array(6)))}`;
}

/** Creation time of a generation made by `newGen` (NaN for any other id). */
export function genTime(gen: string): number {
  const i = gen.indexOf("-");
  return i > 0 && /^[0-9a-z]+$/.test(gen.slice(0, i)) ? parseInt(gen.slice(0, i), 36) : NaN;
}

export function openRound(run: string, index: number, t: number, cfg: RunConfig): RoundRecord {
  return {
    run,
    index,
    status: "open",
    openedAt: t,
    deadline: t + cfg.roundDeadlineMs,
    closedAt: null,
    accepted: 0,
    samples: 0,
    accGen: null,
    summary: null,
  };
}

/**
 * The round's summary: its uploads and samples, and its metrics as the run's strategy aggregates
 * them (each upload weighing `weigh(samples)`), over at most SUMMARY_METRICS well-formed names (those the most uploads report; ties by name).
 */
export function summarize(
  strategy: MethodStrategy,
  uploads: UploadRecord[],
  covered: number,
  weigh: (samples: number) => number = (samples) => samples,
): RoundSummary {
  const samples = uploads.reduce((a, u) => a + u.samples, 0);
  const counts = new Map<string, number>();
  for (const u of uploads) {
    for (const k of Object.keys(u.metrics)) if (METRIC_NAME.test(k)) counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  const keep = new Set(
    [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .slice(0, SUMMARY_METRICS).map(([k]) => k),
  );
  const kept = (m: Record<string, number>) =>
    Object.fromEntries(Object.entries(m).filter(([k]) => keep.has(k)));
  // Metrics are weighed like the uploads' values (the run's `weighting`), so an inflated sample
  // claim moves the round's loss no more than its aggregate.
  const reported: ReportedMetrics[] = uploads.map((u) => ({
    samples: weigh(u.samples),
    metrics: kept(u.metrics),
  }));
  return { clients: uploads.length, samples, metrics: kept(strategy.aggregateMetrics(reported)), covered };
}

/** Closes rounds and serves the global adapter they produce. */
export class RoundCloser {
  constructor(
    private readonly kv: Deno.Kv,
    private readonly now: () => number,
    private readonly folder: Folder,
    private readonly runs: RunCache,
    private readonly commits: GroupCommit,
    private readonly masks: MaskStore,
    private readonly cleanUp: (work: Promise<void>) => void,
    private readonly events: EventLog = silentLog,
  ) {}

  /** Closes the open round when its deadline passed with a quorum in, or when every slot is taken. */
  async advance(st: RunState): Promise<void> {
    const r = st.round;
    if (!r || st.closing || r.status !== "open") return;
    const cfg = st.run.config;
    const due = () =>
      closeDue(cfg, r, st.accepted + st.queue.length, this.now()) || roundComplete(cfg, st.accepted);
    // Past the deadline, count what the other instances accepted before deciding there is no quorum.
    if (!due() && this.now() >= r.deadline) await refreshAccepted(this.kv, st);
    if (st.round === r && !st.closing && due()) await this.closeRound(st);
  }

  /**
   * Closes the open round once the run's earlier commits and closes are done. The round is named
   * when asked: by the time the chain gets to it, a close already queued may have opened the next
   * round, which this request has no reason to close.
   */
  closeRound(st: RunState): Promise<void> {
    if (st.closing) return st.chain;
    const index = st.round?.index;
    return this.runs.enqueue(st, () => st.round?.index === index ? this.closeNow(st) : Promise.resolve());
  }

  /** Aggregates and closes the open round, opening the next. Must run inside the run's chain. */
  async closeNow(st: RunState): Promise<void> {
    if (st.dead || st.closing || !st.round || st.round.status !== "open") return;
    st.closing = true;
    /** A global generation written for this close and not (known to be) committed. */
    let uncommitted: string | null = null;
    const run = st.run;
    try {
      // No upload is admitted while closing; wait for the folds admitted before (they queue up).
      await this.folder.drain();
      while (st.queue.length > 0 && !st.dead) await this.commits.flush(st).catch(() => {});
      if (st.dead) return;
      const round = st.round;
      const cfg = run.config;
      const t = this.now();
      let globalGen = run.globalGen;
      let globalRound = run.globalRound;
      let coveredCount = 0;
      let newGlobal: GlobalAdapter | null = null;
      // Every instance's shard and upload, read after our own are durable; the close commits only
      // if none of the shards, nor their list (where a new shard registers), changed since.
      const shards = await readShards(this.kv, round);
      const closedUploads = await uploadsOf(this.kv, run.id, round.index);
      const me = this.runs.instance;
      const others = closedUploads.filter((u) => u.shard !== me);
      if ((st.acc || st.held) && closedUploads.length > 0) {
        // A stack is one round's update, merged into the clients' bases: nothing of an earlier one
        // carries over (a position no upload reached this round is zero, not last round's value).
        const fresh = strategyFor(cfg.method).stacks;
        const old = fresh ? null : await this.loadGlobal(st);
        newGlobal = old ? { v: old.v.slice(), c: old.c.slice(), gen: newGen(t) } : {
          v: new Float32Array(cfg.adapterSize),
          c: new Uint32Array(bitWords(cfg.adapterSize)),
          gen: newGen(t),
        };
        if (st.acc) {
          // Our shard is in memory; the others' sums are read and their weights rebuilt.
          const sum = st.acc.sum.slice();
          const weight = st.acc.weight.slice();
          await addOtherSums(this.kv, round, shards, me, sum);
          await rebuildWeight(this.kv, run, others, weight);
          finalizeInto(kernels(), sum, weight, newGlobal.v, newGlobal.c);
          if (strategyFor(cfg.method).ownWeighted) newGlobal.w = weight;
        } else {
          // The rule combines each position's holders: the accepted uploads only (every admitted
          // upload is accepted by now, the queue having been flushed above).
          const read = await readHeld(this.kv, run, others.filter((u) => !st.held!.has(u.client)));
          const held: HeldUpdate[] = closedUploads.map((u) => {
            const h = st.held!.get(u.client) ?? read.get(u.client);
            if (!h) throw new Error(`held upload of ${u.client} is missing`);
            return h;
          });
          combineHeld(held, cfg.adapterSize, ruleFor(cfg).combine!, newGlobal.v, newGlobal.c);
        }
        coveredCount = popcountBits(newGlobal.c);
        uncommitted = newGlobal.gen;
        // Written before the commit that names it: each chunk commit checks the run's live key.
        const guard = liveGuard(st);
        await writeChunks(this.kv, K.global(run.id, newGlobal.gen!, "v"), f32Bytes(newGlobal.v), guard);
        await writeChunks(
          this.kv,
          K.global(run.id, newGlobal.gen!, "c"),
          new Uint8Array(newGlobal.c.buffer),
          guard,
        );
        if (newGlobal.w) {
          await writeChunks(this.kv, K.global(run.id, newGlobal.gen!, "w"), f32Bytes(newGlobal.w), guard);
        }
        globalGen = newGlobal.gen;
        globalRound = round.index;
      }
      const summary = summarize(
        strategyFor(cfg.method),
        closedUploads,
        coveredCount,
        (samples) => weightOf(cfg, samples),
      );
      const closed: RoundRecord = {
        ...round,
        status: "closed",
        closedAt: t,
        accepted: closedUploads.length,
        samples: summary.samples,
        shards: shards.list.value?.instances ?? [],
        summary,
      };
      const last = round.index >= cfg.rounds;
      const nextRun: RunRecord = {
        ...run,
        round: round.index + 1,
        status: last ? "done" : "active",
        globalGen,
        globalRound,
      };
      const op = this.kv.atomic()
        .check({ key: K.run(run.id), versionstamp: st.runVs })
        .check({ key: K.round(run.id, round.index), versionstamp: st.roundVs })
        .set(K.round(run.id, round.index), closed)
        .set(K.run(run.id), nextRun);
      for (const s of [shards.list, ...shards.shards]) op.check({ key: s.key, versionstamp: s.versionstamp });
      const nextRound = last ? null : openRound(run.id, round.index + 1, t, cfg);
      if (nextRound) op.set(K.round(run.id, nextRound.index), nextRound);
      const res = await op.commit();
      if (!res.ok) throw new Error("run changed underneath (another instance?)");
      uncommitted = null;
      const oldGlobal = run.globalGen;
      st.run = nextRun;
      st.runVs = res.versionstamp;
      st.commits++;
      st.round = nextRound;
      st.roundVs = nextRound ? res.versionstamp : null;
      st.uploads.clear();
      st.accepted = 0;
      st.samples = 0;
      st.shard = null;
      st.shardVs = null;
      if (newGlobal) st.global = newGlobal;
      if (st.acc) {
        st.acc.sum.fill(0);
        st.acc.weight.fill(0);
      }
      st.held?.clear();
      this.events.emit({
        kind: "round_closed",
        run: run.id,
        round: round.index,
        clients: summary.clients,
        samples: summary.samples,
        seconds: (t - round.openedAt) / 1000,
      });
      this.events.emit(
        last
          ? { kind: "run_finished", run: run.id, rounds: round.index }
          : { kind: "round_opened", run: run.id, round: round.index + 1 },
      );
      this.cleanUp(deletePrefix(this.kv, K.accRound(run.id, round.index)));
      if (st.held) this.cleanUp(deletePrefix(this.kv, K.heldRound(run.id, round.index)));
      // An own-weighted run's slices read the uploads of the round that made the global: the ones
      // before it are read no more.
      if (newGlobal?.w && run.globalRound > 0) {
        this.cleanUp(deletePrefix(this.kv, K.heldRound(run.id, run.globalRound)));
      }
      this.cleanUp(this.masks.dropReplacedMasks(run.id, cfg.adapterSize, closedUploads));
      if (newGlobal && oldGlobal) this.cleanUp(deletePrefix(this.kv, K.globalGen(run.id, oldGlobal)));
    } catch (e) {
      // Each failed attempt would otherwise leave one adapter copy behind for good.
      if (uncommitted) this.cleanUp(this.dropUnlessCurrent(run.id, uncommitted));
      this.runs.kill(st, e);
      throw new RetryableError(`closing the round failed: ${(e as Error).message}`);
    } finally {
      st.closing = false;
    }
  }

  /** Deletes a global generation unless the run points at it (a commit that threw may have landed). */
  private async dropUnlessCurrent(runId: string, gen: string): Promise<void> {
    const run = (await this.kv.get<RunRecord>(K.run(runId))).value;
    if (run && run.globalGen !== gen) await deletePrefix(this.kv, K.globalGen(runId, gen));
  }

  /** The run's current global adapter (zeros and nothing covered before the first aggregation). */
  async loadGlobal(st: RunState): Promise<GlobalAdapter> {
    const gen = st.run.globalGen;
    if (st.global && st.global.gen === gen) return st.global;
    const n = st.run.config.adapterSize;
    const g: GlobalAdapter = { v: new Float32Array(n), c: new Uint32Array(bitWords(n)), gen };
    if (gen) {
      try {
        await readChunks(this.kv, K.global(st.run.id, gen, "v"), f32Bytes(g.v));
        await readChunks(this.kv, K.global(st.run.id, gen, "c"), new Uint8Array(g.c.buffer));
        if (strategyFor(st.run.config.method).ownWeighted) {
          g.w = new Float32Array(n);
          await readChunks(this.kv, K.global(st.run.id, gen, "w"), f32Bytes(g.w));
        }
      } catch (e) {
        if (!(e instanceof MissingBlobError)) throw e;
        this.runs.kill(st, e);
        throw new RetryableError("the run moved on while reading its adapter, retry");
      }
    }
    st.global = g;
    return g;
  }
}
