/**
 * `deno task admin` (examples/admin.ts) as a subprocess against a coordinator on a loopback port:
 * create from the model folder (sizes from its config.json) or from a JSON file, list, show, metrics,
 * masks, the global adapter (a PEFT folder that PEFT loads), cancel and delete; a bad flag or `train` key
 * is one line and exit 2 before anything is sent; HTTP failures say why.
 */
import assert from "node:assert/strict";
import { ADMIN, fakeMask, makeApp } from "./server_helpers.ts";
import { parseConfig } from "../runtime/model/config.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { budgetOf } from "../runtime/perfit/expansion.ts";
import { decodeSafetensors } from "../runtime/io/safetensors.ts";
import { ADMIN_COMMANDS } from "../examples/admin.ts";
import { readPeftAdapter } from "../runtime/export/peft_read.ts";
import { decodeGlobalAdapter } from "../runtime/client/global_adapter.ts";
import { encodeUpdate } from "../runtime/client/wire.ts";
import { referencePython } from "./reference/python.ts";

const CLI = new URL("../examples/admin.ts", import.meta.url).pathname;
const MODEL = new URL("../models/perfit-tiny", import.meta.url).pathname;

/** A Python with PEFT (PERFIT_PEFT_PYTHON, or tests/reference/peft_setup.sh's venv), or null. */
const peftPython = () => referencePython("PERFIT_PEFT_PYTHON", "venv-peft", "peft");

async function admin(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1", PERFIT_ADMIN_TOKEN: "", PERFIT_ADMIN_TOKEN_FILE: "", ...env },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function withServer(fn: (url: string, dir: string) => Promise<void>) {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, app.fetch);
  const dir = await Deno.makeTempDir({ prefix: "perfit-cli-admin-" });
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`, dir);
  } finally {
    await server.shutdown();
    await app.close();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const oneLine = (r: { stderr: string }) => assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);

Deno.test("cli admin: create sizes the run from the model folder; list, show, metrics and masks read it back", async () => {
  await withServer(async (url, dir) => {
    await Deno.writeTextFile(`${dir}/token`, `${ADMIN}\n`);
    const env = { PERFIT_SERVER: url, PERFIT_ADMIN_TOKEN_FILE: `${dir}/token` };
    const c = await admin([
      "create",
      "--model",
      MODEL,
      "--method",
      "perfit",
      "--rank=2",
      "--targets",
      "q,v",
      "--rounds",
      "2",
      "--clients-per-round",
      "2",
      "--round-deadline",
      "90s",
      "--train",
      "localSteps=3,schedule=linear,lr=0.01",
      "--json",
    ], env);
    assert.equal(c.code, 0, c.stderr);
    const run = JSON.parse(c.stdout).run;
    // The sizes are the model's: global layout at rank r * max e (PerFIT tiers low/mid/high = 1/2/4).
    const cfg = parseConfig(JSON.parse(await Deno.readTextFile(`${MODEL}/config.json`)));
    const layout = adapterLayout(cfg, { rank: 2 * 4, alpha: 8, targets: ["q", "v"] });
    assert.equal(run.config.adapterSize, layout.size);
    assert.equal(run.config.budget, budgetOf(layout, 2));
    assert.equal(run.config.baseModel, "perfit-tiny");
    assert.equal(run.config.roundDeadlineMs, 90_000);
    assert.deepEqual(run.config.expansionTiers, { low: 1, mid: 2, high: 4 });
    assert.deepEqual(run.config.train, { localSteps: 3, schedule: "linear", lr: 0.01 });
    assert.ok(run.config.model, "the model config is sent as `model`");

    // From a JSON file: its fields stand unless a flag is given.
    await Deno.writeTextFile(
      `${dir}/run.json`,
      JSON.stringify({ method: "fedit", rounds: 3, clientsPerRound: 1, train: { batchSize: 2 } }),
    );
    const f = await admin(["create", "--config", `${dir}/run.json`, "--rounds", "5", "--json"], env);
    assert.equal(f.code, 0, f.stderr);
    const fr = JSON.parse(f.stdout).run;
    assert.equal(fr.config.method, "fedit");
    assert.equal(fr.config.rounds, 5, "a given flag overrides the file");
    assert.equal(fr.config.clientsPerRound, 1, "a flag left at its default does not");
    assert.deepEqual(fr.config.expansionTiers, { base: 1 });

    const list = await admin(["list"], env);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, new RegExp(`^${run.id}  perfit  active  round 1/2 `, "m"));
    assert.match(list.stdout, new RegExp(`^${fr.id}  fedit `, "m"));
    const show = await admin(["show", run.id], env);
    assert.equal(show.code, 0, show.stderr);
    assert.equal(JSON.parse(show.stdout).run.id, run.id);
    const metrics = await admin(["metrics", run.id, "--out", `${dir}/m/metrics.json`], env);
    assert.equal(metrics.code, 0, metrics.stderr);
    const m = JSON.parse(await Deno.readTextFile(`${dir}/m/metrics.json`));
    assert.equal(m.run.id, run.id);
    assert.ok(Array.isArray(m.rounds));
    // Masks: every joined client's latest mask in one file (none uploaded yet: an empty container).
    const masks = await admin(["masks", run.id, "--out", `${dir}/masks.safetensors`], env);
    assert.equal(masks.code, 0, masks.stderr);
    const decoded = decodeSafetensors(await Deno.readFile(`${dir}/masks.safetensors`));
    assert.equal(decoded.metadata.run, run.id);
    // The global adapter before any round: a PEFT folder of zeros, and the CLI says so.
    const g = await admin(["adapter", run.id, "--out", `${dir}/global`], env);
    assert.equal(g.code, 0, g.stderr);
    assert.match(g.stderr, /after round 0 .*no round aggregated yet: all zeros/);
    assert.equal((await readPeftAdapter(`${dir}/global`)).adapter.length, run.config.adapterSize);
  });
});

Deno.test("cli admin: bad flags, bad train keys and a made-up adapterSize are refused before sending: one line, exit 2", async () => {
  await withServer(async (url, dir) => {
    const env = { PERFIT_SERVER: url, PERFIT_ADMIN_TOKEN: ADMIN };
    await Deno.writeTextFile(`${dir}/made-up.json`, JSON.stringify({ method: "fedit", adapterSize: 1000 }));
    const cases: [string[], RegExp][] = [
      [
        ["create", "--train", "warmup=3"],
        /^admin: --train: train\.warmup is not a training setting; known: localSteps/,
      ],
      [["create", "--train", '{"lr":-1}'], /train\.lr must be a number in \(0, 10\], got -1/],
      [["create", "--method", "perfit-e1x"], /--method must be one of /],
      [["create", "--rank", "0"], /--rank must be an integer in \[1, 1024\], got "0"/],
      [["create", "--round-deadline", "soon"], /--round-deadline must be a duration like 90s/],
      [["create", "--method", "fedit", "--tiers", "big=4"], /every expansion tier must be 1/],
      [["create", "--config", `${dir}/made-up.json`], /adapterSize is computed from the model/],
      [["create", "--model", "/nonexistent-perfit"], /--model must be an existing directory/],
      [
        ["list", "--bogus"],
        /unknown flag --bogus; valid flags: --server, --admin-token, --admin-token-file, --json/,
      ],
      [
        ["frobnicate"],
        /unknown command "frobnicate"; commands: create, list, show, metrics, masks, adapter, cancel, delete/,
      ],
      [["show"], /show needs the run id/],
      [["masks", "run_x"], /masks needs --out PATH/],
      [["cancel"], /cancel needs the run id: deno task admin cancel RUN \(or --run RUN\)/],
      [["cancel", "run_x", "--run", "run_y"], /cancel: two run ids \(run_x and --run run_y\); give one/],
      [["delete", "--run", "run_x"], /delete removes run run_x and all its data for good: add --yes/],
      [["adapter", "--run", "run_x"], /adapter needs --out PATH/],
      [["adapter", "run_x", "--out", dir, "--model", "/nonexistent-perfit"], /--model must be an existing/],
    ];
    const results = await Promise.all(cases.map(([args]) => admin(args, env)));
    cases.forEach(([args, re], i) => {
      const r = results[i];
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      oneLine(r);
      assert.match(r.stderr, re, args.join(" "));
    });
    // Nothing reached the coordinator.
    const list = await admin(["list", "--json"], env);
    assert.deepEqual(JSON.parse(list.stdout).runs, []);
    // No token at all: one line naming the three ways to give it.
    const none = await admin(["list"], { PERFIT_SERVER: url });
    assert.equal(none.code, 2);
    assert.match(
      none.stderr,
      /no admin token: --admin-token-file PATH, PERFIT_ADMIN_TOKEN or --admin-token T/,
    );
  });
});

Deno.test("cli admin: a refused token, a coordinator error and an unreachable server are one line each, exit 1", async () => {
  await withServer(async (url) => {
    const wrong = await admin(["list"], { PERFIT_SERVER: url, PERFIT_ADMIN_TOKEN: "nope" });
    assert.equal(wrong.code, 1);
    oneLine(wrong);
    assert.match(wrong.stderr, /401 unauthorized: the coordinator refused the admin token/);
    const missing = await admin(["show", "run_doesnotexist"], {
      PERFIT_SERVER: url,
      PERFIT_ADMIN_TOKEN: ADMIN,
    });
    assert.equal(missing.code, 1);
    oneLine(missing);
    assert.match(missing.stderr, /GET \/v1\/runs\/run_doesnotexist: 404/);
  });
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  const down = await admin(["list"], {
    PERFIT_SERVER: `http://127.0.0.1:${port}`,
    PERFIT_ADMIN_TOKEN: ADMIN,
  });
  assert.equal(down.code, 1);
  oneLine(down);
  assert.match(
    down.stderr,
    /cannot reach the coordinator at http:\/\/127\.0\.0\.1:\d+ .*is deno task serve running\?/,
  );
});

Deno.test("cli admin: --help lists the commands, and each command's --help every flag with its default", async () => {
  const top = await admin(["--help"]);
  assert.equal(top.code, 0);
  for (const c of Object.keys(ADMIN_COMMANDS)) assert.match(top.stdout, new RegExp(`^  ${c} `, "m"));
  const helps = await Promise.all(Object.keys(ADMIN_COMMANDS).map((c) => admin([c, "--help"])));
  Object.entries(ADMIN_COMMANDS).forEach(([c, cli], i) => {
    assert.equal(helps[i].code, 0, helps[i].stderr);
    for (const flag of Object.keys(cli.spec.flags)) {
      assert.match(
        helps[i].stdout,
        new RegExp(`^  --${flag}\\b[^\\n]*\\n[^\\n]*\\(.*default: `, "m"),
        `${c} --${flag}`,
      );
    }
  });
});

Deno.test("cli admin: adapter writes the global adapter as a PEFT folder PEFT loads; cancel and delete end the run", async () => {
  await withServer(async (url, dir) => {
    const env = { PERFIT_SERVER: url, PERFIT_ADMIN_TOKEN: ADMIN };
    const c = await admin([
      "create",
      ...[
        "--model",
        MODEL,
        "--method",
        "perfit",
        "--rank",
        "2",
        "--targets",
        "q,v",
        "--tiers",
        "low=1,high=2",
      ],
      ...["--rounds", "2", "--clients-per-round", "1", "--json"],
    ], env);
    assert.equal(c.code, 0, c.stderr);
    const run = JSON.parse(c.stdout).run;
    const n: number = run.config.adapterSize;
    // One client's upload closes round 1: the global adapter is its values at its mask, 0 elsewhere.
    const j = await (await fetch(`${url}/v1/runs/${run.id}/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    })).json();
    const mask = fakeMask(0, n, run.config.budget, false);
    const values = Float32Array.from({ length: n }, (_, p) => Math.fround(0.01 * Math.sin(p + 1)));
    const up = await fetch(`${url}/v1/runs/${run.id}/clients/${j.clientId}/rounds/1/update`, {
      method: "POST",
      headers: { authorization: `Bearer ${j.token}`, "content-type": "application/octet-stream" },
      body: encodeUpdate({ run: run.id, round: 1, samples: 4, values, mask, metrics: {} }) as Uint8Array<
        ArrayBuffer
      >,
    });
    assert.equal(up.status, 201, await up.text());

    const g = await admin(["adapter", "--run", run.id, "--out", `${dir}/global`], env);
    assert.equal(g.code, 0, g.stderr);
    assert.match(
      g.stderr,
      new RegExp(`the global perfit adapter of ${run.id} after round 1 \\(active\\), rank 4`),
    );
    const a = await readPeftAdapter(`${dir}/global`);
    // The global layout: rank r · the largest tier, the model's own (its config.json), the run's scale.
    const layout = adapterLayout(parseConfig(JSON.parse(await Deno.readTextFile(`${MODEL}/config.json`))), {
      rank: 4,
      alpha: run.config.lora.alpha,
      targets: ["q", "v"],
    });
    assert.deepEqual(
      a.layout.entries.map((e) => [e.offset, e.size]),
      layout.entries.map((e) => [e.offset, e.size]),
    );
    assert.equal(a.scale, run.config.lora.alpha / 2);
    let wrong = 0, nonZeroB = 0;
    for (let p = 0; p < n; p++) if (a.adapter[p] !== (mask[p] ? values[p] : 0)) wrong++;
    for (const e of layout.entries) {
      if (e.kind !== "B") continue;
      for (let p = e.offset; p < e.offset + e.size; p++) if (a.adapter[p] !== 0) nonZeroB++;
    }
    assert.equal(wrong, 0, "the PEFT folder holds the aggregate");
    assert.ok(nonZeroB > 0);
    const python = peftPython();
    if (python) {
      const r = await new Deno.Command(python, {
        args: [
          "-c",
          "import sys; from transformers import AutoModelForCausalLM; from peft import PeftModel; " +
          "m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2]); " +
          "print(sum(int((p != 0).sum()) for n, p in m.named_parameters() if 'lora_B' in n))",
          MODEL,
          `${dir}/global`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
      assert.equal(Number(new TextDecoder().decode(r.stdout).trim()), nonZeroB, "PEFT sees the same lora_B");
    } else {
      console.warn(
        "cli_admin: PEFT load not checked (no tests/.tmp/venv-peft; see tests/reference/peft_setup.sh)",
      );
    }
    const raw = await admin(["adapter", run.id, "--out", `${dir}/global.safetensors`, "--raw"], env);
    assert.equal(raw.code, 0, raw.stderr);
    const body = decodeGlobalAdapter(await Deno.readFile(`${dir}/global.safetensors`));
    assert.deepEqual([body.run, body.round, body.rank, body.adapterSize], [run.id, 1, 4, n]);

    const cancel = await admin(["cancel", "--run", run.id], env);
    assert.equal(cancel.code, 0, cancel.stderr);
    assert.match(cancel.stdout, new RegExp(`^cancelled ${run.id}  perfit  cancelled  round 2/2 `));
    const twice = await admin(["cancel", run.id], env);
    assert.equal(twice.code, 1);
    oneLine(twice);
    assert.match(
      twice.stderr,
      new RegExp(`POST /v1/runs/${run.id}/cancel: 409 run_cancelled: run ${run.id} is already`),
    );
    const del = await admin(["delete", "--run", run.id, "--yes"], env);
    assert.equal(del.code, 0, del.stderr);
    assert.equal(del.stdout, `deleted ${run.id}\n`);
    for (
      const args of [["show", run.id], ["delete", run.id, "--yes"], ["adapter", run.id, "--out", `${dir}/x`]]
    ) {
      const r = await admin(args, env);
      assert.equal(r.code, 1, `${args[0]}: ${r.stderr}`);
      oneLine(r);
      assert.match(r.stderr, / 404 not_found: no run /, args[0]);
    }
    const list = await admin(["list", "--json"], env);
    assert.deepEqual(JSON.parse(list.stdout).runs, []);
    // A run created through the API with a bare adapterSize has no layout to write: --model gives it.
    const bare = await fetch(`${url}/v1/runs`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: JSON.stringify({ ...JSON.parse(c.stdout).run.config, model: undefined, adapterSize: n }),
    });
    assert.equal(bare.status, 201, await bare.clone().text());
    const bareId = (await bare.json()).run.id;
    const noModel = await admin(["adapter", bareId, "--out", `${dir}/bare`], env);
    assert.equal(noModel.code, 2);
    oneLine(noModel);
    assert.match(noModel.stderr, /was created without a model config: give --model DIR/);
    const withModel = await admin(["adapter", bareId, "--out", `${dir}/bare`, "--model", MODEL], env);
    assert.equal(withModel.code, 0, withModel.stderr);
    assert.equal((await readPeftAdapter(`${dir}/bare`)).layout.rank, 4);
  });
});
