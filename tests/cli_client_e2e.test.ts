/**
 * The data owner's CLI end to end, with real processes: `deno task serve`, a PerFIT run created on the
 * bundled model over the admin route, and two `deno task client` processes (tiers high and low) on
 * JSONL files of their own. Both finish 2 rounds, say so line by line, and leave a PEFT adapter with
 * non-zero `lora_B` at their own expanded rank; PEFT loads each when its Python environment exists.
 */
import assert from "node:assert/strict";
import { loadModel } from "../runtime/model/engine.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { readPeftAdapter } from "../runtime/export/peft_read.ts";
import { BUNDLED_DATA, BUNDLED_MODEL } from "../runtime/federation/run.ts";

const DENO = new URL("../scripts/deno.sh", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;
const ADMIN = "client-e2e-admin-token-0123456789";

function peftPython(): string | null {
  for (const p of [Deno.env.get("PERFIT_PEFT_PYTHON"), `${ROOT}tests/.tmp/venv-peft/bin/python`]) {
    if (!p) continue;
    try {
      const r = new Deno.Command(p, { args: ["-c", "import peft"], stdout: "null", stderr: "null" })
        .outputSync();
      if (r.success) return p;
    } catch { /* not there */ }
  }
  return null;
}

async function startServe(kv: string) {
  const child = new Deno.Command("bash", {
    args: [
      DENO,
      "run",
      "-A",
      "--unstable-kv",
      "server/main.ts",
      "--port=0",
      `--kv=${kv}`,
      `--admin-token=${ADMIN}`,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  let url: string | null = null;
  while (url === null) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += value;
    url = /listening on (http:\/\/[^\s]+)/.exec(seen)?.[1] ?? null;
  }
  const drain = (async () => {
    try {
      while (!(await reader.read()).done) { /* discard */ }
    } catch { /* closed */ }
  })();
  const err = new Response(child.stderr).text();
  if (!url) throw new Error(`serve did not start: ${seen} ${await err}`);
  return {
    url,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await drain;
      await err;
    },
  };
}

Deno.test({
  name: "client CLI: two data-owner processes finish a 2-round PerFIT run and write PEFT adapters",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-client-e2e-" });
    const server = await startServe(`${dir}/coordinator.kv`);
    try {
      const model = await loadModel(BUNDLED_MODEL);
      const res = await fetch(`${server.url}/v1/runs`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({
          baseModel: "perfit-tiny",
          model: toHfConfig(model.config),
          lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
          method: "perfit",
          rounds: 2,
          clientsPerRound: 2,
          roundDeadlineMs: 600_000,
          expansionTiers: { low: 1, high: 2 },
          train: { localSteps: 3, batchSize: 4, maxLen: 48, pruneStages: 2 },
        }),
      });
      assert.equal(res.status, 201, await res.clone().text());
      const run = (await res.json()).run;
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
        let nonZeroB = 0;
        for (const e of a.layout.entries) {
          if (e.kind !== "B") continue;
          for (let j = 0; j < e.size; j++) if (a.adapter[e.offset + j] !== 0) nonZeroB++;
        }
        assert.ok(nonZeroB > 0, `${cat}: lora_B is all zeros`);
        if (python) {
          const r = await new Deno.Command(python, {
            args: [
              "-c",
              "import sys; from transformers import AutoModelForCausalLM; from peft import PeftModel; " +
              "m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2]); " +
              "print(sum(int((p != 0).sum()) for n, p in m.named_parameters() if 'lora_B' in n))",
              BUNDLED_MODEL,
              `${dir}/state-${cat}/adapter`,
            ],
            stdout: "piped",
            stderr: "piped",
          }).output();
          assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
          assert.ok(Number(new TextDecoder().decode(r.stdout).trim()) > 0, "PEFT sees zero lora_B");
        } else {
          console.warn(
            "cli_client_e2e: PEFT load not checked (no tests/.tmp/venv-peft; see tests/reference/peft_setup.sh)",
          );
        }
      }
    } finally {
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
