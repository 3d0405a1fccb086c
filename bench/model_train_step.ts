/**
 * LoRA train-step throughput and model-FLOP utilization of a SmolLM2-135M-shaped model (random
 * weights; LoRA r=8 on q and v; batch 4, sequence 256) on each backend, against that backend's own
 * 1024³ MatMul GFLOP/s measured in the same run; peak resident memory; and PyTorch's step on the
 * same shape where the reference venv exists (tests/reference/setup.sh).
 *
 *   deno run -A bench/model_train_step.ts [node|wasm ...] [--steps=N] [--layers=N] [--no-torch]
 *     [--arena=on|off] [--mem-pattern=on|off] [--execution-mode=sequential|parallel]
 *     [--mmap-threshold=BYTES|off] [--verbose]
 *
 * Model FLOPs of a LoRA step = 2 x forward matmul FLOPs (forward + input gradients; frozen weights
 * need no weight gradients), attention scores counted in full.
 */
import { type ResolvedBackend } from "../runtime/graph/mod.ts";
import { availableBackends, clearSessionCache } from "../runtime/graph/mod.ts";
import { type ModelConfig, parseConfig } from "../runtime/model/config.ts";
import { Engine, type SessionTuningOptions, setKernelWeights } from "../runtime/model/engine.ts";
import type { KernelWeights } from "../runtime/model/train_step.ts";
import { expectedWeightShapes, type Weights } from "../runtime/model/weights.ts";
import type { LoadedModel } from "../runtime/model/load.ts";
import { initAdapter } from "../runtime/model/lora.ts";
import { isLinearWeight } from "../runtime/model/llama.ts";
import { Rng } from "../runtime/model/rng.ts";
import { matmulGflops } from "./graph_matmul.ts";

/** SmolLM2-135M's config.json fields that matter. */
export const SMOLLM2_135M = {
  model_type: "llama",
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  vocab_size: 49152,
  tie_word_embeddings: true,
  rms_norm_eps: 1e-5,
  rope_theta: 100000,
  max_position_embeddings: 8192,
};

const BATCH = 4, SEQ = 256;

/** Forward FLOPs per token (matmuls only) of a config at sequence length `seq`. */
export function forwardFlopsPerToken(c: ModelConfig, seq: number, loraRank = 0, loraModules = 0): number {
  const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  const linear = c.hiddenSize * q * 2 + c.hiddenSize * kv * 2 + 3 * c.hiddenSize * c.intermediateSize;
  const attention = 2 * seq * q; // QK^T and PV per token
  const lora = loraModules * loraRank * (c.hiddenSize + q);
  return 2 * (c.numLayers * (linear + attention) + lora) + 2 * c.hiddenSize * c.vocabSize;
}

function statusMb(field: "VmHWM" | "VmRSS"): number {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(new RegExp(`${field}:\\s+(\\d+) kB`));
    if (m) return Number(m[1]) / 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss / 2 ** 20;
}

/** Process high-water mark of resident memory (MB). */
function peakRssMb(): number {
  return statusMb("VmHWM");
}

/** Resets the high-water mark to the current RSS (Linux clear_refs "5"); false where unsupported. */
function resetPeakRss(): boolean {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

/**
 * A random-weight model of the bench shape. The linear weights are generated directly in kernel layout
 * (a transposed N(0, 0.02) matrix is another N(0, 0.02) matrix), so no HF-layout copy ever exists:
 * the process holds one copy of the 135M weights (540 MB) instead of briefly two.
 */
export function benchModel(layers?: number): LoadedModel {
  const config = parseConfig({
    ...SMOLLM2_135M,
    num_hidden_layers: layers ?? SMOLLM2_135M.num_hidden_layers,
  });
  const rng = new Rng(0);
  const weights: Weights = new Map();
  const kernel: KernelWeights = new Map();
  for (const [name, shape] of expectedWeightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith("norm.weight")) data.fill(1);
    else rng.fillNormal(data, 0.02);
    if (isLinearWeight(name)) kernel.set(name, { shape: [shape[1], shape[0]], data });
    else {
      weights.set(name, { shape: shape.slice(), data });
      kernel.set(name, { shape: shape.slice(), data });
    }
  }
  const model: LoadedModel = { config, weights, source: "random SmolLM2-135M shape" };
  setKernelWeights(model, kernel);
  return model;
}

function batch(
  vocab: number,
): {
  inputIds: BigInt64Array;
  attentionMask: Float32Array;
  lossMask: Float32Array;
  batch: number;
  seq: number;
} {
  const rng = new Rng(1);
  const n = BATCH * SEQ;
  const lossMask = new Float32Array(n);
  for (let i = 0; i < n; i++) lossMask[i] = i % SEQ === SEQ - 1 ? 0 : 1;
  return {
    inputIds: BigInt64Array.from({ length: n }, () => BigInt(rng.int(vocab))),
    attentionMask: new Float32Array(n).fill(1),
    lossMask,
    batch: BATCH,
    seq: SEQ,
  };
}

async function torchStep(steps: number): Promise<Record<string, number | string> | string> {
  const root = new URL("..", import.meta.url).pathname;
  const py = `${root}tests/.tmp/torchvenv/bin/python`;
  try {
    const r = await new Deno.Command(py, {
      args: [`${root}tests/reference/torch_bench.py`, String(steps)],
      stderr: "piped",
    }).output();
    if (!r.success) return `failed: ${new TextDecoder().decode(r.stderr).trim().split("\n").at(-1)}`;
    return JSON.parse(new TextDecoder().decode(r.stdout).trim().split("\n").at(-1)!);
  } catch {
    return "skipped (no reference venv; run `bash tests/reference/setup.sh`)";
  }
}

/** Options of `run`. */
export interface TrainStepBenchOptions {
  backends?: ResolvedBackend[];
  /** Timed steps per backend, after one warm-up step (default 2). */
  steps?: number;
  /** Decoder layers (default 30, the real shape; fewer for quick iteration). */
  layers?: number;
  /** Session tuning passed to Engine.create (default: the engine's defaults). */
  session?: SessionTuningOptions;
  /** Print resident memory after each phase to stderr. */
  verbose?: boolean;
  /** Also time PyTorch's step (default true; needs tests/reference/setup.sh). */
  torch?: boolean;
}

/** Markdown section with one row per backend plus PyTorch. */
export async function run(opts: TrainStepBenchOptions = {}): Promise<string> {
  const steps = opts.steps ?? 2;
  const model = benchModel(opts.layers);
  const weightsPeakMb = peakRssMb();
  let processPeakMb = weightsPeakMb;
  const cfg = model.config;
  const flopsPerToken = 2 * forwardFlopsPerToken(cfg, SEQ, 8, 2);
  const b = batch(cfg.vocabSize);
  // Software WebGPU (llvmpipe) is ~100x slower than WASM: a 135M step would take many minutes.
  const use = opts.backends ?? (await availableBackends()).filter((x) => x !== "webgpu");
  const rows: string[] = [];
  for (const backend of use) {
    // Each backend's peak is its own: earlier sessions are released and the high-water mark reset.
    const reset = resetPeakRss();
    const rssBefore = statusMb("VmRSS");
    const t0 = performance.now();
    const engine = await Engine.create(model, { rank: 8, alpha: 16, targets: ["q", "v"] }, {
      backend,
      weightMode: "inputs",
      session: opts.session,
    });
    const createS = (performance.now() - t0) / 1000;
    const trace = (what: string) => {
      if (opts.verbose) {
        console.error(
          `  ${backend} ${what}: rss ${statusMb("VmRSS").toFixed(0)} MB, peak ${peakRssMb().toFixed(0)} MB`,
        );
      }
    };
    trace(`session created`);
    const adapter = initAdapter(engine.layout, 0);
    const mask = new Uint8Array(adapter.length).fill(1);
    await engine.trainStep(b, adapter, mask); // warm-up
    trace("warm-up step");
    const times: number[] = [];
    let loss = 0;
    for (let i = 0; i < steps; i++) {
      const t = performance.now();
      loss = (await engine.trainStep(b, adapter, mask)).loss;
      times.push((performance.now() - t) / 1000);
      trace(`step ${i + 1}`);
    }
    const peak = peakRssMb();
    processPeakMb = Math.max(processPeakMb, peak);
    await clearSessionCache();
    times.sort((p, q) => p - q);
    const stepS = times[times.length >> 1];
    const gflops = await matmulGflops(backend);
    const achieved = flopsPerToken * BATCH * SEQ / stepS / 1e9;
    rows.push(
      `| ${backend} | ${stepS.toFixed(2)} | ${(BATCH * SEQ / stepS).toFixed(0)} | ${achieved.toFixed(1)} | ${
        gflops.toFixed(1)
      } | ${(100 * achieved / gflops).toFixed(0)}% | ${peak.toFixed(0)}${reset ? "" : " (cumulative)"} | ${
        (peak - rssBefore).toFixed(0)
      } | ${createS.toFixed(1)} | ${loss.toFixed(3)} |`,
    );
    console.error(`model_train_step: ${rows.at(-1)}`);
  }
  const torch = opts.torch === false ? "not run" : await torchStep(steps);
  const torchRow = typeof torch === "string"
    ? `| PyTorch | ${torch} | | | | | | | | |`
    : `| PyTorch ${torch.torch} (CPU, ${torch.threads} threads) | ${(torch.step_s as number).toFixed(2)} | ${
      (torch.tokens_per_s as number).toFixed(0)
    } | ${(flopsPerToken * (torch.tokens_per_s as number) / 1e9).toFixed(1)} | | | ${
      (torch.peak_rss_mb as number).toFixed(0)
    } | | | |`;
  return [
    `## Model: LoRA train step, SmolLM2-${
      cfg.numLayers === 30 ? "135M" : `135M-width ${cfg.numLayers}-layer`
    } shape (batch ${BATCH}, seq ${SEQ}, r=8 on q,v)`,
    ``,
    `Model FLOPs per step: ${
      (flopsPerToken * BATCH * SEQ / 1e12).toFixed(3)
    } TFLOP (forward + input gradients). MFU = achieved / the backend's 1024³ MatMul GFLOP/s in the same run. ` +
    `Peak RSS is the process high-water mark while that backend's session was created and stepped (reset before each backend; ` +
    `it includes the ${
      weightsPeakMb.toFixed(0)
    } MB process peak reached while generating the random weights); step growth = that peak ` +
    `minus the resident size just before the session was created. Whole-process peak over the run: ${
      processPeakMb.toFixed(0)
    } MB.`,
    ``,
    `| backend | step s | tokens/s | achieved GFLOP/s | MatMul GFLOP/s | MFU | peak RSS MB | step growth MB | session create s | loss |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|`,
    ...rows,
    torchRow,
  ].join("\n");
}

if (import.meta.main) {
  const names = Deno.args.filter((a) => !a.startsWith("-")) as ResolvedBackend[];
  const flag = (n: string) => Deno.args.find((a) => a.startsWith(`--${n}=`))?.slice(n.length + 3);
  const onOff = (n: string) => flag(n) === undefined ? undefined : flag(n) === "on";
  const mode = flag("execution-mode");
  console.log(
    await run({
      backends: names.length ? names : undefined,
      steps: Number(flag("steps") ?? 2),
      layers: flag("layers") ? Number(flag("layers")) : undefined,
      torch: !Deno.args.includes("--no-torch"),
      verbose: Deno.args.includes("--verbose"),
      session: {
        memArena: onOff("arena"),
        memPattern: onOff("mem-pattern"),
        executionMode: mode as "sequential" | "parallel" | undefined,
        mallocMmapThreshold: flag("mmap-threshold") === "off"
          ? false
          : flag("mmap-threshold")
          ? Number(flag("mmap-threshold"))
          : undefined,
      },
    }),
  );
}
