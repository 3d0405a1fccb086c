/**
 * The training engine: runs the LoRA train-step and eval graphs on onnxruntime (node, WASM or WebGPU)
 * over flat adapter arrays. The flat adapter is split into per-tensor inputs by subarray views (no
 * copies) and the per-tensor outputs are concatenated back into flat arrays of the same layout.
 */
import {
  type Backend,
  createSession,
  type Feed,
  type GraphSession,
  resolveBackend,
  type ResolvedBackend,
  type SessionOptions,
} from "../graph/mod.ts";
import type { ModelConfig } from "./config.ts";
import type { LoadedModel } from "./load.ts";
import { type AdapterLayout, adapterLayout, loraScale, type LoraSpec } from "./lora.ts";
import {
  buildFullEvalGraph,
  buildFullTrainGraph,
  buildLoraEvalGraph,
  buildLoraHiddenGraph,
  buildLoraTrainGraph,
  type BuiltGraph,
  type KernelWeights,
  type LoraGraphOptions,
  type WeightMode,
} from "./train_step.ts";

export { type LoadedModel, loadModel } from "./load.ts";

/**
 * One padded batch (the data pipeline's `makeBatches` produces it). `lossMask[b*seq+t] = 1` iff
 * token t+1 of row b is a real response (or EOS) token, i.e. the mask is already shifted to the
 * position that predicts it.
 */
export interface Batch {
  inputIds: BigInt64Array | Int32Array;
  attentionMask: Float32Array;
  lossMask: Float32Array;
  batch: number;
  seq: number;
}

/** Output of one train step; flat arrays share the adapter's layout. */
export interface StepResult {
  loss: number;
  grads: Float32Array;
  /** |theta * grad| per position (0 where masked). */
  importance: Float32Array;
}

/** Engine options. */
export interface EngineOptions {
  backend?: Backend;
  /** LoRA scale; default alpha / baseRank (see `LoraSpec.baseRank`). */
  scale?: number;
  /**
   * Base weights as initializers or as inputs. Default: inputs on onnxruntime-node (fed zero-copy, one
   * session per shape), constants on WASM/WebGPU (uploaded once instead of copied every step).
   */
  weightMode?: WeightMode;
  /** Threads for node/WASM sessions. */
  numThreads?: number;
  /**
   * onnxruntime memory and scheduling knobs for the engine's sessions (see `SessionOptions`). The
   * defaults (CPU arena off on onnxruntime-node, sequential execution, all graph optimizations) are
   * the ones that keep a 135M LoRA step under 3 GB.
   */
  session?: SessionTuningOptions;
  /** Vocabulary chunk of the LM head and loss (default 8192; smaller = less memory, more nodes). */
  headChunk?: number;
  /**
   * Activation checkpointing in the train step (default false): each decoder layer's activations are
   * recomputed in the backward pass instead of kept, for about one more forward pass of compute.
   */
  checkpoint?: boolean;
}

/** The session options an engine passes through to `createSession`. */
export type SessionTuningOptions = Pick<
  SessionOptions,
  "memArena" | "memPattern" | "executionMode" | "graphOptimizationLevel" | "mallocMmapThreshold" | "profile"
>;

/** Bad batch or adapter: the message says which field. */
export class EngineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "EngineError";
  }
}

/** Checks a batch and returns the feeds shared by every graph (ids, masks, shifted targets). */
export function batchFeeds(cfg: ModelConfig, b: Batch): Record<string, Feed> {
  const { batch, seq } = b;
  if (!Number.isInteger(batch) || batch <= 0 || !Number.isInteger(seq) || seq <= 0) {
    throw new EngineError(`batch and seq must be positive integers, got ${batch}x${seq}`);
  }
  const n = batch * seq;
  for (
    const [k, v] of [["inputIds", b.inputIds], ["attentionMask", b.attentionMask], [
      "lossMask",
      b.lossMask,
    ]] as const
  ) {
    if (!v || v.length !== n) {
      throw new EngineError(`${k} has ${v?.length} values, expected ${batch}x${seq}=${n}`);
    }
  }
  const targets = new BigInt64Array(n);
  const ids = b.inputIds instanceof BigInt64Array
    ? b.inputIds
    : BigInt64Array.from(b.inputIds, (v) => BigInt(v));
  for (let i = 0; i < n; i++) {
    const id = Number(ids[i]);
    if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) {
      throw new EngineError(`inputIds[${i}] = ${id} is outside the vocabulary [0, ${cfg.vocabSize})`);
    }
    const m = b.attentionMask[i], l = b.lossMask[i];
    if (!(m === 0 || m === 1) || !(l === 0 || l === 1)) {
      throw new EngineError(`masks must be 0/1 (index ${i})`);
    }
    if (i % seq !== seq - 1) targets[i] = ids[i + 1];
    else if (l !== 0) {
      throw new EngineError(
        `lossMask is 1 at the last position of row ${Math.floor(i / seq)} (nothing to predict)`,
      );
    }
  }
  if (seq > cfg.maxPositionEmbeddings || seq > 4096) {
    throw new EngineError(`seq ${seq} exceeds the model's maximum`);
  }
  return {
    input_ids: { data: ids, dims: [batch, seq] },
    attention_mask: { data: b.attentionMask, dims: [batch, seq] },
    targets: { data: targets, dims: [batch, seq] },
    loss_mask: { data: b.lossMask, dims: [batch, seq] },
  };
}

function num(out: { data: ArrayLike<number | bigint> }): number {
  return Number(out.data[0]);
}

/** LoRA training and evaluation over one base model. */
export class Engine {
  /** Shared with the engines `rebased` makes, which run the same graphs. */
  private evalSession: { p?: Promise<GraphSession> } = {};
  private hiddenSession?: Promise<{ session: GraphSession; weights: Record<string, Feed> }>;
  private maskBuf: Float32Array;
  private onesMask?: Float32Array;

  private constructor(
    readonly model: LoadedModel,
    readonly layout: AdapterLayout,
    readonly backend: ResolvedBackend,
    readonly scale: number,
    readonly weightMode: WeightMode,
    private readonly trainSession: GraphSession,
    private readonly weightFeeds: Record<string, Feed>,
    private readonly sessionOpts: SessionOptions,
    private readonly graphOpts: LoraGraphOptions,
    private readonly created: { spec: LoraSpec; opts: EngineOptions },
  ) {
    this.maskBuf = new Float32Array(layout.size);
  }

  /**
   * The same LoRA graphs over other base weights of the same shapes (FLoRA merges every round's
   * aggregate into its base). With weights fed as inputs the sessions are shared and only the
   * feeds change; with weights baked in as constants the graphs are built again.
   */
  async rebased(model: LoadedModel): Promise<Engine> {
    for (const [name, t] of this.model.kernelWeights) {
      const u = model.kernelWeights.get(name);
      if (!u || u.shape.join() !== t.shape.join()) throw new EngineError(`rebased weights differ at ${name}`);
    }
    if (this.weightMode !== "inputs") {
      return await Engine.create(model, this.created.spec, { ...this.created.opts, backend: this.backend });
    }
    const kernel = model.kernelWeights;
    const feeds: Record<string, Feed> = {};
    for (const key of Object.keys(this.weightFeeds)) {
      const k = kernel.get(key.slice(2))!;
      feeds[key] = { data: k.data, dims: k.shape };
    }
    const e = new Engine(
      model,
      this.layout,
      this.backend,
      this.scale,
      this.weightMode,
      this.trainSession,
      feeds,
      this.sessionOpts,
      this.graphOpts,
      this.created,
    );
    e.evalSession = this.evalSession;
    return e;
  }

  /** Builds the train-step graph and opens its session. */
  static async create(model: LoadedModel, spec: LoraSpec, opts: EngineOptions = {}): Promise<Engine> {
    const backend = await resolveBackend(opts.backend ?? "auto");
    const layout = adapterLayout(model.config, spec);
    const scale = opts.scale ?? loraScale(spec);
    const mode: WeightMode = opts.weightMode ?? (backend === "node" ? "inputs" : "constants");
    const kernel = model.kernelWeights;
    if (opts.headChunk !== undefined && (!Number.isInteger(opts.headChunk) || opts.headChunk < 1)) {
      throw new EngineError(`headChunk must be a positive integer, got ${opts.headChunk}`);
    }
    const graphOpts = { headChunk: opts.headChunk, checkpoint: opts.checkpoint ?? false };
    const built = buildLoraTrainGraph(model.config, layout, scale, mode, kernel, graphOpts);
    const sessionOpts: SessionOptions = { ...opts.session, backend, numThreads: opts.numThreads };
    const session = await createSession(built.onnx, sessionOpts);
    return new Engine(
      model,
      layout,
      backend,
      scale,
      mode,
      session,
      weightFeedsOf(built, kernel),
      sessionOpts,
      graphOpts,
      { spec, opts },
    );
  }

  private loraFeeds(
    adapter: Float32Array,
    mask: Float32Array | Uint8Array | undefined,
  ): Record<string, Feed> {
    const L = this.layout;
    if (!(adapter instanceof Float32Array) || adapter.length !== L.size) {
      throw new EngineError(`adapter must be a Float32Array of ${L.size} values, got ${adapter?.length}`);
    }
    for (let i = 0; i < adapter.length; i++) {
      if (!Number.isFinite(adapter[i])) throw new EngineError(`adapter holds a non-finite value at ${i}`);
    }
    let m: Float32Array;
    if (mask === undefined) {
      m = this.onesMask ??= new Float32Array(L.size).fill(1);
    } else {
      if (mask.length !== L.size) {
        throw new EngineError(`mask has ${mask.length} values, adapter has ${L.size}`);
      }
      m = this.maskBuf;
      for (let i = 0; i < m.length; i++) {
        const v = mask[i];
        if (v !== 0 && v !== 1) throw new EngineError(`mask must be 0/1, found ${v} at ${i}`);
        m[i] = v;
      }
    }
    const feeds: Record<string, Feed> = {};
    for (const e of L.entries) {
      feeds[`lora.${e.name}`] = { data: adapter.subarray(e.offset, e.offset + e.size), dims: e.shape };
      feeds[`mask.${e.name}`] = { data: m.subarray(e.offset, e.offset + e.size), dims: e.shape };
    }
    return feeds;
  }

  /** Loss, gradients (zero where masked) and Taylor importance of one batch. */
  async trainStep(batch: Batch, adapter: Float32Array, mask: Float32Array | Uint8Array): Promise<StepResult> {
    const feeds = {
      ...batchFeeds(this.model.config, batch),
      ...this.loraFeeds(adapter, mask),
      ...this.weightFeeds,
    };
    const out = await this.trainSession.run(feeds);
    const grads = new Float32Array(this.layout.size), importance = new Float32Array(this.layout.size);
    for (const e of this.layout.entries) {
      grads.set(out[`grad.${e.name}`].data as Float32Array, e.offset);
      importance.set(out[`imp.${e.name}`].data as Float32Array, e.offset);
    }
    return { loss: num(out.loss), grads, importance };
  }

  /** Summed NLL over loss-mask tokens and their count (perplexity = exp(nllSum / tokens)). */
  async evalNll(
    batch: Batch,
    adapter: Float32Array,
    mask?: Float32Array | Uint8Array,
  ): Promise<{ nllSum: number; tokens: number }> {
    this.evalSession.p ??= (async () => {
      const built = buildLoraEvalGraph(
        this.model.config,
        this.layout,
        this.scale,
        this.weightMode,
        this.model.kernelWeights,
        this.graphOpts,
      );
      return await createSession(built.onnx, this.sessionOpts);
    })();
    const session = await this.evalSession.p;
    const feeds = {
      ...batchFeeds(this.model.config, batch),
      ...this.loraFeeds(adapter, mask),
      ...this.weightFeeds,
    };
    const out = await session.run(feeds);
    return { nllSum: num(out.nll_sum), tokens: num(out.tokens) };
  }

  /**
   * The final-norm hidden state of each row at the one position `pick` marks in it (0/1 like a loss
   * mask, exactly one 1 per row, never the row's last position): [batch × hidden], row-major.
   */
  async hiddenAt(
    batch: Batch,
    pick: Float32Array,
    adapter: Float32Array,
    mask?: Float32Array | Uint8Array,
  ): Promise<Float32Array> {
    for (let b = 0; b < batch.batch; b++) {
      let ones = 0;
      for (let t = 0; t < batch.seq; t++) ones += pick[b * batch.seq + t] ?? 0;
      if (ones !== 1) throw new EngineError(`pick must mark exactly one position of row ${b}, marks ${ones}`);
    }
    this.hiddenSession ??= (async () => {
      const kernel = this.model.kernelWeights;
      const built = buildLoraHiddenGraph(this.model.config, this.layout, this.scale, this.weightMode, kernel);
      // Its own weight feeds: without the loss it may not read the head (an untied lm_head).
      return {
        session: await createSession(built.onnx, this.sessionOpts),
        weights: weightFeedsOf(built, kernel),
      };
    })();
    const { session, weights } = await this.hiddenSession;
    const out = await session.run({
      ...batchFeeds(this.model.config, { ...batch, lossMask: pick }),
      ...this.loraFeeds(adapter, mask),
      ...weights,
    });
    return Float32Array.from(out.hidden.data as Float32Array);
  }
}

function weightFeedsOf(built: BuiltGraph, kernel: KernelWeights): Record<string, Feed> {
  const feeds: Record<string, Feed> = {};
  for (const name of built.weightInputs) {
    const k = kernel.get(name)!;
    feeds[`w.${name}`] = { data: k.data, dims: k.shape };
  }
  return feeds;
}

/** Full-parameter training of every base weight (pre-training the demo model). */
export class FullEngine {
  private evalSession?: Promise<GraphSession>;
  private constructor(
    readonly config: ModelConfig,
    readonly backend: ResolvedBackend,
    private readonly session: GraphSession,
    readonly names: string[],
    private readonly sessionOpts: SessionOptions,
  ) {}

  /** Builds the full train graph for a config. */
  static async create(
    config: ModelConfig,
    opts: { backend?: Backend; numThreads?: number; session?: SessionTuningOptions } = {},
  ): Promise<FullEngine> {
    const backend = await resolveBackend(opts.backend ?? "auto");
    const built = buildFullTrainGraph(config);
    const sessionOpts: SessionOptions = { ...opts.session, backend, numThreads: opts.numThreads };
    const session = await createSession(built.onnx, sessionOpts);
    return new FullEngine(config, backend, session, built.weightInputs, sessionOpts);
  }

  private feeds(batch: Batch, weights: KernelWeights): Record<string, Feed> {
    const feeds = batchFeeds(this.config, batch);
    for (const n of this.names) {
      const k = weights.get(n);
      if (!k) throw new EngineError(`weight ${n} is missing`);
      feeds[`w.${n}`] = { data: k.data, dims: k.shape };
    }
    return feeds;
  }

  /** Loss and gradient of every weight (kernel layout, keyed by HF name). */
  async step(
    batch: Batch,
    weights: KernelWeights,
  ): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
    const out = await this.session.run(this.feeds(batch, weights));
    const grads = new Map<string, Float32Array>();
    for (const n of this.names) grads.set(n, out[`grad.${n}`].data as Float32Array);
    return { loss: num(out.loss), grads };
  }

  /** Summed NLL and token count without LoRA. */
  async evalNll(batch: Batch, weights: KernelWeights): Promise<{ nllSum: number; tokens: number }> {
    this.evalSession ??= createSession(buildFullEvalGraph(this.config).onnx, this.sessionOpts);
    const out = await (await this.evalSession).run(this.feeds(batch, weights));
    return { nllSum: num(out.nll_sum), tokens: num(out.tokens) };
  }
}
