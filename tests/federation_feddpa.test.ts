/**
 * FedDPA (`feddpa`): a global and a local rank-r adapter side by side in one rank-2r LoRA. What is
 * shared (only the global half, its mask once and by reference after), the two-phase round in a
 * 2-client simulation, what the combination weight does to evaluation, the instance-wise weighting,
 * and the PEFT export of the mix (with PyTorch + PEFT when tests/reference/peft_setup.sh made them).
 */
import assert from "node:assert/strict";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { Engine, loadModel } from "../runtime/model/engine.ts";
import { type AdapterLayout, adapterLayout, initAdapter, type TargetModule } from "../runtime/model/lora.ts";
import { makeBatches } from "../runtime/data/batches.ts";
import { tokenizeExample } from "../runtime/data/tokenize.ts";
import { collate } from "../runtime/data/batches.ts";
import { embed, extract, rankLayout } from "../runtime/perfit/layout.ts";
import { partitionByCategory } from "../runtime/federation/partition.ts";
import { type SimClientView, simulate } from "../runtime/federation/simulate.ts";
import { inProcessCoordinator } from "../runtime/federation/coordinator_link.ts";
import { DEFAULT_SIM, type SimConfig } from "../runtime/federation/types.ts";
import { strategyFor } from "../runtime/federation/strategies.ts";
import { adapterWeights, combineDual, leadMask } from "../runtime/client/feddpa.ts";
import { LocalLearner } from "../runtime/client/local_update.ts";
import { engineTrainer, initSeed } from "../runtime/client/engine_trainer.ts";
import type { TaskInfo } from "../runtime/client/federated_client.ts";
import { parseTrainSettings } from "../runtime/client/train_settings.ts";
import { decodeUpdate, isMaskRef } from "../runtime/client/wire.ts";
import { forEachBit, popcountBits } from "../runtime/kernels/bits.ts";
import { writePeftAdapter } from "../runtime/export/write.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { ApiError } from "../server/errors.ts";
import { runBody } from "./server_helpers.ts";
import { referencePython } from "./reference/python.ts";
import { federationTinyModel, wordData } from "./federation_fixtures.ts";

const HEADER_MAX = 320;
const R = 2;

const tiny = federationTinyModel;
const data = wordData(40);

/** A seeded adapter with every position non-zero (B too, unlike a fresh LoRA). */
function randomAdapter(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from(
    { length: n },
    () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5,
  );
}

/** The trailing r rank components of a rank-2r adapter as a rank-r adapter (the local one alone). */
function trailing(layout: AdapterLayout, a: Float32Array, r: number): Float32Array {
  const small = rankLayout(layout, r);
  const out = new Float32Array(small.size);
  layout.entries.forEach((e, k) => {
    const s = small.entries[k];
    if (e.kind === "A") out.set(a.subarray(e.offset + r * e.shape[1], e.offset + e.size), s.offset);
    else {
      for (let row = 0; row < e.shape[0]; row++) {
        out.set(a.subarray(e.offset + row * 2 * r + r, e.offset + (row + 1) * 2 * r), s.offset + row * r);
      }
    }
  });
  return out;
}

const partOf = (v: Float32Array, m: Uint8Array, want: 0 | 1) => Array.from(v).filter((_, i) => m[i] === want);

Deno.test("feddpa: the strategy shares the leading r rank components, and the layout helpers place them", () => {
  const s = strategyFor("feddpa");
  assert.equal(s.deployed && s.trains && s.aggregates && s.personalMask && s.dual, true);
  assert.equal(s.shares, "lead");
  assert.equal(s.expands || s.denseMask, false);
  const cfg = { ...DEFAULT_SIM };
  const L = adapterLayout(
    { hiddenSize: 8, numHeads: 2, numKvHeads: 1, headDim: 4, intermediateSize: 12, numLayers: 2 } as never,
    { rank: 2 * R, alpha: cfg.alpha, targets: ["q", "v", "down"] },
  );
  const lead = leadMask(L, R);
  // The global adapter is exactly where a rank-r layout sits inside the rank-2r one.
  const small = rankLayout(L, R);
  assert.deepEqual(lead, embed(small, new Uint8Array(small.size).fill(1), L));
  assert.equal(lead.reduce((a, b) => a + b, 0), L.size / 2);
  const a = randomAdapter(L.size, 7);
  const g0 = combineDual(L, a, R, 0);
  const kinds = new Uint8Array(L.size);
  for (const e of L.entries) if (e.kind === "B") kinds.fill(1, e.offset, e.offset + e.size);
  for (let i = 0; i < L.size; i++) {
    // Weight 0 on local: B_l columns zero, everything else as it was.
    const want: number = kinds[i] && !lead[i] ? 0 : a[i];
    assert.ok(g0[i] === want, `position ${i}: ${g0[i]} vs ${want}`);
  }
  const w = adapterWeights(L, R, 0.25, 0.75);
  for (let i = 0; i < L.size; i++) assert.equal(w[i], !kinds[i] ? 1 : lead[i] ? 0.25 : 0.75);
  assert.throws(() => leadMask(rankLayout(L, 3), R), /rank-2r layout/);
});

Deno.test("feddpa: runs need expansion 2 in every tier (the default); its train keys are validated", () => {
  const body = (over: Record<string, unknown>) => ({ ...runBody("fedit"), method: "feddpa", ...over });
  assert.deepEqual(parseRunConfig(body({})).expansionTiers, { base: 2 });
  assert.deepEqual(parseRunConfig(body({ expansionTiers: { a: 2, b: 2 } })).expansionTiers, { a: 2, b: 2 });
  for (const tiers of [{ low: 1 }, { a: 2, b: 4 }]) {
    assert.throws(
      () => parseRunConfig(body({ expansionTiers: tiers })),
      (e) => e instanceof ApiError && e.status === 422 && /every expansion tier must be 2/.test(e.message),
    );
  }
  // FedIT still refuses expanded tiers with its own message.
  assert.throws(() => parseRunConfig({ ...runBody("fedit"), expansionTiers: { a: 2 } }), /must be 1/);
  const t = parseTrainSettings({ localWeight: 0, combine: "instance", instanceRefs: 3 });
  assert.deepEqual([t.localWeight, t.localTrainWeight, t.combine, t.instanceRefs], [0, 0.5, "instance", 3]);
  assert.throws(
    () => parseTrainSettings({ localTrainWeight: 0 }),
    /localTrainWeight must be a number in \(0, 1\]/,
  );
  assert.throws(
    () => parseTrainSettings({ combine: "dynamic" }),
    /combine must be one of "fixed", "instance"/,
  );
  assert.throws(() => parseTrainSettings({ localWeight: 1.5 }), /localWeight must be a number in \[0, 1\]/);
});

Deno.test("feddpa: the combination weight sets what evaluation sees (0 on local = the global adapter alone)", async () => {
  const m = await tiny();
  const targets: TargetModule[] = ["q", "v"];
  const alpha = 4;
  const dual = await Engine.create(m, { rank: 2 * R, alpha, targets, baseRank: R });
  const plain = await Engine.create(m, { rank: R, alpha, targets });
  const L = dual.layout;
  const a = randomAdapter(L.size, 11).map((v) => v * 0.5);
  const [batch] = makeBatches(data.slice(0, 6), m.tokenizer!, { maxLen: 32, batchSize: 6, shuffle: false });
  const nll = async (e: Engine, x: Float32Array) => (await e.evalNll(batch, x)).nllSum;
  const globalAlone = await nll(plain, extract(L, a, rankLayout(L, R)));
  const localAlone = await nll(plain, trailing(L, a, R));
  const close = (x: number, y: number, what: string) =>
    assert.ok(Math.abs(x - y) <= 1e-4 * Math.abs(y), `${what}: ${x} vs ${y}`);
  close(await nll(dual, combineDual(L, a, R, 0)), globalAlone, "weight 0 on local");
  close(await nll(dual, combineDual(L, a, R, 1)), localAlone, "weight 1 on local");
  const half = await nll(dual, combineDual(L, a, R, 0.5));
  assert.ok(Math.abs(half - globalAlone) > 1e-3 && Math.abs(half - localAlone) > 1e-3, `${half}`);

  // Through the client's trainer: the run's `train.localWeight` is what its evaluation uses.
  const trainer = engineTrainer({
    model: m,
    tokenizer: m.tokenizer!,
    data: { id: "c", train: data.slice(0, 8), test: data.slice(0, 6) },
    backend: "node",
  });
  const task = (localWeight: number): TaskInfo => ({
    run: "r",
    round: 1,
    status: "train",
    deadline: null,
    method: "feddpa",
    baseModel: "tiny",
    lora: { rank: R, alpha, targets },
    tier: "base",
    expansion: 2,
    rank: 2 * R,
    budget: L.size,
    adapterSize: L.size,
    seed: 1,
    globalRound: 0,
    train: { maxLen: 32, batchSize: 6, localWeight },
    plan: { search: false, randomMask: false },
  });
  const evalNll = async (w: number) => (await trainer.evaluate(task(w), a, null)).nllSum;
  close(await evalNll(0), globalAlone, "trainer, localWeight 0");
  close(await evalNll(1), localAlone, "trainer, localWeight 1");
  close(await evalNll(0.5), half, "trainer, localWeight 0.5");
});

Deno.test("feddpa: instance-wise weighting gives an instance identical to the client's data max weight on the global adapter", async () => {
  const m = await tiny();
  const engine = await Engine.create(m, { rank: 2 * R, alpha: 4, targets: ["q", "v"], baseRank: R });
  const L = engine.layout;
  const a = randomAdapter(L.size, 5).map((v) => v * 0.5);
  const x = data[0], y = { prompt: "A much longer prompt about the word tree and houses.", response: "ok" };
  // The hidden state at the last prompt token does not depend on what it is batched with.
  const opts = { tokenizer: m.tokenizer!, batchSize: 2, maxLen: 48 };
  const tx = tokenizeExample(x, m.tokenizer!, 48), ty = tokenizeExample(y, m.tokenizer!, 48);
  const pickOf = (b: ReturnType<typeof collate>) => {
    const p = new Float32Array(b.batch * b.seq);
    for (let r = 0; r < b.batch; r++) {
      p[r * b.seq + b.lossMask.subarray(r * b.seq, (r + 1) * b.seq).indexOf(1)] = 1;
    }
    return p;
  };
  const alone = collate([tx], 0, { padMultiple: 8 }), both = collate([ty, tx], 0, { padMultiple: 8 });
  const h1 = await engine.hiddenAt(alone, pickOf(alone), a);
  const h2 = await engine.hiddenAt(both, pickOf(both), a);
  const H = h1.length;
  assert.equal(h2.length, 2 * H);
  for (let k = 0; k < H; k++) assert.ok(Math.abs(h1[k] - h2[H + k]) < 1e-4, `hidden ${k}`);
  assert.ok(h1.some((v, k) => Math.abs(v - h2[k]) > 1e-3), "another instance has another state");
  await assert.rejects(() => engine.hiddenAt(alone, new Float32Array(alone.seq), a), /exactly one position/);

  // Train = test = one instance: cosine 1, so the global weight is maxWeight and the local 1 − it.
  const learner = new LocalLearner(
    { id: "c", train: [x], test: [x], categories: {} },
    "base",
    2,
    engine,
    R,
    initAdapter(L, 1),
    opts,
    1,
  );
  const mask = new Uint8Array(L.size).fill(1);
  const inst = await learner.evaluateInstanceWise(a, mask, R, { maxWeight: 0.4, refs: 5, seed: 3 });
  assert.equal(inst.globalWeights.length, 1);
  assert.ok(Math.abs(inst.globalWeights[0] - 0.4) < 1e-5, `${inst.globalWeights}`);
  const fixed = await learner.evaluateWith(combineDual(L, a, R, 0.6), mask);
  assert.equal(inst.tokens, fixed.tokens);
  assert.ok(Math.abs(inst.nllSum - fixed.nllSum) < 1e-4 * fixed.nllSum, `${inst.nllSum} vs ${fixed.nllSum}`);
  const other = await learner.evaluateWith(combineDual(L, a, R, 0.5), mask);
  assert.ok(Math.abs(other.nllSum - fixed.nllSum) > 1e-4, "the weight matters");
});

async function simulateDpa(
  over: Partial<SimConfig>,
  inspect?: (r: number, c: readonly SimClientView[]) => void,
) {
  const m = await tiny();
  const cfg: SimConfig = {
    ...DEFAULT_SIM,
    method: "feddpa",
    rounds: 2,
    localSteps: 4,
    rank: R,
    alpha: 4,
    clientTiers: ["high", "low"],
    seed: 1,
    ...over,
  };
  const engines = new Map<number, Engine>();
  const link = await inProcessCoordinator();
  const uploads: { round: number; body: Uint8Array }[] = [];
  try {
    const result = await simulate(cfg, {
      clients: partitionByCategory(data, 1, { seed: 1, testFraction: 0.2 }),
      tokenizer: m.tokenizer!,
      engineFactory: async (rank) => {
        if (!engines.has(rank)) {
          engines.set(
            rank,
            await Engine.create(m, { rank, alpha: cfg.alpha, targets: cfg.targets, baseRank: R }),
          );
        }
        return engines.get(rank)!;
      },
      batchSize: 4,
      maxLen: 40,
      inspect,
      coordinator: {
        ...link,
        fetch: (input, init) => {
          const up = /\/rounds\/(\d+)\/update$/.exec(String(input));
          const body = init?.body;
          if (up && body instanceof Uint8Array) {
            uploads.push({ round: Number(up[1]), body: Uint8Array.from(body as Uint8Array) });
          }
          return link.fetch(input, init);
        },
      },
    });
    return { result, uploads };
  } finally {
    await link.close();
  }
}

Deno.test("feddpa: a 2-client federation uploads only the global half; the local half trains from round 2 and stays home", async () => {
  const seen: SimClientView[][] = [];
  const { result: r, uploads } = await simulateDpa(
    {},
    (_, c) => seen.push(c.map((v) => ({ ...v, adapter: v.adapter.slice() }))),
  );
  assert.deepEqual(r.clients.map((c) => c.expansion), [2, 2], "rank 2r whatever the tier");
  const L = seen[0][0].layout;
  assert.equal(L.rank, 2 * R);
  const lead = leadMask(L, R);
  const half = L.size / 2;
  assert.deepEqual(r.clients.map((c) => c.trainableParams), [L.size, L.size], "both adapters train");
  const Bl = new Uint8Array(L.size);
  for (const e of L.entries) if (e.kind === "B") Bl.fill(1, e.offset, e.offset + e.size);
  for (let i = 0; i < L.size; i++) Bl[i] &= 1 - lead[i];
  const init = initAdapter(L, initSeed(1));
  for (const v of seen[0]) {
    // Round 1 trains the global adapter alone: the local adapter is still at LoRA's init (B = 0).
    assert.deepEqual(partOf(v.adapter, lead, 0), partOf(init, lead, 0));
    assert.ok(partOf(v.adapter, Bl, 1).every((x) => x === 0));
  }
  for (const round of [0, 1]) {
    // The aggregated global halves agree across clients after every round.
    assert.deepEqual(partOf(seen[round][1].adapter, lead, 1), partOf(seen[round][0].adapter, lead, 1));
  }
  const localOf = (v: SimClientView) => partOf(v.adapter, lead, 0);
  assert.ok(partOf(seen[1][0].adapter, Bl, 1).some((x) => x !== 0), "local B trained in round 2");
  assert.notDeepEqual(localOf(seen[1][0]), localOf(seen[1][1]), "local halves are each client's own");

  // What travelled: round 1 sends the global half's mask, round 2 names it; only its values go.
  assert.deepEqual(uploads.map((u) => u.round), [1, 1, 2, 2]);
  const decoded = uploads.map((u) => decodeUpdate(u.body, L.size));
  for (const [k, d] of decoded.entries()) {
    assert.equal(d.values.length, half, `upload ${k} carries the global half's values only`);
    assert.equal(isMaskRef(d), uploads[k].round === 2);
    if (!isMaskRef(d)) {
      assert.equal(popcountBits(d.maskBits), half);
      forEachBit(
        d.maskBits,
        (p) => assert.equal(lead[p], 1, `uploaded position ${p} is in the global adapter`),
      );
    }
  }
  for (const c of r.rounds[1].clients) {
    assert.equal(c.maskMode, "ref");
    assert.ok(c.uploadBytes > 4 * half && c.uploadBytes <= 4 * half + HEADER_MAX, `${c.uploadBytes}`);
  }
  // The round-2 aggregate is the sample-weighted mean of exactly those uploads.
  const [u0, u1] = decoded.slice(2);
  const agg = partOf(seen[1][0].adapter, lead, 1);
  for (let k = 0; k < half; k++) {
    const want = (u0.samples * u0.values[k] + u1.samples * u1.values[k]) / (u0.samples + u1.samples);
    assert.ok(Math.abs(agg[k] - want) < 1e-5, `aggregate ${k}: ${agg[k]} vs ${want}`);
  }
  // The local values of round 2 are in no upload.
  const sent = new Set(decoded.flatMap((d) => Array.from(d.values)));
  assert.ok(partOf(seen[1][0].adapter, Bl, 1).filter((x) => x !== 0).every((x) => !sent.has(x)));
  assert.ok(
    r.rounds.every((rd) => rd.clients.every((c) => Number.isFinite(c.perplexity) && c.perplexity > 1)),
  );

  // Instance-wise weighting changes evaluation only: the same training, other perplexities.
  const seenI: SimClientView[][] = [];
  const { result: ri } = await simulateDpa(
    { dpa: { ...DEFAULT_SIM.dpa, combine: "instance" } },
    (_, c) => seenI.push(c.map((v) => ({ ...v, adapter: v.adapter.slice() }))),
  );
  assert.deepEqual(seenI[1].map((v) => Array.from(v.adapter)), seen[1].map((v) => Array.from(v.adapter)));
  const ppl = (x: typeof r) => x.rounds[1].clients.map((c) => c.perplexity);
  assert.ok(ppl(ri).every(Number.isFinite));
  assert.notDeepEqual(ppl(ri), ppl(r));
});

const findPython = () => referencePython("PERFIT_PEFT_PYTHON", "venv-peft", "torch, peft, transformers");
const python = findPython();
if (!python) {
  console.warn(
    "federation_feddpa: PEFT check SKIPPED, no Python with torch+peft+transformers (tests/reference/peft_setup.sh)",
  );
}

Deno.test({
  name: "feddpa: the mixed adapter exports as one rank-2r PEFT LoRA that PeftModel loads, with our NLL",
  ignore: python === null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-feddpa-peft-" });
    try {
      const base = `${dir}/base`;
      const cfg = await generateTinyModel(base, { seed: 21, config: { tieWordEmbeddings: false } });
      const targets: TargetModule[] = ["q", "k", "v", "o", "gate", "up", "down"];
      const alpha = 6;
      const layout = adapterLayout(cfg, { rank: 2 * R, alpha, targets });
      const mixed = combineDual(layout, randomAdapter(layout.size, 9), R, 0.3);
      await writePeftAdapter(`${dir}/adapter`, { layout, adapter: mixed, scale: alpha / R, baseModel: base });
      const conf = JSON.parse(await Deno.readTextFile(`${dir}/adapter/adapter_config.json`));
      assert.equal(conf.r, 2 * R);
      const model = await loadModel(base);
      const [batch] = makeBatches(data.slice(0, 3), model.tokenizer!, {
        maxLen: 40,
        batchSize: 3,
        shuffle: false,
      });
      const B = batch.batch, S = batch.seq, V = cfg.vocabSize;
      const ids = Array.from(
        { length: B },
        (_, b) => Array.from({ length: S }, (_, t) => Number(batch.inputIds[b * S + t])),
      );
      const am = Array.from(
        { length: B },
        (_, b) => Array.from({ length: S }, (_, t) => batch.attentionMask[b * S + t]),
      );
      await Deno.writeTextFile(`${dir}/input.json`, JSON.stringify({ input_ids: ids, attention_mask: am }));
      const out = await new Deno.Command(python!, {
        args: [
          new URL("./reference/peft_logits.py", import.meta.url).pathname,
          base,
          `${dir}/adapter`,
          `${dir}/input.json`,
          `${dir}/logits.f32`,
        ],
        env: { HF_HUB_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1" },
      }).output();
      assert.ok(out.success, new TextDecoder().decode(out.stderr).slice(-3000));
      const logits = new Float32Array((await Deno.readFile(`${dir}/logits.f32`)).buffer);
      assert.equal(logits.length, B * S * V);
      let nll = 0;
      for (let b = 0; b < B; b++) {
        for (let t = 0; t + 1 < S; t++) {
          if (!batch.lossMask[b * S + t]) continue;
          const row = logits.subarray((b * S + t) * V, (b * S + t + 1) * V);
          const mx = Math.max(...row);
          let z = 0;
          for (const x of row) z += Math.exp(x - mx);
          nll += Math.log(z) + mx - row[ids[b][t + 1]];
        }
      }
      const engine = await Engine.create(model, { rank: 2 * R, alpha, targets, baseRank: R });
      const ours = (await engine.evalNll(batch, mixed)).nllSum;
      assert.ok(Math.abs(nll - ours) / ours < 1e-4, `PEFT NLL ${nll} vs engine ${ours}`);
      console.log(`federation_feddpa: PEFT NLL ${nll.toFixed(5)} vs engine ${ours.toFixed(5)}`);
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
