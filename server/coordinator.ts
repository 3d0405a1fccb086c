/**
 * The federation state machine over Deno KV (Flower vocabulary: the strategy is parameter-wise
 * FedAvg over masks; `configure_fit` is the task, `aggregate_fit` streams). `Coordinator` is the
 * facade that server/app.ts and the tests call; each job lives in a module of its own:
 *   run_state.ts     the in-memory view of each run, its bounded cache, and stale detection
 *   admission.ts     the pure checks that refuse a join or an upload before anything is written
 *   group_commit.ts  streaming fold and group commit (an upload is acknowledged once durable)
 *   round_close.ts   round close through the method's strategy, and the global adapter
 *   mask_store.ts    clients' stored masks and mask references
 *   clients.ts       joins and client records
 *   sweep.ts         what a crash left behind, deleted when a run is first loaded
 *   read_model.ts    every read of KV for display
 *   run_admin.ts     cancel and delete a run, and its global adapter for the admin (`admin`)
 *   run_life.ts      the run's live key: once a delete has begun, no write of the run lands
 */
import { chunkCount } from "./kv_chunks.ts";
import type { TaskInfo } from "../runtime/client/federated_client.ts";
import { OWN_WEIGHT_DEFAULT, strategyFor } from "../runtime/federation/strategies.ts";
import { type ClientRecord, K, type RoundRecord, type RunRecord, type UploadRecord } from "./records.ts";
import { researchEveryOf, type RunConfig, slotOf } from "./run_config.ts";
import {
  type DecodedSlice,
  type DecodedUpdate,
  isMaskRef,
  type MaskRefUpdate,
} from "../runtime/client/wire.ts";
import {
  andBits,
  bitWords,
  gatherBits,
  maskRef,
  popcountBits,
  withoutZeros,
} from "../runtime/kernels/bits.ts";
import { b64url } from "./tokens.ts";
import { checksum128 } from "./checksum.ts";
import { BoundedCache } from "./bounded_cache.ts";
import { defaultFolder, type Folder } from "./folder.ts";
import { ReadModel, type RunMetrics } from "./read_model.ts";
import {
  checkCapacity,
  checkTarget,
  checkUpdate,
  priorUpload,
  roundClosed,
  roundComplete,
  roundNotOpen,
  roundPosition,
} from "./admission.ts";
import { ClientRegistry, type JoinRequest } from "./clients.ts";
import { issueInvites, joinKeyFor } from "./enrollment.ts";
import { GroupCommit } from "./group_commit.ts";
import { MaskStore } from "./mask_store.ts";
import { openRound, RoundCloser } from "./round_close.ts";
import { deferred, type Pending, RetryableError, RunCache, type RunState } from "./run_state.ts";
import { claimUpload } from "./shards.ts";
import { sweepRun } from "./sweep.ts";
import { RunAdmin } from "./run_admin.ts";
import { LIVE } from "./run_life.ts";
import { ruleFor } from "./robust.ts";
import { ownWeightedValues } from "./own_weighted.ts";
import { accepted, type EventLog, joined, runCreated, silentLog } from "./event_log.ts";

export { RetryableError } from "./run_state.ts";
export { summarize } from "./round_close.ts";

/** Outcome of an upload. */
export interface UploadResult {
  status: "accepted" | "replay";
  uploadId: string;
  round: number;
}

/** Tuning of one coordinator instance. */
export interface CoordinatorOptions {
  /**
   * Runs whose state (8·N bytes of accumulators each) stays loaded; past it the least recently used
   * idle ones are dropped and reloaded from KV on their next request.
   */
  maxLoadedRuns?: number;
  /** Where the coordinator says what it does (default: nowhere). */
  events?: EventLog;
}

/** Runs, rounds, clients and streaming aggregation, all persisted in one Deno KV. */
export class Coordinator {
  /** Where events go (`CoordinatorOptions.events`). */
  readonly events: EventLog;
  private readonly reads: ReadModel;
  private readonly runs: RunCache;
  private readonly maskStore: MaskStore;
  private readonly commits: GroupCommit;
  private readonly closer: RoundCloser;
  /** Runs swept here (sweep.ts), once per run and status: a run found ended is swept once more. */
  private readonly swept = new BoundedCache<true>(10_000);
  /**
   * Clean-up that no request waits for (deleting a closed round's accumulators, replaced masks, an
   * old global generation, another instance's slot, the load sweep). Tracked so that `settled` and
   * `close` can wait for it: untracked, it lands at an arbitrary later moment, after the KV may be
   * closed.
   */
  private readonly cleanups = new Set<Promise<void>>();
  private readonly clients: ClientRegistry;
  /** Cancel, delete and the global adapter of runs (run_admin.ts). */
  readonly admin: RunAdmin;

  /**
   * `folder` runs the folds (default: a Worker where the platform has one, see folder.ts); the
   * coordinator owns it and closes it in `close()`.
   */
  constructor(
    private readonly kv: Deno.Kv,
    private readonly now: () => number = Date.now,
    private readonly folder: Folder = defaultFolder(),
    options: CoordinatorOptions = {},
  ) {
    this.reads = new ReadModel(kv);
    const instance = b64url(crypto.getRandomValues(new Uint8Array(6)));
    this.runs = new RunCache(kv, instance, folder, options.maxLoadedRuns ?? 16, (st) => this.loaded(st));
    this.maskStore = new MaskStore(kv);
    this.clients = new ClientRegistry(kv, now);
    const cleanUp = (work: Promise<void>) => this.cleanUp(work);
    this.commits = new GroupCommit(kv, folder, this.runs, instance, (st) => this.closer.closeNow(st));
    this.events = options.events ?? silentLog;
    this.closer = new RoundCloser(
      kv,
      now,
      folder,
      this.runs,
      this.commits,
      this.maskStore,
      cleanUp,
      this.events,
    );
    this.admin = new RunAdmin(kv, now, this.runs, this.closer, this.events, cleanUp);
  }

  /** A freshly loaded run: sweep what a crash left, and close a round that a crash left full. */
  private loaded(st: RunState): void {
    const key = `${st.run.id}/${st.run.status}`;
    if (!this.swept.get(key)) {
      this.swept.set(key, true);
      this.cleanUp(sweepRun(this.kv, st.run, [...st.uploads.values()], this.now()));
    }
    if (st.round && roundComplete(st.run.config, st.accepted)) {
      this.closer.closeRound(st).catch(() => {});
    }
  }

  /** Runs clean-up in the background, tracked. A failure leaves garbage behind, never wrong state. */
  private cleanUp(work: Promise<void>): void {
    const p = work.catch(() => {}).finally(() => this.cleanups.delete(p));
    this.cleanups.add(p);
  }

  // ---------- runs ----------

  /** Creates a run with round 1 open (enrollment "key": with the salted hash of `joinKey`, apart). */
  async createRun(config: RunConfig, secrets: { joinKey?: string | null } = {}): Promise<RunRecord> {
    const keyRecord = await joinKeyFor(config, secrets.joinKey);
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
    const res = this.kv.atomic()
      .check({ key: K.run(id), versionstamp: null })
      .set(K.run(id), run).set(K.live(id), LIVE) // the live key (run_life.ts), from the start
      .set(K.round(id, 1), openRound(id, 1, t, config))
      .set(K.clientCount(id), { count: 0 });
    if (keyRecord) res.set(K.joinKey(id), keyRecord);
    const done = await res.commit();
    if (!done.ok) throw new RetryableError("run id collision");
    for (const e of runCreated(run)) this.events.emit(e);
    return run;
  }

  /** Issues single-use invites to a run with enrollment "invite" (see enrollment.ts). */
  async createInvites(runId: string, count: number): Promise<string[]> {
    return await issueInvites(this.kv, await this.runs.get(runId), count, this.now());
  }

  /** Every run, newest first. */
  async listRuns(): Promise<RunRecord[]> {
    return (await this.reads.runs()).sort((a, b) => b.createdAt - a.createdAt);
  }

  /** A run (after closing its round if the deadline passed with a quorum). */
  async getRun(id: string, revalidate = true): Promise<{ run: RunRecord; round: RoundRecord | null }> {
    const st = await this.runs.get(id, revalidate);
    await this.closer.advance(st);
    return { run: st.run, round: st.round && { ...st.round, accepted: st.accepted, samples: st.samples } };
  }

  /** Closes overdue rounds of every loaded run (the server calls this on a timer). */
  async tick(): Promise<void> {
    for (const p of this.runs.loading()) {
      try {
        await this.closer.advance(await p);
      } catch { /* a failing run must not stop the others; its next request reports the error */ }
    }
  }

  // ---------- clients ----------

  /** Registers a client after the run's enrollment check; assigns its tier (requested, else round-robin). */
  join(runId: string, req: JoinRequest): Promise<ClientRecord> {
    return this.clients.join(runId, req).then((rec) => (this.events.emit(joined(rec)), rec));
  }

  /** What anyone with the run id may read before joining (the run record, no state loaded). */
  joinable(runId: string): Promise<RunRecord> {
    return this.clients.runRecord(runId);
  }

  /** A client's record, or 404. */
  client(runId: string, clientId: string): Promise<ClientRecord> {
    return this.clients.get(runId, clientId);
  }

  /** The next thing a client should do. */
  async task(runId: string, c: ClientRecord): Promise<TaskInfo> {
    let st = await this.runs.get(runId);
    await this.closer.advance(st);
    // A round being closed (often by this client's upload, its last seat): answer for the next.
    if (st.closing) st = await st.chain.then(() => this.runs.get(runId));
    const cfg = st.run.config;
    const r = st.round;
    let status: TaskInfo["status"] = "train";
    if (st.run.status === "done" || !r) status = "done";
    else if (st.uploads.has(c.id) || st.pending.has(c.id) || st.closing) status = "wait";
    else if (st.accepted + st.pending.size >= cfg.clientsPerRound) status = "wait";
    const strategy = strategyFor(cfg.method);
    // The strategy decides what this client does (Flower's configure_fit); a client with no stored
    // mask has not searched yet.
    const firstTime = strategy.personalMask ? (await this.maskStore.lastMaskOf(st, c.id)) === null : true;
    const plan = strategy.configure(st.run.round, firstTime, researchEveryOf(cfg), slotOf(cfg, c.seq));
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

  /**
   * The client's personalized slice: aggregated values at the positions of its latest mask that
   * some round has aggregated (`covered`); the client keeps its own values elsewhere. A stacking
   * method's is the whole stack, less its exact zeros.
   */
  async slice(runId: string, clientId: string): Promise<DecodedSlice> {
    let st = await this.runs.get(runId);
    await this.closer.advance(st);
    if (st.closing) {
      // Never serve the adapter of a round that is being replaced: wait for the close to land.
      await st.chain;
      st = await this.runs.get(runId);
    }
    const n = st.run.config.adapterSize, strategy = strategyFor(st.run.config.method);
    const mask = await this.maskStore.maskOf(st, clientId);
    const base = { run: runId, round: st.run.globalRound, adapterSize: n };
    if (!strategy.aggregates || !mask) {
      const empty = new Uint32Array(bitWords(n));
      return { ...base, maskBits: mask?.bits ?? empty, coveredBits: empty, values: new Float32Array(0) };
    }
    const g = await this.closer.loadGlobal(st);
    const covered = strategy.stacks ? g.c.slice() : andBits(mask.bits, g.c);
    const terms = strategy.ownWeighted && g.w ? await this.runs.ownTerms(st, clientId) : null;
    const values = terms && g.w
      ? ownWeightedValues(g.v, g.w, covered, terms, st.run.config.ownWeight ?? OWN_WEIGHT_DEFAULT)
      : gatherBits(g.v, covered, popcountBits(covered));
    // A client merges a stack from zero (FederatedClient), so its exact zeros need not travel.
    const out = strategy.stacks ? withoutZeros(covered, values) : { bits: covered, values };
    return { ...base, maskBits: mask.bits, coveredBits: out.bits, values: out.values };
  }

  // ---------- uploads ----------

  /**
   * Content-addressed id of an upload: a 128-bit checksum of the body. It is only ever compared with
   * the id stored under the same (run, round, client) key, so it needs no run/client prefix, and
   * checksum.ts says why a non-cryptographic checksum suffices (it costs about half of SHA-256 of a
   * 1 MiB body, and stays on the JS thread without an async hop).
   */
  static uploadId(body: Uint8Array): string {
    return `u1-${checksum128(body)}`;
  }

  /**
   * Announces an upload of `runId` whose body is still being received, so a commit about to start
   * can wait for it to join its group (see `gather`). The returned function ends the announcement;
   * it is idempotent, and `upload` calls it as soon as the update is handed to the folder.
   */
  expectUpload(runId: string): () => void {
    return this.runs.expect(runId);
  }

  /**
   * Validates policy (round, budget, norm, metrics), folds the update and resolves once it is durably
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
    let st = await this.runs.get(runId, false);
    // Another instance may have moved the run on: check with KV before refusing a round mismatch.
    if (round !== st.run.round || st.run.status !== "active") {
      st = await this.runs.get(runId);
      // A close of ours in flight (or one about to lose to another instance's) decides the round.
      if (round > st.run.round && st.closing) {
        await st.chain;
        st = await this.runs.get(runId);
      }
    }
    await this.closer.advance(st);
    const cfg = st.run.config;
    const strategy = strategyFor(cfg.method);
    const dense = strategy.denseMask;
    const last = dense ? null : await this.maskStore.lastMaskOf(st, clientId);
    // PerFIT masks rarely change after the search: an unchanged mask is referenced, not rewritten
    // (and a client that knows we hold it sends only its reference).
    let u: DecodedUpdate;
    let maskHash: string;
    if (isMaskRef(wire)) {
      maskHash = dense ? "" : wire.maskRef;
      u = await this.maskStore.withStoredMask(st, clientId, wire, last);
    } else {
      u = wire;
      maskHash = dense ? "" : await maskRef(u.maskBits);
    }
    const reuseMask = last !== null && last.hash === maskHash && last.round < round;
    checkTarget(u, runId, round);
    const position = roundPosition(st.run, round);
    if (position === "closed") {
      const old = await this.kv.get<UploadRecord>(K.upload(runId, round, clientId));
      if (old.value?.uploadId === uploadId) return { status: "replay", uploadId, round };
      throw roundClosed(st.run, round);
    }
    if (position === "ahead") {
      // Refuse only what KV itself says: a state that another instance moved on is reloaded and the
      // client told to retry (a client only learns of a round from some instance that opened it).
      const fresh = (await this.kv.get<RunRecord>(K.run(runId))).value;
      if (fresh && fresh.round >= round) {
        this.runs.kill(st, new Error("the run moved on in another instance"));
        throw new RetryableError(`round ${round} was opened by another instance, retry`);
      }
      throw roundNotOpen(st.run, round);
    }
    const norm = checkUpdate(cfg, strategy, u);
    // The run's aggregation sees the values as it admits them (clipped-mean scales them to clipNorm).
    const admitted = ruleFor(cfg).admit(u.values, norm);
    if (admitted !== u.values) u = { ...u, values: admitted };
    // What this instance can refuse already, it refuses before the claim (a write): a refused upload
    // changes nothing. A replay or a duplicate in flight here needs no claim either.
    let claimed: UploadRecord | undefined;
    if (priorUpload(st.uploads.get(clientId), st.pending.get(clientId), uploadId, round) === null) {
      checkCapacity(cfg, st, round);
      claimed = await claimUpload(this.kv, st, this.runs.instance, clientId, uploadId);
    }
    // Synchronous from here to `commits.commit`: no await, so no other upload interleaves.
    if (st.round?.index !== round) throw new RetryableError("the round moved on, retry");
    const before = st.uploads.get(clientId) ?? claimed;
    const prior = priorUpload(before, st.pending.get(clientId), uploadId, round);
    if (prior === "replay") return { status: "replay", uploadId, round };
    if (prior === "wait") {
      folded?.();
      await st.pending.get(clientId)!.done;
      return { status: "replay", uploadId, round };
    }
    checkCapacity(cfg, st, round);
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
    const maskBits = dense || reuseMask ? null : u.maskBits;
    const p: Pending = { seq: ++st.foldSeq, client: clientId, uploadId, record, maskBits, ...deferred() };
    await this.commits.commit(st, p, u, folded);
    if (st.round?.index === round) this.events.emit(accepted(st.run, st.round, st.accepted));
    return { status: "accepted", uploadId, round };
  }

  // ---------- observability ----------

  /** Uploads of a loaded run that are admitted but not yet durably committed (0 if not loaded). */
  inFlight(runId: string): number {
    return this.runs.peek(runId)?.pending.size ?? 0;
  }

  /** Ids of the runs whose state this instance holds, least recently used first. */
  loadedRuns(): string[] {
    return this.runs.ids();
  }

  /** Rounds timeline with per-client metrics, for dashboards (read model: server/read_model.ts). */
  async metrics(runId: string): Promise<RunMetrics> {
    return await this.reads.metrics((await this.getRun(runId)).run);
  }

  /** Latest mask bitmask of each client (paged), for overlap (Jaccard) and budget-spread views. */
  async masks(
    runId: string,
    offset: number,
    limit: number,
  ): Promise<{ client: string; round: number; bits: Uint32Array }[]> {
    const st = await this.runs.get(runId);
    const out: { client: string; round: number; bits: Uint32Array }[] = [];
    for (const c of await this.reads.clients(runId, offset, limit)) {
      const m = await this.maskStore.maskOf(st, c.id);
      if (m) out.push({ client: c.id, round: m.round, bits: m.bits });
    }
    return out;
  }

  /**
   * Resolves once this instance has no work in flight: every run's commit and close chain has
   * drained and every background clean-up has landed. What KV holds then stays as it is until the
   * next request or tick. (A drained chain can schedule clean-up, hence the loop.)
   */
  async settled(): Promise<void> {
    const inFlight = () => [
      ...this.cleanups,
      ...this.runs.all().map((st) => st.chain),
      ...this.clients.inFlight(),
    ];
    for (;;) {
      const awaited = inFlight();
      await Promise.all(awaited);
      // A chain is replaced (never mutated) when work is enqueued, and finished clean-ups and joins
      // leave their sets: nothing new since the wait means nothing is left.
      if (inFlight().every((p) => awaited.includes(p))) return;
    }
  }

  /**
   * Waits for in-flight commits, stops accepting work and stops the fold worker (the KV stays open:
   * the caller owns it).
   */
  async close(): Promise<void> {
    this.runs.closed = true;
    for (const p of this.runs.loading()) {
      try {
        await (await p).chain;
      } catch { /* already reported to the requests that failed */ }
    }
    await this.folder.drain().catch(() => {});
    await this.settled();
    this.folder.close();
    this.runs.clear();
  }
}

/** Chunks per blob for an adapter of n floats (exported for docs/tests). */
export const blobChunks = (n: number): number => chunkCount(n * 4);
