/**
 * The client page keeps its run in IndexedDB: a page that finished round 1 of a 2-round PerFIT run is
 * reloaded while it waits for the other client, picks its file again and resumes as the same client
 * (same client id, no second join, round 1 not trained or uploaded again), says what it waits for
 * while the coordinator is down, and finishes the run; "Forget this run" then leaves nothing behind.
 * The other data owner is a FederatedClient in this process with a fake trainer.
 */
import assert from "node:assert/strict";
import { createApp } from "../server/app.ts";
import { mountUi } from "../server/ui/mod.ts";
import { ReadModel } from "../server/read_model.ts";
import { bundle } from "../scripts/bundle.ts";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { FederatedClient } from "../runtime/client/federated_client.ts";
import { MemoryStorage } from "../runtime/client/storage.ts";
import { fakeTrainer } from "./server_helpers.ts";
import { chromiumPath, launchBrowser, screenshot, serveLoopback } from "./browser_harness.ts";

const chromium = chromiumPath();
const ADMIN = "admin-token-for-resume-test";

Deno.test({
  name:
    "browser_client_resume: a reload mid-run resumes as the same client from IndexedDB, waits out a down coordinator, and finishes",
  ignore: chromium === null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-resume-" });
    const cfg = await generateTinyModel(`${dir}/model`, { seed: 5 });
    await bundle();
    const kv = await Deno.openKv(`${dir}/kv.sqlite3`);
    const app = createApp({
      kv,
      config: { adminToken: ADMIN, secret: "resume-test-secret-0123456789", tickMs: 200 },
    });
    mountUi(app, { kv, modelDir: `${dir}/model`, bundle: "prebuilt", baseModelName: "perfit/tiny-test" });
    let srv = serveLoopback(app.fetch);
    const b = await launchBrowser(chromium!);
    const page = b.page;
    const ds = () => page.evaluate(() => ({ ...document.body.dataset }));
    const failure = async () => {
      const d = await ds().catch(() => ({}));
      const log = await page.textContent("#log").catch(() => "");
      return `${JSON.stringify(d)}\n${log}\n${b.logs.join("\n")}`;
    };
    let other: Promise<unknown> | null = null;
    try {
      const created = await fetch(`${srv.url}/v1/runs`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({
          baseModel: "tiny",
          model: toHfConfig(cfg),
          lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
          method: "perfit",
          rounds: 2,
          clientsPerRound: 2,
          quorum: 2,
          roundDeadlineMs: 600_000,
          expansionTiers: { big: 2 },
          train: { localSteps: 2, batchSize: 2, maxLen: 32, pruneStages: 2 },
        }),
      });
      assert.equal(created.status, 201, await created.clone().text());
      const runId = (await created.json()).run.id as string;

      const lines = (await Deno.readTextFile("datasets/lexicon-instruct/computing.jsonl")).trim().split("\n");
      const file = `${dir}/computing.jsonl`;
      await Deno.writeTextFile(file, lines.slice(0, 8).join("\n") + "\n");
      const otherFile = `${dir}/other.jsonl`;
      await Deno.writeTextFile(otherFile, lines.slice(8, 16).join("\n") + "\n");

      // Every POST the page makes, across reloads.
      const posts: string[] = [];
      page.on("request", (r) => {
        if (r.method() === "POST") posts.push(new URL(r.url()).pathname);
      });
      page.on("dialog", (d) => void d.accept());

      // 1. Join and finish round 1; the round cannot close before the other client uploads.
      await page.goto(`${srv.url}/client?run=${runId}&name=computing&backend=auto`);
      await page.waitForFunction(() => document.body.dataset.ready === "true");
      assert.equal(await page.isHidden("#saved"), true, "nothing saved before joining");
      await page.setInputFiles("#file", file);
      await page.click("#join");
      await page.waitForFunction(
        () => document.body.dataset.roundsDone === "1" || document.body.dataset.state === "error",
        null,
        { timeout: 300_000 },
      );
      const first = await ds();
      assert.equal(first.state, "training", await failure());
      assert.equal(first.trainedRounds, "1");
      assert.equal(first.lastAcked, "1");
      const clientId = first.clientId!;
      assert.match(clientId, /\S/);

      // 2. Reload mid-run: the page shows what this browser holds of the run.
      await page.reload();
      await page.waitForFunction(() => document.body.dataset.ready === "true");
      const saved = await ds();
      assert.equal(saved.savedClient, clientId, await failure());
      assert.equal(saved.savedRound, "1");
      assert.equal(await page.textContent("#join"), "Resume");
      assert.match(
        (await page.textContent("#saved-info"))!,
        new RegExp(`client ${clientId} of run ${runId}`),
      );

      // Another file would not be the data round 1 trained on: refused, before any model is loaded.
      await page.setInputFiles("#file", otherFile);
      await page.click("#join");
      await page.waitForFunction(() => document.body.dataset.state === "error");
      assert.match(
        (await page.textContent("#error"))!,
        /joined run .* with the file computing\.jsonl .* differs/,
      );

      // 3. The same file resumes: same client, no join request. (The refusal's "error" state holds
      // until the new attempt starts: wait for it to go, or the wait below would see the old error.)
      await page.setInputFiles("#file", file);
      await page.click("#join");
      await page.waitForFunction(() => document.body.dataset.state !== "error");
      await page.waitForFunction(
        () => document.body.dataset.resumed === "true" || document.body.dataset.state === "error",
        null,
        { timeout: 120_000 },
      );
      const resumed = await ds();
      assert.equal(resumed.state, "training", await failure());
      assert.equal(resumed.clientId, clientId);

      // A second tab of this browser would be the same client: it may not train the run at once.
      const tab = await b.context.newPage();
      await tab.goto(`${srv.url}/client?run=${runId}&name=computing`);
      await tab.waitForFunction(() => document.body.dataset.ready === "true");
      assert.equal((await tab.evaluate(() => ({ ...document.body.dataset }))).savedClient, clientId);
      await tab.setInputFiles("#file", file);
      await tab.click("#join");
      await tab.waitForFunction(() => document.body.dataset.state === "error");
      assert.match(
        (await tab.textContent("#error"))!,
        /already training in another tab or window of this browser/,
      );
      await tab.close();

      // 4. The coordinator goes down: the page says it is retrying, and what; then it comes back.
      const port = srv.port;
      await srv.close();
      await page.waitForFunction(() => Number(document.body.dataset.retries ?? 0) >= 1, null, {
        timeout: 60_000,
      });
      const net = (await page.textContent("#net-info"))!;
      assert.match(
        net,
        new RegExp(
          `^coordinator unreachable: GET /v1/runs/${runId}/clients/${clientId}/task failed \\(.+\\); retry \\d+ of 19 in [\\d.]+ s$`,
        ),
      );
      srv = serveLoopback(app.fetch, port);
      await page.waitForFunction(() => document.body.dataset.retrying === "", null, { timeout: 60_000 });

      // 5. The other data owner joins and trains: both rounds close and the run finishes.
      const otherClient = await FederatedClient.create({
        serverUrl: srv.url,
        runId,
        trainer: fakeTrainer(1),
        storage: new MemoryStorage(),
        name: "satire",
        pollMs: 100,
      });
      other = otherClient.run();
      await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state ?? ""), null, {
        timeout: 300_000,
      });
      await other;
      const done = await ds();
      assert.equal(done.state, "done", await failure());
      assert.equal(done.clientId, clientId);
      assert.equal(done.trainedRounds, "2", "only round 2 is trained after the reload");
      // `auto` trains on a hardware WebGPU adapter only; a software one (SwiftShader here) is labelled.
      if (done.adapter !== "no WebGPU adapter") {
        const soft = /swiftshader|llvmpipe|lavapipe/i.test(done.adapter!);
        if (soft) assert.equal(done.adapterSoftware, "true");
        assert.equal(done.backend, done.adapterSoftware === "true" ? "wasm" : "webgpu", String(done.adapter));
        if (done.adapterSoftware === "true") {
          assert.match(done.adapter!, /\(software, runs on the CPU\)$/);
          assert.match(
            (await page.textContent("#backend-info"))!,
            /^wasm .*auto: the WebGPU adapter is software/,
          );
        }
      } else assert.equal(done.backend, "wasm");
      assert.equal(await page.isVisible("#export"), true, "the personalized adapter is offered");
      const log = (await page.textContent("#log"))!;
      assert.match(
        log,
        new RegExp(`resumed run ${runId} as ${clientId} \\(no new join\\); last acknowledged round: 1`),
      );
      assert.match(log, /coordinator reachable again/);
      assert.doesNotMatch(log, /round 1: training/, "round 1 is not trained again");
      await screenshot(page, "client-resumed");

      // One join, one upload per round, over both page loads; the coordinator saw two clients.
      const count = (p: RegExp) => posts.filter((x) => p.test(x)).length;
      assert.equal(count(/\/join$/), 1, posts.join("\n"));
      assert.equal(count(/\/rounds\/1\/update$/), 1, posts.join("\n"));
      assert.equal(count(/\/rounds\/2\/update$/), 1, posts.join("\n"));
      const reads = new ReadModel(kv);
      const clients = await reads.clients(runId);
      assert.deepEqual(clients.map((c) => c.name).sort(), ["computing", "satire"]);
      const mine = (await reads.uploads(runId)).filter((u) => u.client === clientId).map((u) => u.round);
      assert.deepEqual(mine.sort(), [1, 2]);
      const run = (await (await fetch(`${srv.url}/v1/runs/${runId}`, {
        headers: { authorization: `Bearer ${ADMIN}` },
      })).json()).run;
      assert.equal(run.status, "done");

      // 6. Forget this run: the page reloads holding nothing of it.
      await page.click("#forget");
      await page.waitForFunction((id) => document.body.dataset.forgotten === id, runId, { timeout: 30_000 });
      await page.waitForFunction(() => document.body.dataset.ready === "true");
      const after = await ds();
      assert.equal(after.savedClient, undefined, await failure());
      assert.equal(await page.isHidden("#saved"), true);
      assert.equal(await page.textContent("#join"), "Join and train");
      const dbs = await page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
      assert.ok(!dbs.some((n) => n?.endsWith(` ${runId}`)), `databases left: ${dbs.join(", ")}`);
    } finally {
      await other?.catch(() => {});
      await b.close();
      await srv.close();
      await app.close();
      kv.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

if (chromium === null) {
  console.warn("browser_client_resume: SKIPPED, no chromium (apt-get install -y chromium)");
}
