/**
 * The parameter-wise aggregation as the coordinator runs it (server/aggregate.ts): each position is
 * the sample-weighted mean over the uploads whose mask holds it; a client's slice is that mean at
 * its own positions. FedIT is the case of all-ones masks.
 */
import assert from "node:assert/strict";
import { finalizeInto, foldSparse } from "../server/aggregate.ts";
import { kernels } from "../runtime/kernels/mod.ts";
import { packMask } from "../runtime/client/wire.ts";
import { mulberry32 } from "../runtime/data/rng.ts";

interface Upload {
  values: Float32Array;
  mask: Uint8Array;
  samples: number;
}

const f = (a: number[]) => Float32Array.from(a);
const u = (a: number[]) => Uint8Array.from(a);

/** Folds the uploads in order and returns each one's slice, dense (zero outside its mask). */
function aggregate(ups: Upload[]): Float32Array[] {
  const k = kernels();
  const n = ups[0].values.length;
  const sum = new Float32Array(n);
  const weight = new Float32Array(n);
  for (const x of ups) foldSparse(sum, weight, packMask(x.mask), k.gather(x.values, x.mask), x.samples);
  const global = new Float32Array(n);
  finalizeInto(k, sum, weight, global, new Uint32Array(Math.ceil(n / 32)));
  return ups.map((x) => global.map((v, i) => (x.mask[i] ? v : 0)));
}

Deno.test("aggregation: parameter-wise mean, hand-computed case", () => {
  const [a, b] = aggregate([
    { values: f([1, 2, 3, 4]), mask: u([1, 1, 0, 1]), samples: 1 },
    { values: f([5, 6, 7, 8]), mask: u([1, 0, 1, 1]), samples: 3 },
  ]);
  // pos0: (1*1 + 3*5)/4 = 4; pos1 only client0 -> 2; pos2 only client1 -> 7; pos3: (4 + 24)/4 = 7
  assert.deepEqual(Array.from(a), [4, 2, 0, 7]);
  assert.deepEqual(Array.from(b), [4, 0, 7, 7]);
});

Deno.test("aggregation: sole holders keep their values, clients get only their positions", () => {
  const rand = mulberry32(5);
  const n = 200;
  const ups: Upload[] = Array.from({ length: 5 }, (_, c) => ({
    values: Float32Array.from({ length: n }, () => rand() * 2 - 1),
    mask: Uint8Array.from({ length: n }, () => (rand() < 0.3 ? 1 : 0)),
    samples: 1 + c * 2,
  }));
  const out = aggregate(ups);
  for (let i = 0; i < n; i++) {
    const holders = ups.map((x, c) => (x.mask[i] ? c : -1)).filter((c) => c >= 0);
    const wsum = holders.reduce((s, c) => s + ups[c].samples, 0);
    const mean = holders.reduce((s, c) => s + ups[c].samples * ups[c].values[i], 0) / wsum;
    for (let c = 0; c < ups.length; c++) {
      if (!ups[c].mask[i]) assert.equal(out[c][i], 0);
      else if (holders.length === 1) assert.ok(Math.abs(out[c][i] - ups[c].values[i]) <= 1e-6);
      else assert.ok(Math.abs(out[c][i] - mean) <= 1e-5, `pos ${i} client ${c}`);
    }
  }
});

Deno.test("aggregation: FedIT (all-ones masks) is plain sample-weighted FedAvg", () => {
  const rand = mulberry32(9);
  const n = 64;
  const ups: Upload[] = [10, 30, 60].map((s) => ({
    values: Float32Array.from({ length: n }, () => rand()),
    mask: new Uint8Array(n).fill(1),
    samples: s,
  }));
  const out = aggregate(ups);
  for (let i = 0; i < n; i++) {
    const avg = (10 * ups[0].values[i] + 30 * ups[1].values[i] + 60 * ups[2].values[i]) / 100;
    for (const o of out) assert.ok(Math.abs(o[i] - avg) < 1e-6);
  }
  assert.deepEqual(out[0], out[2]);
});

Deno.test("aggregation: a fold whose values do not match its mask changes nothing", () => {
  const sum = new Float32Array(4);
  const weight = new Float32Array(4);
  assert.throws(() => foldSparse(sum, weight, packMask(u([1, 1, 0, 1])), f([1, 2]), 1));
  assert.deepEqual(Array.from(sum), [0, 0, 0, 0]);
  assert.deepEqual(Array.from(weight), [0, 0, 0, 0]);
});
