import assert from "node:assert/strict";
import { aggregateParameterWise, type ClientUpdate, downloadSlice } from "../runtime/perfit/mod.ts";
import { mulberry32 } from "../runtime/data/rng.ts";

const f = (a: number[]) => Float32Array.from(a);
const u = (a: number[]) => Uint8Array.from(a);

Deno.test("perfit: parameter-wise aggregation, hand-computed case", () => {
  const ups: ClientUpdate[] = [
    { values: f([1, 2, 3, 4]), mask: u([1, 1, 0, 1]), samples: 1 },
    { values: f([5, 6, 7, 8]), mask: u([1, 0, 1, 1]), samples: 3 },
  ];
  const [a, b] = aggregateParameterWise(ups);
  // pos0: (1*1 + 3*5)/4 = 4; pos1 only client0 -> 2; pos2 only client1 -> 7; pos3: (4 + 24)/4 = 7
  assert.deepEqual(Array.from(a), [4, 2, 0, 7]);
  assert.deepEqual(Array.from(b), [4, 0, 7, 7]);
  assert.deepEqual(Array.from(downloadSlice(a, ups[0].mask)), [4, 2, 7]);
  assert.deepEqual(Array.from(downloadSlice(b, ups[1].mask)), [4, 7, 7]);
});

Deno.test("perfit: properties: sole holders keep their values, clients get only their positions", () => {
  const rand = mulberry32(5);
  const n = 200;
  const ups: ClientUpdate[] = Array.from({ length: 5 }, (_, c) => ({
    values: Float32Array.from({ length: n }, () => rand() * 2 - 1),
    mask: Uint8Array.from({ length: n }, () => (rand() < 0.3 ? 1 : 0)),
    samples: 1 + c * 2,
  }));
  const out = aggregateParameterWise(ups);
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

Deno.test("perfit: FedIT (all-ones masks) is plain sample-weighted FedAvg", () => {
  const rand = mulberry32(9);
  const n = 64;
  const samples = [10, 30, 60];
  const ups: ClientUpdate[] = samples.map((s) => ({
    values: Float32Array.from({ length: n }, () => rand()),
    mask: new Uint8Array(n).fill(1),
    samples: s,
  }));
  const out = aggregateParameterWise(ups);
  for (let i = 0; i < n; i++) {
    const avg = (10 * ups[0].values[i] + 30 * ups[1].values[i] + 60 * ups[2].values[i]) / 100;
    for (const o of out) assert.ok(Math.abs(o[i] - avg) < 1e-6);
  }
  assert.deepEqual(out[0], out[2]);
});

Deno.test("perfit: aggregation rejects NaN uploads and bad sample counts", () => {
  const good = { values: f([1, 2]), mask: u([1, 1]), samples: 1 };
  assert.throws(
    () => aggregateParameterWise([good, { values: f([NaN, 1]), mask: u([1, 1]), samples: 1 }]),
    /non-finite/,
  );
  assert.throws(
    () => aggregateParameterWise([good, { values: f([1, 1]), mask: u([1, 1]), samples: 0 }]),
    /samples/,
  );
  assert.throws(() => aggregateParameterWise([good, { values: f([1]), mask: u([1]), samples: 1 }]), /length/);
});
