/**
 * What the admin does to a run once it exists: cancel it, delete it, download its global adapter.
 *
 * Cancel. One atomic operation, guarded by the versionstamps of the run record and of its open round,
 * makes the run "cancelled" (final, like "done") and closes that round without a summary: nothing of it
 * is aggregated. Rewriting the round record is what stops every instance. A group commit or a close of
 * another instance that still holds the run checks those versionstamps, fails, reloads the run and finds
 * it cancelled; a join checks the run record the same way (clients.ts). From then on joins, tasks,
 * uploads and invites are refused with 409 `run_cancelled`; reads (the run, metrics, masks, slices, the
 * global adapter) still answer. On this instance the cancel runs after the run's commits and closes in
 * flight (its chain), and uploads still waiting for a commit are told to retry, which then is refused.
 *
 * Delete. An active run is cancelled first, so that no commit guarded by the run's records lands any
 * more, on any instance. Then, in a commit of its own, the run's live key is marked deleting
 * (run_life.ts), so that no other write lands either: the blobs another instance writes before its
 * commit (an upload's sum and masks, a close's adapter), claims, invites and revocations all check that
 * key. Whatever landed before the mark is then found by the listing of every key family of the run
 * (records.ts `runFamilies`), which deletes them, the run record and the live key last: a delete cut
 * short by a crash can so be repeated, and nothing of the run is left.
 */
import { acceptedOf, readShards, samplesOf } from "./shards.ts";
import { ApiError, conflict, notFound } from "./errors.ts";
import { deletePrefix } from "./kv_chunks.ts";
import { K, type RoundRecord, runFamilies, type RunRecord } from "./records.ts";
import { type GlobalAdapter, RetryableError, type RunCache } from "./run_state.ts";
import { markDeleting } from "./run_life.ts";
import type { RoundCloser } from "./round_close.ts";
import type { EventLog } from "./event_log.ts";
import { strategyFor } from "../runtime/federation/strategies.ts";
import { encodeGlobalAdapter } from "../runtime/client/global_adapter.ts";

/** The answer of the adapter route: the global adapter body (runtime/client/global_adapter.ts). */
export function globalAdapterBody(run: RunRecord, g: GlobalAdapter): Uint8Array {
  const cfg = run.config;
  return encodeGlobalAdapter({
    run: run.id,
    round: run.globalRound,
    status: run.status,
    method: cfg.method,
    baseModel: cfg.baseModel,
    lora: cfg.lora,
    rank: cfg.lora.rank * Math.max(...Object.values(cfg.expansionTiers)),
    adapterSize: cfg.adapterSize,
    model: cfg.model ?? null,
    values: g.v,
    covered: g.c,
  });
}

/** Cancel, delete and the global adapter of runs, over the coordinator's run cache and closer. */
export class RunAdmin {
  constructor(
    private readonly kv: Deno.Kv,
    private readonly now: () => number,
    private readonly runs: RunCache,
    private readonly closer: RoundCloser,
    private readonly events: EventLog,
    private readonly cleanUp: (work: Promise<void>) => void,
  ) {}

  /** Cancels an active run (404 unknown, 409 `run_done` / `run_cancelled` when it already ended). */
  async cancel(id: string): Promise<RunRecord> {
    const run = await this.afterChain(id, () => this.cancelOnce(id));
    this.events.emit({ kind: "run_cancelled", run: id, round: run.round });
    // The cancelled round's accumulators and held values: nothing reads them any more.
    this.cleanUp(deletePrefix(this.kv, K.accRound(id, run.round)));
    this.cleanUp(deletePrefix(this.kv, K.heldRound(id, run.round)));
    return run;
  }

  /** Deletes every key of the run (404 when there is none). */
  async delete(id: string): Promise<void> {
    const first = (await this.kv.get<RunRecord>(K.run(id))).value;
    if (!first) throw notFound(`no run ${id}`);
    if (first.status === "active") {
      try {
        await this.afterChain(id, () => this.cancelOnce(id));
      } catch (e) {
        // It ended meanwhile (its last round closed, or another cancel): nothing writes to it either.
        if (!(e instanceof ApiError && e.status === 409)) throw e;
      }
    }
    // From the mark on no write of the run lands, here or elsewhere: the listing finds all there is.
    await markDeleting(this.kv, id, this.now());
    this.drop(id);
    const { keys, prefixes } = runFamilies(id);
    for (const p of prefixes) await deletePrefix(this.kv, p);
    const last = await this.kv.get<RunRecord>(K.run(id));
    if (!last.value) throw notFound(`no run ${id}`); // a concurrent delete finished first
    const op = this.kv.atomic().check(last);
    for (const k of keys) op.delete(k);
    if (!(await op.commit()).ok) throw new RetryableError(`run ${id} changed while being deleted, retry`);
    this.drop(id);
    this.events.emit({ kind: "run_deleted", run: id });
  }

  /**
   * The run's current global adapter and the run as of it (after a close in flight has landed); 409
   * `no_global_adapter` for a method that aggregates nothing.
   */
  async globalAdapter(id: string): Promise<{ run: RunRecord; adapter: GlobalAdapter }> {
    let st = await this.runs.get(id);
    await this.closer.advance(st);
    if (st.closing) {
      await st.chain;
      st = await this.runs.get(id);
    }
    const method = st.run.config.method;
    if (!strategyFor(method).aggregates) {
      throw conflict(
        "no_global_adapter",
        `${method} runs aggregate nothing: each client keeps its own adapter`,
      );
    }
    return { run: st.run, adapter: await this.closer.loadGlobal(st) };
  }

  /**
   * Runs `f` after this instance's commits and closes of the run (when it holds the run), then drops
   * the run's state here: uploads that were waiting for a commit retry, and find what `f` did.
   */
  private async afterChain<T>(id: string, f: () => Promise<T>): Promise<T> {
    const st = this.runs.peek(id);
    const out = st && !st.dead ? await this.runs.enqueue(st, f) : await f();
    this.drop(id);
    return out;
  }

  private drop(id: string): void {
    const st = this.runs.peek(id);
    if (st) this.runs.kill(st, new Error(`run ${id} was cancelled or deleted by the admin`));
  }

  private async cancelOnce(id: string): Promise<RunRecord> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const re = await this.kv.get<RunRecord>(K.run(id));
      const run = re.value;
      if (!run) throw notFound(`no run ${id}`);
      if (run.status === "done") {
        throw conflict("run_done", `run ${id} has finished: only an active run can be cancelled`);
      }
      if (run.status === "cancelled") throw conflict("run_cancelled", `run ${id} is already cancelled`);
      const ro = await this.kv.get<RoundRecord>(K.round(id, run.round));
      const t = this.now();
      const next: RunRecord = { ...run, status: "cancelled", cancelledAt: t };
      const op = this.kv.atomic().check(re).check(ro).set(K.run(id), next);
      if (ro.value?.status === "open") {
        // The closed round counts what its shards accepted; a shard commit meanwhile fails this one.
        const shards = await readShards(this.kv, ro.value);
        for (const sh of [shards.list, ...shards.shards]) op.check(sh);
        const samples = samplesOf(ro.value, shards);
        const accepted = acceptedOf(ro.value, shards);
        op.set(K.round(id, run.round), { ...ro.value, status: "closed", closedAt: t, accepted, samples });
      }
      if ((await op.commit()).ok) return next;
    }
    throw new RetryableError(`run ${id} kept changing while being cancelled, retry`);
  }
}
