// deno-lint-ignore-file no-explicit-any -- Transformers.js pipeline options and outputs are untyped here
/**
 * Merged-model export: the ONNX decoder of (base + scale * B@A) gives the same response-token NLL as
 * our training engine on base + adapter (with the mask), its KV cache path matches the full forward,
 * and Transformers.js loads the folder offline and generates exactly our greedy continuation.
 */
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { loadModel } from "../runtime/model/load.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { Engine } from "../runtime/model/engine.ts";
import { makeBatches, parseJsonl } from "../runtime/data/mod.ts";
import { writeMergedModel } from "../runtime/export/mod.ts";

type Feeds = Record<string, ort.Tensor>;

function feeds(
  ids: number[][],
  mask: number[][],
  past: number,
  kv: Feeds | null,
  layers: number,
  kvHeads: number,
  headDim: number,
): Feeds {
  const B = ids.length, S = ids[0].length, T = mask[0].length;
  const f: Feeds = {
    input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.flat().map(BigInt)), [B, S]),
    attention_mask: new ort.Tensor("int64", BigInt64Array.from(mask.flat().map(BigInt)), [B, T]),
    position_ids: new ort.Tensor(
      "int64",
      BigInt64Array.from(ids.flatMap((row) => row.map((_, i) => BigInt(past + i)))),
      [B, S],
    ),
  };
  for (let l = 0; l < layers; l++) {
    for (const k of ["key", "value"]) {
      f[`past_key_values.${l}.${k}`] = kv?.[`present.${l}.${k}`] ??
        new ort.Tensor("float32", new Float32Array(0), [B, kvHeads, 0, headDim]);
    }
  }
  return f;
}

Deno.test({
  name: "export_merged: ONNX decoder matches the engine, its KV cache, and Transformers.js generation",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-export-" });
    try {
      const base = `${dir}/base`, out = `${dir}/merged`;
      const cfg = await generateTinyModel(base, { seed: 11 });
      // Expanded rank 4 pruned to a rank-2 budget: scale = alpha / baseRank = 8 / 2.
      const spec = { rank: 4, alpha: 8, targets: ["q", "v", "o", "down"] as ("q" | "v" | "o" | "down")[] };
      const layout = adapterLayout(cfg, spec);
      let s = 3;
      const adapter = Float32Array.from(
        { length: layout.size },
        () => (((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5) * 2,
      );
      const mask = new Uint8Array(layout.size).map((_, i) => ((i * 2654435761) >>> 0) % 2);
      const scale = 8 / 2;
      const res = await writeMergedModel(out, { baseDir: base, layout, adapter, mask, scale });
      assert.deepEqual(
        res.files.filter((f) => f !== "special_tokens_map.json" && f !== "generation_config.json").sort(),
        [
          "config.json",
          "model.safetensors",
          "onnx/model.onnx",
          "tokenizer.json",
          "tokenizer_config.json",
        ],
      );

      // 1. Same NLL as the engine on base + masked adapter.
      const model = await loadModel(base);
      const engine = await Engine.create(model, spec, { scale });
      const text = (await Deno.readTextFile("datasets/lexicon-instruct/acronyms.jsonl")).trim().split("\n")
        .slice(0, 3).join("\n");
      const [batch] = makeBatches(parseJsonl(text), model.tokenizer!, {
        maxLen: 40,
        batchSize: 3,
        shuffle: false,
      });
      const ref = await engine.evalNll(batch, adapter, mask);
      const session = await ort.InferenceSession.create(`${out}/onnx/model.onnx`);
      const ids: number[][] = [], am: number[][] = [];
      for (let b = 0; b < batch.batch; b++) {
        ids.push(Array.from({ length: batch.seq }, (_, t) => Number(batch.inputIds[b * batch.seq + t])));
        am.push(Array.from({ length: batch.seq }, (_, t) => batch.attentionMask[b * batch.seq + t]));
      }
      const full = await session.run(feeds(ids, am, 0, null, cfg.numLayers, cfg.numKvHeads, cfg.headDim));
      const logits = full.logits.data as Float32Array;
      const V = cfg.vocabSize;
      let nll = 0, tokens = 0;
      for (let b = 0; b < batch.batch; b++) {
        for (let t = 0; t + 1 < batch.seq; t++) {
          if (batch.lossMask[b * batch.seq + t] === 0) continue;
          const row = logits.subarray((b * batch.seq + t) * V, (b * batch.seq + t + 1) * V);
          let mx = -Infinity;
          for (const v of row) mx = Math.max(mx, v);
          let z = 0;
          for (const v of row) z += Math.exp(v - mx);
          nll += Math.log(z) + mx - row[ids[b][t + 1]];
          tokens++;
        }
      }
      assert.equal(tokens, ref.tokens);
      assert.ok(
        Math.abs(nll - ref.nllSum) / ref.nllSum < 1e-4,
        `merged ONNX NLL ${nll} vs engine ${ref.nllSum}`,
      );
      // The adapter matters: the base model alone gives a different NLL.
      const baseNll = await engine.evalNll(batch, new Float32Array(layout.size));
      assert.ok(Math.abs(baseNll.nllSum - ref.nllSum) / ref.nllSum > 1e-3);

      // 2. KV cache: prefix then one token at a time equals the full forward.
      const row = ids[0].slice(0, 6);
      const pre = await session.run(
        feeds([row.slice(0, 3)], [[1, 1, 1]], 0, null, cfg.numLayers, cfg.numKvHeads, cfg.headDim),
      );
      let kv: Feeds = pre;
      const ref6 = await session.run(
        feeds([row], [[1, 1, 1, 1, 1, 1]], 0, null, cfg.numLayers, cfg.numKvHeads, cfg.headDim),
      );
      for (let t = 3; t < 6; t++) {
        const step = await session.run(
          feeds([[row[t]]], [new Array(t + 1).fill(1)], t, kv, cfg.numLayers, cfg.numKvHeads, cfg.headDim),
        );
        const a = step.logits.data as Float32Array,
          b = (ref6.logits.data as Float32Array).subarray(t * V, (t + 1) * V);
        for (let i = 0; i < V; i++) {
          assert.ok(Math.abs(a[i] - b[i]) < 1e-4, `cached logits differ at t=${t}, i=${i}`);
        }
        kv = step;
      }

      // 3. Transformers.js, offline from the folder: greedy generation equals our own greedy loop.
      const { pipeline, env } = await import("@huggingface/transformers");
      env.allowRemoteModels = false;
      const prompt = 'Define the word "tree":';
      const promptIds = model.tokenizer!.encode(prompt);
      const greedy = [...promptIds];
      for (let i = 0; i < 6; i++) {
        const r = await session.run(
          feeds([greedy], [greedy.map(() => 1)], 0, null, cfg.numLayers, cfg.numKvHeads, cfg.headDim),
        );
        const l = (r.logits.data as Float32Array).subarray((greedy.length - 1) * V, greedy.length * V);
        let best = 0;
        for (let j = 1; j < V; j++) if (l[j] > l[best]) best = j;
        greedy.push(best);
        if (best === cfg.eosTokenId) break;
      }
      const gen: any = await pipeline(
        "text-generation",
        Deno.realPathSync(out),
        { dtype: "fp32", local_files_only: true } as any,
      );
      const [o] = await gen(prompt, { max_new_tokens: 6, do_sample: false } as any);
      const want = model.tokenizer!.decode(greedy);
      assert.equal(
        o.generated_text,
        want,
        `Transformers.js: ${JSON.stringify(o.generated_text)}, ours: ${JSON.stringify(want)}`,
      );
      await gen.dispose?.();
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
