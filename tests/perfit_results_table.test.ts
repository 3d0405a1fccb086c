import assert from "node:assert/strict";
import { cacheKey, commandLine, DEFAULT_RESULTS } from "../bench/results_table.ts";

Deno.test("results table: the default options print as the bare command", () => {
  assert.equal(commandLine(DEFAULT_RESULTS), "deno task results");
});

Deno.test("results table: changed options appear as flags in the command", () => {
  const cmd = commandLine({ ...DEFAULT_RESULTS, localSteps: DEFAULT_RESULTS.localSteps + 5, seeds: [0, 1] });
  assert.match(cmd, new RegExp(`--local-steps ${DEFAULT_RESULTS.localSteps + 5}`));
  assert.match(cmd, /--seeds 0,1/);
  assert.doesNotMatch(cmd, /--rounds/);
});

Deno.test("results table: cache keys separate methods, seeds and every result-changing setting", () => {
  const base = cacheKey(DEFAULT_RESULTS, "perfit", 0);
  assert.equal(cacheKey({ ...DEFAULT_RESULTS }, "perfit", 0), base);
  assert.notEqual(cacheKey(DEFAULT_RESULTS, "fedit", 0), base);
  assert.notEqual(cacheKey(DEFAULT_RESULTS, "perfit", 1), base);
  assert.notEqual(cacheKey({ ...DEFAULT_RESULTS, lr: DEFAULT_RESULTS.lr * 2 }, "perfit", 0), base);
  assert.notEqual(cacheKey({ ...DEFAULT_RESULTS, maxLen: DEFAULT_RESULTS.maxLen + 1 }, "perfit", 0), base);
  assert.notEqual(cacheKey({ ...DEFAULT_RESULTS, targets: ["q", "v"] }, "perfit", 0), base);
  // Logging and the cache folder itself do not change results.
  assert.equal(cacheKey({ ...DEFAULT_RESULTS, log: () => {}, cacheDir: "x" }, "perfit", 0), base);
});
