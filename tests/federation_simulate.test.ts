import assert from "node:assert/strict";
import { Engine } from "../runtime/model/engine.ts";
import { partitionByCategory } from "../runtime/federation/partition.ts";
import { type SimClientView, simulate } from "../runtime/federation/simulate.ts";
import type { SimConfig } from "../runtime/federation/types.ts";
import type { Method } from "../runtime/federation/strategies.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { makeBatches } from "../runtime/data/batches.ts";
import { denseRank, OWN_SLOT_GRID } from "../runtime/client/flora.ts";
import { SLICE_REVISION } from "../runtime/client/wire.ts";
import { embed, kindMask, rankLayout } from "../runtime/perfit/layout.ts";
import { heldRank, leadingMask, prunedRank } from "../runtime/client/hetlora_prune.ts";
import * as clientLib from "../runtime/client/mod.ts";
import { engineTrainer, FederatedClient, MemoryStorage } from "../runtime/client/mod.ts";
import { appFetch, createRun, makeApp } from "./server_helpers.ts";
import { federationTinyModel, smallSimConfig, wordData } from "./federation_fixtures.ts";

/** An upload of the budget's values by reference: 4·B bytes of values plus a safetensors header. */
const HEADER_MAX = 320;

const tiny = federationTinyModel;
const data = wordData(60, ["define", "translate", "acronym"]);

async function run(
  method: Method,
  over: Partial<SimConfig> = {},
  inspect?: (r: number, c: readonly SimClientView[]) => void,
  maxLen = 48,
) {
  const m = await tiny();
  const cfg = smallSimConfig(method, over);
  const engines = new Map<number, Engine>();
  return await simulate(cfg, {
    clients: partitionByCategory(data, 1, { seed: 1, testFraction: 0.15 }),
    tokenizer: m.tokenizer!,
    engineFactory: async (rank) => {
      if (!engines.has(rank)) {
        engines.set(
          rank,
          await Engine.create(m, { rank, alpha: cfg.alpha, targets: cfg.targets }, {
            scale: cfg.alpha / cfg.rank,
          }),
        );
      }
      return engines.get(rank)!;
    },
    batchSize: 4,
    maxLen,
    inspect,
    modelConfig: toHfConfig(m.config) as Record<string, unknown>,
  });
}

/** Perplexity of a client's export over the original base on its test split (what the run reported, if exact). */
type Export = NonNullable<ReturnType<SimClientView["exported"]>>;
async function exportedPerplexity(id: string, x: Export, targets: SimConfig["targets"]): Promise<number> {
  const m = await tiny();
  const wide = await Engine.create(m, { rank: x.layout.rank, alpha: 4, targets }, { scale: x.scale });
  const test = partitionByCategory(data, 1, { seed: 1, testFraction: 0.15 }).find((c) => c.id === id)!.test;
  let nll = 0, tokens = 0;
  for (const b of makeBatches(test, m.tokenizer!, { maxLen: 48, batchSize: 4, shuffle: false })) {
    const e = await wide.evalNll(b, x.adapter);
    nll += e.nllSum;
    tokens += e.tokens;
  }
  return Math.exp(nll / tokens);
}

Deno.test("federation: end-to-end PerFIT on a tiny model: exact budgets, ref uploads, deterministic", async () => {
  const finalMasks: number[][] = [];
  let embedded: Uint8Array[] = [];
  const r = await run("perfit", {}, (round, clients) => {
    if (round === 2) {
      for (const c of clients) {
        finalMasks.push([c.mask.reduce((s, v) => s + v, 0), c.plan.budget, c.plan.total]);
      }
      // The widest client's layout holds every other's: overlaps counted there, position by position.
      embedded = clients.map((c) => embed(c.layout, c.mask, clients[0].layout));
    }
  });
  const overlap = (a: Uint8Array, b: Uint8Array) => {
    let both = 0, either = 0;
    a.forEach((x, p) => ((both += x & b[p]), (either += x | b[p])));
    return both / either;
  };
  for (const [i, m] of r.maskStats.entries()) {
    assert.equal(m.jaccard.length, 3);
    m.jaccard.forEach((v, j) =>
      assert.ok(Math.abs(v - (i === j ? 1 : overlap(embedded[i], embedded[j]))) < 1e-12)
    );
    const others = m.jaccard.filter((_, j) => j !== i);
    assert.ok(Math.abs(m.meanJaccard - (others[0] + others[1]) / 2) < 1e-12);
  }
  // Masks chosen by importance at different ranks differ: not one mask for all.
  assert.ok(r.maskStats[0].jaccard[1] < 1);
  assert.equal(r.rounds.length, 2);
  assert.deepEqual(r.clients.map((c) => c.expansion), [4, 2, 1]);
  for (const [kept, budget, total] of finalMasks) {
    assert.equal(kept, budget);
    assert.equal(budget, r.budget);
    assert.ok(total >= budget);
  }
  assert.deepEqual(finalMasks.map((m) => m[2]), [4 * r.budget, 2 * r.budget, r.budget]);
  for (const c of r.rounds[1].clients) {
    assert.ok(Number.isFinite(c.perplexity) && c.perplexity > 1);
    // Steady state: the mask travels by reference, so the upload is values + header only.
    assert.equal(c.maskMode, "ref");
    assert.ok(c.uploadBytes > 4 * r.budget && c.uploadBytes <= 4 * r.budget + HEADER_MAX, `${c.uploadBytes}`);
  }
  // Search round: the mask is sent once, in its smallest code.
  // A new mask costs less than its bitmask over the global layout (4·B positions, B/2 bytes).
  for (const [i, c] of r.rounds[0].clients.entries()) {
    assert.notEqual(c.maskMode, "ref");
    assert.ok(c.uploadBytes <= r.rounds[1].clients[i].uploadBytes + r.budget / 2, `${c.uploadBytes}`);
  }
  assert.ok(r.rounds[0].clients[0].uploadBytes > r.rounds[1].clients[0].uploadBytes);
  const again = await run("perfit");
  assert.deepEqual(
    again.rounds.map((x) => x.clients.map((c) => c.perplexity)),
    r.rounds.map((x) => x.clients.map((c) => c.perplexity)),
  );
});

Deno.test("federation: perfit-own at ownWeight 1 is PerFIT; above it each client's slice leans to its own upload", async () => {
  const ppl = (r: Awaited<ReturnType<typeof run>>) => r.rounds.map((x) => x.clients.map((c) => c.perplexity));
  const perfit = await run("perfit");
  assert.deepEqual(ppl(await run("perfit-own", { ownWeight: 1 })), ppl(perfit));
  const own = await run("perfit-own", { ownWeight: 5 });
  // Round 1's evaluation already holds the reweighed slice: the simulation's run carried the setting.
  assert.notDeepEqual(ppl(own)[0], ppl(perfit)[0]);
  assert.deepEqual(own.clients.map((c) => c.trainableParams), perfit.clients.map((c) => c.trainableParams));
});

Deno.test("federation: flora-own at ownWeight 1 is FLoRA; above it each client merges a stack of its own", async () => {
  const ppl = (r: Awaited<ReturnType<typeof run>>) => r.rounds.map((x) => x.clients.map((c) => c.perplexity));
  const flora = await run("flora", { rounds: 2 });
  assert.deepEqual(ppl(await run("flora-own", { rounds: 2, ownWeight: 1 })), ppl(flora));
  const own = await run("flora-own", { rounds: 2, ownWeight: 5 });
  // Round 1's evaluation is on the merged base, so it already holds the reweighed stack.
  assert.notDeepEqual(ppl(own)[0], ppl(flora)[0]);
  // The stack travels as FLoRA's: the same bytes each way.
  const bytes = (r: typeof flora) =>
    r.rounds.map((x) => x.clients.map((c) => [c.uploadBytes, c.downloadBytes]));
  assert.deepEqual(bytes(own), bytes(flora));
});

Deno.test("federation: flora-mix picks each client's own-slot weight from the grid, merges that stack, and moves FLoRA's bytes", async () => {
  let views: readonly SimClientView[] = [], exports: Export[] = [];
  const mix = await run("flora-mix", { rounds: 2 }, (round, c) => {
    if (round === 2) [views, exports] = [c, c.map((v) => v.exported()!)];
  });
  const flora = await run("flora", { rounds: 2 });
  for (const r of mix.rounds) {
    for (const c of r.clients) assert.ok(OWN_SLOT_GRID.includes(c.mix!), `${c.clientId}: ${c.mix}`);
  }
  const down = (r: typeof flora) => r.rounds.map((x) => x.clients.map((c) => c.downloadBytes));
  assert.deepEqual(down(mix), down(flora));
  // The same slot goes up; from round 2 on the upload also reports the weight picked (`mix`).
  mix.rounds.forEach((r, k) =>
    r.clients.forEach((c, i) => {
      const extra = c.uploadBytes - flora.rounds[k].clients[i].uploadBytes;
      assert.ok(k === 0 ? extra === 0 : extra > 0 && extra <= 32, `round ${k + 1} ${c.clientId}: ${extra}`);
    })
  );
  assert.deepEqual(mix.clients.map((c) => c.trainableParams), flora.clients.map((c) => c.trainableParams));
  // What a client merged is the stack it picked: its export scores the perplexity reported.
  for (const [i, v] of views.entries()) {
    const got = await exportedPerplexity(v.id, exports[i], mix.config.targets);
    const want = mix.rounds[1].clients[i].perplexity;
    assert.ok(Math.abs(got - want) < 1e-4 * want, `${v.id}: ${got} vs ${want}`);
  }
});

Deno.test("federation: perfit-stack searches a fresh LoRA to the budget every round, stacks the kept slots, and merges its own", async () => {
  let views: readonly SimClientView[] = [], exports: Export[] = [];
  const firstMask: Uint8Array[] = [];
  const r = await run("perfit-stack", { rounds: 2, ownWeight: 3 }, (round, c) => {
    if (round === 1) firstMask.push(c[0].mask.slice());
    if (round === 2) [views, exports] = [c, c.map((v) => v.exported()!)];
  });
  const flora = await run("flora-own", { rounds: 2, ownWeight: 3 });
  // Every client trains the budget, whatever its tier, and uploads only the kept positions, every round.
  assert.ok(r.clients.every((c) => c.trainableParams === r.budget), JSON.stringify(r.clients));
  // Only the kept positions travel (with the round's new mask): the expanded tiers send far less than
  // flora-own's whole slot, and the B's nobody kept are not in the stack.
  r.rounds.forEach((x, k) =>
    x.clients.forEach((c, i) => {
      const other = flora.rounds[k].clients[i];
      assert.ok(c.uploadBytes > 4 * r.budget, `${c.uploadBytes}`);
      if (c.expansion > 1) {
        assert.ok(c.uploadBytes < 0.7 * other.uploadBytes, `${c.uploadBytes} vs ${other.uploadBytes}`);
      }
      assert.ok(c.downloadBytes <= other.downloadBytes);
    })
  );
  assert.ok(r.rounds[1].meanPerplexity < r.rounds[0].meanPerplexity);
  // The stack travels without its zeros: at most the clients' kept values and two bitmasks, where every
  // slot's A rows alone are wider.
  const v0 = views[0], global = rankLayout(v0.layout, 3 * 8);
  const stackBound = 4 * 3 * r.budget + 2 * 4 * Math.ceil(global.size / 32) + HEADER_MAX;
  assert.ok(global.entries.filter((e) => e.kind === "A").reduce((a, e) => a + 4 * e.size, 0) > stackBound);
  assert.ok(
    r.rounds.every((x) => x.clients.every((c) => c.downloadBytes <= stackBound)),
    `${r.rounds.map((x) => x.clients.map((c) => c.downloadBytes))} vs ${stackBound}`,
  );
  // And the result says which slice body those bytes were measured on.
  assert.equal(r.sliceRevision, SLICE_REVISION);
  // Two stacks of rank 24 are wider than the projections' 32: the export is the dense change.
  assert.ok(2 * global.rank > denseRank(global));
  assert.ok(exports.length === 3 && exports.every((x) => x.layout.rank === denseRank(global)));
  // A stack is one round's update: a B position the first client kept in round 1 and pruned in round 2
  // is zero in round 2's stack, not round 1's value carried over (the view holds the client's slot of
  // the last stack).
  const own2 = v0.adapter;
  const isB = kindMask(v0.layout, "B");
  assert.equal(v0.mask.reduce((a, b) => a + b, 0), r.budget);
  const dropped = [...isB.keys()].filter((i) => isB[i] && firstMask[0][i] && !v0.mask[i]);
  assert.ok(dropped.length > 0, "the second search dropped some B position of the first");
  assert.ok(dropped.every((i) => own2[i] === 0), "nothing of round 1's B is left in round 2's stack");
  assert.ok([...isB.keys()].some((i) => isB[i] && v0.mask[i] && own2[i] !== 0));
});

Deno.test("federation: FedIT gives every client the same adapter; base never changes; local beats base", async () => {
  const adapters: Float32Array[] = [];
  const fedit = await run(
    "fedit",
    { rounds: 1 },
    (_, clients) => clients.forEach((c) => adapters.push(c.adapter.slice())),
  );
  assert.deepEqual(adapters[0], adapters[1]);
  assert.deepEqual(adapters[0], adapters[2]);
  // FedIT's all-ones mask is one run: a few bytes in round 1, by reference after.
  assert.ok(
    fedit.rounds[0].clients.every((c) =>
      c.maskMode === "rice-runs" && c.uploadBytes > 4 * fedit.budget &&
      c.uploadBytes <= 4 * fedit.budget + HEADER_MAX + 64
    ),
    JSON.stringify(fedit.rounds[0].clients.map((c) => [c.maskMode, c.uploadBytes])),
  );
  const base = await run("base");
  assert.deepEqual(
    base.rounds[0].clients.map((c) => c.perplexity),
    base.rounds[1].clients.map((c) => c.perplexity),
  );
  assert.ok(base.rounds[0].clients.every((c) => c.uploadBytes === 0 && !c.trained));
  // Every method is evaluated on the same tokens: the frozen base, which has no coordinator's task,
  // too (it once fell back to the default max length); 12 tokens cuts every test example short.
  const short = [
    await run("base", { rounds: 1 }, undefined, 12),
    await run("fedit", { rounds: 1 }, undefined, 12),
  ];
  const tokens = short.map((r) => r.rounds[0].clients.map((c) => c.testTokens));
  assert.deepEqual(tokens[0], tokens[1]);
  assert.ok(tokens[0].every((t, i) => t < fedit.rounds[0].clients[i].testTokens), JSON.stringify(tokens));
  const local = await run("local");
  assert.ok(
    local.rounds[1].meanPerplexity < base.rounds[1].meanPerplexity,
    `${local.rounds[1].meanPerplexity} vs ${base.rounds[1].meanPerplexity}`,
  );
  // Local-only uploads carry the round's metrics and an empty mask: a header, no values.
  assert.ok(
    local.rounds[1].clients.every((c) => c.trained && c.uploadBytes > 0 && c.uploadBytes <= HEADER_MAX),
    JSON.stringify(local.rounds[1].clients.map((c) => c.uploadBytes)),
  );
});

Deno.test("federation: random-mask ablation keeps the budget; e1 ablation expands nobody", async () => {
  const masks: Uint8Array[] = [];
  const rnd = await run(
    "perfit-random-mask",
    { rounds: 1 },
    (_, clients) => clients.forEach((c) => masks.push(c.mask.slice())),
  );
  assert.ok(masks.every((m) => m.reduce((s, v) => s + v, 0) === rnd.budget));
  const e1 = await run("perfit-e1", { rounds: 1 });
  assert.deepEqual(e1.clients.map((c) => c.expansion), [1, 1, 1]);
});

Deno.test("federation: re-running the search every round keeps exact budgets and valid uploads", async () => {
  const kept: number[] = [];
  const r = await run("perfit", { researchEvery: 1 }, (round, clients) => {
    if (round === 2) clients.forEach((c) => kept.push(c.mask.reduce((s, v) => s + v, 0)));
  });
  assert.deepEqual(kept, [r.budget, r.budget, r.budget]);
  assert.ok(r.rounds[1].clients.every((c) => c.uploadBytes >= 4 * r.budget && Number.isFinite(c.perplexity)));
});

Deno.test("federation: FedSA-LoRA shares A (equal after aggregation), keeps B private; FFA-LoRA keeps A at the shared init", async () => {
  const kinds = (v: SimClientView, kind: "A" | "B") =>
    v.layout.entries.filter((e) => e.kind === kind).flatMap((e) =>
      Array.from(v.adapter.subarray(e.offset, e.offset + e.size))
    );
  const seen: SimClientView[][] = [];
  const fedsa = await run(
    "fedsa",
    { rounds: 2 },
    (_, c) => seen.push(c.map((v) => ({ ...v, adapter: v.adapter.slice() }))),
  );
  const last = seen[1];
  assert.deepEqual(kinds(last[1], "A"), kinds(last[0], "A"));
  assert.deepEqual(kinds(last[2], "A"), kinds(last[0], "A"));
  assert.notDeepEqual(kinds(last[1], "B"), kinds(last[0], "B"));
  assert.ok(kinds(last[0], "B").some((x) => x !== 0), "B trained");
  // Only A travels: its values and a header, the fixed A mask by reference after round 1.
  const aSize = last[0].layout.entries.filter((e) => e.kind === "A").reduce((s, e) => s + e.size, 0);
  for (const c of fedsa.rounds[1].clients) {
    assert.equal(c.maskMode, "ref");
    assert.ok(
      c.uploadBytes > 4 * aSize && c.uploadBytes <= 4 * aSize + HEADER_MAX,
      `${c.uploadBytes} vs A ${aSize}`,
    );
  }

  const ffaSeen: SimClientView[][] = [];
  const init: SimClientView[][] = [];
  await run(
    "ffa",
    { rounds: 1 },
    (_, c) => ffaSeen.push(c.map((v) => ({ ...v, adapter: v.adapter.slice() }))),
  );
  await run("base", { rounds: 1 }, (_, c) => init.push(c.map((v) => ({ ...v, adapter: v.adapter.slice() }))));
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(kinds(ffaSeen[0][i], "A"), kinds(init[0][i], "A"), "A frozen at the run's init");
    assert.deepEqual(kinds(ffaSeen[0][i], "B"), kinds(ffaSeen[0][0], "B"), "B aggregated");
  }
  assert.ok(kinds(ffaSeen[0][0], "B").some((x) => x !== 0));
});

Deno.test("federation: HetLoRA trains each tier's whole rank and gives every client the same global, truncated", async () => {
  const seen: SimClientView[][] = [];
  const r = await run(
    "hetlora",
    { rounds: 2 },
    (_, c) => seen.push(c.map((v) => ({ ...v, adapter: v.adapter.slice() }))),
  );
  const unit = rankLayout(seen[0][0].layout, 1).size;
  // Tiers high/mid/low: ranks 2·4, 2·2, 2·1, each trained whole (no budget, no pruning).
  assert.deepEqual(r.clients.map((c) => c.trainableParams), [8 * unit, 4 * unit, 2 * unit]);
  const last = seen[1];
  assert.ok(last.every((v) => v.mask.every((m) => m === 1)));
  const global = rankLayout(last[0].layout, 8);
  const inGlobal = last.map((v) => embed(v.layout, v.adapter, global));
  const lowPositions = embed(last[2].layout, new Uint8Array(last[2].layout.size).fill(1), global);
  // The low-tier client holds the leading components of the one global adapter the others hold too.
  for (let p = 0; p < global.size; p++) {
    if (!lowPositions[p]) continue;
    assert.equal(inGlobal[0][p], inGlobal[2][p]);
    assert.equal(inGlobal[1][p], inGlobal[2][p]);
  }
  // Uploads grow with the rank: the whole own adapter, the fixed mask by reference after round 1.
  const up = r.rounds[1].clients.map((c) => c.uploadBytes);
  assert.ok(r.rounds[1].clients.every((c) => c.maskMode === "ref"));
  for (const [i, units] of [8, 4, 2].entries()) {
    assert.ok(up[i] > 4 * units * unit && up[i] <= 4 * units * unit + HEADER_MAX, JSON.stringify(up));
  }
});

Deno.test("federation: FLoRA uploads its slot, every client downloads the whole stack and merges it", async () => {
  const r = await run("flora", { rounds: 2 });
  const [r1, r2] = r.rounds;
  const unit = r.budget / 2; // rank r = 2
  // Each uploads a fresh LoRA of its tier's rank (8, 4, 2 components), in its own slot.
  for (const [i, units] of [8, 4, 2].entries()) {
    const up = r1.clients[i].uploadBytes;
    assert.ok(up > 4 * units * unit && up <= 4 * units * unit + HEADER_MAX + 64, `${i}: ${up}`);
  }
  assert.ok(r2.clients.every((c) => c.maskMode === "ref"));
  // Everyone receives the same stack: the used components (8 + 4 + 2 of 3 slots of 8) and two
  // bitmasks over all of them (each client's own in its code); a slot's unused A rows are zeros and
  // do not travel.
  const used = 4 * (8 + 4 + 2) * unit, masks = 2 * 4 * Math.ceil(3 * 8 * unit / 32);
  for (const { downloadBytes: d } of r1.clients) {
    assert.ok(d >= used && d <= used + masks + HEADER_MAX, `${d}`);
  }
  // The merged base moves the model: round 2 is better than round 1 on average.
  assert.ok(r2.meanPerplexity < r1.meanPerplexity, `${r2.meanPerplexity} vs ${r1.meanPerplexity}`);
});

Deno.test("federation: a FLoRA client exports its merged base as one LoRA of every stack, and that is the model scored", async () => {
  let views: readonly SimClientView[] = [], exports: Export[] = [];
  const r = await run("flora", { rounds: 2 }, (round, c) => {
    if (round === 2) [views, exports] = [c, c.map((v) => v.exported()!)];
  });
  const cfg = smallSimConfig("flora", { rounds: 2 });
  const stackRank = 3 * 8; // 3 slots of the widest tier's 8 components
  for (const [i, v] of views.entries()) {
    const x = exports[i];
    // Two rounds' stacks side by side would be wider than the projections: the dense change instead.
    const dense = denseRank(rankLayout(v.layout, stackRank));
    assert.ok(2 * stackRank > dense);
    assert.equal(x.layout.rank, dense);
    assert.equal(x.scale, cfg.alpha / cfg.rank);
    const got = await exportedPerplexity(v.id, x, cfg.targets), want = r.rounds[1].clients[i].perplexity;
    assert.ok(Math.abs(got - want) < 1e-4 * want, `${v.id}: ${got} vs ${want}`);
  }
});

Deno.test("federation: perfit-sa searches like PerFIT, shares its mask's A positions and keeps its B", async () => {
  const seen: SimClientView[][] = [];
  const r = await run(
    "perfit-sa",
    { rounds: 2 },
    (_, c) => seen.push(c.map((v) => ({ ...v, mask: v.mask.slice() }))),
  );
  const last = seen[1];
  for (const [i, v] of last.entries()) {
    assert.equal(v.mask.reduce((a, b) => a + b, 0), r.budget, "PerFIT's exact budget");
    const inA = v.layout.entries.filter((e) => e.kind === "A")
      .reduce((a, e) => a + v.mask.subarray(e.offset, e.offset + e.size).reduce((x, y) => x + y, 0), 0);
    // Only the kept A positions travel: their values and a header.
    const up = r.rounds[1].clients[i].uploadBytes;
    assert.ok(inA < r.budget && up > 4 * inA && up <= 4 * inA + HEADER_MAX, `${up} vs ${inA} A positions`);
  }
});

Deno.test("federation: fraction_fit samples a seeded share of the clients each round; the others still get their slice", async () => {
  const r = await run("perfit", { rounds: 2, fractionFit: 0.67 });
  for (const rd of r.rounds) {
    const trained = rd.clients.filter((c) => c.trained);
    assert.equal(trained.length, 2, `round ${rd.round}`);
    assert.ok(trained.every((c) => c.uploadBytes > 0));
    assert.ok(
      rd.clients.filter((c) => !c.trained).every((c) => c.uploadBytes === 0 && Number.isFinite(c.perplexity)),
    );
  }
  const again = await run("perfit", { rounds: 2, fractionFit: 0.67 });
  assert.deepEqual(
    again.rounds.map((x) => x.clients.map((c) => c.trained)),
    r.rounds.map((x) => x.clients.map((c) => c.trained)),
  );
});

Deno.test("federation: FedProx's proximal term keeps a round's update near the adapter it started from", async () => {
  const drift: number[] = [];
  const init: SimClientView[][] = [];
  await run("base", { rounds: 1 }, (_, c) => init.push(c.map((v) => ({ ...v, adapter: v.adapter.slice() }))));
  for (const mu of [0, 50]) {
    await run("local", { rounds: 1, proximalMu: mu }, (_, c) => {
      let d = 0;
      c.forEach((v, i) => v.adapter.forEach((x, j) => (d += (x - init[0][i].adapter[j]) ** 2)));
      drift.push(Math.sqrt(d));
    });
  }
  // Local-only shares nothing, so the term has nothing to pull: it is off there.
  assert.equal(drift[1], drift[0]);
  drift.length = 0;
  for (const mu of [0, 50]) {
    await run("fedit", { rounds: 1, proximalMu: mu }, (_, c) => {
      let d = 0;
      c.forEach((v, i) => v.adapter.forEach((x, j) => (d += (x - init[0][i].adapter[j]) ** 2)));
      drift.push(Math.sqrt(d));
    });
  }
  assert.ok(drift[1] < 0.8 * drift[0], `drift with mu 50 ${drift[1]} vs without ${drift[0]}`);
});

Deno.test("federation: HetLoRA's rank self-pruning shrinks a client's rank for good; its uploads hold only the kept components", async () => {
  const ranks: number[][] = [];
  const zeroBeyond: boolean[][] = [];
  const prune = { decay: 0.5, tailWeight: 1 };
  const r = await run("hetlora", { rounds: 3, rankPruning: prune }, (_, clients) => {
    ranks.push(clients.map((v) => heldRank(v.layout, v.mask)));
    // What a client holds beyond its kept components is zero (nothing of it is uploaded or merged).
    zeroBeyond.push(clients.map((v) => {
      const kept = leadingMask(v.layout, heldRank(v.layout, v.mask));
      return v.adapter.every((x, p) => kept[p] === 1 || x === 0);
    }));
  });
  // Round 1 cannot prune: the tail starts at B = 0, so its norm cannot fall.
  assert.deepEqual(ranks[0], [8, 4, 2]);
  for (let t = 1; t < ranks.length; t++) {
    for (const [i, k] of ranks[t].entries()) {
      const prev = ranks[t - 1][i];
      assert.ok(k === prev || k === prunedRank(prev, prune.decay), `round ${t + 1}: ${prev} → ${k}`);
    }
  }
  assert.ok(
    ranks[2].every((k, i) => k >= 1 && k < ranks[0][i]),
    `every client pruned: ${JSON.stringify(ranks)}`,
  );
  assert.ok(zeroBeyond.every((round) => round.every(Boolean)));
  // The upload of every round holds the rank kept after it: a prune shows in that round's upload,
  // with its new (smaller) mask; an unchanged rank goes by reference.
  const unit = r.budget / 2; // one rank component (r = 2)
  for (const [t, rd] of r.rounds.entries()) {
    for (const [i, c] of rd.clients.entries()) {
      const k = ranks[t][i];
      assert.ok(
        c.uploadBytes > 4 * k * unit && c.uploadBytes <= 4 * k * unit + HEADER_MAX + 64,
        `round ${t + 1} client ${i}: ${c.uploadBytes} B at rank ${k}`,
      );
      if (t > 0) assert.equal(c.maskMode === "ref", k === ranks[t - 1][i], `round ${t + 1} client ${i}`);
    }
  }
  assert.deepEqual(r.clients.map((c) => c.trainableParams), ranks[2].map((k) => k * unit));

  // Off (no keys), the run trains each tier's whole rank as before; with λ = 0 and nothing pruned
  // (checked), the rule's bookkeeping leaves the run bit for bit as it is without it.
  const offRanks: number[][] = [];
  const off = await run(
    "hetlora",
    { rounds: 3 },
    (_, c) => offRanks.push(c.map((v) => heldRank(v.layout, v.mask))),
  );
  assert.deepEqual(offRanks, [[8, 4, 2], [8, 4, 2], [8, 4, 2]]);
  const idleRanks: number[][] = [];
  const idle = await run(
    "hetlora",
    { rounds: 3, rankPruning: { decay: 0.5, tailWeight: 0 } },
    (_, c) => idleRanks.push(c.map((v) => heldRank(v.layout, v.mask))),
  );
  assert.deepEqual(idleRanks, offRanks, "this seed prunes nobody without the tail penalty");
  assert.deepEqual(
    idle.rounds.map((x) => x.clients.map((c) => [c.perplexity, c.uploadBytes])),
    off.rounds.map((x) => x.clients.map((c) => [c.perplexity, c.uploadBytes])),
  );
  assert.notDeepEqual(
    r.rounds[2].clients.map((c) => c.perplexity),
    off.rounds[2].clients.map((c) => c.perplexity),
  );
});

Deno.test("federation: a restarted HetLoRA client keeps its pruned rank: it is the mask the client saved", async () => {
  const m = await tiny();
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const engines = new Map<number, Engine>();
  const engineFor = async (rank: number) => {
    if (!engines.has(rank)) {
      engines.set(rank, await Engine.create(m, { rank, alpha: 4, targets: ["q", "v"] }, { scale: 2 }));
    }
    return engines.get(rank)!;
  };
  try {
    const runId = await createRun(app, {
      baseModel: "tiny",
      model: toHfConfig(m.config),
      lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
      method: "hetlora",
      rounds: 8,
      clientsPerRound: 1,
      quorum: 1,
      roundDeadlineMs: 600_000,
      expansionTiers: { high: 4 },
      train: {
        localSteps: 6,
        batchSize: 4,
        maxLen: 48,
        rankPruning: "on",
        rankDecay: 0.5,
        rankTailWeight: 1,
      },
      seed: 1,
    });
    const storage = new MemoryStorage();
    const sent: { round: number; values: number; ref: boolean }[] = [];
    const route = appFetch(() => app);
    let adapterSize = 0;
    const spy: typeof fetch = (input, init) => {
      const up = /\/rounds\/(\d+)\/update$/.exec(String(input));
      if (up) {
        const u = clientLib.decodeUpdate(init!.body as Uint8Array, adapterSize);
        sent.push({ round: Number(up[1]), values: u.values.length, ref: clientLib.isMaskRef(u) });
      }
      return route(input, init);
    };
    const own = partitionByCategory(data, 1, { seed: 1, testFraction: 0.15 })[0];
    // A new process each time: a new client object and a new trainer, only the storage kept.
    const start = () => {
      const trainer = engineTrainer({
        engines: engineFor,
        tokenizer: m.tokenizer!,
        data: own,
        evaluateAfterTraining: false,
      });
      return FederatedClient.create({
        serverUrl: "http://perfit.test",
        runId,
        tier: "high",
        storage,
        trainer,
        initAdapter: trainer.initAdapter,
        fetch: spy,
        pollMs: 1,
        sleep: () => new Promise((r) => setTimeout(r, 0)),
      });
    };
    let c = await start();
    adapterSize = (await c.task()).adapterSize;
    const unit = adapterSize / 8; // one rank component of the run's rank-8 layout
    while (sent.length < 6 && (sent.at(-1)?.values ?? 8 * unit) === 8 * unit) {
      assert.equal((await c.step()).kind, "trained");
      await app.coordinator.settled();
    }
    const pruned = sent.at(-1)!;
    assert.ok(pruned.values < 8 * unit && pruned.values % unit === 0 && !pruned.ref, JSON.stringify(sent));
    c = await start();
    assert.equal((await c.step()).kind, "trained");
    const next = sent.at(-1)!;
    assert.equal(next.round, pruned.round + 1);
    // The restarted client trains at its pruned rank (or prunes further): never the tier's 8 again.
    assert.ok(next.values <= pruned.values && next.values % unit === 0, JSON.stringify(sent));
    assert.equal(next.ref, next.values === pruned.values);
    // One tier, so the client's layout is the run's: its saved mask holds that rank.
    assert.equal(heldRank(engines.get(8)!.layout, c.mask!), next.values / unit);
  } finally {
    await app.coordinator.settled();
    kv.close();
  }
});
