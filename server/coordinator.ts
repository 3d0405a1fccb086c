/**
 * The federation state machine over Deno KV (Flower vocabulary: the strategy is parameter-wise
 * FedAvg over masks; `configure_fit` is the task, `aggregate_fit` streams).
 *
 * Streaming aggregation with group commit: an accepted upload is folded into the open round's
 * in-memory accumulators (sum, weight: 8·N bytes, independent of the number of clients) as soon as
 * it arrives, then waits for the next commit. A commit writes the accumulators as a new chunked
 * blob generation and, in ONE atomic operation guarded by the round record's versionstamp, flips the
 * round's pointer to it and writes every upload marker of the group. So an upload is acknowledged
 * only once its contribution and its marker are durable together, and a replay finds the marker
 * (idempotent, never counted twice). A crash loses only unacknowledged uploads, which clients retry.
 * Commits run one at a time per run; while one is in flight the next group gathers (see `gather`).
 */
import { conflict, gone, invalid, notFound } from "./errors.ts";
import {
  chunkCount,
  deleteChunks,
  deletePrefix,
  f32Bytes,
  MissingBlobError,
  readChunks,
  writeBlobs,
  writeChunks,
} from "./kv_chunks.ts";
import type { TaskInfo } from "../runtime/client/federated_client.ts";
import { finalizeInto } from "./aggregate.ts";
import { type MethodStrategy, strategyFor } from "../runtime/federation/strategies.ts";
import {
  type ClientRecord,
  K,
  type LastMask,
  type RoundRecord,
  type RoundSummary,
  type RunRecord,
  type UploadRecord,
} from "./records.ts";
import type { RunConfig } from "./run_config.ts";
import {
  type DecodedSlice,
  type DecodedUpdate,
  isMaskRef,
  type MaskRefUpdate,
  resolveMaskRef,
} from "../runtime/client/wire.ts";
import { andBits, bitWords, fullBits, gatherBits, maskRef, popcountBits } from "../runtime/kernels/bits.ts";
import { b64url } from "./tokens.ts";
import { checksum128 } from "./checksum.ts";
import { BoundedCache } from "./bounded_cache.ts";
import { kernels } from "../runtime/kernels/mod.ts";
import { type Accumulators, defaultFolder, type Folder } from "./folder.ts";
import { ReadModel, type RunMetrics } from "./read_model.ts";

const DEBUG = (() => {
  try {
    return Deno.env.get("PERFIT_DEBUG") === "1";
  } catch {
    return false;
  }
})();

/** Most uploads per commit: 2 mutations each + 1 must stay under KV's 1000, and 800 KiB in total. */
const MAX_GROUP = 400;
/** Client records kept in memory (a few hundred bytes each). */
const CLIENT_CACHE = 50_000;
/** Longest a group waits for uploads still being received (see `gather`). */
const MAX_GATHER_MS = 250;

/** Outcome of an upload. */
export interface UploadResult {
  status: "accepted" | "replay";
  uploadId: string;
  round: number;
}

interface Pending {
  /** Order in which the upload's fold was requested (see `stage`). */
  seq: number;
  client: string;
  uploadId: string;
  record: UploadRecord;
  /** Kept until the group commit writes it (masks are persisted with the commit, not before). */
  maskBits: Uint32Array | null;
  done: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** In-memory view of one run, rebuilt from KV on first use (and after any failed commit). */
interface RunState {
  run: RunRecord;
  runVs: string;
  round: RoundRecord | null;
  roundVs: string | null;
  /** The open round's accumulators (null for local-only runs). */
  acc: Accumulators | null;
  /** Sequence number of the last fold requested, and how many are still in flight. */
  foldSeq: number;
  folding: number;
  uploads: Map<string, UploadRecord>;
  pending: Map<string, Pending>;
  queue: Pending[];
  flushing: boolean;
  closing: boolean;
  dead: boolean;
  chain: Promise<void>;
  /** Incremented by every commit of this instance (see `stale`). */
  commits: number;
  global: { v: Float32Array; c: Uint32Array; gen: string | null } | null;
  /**
   * Each client's latest mask reference as this instance last read or wrote it. Another instance
   * may have moved it on since; that only costs a mask rewrite, never a wrong one, because a
   * reference is only reused when its hash equals the upload's mask.
   */
  lastMasks: Map<string, LastMask | null>;
}

/** A group whose blobs are written and whose pointer flip is next. */
interface Staged {
  group: Pending[];
  /** The sum slot written, or null for runs without a sum (local). */
  slot: string | null;
  t0: number;
  t1: number;
}

function newGen(): string {
  return `${Date.now().toString(36)}-${b64url(crypto.getRandomValues(new Uint8Array(6)))}`;
}

function deferred(): { done: Promise<void>; resolve: () => void; reject: (e: unknown) => void } {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const done = new Promise<void>((a, b) => {
    resolve = a;
    reject = b;
  });
  done.catch(() => {});
  return { done, resolve, reject };
}

/** 503 for a commit that lost a race (another instance) or a KV failure: the client retries. */
export class RetryableError extends Error {
  override name = "RetryableError";
}

/** Runs, rounds, clients and streaming aggregation, all persisted in one Deno KV. */
export class Coordinator {
  private states = new Map<string, Promise<RunState>>();
  /** Uploads per run whose bodies are being received (see `expectUpload`). */
  private arriving = new Map<string, number>();
  /** The settled state behind each entry of `states` (so a dead state never evicts its successor). */
  private loaded = new Map<string, RunState>();
  private closed = false;
  private readonly reads: ReadModel;
  /** Names this instance's accumulator slots (see `flush`). */
  private readonly instance = b64url(crypto.getRandomValues(new Uint8Array(6)));
  /**
   * Clean-up that no request waits for (deleting a closed round's accumulators, replaced masks, an
   * old global generation, another instance's slot). Tracked so that `settled` and `close` can
   * wait for it: untracked, it lands at an arbitrary later moment, after the KV may be closed.
   */
  private readonly cleanups = new Set<Promise<void>>();

  /**
   * `folder` runs the folds (default: a Worker where the platform has one, see folder.ts); the
   * coordinator owns it and closes it in `close()`.
   */
  constructor(
    private readonly kv: Deno.Kv,
    private readonly now: () => number = Date.now,
    private readonly folder: Folder = defaultFolder(),
  ) {
    this.reads = new ReadModel(kv);
  }

  // ---------- runs ----------

  /** Creates a run with round 1 open. */
  async createRun(config: RunConfig): Promise<RunRecord> {
    const id = `run_${b64url(crypto.getRandomValues(new Uint8Array(9)))}`;
    const t = this.now();
    const run: RunRecord = {
      id,
      config,
      createdAt: t,
      status: "active",
      round: 1,
      globalGen: null,
      globalRound: 0,
    };
    const round = this.openRound(id, 1, t, config);
    const res = await this.kv.atomic()
      .check({ key: K.run(id), versionstamp: null })
      .set(K.run(id), run)
      .set(K.round(id, 1), round)
      .set(K.clientCount(id), { count: 0 })
      .commit();
    if (!res.ok) throw new RetryableError("run id collision");
    return run;
  }

  private openRound(run: string, index: number, t: number, cfg: RunConfig): RoundRecord {
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

  /** Every run, newest first. */
  async listRuns(): Promise<RunRecord[]> {
    const out: RunRecord[] = [];
    for await (const e of this.kv.list<RunRecord>({ prefix: K.runs() })) out.push(e.value);
    return out.sort((a, b) => b.createdAt - a.createdAt);
  }

  /** A run (after closing its round if the deadline passed with a quorum). */
  async getRun(id: string, revalidate = true): Promise<{ run: RunRecord; round: RoundRecord | null }> {
    const st = await this.state(id, revalidate);
    await this.advance(st);
    return { run: st.run, round: st.round };
  }

  /**
   * The run's state. `revalidate: false` skips the read that detects other instances' commits: the
   * upload path uses it because its group commit checks the round's versionstamp anyway (a stale
   * state fails that check, is reloaded, and the client's retry sees the truth), and the read costs
   * a KV round trip on the JS thread for every upload.
   */
  private state(id: string, revalidate = true): Promise<RunState> {
    if (this.closed) return Promise.reject(new RetryableError("coordinator is shutting down"));
    let p = this.states.get(id);
    if (!p) {
      p = this.load(id).then((st) => {
        this.loaded.set(id, st);
        return st;
      });
      this.states.set(id, p);
      p.catch(() => this.states.delete(id));
    }
    return p.then(async (st) => {
      if (st.dead) {
        if (this.states.get(id) === p) this.states.delete(id);
        return this.state(id, revalidate);
      }
      if (revalidate && await this.stale(st)) {
        this.kill(st, new Error("another instance changed the run"));
        return this.state(id);
      }
      return st;
    });
  }

  /**
   * True when another instance (a Deno Deploy isolate, a second process on the same KV) committed to
   * this run since we cached it. Our own commits in flight are not evidence: skip while one runs.
   */
  private async stale(st: RunState): Promise<boolean> {
    if (st.closing) return false;
    const commits = st.commits;
    const keys: Deno.KvKey[] = [K.run(st.run.id)];
    if (st.round) keys.push(K.round(st.run.id, st.round.index));
    const [r, ro] = await this.kv.getMany(keys);
    if (st.dead || st.closing) return false;
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
    const re = await this.kv.get<RunRecord>(K.run(id));
    if (!re.value) throw notFound(`no run ${id}`);
    const run = re.value;
    const st: RunState = {
      run,
      runVs: re.versionstamp!,
      round: null,
      roundVs: null,
      acc: null,
      foldSeq: 0,
      folding: 0,
      uploads: new Map(),
      pending: new Map(),
      queue: [],
      flushing: false,
      closing: false,
      dead: false,
      chain: Promise.resolve(),
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
      if (strategyFor(run.config.method).aggregates) {
        const n = run.config.adapterSize;
        st.acc = this.folder.alloc(n);
        if (st.round.accGen) {
          await readChunks(this.kv, K.acc(id, run.round, st.round.accGen, "s"), f32Bytes(st.acc.sum));
          await this.rebuildWeight(st);
        }
      }
    }
    return st;
  }

  /**
   * The weight accumulator is not persisted: it is exactly the sample-weighted count of the accepted
   * uploads' masks, which are stored anyway (FedIT: all ones). Halves the bytes of every commit.
   */
  private async rebuildWeight(st: RunState): Promise<void> {
    const n = st.run.config.adapterSize;
    const w = st.acc!.weight;
    const bits = new Uint32Array(bitWords(n));
    if (strategyFor(st.run.config.method).denseMask) {
      for (const u of st.uploads.values()) for (let i = 0; i < n; i++) w[i] += Math.fround(u.samples);
      return;
    }
    for (const u of st.uploads.values()) {
      await readChunks(this.kv, K.mask(st.run.id, u.client, u.maskRound), new Uint8Array(bits.buffer));
      const x = Math.fround(u.samples);
      for (let wi = 0; wi < bits.length; wi++) {
        let b = bits[wi];
        while (b !== 0) {
          const t = b & -b;
          w[(wi << 5) + (31 - Math.clz32(t))] += x;
          b ^= t;
        }
      }
    }
  }

  /** Runs clean-up in the background, tracked. A failure leaves garbage behind, never wrong state. */
  private cleanUp(work: Promise<void>): void {
    const p = work.catch(() => {}).finally(() => this.cleanups.delete(p));
    this.cleanups.add(p);
  }

  /**
   * Resolves once this instance has no work in flight: every run's commit and close chain has
   * drained and every background clean-up has landed. What KV holds then stays as it is until the
   * next request or tick. (A drained chain can schedule clean-up, hence the loop.)
   */
  async settled(): Promise<void> {
    const inFlight = () => [
      ...this.cleanups,
      ...[...this.loaded.values()].map((st) => st.chain),
      ...this.joinLocks.values(),
    ];
    for (;;) {
      const awaited = inFlight();
      await Promise.all(awaited);
      // A chain is replaced (never mutated) when work is enqueued, and finished clean-ups and joins
      // leave their sets: nothing new since the wait means nothing is left.
      if (inFlight().every((p) => awaited.includes(p))) return;
    }
  }

  /** Serializes commits and closes per run. */
  private enqueue<T>(st: RunState, f: () => Promise<T>): Promise<T> {
    const p = st.chain.then(f);
    st.chain = p.then(() => {}, () => {});
    return p;
  }

  private kill(st: RunState, why: unknown): void {
    st.dead = true;
    if (this.loaded.get(st.run.id) === st) {
      this.loaded.delete(st.run.id);
      this.states.delete(st.run.id);
    }
    const err = new RetryableError(`state reloaded after a failed commit: ${(why as Error)?.message ?? why}`);
    for (const p of [...st.queue, ...st.pending.values()]) p.reject(err);
    st.queue = [];
    st.pending.clear();
  }

  /** Closes the open round when its deadline passed and a quorum of uploads is in. */
  private async advance(st: RunState): Promise<void> {
    const r = st.round;
    if (!r || st.closing || r.status !== "open") return;
    if (this.now() < r.deadline) return;
    if (r.accepted + st.queue.length < st.run.config.quorum) return;
    await this.closeRound(st);
  }

  /** Closes overdue rounds of every loaded run (the server calls this on a timer). */
  async tick(): Promise<void> {
    for (const p of this.states.values()) {
      try {
        await this.advance(await p);
      } catch { /* a failing run must not stop the others; its next request reports the error */ }
    }
  }

  // ---------- clients ----------

  private joinLocks = new Map<string, Promise<unknown>>();

  /** Registers a client, assigns its tier (requested, else round-robin by join order). */
  join(runId: string, req: { name?: string; tier?: string }): Promise<ClientRecord> {
    // Joins of one run are serialized in-process so the counter check rarely conflicts; the
    // versionstamp check still guards against other instances (Deno Deploy), with retries.
    const prev = this.joinLocks.get(runId) ?? Promise.resolve();
    const p = prev.then(() => this.joinOnce(runId, req));
    const tail = p.catch(() => {});
    this.joinLocks.set(runId, tail);
    tail.then(() => {
      if (this.joinLocks.get(runId) === tail) this.joinLocks.delete(runId);
    });
    return p;
  }

  private async joinOnce(runId: string, req: { name?: string; tier?: string }): Promise<ClientRecord> {
    const st = await this.state(runId);
    const cfg = st.run.config;
    if (st.run.status === "done") throw gone("run_done", `run ${runId} has finished`);
    const tiers = Object.keys(cfg.expansionTiers).sort((a, b) =>
      cfg.expansionTiers[a] - cfg.expansionTiers[b]
    );
    if (req.tier !== undefined && !(req.tier in cfg.expansionTiers)) {
      throw invalid("unknown_tier", `tier must be one of ${tiers.join(", ")}`);
    }
    for (let attempt = 0; attempt < 20; attempt++) {
      const cnt = await this.kv.get<{ count: number }>(K.clientCount(runId));
      const seq = cnt.value?.count ?? 0;
      if (seq >= cfg.maxClients) {
        throw conflict("run_full", `run ${runId} already has ${cfg.maxClients} clients`);
      }
      const id = `c_${b64url(crypto.getRandomValues(new Uint8Array(9)))}`;
      const tier = req.tier ?? tiers[seq % tiers.length];
      const rec: ClientRecord = {
        id,
        run: runId,
        name: req.name ?? "",
        tier,
        expansion: cfg.expansionTiers[tier],
        joinedAt: this.now(),
        seq,
      };
      const res = await this.kv.atomic()
        .check(cnt)
        .check({ key: K.client(runId, id), versionstamp: null })
        .set(K.clientCount(runId), { count: seq + 1 })
        .set(K.client(runId, id), rec)
        .commit();
      if (res.ok) return rec;
    }
    throw new RetryableError("join contention, retry");
  }

  /** Client records are immutable once joined, so every instance may keep the ones it has read. */
  private clients = new BoundedCache<ClientRecord>(CLIENT_CACHE);

  /** A client's record, or 404. */
  async client(runId: string, clientId: string): Promise<ClientRecord> {
    const key = `${runId}/${clientId}`;
    const hit = this.clients.get(key);
    if (hit) return hit;
    const c = await this.kv.get<ClientRecord>(K.client(runId, clientId));
    if (!c.value) throw notFound(`no client ${clientId} in run ${runId}`);
    this.clients.set(key, c.value);
    return c.value;
  }

  /** The next thing a client should do. */
  async task(runId: string, c: ClientRecord): Promise<TaskInfo> {
    const st = await this.state(runId);
    await this.advance(st);
    const cfg = st.run.config;
    const r = st.round;
    let status: TaskInfo["status"] = "train";
    if (st.run.status === "done" || !r) status = "done";
    else if (st.uploads.has(c.id) || st.pending.has(c.id) || st.closing) status = "wait";
    else if (st.uploads.size + st.pending.size >= cfg.clientsPerRound) status = "wait";
    const strategy = strategyFor(cfg.method);
    // The strategy decides what this client does (Flower's configure_fit); a client with no stored
    // mask has not searched yet.
    const firstTime = strategy.personalMask ? (await this.lastMaskOf(st, c.id)) === null : true;
    const every = cfg.train.researchEvery;
    const plan = strategy.configure(st.run.round, firstTime, typeof every === "number" ? every : 0);
    return {
      run: runId,
      round: st.run.round,
      status,
      deadline: r?.deadline ?? null,
      method: cfg.method,
      baseModel: cfg.baseModel,
      lora: cfg.lora,
      tier: c.tier,
      expansion: c.expansion,
      rank: cfg.lora.rank * c.expansion,
      budget: cfg.budget,
      adapterSize: cfg.adapterSize,
      seed: cfg.seed,
      globalRound: st.run.globalRound,
      train: cfg.train,
      plan,
    };
  }

  private async loadGlobal(st: RunState): Promise<{ v: Float32Array; c: Uint32Array; gen: string | null }> {
    const gen = st.run.globalGen;
    if (st.global && st.global.gen === gen) return st.global;
    const n = st.run.config.adapterSize;
    const g = { v: new Float32Array(n), c: new Uint32Array(bitWords(n)), gen };
    if (gen) {
      try {
        await readChunks(this.kv, K.global(st.run.id, gen, "v"), f32Bytes(g.v));
        await readChunks(this.kv, K.global(st.run.id, gen, "c"), new Uint8Array(g.c.buffer));
      } catch (e) {
        if (!(e instanceof MissingBlobError)) throw e;
        this.kill(st, e);
        throw new RetryableError("the run moved on while reading its adapter, retry");
      }
    }
    st.global = g;
    return g;
  }

  private async lastMaskOf(st: RunState, clientId: string): Promise<LastMask | null> {
    const cached = st.lastMasks.get(clientId);
    if (cached !== undefined) return cached;
    const lm = (await this.kv.get<LastMask>(K.lastMask(st.run.id, clientId))).value;
    st.lastMasks.set(clientId, lm);
    return lm;
  }

  private async maskOf(st: RunState, clientId: string): Promise<{ bits: Uint32Array; round: number } | null> {
    const n = st.run.config.adapterSize;
    if (strategyFor(st.run.config.method).denseMask) return { bits: fullBits(n), round: st.run.globalRound };
    for (let attempt = 0;; attempt++) {
      const lm = await this.kv.get<LastMask>(K.lastMask(st.run.id, clientId));
      if (!lm.value) return null;
      const bits = new Uint32Array(bitWords(n));
      try {
        await readChunks(this.kv, K.mask(st.run.id, clientId, lm.value.round), new Uint8Array(bits.buffer));
        return { bits, round: lm.value.round };
      } catch (e) {
        // The pointer moved on and a round close dropped the mask it named (see `dropReplacedMasks`).
        if (!(e instanceof MissingBlobError) || attempt >= 2) throw e;
      }
    }
  }

  /**
   * After a round closed: deletes the masks its uploads replaced. Once the round is closed no record
   * that a reader follows names them (upload records of closed rounds keep their round number as
   * history only), so each client keeps one stored mask, not one per change.
   */
  private async dropReplacedMasks(
    runId: string,
    adapterSize: number,
    uploads: UploadRecord[],
  ): Promise<void> {
    const bytes = bitWords(adapterSize) * 4;
    for (const u of uploads) {
      if (u.replacesMaskRound !== undefined) {
        await deleteChunks(this.kv, K.mask(runId, u.client, u.replacesMaskRound), bytes);
      }
    }
  }

  /**
   * The client's personalized slice: aggregated values at the positions of its latest mask that
   * some round has aggregated (`covered`); the client keeps its own values elsewhere.
   */
  async slice(runId: string, clientId: string): Promise<DecodedSlice> {
    let st = await this.state(runId);
    await this.advance(st);
    if (st.closing) {
      // Never serve the adapter of a round that is being replaced: wait for the close to land.
      await st.chain;
      st = await this.state(runId);
    }
    const n = st.run.config.adapterSize;
    const empty = new Uint32Array(bitWords(n));
    const mask = await this.maskOf(st, clientId);
    if (!strategyFor(st.run.config.method).aggregates || !mask) {
      return {
        run: runId,
        round: st.run.globalRound,
        adapterSize: n,
        maskBits: mask?.bits ?? empty,
        coveredBits: empty,
        values: new Float32Array(0),
      };
    }
    const g = await this.loadGlobal(st);
    const covered = andBits(mask.bits, g.c);
    return {
      run: runId,
      round: st.run.globalRound,
      adapterSize: n,
      maskBits: mask.bits,
      coveredBits: covered,
      values: gatherBits(g.v, covered, popcountBits(covered)),
    };
  }

  /** `maskRef` of the all-ones mask over n positions, hashed once per size: every dense upload names it. */
  private fullMaskRefs = new Map<number, Promise<string>>();
  private fullMaskRef(n: number): Promise<string> {
    let ref = this.fullMaskRefs.get(n);
    if (!ref) this.fullMaskRefs.set(n, ref = maskRef(fullBits(n)));
    return ref;
  }

  /**
   * Completes an update sent by reference with the client's stored mask, or answers 409
   * `mask_unknown` when we hold no mask under that reference (a client whose acknowledgement we lost,
   * a pointer another instance moved on, a mask already dropped): the client resends with the mask.
   */
  private async withStoredMask(
    st: RunState,
    clientId: string,
    u: MaskRefUpdate,
    last: LastMask | null,
  ): Promise<DecodedUpdate> {
    const n = st.run.config.adapterSize;
    let bits: Uint32Array | null = null;
    if (strategyFor(st.run.config.method).denseMask) {
      if (await this.fullMaskRef(n) === u.maskRef) bits = fullBits(n);
    } else if (last !== null && last.hash === u.maskRef) {
      bits = new Uint32Array(bitWords(n));
      try {
        await readChunks(this.kv, K.mask(st.run.id, clientId, last.round), new Uint8Array(bits.buffer));
      } catch (e) {
        if (!(e instanceof MissingBlobError)) throw e;
        bits = null;
      }
    }
    if (bits === null) {
      throw conflict(
        "mask_unknown",
        "the coordinator holds no mask under this maskRef for this client: resend the update with its mask",
      );
    }
    return resolveMaskRef(u, bits);
  }

  /**
   * Content-addressed id of an upload: a 128-bit checksum of the body. It is only ever compared with
   * the id stored under the same (run, round, client) key, so it needs no run/client prefix, and
   * checksum.ts says why a non-cryptographic checksum suffices (it costs about half of SHA-256 of a
   * 1 MiB body, and stays on the JS thread without an async hop).
   */
  static uploadId(body: Uint8Array): string {
    return `u1-${checksum128(body)}`;
  }

  // ---------- uploads ----------

  /**
   * Announces an upload of `runId` whose body is still being received, so a commit about to start
   * can wait for it to join its group (see `gather`). The returned function ends the announcement;
   * it is idempotent, and `upload` calls it as soon as the update is handed to the folder.
   */
  expectUpload(runId: string): () => void {
    this.arriving.set(runId, (this.arriving.get(runId) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const n = (this.arriving.get(runId) ?? 1) - 1;
      if (n > 0) this.arriving.set(runId, n);
      else this.arriving.delete(runId);
    };
  }

  /**
   * Validates policy (round, budget, norm), folds the update and resolves once it is durably
   * accepted. Replays of an accepted upload resolve with status "replay" and change nothing.
   */
  async upload(
    runId: string,
    clientId: string,
    round: number,
    wire: DecodedUpdate | MaskRefUpdate,
    uploadId: string,
    folded?: () => void,
  ): Promise<UploadResult> {
    let u: DecodedUpdate;
    let st = await this.state(runId, false);
    // Another instance may have moved the run on: check with KV before refusing a round mismatch.
    if (round !== st.run.round || st.run.status === "done") {
      st = await this.state(runId);
      // A close of ours in flight (or one about to lose to another instance's) decides the round.
      if (round > st.run.round && st.closing) {
        await st.chain;
        st = await this.state(runId);
      }
    }
    await this.advance(st);
    const cfg = st.run.config;
    const dense = strategyFor(cfg.method).denseMask;
    const last = dense ? null : await this.lastMaskOf(st, clientId);
    // PerFIT masks rarely change after the search: an unchanged mask is referenced, not rewritten
    // (and a client that knows we hold it sends only its reference).
    let maskHash: string;
    if (isMaskRef(wire)) {
      maskHash = dense ? "" : wire.maskRef;
      u = await this.withStoredMask(st, clientId, wire, last);
    } else {
      u = wire;
      maskHash = dense ? "" : await maskRef(u.maskBits);
    }
    const reuseMask = last !== null && last.hash === maskHash && last.round < round;
    if (u.run !== runId) throw invalid("wrong_run", `update is for run ${u.run}, not ${runId}`);
    if (u.round !== round) {
      throw invalid("wrong_round", `update metadata says round ${u.round}, path says ${round}`);
    }
    const current = st.run.round;
    if (round < current || st.run.status === "done") {
      const old = await this.kv.get<UploadRecord>(K.upload(runId, round, clientId));
      if (old.value?.uploadId === uploadId) return { status: "replay", uploadId, round };
      throw gone(
        "round_closed",
        `round ${round} is closed (current round: ${
          st.run.status === "done" ? "none, run finished" : current
        })`,
      );
    }
    if (round > current) {
      // Refuse only what KV itself says: a state that another instance moved on is reloaded and the
      // client told to retry (a client only learns of a round from some instance that opened it).
      const fresh = (await this.kv.get<RunRecord>(K.run(runId))).value;
      if (fresh && fresh.round >= round) {
        this.kill(st, new Error("the run moved on in another instance"));
        throw new RetryableError(`round ${round} was opened by another instance, retry`);
      }
      throw conflict("round_not_open", `round ${round} is not open yet (current round: ${current})`);
    }
    const acc = st.uploads.get(clientId);
    if (acc) {
      if (acc.uploadId === uploadId) return { status: "replay", uploadId, round };
      throw conflict("already_uploaded", `client already has a different update accepted in round ${round}`);
    }
    const pend = st.pending.get(clientId);
    if (pend) {
      if (pend.uploadId !== uploadId) {
        throw conflict("already_uploaded", "a different update from this client is in flight");
      }
      folded?.();
      await pend.done;
      return { status: "replay", uploadId, round };
    }
    if (st.dead) throw new RetryableError("run state was reloaded, retry");
    if (st.closing) throw gone("round_closed", `round ${round} is closing`);
    // A commit snapshots the sum with every folded upload in it, so its group must hold every queued
    // upload: past one atomic operation's worth, push back (503, the client retries) instead.
    if (st.queue.length + st.folding >= MAX_GROUP) throw new RetryableError("commit queue is full, retry");
    if (st.uploads.size + st.pending.size >= cfg.clientsPerRound) {
      throw conflict("round_full", `round ${round} already has ${cfg.clientsPerRound} updates`);
    }
    if (u.popcount > cfg.budget) {
      throw invalid("over_budget", `mask selects ${u.popcount} positions, budget is ${cfg.budget}`);
    }
    if (dense && u.popcount !== cfg.adapterSize) {
      throw invalid("dense_required", "fedit updates must cover every position (all-ones mask)");
    }
    const aggregates = strategyFor(cfg.method).aggregates;
    if (u.popcount === 0 && aggregates) throw invalid("empty_mask", "mask selects no positions");
    if (!aggregates && u.popcount !== 0) {
      throw invalid(
        "metrics_only",
        `${cfg.method} runs aggregate nothing: uploads carry metrics and an empty mask`,
      );
    }
    const norm = Math.sqrt(u.sumSq);
    if (!(norm <= cfg.maxNorm)) {
      throw invalid("norm_bound", `update L2 norm ${norm.toFixed(3)} exceeds ${cfg.maxNorm}`);
    }

    const d = deferred();
    const record: UploadRecord = {
      uploadId,
      client: clientId,
      round,
      samples: u.samples,
      metrics: u.metrics,
      popcount: u.popcount,
      norm,
      at: this.now(),
      maskRound: reuseMask ? last!.round : round,
      maskHash,
      ...(!reuseMask && last !== null && last.round < round ? { replacesMaskRound: last.round } : {}),
    };
    const p: Pending = {
      seq: ++st.foldSeq,
      client: clientId,
      uploadId,
      record,
      maskBits: dense || reuseMask ? null : u.maskBits,
      ...d,
    };
    // Synchronous from the checks to here: no await, so no other upload interleaves. From here on
    // the client counts as pending, so a duplicate waits for this one instead of folding twice.
    st.pending.set(clientId, p);
    folded?.(); // from here on `gather` counts it among the group-to-be (as folding, then queued)
    if (st.acc) {
      st.folding++;
      try {
        await this.folder.fold(st.acc, u.maskBits, u.values, u.samples);
      } catch (e) {
        // Inputs are validated before this, so a failed fold means a broken worker, which may have
        // left a partial fold behind: reload the run from KV (every uncommitted upload is retried).
        this.kill(st, e);
        throw new RetryableError(`fold failed: ${(e as Error).message}`);
      } finally {
        st.folding--;
      }
    }
    u.values = new Float32Array(0); // the values live on only in the accumulator: free them now
    if (st.dead) throw new RetryableError("run state was reloaded, retry");
    st.queue.push(p);
    this.kickFlush(st);
    await p.done;
    return { status: "accepted", uploadId, round };
  }

  private kickFlush(st: RunState): void {
    if (st.dead) {
      this.kill(st, new Error("state reloaded"));
      return;
    }
    if (st.flushing) return;
    st.flushing = true;
    this.enqueue(st, async () => {
      try {
        while (st.queue.length > 0 && !st.dead) {
          await this.gather(st);
          if (st.dead || st.queue.length === 0) break;
          await this.flush(st);
        }
      } finally {
        st.flushing = false;
      }
      if (!st.dead && st.round && st.uploads.size >= st.run.config.clientsPerRound && !st.closing) {
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
      st.queue.length >= MAX_GROUP || st.uploads.size + st.pending.size >= st.run.config.clientsPerRound;
    const arriving = () => this.arriving.get(st.run.id) ?? 0;
    while (!st.dead && !full() && arriving() > st.queue.length + st.folding && performance.now() < until) {
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  /**
   * One group commit: `stage`, then `flip`. Must run inside the run's chain. (Pipelining the next
   * group's `stage` under this group's `flip`, with a third slot, was measured and did not help:
   * the writer thread is busy either way, and the groups got smaller.)
   */
  private async flush(st: RunState): Promise<void> {
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
    // never happens).
    const early = st.queue.filter((p) => p.maskBits);
    const earlyWrite = early.length > 0 ? writeBlobs(this.kv, early.map(maskBlob)) : null;
    earlyWrite?.catch(() => {});
    let group: Pending[] = [];
    try {
      // The snapshot holds every fold requested so far (the folder keeps them in order), and their
      // uploads are queued by the time it resolves: the group is exactly those, so no contribution
      // becomes durable without its marker. Admission keeps them within MAX_GROUP.
      const last = st.foldSeq;
      const snapshot = st.acc ? await this.folder.snapshot(st.acc) : null;
      let take = 0;
      while (take < st.queue.length && (snapshot === null || st.queue[take].seq <= last)) take++;
      group = st.queue.splice(0, take);
      const slot = round.accGen === `${this.instance}.0` ? `${this.instance}.1` : `${this.instance}.0`;
      const blobs: [Deno.KvKey, Uint8Array][] = [];
      if (snapshot) blobs.push([K.acc(runId, round.index, slot, "s"), f32Bytes(snapshot)]);
      const written = new Set(early);
      for (const p of group) if (p.maskBits && !written.has(p)) blobs.push(maskBlob(p));
      await Promise.all([writeBlobs(this.kv, blobs), earlyWrite]);
      return { group, slot: snapshot ? slot : null, t0, t1: performance.now() };
    } catch (e) {
      for (const p of group) p.reject(new RetryableError(`commit failed: ${(e as Error).message}`));
      this.kill(st, e);
      throw e;
    }
  }

  /**
   * Second half: in one atomic operation guarded by the round's versionstamp, points the round at
   * the staged sum and writes every upload marker of the group; then acknowledges the group.
   */
  private async flip(st: RunState, staged: Staged): Promise<void> {
    const { group, slot } = staged;
    const runId = st.run.id;
    try {
      if (st.dead) throw new Error("state was reloaded");
      const round = st.round!;
      const dense = strategyFor(st.run.config.method).denseMask;
      const t1 = performance.now();
      const next: RoundRecord = {
        ...round,
        accepted: round.accepted + group.length,
        samples: round.samples + group.reduce((a, p) => a + p.record.samples, 0),
        accGen: slot,
      };
      const op = this.kv.atomic().check({ key: K.round(runId, round.index), versionstamp: st.roundVs }).set(
        K.round(runId, round.index),
        next,
      );
      for (const p of group) {
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
      if (!res.ok) throw new Error("round record changed underneath (another instance?)");
      const oldGen = round.accGen;
      st.round = next;
      st.roundVs = res.versionstamp;
      st.commits++;
      for (const p of group) {
        st.uploads.set(p.client, p.record);
        if (!dense) st.lastMasks.set(p.client, lastMaskRecord(p.record));
        st.pending.delete(p.client);
        p.maskBits = null;
        p.resolve();
      }
      // Our own slots are rewritten by later commits; another instance's slot is ours to drop.
      if (oldGen && st.acc && !oldGen.startsWith(`${this.instance}.`)) {
        this.cleanUp(deleteChunks(this.kv, K.acc(runId, round.index, oldGen, "s"), st.acc.sum.byteLength));
      }
    } catch (e) {
      for (const p of group) p.reject(new RetryableError(`commit failed: ${(e as Error).message}`));
      this.kill(st, e);
      throw e;
    }
  }

  private closeRound(st: RunState): Promise<void> {
    if (st.closing) return st.chain;
    return this.enqueue(st, () => this.closeNow(st));
  }

  /** Aggregates and closes the open round, opening the next. Must run inside the run's chain. */
  private async closeNow(st: RunState): Promise<void> {
    if (st.dead || st.closing || !st.round || st.round.status !== "open") return;
    st.closing = true;
    try {
      // No upload is admitted while closing; wait for the folds admitted before (they queue up).
      await this.folder.drain();
      while (st.queue.length > 0 && !st.dead) await this.flush(st).catch(() => {});
      if (st.dead) return;
      const run = st.run;
      const round = st.round;
      const cfg = run.config;
      const t = this.now();
      let globalGen = run.globalGen;
      let globalRound = run.globalRound;
      let coveredCount = 0;
      let newGlobal: { v: Float32Array; c: Uint32Array; gen: string | null } | null = null;
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
      const nextRound = last ? null : this.openRound(run.id, round.index + 1, t, cfg);
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
      this.cleanUp(this.dropReplacedMasks(run.id, cfg.adapterSize, closedUploads));
      if (newGlobal && oldGlobal) this.cleanUp(deletePrefix(this.kv, K.globalGen(run.id, oldGlobal)));
    } catch (e) {
      this.kill(st, e);
      throw new RetryableError(`closing the round failed: ${(e as Error).message}`);
    } finally {
      st.closing = false;
    }
  }

  // ---------- observability ----------

  /** Uploads of a loaded run that are admitted but not yet durably committed (0 if not loaded). */
  inFlight(runId: string): number {
    return this.loaded.get(runId)?.pending.size ?? 0;
  }

  /** Rounds timeline with per-client metrics, for dashboards (read model: server/read_model.ts). */
  async metrics(runId: string): Promise<RunMetrics> {
    const { run } = await this.getRun(runId);
    return await this.reads.metrics(run);
  }

  /** Latest mask bitmask of each client (paged), for overlap (Jaccard) and budget-spread views. */
  async masks(
    runId: string,
    offset: number,
    limit: number,
  ): Promise<{ client: string; round: number; bits: Uint32Array }[]> {
    const st = await this.state(runId);
    const out: { client: string; round: number; bits: Uint32Array }[] = [];
    for (const c of await this.reads.clients(runId, offset, limit)) {
      const m = await this.maskOf(st, c.id);
      if (m) out.push({ client: c.id, round: m.round, bits: m.bits });
    }
    return out;
  }

  /**
   * Waits for in-flight commits, stops accepting work and stops the fold worker (the KV stays open:
   * the caller owns it).
   */
  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.states.values()) {
      try {
        await (await p).chain;
      } catch { /* already reported to the requests that failed */ }
    }
    await this.folder.drain().catch(() => {});
    await this.settled();
    this.folder.close();
    this.states.clear();
    this.loaded.clear();
  }
}

function lastMaskRecord(r: UploadRecord): LastMask {
  return { round: r.maskRound, popcount: r.popcount, hash: r.maskHash };
}

/** The round's summary: its uploads and samples, and its metrics as the run's strategy aggregates them. */
export function summarize(strategy: MethodStrategy, uploads: UploadRecord[], covered: number): RoundSummary {
  const samples = uploads.reduce((a, u) => a + u.samples, 0);
  return { clients: uploads.length, samples, metrics: strategy.aggregateMetrics(uploads), covered };
}

/** Chunks per blob for an adapter of n floats (exported for docs/tests). */
export const blobChunks = (n: number): number => chunkCount(n * 4);
