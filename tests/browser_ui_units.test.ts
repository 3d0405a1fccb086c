/** Pure parts of the UI (no browser): chart series, mask statistics, safe static paths, the bundle. */
import assert from "node:assert/strict";
import { Hono } from "hono";
import {
  budgetShares,
  clientPplSeries,
  meanPpl,
  methodComparison,
  overlapCells,
  timelineBars,
} from "../web/dashboard/series.ts";
import type { DashboardData, RunInfo } from "../web/dashboard/types.ts";
import { budgetCounts, jaccardMatrix } from "../server/ui/dashboard_data.ts";
import { andOrCounts, countRange } from "../runtime/kernels/bits.ts";
import { contentType, safeJoin } from "../server/ui/static.ts";
import { mountUi } from "../server/ui/mod.ts";
import { bundle } from "../scripts/bundle.ts";
import { localHyper } from "../runtime/client/engine_trainer.ts";

const run = (id: string, method: string, ppl: number[][]): RunInfo => ({
  id,
  method,
  state: "active",
  rounds: ppl[0].map((_, r) => ({
    round: r + 1,
    state: "closed",
    startedAt: 1000 * r,
    closedAt: 1000 * r + 500,
  })),
  clients: ppl.map((p, c) => ({ id: `c${c}`, ppl: p.map((v, r) => ({ round: r + 1, ppl: v })) })),
});

Deno.test("browser_ui_units: perplexity series, means and the PerFIT vs FedIT gain", () => {
  const p = run("p", "perfit", [[10, 8], [12, NaN]]);
  const f = run("f", "fedit", [[11, 10], [13, 10]]);
  assert.deepEqual(clientPplSeries(p).rounds, [1, 2]);
  assert.deepEqual(meanPpl(p), [{ round: 1, ppl: 11 }, { round: 2, ppl: 8 }]); // NaN ignored
  const data: DashboardData = { generatedAt: 5000, runs: [p, f] };
  const cmp = methodComparison(data);
  assert.equal(cmp.lines.length, 2);
  assert.ok(Math.abs(cmp.perfitVsFedit! - 0.2) < 1e-12); // (10 - 8) / 10 at round 2
  assert.equal(methodComparison({ generatedAt: 0, runs: [p] }).perfitVsFedit, null);
  const { bars } = timelineBars(data);
  assert.deepEqual(bars[1].x, [1, 1.5]);
});

Deno.test("browser_ui_units: overlap, budget shares and bit counting", () => {
  const a = new Uint32Array([0b1111, 0]), b = new Uint32Array([0b0110, 1]);
  assert.deepEqual(andOrCounts(a, b), { and: 2, or: 5 });
  assert.deepEqual(jaccardMatrix([a, b]), [[1, 0.4], [0.4, 1]]);
  assert.equal(countRange(new Uint32Array([0xffffffff, 0xffffffff]), 3, 40), 37);
  assert.equal(countRange(new Uint32Array([0b1010, 0]), 1, 4), 2);
  const layout = {
    rank: 1,
    size: 40,
    entries: [
      {
        name: "layers.0.q.A",
        layer: 0,
        module: "q" as const,
        kind: "A" as const,
        shape: [1, 10],
        offset: 0,
        size: 10,
      },
      {
        name: "layers.0.q.B",
        layer: 0,
        module: "q" as const,
        kind: "B" as const,
        shape: [10, 1],
        offset: 10,
        size: 10,
      },
      {
        name: "layers.1.v.A",
        layer: 1,
        module: "v" as const,
        kind: "A" as const,
        shape: [1, 10],
        offset: 20,
        size: 10,
      },
      {
        name: "layers.1.v.B",
        layer: 1,
        module: "v" as const,
        kind: "B" as const,
        shape: [10, 1],
        offset: 30,
        size: 10,
      },
    ],
  };
  const bits = new Uint32Array(2);
  for (const p of [0, 5, 19, 33]) bits[p >>> 5] |= 1 << (p & 31);
  assert.deepEqual(budgetCounts(layout, bits), { groups: ["L0.q", "L1.v"], counts: [3, 1] });
  assert.deepEqual(budgetShares({ clients: ["x"], groups: ["L0.q", "L1.v"], counts: [[3, 1]] }), [{
    client: "x",
    shares: [75, 25],
  }]);
  assert.equal(overlapCells({ clients: ["x", "y"], jaccard: [[1, 0.5], [0.5, 1]] }).length, 4);
});

Deno.test("browser_ui_units: static paths cannot leave their folder", async () => {
  assert.equal(safeJoin("/srv/web", "dist/client.js"), "/srv/web/dist/client.js");
  for (const bad of ["../etc/passwd", "a/../../b", "%2e%2e/x", "/abs", "a//b", "a\\b", "%00", "%E0%A4%A"]) {
    assert.equal(safeJoin("/srv/web", bad), null, bad);
  }
  assert.equal(contentType("x.wasm"), "application/wasm");
  const app = new Hono();
  mountUi(app, { bundle: "prebuilt", modelDir: "/nonexistent" });
  for (
    const p of [
      "/ui/static/..%2f..%2fdeno.json",
      "/ui/ort/ort.min.js",
      "/ui/model/config.json",
      "/ui/dist/..%2F..%2Fdeno.json",
    ]
  ) {
    const res = await app.request(p);
    assert.equal(res.status, 404, p);
    await res.body?.cancel();
  }
  const page = await app.request("/dashboard");
  assert.equal(page.status, 200);
  assert.equal(page.headers.get("cross-origin-embedder-policy"), "require-corp");
  assert.equal(page.headers.get("cross-origin-opener-policy"), "same-origin");
  assert.match(await page.text(), /dashboard\.js/);
  const wasm = await app.request("/ui/ort/ort-wasm-simd-threaded.jsep.wasm");
  assert.equal(wasm.status, 200);
  assert.equal(wasm.headers.get("content-type"), "application/wasm");
  await wasm.body?.cancel();
  const noSource = await app.request("/ui/api/dashboard");
  assert.equal(noSource.status, 503);
  assert.match((await noSource.json()).error.message, /without a KV store/);
});

Deno.test({
  name: "browser_ui_units: esbuild bundles both pages without node-only modules",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const sizes = await bundle();
    assert.deepEqual(Object.keys(sizes).sort(), ["web/dist/client.js", "web/dist/dashboard.js"]);
    const client = await Deno.readTextFile("web/dist/client.js");
    assert.ok(!client.includes("onnxruntime-node/dist"), "the native addon must not be bundled");
    assert.ok(client.includes("ort-wasm-simd-threaded"), "ORT's WASM runtime is fetched from wasmPaths");
  },
});

Deno.test("browser_ui_units: run train settings with defaults and validation", () => {
  const h = localHyper({ localSteps: 3, lr: 0.01, batchSize: 0, maxLen: "x" });
  assert.equal(h.steps, 3);
  assert.equal(h.lr, 0.01);
  assert.equal(h.batchSize, 4); // 0 is invalid -> default
  assert.equal(h.maxLen, 128);
});

Deno.test("browser_ui_units: a dashboard token guards the data endpoint", async () => {
  const app = new Hono();
  mountUi(app, {
    bundle: "prebuilt",
    dashboardToken: "s3cret",
    dashboardData: () => Promise.resolve({ generatedAt: 1, runs: [] }),
  });
  for (const auth of [undefined, "Bearer wrong", "Bearer s3cret2", "s3cret"]) {
    const res = await app.request("/ui/api/dashboard", { headers: auth ? { authorization: auth } : {} });
    assert.equal(res.status, 401, String(auth));
    await res.body?.cancel();
  }
  const ok = await app.request("/ui/api/dashboard", { headers: { authorization: "Bearer s3cret" } });
  assert.equal(ok.status, 200);
  assert.deepEqual(await ok.json(), { generatedAt: 1, runs: [] });
});
