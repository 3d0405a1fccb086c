/**
 * `FederatedClient`: one data owner's side of a run. Join, then loop: pull the round task and the
 * personalized slice, train locally with a pluggable trainer (the ORT engine, or a fake in tests),
 * push the update. Every network call retries with exponential back-off; the state needed to resume
 * (token, own adapter, mask, an encoded-but-unacknowledged upload) is saved before each step that
 * could be lost, so a crashed client picks up where it stopped and a re-sent upload is a replay.
 */
import { attachMask, decodeSlice, encodeRoundUpdate, packMask } from "./wire.ts";
import { bitWords, forEachBit, maskRef } from "../kernels/bits.ts";
import { type ClientStorage, MemoryStorage } from "./storage.ts";
import { type ClientPlan, type DeployedMethod, strategyFor } from "../federation/strategies.ts";
import type { TargetModule } from "../model/lora.ts";
import { parseTrainSettings } from "./train_settings.ts";

/** The round task as the server sends it. */
export interface TaskInfo {
  run: string;
  round: number;
  status: "train" | "wait" | "done";
  deadline: number | null;
  method: DeployedMethod;
  baseModel: string;
  lora: { rank: number; alpha: number; targets: TargetModule[] };
  tier: string;
  expansion: number;
  /** LoRA rank this client trains at: r * expansion. */
  rank: number;
  budget: number;
  adapterSize: number;
  seed: number;
  globalRound: number;
  train: Record<string, unknown>;
  /** What the run's strategy has this client do this round (search, random mask). */
  plan: ClientPlan;
}

/** What a trainer returns: the whole adapter after training, the mask it trained, and its sample count. */
export interface TrainerOutput {
  values: Float32Array;
  mask: Uint8Array;
  /** The positions the client can ever hold (its own layout in the run's): a new mask is coded over them. */
  support?: Uint8Array;
  /**
   * The positions it uploads and gets back aggregated (default: all of `mask`); the rest of the mask
   * stays private (FedSA-LoRA shares only A).
   */
  share?: Uint8Array;
  samples: number;
  metrics?: Record<string, number>;
}

/**
 * Local training: gets the task, the client's adapter (own values with the personalized slice
 * merged in) and its current mask (null before its first round), returns the trained adapter.
 */
export type Trainer = (
  task: TaskInfo,
  adapter: Float32Array,
  mask: Uint8Array | null,
) => Promise<TrainerOutput>;

/**
 * A mixing method's merge (perfit-mix, engineTrainer's `mixSlice`): from the adapter before the slice
 * (`own`), the adapter with the slice merged in, and the client's mask, the adapter it holds.
 */
export type SliceMixer = (
  task: TaskInfo,
  own: Float32Array,
  merged: Float32Array,
  mask: Uint8Array | null,
) => Promise<Float32Array>;

/**
 * Local fine-tuning once the run is done (engineTrainer's `finetune`): from the final personalized
 * adapter and mask, the adapter the client keeps.
 */
export type Finetuner = (
  task: TaskInfo,
  adapter: Float32Array,
  mask: Uint8Array | null,
) => Promise<Float32Array>;

/**
 * A trainer that keeps private optimizer state between rounds (engineTrainer under
 * `train.optimizerState: "kept"`): the client saves it with each generation and hands it back after a
 * restart, so a resumed client steps on from its moments rather than from a fresh AdamW.
 */
export interface OptimizerKeeper {
  optimizerState(): Uint8Array | null;
  restoreOptimizerState(bytes: Uint8Array): void;
}

/** Options of `FederatedClient.create`. */
export interface FederatedClientOptions {
  serverUrl: string;
  runId: string;
  trainer: Trainer;
  storage?: ClientStorage;
  name?: string;
  /** Requested tier (the server assigns one round-robin otherwise). */
  tier?: string;
  /** What a run that does not take everyone needs at join: its join key, or a single-use invite. */
  enrollment?: { key?: string; invite?: string };
  /**
   * Initial adapter in the global layout; default: the trainer's own `initAdapter` (engineTrainer
   * has one). Required one way or the other, and never all zeros.
   */
  initAdapter?: (task: TaskInfo) => Float32Array | Promise<Float32Array>;
  fetch?: typeof fetch;
  retry?: { attempts?: number; baseMs?: number; maxMs?: number };
  sleep?: (ms: number) => Promise<void>;
  /** Wait between polls while the round is not ready for this client (default 500 ms). */
  pollMs?: number;
  /** Called when a request failed and will be retried: what failed, the attempt, the wait before the next. */
  onRetry?: (what: string, attempt: number, waitMs: number, error: unknown) => void;
  /** Clock (ms since epoch) for token refresh; tests inject one. */
  now?: () => number;
  /** Called once a global round's slice is merged into the adapter (the personalized model of that round). */
  onSlice?: (globalRound: number) => void | Promise<void>;
}

/** A refusal from the server that retrying will not fix. */
export class FederatedClientError extends Error {
  override name = "FederatedClientError";
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

interface SavedState {
  serverUrl: string;
  runId: string;
  clientId: string;
  token: string;
  tier: string;
  expansion: number;
  adapterSize: number;
  /** Last round whose upload the server acknowledged (0 = none). */
  lastRound: number;
  /** Round of an encoded upload not yet acknowledged (saved as "pending.safetensors"). */
  pendingRound: number | null;
  /** `maskRef` of the mask the server last acknowledged: an unchanged mask is sent by it alone. */
  ackedMaskRef?: string;
  /** Global round whose slice is merged into the saved adapter (it is not fetched again). */
  sliceRound?: number;
  /** Global round whose final adapter the saved one is the local fine-tuning of (it is not tuned again). */
  finetunedRound?: number;
  /**
   * Generation of the saved adapter, mask and share (`adapter.<gen>.f32`, …; 0 or absent: the first
   * names, `adapter.f32`, …). A new generation is written under new names and becomes the saved one by
   * the state write that names it, so a crash between the two leaves the previous one in force.
   */
  gen?: number;
  /** When the token was issued (by our clock) and when it expires (the server's word). */
  tokenIssuedAt?: number;
  tokenExpiresAt?: number;
}

/** The storage names of a saved generation's adapter, mask, share and kept optimizer state. */
const blobKeys = (gen: number) =>
  gen === 0 ? { adapter: "adapter.f32", mask: "mask.u8", share: "share.u8", optimizer: "optimizer.bin" } : {
    adapter: `adapter.${gen}.f32`,
    mask: `mask.${gen}.u8`,
    share: `share.${gen}.u8`,
    optimizer: `optimizer.${gen}.bin`,
  };

const keeperOf = (t: Trainer): Partial<OptimizerKeeper> => t as Partial<OptimizerKeeper>;

/** What one `step()` did. */
export interface StepOutcome {
  kind: "trained" | "resumed" | "waiting" | "done";
  round: number;
  status?: "accepted" | "replay" | "late";
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Client of one run on one coordinator. */
export class FederatedClient {
  private state: SavedState | null = null;
  private adapterBuf: Float32Array | null = null;
  private maskBuf: Uint8Array | null = null;
  /** The part of the mask uploaded (what `ackedMaskRef` names); the mask itself when all is shared. */
  private shareBuf: Uint8Array | null = null;
  /** The trainer's kept optimizer state after the last round it trained (null: none kept). */
  private optimizerBuf: Uint8Array | null = null;
  private readonly storage: ClientStorage;
  private readonly fetchImpl: typeof fetch;
  private readonly sleep: (ms: number) => Promise<void>;

  private constructor(private readonly opts: FederatedClientOptions) {
    this.storage = opts.storage ?? new MemoryStorage();
    this.fetchImpl = opts.fetch ?? ((i, init) => fetch(i, init));
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** A client, resumed from `storage` when it holds a state for the same server and run. */
  static async create(opts: FederatedClientOptions): Promise<FederatedClient> {
    const c = new FederatedClient(opts);
    const raw = await c.storage.get("state.json");
    if (raw) {
      const s = JSON.parse(dec.decode(raw)) as SavedState;
      if (s.serverUrl === opts.serverUrl && s.runId === opts.runId) {
        c.state = s;
        const k = blobKeys(s.gen ?? 0);
        const a = await c.storage.get(k.adapter);
        if (a && a.byteLength === s.adapterSize * 4) c.adapterBuf = new Float32Array(a.slice().buffer);
        const m = await c.storage.get(k.mask);
        if (m && m.byteLength === s.adapterSize) c.maskBuf = m;
        const sh = await c.storage.get(k.share);
        c.shareBuf = sh && sh.byteLength === s.adapterSize ? sh : c.maskBuf;
        const o = await c.storage.get(k.optimizer);
        const keeper = keeperOf(opts.trainer);
        if (o && keeper.restoreOptimizerState) {
          keeper.restoreOptimizerState(o);
          c.optimizerBuf = o;
        }
      }
    }
    return c;
  }

  /** The client id once joined. */
  get clientId(): string | null {
    return this.state?.clientId ?? null;
  }
  /** The client's current adapter (own values with the last personalized slice merged). */
  get adapter(): Float32Array | null {
    return this.adapterBuf;
  }
  /** The client's current mask. */
  get mask(): Uint8Array | null {
    return this.maskBuf;
  }
  /** Last round acknowledged by the server. */
  get lastRound(): number {
    return this.state?.lastRound ?? 0;
  }

  private async save(): Promise<void> {
    await this.storage.set("state.json", enc.encode(JSON.stringify(this.state)));
  }

  /**
   * Saves the adapter, mask and share as a new generation, then the state that names it (with
   * `update`'s changes): a crash before the state write keeps the previous generation and state
   * together, so a resumed client redoes the merge or the round from what it had started from.
   */
  private async commit(
    blobs: { adapter: Float32Array; mask: Uint8Array | null; share: Uint8Array | null },
    update: (st: SavedState) => void,
  ): Promise<void> {
    const st = this.state!;
    const old = st.gen ?? 0, next = blobKeys(old + 1), prev = blobKeys(old);
    const a = blobs.adapter;
    await this.storage.set(
      next.adapter,
      new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength)),
    );
    if (blobs.mask) await this.storage.set(next.mask, blobs.mask);
    if (blobs.share) await this.storage.set(next.share, blobs.share);
    // The optimizer state goes with every generation: it belongs to the adapter it trained.
    if (this.optimizerBuf) await this.storage.set(next.optimizer, this.optimizerBuf);
    st.gen = old + 1;
    update(st);
    await this.save();
    for (const key of [prev.adapter, prev.mask, prev.share, prev.optimizer]) await this.storage.delete(key);
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /**
   * Trades the token for a fresh one once three quarters of its lifetime have passed, so a run longer
   * than the server's token TTL goes on (an expired token can no longer be refreshed).
   */
  private async refreshToken(): Promise<void> {
    const st = this.state;
    if (!st?.tokenExpiresAt || st.tokenIssuedAt === undefined) return;
    if (this.now() < st.tokenIssuedAt + 0.75 * (st.tokenExpiresAt - st.tokenIssuedAt)) return;
    const issued = this.now();
    const j = await (await this.send("POST", `${this.base()}/token`, "{}")).json();
    st.token = j.token;
    st.tokenIssuedAt = issued;
    st.tokenExpiresAt = typeof j.tokenExpiresAt === "number" ? j.tokenExpiresAt : undefined;
    await this.save();
  }

  private async request(method: string, path: string, body?: Uint8Array | string): Promise<Response> {
    await this.refreshToken();
    return await this.send(method, path, body);
  }

  /** fetch with retries on network errors, 408, 429 and 5xx; other 4xx throw `FederatedClientError`. */
  private async send(method: string, path: string, body?: Uint8Array | string): Promise<Response> {
    const attempts = this.opts.retry?.attempts ?? 6;
    const base = this.opts.retry?.baseMs ?? 200;
    const max = this.opts.retry?.maxMs ?? 10_000;
    let lastErr: unknown;
    for (let i = 0; i < attempts; i++) {
      if (i > 0) {
        const wait = Math.min(max, base * 2 ** (i - 1)) * (0.5 + Math.random() / 2);
        this.opts.onRetry?.(`${method} ${path}`, i, wait, lastErr);
        await this.sleep(wait);
      }
      let res: Response;
      try {
        const headers: Record<string, string> = {};
        if (this.state) headers.authorization = `Bearer ${this.state.token}`;
        if (typeof body === "string") headers["content-type"] = "application/json";
        else if (body) headers["content-type"] = "application/octet-stream";
        res = await this.fetchImpl(`${this.opts.serverUrl}${path}`, {
          method,
          headers,
          body: body as BodyInit | undefined,
        });
      } catch (e) {
        lastErr = e;
        continue;
      }
      if (res.ok) return res;
      let code = "http_error";
      let message = `${method} ${path}: HTTP ${res.status}`;
      try {
        const j = await res.json();
        code = j?.error?.code ?? code;
        message = `${message}: ${j?.error?.message ?? ""}`;
      } catch { /* body was not our JSON error */ }
      const err = new FederatedClientError(res.status, code, message);
      // 408: the server gave up on a body that arrived too slowly; a resend may be faster.
      if (res.status === 408 || res.status === 429 || res.status >= 500) {
        lastErr = err;
        const ra = Number(res.headers.get("retry-after"));
        if (ra > 0) await this.sleep(Math.min(max, ra * 1000));
        continue;
      }
      throw err;
    }
    throw lastErr instanceof Error ? lastErr : new Error(String(lastErr));
  }

  /** Joins the run (no-op when resumed from storage). */
  async join(): Promise<{ clientId: string; tier: string; expansion: number }> {
    if (!this.state) {
      const res = await this.request(
        "POST",
        `/v1/runs/${this.opts.runId}/join`,
        JSON.stringify({ name: this.opts.name, tier: this.opts.tier, ...this.opts.enrollment }),
      );
      const j = await res.json();
      this.state = {
        serverUrl: this.opts.serverUrl,
        runId: this.opts.runId,
        clientId: j.clientId,
        token: j.token,
        tier: j.tier,
        expansion: j.expansion,
        adapterSize: j.adapterSize,
        lastRound: 0,
        pendingRound: null,
        tokenIssuedAt: this.now(),
        tokenExpiresAt: typeof j.tokenExpiresAt === "number" ? j.tokenExpiresAt : undefined,
      };
      await this.save();
    }
    return { clientId: this.state.clientId, tier: this.state.tier, expansion: this.state.expansion };
  }

  private base(): string {
    return `/v1/runs/${this.state!.runId}/clients/${this.state!.clientId}`;
  }

  /** The current round task. */
  async task(): Promise<TaskInfo> {
    if (!this.state) await this.join();
    return await (await this.request("GET", `${this.base()}/task`)).json();
  }

  /**
   * Pulls the personalized slice and merges it into the adapter (own values stay where not covered);
   * a slice already merged (same global round) is not fetched again.
   */
  async pullSlice(task: TaskInfo): Promise<void> {
    const n = task.adapterSize;
    if (this.adapterBuf && this.state?.sliceRound === task.globalRound) return;
    if (!this.adapterBuf) this.adapterBuf = await this.initialAdapter(task);
    if (this.adapterBuf.length !== n) {
      throw new Error(`adapter has ${this.adapterBuf.length} values, run needs ${n}`);
    }
    let s = decodeSlice(
      new Uint8Array(await (await this.request("GET", `${this.base()}/slice`)).arrayBuffer()),
    );
    // A replica that has not seen the last aggregation yet (several server instances) serves an
    // older slice: ask again rather than train on it.
    for (let i = 0; s.round < task.globalRound && i < (this.opts.retry?.attempts ?? 6); i++) {
      await this.sleep(this.opts.pollMs ?? 500);
      s = decodeSlice(
        new Uint8Array(await (await this.request("GET", `${this.base()}/slice`)).arrayBuffer()),
      );
    }
    if (s.round < task.globalRound) {
      throw new Error(`slice of round ${s.round} is older than the task's ${task.globalRound}`);
    }
    if (s.adapterSize !== n || s.coveredBits.length !== bitWords(n)) {
      throw new Error("slice does not match the run");
    }
    // Merged into a copy: the adapter in memory stays what it was until the merge is saved. A stack
    // is the whole update (FLoRA): where it holds nothing, nothing of this client's own stays.
    let a: Float32Array = strategyFor(task.method).stacks ? new Float32Array(n) : this.adapterBuf.slice();
    forEachBit(s.coveredBits, (p, r) => (a[p] = s.values[r]));
    // A mixing method weighs what it trained against the average (the trainer's `mixSlice`).
    const mixer = strategyFor(task.method).mixes
      ? (this.opts.trainer as { mixSlice?: SliceMixer }).mixSlice
      : undefined;
    if (mixer) {
      a = await mixer(task, this.adapterBuf, a, this.maskBuf);
      if (a.length !== n) throw new Error(`mixSlice returned ${a.length} values, run needs ${n}`);
    }
    if (this.state) {
      await this.commit(
        { adapter: a, mask: this.maskBuf, share: this.shareBuf },
        (st) => (st.sliceRound = s.round),
      );
    }
    this.adapterBuf = a;
    await this.opts.onSlice?.(s.round);
  }

  /**
   * The adapter a client starts from: LoRA's (A random, B zero), from `initAdapter` or the trainer's
   * own. An all-zero start is refused: with A = B = 0 no gradient reaches either matrix.
   */
  private async initialAdapter(task: TaskInfo): Promise<Float32Array> {
    const init = this.opts.initAdapter ??
      (this.opts.trainer as { initAdapter?: FederatedClientOptions["initAdapter"] }).initAdapter;
    if (!init) throw new Error("FederatedClient needs initAdapter (engineTrainer provides one)");
    const a = await init(task);
    if (!(a instanceof Float32Array) || a.length !== task.adapterSize) {
      throw new Error(`initAdapter must give a Float32Array of ${task.adapterSize} values`);
    }
    let nonZero = false;
    for (let i = 0; i < a.length; i++) {
      if (!Number.isFinite(a[i])) throw new Error(`initAdapter gave a non-finite value at ${i}`);
      if (a[i] !== 0) nonZero = true;
    }
    if (!nonZero) {
      throw new Error(
        "initAdapter gave all zeros: LoRA then gets no gradient (initialise A at random, B at zero)",
      );
    }
    return a;
  }

  private async post(round: number, body: Uint8Array): Promise<StepOutcome["status"]> {
    try {
      const res = await this.request("POST", `${this.base()}/rounds/${round}/update`, body);
      return (await res.json()).status;
    } catch (e) {
      // The round closed before the upload landed: drop it and train on the next round.
      if (e instanceof FederatedClientError && e.status === 410) return "late";
      throw e;
    }
  }

  private async push(round: number, body: Uint8Array): Promise<StepOutcome["status"]> {
    let status: StepOutcome["status"];
    try {
      status = await this.post(round, body);
    } catch (e) {
      // The server does not hold the mask we referenced (it lost our acknowledgement, or another
      // instance moved on): send the same update with the mask itself.
      if (!(e instanceof FederatedClientError && e.code === "mask_unknown" && this.shareBuf)) throw e;
      body = attachMask(body, this.shareBuf);
      await this.storage.set("pending.safetensors", body);
      status = await this.post(round, body);
    }
    if (status !== "late") {
      this.state!.lastRound = round;
      if (this.shareBuf) this.state!.ackedMaskRef = await maskRef(packMask(this.shareBuf));
    }
    this.state!.pendingRound = null;
    await this.save();
    await this.storage.delete("pending.safetensors");
    return status;
  }

  /** One iteration: resume a pending upload, or train and upload, or wait, or report done. */
  async step(): Promise<StepOutcome> {
    if (!this.state) await this.join();
    const st = this.state!;
    const task = await this.task();
    if (st.pendingRound !== null && st.pendingRound <= task.round) {
      const body = await this.storage.get("pending.safetensors");
      if (body) {
        return { kind: "resumed", round: st.pendingRound, status: await this.push(st.pendingRound, body) };
      }
    }
    if (task.status === "done") {
      await this.pullSlice(task);
      await this.finetuneOnce(task);
      return { kind: "done", round: task.round };
    }
    if (task.status === "wait" || task.round <= st.lastRound) {
      await this.sleep(this.opts.pollMs ?? 500);
      return { kind: "waiting", round: task.round };
    }
    await this.pullSlice(task);
    const res = await this.opts.trainer(task, this.adapterBuf!, this.maskBuf);
    const n = task.adapterSize;
    if (res.values.length !== n || res.mask.length !== n) {
      throw new Error(
        `trainer returned ${res.values.length} values / ${res.mask.length} mask for an adapter of ${n}`,
      );
    }
    this.adapterBuf = res.values.slice();
    this.maskBuf = res.mask.slice();
    this.optimizerBuf = keeperOf(this.opts.trainer).optimizerState?.() ?? null;
    // A method that aggregates nothing (local-only) reports its metrics with an empty mask.
    const shares = strategyFor(task.method).aggregates;
    if (res.share && res.share.length !== n) {
      throw new Error(`trainer returned a share of ${res.share.length}`);
    }
    this.shareBuf = shares ? (res.share ?? res.mask).slice() : new Uint8Array(n);
    const { body } = await encodeRoundUpdate({
      run: task.run,
      round: task.round,
      samples: res.samples,
      metrics: res.metrics,
      values: shares ? res.values : new Float32Array(n),
      mask: this.shareBuf,
      support: res.support,
    }, shares ? st.ackedMaskRef : undefined);
    await this.storage.set("pending.safetensors", body);
    await this.commit(
      { adapter: this.adapterBuf, mask: this.maskBuf, share: this.shareBuf },
      (s) => (s.pendingRound = task.round),
    );
    return { kind: "trained", round: task.round, status: await this.push(task.round, body) };
  }

  /**
   * The run's `finetuneSteps` of local fine-tuning on the final personalized model, once: the tuned
   * adapter is committed with the round it tunes, so a restarted client neither tunes twice nor loses it.
   */
  private async finetuneOnce(task: TaskInfo): Promise<void> {
    const steps = parseTrainSettings(task.train).finetuneSteps;
    if (steps === 0 || this.state!.finetunedRound === task.globalRound) return;
    const tune = (this.opts.trainer as { finetune?: Finetuner }).finetune;
    if (!tune) {
      throw new Error(
        `the run asks for ${steps} fine-tuning steps; this trainer cannot fine-tune (engineTrainer can)`,
      );
    }
    const a = await tune(task, this.adapterBuf!, this.maskBuf);
    if (!(a instanceof Float32Array) || a.length !== task.adapterSize) {
      throw new Error(`finetune must give a Float32Array of ${task.adapterSize} values`);
    }
    if (!a.every(Number.isFinite)) throw new Error("finetune gave a non-finite value");
    await this.commit(
      { adapter: a, mask: this.maskBuf, share: this.shareBuf },
      (st) => (st.finetunedRound = task.globalRound),
    );
    this.adapterBuf = a;
  }

  /** Steps until the run is done (or `maxSteps`), returning the outcomes. */
  async run(opts: { maxSteps?: number; onStep?: (o: StepOutcome) => void } = {}): Promise<StepOutcome[]> {
    const out: StepOutcome[] = [];
    for (let i = 0; i < (opts.maxSteps ?? 10_000); i++) {
      const o = await this.step();
      out.push(o);
      opts.onStep?.(o);
      if (o.kind === "done") break;
    }
    return out;
  }
}
