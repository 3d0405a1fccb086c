/**
 * Reference check with PyTorch + PEFT: the exported adapter folder loads with
 * `PeftModel.from_pretrained` on the base model, and PEFT's logits match our merged ONNX decoder's
 * and give the response-token NLL of our training engine. Needs the Python environment made by
 * tests/reference/peft_setup.sh (PyPI: torch, transformers, peft); skipped with a message without it.
 */
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { loadModel } from "../runtime/model/load.ts";
import { adapterLayout, type TargetModule } from "../runtime/model/lora.ts";
import { Engine } from "../runtime/model/engine.ts";
import { makeBatches, parseJsonl } from "../runtime/data/mod.ts";
import { writeMergedModel, writePeftAdapter } from "../runtime/export/mod.ts";
import { referencePython } from "./reference/python.ts";

const here = new URL(".", import.meta.url).pathname;

const findPython = () => referencePython("PERFIT_PEFT_PYTHON", "venv-peft", "torch, peft, transformers");

const python = findPython();
if (!python) {
  console.warn(
    "export_peft_reference: SKIPPED, no Python with torch+peft+transformers (run tests/reference/peft_setup.sh, or set PERFIT_PEFT_PYTHON)",
  );
}

Deno.test({
  name: "export_peft_reference: PEFT loads our adapter and its logits match ours",
  ignore: python === null,
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "perfit-peft-" });
    try {
      const base = `${dir}/base`;
      // Untied embeddings and GQA exercise lm_head and k/v shapes in PEFT's loader.
      const cfg = await generateTinyModel(base, { seed: 21, config: { tieWordEmbeddings: false } });
      const targets: TargetModule[] = ["q", "k", "v", "o", "gate", "up", "down"];
      const spec = { rank: 4, alpha: 6, targets };
      const layout = adapterLayout(cfg, spec);
      let s = 9;
      const adapter = Float32Array.from(
        { length: layout.size },
        () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5,
      );
      const mask = new Uint8Array(layout.size).map((_, i) => ((i * 2654435761) >>> 0) % 3 === 0 ? 0 : 1);
      const scale = 6 / 2; // expanded rank 4, base rank 2
      await writePeftAdapter(`${dir}/adapter`, { layout, adapter, mask, scale, baseModel: base });
      await writeMergedModel(`${dir}/merged`, { baseDir: base, layout, adapter, mask, scale });

      const model = await loadModel(base);
      const text = (await Deno.readTextFile("datasets/lexicon-instruct/dictionary.jsonl")).trim().split("\n")
        .slice(0, 3).join("\n");
      const [batch] = makeBatches(parseJsonl(text), model.tokenizer!, {
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
          `${here}reference/peft_logits.py`,
          base,
          `${dir}/adapter`,
          `${dir}/input.json`,
          `${dir}/logits.f32`,
        ],
        env: { HF_HUB_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1" },
      }).output();
      assert.ok(out.success, new TextDecoder().decode(out.stderr).slice(-3000));
      const peft = new Float32Array((await Deno.readFile(`${dir}/logits.f32`)).buffer);
      assert.equal(peft.length, B * S * V);

      // PEFT logits vs our merged ONNX decoder, on every real (non-padding) position.
      const session = await ort.InferenceSession.create(`${dir}/merged/onnx/model.onnx`);
      const feeds: Record<string, ort.Tensor> = {
        input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.flat().map(BigInt)), [B, S]),
        attention_mask: new ort.Tensor("int64", BigInt64Array.from(am.flat().map(BigInt)), [B, S]),
        position_ids: new ort.Tensor(
          "int64",
          BigInt64Array.from(ids.flatMap((r) => r.map((_, i) => BigInt(i)))),
          [B, S],
        ),
      };
      for (let l = 0; l < cfg.numLayers; l++) {
        for (const k of ["key", "value"]) {
          feeds[`past_key_values.${l}.${k}`] = new ort.Tensor("float32", new Float32Array(0), [
            B,
            cfg.numKvHeads,
            0,
            cfg.headDim,
          ]);
        }
      }
      const ours = (await session.run(feeds)).logits.data as Float32Array;
      let maxDiff = 0;
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < S; t++) {
          if (!am[b][t]) continue;
          for (let v = 0; v < V; v++) {
            maxDiff = Math.max(maxDiff, Math.abs(ours[(b * S + t) * V + v] - peft[(b * S + t) * V + v]));
          }
        }
      }
      assert.ok(maxDiff < 1e-4, `max |logit diff| PEFT vs merged ONNX = ${maxDiff}`);

      // PEFT's NLL vs our training engine on base + masked adapter.
      let nll = 0;
      for (let b = 0; b < B; b++) {
        for (let t = 0; t + 1 < S; t++) {
          if (!batch.lossMask[b * S + t]) continue;
          const row = peft.subarray((b * S + t) * V, (b * S + t + 1) * V);
          const mx = Math.max(...row);
          let z = 0;
          for (const x of row) z += Math.exp(x - mx);
          nll += Math.log(z) + mx - row[ids[b][t + 1]];
        }
      }
      const engine = await Engine.create(model, spec, { scale });
      const ref = await engine.evalNll(batch, adapter, mask);
      assert.ok(Math.abs(nll - ref.nllSum) / ref.nllSum < 1e-4, `PEFT NLL ${nll} vs engine ${ref.nllSum}`);
      console.log(
        `export_peft_reference: max |logit diff| ${maxDiff.toExponential(2)}, NLL PEFT ${
          nll.toFixed(5)
        } vs engine ${ref.nllSum.toFixed(5)}`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
