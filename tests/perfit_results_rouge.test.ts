/**
 * The results table's ROUGE-L: the column and per-client table rendered from cached runs and their
 * `<key>.rouge.json` (tests/fixtures/results_rouge: PerFIT and the frozen base, seed 0, from the
 * default benchmark's cache and adapters), the split the ROUGE pass rebuilds is the run's own, and a run
 * without saved adapters is skipped rather than scored as the base.
 */
import assert from "node:assert/strict";
import { DEFAULT_RESULTS, type ResultsOptions, rougeCell, runResults } from "../bench/results_table.ts";
import { computeRunRouge, runMeanF, type RunRouge } from "../bench/results_rouge.ts";
import type { SimResult } from "../runtime/federation/mod.ts";
import { writePeftAdapter } from "../runtime/export/mod.ts";
import { loadModel } from "../runtime/model/load.ts";
import { adapterLayout } from "../runtime/model/lora.ts";

const fixtures = new URL("./fixtures/results_rouge", import.meta.url).pathname;
const key = (m: string) => `${m}-seed0-940983eb`;
const readJson = async <T>(name: string) => JSON.parse(await Deno.readTextFile(`${fixtures}/${name}`)) as T;
const opts: ResultsOptions = {
  ...DEFAULT_RESULTS,
  seeds: [0],
  backend: "node",
  methods: ["perfit", "base"],
  cacheDir: fixtures,
  cachedOnly: true,
};

Deno.test("results rouge: the table shows ROUGE-L (mean over clients × 100) and per-client values from the cache", async () => {
  const perfit = await readJson<RunRouge>(`${key("perfit")}.rouge.json`);
  const base = await readJson<RunRouge>(`${key("base")}.rouge.json`);
  // The fixture is a real pass: 8 clients, 48 completions each, the run figure is their mean.
  assert.equal(perfit.clients.length, 8);
  assert.ok(perfit.clients.every((c) => c.examples === 48 && c.f !== null));
  assert.ok(Math.abs(runMeanF(perfit.clients) - perfit.meanF) < 1e-12);
  assert.equal(base.noAdapter, true);

  const md = await runResults(opts);
  const header = md.split("\n").find((l) => l.startsWith("| method |"))!;
  const cols = header.split("|").map((c) => c.trim());
  const at = cols.indexOf("ROUGE-L");
  assert.ok(at > cols.indexOf("geo-mean ppl"), header);
  for (const [m, r] of [["perfit", perfit], ["base", base]] as const) {
    const row = md.split("\n").find((l) => l.startsWith(`| ${m} |`))!.split("|").map((c) => c.trim());
    assert.equal(row[at], (r.meanF * 100).toFixed(2));
  }
  assert.match(md, /## Per-client ROUGE-L F1 × 100/);
  const section = md.slice(md.indexOf("## Per-client ROUGE-L"));
  const dict = section.split("\n").find((l) => l.startsWith("| dictionary |"))!.split("|").map((c) =>
    c.trim()
  );
  const f = (r: RunRouge) => (r.clients.find((c) => c.id === "dictionary")!.f! * 100).toFixed(2);
  assert.deepEqual(dict.slice(2, 4), [f(perfit), f(base)]);
  assert.match(md, /48 examples, 32 new tokens per client/);

  // No .rouge.json, no column.
  const bare = await Deno.makeTempDir({ prefix: "perfit-rouge-" });
  try {
    for (const m of ["perfit", "base"]) {
      await Deno.copyFile(`${fixtures}/${key(m)}.json`, `${bare}/${key(m)}.json`);
    }
    const plain = await runResults({ ...opts, cacheDir: bare });
    assert.doesNotMatch(plain, /ROUGE-L/);
  } finally {
    await Deno.remove(bare, { recursive: true });
  }
});

Deno.test("results rouge: a cell over some seeds says how many; bad option pairs are refused", async () => {
  const r = (meanF: number) => ({ meanF } as RunRouge);
  assert.equal(rougeCell({ rouge: [r(0.1), r(0.3)] }), "20.00 ± 14.14");
  assert.equal(rougeCell({ rouge: [r(0.1), null] }), "10.00 (1/2 seeds)");
  assert.equal(rougeCell({ rouge: [null] }), "-");
  // --cached-only names what it left out.
  const partial = await runResults({ ...opts, methods: ["perfit", "fedit", "base"] });
  assert.match(partial, /left out of every mean below \(`--cached-only`\): fedit seed 0\./);
  assert.doesNotMatch(partial, /^\| fedit \|/m);
  await assert.rejects(() => runResults({ ...opts, methods: ["fedit"] }), /no run to report/);
  await assert.rejects(() => runResults({ ...opts, rouge: true }), /--save-adapters/);
  await assert.rejects(() => runResults({ ...opts, cacheDir: undefined }), /--cached-only needs --cache/);
});

Deno.test({
  name: "results rouge: the pass rebuilds the run's split, and needs a training method's adapters",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const base = await readJson<SimResult>(`${key("base")}.json`);
    const stored = await readJson<RunRouge>(`${key("base")}.rouge.json`);
    const settings = { maxExamples: 3, maxNewTokens: 32, maxLen: 64 };
    const again = (await computeRunRouge(opts, base, key("base"), "/nonexistent", settings))!;
    // The same prompts, references and completions as the stored pass (its samples are the first three).
    for (const c of again.clients) {
      const s = stored.clients.find((x) => x.id === c.id)!;
      assert.deepEqual(c.samples, s.samples.map((q) => ({ ...q })), c.id);
    }
    // A run whose recorded split differs from the rebuilt one is refused.
    const off = structuredClone(base);
    off.clients[0].test -= 1;
    await assert.rejects(
      () => computeRunRouge(opts, off, key("base"), "/nonexistent", settings),
      /rebuilt split/,
    );

    // A training method: skipped without adapters, scored from DIR/<key>/<client> with them.
    const perfit = await readJson<SimResult>(`${key("perfit")}.json`);
    const logs: string[] = [];
    assert.equal(
      await computeRunRouge(opts, perfit, key("perfit"), "/nonexistent", settings, (s) => logs.push(s)),
      null,
    );
    assert.match(logs[0], /no saved adapters/);
    const dir = await Deno.makeTempDir({ prefix: "perfit-rouge-ad-" });
    try {
      const model = await loadModel(new URL("../models/perfit-tiny", import.meta.url).pathname);
      const layout = adapterLayout(model.config, { rank: 4, alpha: 8, targets: ["q", "v"] });
      let s = 5;
      const adapter = Float32Array.from(
        { length: layout.size },
        () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5,
      );
      for (const c of perfit.clients) {
        await writePeftAdapter(`${dir}/${key("perfit")}/${c.id}`, {
          layout,
          adapter,
          scale: 2,
          baseModel: "x",
        });
      }
      const small = { maxExamples: 2, maxNewTokens: 6, maxLen: 64 };
      const res = (await computeRunRouge(opts, perfit, key("perfit"), dir, small))!;
      const plain = (await computeRunRouge(opts, { ...perfit, method: "base" }, key("perfit"), dir, small))!;
      assert.equal(res.noAdapter, false);
      assert.equal(res.clients.length, 8);
      assert.notDeepEqual(res.clients.map((c) => c.samples), plain.clients.map((c) => c.samples));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
