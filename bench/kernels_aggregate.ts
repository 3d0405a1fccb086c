/**
 * Accumulate benchmark: one aggregation round of 32 client uploads over 10M parameters (50% masks).
 * Bandwidth is over the uploaded bytes (f32 value + u8 mask = 5 B per parameter) for WASM SIMD
 * (uploads resident in linear memory, and copied in per call), the scalar TypeScript reference, and a
 * plain `TypedArray.set` copy of the same bytes. The implementations take turns upload by upload, so
 * load from other processes on a shared machine hits them alike.
 *
 *   deno run -A bench/kernels_aggregate.ts [params] [uploads]
 */
import { initKernels, type Kernels, scalarKernels } from "../runtime/kernels/mod.ts";
import { mulberry32 as rng } from "../runtime/data/rng.ts";
import { fmtRatio, interleave, load1 } from "./machine.ts";

const DISTINCT_UPLOADS = 4; // cycled, so memory stays bounded; each is far larger than any cache

function u32In(k: Kernels, words: number): Uint32Array {
  const b = k.allocU8(words * 4);
  return new Uint32Array(b.buffer, b.byteOffset, words);
}

/** Runs the benchmark and returns a Markdown section. */
export async function run(params = 10_000_000, uploads = 32): Promise<string> {
  const loadBefore = load1();
  const k = await initKernels({ backend: "wasm" });
  const n = params, U = DISTINCT_UPLOADS;
  // Everything resident plus scratch for the copied-in case, reserved up front: no grow later.
  k.reserve(n * (4 * 4 + U * 5 + U * 3 + 5) + (1 << 20));
  const sum = k.allocF32(n), weight = k.allocF32(n);
  const values: Float32Array[] = [],
    masks: Uint8Array[] = [],
    bits: Uint32Array[] = [],
    packed: Float32Array[] = [];
  const r = rng(42);
  for (let u = 0; u < U; u++) {
    const v = k.allocF32(n), m = k.allocU8(n);
    for (let i = 0; i < n; i++) (v[i] = r() - 0.5, m[i] = r() < 0.5 ? 1 : 0);
    values.push(v);
    masks.push(m);
    // The compact wire form: LSB-first bitmask + values at the ones.
    bits.push(k.maskToBits(m, u32In(k, Math.ceil(n / 32))));
    packed.push(k.gather(v, m, k.allocF32(k.popcount(m))));
  }
  const plainValues = values.map((v) => v.slice()), plainMasks = masks.map((m) => m.slice());
  const dstV = new Float32Array(n), dstM = new Uint8Array(n);
  const plainSum = new Float32Array(n), plainWeight = new Float32Array(n);
  const S = scalarKernels;
  const per = interleave({
    wasm: (i) => k.accumulate(sum, weight, values[i % U], masks[i % U], 10 + i),
    wasmCopy: (i) => k.accumulate(sum, weight, plainValues[i % U], plainMasks[i % U], 10 + i),
    wasmAllCopied: (i) => k.accumulate(plainSum, plainWeight, plainValues[i % U], plainMasks[i % U], 10 + i),
    scalar: (i) => S.accumulate(sum, weight, plainValues[i % U], plainMasks[i % U], 10 + i),
    copy: (i) => (dstV.set(plainValues[i % U]), dstM.set(plainMasks[i % U])),
    sparse: (i) => k.accumulateSparse(sum, weight, bits[i % U], packed[i % U], 10 + i),
    sparseScalar: (i) => S.accumulateSparse(sum, weight, bits[i % U], packed[i % U], 10 + i),
  }, uploads);
  const total = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const t = Object.fromEntries(Object.entries(per).map(([k, v]) => [k, total(v)]));
  const own = k.allocF32(n), out = k.allocF32(n);
  const fin = Object.fromEntries(
    Object.entries(interleave({
      wasm: () => k.finalize(sum, weight, own, out),
      scalar: () => S.finalize(sum, weight, own, out),
    }, 4)).map(([k, v]) => [k, total(v)]),
  );

  const bytes = uploads * n * 5;
  const sparseBytes = (bits.reduce((a, b, u) => a + b.byteLength + packed[u].byteLength, 0) / U) * uploads;
  const gbs = (b: number, s: number) => (b / s / 1e9).toFixed(2);
  const row = (name: string, s: number, b = bytes) => `| ${name} | ${s.toFixed(3)} | ${gbs(b, s)} |`;
  return [
    `### Kernels: accumulate, ${n.toLocaleString("en")} params x ${uploads} uploads (50% masks)`,
    "",
    "GB/s over uploaded bytes (4 B value + 1 B mask per parameter); implementations interleaved per upload " +
    `(A, B, A, B…); ratios are the median and range over the ${uploads} uploads. ` +
    `Load average (1 min): ${loadBefore} before, ${load1()} after.`,
    "",
    "| implementation | seconds | GB/s |",
    "|---|---:|---:|",
    row("WASM SIMD `accumulate`, uploads in linear memory (`allocF32`)", t.wasm),
    row("WASM SIMD `accumulate`, uploads copied in per call", t.wasmCopy),
    row(
      "WASM SIMD `accumulate`, sum/weight and uploads all ordinary arrays (copied in and out)",
      t.wasmAllCopied,
    ),
    row("scalar TypeScript `accumulate`", t.scalar),
    row("`TypedArray.set` copy of the same bytes", t.copy),
    "",
    `- WASM (resident) / scalar TS: **${fmtRatio(per.scalar, per.wasm)}** (target >= 4x)`,
    `- WASM (resident) / copy bandwidth: **${((t.copy / t.wasm) * 100).toFixed(0)}%** over all uploads; ` +
    `per upload ${fmtRatio(per.copy, per.wasm)} of the copy's speed (target >= 50%)`,
    "",
    `Compact uploads (bitmask + values at the ones, ${
      (sparseBytes / uploads / 1e6).toFixed(1)
    } MB each) with ` +
    "`accumulateSparse`, no scatter; GB/s over the compact bytes:",
    "",
    "| implementation | seconds | GB/s |",
    "|---|---:|---:|",
    row("WASM SIMD `accumulateSparse`", t.sparse, sparseBytes),
    row("scalar TypeScript `accumulateSparse`", t.sparseScalar, sparseBytes),
    "",
    `- finalize over ${n.toLocaleString("en")} params: WASM ${(fin.wasm / 4 * 1000).toFixed(1)} ms, ` +
    `scalar TS ${(fin.scalar / 4 * 1000).toFixed(1)} ms`,
    "",
  ].join("\n");
}

if (import.meta.main) {
  const [p, u] = Deno.args.map(Number);
  console.log(await run(p || undefined, u || undefined));
}
