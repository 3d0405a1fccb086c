/**
 * The page side of bench/browser_train_step.ts, bundled by scripts/bundle.ts. It only generates
 * the model, builds engines and times steps on request; the Deno side decides the order, so the
 * interleaving and the statistics live in one place. Times are taken here with the page's own
 * clock, so the DevTools round trip of each request is not part of a step.
 *
 * The 135M and 360M models are generated here, by the same code and seeds as the Deno bench, rather
 * than sent: 540 MB (1.45 GB) over DevTools or HTTP would be a measurement of the transfer, and its
 * copies would sit in the renderer's peak.
 */
import * as ort from "onnxruntime-web";
import { type Batch, Engine, type LoadedModel } from "../../runtime/model/engine.ts";
import { toKernelLayout, type WeightMode } from "../../runtime/model/train_step.ts";
import { initWeights, tinyConfig } from "../../runtime/model/tiny.ts";
import { initAdapter } from "../../runtime/model/lora.ts";
import { probeWebgpu } from "../../runtime/graph/mod.ts";
import { Rng } from "../../runtime/model/rng.ts";
import { benchBatch, benchModel, type BenchShape, parameterCount } from "../model_135m.ts";

/** The two backends the page measures. */
export type PageBackend = "wasm" | "webgpu";

/** The tiny model of bench/results/browser.md, or a SmolLM2 shape (135M, 360M) of bench/model_135m.ts. */
export type PageModel = "tiny" | BenchShape;

/** What the browser is, before any session exists. */
export interface PageInfo {
  userAgent: string;
  crossOriginIsolated: boolean;
  hardwareConcurrency: number;
  /** Null when navigator.gpu gives no adapter. */
  adapter:
    | { vendor: string; architecture: string; device: string; description: string; fallback: boolean }
    | null;
}

/** The measured shape, so the report states what ran rather than what was meant to. */
export interface PageShape {
  layers: number;
  hidden: number;
  heads: string;
  vocab: number;
  batch: number;
  seq: number;
  /** Base-model parameters (f32: 4 bytes each). */
  params: number;
}

/** Seconds to generate the weights and the shape, or the error that stopped it. */
export type Loaded = { s: number; shape: PageShape } | { error: string };

/** Seconds, or the error that stopped the backend. */
export type Timed = { s: number; threads: number; loss: number } | { error: string };

/** What the page can say about its own memory, each part null where the browser does not offer it. */
export interface PageMemory {
  /** performance.measureUserAgentSpecificMemory(): bytes now, or why there is no figure. */
  uaSpecific: { bytes: number; breakdown: { bytes: number; types: string[] }[] } | { error: string };
  /** Chromium's performance.memory (coarse without --enable-precise-memory-info). */
  jsHeap: { used: number; total: number; limit: number } | null;
  /**
   * Byte lengths of the WebAssembly.Memory objects created in this page (ORT's heap). A wasm memory
   * never shrinks, so its length now is its peak.
   */
  wasmMemories: number[];
}

/** Session settings of a `create` call. */
export interface SessionSpec {
  /** Default: the engine's (constants in the browser). */
  weightMode?: WeightMode;
  checkpoint: boolean;
  /** ORT's CPU memory arena (`SessionTuningOptions.memArena`); default: ORT's own (on). */
  memArena?: boolean;
}

/** Installed on globalThis as `perfitBench` for page.evaluate. */
export interface BenchPage {
  info(): Promise<PageInfo>;
  /**
   * Generates the model's random weights and the batch (a SmolLM2 shape's batch is `batch` x `seq`,
   * default bench/model_135m.ts's 4 x 256; the tiny model's is fixed); call once, before `create`.
   */
  load(model: PageModel, batch?: number, seq?: number): Promise<Loaded>;
  /** Builds the train-step graph and opens its session. */
  create(backend: PageBackend, threads: number, spec: SessionSpec): Promise<Timed>;
  /** One train step on the fixed batch. */
  step(backend: PageBackend): Promise<Timed>;
  memory(): Promise<PageMemory>;
}

// ORT's emscripten module creates its heap with `new WebAssembly.Memory` in this realm and does
// not expose it; recording the objects here is how the page learns the heap's size.
const wasmMemories: WebAssembly.Memory[] = [];
WebAssembly.Memory = new Proxy(WebAssembly.Memory, {
  construct(target, args, newTarget) {
    const m = Reflect.construct(target, args, newTarget) as WebAssembly.Memory;
    wasmMemories.push(m);
    return m;
  },
});

/** The shape of bench/results/browser.md's figure: 2 layers, hidden 64, GQA 4:2, LoRA r=8 on q,v. */
const TINY_CONFIG = tinyConfig({ hiddenSize: 64, intermediateSize: 128, headDim: 16 });
const TINY_BATCH = 4, TINY_SEQ = 64;
/** measureUserAgentSpecificMemory resolves at a garbage collection, which may not come soon. */
const UA_MEMORY_TIMEOUT_MS = 30_000;

ort.env.wasm.wasmPaths = "/ui/ort/";

let loaded: { model: LoadedModel; batch: Batch } | undefined;
const engines = new Map<PageBackend, { engine: Engine; adapter: Float32Array; mask: Uint8Array }>();

function tinyBatch(): Batch {
  const rng = new Rng(1);
  const n = TINY_BATCH * TINY_SEQ;
  return {
    inputIds: BigInt64Array.from({ length: n }, () => BigInt(2 + rng.int(TINY_CONFIG.vocabSize - 2))),
    attentionMask: new Float32Array(n).fill(1),
    // The last position of a row has nothing to predict.
    lossMask: Float32Array.from({ length: n }, (_, i) => (i % TINY_SEQ === TINY_SEQ - 1 ? 0 : 1)),
    batch: TINY_BATCH,
    seq: TINY_SEQ,
  };
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function timed(f: () => Promise<number>): Promise<Timed> {
  const t0 = performance.now();
  try {
    const loss = await f();
    return { s: (performance.now() - t0) / 1000, threads: ort.env.wasm.numThreads ?? 1, loss };
  } catch (e) {
    return { error: message(e) };
  }
}

async function uaSpecificMemory(): Promise<PageMemory["uaSpecific"]> {
  // deno-lint-ignore no-explicit-any
  const measure = (performance as any).measureUserAgentSpecificMemory;
  if (typeof measure !== "function") return { error: "not offered by this browser" };
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    // deno-lint-ignore no-explicit-any
    const r: any = await Promise.race([
      measure.call(performance),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no result within ${UA_MEMORY_TIMEOUT_MS / 1000} s`)),
          UA_MEMORY_TIMEOUT_MS,
        );
      }),
    ]);
    return {
      bytes: r.bytes,
      // deno-lint-ignore no-explicit-any
      breakdown: r.breakdown.filter((x: any) => x.bytes > 0).map((x: any) => ({
        bytes: x.bytes,
        types: x.types,
      })),
    };
  } catch (e) {
    return { error: message(e) };
  } finally {
    clearTimeout(timer);
  }
}

const page: BenchPage = {
  async info() {
    // probeWebgpu knows the fallback flag under both spellings Chromium has used.
    const probe = await probeWebgpu();
    let adapter: PageInfo["adapter"] = null;
    if (probe.available) {
      // deno-lint-ignore no-explicit-any
      const a: any = await (navigator as any).gpu.requestAdapter();
      const i = a?.info ?? {};
      adapter = {
        vendor: i.vendor ?? "",
        architecture: i.architecture ?? "",
        device: i.device ?? "",
        description: i.description ?? "",
        fallback: probe.fallback,
      };
    }
    return {
      userAgent: navigator.userAgent,
      crossOriginIsolated,
      hardwareConcurrency: navigator.hardwareConcurrency,
      adapter,
    };
  },
  // deno-lint-ignore require-await
  async load(kind, batch, seq) {
    const t0 = performance.now();
    try {
      if (kind !== "tiny") {
        const model = benchModel(undefined, kind);
        loaded = { model, batch: benchBatch(model.config.vocabSize, batch, seq) };
      } else {
        loaded = {
          model: {
            config: TINY_CONFIG,
            kernelWeights: toKernelLayout(TINY_CONFIG, initWeights(TINY_CONFIG, 0)),
            source: "random tiny",
          },
          batch: tinyBatch(),
        };
      }
    } catch (e) {
      return { error: message(e) };
    }
    const c = loaded.model.config;
    return {
      s: (performance.now() - t0) / 1000,
      shape: {
        layers: c.numLayers,
        hidden: c.hiddenSize,
        heads: `${c.numHeads}:${c.numKvHeads}`,
        vocab: c.vocabSize,
        batch: loaded.batch.batch,
        seq: loaded.batch.seq,
        params: parameterCount(c),
      },
    };
  },
  create(backend, threads, spec) {
    return timed(async () => {
      if (!loaded) throw new Error("no model: call load first");
      const engine = await Engine.create(loaded.model, { rank: 8, alpha: 16, targets: ["q", "v"] }, {
        backend,
        numThreads: threads,
        weightMode: spec.weightMode,
        checkpoint: spec.checkpoint,
        session: spec.memArena === undefined ? undefined : { memArena: spec.memArena },
      });
      const adapter = initAdapter(engine.layout, 0);
      engines.set(backend, { engine, adapter, mask: new Uint8Array(adapter.length).fill(1) });
      return NaN;
    });
  },
  step(backend) {
    return timed(async () => {
      const e = engines.get(backend);
      if (!e || !loaded) throw new Error(`no ${backend} session`);
      return (await e.engine.trainStep(loaded.batch, e.adapter, e.mask)).loss;
    });
  },
  async memory() {
    // deno-lint-ignore no-explicit-any
    const m = (performance as any).memory;
    return {
      uaSpecific: await uaSpecificMemory(),
      jsHeap: m ? { used: m.usedJSHeapSize, total: m.totalJSHeapSize, limit: m.jsHeapSizeLimit } : null,
      wasmMemories: wasmMemories.map((x) => x.buffer.byteLength),
    };
  },
};
(globalThis as unknown as { perfitBench: BenchPage }).perfitBench = page;
