/**
 * The run's `train` keys (runtime/client/train_settings.ts): one typed table with today's client defaults,
 * unknown keys and bad values refused with a clear message, and the coordinator answering 422
 * invalid_config with that message.
 */
import assert from "node:assert/strict";
import {
  defaultTrainSettings,
  parseTrainSettings,
  TRAIN_SETTINGS,
  trainSettingsDoc,
} from "../runtime/client/train_settings.ts";
import { localHyper } from "../runtime/client/engine_trainer.ts";
import { DEFAULT_SIM } from "../runtime/federation/types.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { ADMIN, makeApp, runBody } from "./server_helpers.ts";

Deno.test("train settings: the defaults are today's client defaults (localHyper, DEFAULT_SIM)", () => {
  const d = defaultTrainSettings();
  const h = localHyper({});
  assert.equal(d.localSteps, h.steps);
  assert.equal(d.lr, h.lr);
  assert.equal(d.batchSize, h.batchSize);
  assert.equal(d.maxLen, h.maxLen);
  assert.equal(d.pruneStages, h.pruneStages);
  assert.equal(d.searchFraction, h.searchFraction);
  assert.equal(d.clipNorm, h.clipNorm);
  assert.equal(d.weightDecay, DEFAULT_SIM.weightDecay);
  assert.equal(d.researchEvery, DEFAULT_SIM.researchEvery);
  assert.equal(d.schedule, DEFAULT_SIM.schedule);
  assert.equal(d.allocation, DEFAULT_SIM.allocation);
  assert.equal(d.importanceBeta, DEFAULT_SIM.importance.beta);
  assert.deepEqual(parseTrainSettings({}), d);
  assert.deepEqual(parseTrainSettings(undefined), d);
});

Deno.test("train settings: valid values pass and are read as the client reads them", () => {
  const raw = { localSteps: 4, batchSize: 2, maxLen: 32, pruneStages: 2, lr: 0.01, schedule: "linear" };
  const s = parseTrainSettings(raw);
  assert.equal(s.localSteps, 4);
  assert.equal(s.schedule, "linear");
  assert.equal(s.allocation, "global", "unset keys keep their default");
  // The same values localHyper reads today.
  const h = localHyper(raw);
  assert.deepEqual([h.steps, h.batchSize, h.maxLen, h.pruneStages, h.lr], [4, 2, 32, 2, 0.01]);
  // `steps` stays an alias of localSteps; both at once is refused.
  assert.equal(parseTrainSettings({ steps: 7 }).localSteps, 7);
  assert.throws(() => parseTrainSettings({ steps: 7, localSteps: 7 }), /set the same setting/);
});

Deno.test("train settings: unknown keys and bad values throw RangeError naming the key and the range", () => {
  const cases: [unknown, RegExp][] = [
    [
      { localsteps: 4 },
      /train\.localsteps is not a training setting \(did you mean localSteps\?\); known: localSteps, lr,/,
    ],
    [{ learningRate: 0.1 }, /train\.learningRate is not a training setting; known:/],
    [{ lr: 0 }, /train\.lr must be a number in \(0, 10\], got 0/],
    [{ lr: "0.1" }, /train\.lr must be a number .*got "0\.1"/],
    [{ localSteps: 2.5 }, /train\.localSteps must be an integer in \[1, 100000\], got 2\.5/],
    [{ batchSize: -1 }, /train\.batchSize must be an integer in \[1, 4096\]/],
    [{ searchFraction: 1.5 }, /train\.searchFraction must be a number in \(0, 1\]/],
    [{ clipNorm: -1 }, /train\.clipNorm must be a number in \[0, /],
    [{ importanceBeta: 1 }, /train\.importanceBeta must be a number in \[0, 1\)/],
    [{ schedule: "exp" }, /train\.schedule must be one of "cubic", "linear", "one-shot", got "exp"/],
    [{ allocation: "local" }, /train\.allocation must be one of "global", "per-module"/],
    [{ researchEvery: null }, /train\.researchEvery must be an integer .*got null/],
    [[1], /train must be an object, got an array/],
  ];
  for (const [raw, re] of cases) {
    assert.throws(() => parseTrainSettings(raw), (e: unknown) => {
      assert.ok(e instanceof RangeError, String(e));
      assert.match(e.message, re);
      return true;
    });
  }
});

Deno.test("train settings: the coordinator refuses a bad train object with 422 invalid_config and the message", async () => {
  assert.throws(() => parseRunConfig(runBody("perfit", { train: { lr: -1 } })), /train\.lr must be a number/);
  assert.equal(parseRunConfig(runBody("perfit", { train: { localSteps: 3 } })).train.localSteps, 3);
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv, { tickMs: 0 });
  try {
    const post = (train: unknown) =>
      app.request("/v1/runs", {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify(runBody("perfit", { train })),
      });
    const bad = await post({ localSteps: 4, warmup: 10 });
    assert.equal(bad.status, 422);
    const body = await bad.json();
    assert.equal(body.error.code, "invalid_config");
    assert.match(body.error.message, /train\.warmup is not a training setting; known: localSteps/);
    const ok = await post({ localSteps: 4, schedule: "one-shot" });
    assert.equal(ok.status, 201);
    assert.deepEqual((await ok.json()).run.config.train, { localSteps: 4, schedule: "one-shot" });
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("train settings: the doc table lists every key with its default, and the README carries it", async () => {
  const doc = trainSettingsDoc();
  for (const [k, s] of Object.entries(TRAIN_SETTINGS)) {
    assert.match(
      doc,
      new RegExp(`\\| \`${k}\` \\| [a-z]+ \\| [^|]+ \\| \`${JSON.stringify(s.default)}\` \\|`),
    );
  }
  // deno fmt pads markdown tables: compare cell by cell.
  const norm = (t: string) =>
    t.split("\n").map((l) => l.split("|").map((c) => c.trim().replace(/^-+$/, "-")).join("|")).join("\n");
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  assert.ok(
    norm(readme).includes(norm(doc)),
    "README.md carries trainSettingsDoc()'s table (regenerate it when the table changes)",
  );
  const lib = await import("../mod.ts");
  assert.equal(lib.parseTrainSettings, parseTrainSettings, "mod.ts exports the train settings");
});
