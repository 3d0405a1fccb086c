/**
 * The strategies' aggregation: the fold terms each method makes, HetLoRA's ‖B·A‖_F weights, and
 * HetLoRA run end to end through the coordinator (zero padding to the largest rank, per-projection
 * weights, truncation back to each client's rank), also across a crash in the middle of a round.
 */
import assert from "node:assert/strict";
import {
  type AcceptedUpload,
  denseValues,
  foldTerms,
  HOLDERS,
  productNorm,
  projectionRanges,
  ZERO_PADDED,
} from "../runtime/federation/aggregation.ts";
import { type AdapterLayout, adapterLayout } from "../runtime/model/lora.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { embed, rankLayout } from "../runtime/perfit/layout.ts";
import { mulberry32 } from "../runtime/data/rng.ts";
import { FederatedClient, type TaskInfo, type TrainerOutput } from "../runtime/client/mod.ts";
import type { PerfitApp } from "../server/app.ts";
import { appFetch, createRun, makeApp } from "./server_helpers.ts";

const packBits = (m: Uint8Array): Uint32Array => {
  const b = new Uint32Array(Math.ceil(m.length / 32));
  m.forEach((v, i) => v && (b[i >>> 5] |= 1 << (i & 31)));
  return b;
};

function randomUpload(n: number, seed: number, keep: number): AcceptedUpload & { mask: Uint8Array } {
  const rnd = mulberry32(seed);
  const mask = Uint8Array.from({ length: n }, () => (rnd() < keep ? 1 : 0));
  const values = Float32Array.from({ length: mask.reduce((a, b) => a + b, 0) }, () => rnd() - 0.5);
  return { bits: packBits(mask), values, weight: 3, mask };
}

Deno.test("productNorm is ‖B·A‖_F of the explicit product", () => {
  const rnd = mulberry32(7);
  const r = 3, inF = 5, outF = 4;
  const v = Float32Array.from({ length: 2 + r * inF + outF * r }, () => rnd() - 0.5);
  const a = { offset: 2, shape: [r, inF] as [number, number] };
  const b = { offset: 2 + r * inF, shape: [outF, r] as [number, number] };
  let s = 0;
  for (let o = 0; o < outF; o++) {
    for (let i = 0; i < inF; i++) {
      let x = 0;
      for (let k = 0; k < r; k++) x += v[b.offset + o * r + k] * v[a.offset + k * inF + i];
      s += x * x;
    }
  }
  const got = productNorm(v, a, b);
  assert.ok(Math.abs(got - Math.sqrt(s)) < 1e-9 * Math.sqrt(s), `${got} vs ${Math.sqrt(s)}`);
  assert.throws(() => productNorm(v, a, { offset: b.offset, shape: [outF, r + 1] }), /rank/);
});

Deno.test("holders: one term, the upload itself; zero-padded: one full term per projection", () => {
  const layout = adapterLayout(tinyConfig(), { rank: 4, alpha: 8, targets: ["q", "v"] });
  const u = randomUpload(layout.size, 11, 0.3);
  const [t] = foldTerms(HOLDERS, u, layout.size, null);
  assert.equal(foldTerms(HOLDERS, u, layout.size, null).length, 1);
  assert.deepEqual([t.start, t.length, t.weight], [0, layout.size, 3]);
  assert.equal(t.bits, u.bits);
  assert.equal(t.values, u.values);

  const terms = foldTerms(ZERO_PADDED, u, layout.size, layout);
  const ranges = projectionRanges(layout);
  assert.equal(terms.length, 2 * 2); // 2 layers × (q, v)
  assert.equal(ranges.reduce((a, r) => a + r.length, 0), layout.size);
  const dense = denseValues(u, layout.size);
  for (const [i, term] of terms.entries()) {
    assert.deepEqual([term.start, term.length], [ranges[i].start, ranges[i].length]);
    // Every position of the projection, the unheld ones as zeros (zero padding).
    assert.deepEqual(term.values, dense.slice(term.start, term.start + term.length));
    const a = layout.entries[2 * i], b = layout.entries[2 * i + 1];
    assert.equal(term.weight, productNorm(dense, a, b));
  }
  assert.throws(() => foldTerms(ZERO_PADDED, u, layout.size, null), /layout/);
  assert.throws(() => denseValues({ ...u, values: u.values.subarray(1) }, layout.size), /values hold/);
});

// ---- HetLoRA through the coordinator ----

const CFG = tinyConfig();
const RANK = 2;
const TIERS = { low: 1, mid: 2, high: 4 };
const CLIENT_TIERS = ["high", "low", "mid"] as const;
const GLOBAL = adapterLayout(CFG, { rank: RANK * 4, alpha: 4, targets: ["q", "v"] });

/** Client i's HetLoRA mask: the leading r·e components of every projection, in the global layout. */
function leadingMask(e: number): Uint8Array {
  const own = rankLayout(GLOBAL, RANK * e);
  return embed(own, new Uint8Array(own.size).fill(1), GLOBAL);
}

function trainedValues(i: number, round: number, adapter: Float32Array, mask: Uint8Array): Float32Array {
  const rnd = mulberry32(100 * i + round);
  return Float32Array.from(adapter, (v, p) => (mask[p] ? Math.fround(0.5 * v + (rnd() - 0.5) * (1 + i)) : 0));
}

/** The f64 reference: per projection, Σ_k ‖B_k A_k‖ · pad(v_k) / Σ_k ‖B_k A_k‖ over every client. */
function referenceRound(uploads: Float32Array[], layout: AdapterLayout): Float64Array {
  const out = new Float64Array(layout.size);
  for (let e = 0; e < layout.entries.length; e += 2) {
    const a = layout.entries[e], b = layout.entries[e + 1];
    const [r, inF] = a.shape, outF = b.shape[0];
    const norms = uploads.map((v) => {
      let s = 0;
      for (let o = 0; o < outF; o++) {
        for (let c = 0; c < inF; c++) {
          let x = 0;
          for (let k = 0; k < r; k++) x += v[b.offset + o * r + k] * v[a.offset + k * inF + c];
          s += x * x;
        }
      }
      return Math.sqrt(s);
    });
    const total = norms.reduce((x, y) => x + y, 0);
    for (let p = a.offset; p < b.offset + b.size; p++) {
      out[p] = uploads.reduce((acc, v, k) => acc + norms[k] * v[p], 0) / total;
    }
  }
  return out;
}

async function hetloraRun(
  crashAfter: number | null,
): Promise<{ got: Float32Array[]; want: Float64Array; sent: Float32Array[] }> {
  const dir = await Deno.makeTempDir({ prefix: "perfit-hetlora-" });
  let kv = await Deno.openKv(`${dir}/kv`);
  let app: PerfitApp = makeApp(kv);
  const route = appFetch(() => app);
  const sent: Float32Array[] = [];
  const received: Float32Array[] = [];
  try {
    const runId = await createRun(app, {
      baseModel: "tiny-test",
      lora: { rank: RANK, alpha: 4, targets: ["q", "v"] },
      method: "hetlora",
      rounds: 2,
      clientsPerRound: 3,
      quorum: 3,
      roundDeadlineMs: 60_000,
      expansionTiers: TIERS,
      model: toHfConfig(CFG),
    });
    const clients = await Promise.all(CLIENT_TIERS.map((tier, i) => {
      const mask = leadingMask(TIERS[tier]);
      const trainer = (task: TaskInfo, adapter: Float32Array): Promise<TrainerOutput> => {
        if (task.round === 2) received[i] = adapter.slice();
        const values = trainedValues(i, task.round, adapter, mask);
        if (task.round === 1) sent[i] = values;
        return Promise.resolve({ values, mask, samples: 10 + i, metrics: { loss: 1 } });
      };
      return FederatedClient.create({
        serverUrl: "http://perfit.test",
        runId,
        tier,
        fetch: route,
        pollMs: 1,
        sleep: () => Promise.resolve(),
        trainer: Object.assign(trainer, {
          initAdapter: () => Float32Array.from({ length: GLOBAL.size }, (_, p) => 0.01 * Math.cos(p)),
        }),
      });
    }));
    for (const c of clients) await c.join();
    for (const [i, c] of clients.entries()) {
      assert.equal((await c.step()).kind, "trained");
      if (crashAfter === i) {
        // Crash with the round half full: the new instance rebuilds the weight sums from the
        // stored masks and the term weights recorded with each upload.
        await app.coordinator.settled();
        kv.close();
        kv = await Deno.openKv(`${dir}/kv`);
        app = makeApp(kv);
      }
    }
    for (const c of clients) assert.equal((await c.step()).kind, "trained");
    return { got: received, want: referenceRound(sent, GLOBAL), sent };
  } finally {
    await app.coordinator.settled();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
}

for (const crashAfter of [null, 1]) {
  Deno.test(
    `hetlora through the coordinator: zero-padded, ‖B·A‖-weighted, truncated to each rank${
      crashAfter === null ? "" : " (crash mid-round)"
    }`,
    async () => {
      const { got, want, sent } = await hetloraRun(crashAfter);
      for (const [i, tier] of CLIENT_TIERS.entries()) {
        const mask = leadingMask(TIERS[tier]);
        let worst = 0;
        for (let p = 0; p < GLOBAL.size; p++) {
          if (!mask[p]) continue;
          worst = Math.max(worst, Math.abs(got[i][p] - want[p]) / Math.max(1e-3, Math.abs(want[p])));
        }
        assert.ok(
          worst < 1e-4,
          `client ${i} (${tier}): slice differs from the reference by ${worst} (relative)`,
        );
      }
      // Zero padding is visible: where only the high-tier client holds a position, a mean over its
      // holders would give back its own value; HetLoRA's shrinks it by its share of the weight.
      const mid = leadingMask(2);
      const highOnly = leadingMask(4).findIndex((m, p) =>
        m === 1 && mid[p] === 0 && Math.abs(sent[0][p]) > 0.1
      );
      assert.ok(Math.abs(got[0][highOnly]) < 0.95 * Math.abs(sent[0][highOnly]));
    },
  );
}

Deno.test("hetlora runs need the model config and keep their own mean", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const body = {
      baseModel: "tiny-test",
      lora: { rank: RANK, alpha: 4, targets: ["q", "v"] },
      method: "hetlora",
      rounds: 1,
      clientsPerRound: 2,
      roundDeadlineMs: 60_000,
      expansionTiers: TIERS,
    };
    const post = (b: Record<string, unknown>) =>
      app.request("/v1/runs", {
        method: "POST",
        headers: { authorization: "Bearer test-admin-token-0123456789", "content-type": "application/json" },
        body: JSON.stringify(b),
      });
    const noModel = await post({ ...body, adapterSize: GLOBAL.size });
    assert.equal(noModel.status, 422);
    assert.match(await noModel.text(), /model/);
    const median = await post({ ...body, model: toHfConfig(CFG), aggregation: "median" });
    assert.equal(median.status, 422);
    assert.match(await median.text(), /own aggregation/);
    const ok = await post({ ...body, model: toHfConfig(CFG) });
    assert.equal(ok.status, 201);
    // No budget: a client uploads its whole rank-r·e adapter.
    assert.equal((await ok.json()).run.config.budget, GLOBAL.size);
  } finally {
    await app.coordinator.settled();
    kv.close();
  }
});
