/**
 * Top-k benchmark over 10M importance scores (k = 10%): WASM SIMD radix select + mask against a
 * sort-based TypeScript selection (native `Float32Array.prototype.sort` of a copy, then the mask with
 * ties by index), and the scalar TypeScript radix select, in the same run.
 *
 *   deno run -A bench/kernels_topk.ts [n]
 */
import { initKernels, scalarKernels } from "../runtime/kernels/mod.ts";

/** The baseline: threshold from a full sort, then the same tie rule as the kernels. */
export function sortTopkMask(scores: Float32Array, k: number): Uint8Array {
  const mask = new Uint8Array(scores.length);
  if (k === 0) return mask;
  const sorted = scores.slice().sort();
  const t = sorted[scores.length - k];
  let ties = 0;
  for (let i = scores.length - k; i < scores.length && sorted[i] === t; i++) ties++;
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i];
    if (s > t) mask[i] = 1;
    else if (s === t && ties > 0) (mask[i] = 1, ties--);
  }
  return mask;
}

function best(f: () => void, reps: number): number {
  f();
  let b = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    f();
    b = Math.min(b, performance.now() - t0);
  }
  return b / 1000;
}

/** Runs the benchmark and returns a Markdown section. */
export async function run(n = 10_000_000): Promise<string> {
  const kern = await initKernels({ backend: "wasm" });
  const k = Math.floor(n / 10);
  kern.reserve(n * 10 + (1 << 20)); // resident arrays + scratch for the copied-in run
  const scores = kern.allocF32(n), mask = kern.allocU8(n);
  let a = 7;
  for (let i = 0; i < n; i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    scores[i] = Math.abs(Math.sin(a)) * 1e-3; // |theta*grad|-like, non-negative
  }
  const plain = scores.slice();
  const tWasm = best(() => kern.topkMask(scores, k, mask), 5);
  const tWasmCopy = best(() => kern.topkMask(plain, k), 3);
  const tScalar = best(() => scalarKernels.topkMask(plain, k), 2);
  const tSort = best(() => sortTopkMask(plain, k), 2);
  const same = sortTopkMask(plain, k).every((x, i) => x === mask[i]);
  const ms = (t: number) => (t * 1000).toFixed(1);
  return [
    `### Kernels: top-k mask over ${n.toLocaleString("en")} scores (k = ${k.toLocaleString("en")})`,
    "",
    "Best of several runs, one process, same run. All produce the identical mask: " +
    (same ? "yes" : "**NO**") + ".",
    "",
    "| implementation | ms |",
    "|---|---:|",
    `| WASM SIMD radix select, scores in linear memory | ${ms(tWasm)} |`,
    `| WASM SIMD radix select, scores copied in | ${ms(tWasmCopy)} |`,
    `| scalar TypeScript radix select | ${ms(tScalar)} |`,
    `| sort-based TypeScript selection (\`Float32Array.sort\`) | ${ms(tSort)} |`,
    "",
    `- WASM / sort-based: **${(tSort / tWasm).toFixed(1)}x** (target >= 10x)`,
    "",
  ].join("\n");
}

if (import.meta.main) {
  const [n] = Deno.args.map(Number);
  console.log(await run(n || undefined));
}
