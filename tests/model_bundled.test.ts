/**
 * The bundled demo base model (models/perfit-tiny, pre-trained by scripts/pretrain.ts) loads through the
 * same loader as hub models and is a real language model: on held-out lexicon records (line index not
 * 0 mod 4, so never seen in pre-training) its perplexity is far below a same-shape random init.
 */
import assert from "node:assert/strict";
import { loadModel } from "../runtime/model/load.ts";
import { Engine } from "../runtime/model/engine.ts";
import { initAdapter } from "../runtime/model/lora.ts";
import { initWeights } from "../runtime/model/tiny.ts";
import { toKernelLayout } from "../runtime/model/train_step.ts";
import type { Batch } from "../runtime/model/engine.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("model_bundled: perfit-tiny loads, fits the 20 MB budget and models unseen lexicon text", async () => {
  const dir = `${ROOT}models/perfit-tiny`;
  const size = [...Deno.readDirSync(dir)].reduce((a, e) => a + Deno.statSync(`${dir}/${e.name}`).size, 0);
  assert.ok(size <= 20 * 2 ** 20, `bundled model is ${size} bytes`);
  const model = await loadModel(dir);
  const tok = model.tokenizer!;
  assert.equal(tok.vocabSize, model.config.vocabSize);

  const texts: string[] = [];
  for (const f of ["computing.jsonl", "translate_fra.jsonl", "dictionary.jsonl"]) {
    const lines = (await Deno.readTextFile(`${ROOT}datasets/lexicon-instruct/${f}`)).split("\n");
    // Lines 1, 5, 9, 13: index 1 mod 4, never part of the pre-training text.
    for (const i of [1, 5, 9, 13]) {
      const r = JSON.parse(lines[i]);
      texts.push(`${r.instruction}\n${r.response}`);
    }
  }
  const seq = 64;
  const rows = texts.map((t) => tok.encode(t).concat(tok.eosTokenId).slice(0, seq));
  const n = rows.length * seq;
  const batch: Batch = {
    inputIds: new BigInt64Array(n).fill(BigInt(tok.padTokenId)),
    attentionMask: new Float32Array(n),
    lossMask: new Float32Array(n),
    batch: rows.length,
    seq,
  };
  rows.forEach((r, b) =>
    r.forEach((id, t) => {
      batch.inputIds[b * seq + t] = BigInt(id);
      batch.attentionMask[b * seq + t] = 1;
      if (t + 1 < r.length) batch.lossMask[b * seq + t] = 1;
    })
  );
  const spec = { rank: 2, alpha: 4, targets: ["q" as const] };
  const ppl = async (m: typeof model) => {
    const e = await Engine.create(m, spec, { backend: "node" });
    const r = await e.evalNll(batch, initAdapter(e.layout, 0));
    return Math.exp(r.nllSum / r.tokens);
  };
  const trained = await ppl(model);
  const random = await ppl({
    ...model,
    kernelWeights: toKernelLayout(model.config, initWeights(model.config, 1)),
  });
  assert.ok(random > 1000, `random-init perplexity ${random}`);
  console.log(`model_bundled: perplexity ${trained.toFixed(1)} (random init ${random.toFixed(0)})`);
  assert.ok(trained < 150, `bundled model perplexity on unseen records ${trained}`);
});
