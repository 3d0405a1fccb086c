/**
 * The dashboard against a real coordinator KV layout: runs, rounds, uploads with perplexities and
 * PerFIT masks written under server/records.ts keys, served by mountUi, rendered in headless Chromium.
 */
import assert from "node:assert/strict";
import { Hono } from "hono";
import { mountUi } from "../server/ui/mod.ts";
import { bundle } from "../scripts/bundle.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { chromiumPath, launchBrowser, screenshot, serveLoopback } from "./browser_harness.ts";
import { seedKv } from "./browser_fixtures.ts";

const chromium = chromiumPath();

Deno.test({
  name: "browser_dashboard: plots runs, perplexities, overlap heatmap and budget spread from KV",
  ignore: chromium === null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
    const layout = adapterLayout(tinyConfig(), { rank: 4, alpha: 8, targets: ["q", "v"] });
    const seeded = await seedKv(kv, layout);
    const app = new Hono();
    mountUi(app, { kv, layoutFor: () => layout, bundle: () => bundle() });
    const srv = serveLoopback(app.fetch);
    const b = await launchBrowser(chromium!);
    try {
      await b.page.goto(`${srv.url}/dashboard?run=${seeded.perfitRun}&poll=500`);
      await b.page.waitForFunction(() => Number(document.body.dataset.refreshes ?? 0) >= 2, null, {
        timeout: 30_000,
      });
      const rows = await b.page.$$eval("#rounds-table tbody tr", (trs) => trs.map((t) => t.textContent));
      assert.equal(rows.length, seeded.totalRounds, `table rows: ${rows.join(" | ")}\n${b.logs.join("\n")}`);
      // deno-lint-ignore no-explicit-any
      const snap: any = await b.page.evaluate(() => (globalThis as any).perfitDashboard.charts);
      assert.equal(snap.ppl.datasets.length, seeded.clients.length);
      assert.equal(snap.overlap.datasets[0].points, seeded.clients.length ** 2);
      assert.equal(snap.budget.datasets.length, seeded.clients.length);
      assert.equal(snap.methods.datasets.length, 2);
      const gain = await b.page.textContent("#gain");
      assert.match(gain ?? "", /PerFIT perplexity is [\d.]+% lower than FedIT/);
      // Live refresh: a new round appears without reloading.
      await seeded.addRound();
      await b.page.waitForFunction(
        (n) => document.querySelectorAll("#rounds-table tbody tr").length === n,
        seeded.totalRounds + 1,
        { timeout: 15_000 },
      );
      const path = await screenshot(b.page, "dashboard");
      assert.ok((await Deno.stat(path)).size > 10_000);
    } finally {
      await b.close();
      await srv.close();
      kv.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

if (chromium === null) console.warn("browser_dashboard: SKIPPED, no chromium (apt-get install -y chromium)");
