// The same committed .wasm loads in headless Chromium through fetch (no Deno APIs), picks the SIMD
// backend, and agrees exactly with the scalar reference there; where Chromium exposes a WebGPU adapter
// the WGSL top-k threshold and mask are checked too. Skipped when no Chromium is installed.
import assert from "node:assert/strict";
import * as esbuild from "esbuild";
import { chromiumPath, launchBrowser, serveLoopback } from "./browser_harness.ts";

const chromium = chromiumPath();
const kernelsDir = new URL("../runtime/kernels/", import.meta.url).pathname;

// Runs in the page: compares WASM and scalar kernels on seeded random inputs.
const ENTRY = `
import { initKernels, scalarKernels as S, simdSupported } from "./mod.ts";
import { GpuKernels } from "./webgpu.ts";
globalThis.runKernelChecks = async () => {
  const k = await initKernels({ backend: "wasm", wasm: "/perfit_kernels.wasm" });
  let a = 12345;
  const rnd = () => ((a = (Math.imul(a, 1664525) + 1013904223) >>> 0) / 4294967296);
  const bad = [];
  const eq = (x, y, what) => {
    if (x.length !== y.length) return bad.push(what + ": length");
    for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) return bad.push(what + ": index " + i);
  };
  let gpu = null;
  try { gpu = await GpuKernels.create(); } catch (_) { gpu = null; }
  let gpuChecks = 0;
  for (const n of [0, 1, 17, 1000, 65537]) {
    const s = Float32Array.from({ length: n }, () => Math.floor(rnd() * 50) - 25);
    const m = Uint8Array.from({ length: n }, () => (rnd() < 0.4 ? 1 : 0));
    const v = Float32Array.from({ length: n }, () => rnd() - 0.5);
    for (const kk of [0, 1, n >> 1, n].filter((x) => x <= n)) {
      eq(k.topkMask(s, kk), S.topkMask(s, kk), "topkMask " + n + "/" + kk);
      if (gpu && n > 0) {
        const buf = gpu.upload(s);
        const got = await gpu.topkThreshold(buf, n, kk);
        if (!Object.is(got.threshold, S.topkThreshold(s, kk))) bad.push("gpu threshold " + n + "/" + kk);
        eq(new Uint8Array(await gpu.download(await gpu.topkMask(buf, n, kk), n)), S.topkMask(s, kk), "gpu mask " + n + "/" + kk);
        gpuChecks++;
      }
    }
    eq(k.maskToBits(m), S.maskToBits(m), "maskToBits " + n);
    eq(k.encodeDeltas(m), S.encodeDeltas(m), "encodeDeltas " + n);
    eq(k.gather(v, m), S.gather(v, m), "gather " + n);
    const sw = [new Float32Array(n), new Float32Array(n), new Float32Array(n), new Float32Array(n)];
    k.accumulate(sw[0], sw[1], v, m, 3);
    S.accumulate(sw[2], sw[3], v, m, 3);
    eq(sw[0], sw[2], "accumulate sum " + n);
    eq(sw[1], sw[3], "accumulate weight " + n);
  }
  return { name: k.name, simd: simdSupported(), bad, gpuChecks };
};
`;

Deno.test({
  name: "kernels browser: Chromium loads the committed .wasm by fetch and matches the scalar reference",
  ignore: chromium === null,
  sanitizeResources: false,
  sanitizeOps: false,
}, async () => {
  const built = await esbuild.build({
    stdin: { contents: ENTRY, resolveDir: kernelsDir, loader: "js" },
    bundle: true,
    format: "esm",
    write: false,
    platform: "browser",
    logLevel: "silent",
  });
  await esbuild.stop();
  const js = built.outputFiles[0].text;
  const wasm = await Deno.readFile(new URL("../wasm/perfit_kernels.wasm", import.meta.url));
  const srv = serveLoopback((req) => {
    const path = new URL(req.url).pathname;
    if (path === "/bundle.js") return new Response(js, { headers: { "content-type": "text/javascript" } });
    if (path === "/perfit_kernels.wasm") {
      return new Response(wasm, { headers: { "content-type": "application/wasm" } });
    }
    return new Response(`<!doctype html><script type="module" src="/bundle.js"></script>`, {
      headers: { "content-type": "text/html" },
    });
  });
  const b = await launchBrowser(chromium!);
  try {
    await b.page.goto(srv.url);
    await b.page.waitForFunction(() => "runKernelChecks" in globalThis, undefined, { timeout: 30_000 });
    const result = await b.page.evaluate(() =>
      (globalThis as unknown as { runKernelChecks(): Promise<unknown> }).runKernelChecks()
    ) as { name: string; simd: boolean; bad: string[]; gpuChecks: number };
    assert.equal(result.simd, true, b.logs.join("\n"));
    assert.equal(result.name, "wasm-simd");
    assert.deepEqual(result.bad, []);
    console.log(`kernels in Chromium: ${result.name}, WebGPU top-k checks: ${result.gpuChecks}`);
  } finally {
    await b.close();
    await srv.close();
  }
});
