/**
 * Round close: finalizes the open round's accumulators into a new global adapter generation and, in
 * one atomic operation guarded by the run's and the round's versionstamps, closes the round (with
 * its summary), points the run at the new adapter and opens the next round. The strategy of the
 * run's method decides what is aggregated and how the round's metrics are summarized.
 */
import { deletePrefix, f32Bytes, MissingBlobError, readChunks, writeChunks } from "./kv_chunks.ts";
import { finalizeInto } from "./aggregate.ts";
import { type MethodStrategy, strategyFor } from "../runtime/federation/strategies.ts";
import { K, type RoundRecord, type RoundSummary, type RunRecord, type UploadRecord } from "./records.ts";
import type { RunConfig } from "./run_config.ts";
import { bitWords, popcountBits } from "../runtime/kernels/bits.ts";
import { kernels } from "../runtime/kernels/mod.ts";
import { b64url } from "./tokens.ts";
import type { Folder } from "./folder.ts";
import { closeDue } from "./admission.ts";
import type { GroupCommit } from "./group_commit.ts";
import type { MaskStore } from "./mask_store.ts";
import { type GlobalAdapter, RetryableError, type RunCache, type RunState } from "./run_state.ts";

function newGen(): string {
  return `${Date.now().toString(36)}-${b64url(crypto.getRandomValues(new Uint8Array(6)))}`;
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

/** The round's summary: its uploads and samples, and its metrics as the run's strategy aggregates them. */
export function summarize(strategy: MethodStrategy, uploads: UploadRecord[], covered: number): RoundSummary {
  const samples = uploads.reduce((a, u) => a + u.samples, 0);
  return { clients: uploads.length, samples, metrics: strategy.aggregateMetrics(uploads), covered };
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
  ) {}

  /** Closes the open round when its deadline passed with a quorum in. */
  async advance(st: RunState): Promise<void> {
    const r = st.round;
    if (!r || st.closing || r.status !== "open") return;
    const cfg = st.run.config;
    if (closeDue(cfg, r, st.queue.length, this.now())) await this.closeRound(st);
  }

  closeRound(st: RunState): Promise<void> {
    if (st.closing) return st.chain;
    return this.runs.enqueue(st, () => this.closeNow(st));
  }

  /** Aggregates and closes the open round, opening the next. Must run inside the run's chain. */
  async closeNow(st: RunState): Promise<void> {
    if (st.dead || st.closing || !st.round || st.round.status !== "open") return;
    st.closing = true;
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
      if (st.acc && round.accepted > 0) {
        const old = await this.loadGlobal(st);
        newGlobal = { v: old.v.slice(), c: old.c.slice(), gen: newGen() };
        finalizeInto(kernels(), st.acc.sum, st.acc.weight, newGlobal.v, newGlobal.c);
        coveredCount = popcountBits(newGlobal.c);
        await writeChunks(this.kv, K.global(run.id, newGlobal.gen!, "v"), f32Bytes(newGlobal.v));
        await writeChunks(this.kv, K.global(run.id, newGlobal.gen!, "c"), new Uint8Array(newGlobal.c.buffer));
        globalGen = newGlobal.gen;
        globalRound = round.index;
      }
      const closedUploads = [...st.uploads.values()];
      const summary = summarize(strategyFor(cfg.method), closedUploads, coveredCount);
      const closed: RoundRecord = { ...round, status: "closed", closedAt: t, summary };
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
      const nextRound = last ? null : openRound(run.id, round.index + 1, t, cfg);
      if (nextRound) op.set(K.round(run.id, nextRound.index), nextRound);
      const res = await op.commit();
      if (!res.ok) throw new Error("run changed underneath (another instance?)");
      const oldGlobal = run.globalGen;
      st.run = nextRun;
      st.runVs = res.versionstamp;
      st.commits++;
      st.round = nextRound;
      st.roundVs = nextRound ? res.versionstamp : null;
      st.uploads.clear();
      if (newGlobal) st.global = newGlobal;
      if (st.acc) {
        st.acc.sum.fill(0);
        st.acc.weight.fill(0);
      }
      this.cleanUp(deletePrefix(this.kv, K.accRound(run.id, round.index)));
      this.cleanUp(this.masks.dropReplacedMasks(run.id, cfg.adapterSize, closedUploads));
      if (newGlobal && oldGlobal) this.cleanUp(deletePrefix(this.kv, K.globalGen(run.id, oldGlobal)));
    } catch (e) {
      this.runs.kill(st, e);
      throw new RetryableError(`closing the round failed: ${(e as Error).message}`);
    } finally {
      st.closing = false;
    }
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
