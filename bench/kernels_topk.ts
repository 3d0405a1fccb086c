/**
 * Top-k benchmark over 10M importance scores (k = 10%): WASM SIMD radix select + mask against a
 * sort-based TypeScript selection (native `Float32Array.prototype.sort` of a copy, then the mask with
 * ties by index), and the scalar TypeScript radix select, interleaved in the same run.
 *
 *   deno run -A bench/kernels_topk.ts [n]
 */
import { initKernels, scalarKernels } from "../runtime/kernels/mod.ts";
import { fmtRatio, fmtSpread, interleave, load1 } from "./machine.ts";

const REPS = 5;

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

/** Runs the benchmark and returns a Markdown section. */
export async function run(n = 10_000_000): Promise<string> {
  const loadBefore = load1();
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
  const t = interleave({
    wasm: () => kern.topkMask(scores, k, mask),
    wasmCopy: () => kern.topkMask(plain, k),
    scalar: () => scalarKernels.topkMask(plain, k),
    sort: () => sortTopkMask(plain, k),
  }, REPS);
  const same = sortTopkMask(plain, k).every((x, i) => x === mask[i]);
  const ms = (xs: number[]) => fmtSpread(xs.map((x) => x * 1000), 1);
  return [
    `### Kernels: top-k mask over ${n.toLocaleString("en")} scores (k = ${k.toLocaleString("en")})`,
    "",
    `Median (range) of ${REPS} repetitions, the implementations interleaved (A, B, C, D, A…) in one process. ` +
    "All produce the identical mask: " + (same ? "yes" : "**NO**") +
    `. Load average (1 min): ${loadBefore} before, ${load1()} after.`,
    "",
    "| implementation | ms |",
    "|---|---:|",
    `| WASM SIMD radix select, scores in linear memory | ${ms(t.wasm)} |`,
    `| WASM SIMD radix select, scores copied in | ${ms(t.wasmCopy)} |`,
    `| scalar TypeScript radix select | ${ms(t.scalar)} |`,
    `| sort-based TypeScript selection (\`Float32Array.sort\`) | ${ms(t.sort)} |`,
    "",
    `- WASM / sort-based: **${fmtRatio(t.sort, t.wasm, 1)}** (target >= 10x)`,
    "",
  ].join("\n");
}

if (import.meta.main) {
  const [n] = Deno.args.map(Number);
  console.log(await run(n || undefined));
}
