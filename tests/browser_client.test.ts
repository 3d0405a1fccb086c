/**
 * The client page end to end: a local coordinator on loopback with the UI mounted, a tiny generated
 * model, headless Chromium picks a local JSONL file, joins a PerFIT run, trains one round in the page
 * (WebGPU when the browser exposes an adapter, WASM otherwise) and uploads; the dashboard then shows
 * the closed round with the client's perplexity. Screenshots go to tests/.tmp/artifacts/.
 */
import assert from "node:assert/strict";
import { createApp } from "../server/app.ts";
import { mountUi } from "../server/ui/mod.ts";
import { bundle } from "../scripts/bundle.ts";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { decodeSafetensors, tensorToFloat32 } from "../runtime/io/safetensors.ts";
import {
  chromiumPath,
  launchBrowser,
  screenshot,
  serveLoopback,
  type TestBrowser,
} from "./browser_harness.ts";

const chromium = chromiumPath();
const ADMIN = "admin-token-for-browser-test";

Deno.test({
  name:
    "browser_client: two pages (WebGPU when the browser has an adapter, and WASM) train one PerFIT round on local files; the dashboard shows it",
  ignore: chromium === null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-browser-" });
    const modelDir = `${dir}/model`;
    const cfg = await generateTinyModel(modelDir, { seed: 5 });
    await bundle();
    const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
    const app = createApp({
      kv,
      config: { adminToken: ADMIN, secret: "browser-test-secret-0123456789", tickMs: 200 },
    });
    mountUi(app, { kv, modelDir, bundle: "prebuilt", baseModelName: "perfit/tiny-test" });
    const srv = serveLoopback(app.fetch);
    const b = await launchBrowser(chromium!);
    const others: TestBrowser[] = [];
    try {
      const created = await fetch(`${srv.url}/v1/runs`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({
          baseModel: "tiny",
          model: toHfConfig(cfg),
          lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
          method: "perfit",
          rounds: 1,
          clientsPerRound: 2,
          quorum: 2,
          roundDeadlineMs: 600_000,
          expansionTiers: { big: 2 },
          train: { localSteps: 2, batchSize: 2, maxLen: 32, pruneStages: 2 },
        }),
      });
      assert.equal(created.status, 201, await created.clone().text());
      const runId = (await created.json()).run.id as string;

      // Local files the pages read; only adapter updates may leave a page.
      // WebGPU is asked for explicitly where there is an adapter: `auto` takes WASM over a software one
      // (browser_client_resume checks that), and this page is to train on WebGPU where it can.
      const clients = [
        { name: "computing", backend: "webgpu" },
        { name: "satire", backend: "wasm" },
      ];
      const posted: string[] = [];
      const needles: string[] = [];
      const pages = await Promise.all(clients.map(async (c, i) => {
        const lines = (await Deno.readTextFile(`datasets/lexicon-instruct/${c.name}.jsonl`)).trim().split(
          "\n",
        ).slice(0, 8);
        needles.push(JSON.parse(lines[0]).response.slice(0, 24));
        const file = `${dir}/${c.name}.jsonl`;
        await Deno.writeTextFile(file, lines.join("\n") + "\n");
        // Each data owner in a browser of its own: pages of one browser share a run's saved client.
        let page = b.page;
        if (i > 0) {
          const o = await launchBrowser(chromium!);
          others.push(o);
          page = o.page;
          page.on("console", (m) => b.logs.push(`[${c.name} ${m.type()}] ${m.text()}`));
        }
        page.on("request", (r) => {
          if (r.method() === "POST") posted.push(r.postDataBuffer()?.toString("latin1") ?? "");
        });
        page.on("pageerror", (e) => b.logs.push(`[${c.name} pageerror] ${e.message}`));
        await page.goto(`${srv.url}/client?run=${runId}&name=${c.name}`);
        await page.waitForFunction(() => document.body.dataset.adapterSoftware !== undefined);
        const hasAdapter = await page.evaluate(() => document.body.dataset.adapter !== "no WebGPU adapter");
        if (c.backend === "webgpu" && !hasAdapter) c.backend = "auto";
        await page.selectOption("#backend", c.backend);
        await page.setInputFiles("#file", file);
        await page.click("#join");
        return page;
      }));
      for (const [i, page] of pages.entries()) {
        await page.waitForFunction(
          () => ["done", "error"].includes(document.body.dataset.state ?? ""),
          null,
          { timeout: 300_000 },
        );
        const st: Record<string, string | undefined> = await page.evaluate(() => ({
          ...document.body.dataset,
          error: document.getElementById("error")!.textContent ?? "",
        }));
        assert.equal(st.state, "done", `${clients[i].name} page error: ${st.error}\n${b.logs.join("\n")}`);
        assert.equal(st.roundsDone, "1");
        assert.ok(Number(st.ppl) > 1, `held-out perplexity ${st.ppl}`);
        const name = st.backend === "webgpu" ? "WebGPU" : st.backend === "wasm" ? "WASM" : String(st.backend);
        console.log(
          `browser_client: ${clients[i].name} (backend=${clients[i].backend}) trained on ${name}${
            st.backend === "webgpu" ? `, ${st.adapter}` : ""
          }`,
        );
        assert.equal(st.backend, clients[i].backend === "auto" ? "wasm" : clients[i].backend);
        // The page offers the personalized adapter as PEFT files, built in the browser.
        const [download] = await Promise.all([page.waitForEvent("download"), page.click("#dl-weights")]);
        const { tensors } = decodeSafetensors(await Deno.readFile((await download.path())!));
        assert.equal(tensors.size, 2 * 2 * cfg.numLayers); // q and v, A and B, per layer
        const qa = tensors.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")!;
        assert.deepEqual(qa.shape, [4, cfg.hiddenSize]); // rank r * e = 2 * 2
        const vals = [...tensors.values()].flatMap((t) => [...tensorToFloat32(t)]);
        const kept = vals.filter((v) => v !== 0).length;
        assert.ok(
          kept > 0 && kept <= vals.length / 2 + 1,
          `PerFIT keeps at most the rank-2 budget: ${kept} of ${vals.length}`,
        );
        await screenshot(page, `client-${clients[i].name}`);
      }
      // The files' text never went out: no POST body carries a line of them.
      assert.ok(
        posted.length >= 4 && posted.every((p) => needles.every((n) => !p.includes(n))),
        "local data must not be uploaded",
      );

      const res = await fetch(`${srv.url}/v1/runs/${runId}`, {
        headers: { authorization: `Bearer ${ADMIN}` },
      });
      const run = (await res.json()).run;
      assert.equal(run.status, "done");

      await b.page.goto(`${srv.url}/dashboard?run=${runId}`);
      await b.page.waitForFunction(() => Number(document.body.dataset.refreshes ?? 0) >= 1, null, {
        timeout: 30_000,
      });
      const row = await b.page.$eval(
        "#rounds-table tbody tr",
        (tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent),
      );
      assert.equal(row[0], runId);
      assert.equal(row[3], "closed");
      assert.ok(Number(row[5]) > 1, `mean ppl cell: ${row[5]}`);
      // deno-lint-ignore no-explicit-any
      const charts: any = await b.page.evaluate(() => (globalThis as any).perfitDashboard.charts);
      assert.equal(charts.overlap.datasets[0].points, 4, "two clients' masks in the heatmap");
      assert.equal(charts.budget.datasets.length, 2, "budget spread from the model folder's layout");
      assert.equal(charts.ppl.datasets.length, 2);
      await screenshot(b.page, "dashboard-after-round");
    } finally {
      for (const o of others) await o.close();
      await b.close();
      await srv.close();
      await app.close();
      kv.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

if (chromium === null) console.warn("browser_client: SKIPPED, no chromium (apt-get install -y chromium)");
