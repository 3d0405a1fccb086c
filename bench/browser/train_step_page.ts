/**
 * The page side of bench/browser_train_step.ts, bundled by scripts/bundle.ts. It only builds
 * engines and times steps on request; the Deno side decides the order, so the interleaving and
 * the statistics live in one place. Times are taken here with the page's own clock, so the
 * DevTools round trip of each request is not part of a step.
 */
import * as ort from "onnxruntime-web";
import { type Batch, Engine } from "../../runtime/model/engine.ts";
import { initWeights, tinyConfig } from "../../runtime/model/tiny.ts";
import { initAdapter } from "../../runtime/model/lora.ts";
import { probeWebgpu } from "../../runtime/graph/mod.ts";
import { Rng } from "../../runtime/model/rng.ts";

/** The two backends the page measures. */
export type PageBackend = "wasm" | "webgpu";

/** What the browser is, before any session exists. */
export interface PageInfo {
  userAgent: string;
  crossOriginIsolated: boolean;
  hardwareConcurrency: number;
  /** The measured shape, so the report states what ran rather than what was meant to. */
  shape: { layers: number; hidden: number; heads: string; vocab: number; batch: number; seq: number };
  /** Null when navigator.gpu gives no adapter. */
  adapter:
    | { vendor: string; architecture: string; device: string; description: string; fallback: boolean }
    | null;
}

/** Seconds, or the error that stopped the backend. */
export type Timed = { s: number; threads: number; loss: number } | { error: string };

/** Installed on globalThis as `perfitBench` for page.evaluate. */
export interface BenchPage {
  info(): Promise<PageInfo>;
  /** Builds the train-step graph and opens its session. */
  create(backend: PageBackend, threads: number): Promise<Timed>;
  /** One train step on the fixed batch. */
  step(backend: PageBackend): Promise<Timed>;
}

/** The shape of bench/results/browser.md's figure: 2 layers, hidden 64, GQA 4:2, LoRA r=8 on q,v. */
const BENCH_CONFIG = tinyConfig({ hiddenSize: 64, intermediateSize: 128, headDim: 16 });
const BATCH = 4, SEQ = 64;

ort.env.wasm.wasmPaths = "/ui/ort/";

const model = { config: BENCH_CONFIG, weights: initWeights(BENCH_CONFIG, 0), source: "random tiny" };
const engines = new Map<PageBackend, { engine: Engine; adapter: Float32Array; mask: Uint8Array }>();

function fixedBatch(): Batch {
  const rng = new Rng(1);
  const n = BATCH * SEQ;
  return {
    inputIds: BigInt64Array.from({ length: n }, () => BigInt(2 + rng.int(BENCH_CONFIG.vocabSize - 2))),
    attentionMask: new Float32Array(n).fill(1),
    // The last position of a row has nothing to predict.
    lossMask: Float32Array.from({ length: n }, (_, i) => (i % SEQ === SEQ - 1 ? 0 : 1)),
    batch: BATCH,
    seq: SEQ,
  };
}
const batch = fixedBatch();

async function timed(f: () => Promise<number>): Promise<Timed> {
  const t0 = performance.now();
  try {
    const loss = await f();
    return { s: (performance.now() - t0) / 1000, threads: ort.env.wasm.numThreads ?? 1, loss };
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) };
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
      shape: {
        layers: BENCH_CONFIG.numLayers,
        hidden: BENCH_CONFIG.hiddenSize,
        heads: `${BENCH_CONFIG.numHeads}:${BENCH_CONFIG.numKvHeads}`,
        vocab: BENCH_CONFIG.vocabSize,
        batch: BATCH,
        seq: SEQ,
      },
      adapter,
    };
  },
  create(backend, threads) {
    return timed(async () => {
      const engine = await Engine.create(model, { rank: 8, alpha: 16, targets: ["q", "v"] }, {
        backend,
        numThreads: threads,
      });
      const adapter = initAdapter(engine.layout, 0);
      engines.set(backend, { engine, adapter, mask: new Uint8Array(adapter.length).fill(1) });
      return NaN;
    });
  },
  step(backend) {
    return timed(async () => {
      const e = engines.get(backend);
      if (!e) throw new Error(`no ${backend} session`);
      return (await e.engine.trainStep(batch, e.adapter, e.mask)).loss;
    });
  },
};
(globalThis as unknown as { perfitBench: BenchPage }).perfitBench = page;
