/**
 * The folders behind the coordinator's streaming aggregation: the worker folds exactly what the
 * in-thread reference folds, keeps jobs in order (a snapshot holds the folds requested before it and
 * none after), reports a bad job as an error without touching the accumulators, and refuses work
 * once closed.
 */
import assert from "node:assert/strict";
import { type Folder, InlineFolder, WorkerFolder } from "../server/folder.ts";
import { packMask } from "../runtime/client/wire.ts";
import { mulberry32 } from "../runtime/data/rng.ts";

function update(n: number, seed: number) {
  const rnd = mulberry32(seed);
  const mask = new Uint8Array(n).map(() => (rnd() < 0.3 ? 1 : 0));
  const bits = packMask(mask);
  const values = new Float32Array(mask.reduce((a, b) => a + b, 0)).map(() => rnd() * 2 - 1);
  return { bits, values, samples: 1 + (seed % 7) };
}

async function foldAll(f: Folder, n: number, seeds: number[]) {
  const acc = f.alloc(n);
  const snaps: Promise<Float32Array>[] = [];
  const folds: Promise<void>[] = [];
  for (const s of seeds) {
    const u = update(n, s);
    folds.push(f.fold(acc, u.bits, u.values, u.samples));
    if (s === seeds[2]) snaps.push(f.snapshot(acc)); // after the third fold
  }
  await Promise.all(folds);
  await f.drain();
  return { acc, early: await snaps[0] };
}

Deno.test("server folder: the worker folds exactly like the in-thread folder, in order, and snapshots between folds", async () => {
  const n = 1000;
  const seeds = [1, 2, 3, 4, 5, 6];
  const worker = new WorkerFolder();
  try {
    const w = await foldAll(worker, n, seeds);
    const r = await foldAll(new InlineFolder(), n, seeds);
    assert.deepEqual(w.acc.sum, r.acc.sum);
    assert.deepEqual(w.acc.weight, r.acc.weight);
    assert.ok(w.acc.sum.buffer instanceof SharedArrayBuffer, "worker accumulators are shared memory");
    // The snapshot taken after the third fold equals three folds, not six.
    const three = await foldAll(new InlineFolder(), n, seeds.slice(0, 3));
    assert.deepEqual(w.early, three.acc.sum);
    assert.notDeepEqual(w.early, w.acc.sum);
  } finally {
    worker.close();
  }
});

Deno.test("server folder: a bad fold is an error and leaves the accumulators untouched; a closed folder refuses work", async () => {
  const worker = new WorkerFolder();
  const acc = worker.alloc(64);
  // Fresh arrays per call: a fold hands the values' buffer over to the worker (it is detached here).
  const good = () => update(64, 9);
  const first = good();
  await worker.fold(acc, first.bits, first.values, 2);
  assert.equal(first.values.length, 0, "the values' buffer was transferred, not copied");
  const before = acc.sum.slice();
  assert.ok(before.some((x) => x !== 0));
  // One value too few for the mask's popcount.
  const bad = good();
  await assert.rejects(worker.fold(acc, bad.bits, bad.values.slice(1), 2), /values|popcount|length|count/i);
  assert.deepEqual(acc.sum, before);
  worker.close();
  const late = good();
  await assert.rejects(worker.fold(acc, late.bits, late.values, 2), /closed/);
});

Deno.test("folder: the worker folds a term into a range of the accumulators (a view at an offset) as in-thread", async () => {
  const n = 1000, start = 333, len = 400;
  const results: Float32Array[][] = [];
  for (const f of [new InlineFolder(), new WorkerFolder()] as Folder[]) {
    try {
      const acc = f.alloc(n);
      for (const s of [1, 2, 3]) {
        const u = update(len, s);
        const range = {
          sum: acc.sum.subarray(start, start + len),
          weight: acc.weight.subarray(start, start + len),
        };
        await f.fold(range, u.bits, u.values, u.samples);
      }
      await f.drain();
      results.push([acc.sum.slice(), acc.weight.slice()]);
    } finally {
      f.close();
    }
  }
  const [inline, worker] = results;
  assert.deepEqual(worker[0], inline[0]);
  assert.deepEqual(worker[1], inline[1]);
  // Only the range was touched.
  assert.ok(
    inline[1].subarray(0, start).every((x) => x === 0) &&
      inline[1].subarray(start + len).every((x) => x === 0),
  );
  assert.ok(inline[1].subarray(start, start + len).some((x) => x > 0));
});
