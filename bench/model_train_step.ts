/**
 * LoRA train-step throughput and model-FLOP utilization of a SmolLM2-135M-shaped model (random
 * weights; LoRA r=8 on q and v; batch 4, sequence 256) on each backend, against that backend's own
 * 1024³ MatMul GFLOP/s measured in the same run; peak resident memory; and PyTorch's step on the
 * same shape where the reference venv exists (tests/reference/setup.sh).
 *
 *   deno run -A bench/model_train_step.ts [node|wasm ...] [--steps=N]
 *
 * Model FLOPs of a LoRA step = 2 x forward matmul FLOPs (forward + input gradients; frozen weights
 * need no weight gradients), attention scores counted in full.
 */
import { type ResolvedBackend } from "../runtime/graph/mod.ts";
import { availableBackends } from "../runtime/graph/mod.ts";
import { type ModelConfig, parseConfig } from "../runtime/model/config.ts";
import { Engine, kernelWeights } from "../runtime/model/engine.ts";
import type { LoadedModel } from "../runtime/model/load.ts";
import { initAdapter } from "../runtime/model/lora.ts";
import { isLinearWeight } from "../runtime/model/llama.ts";
import { Rng } from "../runtime/model/rng.ts";
import { initWeights } from "../runtime/model/tiny.ts";
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

function peakRssMb(): number {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
    if (m) return Number(m[1]) / 1024;
  } catch { /* not Linux */ }
  return Deno.memoryUsage().rss / 2 ** 20;
}

function benchModel(): LoadedModel {
  const config = parseConfig(SMOLLM2_135M);
  const model: LoadedModel = { config, weights: initWeights(config, 0), source: "random SmolLM2-135M shape" };
  kernelWeights(model);
  // The engine keeps the kernel-layout copies; the HF-layout linear weights are no longer needed.
  for (const n of [...model.weights.keys()]) if (isLinearWeight(n)) model.weights.delete(n);
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

/** Markdown section with one row per backend plus PyTorch. */
export async function run(backends?: ResolvedBackend[], steps = 2): Promise<string> {
  const model = benchModel();
  const baseMb = peakRssMb();
  const cfg = model.config;
  const flopsPerToken = 2 * forwardFlopsPerToken(cfg, SEQ, 8, 2);
  const b = batch(cfg.vocabSize);
  // Software WebGPU (llvmpipe) is ~100x slower than WASM: a 135M step would take many minutes.
  const use = backends ?? (await availableBackends()).filter((x) => x !== "webgpu");
  const rows: string[] = [];
  for (const backend of use) {
    const t0 = performance.now();
    const engine = await Engine.create(model, { rank: 8, alpha: 16, targets: ["q", "v"] }, {
      backend,
      weightMode: "inputs",
    });
    const createS = (performance.now() - t0) / 1000;
    const adapter = initAdapter(engine.layout, 0);
    const mask = new Uint8Array(adapter.length).fill(1);
    await engine.trainStep(b, adapter, mask); // warm-up
    const times: number[] = [];
    let loss = 0;
    for (let i = 0; i < steps; i++) {
      const t = performance.now();
      loss = (await engine.trainStep(b, adapter, mask)).loss;
      times.push((performance.now() - t) / 1000);
    }
    times.sort((p, q) => p - q);
    const stepS = times[times.length >> 1];
    const gflops = await matmulGflops(backend);
    const achieved = flopsPerToken * BATCH * SEQ / stepS / 1e9;
    rows.push(
      `| ${backend} | ${stepS.toFixed(2)} | ${(BATCH * SEQ / stepS).toFixed(0)} | ${achieved.toFixed(1)} | ${
        gflops.toFixed(1)
      } | ${(100 * achieved / gflops).toFixed(0)}% | ${peakRssMb().toFixed(0)} | ${createS.toFixed(1)} | ${
        loss.toFixed(3)
      } |`,
    );
    console.error(`model_train_step: ${rows.at(-1)}`);
  }
  const torch = await torchStep(steps);
  const torchRow = typeof torch === "string"
    ? `| PyTorch | ${torch} | | | | | | | |`
    : `| PyTorch ${torch.torch} (CPU, ${torch.threads} threads) | ${(torch.step_s as number).toFixed(2)} | ${
      (torch.tokens_per_s as number).toFixed(0)
    } | ${(flopsPerToken * (torch.tokens_per_s as number) / 1e9).toFixed(1)} | | | ${
      (torch.peak_rss_mb as number).toFixed(0)
    } | | |`;
  return [
    `## Model: LoRA train step, SmolLM2-135M shape (batch ${BATCH}, seq ${SEQ}, r=8 on q,v)`,
    ``,
    `Model FLOPs per step: ${
      (flopsPerToken * BATCH * SEQ / 1e12).toFixed(3)
    } TFLOP (forward + input gradients). MFU = achieved / the backend's 1024³ MatMul GFLOP/s in the same run. Peak RSS is the process high-water mark so far (it includes earlier backends); ${
      baseMb.toFixed(0)
    } MB of it was reached before any session, while generating the random weights and their kernel-layout copies.`,
    ``,
    `| backend | step s | tokens/s | achieved GFLOP/s | MatMul GFLOP/s | MFU | peak RSS MB | session create s | loss |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|---:|`,
    ...rows,
    torchRow,
  ].join("\n");
}

if (import.meta.main) {
  const names = Deno.args.filter((a) => !a.startsWith("-")) as ResolvedBackend[];
  const steps = Number(Deno.args.find((a) => a.startsWith("--steps="))?.slice(8) ?? 2);
  console.log(await run(names.length ? names : undefined, steps));
}
