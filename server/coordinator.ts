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
 * Commits run one at a time per run; while one is in flight the next group gathers (adaptive batching).
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
import type { TaskInfo as ClientTaskInfo } from "../runtime/client/federated_client.ts";
import { andBits, finalizeInto, foldSparse, fullBits, gatherBits } from "./aggregate.ts";
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
import { bitWords, type DecodedSlice, type DecodedUpdate, popcountBits } from "../runtime/client/wire.ts";
import { b64url, sha256Hex } from "./tokens.ts";
import { checksum128 } from "./checksum.ts";
import { kernels } from "../runtime/kernels/mod.ts";

const DEBUG = (() => {
  try {
    return Deno.env.get("PERFIT_DEBUG") === "1";
  } catch {
    return false;
  }
})();

/** Most uploads per commit: 2 mutations each + 1 must stay under KV's 1000, and 800 KiB in total. */
const MAX_GROUP = 400;
/** Longest a group waits to gather after a commit (see `gather`). */
const MAX_GATHER_MS = 500;

/** What a client is told to do next: the client's `TaskInfo`, typed as precisely as the run config. */
export interface TaskInfo extends ClientTaskInfo {
  method: RunConfig["method"];
  lora: RunConfig["lora"];
}

/** Outcome of an upload. */
export interface UploadResult {
  status: "accepted" | "replay";
  uploadId: string;
  round: number;
}

interface Pending {
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
  sum: Float32Array | null;
  weight: Float32Array | null;
  uploads: Map<string, UploadRecord>;
  pending: Map<string, Pending>;
  queue: Pending[];
  flushing: boolean;
  closing: boolean;
  dead: boolean;
  chain: Promise<void>;
  /** Incremented by every commit of this instance (see `stale`). */
  commits: number;
  /** When the last group commit ended and how long it took (performance.now() ms; see `gather`). */
  lastFlush: { end: number; ms: number };
  global: { v: Float32Array; c: Uint32Array; gen: string | null } | null;
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
  /** The settled state behind each entry of `states` (so a dead state never evicts its successor). */
  private loaded = new Map<string, RunState>();
  private closed = false;

  constructor(private readonly kv: Deno.Kv, private readonly now: () => number = Date.now) {}

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
  async getRun(id: string): Promise<{ run: RunRecord; round: RoundRecord | null }> {
    const st = await this.state(id);
    await this.advance(st);
    return { run: st.run, round: st.round };
  }

  private state(id: string): Promise<RunState> {
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
        return this.state(id);
      }
      if (await this.stale(st)) {
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
    if (st.dead || st.closing || st.commits !== commits) return false;
    // Only closes (ours or theirs) touch the run record, so it is checked even while we flush.
    if (r.versionstamp !== st.runVs) return true;
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
      sum: null,
      weight: null,
      uploads: new Map(),
      pending: new Map(),
      queue: [],
      flushing: false,
      closing: false,
      dead: false,
      chain: Promise.resolve(),
      commits: 0,
      lastFlush: { end: 0, ms: 0 },
      global: null,
    };
    if (run.status === "active") {
      const ro = await this.kv.get<RoundRecord>(K.round(id, run.round));
      if (!ro.value) throw new Error(`run ${id}: round ${run.round} record missing`);
      st.round = ro.value;
      st.roundVs = ro.versionstamp;
      for await (const e of this.kv.list<UploadRecord>({ prefix: K.uploadsOf(id, run.round) })) {
        st.uploads.set(e.value.client, e.value);
      }
      if (run.config.method !== "local") {
        const n = run.config.adapterSize;
        st.sum = new Float32Array(n);
        st.weight = new Float32Array(n);
        if (st.round.accGen) {
          await readChunks(this.kv, K.acc(id, run.round, st.round.accGen, "s"), f32Bytes(st.sum));
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
    const w = st.weight!;
    const bits = new Uint32Array(bitWords(n));
    if (st.run.config.method === "fedit") {
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

  /** A client's record, or 404/403. */
  async client(runId: string, clientId: string): Promise<ClientRecord> {
    const c = await this.kv.get<ClientRecord>(K.client(runId, clientId));
    if (!c.value) throw notFound(`no client ${clientId} in run ${runId}`);
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

  private async maskOf(st: RunState, clientId: string): Promise<{ bits: Uint32Array; round: number } | null> {
    const n = st.run.config.adapterSize;
    if (st.run.config.method === "fedit") return { bits: fullBits(n), round: st.run.globalRound };
    const lm = await this.kv.get<LastMask>(K.lastMask(st.run.id, clientId));
    if (!lm.value) return null;
    const bits = new Uint32Array(bitWords(n));
    await readChunks(this.kv, K.mask(st.run.id, clientId, lm.value.round), new Uint8Array(bits.buffer));
    return { bits, round: lm.value.round };
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
    if (st.run.config.method === "local" || !mask) {
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
   * Validates policy (round, budget, norm), folds the update and resolves once it is durably
   * accepted. Replays of an accepted upload resolve with status "replay" and change nothing.
   */
  async upload(
    runId: string,
    clientId: string,
    round: number,
    u: DecodedUpdate,
    uploadId: string,
  ): Promise<UploadResult> {
    const st = await this.state(runId);
    await this.advance(st);
    const cfg = st.run.config;
    // PerFIT masks rarely change after the search: an unchanged mask is referenced, not rewritten.
    const maskHash = cfg.method === "fedit"
      ? ""
      : await sha256Hex(new Uint8Array(u.maskBits.buffer, u.maskBits.byteOffset, u.maskBits.byteLength));
    const last = cfg.method === "fedit"
      ? null
      : (await this.kv.get<LastMask>(K.lastMask(runId, clientId))).value;
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
      await pend.done;
      return { status: "replay", uploadId, round };
    }
    if (st.dead) throw new RetryableError("run state was reloaded, retry");
    if (st.closing) throw gone("round_closed", `round ${round} is closing`);
    // A commit snapshots the sum with every folded upload in it, so its group must hold every queued
    // upload: past one atomic operation's worth, push back (503, the client retries) instead.
    if (st.queue.length >= MAX_GROUP) throw new RetryableError("commit queue is full, retry");
    if (st.uploads.size + st.pending.size >= cfg.clientsPerRound) {
      throw conflict("round_full", `round ${round} already has ${cfg.clientsPerRound} updates`);
    }
    if (u.popcount > cfg.budget) {
      throw invalid("over_budget", `mask selects ${u.popcount} positions, budget is ${cfg.budget}`);
    }
    if (cfg.method === "fedit" && u.popcount !== cfg.adapterSize) {
      throw invalid("dense_required", "fedit updates must cover every position (all-ones mask)");
    }
    if (u.popcount === 0) throw invalid("empty_mask", "mask selects no positions");
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
    };
    const p: Pending = {
      client: clientId,
      uploadId,
      record,
      maskBits: cfg.method === "fedit" || reuseMask ? null : u.maskBits,
      ...d,
    };
    // Synchronous from the checks to here: no await, so no other upload interleaves.
    st.pending.set(clientId, p);
    if (st.sum && st.weight) foldSparse(st.sum, st.weight, u.maskBits, u.values, u.samples);
    u.values = new Float32Array(0); // the values live on only in the accumulator: free them now
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
          const t0 = performance.now();
          await this.flush(st);
          st.lastFlush = { end: performance.now(), ms: performance.now() - t0 };
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
   * After a commit that took `ms`, lets the next group gather until as long again has passed since
   * it ended (at most MAX_GATHER_MS) unless the group is already full or would fill the round. Every commit rewrites the whole
   * sum blob (4·N bytes), so back-to-back commits under load keep KV's writer thread busy on one of
   * the machine's cores; capping its duty cycle near 50% doubles the group size and halves the sum
   * bytes written per upload, at the price of at most one commit's duration of extra latency. When
   * commits are quick (light load) the wait is negligible.
   */
  private async gather(st: RunState): Promise<void> {
    const until = st.lastFlush.end + Math.min(MAX_GATHER_MS, st.lastFlush.ms);
    const full = () =>
      st.queue.length >= MAX_GROUP || st.uploads.size + st.queue.length >= st.run.config.clientsPerRound;
    // Poll in short steps so a group that fills up (or fills the round) is committed right away.
    while (!st.dead && !full() && performance.now() < until) {
      await new Promise((r) => setTimeout(r, Math.min(10, Math.max(1, until - performance.now()))));
    }
  }

  /** One group commit. Must run inside the run's chain. */
  private async flush(st: RunState): Promise<void> {
    const group = st.queue.splice(0, MAX_GROUP);
    const runId = st.run.id;
    const round = st.round!;
    const gen = newGen();
    try {
      // Snapshot synchronously: folds that land while we write belong to the next group. Masks are
      // written under round-specific keys: harmless if the commit below never happens.
      const blobs: [Deno.KvKey, Uint8Array][] = [];
      if (st.sum) blobs.push([K.acc(runId, round.index, gen, "s"), f32Bytes(st.sum).slice()]);
      for (const p of group) {
        if (p.maskBits) {
          blobs.push([
            K.mask(runId, p.client, round.index),
            new Uint8Array(p.maskBits.buffer, p.maskBits.byteOffset, p.maskBits.byteLength),
          ]);
        }
      }
      const t0 = performance.now();
      await writeBlobs(this.kv, blobs);
      const t1 = performance.now();
      const next: RoundRecord = {
        ...round,
        accepted: round.accepted + group.length,
        samples: round.samples + group.reduce((a, p) => a + p.record.samples, 0),
        accGen: st.sum ? gen : null,
      };
      const op = this.kv.atomic().check({ key: K.round(runId, round.index), versionstamp: st.roundVs }).set(
        K.round(runId, round.index),
        next,
      );
      for (const p of group) {
        op.set(K.upload(runId, round.index, p.client), p.record);
        if (st.run.config.method !== "fedit") {
          op.set(
            K.lastMask(runId, p.client),
            {
              round: p.record.maskRound,
              popcount: p.record.popcount,
              hash: p.record.maskHash,
            } satisfies LastMask,
          );
        }
      }
      const res = await op.commit();
      if (DEBUG) {
        console.error(
          `flush: group ${group.length}, blobs ${(t1 - t0).toFixed(0)} ms, commit ${
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
        st.pending.delete(p.client);
        p.maskBits = null;
        p.resolve();
      }
      if (oldGen && st.sum) {
        deleteChunks(this.kv, K.acc(runId, round.index, oldGen, "s"), st.sum.byteLength).catch(() => {});
      }
    } catch (e) {
      for (const p of group) p.reject(new RetryableError(`commit failed: ${(e as Error).message}`));
      this.kill(st, e);
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
      while (st.queue.length > 0 && !st.dead) await this.flush(st);
      if (st.dead) return;
      const run = st.run;
      const round = st.round;
      const cfg = run.config;
      const t = this.now();
      let globalGen = run.globalGen;
      let globalRound = run.globalRound;
      let coveredCount = 0;
      let newGlobal: { v: Float32Array; c: Uint32Array; gen: string | null } | null = null;
      if (st.sum && st.weight && round.accepted > 0) {
        const old = await this.loadGlobal(st);
        newGlobal = { v: old.v.slice(), c: old.c.slice(), gen: newGen() };
        finalizeInto(kernels(), st.sum, st.weight, newGlobal.v, newGlobal.c);
        coveredCount = popcountBits(newGlobal.c);
        await writeChunks(this.kv, K.global(run.id, newGlobal.gen!, "v"), f32Bytes(newGlobal.v));
        await writeChunks(this.kv, K.global(run.id, newGlobal.gen!, "c"), new Uint8Array(newGlobal.c.buffer));
        globalGen = newGlobal.gen;
        globalRound = round.index;
      }
      const summary = summarize([...st.uploads.values()], coveredCount);
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
      if (st.sum && st.weight) {
        st.sum.fill(0);
        st.weight.fill(0);
      }
      deletePrefix(this.kv, K.accRound(run.id, round.index)).catch(() => {});
      if (newGlobal && oldGlobal) deletePrefix(this.kv, K.globalGen(run.id, oldGlobal)).catch(() => {});
    } catch (e) {
      this.kill(st, e);
      throw new RetryableError(`closing the round failed: ${(e as Error).message}`);
    } finally {
      st.closing = false;
    }
  }

  // ---------- observability ----------

  /** Rounds timeline with per-client metrics, for dashboards. */
  async metrics(runId: string): Promise<unknown> {
    const { run } = await this.getRun(runId);
    const rounds: (RoundRecord & { clients: UploadRecord[] })[] = [];
    for await (const e of this.kv.list<RoundRecord>({ prefix: K.rounds(runId) })) {
      rounds.push({ ...e.value, clients: [] });
    }
    const byIndex = new Map(rounds.map((r) => [r.index, r]));
    for await (const e of this.kv.list<UploadRecord>({ prefix: K.uploadsAll(runId) })) {
      byIndex.get(e.value.round)?.clients.push(e.value);
    }
    const clients: ClientRecord[] = [];
    for await (const e of this.kv.list<ClientRecord>({ prefix: K.clientsOf(runId) })) clients.push(e.value);
    return {
      run: {
        id: run.id,
        status: run.status,
        round: run.round,
        globalRound: run.globalRound,
        config: run.config,
      },
      clients: clients.map((c) => ({
        id: c.id,
        name: c.name,
        tier: c.tier,
        expansion: c.expansion,
        joinedAt: c.joinedAt,
      })),
      rounds,
    };
  }

  /** Latest mask bitmask of each client (paged), for overlap (Jaccard) and budget-spread views. */
  async masks(
    runId: string,
    offset: number,
    limit: number,
  ): Promise<{ client: string; round: number; bits: Uint32Array }[]> {
    const st = await this.state(runId);
    const out: { client: string; round: number; bits: Uint32Array }[] = [];
    let i = 0;
    for await (const e of this.kv.list<ClientRecord>({ prefix: K.clientsOf(runId) })) {
      if (i++ < offset) continue;
      if (out.length >= limit) break;
      const m = await this.maskOf(st, e.value.id);
      if (m) out.push({ client: e.value.id, round: m.round, bits: m.bits });
    }
    return out;
  }

  /** Waits for in-flight commits and stops accepting work (the KV stays open: the caller owns it). */
  async close(): Promise<void> {
    this.closed = true;
    for (const p of this.states.values()) {
      try {
        await (await p).chain;
      } catch { /* already reported to the requests that failed */ }
    }
    this.states.clear();
    this.loaded.clear();
  }
}

/** Sample-weighted means of the metrics every client reported. */
export function summarize(uploads: UploadRecord[], covered: number): RoundSummary {
  const sums: Record<string, number> = {};
  const ws: Record<string, number> = {};
  let samples = 0;
  for (const u of uploads) {
    samples += u.samples;
    for (const [k, v] of Object.entries(u.metrics)) {
      sums[k] = (sums[k] ?? 0) + v * u.samples;
      ws[k] = (ws[k] ?? 0) + u.samples;
    }
  }
  const metrics: Record<string, number> = {};
  for (const k of Object.keys(sums)) metrics[k] = sums[k] / ws[k];
  return { clients: uploads.length, samples, metrics, covered };
}

/** Chunks per blob for an adapter of n floats (exported for docs/tests). */
export const blobChunks = (n: number): number => chunkCount(n * 4);
