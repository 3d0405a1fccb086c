/**
 * Run state and its cache: the in-memory view of each run that this instance serves, rebuilt from
 * KV on first use and after any failed commit. A state is the only holder of a round's accumulators
 * (8·N bytes), so the cache is bounded: past `maxLoaded` runs, the least recently used idle ones are
 * dropped and reloaded from KV when next asked for.
 */
import { notFound, RetryableError } from "./errors.ts";
import { f32Bytes, MissingBlobError, readChunks } from "./kv_chunks.ts";
import { strategyFor } from "../runtime/federation/strategies.ts";
import {
  K,
  type LastMask,
  type RoundRecord,
  type RunRecord,
  type ShardRecord,
  type UploadRecord,
} from "./records.ts";
import { bitWords, forEachBit, fullBits } from "../runtime/kernels/bits.ts";
import { runLayout } from "./run_config.ts";
import { type FoldTerm, foldTerms } from "../runtime/federation/aggregation.ts";
import { liveCheck, liveStamp } from "./run_life.ts";
import type { Accumulators, Folder } from "./folder.ts";
import { type HeldUpdate, ruleFor, weightOf } from "./robust.ts";

export { RetryableError } from "./errors.ts";

/** An admitted upload waiting for the group commit that makes it durable. */
export interface Pending {
  /** Order in which the upload's fold was requested (see `stage` in group_commit.ts). */
  seq: number;
  client: string;
  uploadId: string;
  record: UploadRecord;
  /** Kept until the group commit writes it (masks are persisted with the commit, not before). */
  maskBits: Uint32Array | null;
  /**
   * The upload's values, kept until the group commit writes them, for methods whose slices need each
   * client's own upload after the round closes (`ownWeighted`); the fold has its own copy.
   */
  kept?: Float32Array;
  /** Its fold's acknowledgement (runs that fold); a group commits only folds that succeeded. */
  folded?: Promise<void>;
  done: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** The aggregated adapter and the positions some round has covered. */
export interface GlobalAdapter {
  v: Float32Array;
  c: Uint32Array;
  gen: string | null;
  /**
   * Own-weighted methods: each position's total weight in the round that made this generation (0
   * where that round had no holder), which the slices reweigh with (server/own_weighted.ts).
   */
  w?: Float32Array;
}

/** In-memory view of one run. */
export interface RunState {
  run: RunRecord;
  runVs: string;
  /** Versionstamp of the run's live key (run_life.ts), which every write that no record check guards checks. */
  liveVs: string;
  round: RoundRecord | null;
  roundVs: string | null;
  /**
   * The open round's accumulators, for runs whose aggregation streams (mean, clipped-mean); null
   * for runs that aggregate nothing or hold their uploads instead (`held`).
   */
  acc: Accumulators | null;
  /**
   * For aggregations that combine at close (trimmed-mean, median): the open round's admitted
   * uploads by client (accepted, or pending: a failed commit reloads the whole state); else null.
   */
  held: Map<string, HeldUpdate> | null;
  /** Sequence number of the last fold requested (see `stage` in group_commit.ts). */
  foldSeq: number;
  /** This instance's shard of the open round and its versionstamp (null: none written yet). */
  shard: ShardRecord | null;
  shardVs: string | null;
  /**
   * Uploads of the open round accepted by any instance, as last read (at load, and after each of
   * our commits, which count at once): what decides that the round is full.
   */
  accepted: number;
  /** Their samples, counted alike. */
  samples: number;
  /** The open round's accepted uploads this instance knows of (its own, and all at load). */
  uploads: Map<string, UploadRecord>;
  pending: Map<string, Pending>;
  queue: Pending[];
  flushing: boolean;
  closing: boolean;
  dead: boolean;
  chain: Promise<void>;
  /** Jobs enqueued on `chain` that have not finished (a state with any is never evicted). */
  running: number;
  /** Incremented by every commit of this instance (see `stale`). */
  commits: number;
  global: GlobalAdapter | null;
  /**
   * Each client's latest mask reference as this instance last read or wrote it. Another instance
   * may have moved it on since; that only costs a mask rewrite, never a wrong one, because a
   * reference is only reused when its hash equals the upload's mask.
   */
  lastMasks: Map<string, LastMask | null>;
}

/** The check that guards a write of the run which no record check guards (run_life.ts). */
export const liveGuard = (st: RunState): Deno.AtomicCheck => liveCheck(st.run.id, st.liveVs);

export function deferred(): { done: Promise<void>; resolve: () => void; reject: (e: unknown) => void } {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const done = new Promise<void>((a, b) => {
    resolve = a;
    reject = b;
  });
  done.catch(() => {});
  return { done, resolve, reject };
}

/** The states of the runs this instance has loaded. */
export class RunCache {
  private states = new Map<string, Promise<RunState>>();
  /** The settled state behind each entry of `states` (so a dead state never evicts its successor), LRU first. */
  private loaded = new Map<string, RunState>();
  /** Uploads per run whose bodies are being received (see `expect`). */
  private arriving = new Map<string, number>();
  closed = false;

  /** `onLoad` sees every freshly loaded state before any request does. */
  constructor(
    private readonly kv: Deno.Kv,
    /** Names this instance's shards (see records.ts). */
    readonly instance: string,
    private readonly folder: Folder,
    private readonly maxLoaded: number,
    private readonly onLoad: (st: RunState) => void,
  ) {
    if (!(maxLoaded >= 1)) throw new RangeError("maxLoadedRuns must be at least 1");
  }

  /**
   * The run's state. `revalidate: false` skips the read that detects other instances' commits: the
   * upload path uses it because its group commit checks the round's versionstamp anyway (a stale
   * state fails that check, is reloaded, and the client's retry sees the truth), and the read costs
   * a KV round trip on the JS thread for every upload.
   */
  get(id: string, revalidate = true): Promise<RunState> {
    if (this.closed) return Promise.reject(new RetryableError("coordinator is shutting down"));
    let p = this.states.get(id);
    if (!p) {
      p = this.load(id).then((st) => {
        this.loaded.set(id, st);
        this.evict(st);
        this.onLoad(st);
        return st;
      });
      this.states.set(id, p);
      p.catch(() => this.states.delete(id));
    }
    return p.then(async (st) => {
      if (st.dead) {
        if (this.states.get(id) === p) this.states.delete(id);
        return this.get(id, revalidate);
      }
      if (this.loaded.get(id) === st) {
        this.loaded.delete(id);
        this.loaded.set(id, st);
      }
      if (revalidate && await this.stale(st)) {
        this.kill(st, new Error("another instance changed the run"));
        return this.get(id);
      }
      return st;
    });
  }

  /** The loaded state of a run, if any (no load, no LRU touch). */
  peek(id: string): RunState | undefined {
    return this.loaded.get(id);
  }

  /** Every loaded state. */
  all(): RunState[] {
    return [...this.loaded.values()];
  }

  /** Every state loaded or being loaded. */
  loading(): Promise<RunState>[] {
    return [...this.states.values()];
  }

  /** Ids of the loaded runs, least recently used first. */
  ids(): string[] {
    return [...this.loaded.keys()];
  }

  clear(): void {
    this.states.clear();
    this.loaded.clear();
  }

  /** Announces an upload body being received for `id`; the returned function (idempotent) ends it. */
  expect(id: string): () => void {
    this.arriving.set(id, (this.arriving.get(id) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.arriving.get(id) ?? 1) - 1;
      if (n > 0) this.arriving.set(id, n);
      else this.arriving.delete(id);
    };
  }

  arrivals(id: string): number {
    return this.arriving.get(id) ?? 0;
  }

  /** Serializes commits and closes per run. */
  enqueue<T>(st: RunState, f: () => Promise<T>): Promise<T> {
    st.running++;
    const p = st.chain.then(f);
    const done = () => {
      st.running--;
    };
    st.chain = p.then(done, done);
    return p;
  }

  /**
   * The fold terms of the client's accepted upload in the round that made the run's global, as the
   * method folded them (null: it had none): what an own-weighted slice counts again.
   */
  async ownTerms(st: RunState, clientId: string): Promise<FoldTerm[] | null> {
    const rec = (await this.kv.get<UploadRecord>(K.upload(st.run.id, st.run.globalRound, clientId))).value;
    if (!rec) return null;
    try {
      const own = (await readHeld(this.kv, st.run, [rec])).get(clientId);
      const cfg = st.run.config;
      return own
        ? foldTerms(strategyFor(cfg.method).aggregation, own, cfg.adapterSize, runLayout(cfg))
        : null;
    } catch (e) {
      // A close in flight on another instance moved the run on and dropped what this state names.
      if (!(e instanceof MissingBlobError)) throw e;
      this.kill(st, e);
      throw new RetryableError("the run moved on while reading the client's upload, retry");
    }
  }

  /** Drops a state whose memory may disagree with KV; everything waiting on it is told to retry. */
  kill(st: RunState, why: unknown): void {
    st.dead = true;
    this.forget(st);
    const err = new RetryableError(`state reloaded after a failed commit: ${(why as Error)?.message ?? why}`);
    for (const p of [...st.queue, ...st.pending.values()]) p.reject(err);
    st.queue = [];
    st.pending.clear();
  }

  private forget(st: RunState): void {
    if (this.loaded.get(st.run.id) === st) {
      this.loaded.delete(st.run.id);
      this.states.delete(st.run.id);
    }
  }

  /** Nothing of the run is in flight here: dropping the state loses nothing that KV lacks. */
  private idle(st: RunState): boolean {
    return st.running === 0 && st.pending.size === 0 && st.queue.length === 0 &&
      !st.flushing && !st.closing && this.arrivals(st.run.id) === 0;
  }

  /**
   * Past the bound, drops idle states, least recently used first. A dropped state is marked dead so
   * that a request still holding it reloads (or retries) rather than commit from a detached copy
   * that `settled` and `close` no longer see. Busy states stay: the cache may exceed the bound by
   * the runs with work in flight, never by idle ones.
   */
  private evict(keep: RunState): void {
    for (const st of this.loaded.values()) {
      if (this.loaded.size <= this.maxLoaded) return;
      if (st === keep || !this.idle(st)) continue;
      st.dead = true;
      this.forget(st);
    }
  }

  /**
   * True when another instance (a Deno Deploy isolate, a second process on the same KV) committed to
   * this run since we cached it. Our own commits in flight are not evidence: skip while one runs.
   */
  private async stale(st: RunState): Promise<boolean> {
    if (st.closing) return false;
    const commits = st.commits;
    const keys: Deno.KvKey[] = [K.run(st.run.id), K.live(st.run.id)];
    if (st.round) keys.push(K.round(st.run.id, st.round.index));
    const [r, live, ro] = await this.kv.getMany(keys);
    if (st.dead || st.closing) return false;
    // A delete has begun (run_life.ts): the reload answers 404.
    if (live.versionstamp !== st.liveVs) return true;
    // Only closes (ours or theirs) touch the run record, so it is checked even while we flush or
    // after a group commit of ours landed during the read (at worst a close of ours that landed
    // meanwhile makes us reload once).
    if (r.versionstamp !== st.runVs) return true;
    if (st.commits !== commits) return false;
    return !st.flushing && ro !== undefined && ro.versionstamp !== st.roundVs;
  }

  /** Loads a run; retries when another instance replaced a blob between our record and chunk reads. */
  private async load(id: string): Promise<RunState> {
    for (let attempt = 0;; attempt++) {
      try {
        return await this.loadOnce(id);
      } catch (e) {
        if (!(e instanceof MissingBlobError) || attempt >= 4) throw e;
      }
    }
  }

  private async loadOnce(id: string): Promise<RunState> {
    const liveVs = await liveStamp(this.kv, id);
    const re = await this.kv.get<RunRecord>(K.run(id));
    if (!re.value) throw notFound(`no run ${id}`);
    const run = re.value;
    const st: RunState = {
      run,
      runVs: re.versionstamp!,
      liveVs,
      round: null,
      roundVs: null,
      acc: null,
      held: null,
      foldSeq: 0,
      shard: null,
      shardVs: null,
      accepted: 0,
      samples: 0,
      uploads: new Map(),
      pending: new Map(),
      queue: [],
      flushing: false,
      closing: false,
      dead: false,
      chain: Promise.resolve(),
      running: 0,
      commits: 0,
      global: null,
      lastMasks: new Map(),
    };
    if (run.status === "active") {
      const ro = await this.kv.get<RoundRecord>(K.round(id, run.round));
      if (!ro.value) throw new Error(`run ${id}: round ${run.round} record missing`);
      st.round = ro.value;
      st.roundVs = ro.versionstamp;
      for await (const e of this.kv.list<UploadRecord>({ prefix: K.uploadsOf(id, run.round) })) {
        st.uploads.set(e.value.client, e.value);
      }
      const own = await this.kv.get<ShardRecord>(K.shard(id, run.round, this.instance));
      st.shard = own.value;
      st.shardVs = own.versionstamp;
      st.accepted = st.uploads.size;
      st.samples = [...st.uploads.values()].reduce((a, u) => a + u.samples, 0);
      if (strategyFor(run.config.method).aggregates && ruleFor(run.config).streams) {
        // Our own shard only: other instances' shards are theirs until the close merges them.
        st.acc = this.folder.alloc(run.config.adapterSize);
        if (own.value?.accGen) {
          await readChunks(this.kv, K.acc(id, run.round, own.value.accGen, "s"), f32Bytes(st.acc.sum));
          const mine = [...st.uploads.values()].filter((u) => u.shard === this.instance);
          await rebuildWeight(this.kv, run, mine, st.acc.weight);
        }
      } else if (strategyFor(run.config.method).aggregates) {
        st.held = await readHeld(this.kv, run, st.uploads.values());
      }
    }
    return st;
  }
}

/**
 * Held uploads read back from KV: each accepted upload's values (stored under its upload id by the
 * group commit that accepted it) at its stored mask (dense runs: all ones).
 */
export async function readHeld(
  kv: Deno.Kv,
  run: RunRecord,
  uploads: Iterable<UploadRecord>,
): Promise<Map<string, HeldUpdate>> {
  const n = run.config.adapterSize;
  const held = new Map<string, HeldUpdate>();
  const dense = strategyFor(run.config.method).denseMask ? fullBits(n) : null;
  for (const u of uploads) {
    let bits = dense;
    if (!bits) {
      bits = new Uint32Array(bitWords(n));
      await readChunks(kv, K.mask(run.id, u.client, u.maskRound), new Uint8Array(bits.buffer));
    }
    const values = new Float32Array(u.popcount);
    await readChunks(kv, K.held(run.id, u.round, u.client, u.uploadId), f32Bytes(values));
    held.set(u.client, { bits, values, weight: weightOf(run.config, u.samples) });
  }
  return held;
}

/**
 * Adds to `w` the weights the fold terms of `uploads` added. The weight accumulator is not
 * persisted: it is exactly what the accepted uploads' fold terms added, and their positions follow
 * from the masks, which are stored anyway (FedIT: all ones). Halves the bytes of every commit. A term
 * weighs the run's weight of the upload's samples, or (methods with a fold of their own, e.g.
 * HetLoRA) the weight recorded with the upload.
 */
export async function rebuildWeight(
  kv: Deno.Kv,
  run: RunRecord,
  uploads: Iterable<UploadRecord>,
  w: Float32Array,
): Promise<void> {
  const cfg = run.config;
  const n = cfg.adapterSize;
  const strategy = strategyFor(cfg.method);
  const agg = strategy.aggregation;
  const bits = strategy.denseMask ? fullBits(n) : new Uint32Array(bitWords(n));
  for (const u of uploads) {
    if (!strategy.denseMask) {
      await readChunks(kv, K.mask(run.id, u.client, u.maskRound), new Uint8Array(bits.buffer));
    }
    const shapes = agg.shapes(bits, n, runLayout(cfg));
    const weights = agg.name === "holders" ? [weightOf(cfg, u.samples)] : u.termWeights;
    if (!weights || weights.length !== shapes.length) {
      throw new Error(`upload of ${u.client} lacks its term weights`);
    }
    shapes.forEach((sh, t) => {
      const x = Math.fround(weights[t]);
      forEachBit(sh.bits, (p) => (w[sh.start + p] += x));
    });
  }
}
