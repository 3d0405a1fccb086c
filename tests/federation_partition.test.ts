import assert from "node:assert/strict";
import type { Example } from "../runtime/data/types.ts";
import {
  parsePartition,
  partition,
  partitionByCategory,
  partitionDirichlet,
  splitTrainTest,
} from "../runtime/federation/partition.ts";

const cats = ["a", "b", "c", "d"];
const data: Example[] = Array.from(
  { length: 400 },
  (_, i) => ({ prompt: `p${i}`, response: `r${i}`, category: cats[i % 4] }),
);
const key = (e: Example) => e.prompt;

Deno.test("federation: category partition is one pure client per category, deterministic", () => {
  const a = partitionByCategory(data, 1, { seed: 1, testFraction: 0.2 });
  const b = partitionByCategory(data, 1, { seed: 1, testFraction: 0.2 });
  assert.deepEqual(a.map((c) => c.id), ["a", "b", "c", "d"]);
  assert.deepEqual(a, b);
  for (const c of a) {
    assert.equal(c.test.length, 20);
    assert.equal(c.train.length, 80);
    assert.ok([...c.train, ...c.test].every((e) => e.category === c.id));
    const trainKeys = new Set(c.train.map(key));
    assert.ok(c.test.every((e) => !trainKeys.has(key(e))), "train and test are disjoint");
  }
  const other = partitionByCategory(data, 1, { seed: 2, testFraction: 0.2 });
  assert.notDeepEqual(a[0].test.map(key), other[0].test.map(key));
});

Deno.test("federation: several clients per category cover each category exactly once", () => {
  const parts = partitionByCategory(data, 3, { seed: 0 });
  assert.equal(parts.length, 12);
  const all = parts.flatMap((c) => [...c.train, ...c.test].map(key)).sort();
  assert.deepEqual(all, data.map(key).sort());
  assert.ok(parts.every((c) => Object.keys(c.categories).length === 1));
});

Deno.test("federation: Dirichlet partition covers everything; small alpha is skewed, large is mixed", () => {
  const skew = partitionDirichlet(data, 4, 0.05, { seed: 3 });
  const mixed = partitionDirichlet(data, 4, 1000, { seed: 3 });
  for (const p of [skew, mixed]) {
    assert.deepEqual(p.flatMap((c) => [...c.train, ...c.test].map(key)).sort(), data.map(key).sort());
  }
  const dominant = (p: typeof skew) =>
    p.reduce((s, c) => {
      const v = Object.values(c.categories);
      const tot = v.reduce((x, y) => x + y, 0);
      return s + (tot ? Math.max(...v) / tot : 0);
    }, 0) / p.length;
  assert.ok(dominant(skew) > 0.8, `skewed dominance ${dominant(skew)}`);
  assert.ok(dominant(mixed) < 0.4, `mixed dominance ${dominant(mixed)}`);
  assert.deepEqual(
    partitionDirichlet(data, 4, 0.5, { seed: 9 }),
    partitionDirichlet(data, 4, 0.5, { seed: 9 }),
  );
});

Deno.test("federation: partition specs and split caps", () => {
  assert.deepEqual(parsePartition("category", 8), { kind: "category", clientsPerCategory: 1 });
  assert.deepEqual(parsePartition("category:2", 8), { kind: "category", clientsPerCategory: 2 });
  assert.deepEqual(parsePartition("dirichlet:0.3", 8), { kind: "dirichlet", alpha: 0.3, clients: 8 });
  assert.throws(() => parsePartition("dirichlet:-1", 8), /ALPHA > 0/);
  assert.throws(() => parsePartition("iid", 8), /unknown partition/);
  assert.equal(partition(data, parsePartition("dirichlet:1", 5), { seed: 1 }).length, 5);
  const s = splitTrainTest(data.slice(0, 50), "x", { maxTrain: 7, maxTest: 2 });
  assert.equal(s.train.length, 7);
  assert.equal(s.test.length, 2);
  assert.throws(() => splitTrainTest(data, "x", { testFraction: 1 }), /testFraction/);
});
