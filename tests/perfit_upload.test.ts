import assert from "node:assert/strict";
import {
  decodeUpload,
  encodeUpload,
  feditBytes,
  HEADER_BYTES,
  maskHash,
  type MaskMode,
  UploadError,
} from "../runtime/perfit/upload.ts";
import { makePrunePlan, pruneToBudget, rankLayout } from "../runtime/perfit/mod.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";
import { mulberry32 } from "../runtime/data/rng.ts";

function sample(n: number, p: number, seed: number) {
  const r = mulberry32(seed);
  const mask = Uint8Array.from({ length: n }, () => (r() < p ? 1 : 0));
  const values = Float32Array.from({ length: n }, () => r() * 2 - 1);
  return { mask, values };
}

Deno.test("perfit: upload round-trips in every mask mode", () => {
  const { mask, values } = sample(1000, 0.3, 1);
  for (const mode of ["bits", "deltas", "rice-gaps", "rice-runs"] as MaskMode[]) {
    const bytes = encodeUpload(values, mask, { mode });
    const d = decodeUpload(bytes, { n: 1000 });
    assert.equal(d.mode, mode);
    assert.deepEqual(d.mask, mask);
    for (let i = 0; i < 1000; i++) assert.equal(d.values[i], mask[i] ? values[i] : 0);
    assert.equal(d.totalBytes, bytes.length);
  }
  const ref = encodeUpload(values, mask, { storedMaskHash: maskHash(mask) });
  assert.equal(ref.length, HEADER_BYTES + 4 * mask.reduce((s, v) => s + v, 0));
  const d = decodeUpload(ref, { storedMask: mask });
  assert.equal(d.mode, "ref");
  assert.deepEqual(d.mask, mask);
  const all = new Uint8Array(50).fill(1);
  assert.equal(decodeUpload(encodeUpload(new Float32Array(50), all)).mode, "all");
  // Edge cases: empty mask, mask ending in ones, a single one at the end.
  for (
    const m of [
      new Uint8Array(40),
      Uint8Array.from({ length: 40 }, (_, i) => (i > 30 ? 1 : 0)),
      Uint8Array.from({ length: 33 }, (_, i) => (i === 32 ? 1 : 0)),
    ]
  ) {
    for (const mode of ["bits", "deltas", "rice-gaps", "rice-runs"] as MaskMode[]) {
      assert.deepEqual(decodeUpload(encodeUpload(new Float32Array(m.length), m, { mode })).mask, m, mode);
    }
  }
});

Deno.test("perfit: steady-state PerFIT upload is within 5% of FedIT; search round cost is bounded", () => {
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
  const search = encodeUpload(values, mask);
  const steady = encodeUpload(values, mask, { storedMaskHash: maskHash(mask) });
  assert.ok(steady.length <= 1.05 * feditBytes(B), `${steady.length} vs ${feditBytes(B)}`);
  // A random quarter-density mask costs at most its bitmask (N/8 bytes = B/2).
  assert.ok(search.length <= feditBytes(B) + HEADER_BYTES + big.size / 8, `${search.length}`);
  // Clustered masks (whole rows) cost far less than a bitmask through run-length coding.
  const rows = new Uint8Array(big.size);
  for (let i = 0; i < big.size; i += 512) rows.fill(1, i, i + 128);
  const clustered = encodeUpload(values, rows);
  assert.equal(decodeUpload(clustered).mode, "rice-runs");
  assert.ok(clustered.length - HEADER_BYTES - 4 * rows.reduce((s, v) => s + v, 0) < big.size / 64);
});

Deno.test("perfit: malformed uploads are rejected with clear errors", () => {
  const { mask, values } = sample(100, 0.5, 2);
  const bytes = encodeUpload(values, mask, { mode: "bits" });
  assert.throws(() => decodeUpload(bytes.subarray(0, 10)), /shorter than the header/);
  assert.throws(() => decodeUpload(bytes.subarray(0, bytes.length - 1)), /header implies/);
  const bad = bytes.slice();
  bad[0] = 0;
  assert.throws(() => decodeUpload(bad), /bad magic/);
  assert.throws(() => decodeUpload(bytes, { n: 99 }), /expected 99/);
  const flipped = bytes.slice();
  flipped[HEADER_BYTES] ^= 1;
  assert.throws(() => decodeUpload(flipped), UploadError);
  const nan = values.slice();
  nan[mask.indexOf(1)] = NaN;
  assert.throws(() => decodeUpload(encodeUpload(nan, mask)), /NaN/);
  const ref = encodeUpload(values, mask, { storedMaskHash: maskHash(mask) });
  assert.throws(() => decodeUpload(ref), /resend the mask/);
  const other = mask.slice();
  other[0] ^= 1;
  assert.throws(() => decodeUpload(ref, { storedMask: other }), /different mask/);
});
