/** The methods as strategy objects: one registry, refusing unknown names, and each method's plan. */
import assert from "node:assert/strict";
import {
  DEPLOYED_METHODS,
  METHODS,
  STRATEGIES,
  strategyFor,
  weightedMetrics,
} from "../runtime/federation/strategies.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { ApiError } from "../server/errors.ts";
import { runBody } from "./server_helpers.ts";

Deno.test("strategies: one object per method; unknown names (and prototype keys) are refused", () => {
  assert.deepEqual(METHODS, [
    "perfit",
    "fedit",
    "local",
    "base",
    "perfit-random-mask",
    "fedsa",
    "ffa",
    "feddpa",
    "perfit-sa",
    "perfit-mix",
    "perfit-own",
    "perfit-e1",
    "hetlora",
    "flora",
    "flora-own",
    "flora-mix",
    "perfit-stack",
  ]);
  // Everything but the frozen base is served: the simulation runs each method through the coordinator.
  assert.deepEqual(DEPLOYED_METHODS, [
    "perfit",
    "fedit",
    "local",
    "perfit-random-mask",
    "fedsa",
    "ffa",
    "feddpa",
    "perfit-sa",
    "perfit-mix",
    "perfit-own",
    "perfit-e1",
    "hetlora",
    "flora",
    "flora-own",
    "flora-mix",
    "perfit-stack",
  ]);
  for (const m of METHODS) assert.equal(strategyFor(m).name, m);
  for (const bad of ["", "FedIT", "__proto__", "constructor", "toString"]) {
    assert.throws(() => strategyFor(bad), RangeError, bad);
  }
  assert.throws(
    () => parseRunConfig({ ...runBody("perfit"), method: "base" }),
    (e) => e instanceof ApiError && e.status === 422 && /perfit, fedit, local/.test(e.message),
  );
});

Deno.test("strategies: what a sampled client does per method and round", () => {
  const plans = (m: string, every: number) =>
    [1, 2, 3, 4, 5].map((r) => strategyFor(m).configure(r, r === 1, every, 40));
  assert.deepEqual(plans("perfit", 0).map((p) => p.search), [true, false, false, false, false]);
  assert.deepEqual(plans("perfit", 2).map((p) => p.search), [true, false, true, false, true]);
  assert.deepEqual(plans("perfit-sa", 0), plans("perfit", 0));
  assert.deepEqual(plans("perfit-mix", 0), plans("perfit", 0));
  assert.deepEqual(plans("perfit-own", 2), plans("perfit", 2));
  assert.deepEqual(METHODS.filter((m) => STRATEGIES[m].ownWeighted), [
    "perfit-own",
    "flora-own",
    "perfit-stack",
  ]);
  // perfit-stack searches every round (its LoRA is fresh every round), in its slot.
  assert.deepEqual(
    plans("perfit-stack", 0).map((p) => [p.search, p.slot]),
    [1, 2, 3, 4, 5].map(() => [true, 40]),
  );
  assert.deepEqual(plans("flora-own", 0), plans("flora", 0));
  assert.deepEqual(plans("flora-mix", 0), plans("flora", 0));
  assert.deepEqual(METHODS.filter((m) => STRATEGIES[m].mixes), ["perfit-mix", "flora-mix"]);
  assert.deepEqual(METHODS.filter((m) => STRATEGIES[m].shares === "A"), ["fedsa", "perfit-sa"]);
  assert.deepEqual(plans("perfit-random-mask", 0).map((p) => [p.search, p.randomMask]), [
    [false, true],
    [false, false],
    [false, false],
    [false, false],
    [false, false],
  ]);
  assert.deepEqual(plans("perfit-random-mask", 2)[2], { search: true, randomMask: false });
  assert.equal(plans("flora", 0)[0].slot, 40);
  for (const m of ["fedit", "local", "base", "fedsa", "ffa", "hetlora", "flora"]) {
    assert.ok(plans(m, 1).every((p) => !p.search && !p.randomMask), m);
  }
  // The PerFIT family, HetLoRA and FLoRA expand by tier; only the PerFIT family prunes back to the
  // budget; only FedIT insists on dense masks; HetLoRA and FLoRA have folds of their own.
  assert.deepEqual(METHODS.filter((m) => STRATEGIES[m].expands), [
    "perfit",
    "perfit-random-mask",
    "perfit-sa",
    "perfit-mix",
    "perfit-own",
    "hetlora",
    "flora",
    "flora-own",
    "flora-mix",
    "perfit-stack",
  ]);
  assert.deepEqual(METHODS.filter((m) => STRATEGIES[m].prunes), [
    "perfit",
    "perfit-random-mask",
    "perfit-sa",
    "perfit-mix",
    "perfit-own",
    "perfit-e1",
    "perfit-stack",
  ]);
  assert.deepEqual(METHODS.filter((m) => STRATEGIES[m].aggregation.name !== "holders"), [
    "hetlora",
    "flora",
    "flora-own",
    "flora-mix",
    "perfit-stack",
  ]);
  assert.deepEqual(METHODS.filter((m) => STRATEGIES[m].denseMask), ["fedit"]);
  assert.deepEqual(METHODS.filter((m) => !STRATEGIES[m].aggregates), ["local", "base"]);
});

Deno.test("strategies: round metrics are sample-weighted means of what was reported", () => {
  const m = weightedMetrics([
    { samples: 1, metrics: { loss: 4, ppl: 10 } },
    { samples: 3, metrics: { loss: 2 } },
  ]);
  assert.deepEqual(m, { loss: (4 + 3 * 2) / 4, ppl: 10 });
  assert.deepEqual(weightedMetrics([]), {});
});
