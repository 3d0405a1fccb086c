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
import { createApp } from "../server/app.ts";
import { generateTinyModel } from "../runtime/model/tiny.ts";

const chromium = chromiumPath();
const hasCurl = (() => {
  try {
    return Deno.statSync("/usr/bin/curl").isFile;
  } catch {
    return false;
  }
})();

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
      // Only the runs on the same data are compared; the third says why it is left out.
      assert.deepEqual(snap.methods.datasets.map((d: { label: string }) => d.label), [
        "perfit · run-perfit",
        "fedit · run-fedit",
      ]);
      const gain = await b.page.textContent("#gain");
      assert.match(
        gain ?? "",
        /^PerFIT perplexity is 22\.2% lower than FedIT at round 2 \(7\.000 in run-perfit vs 9\.000 in run-fedit;/,
      );
      const left = await b.page.$$eval(
        "#methods-left li",
        (lis) => lis.map((l) => [l.dataset.run, l.textContent]),
      );
      assert.equal(left.length, 1, JSON.stringify(left));
      assert.equal(left[0][0], seeded.otherDataRun);
      assert.match(
        left[0][1]!,
        /left out: other data or setting than run-perfit: clients computing, dolly, satire/,
      );
      // The heatmap's diagonal runs from the top-left to the bottom-right corner.
      type Cell = { x: string; y: string; px: number; py: number };
      const cells: Cell[] = await b.page.evaluate(() =>
        (globalThis as unknown as { perfitDashboard: { overlap: Cell[] } }).perfitDashboard.overlap
      );
      const diag = seeded.clients.map((c) => cells.find((x) => x.x === c && x.y === c)!);
      assert.ok(diag.every(Boolean), JSON.stringify(cells));
      for (let i = 1; i < diag.length; i++) {
        assert.ok(diag[i].px > diag[i - 1].px, `cell ${i} right of ${i - 1}: ${JSON.stringify(diag)}`);
        assert.ok(diag[i].py > diag[i - 1].py, `cell ${i} below ${i - 1}: ${JSON.stringify(diag)}`);
      }
      // Its colour scale: a gradient from 1 (top) to 0 (bottom).
      const scale = await b.page.evaluate(() => ({
        ticks: [...document.querySelectorAll("#overlap-scale .scale-ticks span")].map((t) => t.textContent),
        bar: getComputedStyle(document.querySelector("#overlap-scale .scale-bar")!).backgroundImage,
        height: document.querySelector("#overlap-scale .scale-bar")!.getBoundingClientRect().height,
      }));
      assert.deepEqual(scale.ticks, ["1.00", "0.75", "0.50", "0.25", "0.00"]);
      // (Computed style writes alpha 1 as rgb().)
      assert.match(scale.bar, /^linear-gradient\(rgb\(33, 102, 172\), .*rgba\(33, 102, 172, 0\.08\)\)$/);
      assert.ok(scale.height > 100, `legend bar height ${scale.height}`);
      assert.equal(await b.page.isHidden("#empty"), true);
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

Deno.test({
  name:
    "browser_dashboard: a missing token reads as a sentence; with none, the empty state's curl command creates a run",
  ignore: chromium === null || !hasCurl,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-dash-empty-" });
    const admin = "admin-token-for-dashboard-test";
    await generateTinyModel(`${dir}/model`, { seed: 3 });
    const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
    const app = createApp({ kv, config: { adminToken: admin, secret: "dashboard-test-secret-0123456789" } });
    mountUi(app, {
      kv,
      modelDir: `${dir}/model`,
      baseModelName: "perfit/tiny-test",
      dashboardToken: "dash-token",
      bundle: () => bundle(),
    });
    const srv = serveLoopback(app.fetch);
    const b = await launchBrowser(chromium!);
    try {
      // Without its token: a sentence in the page, not the server's JSON.
      await b.page.goto(`${srv.url}/dashboard?poll=300`);
      await b.page.waitForFunction(() => document.body.dataset.error === "unauthorized", null, {
        timeout: 30_000,
      });
      const banner = await b.page.textContent("#auth-error");
      assert.match(banner ?? "", /^This dashboard needs its token: open the URL printed by deno task serve/);
      const status = await b.page.textContent("#status");
      assert.doesNotMatch(`${banner} ${status}`, /[{}]|unauthorized/, "no raw JSON");
      await b.page.goto(`${srv.url}/dashboard?poll=300&token=wrong`);
      await b.page.waitForFunction(() => document.body.dataset.error === "unauthorized", null, {
        timeout: 30_000,
      });
      assert.match(await b.page.textContent("#auth-error") ?? "", /not the one this coordinator expects/);

      // With it and no run yet: how to create one.
      await b.page.goto(`${srv.url}/dashboard?poll=300&token=dash-token`);
      await b.page.waitForFunction(() => document.body.dataset.empty === "true", null, { timeout: 30_000 });
      assert.equal(await b.page.isVisible("#empty"), true);
      assert.equal(await b.page.isHidden("#auth-error"), true);
      const adminCmd = (await b.page.textContent("#empty-admin"))!;
      assert.match(adminCmd, new RegExp(`^deno task admin create --server ${srv.url} `));
      const curl = (await b.page.textContent("#empty-curl"))!;
      await screenshot(b.page, "dashboard-empty");
      // The curl command as shown, pasted into a shell holding the admin token, creates a run.
      const out = await new Deno.Command("bash", {
        args: ["-c", curl],
        env: { PERFIT_ADMIN_TOKEN: admin },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const answer = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      const created = JSON.parse(answer).run;
      assert.equal(created?.config?.method, "perfit", answer);
      assert.equal(created.config.baseModel, "perfit/tiny-test");
      assert.ok(created.config.adapterSize > 0);
      await b.page.waitForFunction(() => document.body.dataset.empty === "false", null, { timeout: 30_000 });
      assert.equal(await b.page.isHidden("#empty"), true);
      assert.equal(await b.page.$eval("#run-select", (s) => (s as HTMLSelectElement).value), created.id);
    } finally {
      await b.close();
      await srv.close();
      await app.close();
      kv.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

if (chromium === null) console.warn("browser_dashboard: SKIPPED, no chromium (apt-get install -y chromium)");
