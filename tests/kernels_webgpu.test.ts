// WGSL kernels agree with the CPU kernels: the top-k threshold exactly, accumulate/finalize within
// float tolerance. Runs on any WebGPU adapter (llvmpipe/lavapipe in CI); skipped only when Deno has no
// adapter, unless PERFIT_REQUIRE_WEBGPU=1 makes a missing adapter a failure.
import assert from "node:assert/strict";
import { KernelError, scalarKernels as S } from "../runtime/kernels/mod.ts";
import { GpuKernels } from "../runtime/kernels/webgpu.ts";
import { mulberry32 as rng } from "../runtime/data/rng.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
const required = Deno.env.get("PERFIT_REQUIRE_WEBGPU") === "1";
const ignore = !adapter && !required;

const SIZES = [0, 1, 3, 4, 5, 16, 17, 255, 256, 257, 4099, 70001];

let gpu: GpuKernels | undefined;
async function kernels(): Promise<GpuKernels> {
  gpu ??= await GpuKernels.create(adapter ? await adapter.requestDevice() : undefined);
  return gpu;
}

Deno.test(
  { name: "kernels webgpu: top-k threshold, tie count and mask equal the CPU radix select exactly", ignore },
  async () => {
    const g = await kernels();
    for (const seed of [1, 2]) {
      for (const n of SIZES) {
        const r = rng(seed * 31 + n);
        const s = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          const u = r();
          s[i] = u < 0.1
            ? -0
            : u < 0.2
            ? 0
            : u < 0.25
            ? -Infinity
            : u < 0.6
            ? Math.floor(r() * 6) - 3
            : (r() - 0.5) * 2 ** (r() * 30 - 15);
        }
        const buf = g.upload(s);
        for (const k of [...new Set([0, 1, Math.floor(n / 3), n])].filter((k) => k <= n)) {
          const gpuMask = new Uint8Array(await g.download(await g.topkMask(buf, n, k), n));
          const cpuMask = S.topkMask(s, k);
          for (let i = 0; i < n; i++) {
            if (gpuMask[i] !== cpuMask[i]) assert.fail(`mask seed ${seed} n ${n} k ${k} index ${i}`);
          }
          const got = await g.topkThreshold(buf, n, k);
          const want = S.topkThreshold(s, k);
          assert.ok(
            Object.is(got.threshold, want),
            `seed ${seed} n ${n} k ${k}: ${got.threshold} vs ${want}`,
          );
          if (k > 0) {
            // The tie count reproduces the CPU mask: ones above the threshold plus `ties` at it.
            const mask = S.topkMask(s, k);
            let atT = 0;
            for (let i = 0; i < n; i++) if (mask[i] && s[i] === want) atT++;
            assert.equal(got.ties, atT, `ties seed ${seed} n ${n} k ${k}`);
          }
        }
        buf.destroy();
      }
    }
  },
);

Deno.test(
  { name: "kernels webgpu: accumulate over clients and finalize match the CPU kernels", ignore },
  async () => {
    const g = await kernels();
    for (const n of SIZES) {
      const r = rng(n + 5);
      const sum = new Float32Array(n), weight = new Float32Array(n);
      const gs = g.upload(sum), gw = g.upload(weight);
      for (let c = 0; c < 3; c++) {
        const v = Float32Array.from({ length: n }, () => r() * 4 - 2);
        const m = Uint8Array.from({ length: n }, () => (r() < 0.5 ? (r() < 0.9 ? 1 : 7) : 0));
        const count = 1 + Math.floor(r() * 20);
        S.accumulate(sum, weight, v, m, count);
        const gv = g.upload(v), gm = g.uploadMask(m);
        g.accumulate(gs, gw, gv, gm, n, count);
        gv.destroy();
        gm.destroy();
      }
      const own = Float32Array.from({ length: n }, () => r());
      const out = new Float32Array(n);
      S.finalize(sum, weight, own, out);
      const go = g.upload(own), gout = g.upload(new Float32Array(n));
      g.finalize(gs, gw, go, gout, n);
      const sumGpu = new Float32Array(await g.download(gs, n * 4));
      const wGpu = new Float32Array(await g.download(gw, n * 4));
      const outGpu = new Float32Array(await g.download(gout, n * 4));
      for (let i = 0; i < n; i++) {
        assert.equal(wGpu[i], weight[i], `weight n ${n} i ${i}`); // small integer sums are exact
        assert.ok(Math.abs(sumGpu[i] - sum[i]) <= 1e-5 * (1 + Math.abs(sum[i])), `sum n ${n} i ${i}`);
        assert.ok(
          Math.abs(outGpu[i] - out[i]) <= 1e-5 * (1 + Math.abs(out[i])),
          `out n ${n} i ${i}: ${outGpu[i]} vs ${out[i]}`,
        );
        if (weight[i] === 0) assert.equal(outGpu[i], own[i]);
      }
      for (const b of [gs, gw, go, gout]) b.destroy();
    }
  },
);

Deno.test({ name: "kernels webgpu: NaN scores, k > n and short buffers are rejected", ignore }, async () => {
  const g = await kernels();
  const s = Float32Array.from({ length: 300 }, (_, i) => i);
  s[123] = NaN;
  const buf = g.upload(s);
  await assert.rejects(
    () => g.topkThreshold(buf, 300, 5),
    (e: unknown) => e instanceof KernelError && /NaN/.test(e.message),
  );
  await assert.rejects(() => g.topkThreshold(buf, 300, 301), /exceeds the number of scores/);
  await assert.rejects(() => g.topkThreshold(buf, 301, 1), /holds 300 f32 but n = 301/);
  const small = g.upload(new Float32Array(4));
  assert.throws(() => g.accumulate(buf, buf, small, buf, 300, 1), /values buffer holds 4 f32/);
  assert.throws(() => g.accumulate(buf, buf, buf, buf, 300, NaN), /sample count/);
  buf.destroy();
  small.destroy();
});
