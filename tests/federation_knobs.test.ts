import assert from "node:assert/strict";
import { DEFAULT_SIM } from "../runtime/federation/types.ts";
import type { Example } from "../runtime/data/types.ts";
import {
  knobsLabel,
  mergeKnobs,
  parseKnobs,
  parseKnobsFile,
  parseKnobsTable,
  withKnobs,
} from "../runtime/federation/knobs.ts";
import { loadClients } from "../runtime/federation/run.ts";
import { cacheKey, DEFAULT_RESULTS, type ResultsOptions } from "../bench/results_table.ts";
import { chooseKnobs, parsePlans, tune, TUNING_GRID } from "../bench/tune.ts";
import { METHODS } from "../runtime/federation/strategies.ts";
import { trainSettings } from "../runtime/federation/simulate.ts";

Deno.test("knobs: parsed values pass, unknown names and bad values are refused", () => {
  assert.deepEqual(parseKnobs({ lr: 0.01, importanceBeta: 0.5 }), { lr: 0.01, importanceBeta: 0.5 });
  assert.throws(() => parseKnobs({ lrr: 0.01 }), /unknown knob "lrr"/);
  assert.throws(() => parseKnobs(JSON.parse('{"__proto__": {"lr": 1}}')), /unknown knob "__proto__"/);
  assert.throws(() => parseKnobs({ lr: NaN }), /lr must be/);
  assert.throws(() => parseKnobs({ lr: "0.01" }), /lr must be/);
  assert.throws(() => parseKnobs({ pruneStages: 1.5 }), /pruneStages/);
  assert.throws(() => parseKnobs({ importanceBeta: 1 }), /importanceBeta/);
  assert.throws(() => parseKnobs({ tiers: { high: 0 } }), /tier high/);
  assert.deepEqual(parseKnobs({ ownWeight: 5 }), { ownWeight: 5 });
  for (const bad of [0.5, 1001, "5", NaN]) {
    assert.throws(() => parseKnobs({ ownWeight: bad }), /ownWeight must be/);
  }
  // The train setting's own range, (0, 0.5].
  assert.deepEqual(parseKnobs({ validationShare: 0.05 }), { validationShare: 0.05 });
  for (const bad of [0, 0.6, "0.1", NaN]) {
    assert.throws(() => parseKnobs({ validationShare: bad }), /validationShare/);
  }
  assert.throws(() => parseKnobs([1]), /must be an object/);
  assert.throws(() => parseKnobsTable({ fedx: {} }), /unknown method "fedx"/);
  assert.deepEqual(parseKnobsTable({ fedit: { lr: 0.01 } }), { fedit: { lr: 0.01 } });
  assert.throws(() => parseKnobsFile("{nope", "k.json"), /k\.json is not JSON/);
  assert.throws(() => parseKnobsFile('{"fedit": {"lr": -1}}', "k.json"), /k\.json\.fedit\.lr must be/);
});

Deno.test("knobs: applied to a run's config, nested settings merged, the clients' tiers required", () => {
  const cfg = { ...DEFAULT_SIM, clientTiers: ["high", "low"] };
  const c = withKnobs(cfg, { lr: 0.02, importanceBeta: 0.5, dpaLocalWeight: 0.3, searchFraction: 0.25 });
  assert.equal(c.lr, 0.02);
  assert.deepEqual(c.importance, { ...DEFAULT_SIM.importance, beta: 0.5 });
  assert.equal(c.dpa.localWeight, 0.3);
  assert.equal(c.dpa.localTrainWeight, 0.3);
  assert.equal(c.dpa.combine, DEFAULT_SIM.dpa.combine);
  assert.equal(c.searchFraction, 0.25);
  assert.deepEqual(withKnobs(cfg, {}), cfg);
  assert.equal(withKnobs(cfg, { ownWeight: 5 }).ownWeight, 5);
  assert.equal(withKnobs(cfg, {}).ownWeight, undefined);
  assert.equal(withKnobs(cfg, { validationShare: 0.2 }).validationShare, 0.2);
  assert.equal(withKnobs(cfg, {}).validationShare, undefined);
  // It travels to the clients as the train setting; unset, the run's settings carry no key.
  const io = { batchSize: 4, maxLen: 48 };
  assert.equal(trainSettings(withKnobs(cfg, { validationShare: 0.2 }), io).validationShare, 0.2);
  assert.ok(!("validationShare" in trainSettings(cfg, io)));
  assert.throws(() => withKnobs(cfg, { tiers: { high: 4 } }), /lack the clients' tiers low/);
  assert.equal(knobsLabel({}), "default");
  assert.equal(knobsLabel({ lr: 0.01, tiers: { low: 1, high: 3 } }), "lr=0.01 tiers=low:1,high:3");
});

Deno.test("knobs: every method has a plan of the same size, the lr stage first from the defaults (base trains nothing)", () => {
  const sizes = METHODS.filter((m) => m !== "base").map((
    m,
  ) => [TUNING_GRID[m].lr.length, TUNING_GRID[m].own.length]);
  assert.ok(
    sizes.every(([a, b]) => a === sizes[0][0] && b === sizes[0][1] && a > 1 && b > 0),
    `plan sizes ${sizes}`,
  );
  for (const m of METHODS) {
    assert.deepEqual(TUNING_GRID[m].lr[0], {}, m);
    assert.ok(TUNING_GRID[m].lr.slice(1).every((k) => Object.keys(k).join() === "lr"), m);
    for (const k of [...TUNING_GRID[m].lr, ...TUNING_GRID[m].own]) assert.deepEqual(parseKnobs(k), k);
  }
  assert.deepEqual(TUNING_GRID.base, { lr: [{}], own: [] });
});

Deno.test("knobs: merged in the names' order, the later setting replacing, so one setting has one label", () => {
  assert.deepEqual(Object.keys(mergeKnobs({ importanceBeta: 0.5 }, { lr: 0.01 })), ["lr", "importanceBeta"]);
  assert.equal(
    knobsLabel(mergeKnobs({ importanceBeta: 0.5 }, { lr: 0.01 })),
    knobsLabel(mergeKnobs({ lr: 0.01 }, { importanceBeta: 0.5 })),
  );
  assert.deepEqual(mergeKnobs({ lr: 0.0025 }, { lr: 0.00125 }), { lr: 0.00125 });
  assert.deepEqual(mergeKnobs({}, {}), {});
  // A knobs file may write them in any order: the label (and so the cache key) is the same.
  assert.equal(knobsLabel({ importanceBeta: 0.5, lr: 0.01 }), "lr=0.01 importanceBeta=0.5");
});

Deno.test("tuning: the lowest validation score wins, the earlier setting on a tie, NaN never", () => {
  const a = {}, b = { lr: 0.01 }, c = { lr: 0.02 };
  const chosen = chooseKnobs([
    { method: "fedit", knobs: a, seedMeans: [10], mean: 10 },
    { method: "fedit", knobs: b, seedMeans: [9], mean: 9 },
    { method: "fedit", knobs: c, seedMeans: [9], mean: 9 },
    { method: "local", knobs: b, seedMeans: [NaN], mean: NaN },
    { method: "local", knobs: a, seedMeans: [12], mean: 12 },
  ]);
  assert.equal(chosen.fedit, b);
  assert.equal(chosen.local, a);
});

Deno.test("tuning: the validation split comes from training data only, and no one trains on it", async () => {
  const opts = { partition: { kind: "category" as const, clientsPerCategory: 1 }, maxTrain: 40, maxTest: 8 };
  const plain = await loadClients(0, opts);
  const val = await loadClients(0, { ...opts, evaluateOn: "validation" });
  const key = (e: Example) => `${e.prompt}\u0000${e.response}`;
  assert.equal(val.length, plain.length);
  for (let i = 0; i < plain.length; i++) {
    const train = new Set(plain[i].train.map(key));
    const test = new Set(plain[i].test.map(key));
    assert.ok(val[i].test.length > 0);
    for (const e of val[i].test) {
      assert.ok(train.has(key(e)), "validation example not from the training split");
      assert.ok(!test.has(key(e)), "validation example from the test split");
    }
    const held = new Set(val[i].test.map(key));
    assert.ok(val[i].train.every((e) => !held.has(key(e))), "a validation example is trained on");
    assert.equal(val[i].train.length + val[i].test.length, plain[i].train.length);
  }
});

Deno.test("tuning: knobs and the validation scoring change the cache key only where set", () => {
  const base = cacheKey(DEFAULT_RESULTS, "perfit", 0);
  assert.equal(cacheKey({ ...DEFAULT_RESULTS, knobs: { perfit: {} } }, "perfit", 0), base);
  assert.equal(cacheKey({ ...DEFAULT_RESULTS, knobs: { fedit: { lr: 0.01 } } }, "perfit", 0), base);
  const tuned = cacheKey({ ...DEFAULT_RESULTS, knobs: { perfit: { searchFraction: 0.25 } } }, "perfit", 0);
  assert.notEqual(tuned, base);
  assert.notEqual(cacheKey({ ...DEFAULT_RESULTS, evaluateOn: "validation" }, "perfit", 0), base);
  assert.equal(cacheKey({ ...DEFAULT_RESULTS, evaluateOn: "test" }, "perfit", 0), base);
});

Deno.test("tuning: a short tuning runs each setting on validation and picks the better lr", async () => {
  const o: ResultsOptions = {
    ...DEFAULT_RESULTS,
    rounds: 1,
    localSteps: 3,
    maxTrain: 24,
    maxTest: 4,
    seeds: [0],
    methods: ["fedit"],
    backend: "node",
    partition: { kind: "category", clientsPerCategory: 1 },
  };
  // lr 0.9 with clipping at 1 throws the adapter far off: its validation perplexity must be the worse,
  // so stage 2 starts from the default lr, and its setting carries no lr.
  const rows = await tune(o, {
    ...TUNING_GRID,
    fedit: { lr: [{}, { lr: 0.9 }], own: [{ proximalMu: 0.1 }] },
  });
  assert.equal(rows.length, 3);
  assert.ok(rows.every((r) => Number.isFinite(r.mean) && r.mean > 1));
  assert.ok(rows[1].mean > rows[0].mean, `lr 0.9 ${rows[1].mean} vs default ${rows[0].mean}`);
  assert.deepEqual(rows[2].knobs, { proximalMu: 0.1 });
  assert.notEqual(rows[2].mean, rows[0].mean, "the proximal term changed nothing");
  assert.deepEqual(chooseKnobs(rows).fedit, rows[2].mean < rows[0].mean ? { proximalMu: 0.1 } : {});
});

Deno.test("tuning: a plan file replaces the named methods' plans, and bad plans are refused by name", () => {
  const plans = parsePlans(
    JSON.stringify({
      perfit: { lr: [{ importanceBeta: 0.5 }], own: [{ tiers: { low: 2, mid: 4, high: 8 } }] },
    }),
    "plan.json",
  );
  assert.deepEqual(Object.keys(plans), ["perfit"]);
  assert.deepEqual(plans.perfit, {
    lr: [{ importanceBeta: 0.5 }],
    own: [{ tiers: { low: 2, mid: 4, high: 8 } }],
  });
  assert.deepEqual(parsePlans('{"fedit":{"lr":[{}]}}', "p").fedit, { lr: [{}], own: [] });
  const refused: [string, RegExp][] = [
    ["{", /p is not JSON/],
    ["[]", /p must be an object/],
    ['{"fedx":{"lr":[{}]}}', /unknown method "fedx"/],
    ['{"__proto__":{"lr":[{}]}}', /unknown method "__proto__"/],
    ['{"fedit":[]}', /p\.fedit must be an object/],
    ['{"fedit":{"lr":[]}}', /p\.fedit\.lr must be a list of knobs, not empty/],
    ['{"fedit":{"own":[{}]}}', /p\.fedit\.lr must be a list/],
    ['{"fedit":{"lr":[{}],"extra":[]}}', /unknown stage "extra"/],
    ['{"fedit":{"lr":[{"lr":2}]}}', /p\.fedit\.lr\[0\]\.lr must be a number in \(0, 1\)/],
    [
      '{"fedit":{"lr":[{}],"own":[{"tiers":{"low":0}}]}}',
      /p\.fedit\.own\[0\]\.tiers tier low must be an integer/,
    ],
  ];
  for (const [text, re] of refused) assert.throws(() => parsePlans(text, "p"), re, text);
});
