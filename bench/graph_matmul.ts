/**
 * 1024x1024x1024 MatMul throughput per backend, the reference the model benchmark divides by to
 * get model-FLOP utilization. The graph chains CHAIN matmuls with a constant right operand so one
 * run amortizes feeding and fetching the 4 MiB input and output.
 *
 *   deno run -A bench/graph_matmul.ts [node|wasm|webgpu ...] [--threads=N]
 */
import {
  availableBackends,
  createSession,
  Graph,
  type ResolvedBackend,
  toOnnx,
} from "../runtime/graph/mod.ts";

const N = 1024;
const CHAIN = 4;

function matmulModel(n: number, chain: number): Uint8Array {
  const g = new Graph();
  const a = g.input("a", "f32", [n, n]);
  // Scaled so repeated products stay O(1) and never hit denormals or infinities.
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32 - 0.5) * 2 / Math.sqrt(n);
  const b = g.constant(Float32Array.from({ length: n * n }, rand), [n, n]);
  let x = a;
  for (let i = 0; i < chain; i++) x = g.matmul(x, b);
  g.output("y", x);
  return toOnnx(g);
}

/** Options for matmulGflops. */
export interface MatmulOptions {
  n?: number;
  /** Minimum measuring time in ms (after one warm-up run). */
  minMs?: number;
  /** WASM / native threads (defaults to the session layer's default). */
  numThreads?: number;
}

/** Measured GFLOP/s of n³ MatMul on one backend (median over timed runs; 2n³ flops per product). */
export async function matmulGflops(backend: ResolvedBackend, opts: MatmulOptions = {}): Promise<number> {
  const n = opts.n ?? N, minMs = opts.minMs ?? 1500;
  // Software WebGPU (llvmpipe) is ~100x slower: one product per run keeps the bench in seconds.
  const chain = backend === "webgpu" ? 1 : CHAIN;
  // The arena stays on (onnxruntime's default) so the reference figure is the fastest setting and
  // MFU ratios against it stay conservative.
  const s = await createSession(matmulModel(n, chain), {
    backend,
    numThreads: opts.numThreads,
    memArena: true,
  });
  const a = new Float32Array(n * n).fill(1 / n);
  const feeds = { a: { data: a, dims: [n, n] } };
  await s.run(feeds);
  const times: number[] = [];
  const t0 = performance.now();
  while (times.length < 1 || (performance.now() - t0 < minMs && times.length < 50)) {
    const t = performance.now();
    const out = await s.run(feeds);
    times.push(performance.now() - t);
    if (!Number.isFinite((out.y.data as Float32Array)[0])) {
      throw new Error("matmul bench produced a non-finite value");
    }
  }
  await s.release();
  times.sort((p, q) => p - q);
  const med = times[times.length >> 1];
  return (chain * 2 * n ** 3) / (med / 1000) / 1e9;
}

/** Markdown section: GFLOP/s per available backend. */
export async function run(backends?: ResolvedBackend[], numThreads?: number): Promise<string> {
  const list = backends ?? await availableBackends();
  const rows: string[] = [];
  for (const b of list) {
    try {
      rows.push(`| ${b} | ${(await matmulGflops(b, { numThreads })).toFixed(1)} |`);
    } catch (e) {
      rows.push(`| ${b} | failed: ${(e as Error).message.split("\n")[0]} |`);
    }
  }
  return [
    `## Graph core: ${N}³ MatMul throughput`,
    ``,
    `Chain of ${CHAIN} MatMuls per run (1 on WebGPU), median run time; threads: ${
      numThreads ?? `logical cores (${navigator.hardwareConcurrency})`
    }.`,
    ``,
    `| backend | GFLOP/s |`,
    `|---|---|`,
    ...rows,
  ].join("\n");
}

if (import.meta.main) {
  const args = Deno.args.filter((a) => ["node", "wasm", "webgpu"].includes(a)) as ResolvedBackend[];
  const threads = Deno.args.find((a) => a.startsWith("--threads="))?.slice(10);
  console.log(await run(args.length ? args : undefined, threads ? Number(threads) : undefined));
}
