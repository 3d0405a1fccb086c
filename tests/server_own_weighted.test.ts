/** perfit-own, flora-own: a client's slice weighs its own upload `ownWeight` times, through the deployed coordinator. */
import assert from "node:assert/strict";
import { ownWeightedValues } from "../server/own_weighted.ts";
import { foldTerms, HOLDERS, STACKED } from "../runtime/federation/aggregation.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { kindMask, rankLayout } from "../runtime/perfit/layout.ts";
import { reweighOwnSlot, slotMask, slotShare } from "../runtime/client/flora.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { scalarKernels } from "../runtime/kernels/mod.ts";
import {
  ADMIN,
  appFetch,
  createRun,
  fakeClients,
  isApiError,
  makeApp,
  maxDiff,
  referenceFederation,
  runBody,
} from "./server_helpers.ts";
import { tinyConfigLike } from "./model_fixtures.ts";

const bits = (m: number[]) => scalarKernels.maskToBits(Uint8Array.from(m));

Deno.test("own-weighted slice: the holders' mean with the own upload counted s times, written out", () => {
  // Three uploads over 4 positions: weights 2, 3, 5; the asking client is the first.
  const masks = [[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]];
  const vals = [[1, 2, 0, 3], [4, 0, 5, 6], [0, 7, 8, 9]];
  const ws = [2, 3, 5];
  const sum = new Float64Array(4), weight = new Float32Array(4), global = new Float32Array(4);
  masks.forEach((m, j) => m.forEach((b, p) => b && ((sum[p] += ws[j] * vals[j][p]), (weight[p] += ws[j]))));
  sum.forEach((x, p) => (global[p] = x / weight[p]));
  const upload = { bits: bits(masks[0]), values: Float32Array.of(1, 2, 3), weight: 2 };
  const own = foldTerms(HOLDERS, upload, 4, null);
  const covered = bits([1, 1, 1, 1]);
  for (const s of [1, 3, 10]) {
    const got = ownWeightedValues(global, weight, covered, own, s);
    const want = [0, 1, 2, 3].map((p) => {
      if (!masks[0][p]) return global[p];
      let num = 0, den = 0;
      masks.forEach((m, j) => {
        if (!m[p]) return;
        const w = ws[j] * (j === 0 ? s : 1);
        num += w * vals[j][p];
        den += w;
      });
      return num / den;
    });
    got.forEach((v, i) =>
      assert.ok(Math.abs(v - want[i]) < 1e-5, `s=${s} position ${i}: ${v} vs ${want[i]}`)
    );
  }
  // s = 1 is PerFIT's slice; a large s comes close to the client's own values.
  assert.deepEqual(ownWeightedValues(global, weight, covered, own, 1), global);
  const far = ownWeightedValues(global, weight, covered, own, 1000);
  assert.ok(Math.abs(far[0] - 1) < 0.05 && Math.abs(far[3] - 3) < 0.05 && far[2] === global[2], `${far}`);
  // Absent from the round: the global at the covered positions, in bit order.
  assert.deepEqual(
    ownWeightedValues(global, weight, bits([0, 1, 0, 1]), null, 3),
    Float32Array.of(global[1], global[3]),
  );
  // Refusals: a weight out of range, arrays that do not fit, an own upload heavier than its position.
  assert.throws(() => ownWeightedValues(global, weight, covered, own, 0.5), /ownWeight/);
  assert.throws(() => ownWeightedValues(global, weight, covered, own, NaN), /ownWeight/);
  assert.throws(() => ownWeightedValues(global, weight.subarray(0, 3), covered, own, 3), /weights hold/);
  assert.throws(
    () => ownWeightedValues(global, weight, covered, [{ ...own[0], values: Float32Array.of(1) }], 3),
    /selects 3/,
  );
  assert.throws(
    () =>
      ownWeightedValues(global, weight, covered, foldTerms(HOLDERS, { ...upload, weight: 50 }, 4, null), 3),
    /less than the own/,
  );
});

Deno.test("own-weighted stack (flora-own): the own slot's A ×s·p/(1+(s−1)p), every other A ×1/(1+(s−1)p), B as is", () => {
  const layout = adapterLayout(tinyConfigLike(), { rank: 6, alpha: 4, targets: ["q", "v"] });
  const slotLayout = rankLayout(layout, 2);
  const n = layout.size;
  // Three clients in slots 0, 2, 4 with 10, 30 and 60 samples: p = 0.1, 0.3, 0.6.
  const clients = [10, 30, 60].map((samples, k) => {
    const mask = slotMask(slotLayout, layout, 2 * k);
    const count = mask.reduce((a, b) => a + b, 0);
    const values = Float32Array.from({ length: count }, (_, i) => Math.sin(7 * k + i) + 1.5);
    const dense = new Float32Array(n);
    let r = 0;
    mask.forEach((m, p) => m && (dense[p] = values[r++]));
    return {
      samples,
      mask,
      dense,
      upload: { bits: scalarKernels.maskToBits(mask), values, weight: samples },
    };
  });
  // The round as the coordinator folds it: the method's terms through the fold kernel, then sum / weight.
  const sum = new Float32Array(n), weight = new Float32Array(n), global = new Float32Array(n);
  for (const c of clients) {
    for (const t of foldTerms(STACKED, c.upload, n, layout)) {
      const range = (a: Float32Array) => a.subarray(t.start, t.start + t.length);
      scalarKernels.accumulateSparse(range(sum), range(weight), t.bits, t.values, t.weight);
    }
  }
  scalarKernels.finalize(sum, weight, new Float32Array(n), global);
  const isA = kindMask(layout, "A");
  const all = bits(Array.from({ length: n }, () => 1));
  for (const [k, s] of [[0, 5], [1, 3], [2, 1]]) {
    const p = clients[k].samples / 100;
    const got = ownWeightedValues(global, weight, all, foldTerms(STACKED, clients[k].upload, n, layout), s);
    for (let q = 0; q < n; q++) {
      const holder = clients.find((c) => c.mask[q]);
      let want = holder ? holder.dense[q] : 0;
      if (isA[q] && holder) {
        const pj = holder.samples / 100;
        want = (holder === clients[k] ? s * pj : pj) * holder.dense[q] / (1 + (s - 1) * p);
      }
      assert.ok(Math.abs(got[q] - want) < 1e-5, `client ${k}, s ${s}, position ${q}: ${got[q]} vs ${want}`);
    }
    // flora-mix's client, from the plain stack and its own upload, makes the coordinator's stack.
    const ownA = clients[k].mask.map((m, q) => m & isA[q]);
    const share = slotShare(global, clients[k].dense, ownA);
    assert.ok(Math.abs(share - p) < 1e-6, `client ${k}: share ${share} vs ${p}`);
    const mine = reweighOwnSlot(global, ownA, isA, share, s);
    mine.forEach((v, q) => assert.ok(Math.abs(v - got[q]) < 1e-5, `client ${k}, s ${s}, position ${q}`));
  }
  // A slot left empty this round has share 0; an upload with no A, or one not in this stack, is refused.
  const ownA = clients[0].mask.map((m, q) => m & isA[q]);
  assert.equal(slotShare(new Float32Array(n), clients[0].dense, ownA), 0);
  assert.throws(() => slotShare(global, new Float32Array(n), ownA), /no A/);
  assert.throws(() => slotShare(global, clients[0].dense.map((v) => v / 20), ownA), /outside/);
  assert.throws(() => reweighOwnSlot(global, ownA, isA, 0.1, 0.5), /≥ 1/);
  assert.throws(() => reweighOwnSlot(global, ownA, isA, 1.5, 2), /share/);
  assert.throws(() => reweighOwnSlot(global, ownA.subarray(1), isA, 0.1, 2), /masks/);
});

Deno.test("perfit-own config: ownWeight is its own, ranged, and needs a streamed mean", () => {
  const own = (over: Record<string, unknown>) => ({ ...runBody("perfit"), method: "perfit-own", ...over });
  assert.equal(parseRunConfig(own({})).ownWeight, 3);
  assert.equal(parseRunConfig(own({ ownWeight: 1 })).ownWeight, 1);
  assert.equal(parseRunConfig(own({ aggregation: "clipped-mean", clipNorm: 5 })).ownWeight, 3);
  assert.equal(parseRunConfig(runBody("perfit")).ownWeight, undefined);
  for (const bad of [0.5, 0, -1, 1001, "3", null, [3], { v: 3 }]) {
    assert.throws(
      () => parseRunConfig(own({ ownWeight: bad })),
      isApiError("invalid_config"),
      JSON.stringify(bad),
    );
  }
  assert.throws(() => parseRunConfig({ ...runBody("perfit"), ownWeight: 3 }), isApiError("invalid_config"));
  assert.throws(() => parseRunConfig(own({ aggregation: "median" })), isApiError("invalid_config"));
});

Deno.test("stacked own-weighted configs (flora-own, perfit-stack): the same ownWeight and refusals; FLoRA and flora-mix refuse the key", () => {
  const flora = (method: string, over: Record<string, unknown> = {}) => ({
    ...runBody("perfit"),
    method,
    model: toHfConfig(tinyConfigLike()),
    adapterSize: undefined,
    budget: undefined,
    maxClients: 8,
    expansionTiers: { low: 1, high: 2 },
    ...over,
  });
  for (const method of ["flora-own", "perfit-stack"]) {
    assert.equal(parseRunConfig(flora(method)).ownWeight, 3, method);
    assert.equal(parseRunConfig(flora(method, { ownWeight: 5 })).ownWeight, 5, method);
    for (const bad of [0.5, 1001, "5", null, NaN]) {
      assert.throws(
        () => parseRunConfig(flora(method, { ownWeight: bad })),
        isApiError("invalid_config"),
        `${method} ${String(bad)}`,
      );
    }
    assert.throws(
      () => parseRunConfig(flora(method, { aggregation: "median" })),
      isApiError("invalid_config"),
      method,
    );
  }
  // perfit-stack prunes each slot to the rank-r budget; flora-own trains its whole slot.
  const stack = parseRunConfig(flora("perfit-stack")), own = parseRunConfig(flora("flora-own"));
  assert.equal(own.budget, own.adapterSize / 8);
  assert.ok(stack.budget < stack.adapterSize / 8 && stack.adapterSize === own.adapterSize);
  for (const method of ["flora", "flora-mix"]) {
    assert.throws(
      () => parseRunConfig(flora(method, { ownWeight: 3 })),
      isApiError("invalid_config"),
      method,
    );
    assert.equal(parseRunConfig(flora(method)).ownWeight, undefined, method);
  }
});

async function federate(kv: Deno.Kv, ownWeight: number | undefined) {
  const app = makeApp(kv);
  const body = {
    ...runBody("perfit"),
    method: "perfit-own",
    ...(ownWeight !== undefined ? { ownWeight } : {}),
  };
  const runId = await createRun(app, body);
  const clients = await fakeClients((i) => ({
    serverUrl: "http://x",
    runId,
    pollMs: 0,
    name: `c${i}`,
    fetch: appFetch(() => app),
  }));
  for (const c of clients) await c.join();
  await Promise.all(clients.map((c) => c.run({ maxSteps: 2000 })));
  await app.coordinator.settled();
  return { app, runId, clients };
}

Deno.test("perfit-own end to end: 8 clients finish 3 rounds with the own-weighted reference federation", async () => {
  const kv = await Deno.openKv(":memory:");
  const { app, runId, clients } = await federate(kv, 3);
  try {
    const ref = referenceFederation("perfit", 8, 3, 1000, 300, 3);
    const plain = referenceFederation("perfit", 8, 3, 1000, 300);
    for (const [i, c] of clients.entries()) {
      const d = maxDiff(c.adapter!, ref[i]);
      assert.ok(d < 1e-5, `client ${i} differs from the own-weighted reference by ${d}`);
      // Not PerFIT's adapter: the own weight changed what the client holds.
      assert.ok(maxDiff(c.adapter!, plain[i]) > 1e-3, `client ${i} ended as under PerFIT`);
    }
    // Only the uploads of the round that made the global are kept, one per client.
    const heldRounds = new Set<number>(), heldClients = new Set<string>();
    for await (const e of kv.list({ prefix: ["held", runId] })) {
      heldRounds.add(e.key[2] as number);
      heldClients.add(e.key[3] as string);
    }
    assert.deepEqual([...heldRounds], [3]);
    assert.equal(heldClients.size, 8);
    // A new instance on the same store serves the same slices (weights and uploads read back from KV).
    const again = makeApp(kv);
    try {
      const ids: string[] = [];
      for await (const e of kv.list({ prefix: ["client", runId] })) ids.push(e.key[2] as string);
      assert.equal(ids.length, 8);
      for (const id of ids) {
        const [a, b] = [await app.coordinator.slice(runId, id), await again.coordinator.slice(runId, id)];
        assert.ok(a.values.length > 0);
        assert.deepEqual(b.coveredBits, a.coveredBits);
        assert.deepEqual(b.values, a.values);
      }
    } finally {
      await again.close();
    }
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("perfit-own with ownWeight 1 is PerFIT's federation", async () => {
  const kv = await Deno.openKv(":memory:");
  const { app, clients } = await federate(kv, 1);
  try {
    const ref = referenceFederation("perfit", 8, 3, 1000, 300);
    for (const [i, c] of clients.entries()) assert.ok(maxDiff(c.adapter!, ref[i]) < 1e-5, `client ${i}`);
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("perfit-own: a refused run body creates nothing", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    for (const ownWeight of [0.5, "3", 1e9]) {
      const res = await app.request("/v1/runs", {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify({ ...runBody("perfit"), method: "perfit-own", ownWeight }),
      });
      assert.equal(res.status, 422, `${ownWeight}: ${res.status}`);
      assert.match((await res.json()).error.message, /ownWeight/);
    }
    const runs: unknown[] = [];
    for await (const e of kv.list({ prefix: ["run"] })) runs.push(e.key);
    assert.deepEqual(runs, []);
  } finally {
    await app.close();
    kv.close();
  }
});
