/**
 * Perfit for a user outside the repo, end to end with real processes: `deno task serve`, `deno task
 * admin create` making a PerFIT run from the bundled model, two `deno task client` processes (tiers
 * high and low) on JSONL files of their own, and one headless Chromium page at /client. All finish 2
 * rounds; each leaves a PEFT adapter with non-zero `lora_B` at its own expanded rank (the page's is
 * downloaded from it), and PEFT loads each where its Python environment exists.
 */
import assert from "node:assert/strict";
import { readPeftAdapter } from "../runtime/export/peft_read.ts";
import { BUNDLED_DATA, BUNDLED_MODEL } from "../runtime/federation/run.ts";
import { chromiumPath, launchBrowser, type TestBrowser } from "./browser_harness.ts";
import { startCoordinator } from "../scripts/denokv.ts";
import { referencePython } from "./reference/python.ts";

const chromium = chromiumPath();

const DENO = new URL("../scripts/deno.sh", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;
const ADMIN = "client-e2e-admin-token-0123456789";

const peftPython = () => referencePython("PERFIT_PEFT_PYTHON", "venv-peft", "peft");

let browser: TestBrowser | null = null;

/** Opens the client page for `run` as data owner "computing" and starts it on a local file. */
async function openPage(url: string, run: string, dir: string) {
  browser = await launchBrowser(chromium!);
  const page = browser.page;
  const lines = (await Deno.readTextFile(`${BUNDLED_DATA}/computing.jsonl`)).split("\n").slice(0, 30);
  await Deno.writeTextFile(`${dir}/computing.jsonl`, lines.join("\n") + "\n");
  await page.goto(`${url}/client?run=${run}&name=computing`);
  await page.waitForFunction(() => document.body.dataset.adapterSoftware !== undefined);
  await page.setInputFiles("#file", `${dir}/computing.jsonl`);
  await page.click("#join");
  return page;
}

/** Waits for the page to finish the run and saves the PEFT adapter it offers into a folder. */
async function finishPage(page: TestBrowser["page"], dir: string): Promise<string> {
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state ?? ""), null, {
    timeout: 600_000,
  });
  const st: Record<string, string | undefined> = await page.evaluate(() => ({
    ...document.body.dataset,
    error: document.getElementById("error")!.textContent ?? "",
  }));
  assert.equal(st.state, "done", `page: ${st.error}\n${browser!.logs.join("\n")}`);
  assert.equal(st.roundsDone, "2");
  const out = `${dir}/page-adapter`;
  await Deno.mkdir(out, { recursive: true });
  for (
    const [id, file] of [["#dl-config", "adapter_config.json"], ["#dl-weights", "adapter_model.safetensors"]]
  ) {
    const [download] = await Promise.all([page.waitForEvent("download"), page.click(id)]);
    await Deno.copyFile((await download.path())!, `${out}/${file}`);
  }
  return out;
}

Deno.test({
  name:
    "outside use: serve, admin create, two client processes and a browser page finish a 2-round PerFIT run; each writes a PEFT adapter PEFT loads",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-client-e2e-" });
    const server = await startCoordinator({ kv: `${dir}/coordinator.kv`, flags: [`--admin-token=${ADMIN}`] });
    browser = null;
    try {
      const admin = await new Deno.Command("bash", {
        args: [
          DENO,
          "run",
          "-A",
          "examples/admin.ts",
          "create",
          "--server",
          server.url,
          "--method",
          "perfit",
          "--rank",
          "2",
          "--alpha",
          "4",
          "--rounds",
          "2",
          "--clients-per-round",
          String(chromium ? 3 : 2),
          "--tiers",
          "low=1,high=2",
          "--train",
          "localSteps=3,batchSize=4,maxLen=48,pruneStages=2",
          "--json",
        ],
        cwd: ROOT,
        env: { PERFIT_ADMIN_TOKEN: ADMIN },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const adminOut = new TextDecoder().decode(admin.stdout);
      assert.equal(admin.code, 0, `admin create: ${adminOut}${new TextDecoder().decode(admin.stderr)}`);
      const run = JSON.parse(adminOut).run;
      assert.equal(run.config.method, "perfit");
      const page = chromium ? await openPage(server.url, run.id, dir) : null;
      const owners = [["acronyms", "high"], ["satire", "low"]] as const;
      const procs = await Promise.all(owners.map(async ([cat, tier]) => {
        const lines = (await Deno.readTextFile(`${BUNDLED_DATA}/${cat}.jsonl`)).split("\n").slice(0, 30);
        await Deno.writeTextFile(`${dir}/${cat}.jsonl`, lines.join("\n"));
        return new Deno.Command("bash", {
          args: [
            DENO,
            "run",
            "-A",
            "--unstable-kv",
            "examples/client.ts",
            "--server",
            server.url,
            "--run",
            run.id,
            "--data",
            `${dir}/${cat}.jsonl`,
            "--state",
            `${dir}/state-${cat}`,
            "--tier",
            tier,
            "--backend",
            "node",
            "--poll-ms",
            "50",
            "--quiet",
          ],
          cwd: ROOT,
          stdout: "piped",
          stderr: "piped",
        }).output();
      }));
      const python = peftPython();
      const adapters: { name: string; dir: string }[] = owners.map(([cat]) => ({
        name: cat,
        dir: `${dir}/state-${cat}/adapter`,
      }));
      if (page) adapters.push({ name: "page", dir: await finishPage(page, dir) });
      for (const [i, p] of procs.entries()) {
        const [cat, tier] = owners[i];
        const out = new TextDecoder().decode(p.stdout);
        assert.equal(p.code, 0, `${cat}: ${out}\n${new TextDecoder().decode(p.stderr)}`);
        assert.match(out, new RegExp(`joined run ${run.id} as c_\\S+ \\(tier ${tier}`));
        assert.match(out, /round 1: trained, upload accepted; loss \d/);
        assert.match(out, /round 2: trained, upload accepted/);
        assert.match(out, /finished after round 2/);
        const a = await readPeftAdapter(`${dir}/state-${cat}/adapter`);
        assert.equal(a.layout.rank, 2 * (tier === "high" ? 2 : 1));
      }
      for (const { name, dir: adapterDir } of adapters) {
        const a = await readPeftAdapter(adapterDir);
        let nonZeroB = 0;
        for (const e of a.layout.entries) {
          if (e.kind !== "B") continue;
          for (let j = 0; j < e.size; j++) if (a.adapter[e.offset + j] !== 0) nonZeroB++;
        }
        assert.ok(nonZeroB > 0, `${name}: lora_B is all zeros`);
        if (python) {
          const r = await new Deno.Command(python, {
            args: [
              "-c",
              "import sys; from transformers import AutoModelForCausalLM; from peft import PeftModel; " +
              "m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2]); " +
              "print(sum(int((p != 0).sum()) for n, p in m.named_parameters() if 'lora_B' in n))",
              BUNDLED_MODEL,
              adapterDir,
            ],
            stdout: "piped",
            stderr: "piped",
          }).output();
          assert.equal(r.code, 0, `${name}: ${new TextDecoder().decode(r.stderr)}`);
          assert.ok(Number(new TextDecoder().decode(r.stdout).trim()) > 0, `${name}: PEFT sees zero lora_B`);
        } else {
          console.warn(
            "cli_client_e2e: PEFT load not checked (no tests/.tmp/venv-peft; see tests/reference/peft_setup.sh)",
          );
        }
      }
      if (!chromium) console.warn("cli_client_e2e: the browser page was left out (no chromium)");
    } finally {
      await (browser as TestBrowser | null)?.close();
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
