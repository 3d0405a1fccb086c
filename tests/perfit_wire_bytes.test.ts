/**
 * What a PerFIT upload costs on the wire (runtime/client/wire.ts) against FedIT's at the same budget,
 * and the mask codes' edge cases. The HTTP-level measurement is in wire_mask_ref.test.ts.
 */
import assert from "node:assert/strict";
import {
  decodeUpdate,
  encodeRoundUpdate,
  encodeUpdate,
  isMaskRef,
  maskFormOf,
  unpackMask,
} from "../runtime/client/wire.ts";
import { maskRef } from "../runtime/kernels/bits.ts";
import { decodeMask, encodeMask, encodeMaskAs, MASK_CODE_MODES } from "../runtime/kernels/mask_code.ts";
import { scalarKernels } from "../runtime/kernels/mod.ts";
import { makePrunePlan, pruneToBudget, rankLayout } from "../runtime/perfit/mod.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";
import { mulberry32 } from "../runtime/data/rng.ts";

Deno.test("mask codes: every mode round-trips empty, dense-tailed and single-bit masks", () => {
  const r = mulberry32(1);
  const masks = [
    new Uint8Array(40),
    Uint8Array.from({ length: 40 }, (_, i) => (i > 30 ? 1 : 0)),
    Uint8Array.from({ length: 33 }, (_, i) => (i === 32 ? 1 : 0)),
    new Uint8Array(64).fill(1),
    Uint8Array.from({ length: 1000 }, () => (r() < 0.3 ? 1 : 0)),
  ];
  for (const m of masks) {
    const count = m.reduce((s, v) => s + v, 0);
    for (const mode of MASK_CODE_MODES) {
      const code = encodeMaskAs(m, mode, scalarKernels);
      assert.deepEqual(
        decodeMask(code, m.length, count, scalarKernels),
        m,
        `${mode} of ${m.length}/${count}`,
      );
      // A count the code does not hold is refused, or (a code that is a prefix of itself, such as
      // all-zero gaps) gives a mask of exactly that count: never a mask that disagrees with it.
      if (count > 0) {
        try {
          assert.equal(
            scalarKernels.popcount(decodeMask(code, m.length, count - 1, scalarKernels)),
            count - 1,
          );
        } catch (e) {
          assert.ok(!(e instanceof assert.AssertionError), `${mode}: ${e}`);
        }
      }
    }
  }
});

Deno.test("mask codes: encodeMask picks what the search over every mode picks, though it skips modes that cannot win", () => {
  const r = mulberry32(7);
  const masks: Uint8Array[] = [new Uint8Array(0), new Uint8Array(50), new Uint8Array(50).fill(1)];
  for (const p of [0.001, 0.02, 0.3, 0.7, 0.99]) {
    masks.push(Uint8Array.from({ length: 4000 }, () => (r() < p ? 1 : 0)));
  }
  // Runs (rank components of rows), repeated runs, and runs with holes.
  masks.push(Uint8Array.from({ length: 8192 }, (_, i) => ((i >> 6) % 4 === 0 ? 1 : 0)));
  masks.push(Uint8Array.from({ length: 8192 }, (_, i) => ((i >> 6) % 4 === 0 && r() < 0.8 ? 1 : 0)));
  masks.push(Uint8Array.from({ length: 8192 }, (_, i) => (i % 97 < 3 + (i >> 10) ? 1 : 0)));
  const modesWon = new Set<string>();
  for (const m of masks) {
    const all = MASK_CODE_MODES.map((mode) => encodeMaskAs(m, mode, scalarKernels));
    const want = all.reduce((a, b) => (b.bytes.length < a.bytes.length ? b : a));
    const got = encodeMask(m, scalarKernels);
    assert.deepEqual([got.mode, got.k1, got.k2, got.k3, got.bytes], [
      want.mode,
      want.k1,
      want.k2,
      want.k3,
      want.bytes,
    ]);
    modesWon.add(got.mode);
  }
  assert.ok(modesWon.size >= 3, `masks won by ${[...modesWon]}`);
});

Deno.test("wire bytes: after the search a PerFIT upload is within 1.01x of FedIT's at the same budget", async () => {
  const cfg = tinyConfig({
    numLayers: 2,
    hiddenSize: 64,
    intermediateSize: 128,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
  });
  const base = adapterLayout(cfg, { rank: 4, alpha: 8, targets: ["q", "v"] });
  const B = base.size;
  const big = rankLayout(base, 16);
  const r = mulberry32(3);
  const imp = Float32Array.from({ length: big.size }, () => r());
  const mask = pruneToBudget(imp, makePrunePlan(big, 4), 3);
  const values = Float32Array.from({ length: big.size }, () => r());
  const head = { run: "run_abcdefghijkl", round: 2, samples: 40, metrics: { loss: 2.5 } };
  const search = await encodeRoundUpdate({ ...head, values, mask }, undefined);
  const steady = await encodeRoundUpdate({ ...head, values, mask }, search.maskRef);
  const ones = new Uint8Array(B).fill(1);
  const feditValues = values.subarray(0, B);
  const fedit1 = await encodeRoundUpdate({ ...head, values: feditValues, mask: ones }, undefined);
  const fedit = await encodeRoundUpdate({ ...head, values: feditValues, mask: ones }, fedit1.maskRef);
  assert.equal(maskFormOf(steady.body), "ref");
  assert.equal(maskFormOf(fedit.body), "ref");
  assert.equal(maskFormOf(fedit1.body), "rice-runs");
  assert.ok(steady.body.length <= 1.01 * fedit.body.length, `${steady.body.length} vs ${fedit.body.length}`);
  assert.ok(
    fedit1.body.length <= fedit.body.length + 32,
    `FedIT's all-ones mask costs ${fedit1.body.length - fedit.body.length} B`,
  );
  // A random quarter-density mask costs less than its bitmask (N/8 bytes = B/2).
  assert.ok(search.body.length < fedit.body.length + big.size / 8, `${search.body.length}`);
  const dec = decodeUpdate(search.body, big.size);
  assert.ok(!isMaskRef(dec));
  assert.deepEqual(unpackMask(dec.maskBits, big.size), mask);
  assert.equal(search.maskRef, await maskRef(dec.maskBits));
  // Clustered masks (whole rows) cost far less than a bitmask through run-length coding.
  const rows = new Uint8Array(big.size);
  for (let i = 0; i < big.size; i += 512) rows.fill(1, i, i + 128);
  const clustered = await encodeRoundUpdate({ ...head, values, mask: rows }, undefined);
  const clusteredRef = await encodeRoundUpdate({ ...head, values, mask: rows }, clustered.maskRef);
  // Rows of one period: a single run pair repeated.
  assert.equal(maskFormOf(clustered.body), "rice-runs-rle");
  assert.ok(clustered.body.length - clusteredRef.body.length < big.size / 64);
});

Deno.test("wire: metrics outside the rule are refused when encoding, so a client fails before it sends", () => {
  const base = {
    run: "r",
    round: 1,
    samples: 1,
    values: new Float32Array(4),
    mask: new Uint8Array(4).fill(1),
  };
  const nine = Object.fromEntries(Array.from({ length: 9 }, (_, k) => [`m${k}`, k]));
  assert.throws(() => encodeUpdate({ ...base, metrics: nine }), /at most 8 metrics/);
  assert.throws(() => encodeUpdate({ ...base, metrics: { "9lives": 1 } }), /metric names must match/);
  assert.throws(() => encodeUpdate({ ...base, metrics: { loss: NaN } }), /finite/);
  assert.ok(encodeUpdate({ ...base, metrics: { loss: 1, ppl: 2 } }).length > 0);
});

Deno.test("bench/wire_slice.ts: --pairs must be a whole number ≥ 1", async () => {
  const { run } = await import("../bench/wire_slice.ts");
  for (const bad of [0, -1, 2.5, NaN]) {
    assert.throws(() => run(bad), (e) => e instanceof RangeError && /--pairs/.test(e.message), String(bad));
  }
});
