/**
 * docs/walkthrough.md stays true: every command of its `sh` blocks runs, in order, in one bash (so its
 * variables and background jobs carry over), with PORT a free port and WORK a temporary folder.
 */
import assert from "node:assert/strict";
import { freePort } from "../scripts/denokv.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test({
  name: "walkthrough: every command of docs/walkthrough.md runs, in order, and each step checks its result",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const doc = await Deno.readTextFile(`${ROOT}docs/walkthrough.md`);
    const blocks = [...doc.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]);
    assert.ok(blocks.length >= 5, `found ${blocks.length} sh blocks`);
    const script = ["set -euo pipefail", ...blocks].join("\n");
    for (
      const needle of [
        "task serve",
        "task admin create",
        "task client",
        "examples/generate.ts",
        "task admin adapter",
      ]
    ) {
      assert.ok(script.includes(needle), `the walkthrough runs ${needle}`);
    }
    const work = await Deno.makeTempDir({ prefix: "perfit-walkthrough-" });
    const port = freePort();
    try {
      const r = await new Deno.Command("bash", {
        args: ["-c", script],
        cwd: ROOT,
        env: { PORT: String(port), WORK: work },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const out = new TextDecoder().decode(r.stdout);
      const err = new TextDecoder().decode(r.stderr);
      const serveLog = await Deno.readTextFile(`${work}/serve.log`).catch(() => "");
      assert.equal(r.code, 0, `walkthrough failed:\n${out}\n${err}\nserve.log:\n${serveLog}`);
      assert.match(out, /alice\.log:run run_\S+ finished after round 2/);
      assert.match(out, /bob\.log:run run_\S+ finished after round 2/);
      assert.match(out, /Transformers\.js: ".*"/);
      assert.match(out, /\/global\/adapter_model\.safetensors/);
      assert.match(out, /^deleted run_\S+$/m);
      // Bob's tier came from the probe: it says which and why.
      assert.match(
        await Deno.readTextFile(`${work}/bob.log`),
        /tier auto: (low|high) \(x[12]\): .*s\/step at rank/,
      );
      // The coordinator said what happened, line by line.
      assert.match(serveLog, /round 1 closed: 2 clients, \d+ samples/);
      assert.match(serveLog, /finished after 2 rounds/);
      const run = JSON.parse(await Deno.readTextFile(`${work}/run.json`));
      assert.equal(run.run.config.method, "perfit");
    } finally {
      await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  },
});
