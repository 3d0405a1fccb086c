/**
 * Greedy generation for the ROUGE-L metric, on the bundled tiny model: every generated token is the
 * argmax of the training graph's own forward pass (runtime/model/llama.ts, LoRA and mask applied unmerged)
 * on the prompt plus the tokens before it; a zero adapter generates what the base does; a row's tokens do
 * not depend on the batch it is in; the saved PEFT folder generates what the in-memory adapter does; EOS
 * ends a row.
 */
import assert from "node:assert/strict";
import { loadModel } from "../runtime/model/load.ts";
import { fromKernelLayout } from "../runtime/model/train_step.ts";
import { buildDecoder, type LoraTensors } from "../runtime/model/llama.ts";
import { adapterLayout, type TargetModule } from "../runtime/model/lora.ts";
import { createSession, Graph, toOnnx } from "../runtime/graph/mod.ts";
import { readPeftAdapter, writePeftAdapter } from "../runtime/export/mod.ts";
import { parseJsonl } from "../runtime/data/mod.ts";
import {
  argmax,
  type ClientAdapter,
  clientRouge,
  GenerateError,
  greedyGenerate,
  openDecoder,
  promptTokens,
} from "../runtime/eval/mod.ts";
import { rougeL } from "../runtime/eval/rouge.ts";

const model = await loadModel(new URL("../models/perfit-tiny", import.meta.url).pathname);
/** The decoder is built from HF-layout weights. */
const hfWeights = fromKernelLayout(model.kernelWeights);
const tok = model.tokenizer!;
const cfg = model.config;
const targets: TargetModule[] = ["q", "k", "v", "o", "gate", "up", "down"];
const spec = { rank: 4, alpha: 8, targets };
const layout = adapterLayout(cfg, spec);
const scale = 8 / 4;

function lcg(seed: number) {
  let s = seed;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5;
}
const r = lcg(7);
// Large enough to move the model's choices, as a trained adapter does.
const adapter = Float32Array.from({ length: layout.size }, () => r() * 0.6);
const mask = new Uint8Array(layout.size).map((_, i) => ((i * 2654435761) >>> 0) % 3 === 0 ? 0 : 1);
const personal: ClientAdapter = { layout, adapter, scale, mask };

const lines =
  (await Deno.readTextFile(new URL("../datasets/lexicon-instruct/dictionary.jsonl", import.meta.url)))
    .trim().split("\n");
const examples = [
  ...parseJsonl(lines.slice(0, 2).join("\n")),
  ...parseJsonl(
    (await Deno.readTextFile(new URL("../datasets/lexicon-instruct/translate_deu.jsonl", import.meta.url)))
      .trim().split("\n").slice(0, 2).join("\n"),
  ),
];
const prompts = examples.map((ex) => promptTokens(ex, tok, 64));
const gopts = { maxNewTokens: 10, eosTokenId: tok.eosTokenId, padTokenId: tok.padTokenId };

/** Logits [S, V] of one unpadded row from the training graph builder, LoRA applied unmerged with its mask. */
async function forwardLogits(ids: number[], a?: ClientAdapter): Promise<Float32Array> {
  const g = new Graph();
  const inputIds = g.input("input_ids", "i64", [1, "seq"]);
  const attentionMask = g.input("attention_mask", "f32", [1, "seq"]);
  const kernel = model.kernelWeights;
  const cache = new Map<string, ReturnType<Graph["constant"]>>();
  const w = (name: string, shape: number[]) => {
    if (!cache.has(name)) cache.set(name, g.constant(kernel.get(name)!.data, shape));
    return cache.get(name)!;
  };
  const lora = (layer: number, module: TargetModule): LoraTensors | undefined => {
    if (!a) return undefined;
    const find = (kind: "A" | "B") =>
      a.layout.entries.find((e) => e.layer === layer && e.module === module && e.kind === kind)!;
    const [eA, eB] = [find("A"), find("B")];
    const t = (e: typeof eA) => g.constant(a.adapter.slice(e.offset, e.offset + e.size), e.shape);
    const m = (e: typeof eA) =>
      g.constant(Float32Array.from(a.mask!.subarray(e.offset, e.offset + e.size)), e.shape);
    return { A: t(eA), B: t(eB), mA: m(eA), mB: m(eB) };
  };
  const out = buildDecoder(g, cfg, w, { inputIds, attentionMask }, { lora, loraScale: a?.scale });
  g.output("logits", out.logits);
  const s = await createSession(toOnnx(g), { noCache: true });
  try {
    const res = await s.run({
      input_ids: { data: BigInt64Array.from(ids, BigInt), dims: [1, ids.length] },
      attention_mask: { data: new Float32Array(ids.length).fill(1), dims: [1, ids.length] },
    });
    return res.logits.data as Float32Array;
  } finally {
    await s.release();
  }
}

async function generate(a: ClientAdapter | undefined, ps: number[][], o = gopts, batchSize?: number) {
  const dec = await openDecoder(cfg, hfWeights, a);
  try {
    return await greedyGenerate(dec, ps, { ...o, batchSize });
  } finally {
    await dec.release();
  }
}

Deno.test({
  name: "eval_generate: each greedy token is the argmax of the training graph's forward pass",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const gen = await generate(personal, prompts);
    const V = cfg.vocabSize;
    let checked = 0;
    for (let b = 0; b < prompts.length; b++) {
      const seq = [...prompts[b], ...gen[b]];
      const logits = await forwardLogits(seq, personal);
      for (let k = 0; k <= gen[b].length; k++) {
        const t = prompts[b].length - 1 + k;
        if (t >= seq.length) break;
        const want = k < gen[b].length ? gen[b][k] : tok.eosTokenId;
        // A row shorter than maxNewTokens stopped at EOS: EOS is the argmax after its last token.
        if (k === gen[b].length && gen[b].length === gopts.maxNewTokens) break;
        assert.equal(argmax(logits, t * V, V), want, `row ${b}, new token ${k}`);
        checked++;
      }
    }
    assert.ok(checked >= prompts.length * 2, `only ${checked} tokens checked`);
  },
});

Deno.test({
  name: "eval_generate: zero adapter = base; the adapter matters; batching does not change a row",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const base = await generate(undefined, prompts);
    const zeroB = adapter.slice();
    for (const e of layout.entries) if (e.kind === "B") zeroB.fill(0, e.offset, e.offset + e.size);
    assert.deepEqual(await generate({ layout, adapter: zeroB, scale }, prompts), base);
    const personalGen = await generate(personal, prompts);
    assert.notDeepEqual(personalGen, base);
    // Rows of different prompt lengths, batched (left padding) or one at a time.
    assert.ok(new Set(prompts.map((p) => p.length)).size > 1);
    const alone = [];
    for (const p of prompts) alone.push(...await generate(personal, [p]));
    assert.deepEqual(alone, personalGen);
    assert.deepEqual(await generate(personal, prompts, gopts, 3), personalGen);
  },
});

Deno.test({
  name: "eval_generate: the saved PEFT folder generates what the in-memory adapter does; EOS ends a row",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-gen-" });
    try {
      await writePeftAdapter(dir, { layout, adapter, mask, scale, baseModel: "models/perfit-tiny" });
      const read = await readPeftAdapter(dir);
      const want = await generate(personal, prompts);
      assert.deepEqual(
        await generate({ layout: read.layout, adapter: read.adapter, scale: read.scale }, prompts),
        want,
      );

      // Whatever token a row produces third, call it EOS: the row stops before it.
      const row = want.findIndex((g) => g.length >= 3);
      assert.ok(row >= 0);
      const stop = want[row][2];
      const cut = await generate(personal, [prompts[row]], { ...gopts, eosTokenId: stop });
      assert.deepEqual(cut[0], want[row].slice(0, want[row].indexOf(stop)));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "eval_generate: clientRouge scores decoded completions; bad input is refused",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const res = await clientRouge(model, tok, { id: "c", test: examples }, personal, {
      maxExamples: 3,
      maxNewTokens: 10,
      maxLen: 64,
    }, { samples: 3 });
    assert.equal(res.examples, 3);
    const gen = await generate(personal, prompts.slice(0, 3));
    const fs = gen.map((g, i) => rougeL(examples[i].response, tok.decode(g)).f);
    assert.ok(Math.abs(res.f! - fs.reduce((a, b) => a + b, 0) / 3) < 1e-12);
    assert.deepEqual(res.samples.map((s) => s.prediction), gen.map((g) => tok.decode(g)));
    const none = await clientRouge(model, tok, { id: "e", test: [] }, undefined, {
      maxExamples: 3,
      maxNewTokens: 10,
      maxLen: 64,
    });
    assert.equal(none.f, null);
    await assert.rejects(
      () =>
        clientRouge(model, tok, { id: "c", test: examples }, undefined, {
          maxExamples: 0,
          maxNewTokens: 1,
          maxLen: 64,
        }),
      GenerateError,
    );
    const dec = await openDecoder(cfg, hfWeights);
    try {
      await assert.rejects(() => greedyGenerate(dec, [[]], gopts), GenerateError);
      await assert.rejects(() => greedyGenerate(dec, [[cfg.vocabSize]], gopts), GenerateError);
      await assert.rejects(
        () => greedyGenerate(dec, [prompts[0]], { ...gopts, maxNewTokens: 0 }),
        GenerateError,
      );
      await assert.rejects(
        () => greedyGenerate(dec, [prompts[0]], { ...gopts, maxNewTokens: cfg.maxPositionEmbeddings }),
        GenerateError,
      );
    } finally {
      await dec.release();
    }
    // The prompt is what training feeds before the response: [BOS?] prompt, at most maxLen - 1 tokens.
    assert.deepEqual(promptTokens(examples[0], tok, 64), tok.encode(examples[0].prompt));
    const short = promptTokens(examples[0], tok, 8);
    assert.deepEqual(short, tok.encode(examples[0].prompt).slice(-7));
  },
});
