/**
 * LoRA train-step throughput and model-FLOP utilization of a SmolLM2-135M-shaped model (random
 * weights; LoRA r=8 on q and v; batch 4, sequence 256) on each backend, against that backend's own
 * 1024³ MatMul GFLOP/s measured in the same run; peak resident memory; and PyTorch's step on the
 * same shape where the reference venv exists (tests/reference/setup.sh).
 *
 * The comparison with PyTorch is interleaved: for each backend, `--pairs` times (default 3), our
 * `--steps` timed steps, then a PyTorch process timing as many, so both see the same machine. Each
 * side reports the median and range over its pairs (each pair's figure is the median of its steps),
 * and the ratio of the medians.
 *
 *   deno run -A bench/model_train_step.ts [node|wasm ...] [--model=135m|360m] [--steps=N] [--pairs=N] [--layers=N]
 *     [--no-torch] [--checkpoint]
 *     [--arena=on|off] [--mem-pattern=on|off] [--execution-mode=sequential|parallel]
 *     [--mmap-threshold=BYTES|off] [--weights=inputs|constants] [--profile=PREFIX] [--verbose]
 *
 * `--model=360m` runs the SmolLM2-360M shape instead (bench/model_135m.ts); PyTorch's side
 * (tests/reference/torch_bench.py) knows only the 135M shape, so it is not run there.
 * `--profile=PREFIX` (node only) writes onnxruntime's per-node profile of the session's steps to
 * PREFIX_<date>.json; `bench/profile_ops.ts` sums it by op.
 *
 * Model FLOPs of a LoRA step = 2 x forward matmul FLOPs (forward + input gradients; frozen weights
 * need no weight gradients), attention scores counted in full.
 */
import { type ResolvedBackend } from "../runtime/graph/mod.ts";
import { availableBackends, clearSessionCache } from "../runtime/graph/mod.ts";
import type { ModelConfig } from "../runtime/model/config.ts";
import { Engine, type SessionTuningOptions } from "../runtime/model/engine.ts";
import { initAdapter } from "../runtime/model/lora.ts";
import {
  BENCH_BATCH as BATCH,
  BENCH_SEQ as SEQ,
  BENCH_SHAPES,
  benchBatch,
  benchModel,
  type BenchShape,
} from "./model_135m.ts";
import { matmulGflops } from "./graph_matmul.ts";
import { fmtSpread, load1, procStatusMb, spread } from "./machine.ts";

export { benchModel, SMOLLM2_135M } from "./model_135m.ts";

/** Forward FLOPs per token (matmuls only) of a config at sequence length `seq`. */
export function forwardFlopsPerToken(c: ModelConfig, seq: number, loraRank = 0, loraModules = 0): number {
  const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  const linear = c.hiddenSize * q * 2 + c.hiddenSize * kv * 2 + 3 * c.hiddenSize * c.intermediateSize;
  const attention = 2 * seq * q; // QK^T and PV per token
  const lora = loraModules * loraRank * (c.hiddenSize + q);
  return 2 * (c.numLayers * (linear + attention) + lora) + 2 * c.hiddenSize * c.vocabSize;
}

function statusMb(field: "VmHWM" | "VmRSS"): number {
  const mb = procStatusMb("self", field);
  return Number.isFinite(mb) ? mb : Deno.memoryUsage().rss / 2 ** 20; // not Linux
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

/** One PyTorch process's figures (tests/reference/torch_bench.py), or why there are none. */
type TorchResult = {
  torch: string;
  threads: number;
  step_s: number;
  tokens_per_s: number;
  peak_rss_mb: number;
};

async function torchStep(steps: number, layers: number): Promise<TorchResult | string> {
  const root = new URL("..", import.meta.url).pathname;
  const py = `${root}tests/.tmp/torchvenv/bin/python`;
  try {
    const r = await new Deno.Command(py, {
      args: [`${root}tests/reference/torch_bench.py`, String(steps), String(layers)],
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
  /** Timed steps per measurement, after one warm-up step per session (default 2). */
  steps?: number;
  /** Interleaved (ours, PyTorch) pairs per backend (default 3; 1 without PyTorch). */
  pairs?: number;
  /** Model shape (default "135m"). */
  shape?: BenchShape;
  /** Decoder layers (default the shape's: 30 for 135M, 32 for 360M; fewer for quick iteration). */
  layers?: number;
  /** Session tuning passed to Engine.create (default: the engine's defaults). */
  session?: SessionTuningOptions;
  /** Print resident memory after each phase to stderr. */
  verbose?: boolean;
  /** Also time PyTorch's step (default true; needs tests/reference/setup.sh). */
  torch?: boolean;
  /** Activation checkpointing in our train step (`EngineOptions.checkpoint`, default false). */
  checkpoint?: boolean;
  /**
   * How the frozen base reaches the graph (default "inputs" on every backend, so backends compare on
   * one graph); "constants" bakes it in, which lets onnxruntime pre-pack the MatMul weights.
   */
  weightMode?: "inputs" | "constants";
}

/** Markdown section: per backend, our row and PyTorch's from the same interleaved pairs. */
export async function run(opts: TrainStepBenchOptions = {}): Promise<string> {
  const steps = opts.steps ?? 2;
  const shape = opts.shape ?? "135m";
  if (!(shape in BENCH_SHAPES)) {
    throw new Error(`--model must be one of ${Object.keys(BENCH_SHAPES).join(", ")}, got "${shape}"`);
  }
  // torch_bench.py builds the 135M shape only.
  const withTorch = opts.torch !== false && shape === "135m";
  const pairs = opts.pairs ?? (withTorch ? 3 : 1);
  if (!(Number.isInteger(steps) && steps >= 1)) {
    throw new Error(`--steps must be a positive integer, got ${steps}`);
  }
  if (opts.weightMode !== undefined && opts.weightMode !== "inputs" && opts.weightMode !== "constants") {
    throw new Error(`--weights must be inputs or constants, got ${opts.weightMode}`);
  }
  if (!(Number.isInteger(pairs) && pairs >= 1)) {
    throw new Error(`--pairs must be a positive integer, got ${pairs}`);
  }
  const loadBefore = load1();
  const model = benchModel(opts.layers, shape);
  const weightsPeakMb = peakRssMb();
  let processPeakMb = weightsPeakMb;
  const cfg = model.config;
  const flopsPerToken = 2 * forwardFlopsPerToken(cfg, SEQ, 8, 2);
  const tokens = BATCH * SEQ;
  const b = benchBatch(cfg.vocabSize);
  // Software WebGPU (llvmpipe) is ~100x slower than WASM: a 135M step would take many minutes.
  const use = opts.backends ?? (await availableBackends()).filter((x) => x !== "webgpu");
  const rows: string[] = [];
  const ratios: string[] = [];
  let torchNote = withTorch
    ? ""
    : opts.torch === false
    ? "PyTorch not run (--no-torch)."
    : `PyTorch not run (tests/reference/torch_bench.py builds the 135M shape only).`;
  for (const backend of use) {
    // Each backend's peak is its own: earlier sessions are released and the high-water mark reset.
    const reset = resetPeakRss();
    const rssBefore = statusMb("VmRSS");
    const t0 = performance.now();
    const engine = await Engine.create(model, { rank: 8, alpha: 16, targets: ["q", "v"] }, {
      backend,
      weightMode: opts.weightMode ?? "inputs",
      session: opts.session,
      checkpoint: opts.checkpoint,
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
    const ours: number[] = [];
    const allSteps: number[] = [];
    const theirs: TorchResult[] = [];
    let loss = 0;
    for (let pair = 0; pair < pairs; pair++) {
      const times: number[] = [];
      for (let i = 0; i < steps; i++) {
        const t = performance.now();
        loss = (await engine.trainStep(b, adapter, mask)).loss;
        times.push((performance.now() - t) / 1000);
        trace(`pair ${pair + 1} step ${i + 1}`);
      }
      ours.push(spread(times).median);
      allSteps.push(...times);
      if (!withTorch) continue;
      const torch = await torchStep(steps, cfg.numLayers);
      if (typeof torch === "string") {
        torchNote = `PyTorch ${torch}.`;
        break;
      }
      theirs.push(torch);
      console.error(
        `model_train_step: pair ${pair + 1}: ${backend} ${ours.at(-1)!.toFixed(2)} s, PyTorch ${
          torch.step_s.toFixed(2)
        } s`,
      );
    }
    const peak = peakRssMb();
    processPeakMb = Math.max(processPeakMb, peak);
    await clearSessionCache();
    const stepS = spread(ours).median;
    // With one pair, the range worth showing is the steps'; with several, the pairs'.
    const shown = ours.length > 1 ? ours : allSteps;
    const gflops = await matmulGflops(backend);
    const achieved = flopsPerToken * tokens / stepS / 1e9;
    rows.push(
      `| ${backend} | ${ours.length} | ${fmtSpread(shown)} | ${
        fmtSpread(shown.map((x) => tokens / x), 0)
      } | ${achieved.toFixed(1)} | ${gflops.toFixed(1)} | ${(100 * achieved / gflops).toFixed(0)}% | ${
        peak.toFixed(0)
      }${reset ? "" : " (cumulative)"} | ${(peak - rssBefore).toFixed(0)} | ${createS.toFixed(1)} | ${
        loss.toFixed(3)
      } |`,
    );
    if (theirs.length > 0) {
      const t = theirs.map((x) => x.step_s);
      rows.push(
        `| PyTorch ${theirs[0].torch} eager (CPU, ${
          theirs[0].threads
        } threads), paired with ${backend} | ${t.length} | ${fmtSpread(t)} | ${
          fmtSpread(t.map((x) => tokens / x), 0)
        } | ${(flopsPerToken * tokens / spread(t).median / 1e9).toFixed(1)} | | | ${
          Math.max(...theirs.map((x) => x.peak_rss_mb)).toFixed(0)
        } | | | |`,
      );
      ratios.push(
        `${backend} / PyTorch tokens/s, ratio of the medians: **${
          (spread(t).median / stepS).toFixed(2)
        }×** ` +
          `(per pair: ${t.map((x, i) => (x / ours[i]).toFixed(2)).join(", ")})`,
      );
    }
    console.error(`model_train_step: ${rows.at(-1)}`);
  }
  return [
    `## Model: LoRA train step, SmolLM2-${
      cfg.numLayers === BENCH_SHAPES[shape].num_hidden_layers
        ? shape.toUpperCase()
        : `${shape.toUpperCase()}-width ${cfg.numLayers}-layer`
    } shape (batch ${BATCH}, seq ${SEQ}, r=8 on q,v)`,
    ``,
    `Activation checkpointing: ${opts.checkpoint ? "on" : "off"}. Base weights: ${
      opts.weightMode ?? "inputs"
    }. Model FLOPs per step: ${
      (flopsPerToken * tokens / 1e12).toFixed(3)
    } TFLOP (forward + input gradients). MFU = achieved / the backend's 1024³ MatMul GFLOP/s in the same run. ` +
    `Step figures are the median (range) over ${pairs} pair(s), each pair's figure the median of ${steps} timed steps ` +
    `(with one pair, the median and range of its steps); ` +
    `with PyTorch, each pair is our steps then a PyTorch process's, interleaved. ` +
    `Peak RSS is the process high-water mark while that backend's session was created and stepped (reset before each backend; ` +
    `it includes the ${
      weightsPeakMb.toFixed(0)
    } MB process peak reached while generating the random weights); PyTorch's is its own process's, the largest over its runs; step growth = that peak ` +
    `minus the resident size just before the session was created. Whole-process peak over the run: ${
      processPeakMb.toFixed(0)
    } MB. Load average (1 min): ${loadBefore} before, ${load1()} after.`,
    ``,
    `| backend | pairs | step s | tokens/s | achieved GFLOP/s | MatMul GFLOP/s | MFU | peak RSS MB | step growth MB | session create s | loss |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|`,
    ...rows,
    ``,
    ...ratios.map((r) => `- ${r}`),
    ...(torchNote ? [torchNote] : []),
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
      pairs: flag("pairs") ? Number(flag("pairs")) : undefined,
      shape: flag("model") as BenchShape | undefined,
      layers: flag("layers") ? Number(flag("layers")) : undefined,
      torch: !Deno.args.includes("--no-torch"),
      checkpoint: Deno.args.includes("--checkpoint"),
      weightMode: flag("weights") as "inputs" | "constants" | undefined,
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
        ...(flag("profile") ? { profile: flag("profile") } : {}),
      },
    }),
  );
}
