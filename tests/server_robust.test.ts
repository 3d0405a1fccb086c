/**
 * Issue 12, "one client decides the aggregate": a per-run `maxSamples` cap, equal weighting, and
 * robust aggregation rules (clipped-mean, trimmed-mean, median). The math is pure (server/robust.ts)
 * and tested against its definitions here; the coordinator tests check that each rule reaches the
 * global adapter, that the held rules (trimmed-mean, median) survive a restart and a crash at
 * quorum, and that what they hold in KV is deleted once the round closes.
 */
import assert from "node:assert/strict";
import { Coordinator } from "../server/coordinator.ts";
import { InlineFolder } from "../server/folder.ts";
import { LIMITS, parseRunConfig, type RunConfig } from "../server/run_config.ts";
import { ApiError } from "../server/errors.ts";
import { K, type RoundRecord } from "../server/records.ts";
import {
  clipToNorm,
  combineHeld,
  type HeldUpdate,
  weightedMedian,
  weightedTrimmedMean,
} from "../server/robust.ts";
import { type DecodedUpdate, encodeUpdate, packMask, popcountBits } from "../runtime/client/wire.ts";
import { forEachBit } from "../runtime/kernels/bits.ts";
import { mulberry32 } from "../runtime/data/rng.ts";
import { ADMIN, fakeMask, isApiError, makeApp, runBody } from "./server_helpers.ts";
import { faultyKv, isClose, keyCount } from "./server_faults.ts";

const f64 = (xs: number[]) => Float64Array.from(xs);

/** An update at the mask `mask` (0/1 per position) with `value(p)` at each selected position. */
function update(
  run: string,
  round: number,
  mask: Uint8Array,
  value: (p: number) => number,
  samples: number,
  metrics: Record<string, number> = { loss: 1 },
): DecodedUpdate {
  const maskBits = packMask(mask);
  const values = new Float32Array(popcountBits(maskBits));
  let sumSq = 0;
  forEachBit(maskBits, (p, r) => {
    values[r] = value(p);
    sumSq += values[r] * values[r];
  });
  return { run, round, samples, metrics, maskBits, values, popcount: values.length, sumSq };
}

Deno.test("robust math: weighted trimmed mean and median follow their definitions (classic ones at equal weights)", () => {
  // Equal weights: the classic order statistics.
  assert.equal(weightedMedian(f64([5, 1, 3]), f64([1, 1, 1]), 3), 3);
  assert.equal(weightedMedian(f64([4, 1, 3, 2]), f64([1, 1, 1, 1]), 4), 2.5);
  assert.equal(weightedMedian(f64([7]), f64([1]), 1), 7);
  // Weighted: the value at W/2, the midpoint when W/2 falls between two holders.
  assert.equal(weightedMedian(f64([1, 2, 100]), f64([1, 1, 5]), 3), 100);
  assert.equal(weightedMedian(f64([1, 2, 100]), f64([3, 1, 4]), 3), 51);
  // Only the first `count` pairs count.
  assert.equal(weightedMedian(f64([3, 1, 99, 99]), f64([1, 1, 1, 1]), 2), 2);

  const xs = [8, 1, 6, 3, 5, 2, 7, 4];
  const ones = xs.map(() => 1);
  // trim 0.25 of 8 equal holders drops two at each end: mean of 3, 4, 5, 6.
  assert.equal(weightedTrimmedMean(f64(xs), f64(ones), 8, 0.25), 4.5);
  // trim 0 is the weighted mean.
  assert.equal(weightedTrimmedMean(f64([1, 2, 6]), f64([1, 2, 1]), 3, 0), 11 / 4);
  // A fractional trim keeps the straddling part: 0.1 of 8 = 0.8 of each extreme dropped.
  const frac = weightedTrimmedMean(f64(xs), f64(ones), 8, 0.1);
  assert.ok(Math.abs(frac - (0.2 * 1 + 2 + 3 + 4 + 5 + 6 + 7 + 0.2 * 8) / 6.4) < 1e-12, `${frac}`);
  // A heavy holder is trimmed by its weight: 10 of W = 13, trim 0.25 drops 3.25 from each end.
  const heavy = weightedTrimmedMean(f64([0, 0, 0, 9]), f64([1, 1, 1, 10]), 4, 0.25);
  assert.equal(heavy, 9, "the heavy holder is most of the kept weight");
  // Large holder counts take the index sort: same answers.
  const many = Array.from({ length: 201 }, (_, i) => (i * 37) % 201);
  assert.equal(weightedMedian(f64(many), f64(many.map(() => 1)), 201), 100);
  assert.equal(weightedTrimmedMean(f64(many), f64(many.map(() => 1)), 201, 0.4), 100);
  assert.throws(() => weightedTrimmedMean(f64([1]), f64([1]), 1, 0.5), RangeError);
});

Deno.test("robust math: combineHeld equals a per-position brute force over sparse holders, across blocks", () => {
  const rnd = mulberry32(7);
  const n = 4133; // not a multiple of 32
  const k = 300; // 32·k·blockWords > 2^20: several blocks
  const held: HeldUpdate[] = [];
  const masks: Uint8Array[] = [];
  for (let u = 0; u < k; u++) {
    const m = new Uint8Array(n).map(() => (rnd() < 0.3 ? 1 : 0));
    m[n - 1] = u % 2; // the last position of a partial word is held too
    const bits = packMask(m);
    const values = Float32Array.from({ length: popcountBits(bits) }, () => Math.fround(rnd() * 2 - 1));
    held.push({ bits, values, weight: 1 + Math.floor(rnd() * 5) });
    masks.push(m);
  }
  const rules = {
    median: weightedMedian,
    trim: (xs: Float64Array, ws: Float64Array, c: number) => weightedTrimmedMean(xs, ws, c, 0.2),
  };
  for (const [name, combine] of Object.entries(rules)) {
    const prev = Float32Array.from({ length: n }, (_, p) => p);
    const out = prev.slice();
    const covered = new Uint32Array(Math.ceil(n / 32));
    covered[0] = 1; // previously covered stays covered
    combineHeld(held, n, combine, out, covered);
    const cursors = new Array(k).fill(0);
    for (let p = 0; p < n; p++) {
      const xs: number[] = [];
      const ws: number[] = [];
      for (let u = 0; u < k; u++) {
        if (masks[u][p]) {
          xs.push(held[u].values[cursors[u]++]);
          ws.push(held[u].weight);
        }
      }
      const bit = (covered[p >>> 5] >>> (p & 31)) & 1;
      if (xs.length === 0) {
        assert.equal(out[p], prev[p], `${name}: position ${p} has no holder and keeps its value`);
        assert.equal(bit, p === 0 ? 1 : 0);
      } else {
        assert.equal(out[p], Math.fround(combine(f64(xs), f64(ws), xs.length)), `${name}: position ${p}`);
        assert.equal(bit, 1);
      }
    }
  }
  assert.throws(
    () =>
      combineHeld([{ ...held[0], weight: 0 }], n, weightedMedian, new Float32Array(n), new Uint32Array(130)),
    RangeError,
  );
});

Deno.test("robust math: clipToNorm scales to clipNorm and leaves a vector within it untouched", () => {
  const v = Float32Array.from([3, 4]);
  const clipped = clipToNorm(v, 5, 1);
  assert.notEqual(clipped, v);
  assert.deepEqual([...clipped], [Math.fround(0.6), Math.fround(0.8)]);
  assert.deepEqual([...v], [3, 4], "the input is not modified");
  assert.equal(clipToNorm(v, 5, 5), v);
  assert.equal(clipToNorm(v, 5, 50), v);
});

Deno.test("run config: maxSamples, weighting, aggregation and enrollment are explicit, validated, bounded", () => {
  const dflt = parseRunConfig(runBody("perfit"));
  assert.deepEqual(
    [dflt.maxSamples, dflt.weighting, dflt.aggregation, dflt.enrollment, dflt.trim, dflt.clipNorm],
    [1e9, "samples", "mean", "open", undefined, undefined],
  );
  const ok = parseRunConfig(
    runBody("fedit", { maxSamples: 1000, weighting: "equal", aggregation: "median" }),
  );
  assert.deepEqual([ok.maxSamples, ok.weighting, ok.aggregation], [1000, "equal", "median"]);
  assert.equal(parseRunConfig(runBody("perfit", { aggregation: "trimmed-mean", trim: 0.2 })).trim, 0.2);
  assert.equal(parseRunConfig(runBody("perfit", { aggregation: "clipped-mean", clipNorm: 2 })).clipNorm, 2);
  const bad: Record<string, unknown>[] = [
    { maxSamples: 0 },
    { maxSamples: 1e9 + 1 },
    { maxSamples: 1.5 },
    { weighting: "samples-squared" },
    { weighting: "__proto__" },
    { aggregation: "toString" },
    { aggregation: "krum" },
    { aggregation: "trimmed-mean" }, // trim is required
    { aggregation: "trimmed-mean", trim: 0.5 },
    { aggregation: "trimmed-mean", trim: 0 },
    { aggregation: "clipped-mean" }, // clipNorm is required
    { aggregation: "clipped-mean", clipNorm: 2e4 }, // above maxNorm: never clips
    { aggregation: "median", trim: 0.1 }, // a parameter of another rule
    { clipNorm: 1 },
    { enrollment: "closed" },
    { enrollment: "key" }, // no joinKey
    { enrollment: "key", joinKey: "short" },
    { joinKey: "a-key-without-key-enrollment" },
    // Held rounds are bounded: clientsPerRound × adapterSize ≤ 64M values.
    { aggregation: "median", clientsPerRound: 65, quorum: 65, adapterSize: 1 << 20, budget: 1000 },
  ];
  for (const over of bad) {
    assert.throws(
      () => parseRunConfig(runBody("perfit", over)),
      isApiError("invalid_config"),
      JSON.stringify(over),
    );
  }
  assert.equal(
    parseRunConfig(
      runBody("perfit", { aggregation: "median", clientsPerRound: 64, quorum: 64, adapterSize: 1 << 20 }),
    )
      .clientsPerRound * (1 << 20),
    LIMITS.maxHeldValues,
  );
  // The mean streams: no bound on what a round holds.
  parseRunConfig(runBody("perfit", { clientsPerRound: 65, quorum: 65, adapterSize: 1 << 20 }));
  assert.throws(
    () => parseRunConfig(runBody("local", { aggregation: "median" })),
    isApiError("invalid_config"),
  );
});

/** Runs one FedIT round (N positions) of `uploads` through a coordinator and returns client 0's slice. */
async function oneRound(
  over: Record<string, unknown>,
  uploads: { value: number; samples: number; metrics?: Record<string, number> }[],
  n = 64,
): Promise<{ slice: Float32Array; round: RoundRecord; errors: (string | null)[] }> {
  const kv = await Deno.openKv(":memory:");
  let t = 1_000_000;
  const coord = new Coordinator(kv, () => t, new InlineFolder());
  try {
    const k = uploads.length;
    const run = await coord.createRun(
      parseRunConfig(runBody("fedit", { adapterSize: n, clientsPerRound: k, quorum: 1, ...over })),
    );
    const ids: string[] = [];
    for (let i = 0; i < k; i++) ids.push((await coord.join(run.id, {})).id);
    const errors: (string | null)[] = [];
    for (let i = 0; i < k; i++) {
      const { value, samples, metrics } = uploads[i];
      const u = update(run.id, 1, new Uint8Array(n).fill(1), () => value, samples, metrics);
      try {
        await coord.upload(run.id, ids[i], 1, u, `u${i}`);
        errors.push(null);
      } catch (e) {
        if (!(e instanceof ApiError)) throw e;
        errors.push(e.code);
      }
    }
    // A refused upload leaves its seat open: the round closes at its deadline with what it has.
    await coord.settled();
    t += 3_600_000;
    await coord.getRun(run.id);
    await coord.settled();
    assert.equal((await coord.getRun(run.id)).run.globalRound, 1);
    const s = await coord.slice(run.id, ids[0]);
    return { slice: s.values, round: (await kv.get<RoundRecord>(K.round(run.id, 1))).value!, errors };
  } finally {
    await coord.close();
    kv.close();
  }
}

Deno.test("one client decides the aggregate (issue 12): a 1e9-samples claim at 2.8 against two honest clients at 0.01", async () => {
  const honest = { value: 0.01, samples: 500, metrics: { loss: 1 } };
  const attacker = { value: 2.8, samples: 1e9, metrics: { loss: 100 } };
  const three = [honest, honest, attacker];
  const near = (a: number, b: number, tol = 1e-6) => Math.abs(a - b) <= tol;
  const all = (s: Float32Array, v: number, tol?: number) =>
    s.length === 64 && s.every((x) => near(x, v, tol));

  // As on main: the sample-weighted mean is the attacker's value.
  const mean = await oneRound({}, three);
  assert.ok(all(mean.slice, 2.799997), `mean/samples: ${mean.slice[0]}`);

  // maxSamples refuses the claim (422 too_many_samples); the honest clients decide.
  const capped = await oneRound({ maxSamples: 10_000 }, three);
  assert.deepEqual(capped.errors, [null, null, "too_many_samples"]);
  assert.ok(all(capped.slice, 0.01), `maxSamples: ${capped.slice[0]}`);
  assert.deepEqual([capped.round.accepted, capped.round.summary?.clients], [2, 2]);

  // Equal weights: the attacker is one of three. The round's metrics are weighed alike.
  const equal = await oneRound({ weighting: "equal" }, three);
  assert.ok(all(equal.slice, (0.01 + 0.01 + 2.8) / 3), `equal: ${equal.slice[0]}`);
  assert.ok(near(equal.round.summary!.metrics.loss, 34), `equal loss: ${equal.round.summary!.metrics.loss}`);
  assert.equal(equal.round.summary!.samples, 1e9 + 1000, "the reported samples are still summed");

  // Clipped-mean: the attacker's update (norm 2.8·8 = 22.4) scaled to clipNorm 0.16 (0.02 per position).
  const clipped = await oneRound({ weighting: "equal", aggregation: "clipped-mean", clipNorm: 0.16 }, three);
  assert.ok(all(clipped.slice, (0.01 + 0.01 + 0.02) / 3), `clipped: ${clipped.slice[0]}`);

  // Median and trimmed mean over the three holders: the attacker's value is never chosen.
  const median = await oneRound({ weighting: "equal", aggregation: "median" }, three);
  assert.ok(all(median.slice, 0.01), `median: ${median.slice[0]}`);
  const trimmed = await oneRound({ weighting: "equal", aggregation: "trimmed-mean", trim: 0.34 }, three);
  assert.ok(all(trimmed.slice, 0.01), `trimmed: ${trimmed.slice[0]}`);
  // With samples weighting the median follows the weight: the claim must be capped too.
  const medianSamples = await oneRound({ aggregation: "median" }, three);
  assert.ok(all(medianSamples.slice, 2.8), `median/samples: ${medianSamples.slice[0]}`);
});

Deno.test("maxSamples over HTTP: an upload above it is answered 422 too_many_samples and changes nothing", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const res = await app.request("/v1/runs", {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
      body: JSON.stringify(runBody("perfit", { maxSamples: 1000 })),
    });
    assert.equal(res.status, 201);
    const run = (await res.json()).run;
    assert.deepEqual(
      [run.config.maxSamples, run.config.weighting, run.config.aggregation, run.config.enrollment],
      [1000, "samples", "mean", "open"],
    );
    const j = await (await app.request(`/v1/runs/${run.id}/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    })).json();
    const send = (samples: number) =>
      app.request(`/v1/runs/${run.id}/clients/${j.clientId}/rounds/1/update`, {
        method: "POST",
        headers: { authorization: `Bearer ${j.token}`, "content-type": "application/octet-stream" },
        body: encodeUpdate({
          run: run.id,
          round: 1,
          samples,
          values: new Float32Array(1000).fill(0.01),
          mask: fakeMask(0, 1000, 300, false),
          metrics: { loss: 1 },
        }) as Uint8Array<ArrayBuffer>,
      });
    await app.coordinator.settled();
    const before = await keyCount(kv);
    const refused = await send(1001);
    assert.equal(refused.status, 422);
    assert.equal((await refused.json()).error.code, "too_many_samples");
    await app.coordinator.settled();
    assert.equal(await keyCount(kv), before, "a refused upload writes nothing");
    assert.equal((await send(1000)).status, 201);
  } finally {
    await app.close();
    kv.close();
  }
});

/** Four clients' round-1 updates of an N = 1000 run: PerFIT masks (stored, sparse) or FedIT (dense). */
function fourUpdates(run: string, method: "perfit" | "fedit"): DecodedUpdate[] {
  return [0, 1, 2, 3].map((i) => {
    const mask = fakeMask(i, 1000, 300, method === "fedit");
    return update(run, 1, mask, (p) => Math.fround(0.01 * Math.sin(i * 5 + p) + (i === 3 ? 3 : 0)), 10 + i);
  });
}

/** The global adapter of a run whose round 1 closed (values, covered), read from KV. */
async function globalOf(kv: Deno.Kv, runId: string): Promise<{ v: Float32Array; c: Uint32Array }> {
  const run = (await kv.get<{ globalGen: string }>(K.run(runId))).value!;
  const read = async (part: "v" | "c", bytes: number) => {
    const out = new Uint8Array(bytes);
    for await (const e of kv.list<Uint8Array>({ prefix: K.global(runId, run.globalGen, part) })) {
      out.set(e.value, (e.key.at(-1) as number) * 60 * 1024);
    }
    return out;
  };
  return {
    v: new Float32Array((await read("v", 4000)).buffer),
    c: new Uint32Array((await read("c", Math.ceil(1000 / 32) * 4)).buffer),
  };
}

/** A first round's global adapter by the rule's definition (f64; held rules: their combine). */
function expectedRound(cfg: RunConfig, ups: DecodedUpdate[]): { v: Float32Array; c: Uint32Array } {
  const w = (u: DecodedUpdate) => (cfg.weighting === "equal" ? 1 : u.samples);
  const v = new Float32Array(1000);
  const c = new Uint32Array(Math.ceil(1000 / 32));
  if (cfg.aggregation === "median" || cfg.aggregation === "trimmed-mean") {
    const held = ups.map((u) => ({ bits: u.maskBits, values: u.values, weight: w(u) }));
    const combine = cfg.aggregation === "median"
      ? weightedMedian
      : (xs: Float64Array, ws: Float64Array, k: number) => weightedTrimmedMean(xs, ws, k, cfg.trim!);
    combineHeld(held, 1000, combine, v, c);
    return { v, c };
  }
  const sum = new Float64Array(1000);
  const weight = new Float64Array(1000);
  for (const u of ups) {
    const vals = cfg.aggregation === "clipped-mean"
      ? clipToNorm(u.values, Math.sqrt(u.sumSq), cfg.clipNorm!)
      : u.values;
    forEachBit(u.maskBits, (p, r) => {
      sum[p] += w(u) * vals[r];
      weight[p] += w(u);
    });
  }
  for (let p = 0; p < 1000; p++) {
    if (weight[p] > 0) {
      v[p] = sum[p] / weight[p];
      c[p >>> 5] |= 1 << (p & 31);
    }
  }
  return { v, c };
}

Deno.test("robust rules are restart safe: median, trimmed-mean (held) and clipped-mean rounds crash at quorum, reload from KV and close to the rule's adapter; nothing stays held", async () => {
  const cases: [string, Record<string, unknown>][] = [
    ["perfit", { aggregation: "median" }],
    ["fedit", { aggregation: "trimmed-mean", trim: 0.25, weighting: "equal" }],
    ["perfit", { aggregation: "clipped-mean", clipNorm: 0.05 }],
  ];
  for (const [method, over] of cases) {
    const label = `${method} ${JSON.stringify(over)}`;
    const body = runBody(method as "perfit", { budget: 300, clientsPerRound: 4, quorum: 4, ...over });
    const cfg: RunConfig = parseRunConfig(body);

    // Reference: one coordinator, no restart.
    const refKv = await Deno.openKv(":memory:");
    const ref = new Coordinator(refKv, Date.now, new InlineFolder());
    const refRun = await ref.createRun(cfg);
    const refIds: string[] = [];
    for (let i = 0; i < 4; i++) refIds.push((await ref.join(refRun.id, {})).id);
    const refUpdates = fourUpdates(refRun.id, method as "perfit");
    // (before the uploads: the coordinator drops an update's values once it holds or folds them)
    const expected = expectedRound(cfg, refUpdates);
    for (let i = 0; i < 4; i++) await ref.upload(refRun.id, refIds[i], 1, refUpdates[i], `u${i}`);
    await ref.settled();
    const want = await globalOf(refKv, refRun.id);
    await ref.close();
    refKv.close();
    // …which is the rule's own math over the four updates.
    assert.deepEqual(want.c, expected.c, `${label}: covered positions`);
    for (let p = 0; p < 1000; p++) {
      assert.ok(
        Math.abs(want.v[p] - expected.v[p]) <= 1e-7,
        `${label}: position ${p}: ${want.v[p]} vs ${expected.v[p]}`,
      );
    }

    // Two uploads, a restart, two more uploads of which the last one's close is lost (a crash at
    // quorum): a third instance loads the run and closes the full round from what KV holds.
    const dir = await Deno.makeTempDir({ prefix: "perfit-held-" });
    const path = `${dir}/kv`;
    const kvA = await Deno.openKv(path);
    const a = new Coordinator(kvA, Date.now, new InlineFolder());
    const run = await a.createRun(cfg);
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await a.join(run.id, {})).id);
    const ups = fourUpdates(run.id, method as "perfit");
    for (let i = 0; i < 2; i++) {
      assert.equal((await a.upload(run.id, ids[i], 1, ups[i], `u${i}`)).status, "accepted");
    }
    await a.close();
    kvA.close();

    const rawB = await Deno.openKv(path);
    const { kv: kvB, faults } = faultyKv(rawB);
    const b = new Coordinator(kvB, Date.now, new InlineFolder());
    faults.fail = isClose;
    for (let i = 2; i < 4; i++) {
      assert.equal((await b.upload(run.id, ids[i], 1, ups[i], `u${i}`)).status, "accepted");
    }
    await b.settled();
    assert.equal(faults.failed, 1, `${label}: the close was lost`);
    await b.close();
    rawB.close();

    const kvC = await Deno.openKv(path);
    const c = new Coordinator(kvC, Date.now, new InlineFolder());
    try {
      await c.getRun(run.id);
      await c.settled();
      const r1 = (await kvC.get<RoundRecord>(K.round(run.id, 1))).value!;
      assert.deepEqual([r1.status, r1.accepted], ["closed", 4], label);
      const got = await globalOf(kvC, run.id);
      assert.deepEqual(got.c, want.c, `${label}: covered`);
      // Each instance summed its own uploads (a shard): the merged sum may round differently.
      for (let p = 0; p < want.v.length; p++) {
        assert.ok(
          Math.abs(got.v[p] - want.v[p]) <= 1e-7,
          `${label}: the restarted run closes to the same adapter (position ${p}: ${got.v[p]} vs ${
            want.v[p]
          })`,
        );
      }
      assert.equal(await keyCount(kvC, ["held", run.id]), 0, `${label}: nothing held after the close`);
      assert.equal(await keyCount(kvC, ["acc", run.id]), 0, `${label}: no accumulator left`);
    } finally {
      await c.close();
      kvC.close();
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test("held aggregations: the load sweep deletes held values a crash left under a closed round", async () => {
  const kv = await Deno.openKv(":memory:");
  const a = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const run = await a.createRun(
      parseRunConfig(runBody("perfit", { aggregation: "median", clientsPerRound: 1, quorum: 1 })),
    );
    const c = (await a.join(run.id, {})).id;
    await a.upload(run.id, c, 1, update(run.id, 1, fakeMask(0, 1000, 300, false), () => 0.5, 3), "u0");
    await a.settled();
    assert.equal((await a.getRun(run.id)).run.round, 2);
    // What a close whose clean-up was lost leaves behind, and an orphan of the open round.
    await kv.set(["held", run.id, 1, c, "u0", 0], new Uint8Array(8));
    await kv.set(["held", run.id, 2, c, "stale", 0], new Uint8Array(8));
    const b = new Coordinator(kv, Date.now, new InlineFolder());
    await b.getRun(run.id);
    await b.settled();
    await b.close();
    assert.equal(await keyCount(kv, ["held", run.id, 1]), 0, "the closed round's held values are swept");
    assert.equal(await keyCount(kv, ["held", run.id, 2]), 1, "the open round's are left alone");
  } finally {
    await a.close();
    kv.close();
  }
});
