/** Pure parts of the UI (no browser): chart series, mask statistics, safe static paths, the bundle. */
import assert from "node:assert/strict";
import { Hono } from "hono";
import {
  budgetShares,
  canonicalJson,
  clientPplSeries,
  gainText,
  heatColour,
  heatScale,
  meanPpl,
  methodComparison,
  overlapCells,
  settingKey,
  timelineBars,
} from "../web/dashboard/series.ts";
import type { DashboardData, RunInfo, RunSetting } from "../web/dashboard/types.ts";
import { createRunCommands, refreshErrorText } from "../web/dashboard/messages.ts";
import { budgetCounts, jaccardMatrix, runSetting } from "../server/ui/dashboard_data.ts";
import type { RunRecord } from "../server/records.ts";
import { engineParamsOf } from "../web/client_params.ts";
import { andOrCounts, countRange } from "../runtime/kernels/bits.ts";
import { contentType, safeJoin } from "../server/ui/static.ts";
import { mountUi } from "../server/ui/mod.ts";
import { bundle } from "../scripts/bundle.ts";
import { localHyper } from "../runtime/client/engine_trainer.ts";

const SETTING: RunSetting = {
  baseModel: "tiny",
  lora: { rank: 4, alpha: 8, targets: ["q", "v"] },
  rounds: 2,
  train: { localSteps: 2, lr: 0.01 },
  clients: ["c0", "c1"],
};

/** A run of clients c0, c1 with these perplexities per round; `setting` null: a source that reports none. */
const run = (
  id: string,
  method: string,
  ppl: number[][],
  setting: RunSetting | null = SETTING,
): RunInfo => ({
  id,
  method,
  state: "active",
  setting: setting ?? undefined,
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

Deno.test("browser_ui_units: the gain sentence says higher when PerFIT is worse, with a positive number", () => {
  // The case: PerFIT's mean perplexity 11.47, FedIT's 10 at the last common round.
  const worse = methodComparison({
    generatedAt: 0,
    runs: [run("f", "fedit", [[12, 10]]), run("p", "perfit", [[12, 11.47]])],
  });
  assert.ok(worse.perfitVsFedit! < 0);
  const text = gainText(worse);
  assert.match(
    text,
    /^PerFIT perplexity is 14\.7% higher than FedIT at round 2 \(11\.470 in p vs 10\.000 in f/,
  );
  assert.doesNotMatch(text, /-\d/, "no negative percentage");
  const better = gainText(methodComparison({
    generatedAt: 0,
    runs: [run("f", "fedit", [[12, 10]]), run("p", "perfit", [[12, 8]])],
  }));
  assert.match(better, /^PerFIT perplexity is 20\.0% lower than FedIT at round 2/);
  const same = gainText(methodComparison({
    generatedAt: 0,
    runs: [run("f", "fedit", [[12, 10]]), run("p", "perfit", [[12, 10]])],
  }));
  assert.match(same, /^PerFIT perplexity is the same as FedIT/);
  assert.match(gainText(methodComparison({ generatedAt: 0, runs: [] })), /No run has reported/);
  assert.match(
    gainText(methodComparison({ generatedAt: 0, runs: [run("p", "perfit", [[9]])] })),
    /No PerFIT and FedIT runs with the same data and setting as p/,
  );
});

Deno.test("browser_ui_units: only runs with the same data/setting fingerprint are compared, the others say why", () => {
  const other = (patch: Partial<RunSetting>) => ({ ...SETTING, ...patch });
  const data: DashboardData = {
    generatedAt: 0,
    runs: [
      run("f-same", "fedit", [[11, 10]]),
      // Same setting written in another key order and target order: still the same fingerprint.
      run("f-reordered", "fedit", [[11, 9.5]], {
        clients: ["c0", "c1"],
        train: { lr: 0.01, localSteps: 2 },
        rounds: 2,
        lora: { targets: ["q", "v"], alpha: 8, rank: 4 },
        baseModel: "tiny",
      }),
      run("f-clients", "fedit", [[5, 4]], other({ clients: ["c0", "c9"] })),
      run("f-rounds", "fedit", [[5, 4]], other({ rounds: 3 })),
      run("f-train", "fedit", [[5, 4]], other({ train: { localSteps: 5, lr: 0.01 } })),
      run(
        "f-model",
        "fedit",
        [[5, 4]],
        other({ baseModel: "other", lora: { rank: 2, alpha: 8, targets: ["q"] } }),
      ),
      run("f-unknown", "fedit", [[5, 4]], null),
      run("p", "perfit", [[10, 9]]),
    ],
  };
  assert.equal(settingKey(data.runs[0].setting), settingKey(data.runs[1].setting));
  assert.equal(canonicalJson({ b: [1, { d: 2, c: 3 }], a: undefined }), '{"b":[1,{"c":3,"d":2}]}');
  const cmp = methodComparison(data);
  assert.equal(cmp.anchor, "p", "the newest PerFIT run is the anchor");
  assert.deepEqual(cmp.lines.map((l) => l.run), ["f-same", "f-reordered", "p"]);
  const why = Object.fromEntries(cmp.left.map((l) => [l.run, l.reason]));
  assert.deepEqual(Object.keys(why), ["f-clients", "f-rounds", "f-train", "f-model", "f-unknown"]);
  assert.match(why["f-clients"], /clients c0, c9, not c0, c1/);
  assert.match(why["f-rounds"], /3 rounds, not 2/);
  assert.match(why["f-train"], /train settings \{"localSteps":5,"lr":0.01\}/);
  assert.match(why["f-model"], /base model other, not tiny; LoRA r2 α8 q, not r4 α8 q,v/);
  assert.match(why["f-unknown"], /unknown/);
  // The gain is against the newest comparable FedIT run (9.5 at round 2), never f-clients' 4.
  assert.deepEqual(cmp.gain, { perfit: "p", fedit: "f-reordered", round: 2, perfitPpl: 9, feditPpl: 9.5 });
  // Anchored on a run of other data, only runs of that data are compared with it.
  const fromClients = methodComparison(data, "f-clients");
  assert.deepEqual(fromClients.lines.map((l) => l.run), ["f-clients"]);
  assert.equal(fromClients.perfitVsFedit, null);
  // What the dashboard source reports: sorted client names and targets, the run's own settings.
  const rec = {
    id: "r",
    config: {
      baseModel: "tiny",
      lora: { rank: 4, alpha: 8, targets: ["v", "q"] },
      rounds: 2,
      train: { lr: 0.01 },
    },
  } as unknown as RunRecord;
  assert.deepEqual(runSetting(rec, ["b", "a", "b"]), {
    baseModel: "tiny",
    lora: { rank: 4, alpha: 8, targets: ["q", "v"] },
    rounds: 2,
    train: { lr: 0.01 },
    clients: ["a", "b"],
  });
});

Deno.test("browser_ui_units: the heatmap's colour scale runs 1 to 0 in heatColour's colours", () => {
  const stops = heatScale(5);
  assert.deepEqual(stops.map((s) => s.v), [1, 0.75, 0.5, 0.25, 0]);
  assert.equal(stops[0].colour, heatColour(1));
  assert.equal(stops[4].colour, heatColour(0));
  assert.notEqual(heatColour(0), heatColour(1));
});

Deno.test("browser_ui_units: the empty state's commands and the 401 sentence", () => {
  const c = createRunCommands("http://127.0.0.1:8787", { modelUrl: "/ui/model", baseModel: "perfit/tiny" });
  assert.match(c.admin, /^deno task admin create --server http:\/\/127\.0\.0\.1:8787 /);
  assert.match(c.admin, /--model models\/perfit-tiny --method perfit/);
  assert.match(c.curl, /^curl -sS -X POST http:\/\/127\.0\.0\.1:8787\/v1\/runs /);
  assert.match(c.curl, /authorization: Bearer \$PERFIT_ADMIN_TOKEN/);
  assert.match(c.curl, /"\$\(curl -sS http:\/\/127\.0\.0\.1:8787\/ui\/model\/config\.json\)"/);
  const noModel = createRunCommands("http://h:1", { modelUrl: null, baseModel: null });
  assert.match(noModel.curl, /\$\(cat models\/perfit-tiny\/config\.json\)/);
  assert.match(noModel.curl, /"baseModel":"perfit-tiny"/);
  // A quote in a configured name cannot break out of the shell's single quotes.
  assert.match(createRunCommands("http://h:1", { modelUrl: null, baseModel: "a'b" }).curl, /"a'\\''b"/);
  const body = JSON.stringify({ error: { code: "unauthorized", message: "dashboard token required" } });
  const none = refreshErrorText(401, body, false);
  assert.equal(none.kind, "unauthorized");
  assert.match(none.text, /^This dashboard needs its token: open the URL printed by deno task serve/);
  assert.doesNotMatch(none.text, /[{}]/, "no raw JSON");
  assert.match(refreshErrorText(401, body, true).text, /not the one this coordinator expects/);
  const other = refreshErrorText(500, JSON.stringify({ error: { code: "x", message: "kv closed" } }), false);
  assert.deepEqual(other, { kind: "error", text: "Refresh failed (HTTP 500): kv closed" });
  assert.equal(refreshErrorText(502, "Bad Gateway", false).text, "Refresh failed (HTTP 502): Bad Gateway");
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
  const h = localHyper({ localSteps: 3, lr: 0.01 });
  assert.equal(h.steps, 3);
  assert.equal(h.lr, 0.01);
  assert.equal(h.batchSize, 4); // unset -> default
  assert.equal(h.maxLen, 128);
  // A bad value is refused with its key, not replaced by a default in silence.
  assert.throws(() => localHyper({ batchSize: 0 }), /train\.batchSize must be an integer/);
  assert.throws(() => localHyper({ maxLen: "x" }), /train\.maxLen/);
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

Deno.test("client page: checkpoint and weightMode URL parameters parse, and a bad value is refused with its name", () => {
  const of = (q: string) => engineParamsOf(new URLSearchParams(q));
  assert.deepEqual(of(""), {});
  assert.deepEqual(of("checkpoint=1&weightMode=inputs"), { checkpoint: true, weightMode: "inputs" });
  assert.deepEqual(of("checkpoint=false&weightMode=constants"), {
    checkpoint: false,
    weightMode: "constants",
  });
  assert.throws(() => of("checkpoint=yes"), /checkpoint must be 1 or 0, got "yes"/);
  assert.throws(() => of("weightMode=__proto__"), /weightMode must be inputs or constants, got "__proto__"/);
});
