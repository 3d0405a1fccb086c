import assert from "node:assert/strict";
import {
  cacheKey,
  commandLine,
  DEFAULT_RESULTS,
  geoMean,
  meanSd,
  staleDownload,
  stdDev,
} from "../bench/results_table.ts";
import { SLICE_REVISION } from "../runtime/client/wire.ts";

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

Deno.test("results table: mean ± sd over seeds, and the geometric mean that one hard client moves less", () => {
  const near = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} vs ${b}`);
  near(stdDev([2, 4, 4, 4, 5, 5, 7, 9]), Math.sqrt(32 / 7));
  assert.equal(stdDev([3]), 0);
  near(geoMean([1, 100]), 10);
  near(geoMean([2, 8, 4]), 4);
  // One hard client: the arithmetic mean moves by 31.5, the geometric one by 19.3.
  const easy = [60, 62, 64, 66];
  const hard = [60, 62, 64, 192];
  const arith = (xs: number[]) => xs.reduce((a, b) => a + b) / xs.length;
  assert.ok(geoMean(hard) - geoMean(easy) < 0.7 * (arith(hard) - arith(easy)));
  assert.throws(() => geoMean([1, 0]), RangeError);
  assert.throws(() => geoMean([]), RangeError);
  assert.equal(meanSd([71.5]), "71.500");
  assert.equal(meanSd([1, 3]), "2.000 ± 1.414");
  assert.equal(DEFAULT_RESULTS.seeds.length, 3);
});

Deno.test("results table: downloads measured on an older slice body are marked, today's are not", () => {
  assert.equal(staleDownload([{ sliceRevision: SLICE_REVISION }]), false);
  assert.equal(staleDownload([{}]), true, "a run cached before the revision was recorded");
  assert.equal(
    staleDownload([{ sliceRevision: SLICE_REVISION }, { sliceRevision: SLICE_REVISION - 1 }]),
    true,
  );
  assert.equal(staleDownload([]), false);
});
