// deno-lint-ignore-file no-explicit-any -- Chart.js scriptable options and Transformers.js pipeline options are untyped here
/**
 * Generates text from a personalized model with Transformers.js, offline from a local folder.
 *
 *   deno run -A examples/generate.ts                      # personalize the bundled base on one category, export, generate
 *   deno run -A examples/generate.ts --model DIR          # a merged folder written by runtime/export (config, tokenizer, onnx/)
 *   deno run -A examples/generate.ts --base DIR --adapter PEFT_DIR   # merge a PEFT adapter folder first
 * Options: --prompt TEXT, --max-new-tokens N (default 24), --min-new-tokens N (default 8), --category NAME (default acronyms),
 *          --steps N (default 40), --out DIR (default out/generate).
 */
import { env, pipeline } from "@huggingface/transformers";
import { loadModel } from "../runtime/model/load.ts";
import { adapterLayout, initAdapter } from "../runtime/model/lora.ts";
import { Engine } from "../runtime/model/engine.ts";
import { evaluatePerplexity, trainLora } from "../runtime/model/trainer.ts";
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { loadJsonl, makeBatches } from "../runtime/data/mod.ts";
import { splitTrainTest } from "../runtime/federation/partition.ts";
import { readPeftAdapter, writeMergedModel, writePeftAdapter } from "../runtime/export/mod.ts";

const BUNDLED = new URL("../models/perfit-tiny", import.meta.url).pathname;
const DATA = new URL("../datasets/lexicon-instruct", import.meta.url).pathname;

function flags(args: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < args.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(args[i]);
    if (!m) throw new Error(`unexpected argument ${args[i]}`);
    out[m[1]] = m[2] ?? args[++i] ?? "";
  }
  return out;
}

function exists(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Trains a dense LoRA adapter on one category and exports it (PEFT folder + merged model). */
async function personalize(
  f: Record<string, string>,
  out: string,
): Promise<{ merged: string; prompt: string }> {
  let base = f.base ?? BUNDLED;
  if (!exists(`${base}/config.json`)) {
    base = `${out}/base`;
    console.log(`no bundled base model at ${BUNDLED}: generating a tiny random one at ${base}`);
    await generateTinyModel(base, { seed: 0 });
  }
  const category = f.category ?? "acronyms";
  const examples = await loadJsonl(`${DATA}/${category}.jsonl`);
  const { train, test } = splitTrainTest(examples, category, { seed: 0, maxTrain: 256, maxTest: 32 });
  const model = await loadModel(base);
  const spec = { rank: 4, alpha: 8, targets: ["q", "v"] as ("q" | "v")[] };
  const engine = await Engine.create(model, spec);
  const layout = adapterLayout(model.config, spec);
  const adapter = initAdapter(layout, 0);
  const mask = new Uint8Array(layout.size).fill(1);
  const batches = makeBatches(train, model.tokenizer!, { maxLen: 96, batchSize: 8, seed: 0 });
  const testBatches = makeBatches(test, model.tokenizer!, { maxLen: 96, batchSize: 8, shuffle: false });
  const before = await evaluatePerplexity(engine, testBatches, adapter, mask);
  const steps = Number(f.steps ?? 40);
  await trainLora(engine, batches, adapter, mask, { steps, lr: 3e-3, seed: 0 });
  const after = await evaluatePerplexity(engine, testBatches, adapter, mask);
  console.log(
    `personalized on "${category}" (${train.length} examples, ${steps} steps, ${engine.backend}): held-out perplexity ${
      before.perplexity.toFixed(3)
    } -> ${after.perplexity.toFixed(3)}`,
  );
  const scale = spec.alpha / spec.rank;
  await writePeftAdapter(`${out}/adapter`, { layout, adapter, scale, baseModel: base });
  const merged = `${out}/personalized`;
  await writeMergedModel(merged, { baseDir: base, layout, adapter, scale });
  console.log(
    `wrote the PEFT adapter to ${out}/adapter and the merged model (safetensors + onnx/model.onnx) to ${merged}`,
  );
  const ex = test[0] ?? train[0];
  return { merged, prompt: ex.prompt };
}

if (import.meta.main) {
  const f = flags(Deno.args);
  const out = f.out ?? "out/generate";
  let merged: string;
  let prompt = f.prompt;
  if (f.model) {
    merged = f.model;
  } else if (f.adapter) {
    if (!f.base) throw new Error("--adapter needs --base (the base model folder)");
    const a = await readPeftAdapter(f.adapter);
    merged = `${out}/personalized`;
    await writeMergedModel(merged, { baseDir: f.base, layout: a.layout, adapter: a.adapter, scale: a.scale });
    console.log(`merged ${f.adapter} into ${f.base}: ${merged}`);
  } else {
    const p = await personalize(f, out);
    merged = p.merged;
    prompt ??= p.prompt;
  }
  prompt ??= "What does CPU stand for?";
  // Offline: Transformers.js must read only the local folder.
  env.allowRemoteModels = false;
  const generator: any = await pipeline(
    "text-generation",
    Deno.realPathSync(merged),
    { dtype: "fp32", local_files_only: true } as any,
  );
  const [res] = await generator(
    prompt,
    {
      max_new_tokens: Number(f["max-new-tokens"] ?? 24),
      min_new_tokens: Number(f["min-new-tokens"] ?? 8),
      do_sample: false,
    } as any,
  );
  console.log(
    `\nprompt: ${JSON.stringify(prompt)}\nTransformers.js: ${
      JSON.stringify(res.generated_text.slice(prompt.length))
    }`,
  );
  await generator.dispose?.();
}
