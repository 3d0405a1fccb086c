// deno-lint-ignore-file no-explicit-any -- Chart.js scriptable options and Transformers.js pipeline options are untyped here
/**
 * `deno task generate`: generates text from a personalized model with Transformers.js, offline from a
 * local folder.
 *
 *   deno task generate                                    # personalize the bundled base on one category, export, generate
 *   deno task generate --model DIR                        # a merged folder written by runtime/export (config, tokenizer, onnx/)
 *   deno task generate --base DIR --adapter PEFT_DIR      # merge a PEFT adapter folder first
 *
 * `--help` lists every flag with its default; a bad flag or value is one line and exit 2.
 */
import { defineCli, isDirectory, UsageError } from "../runtime/cli/flags.ts";
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

/** The lexicon-instruct categories (one JSONL file each) a model can be personalized on here. */
function categories(): string[] {
  try {
    return [...Deno.readDirSync(DATA)].filter((e) => e.name.endsWith(".jsonl"))
      .map((e) => e.name.slice(0, -".jsonl".length)).sort();
  } catch {
    return ["acronyms"]; // no read permission (or no data): the default still names the bundled file
  }
}

const FALLBACK_PROMPT = "What does CPU stand for?";

/** The generate CLI's flags. */
export const generateCli = defineCli({
  name: "generate",
  summary: "Generates text with Transformers.js from a personalized model, offline. Without --model or\n" +
    "--adapter it first personalizes --base on one --category (dense LoRA, --steps steps) and exports it.",
  flags: {
    model: {
      type: "string",
      value: "DIR",
      validate: isDirectory,
      help: "a merged model folder (config, tokenizer, onnx/) written by runtime/export: generate with it",
    },
    adapter: {
      type: "string",
      value: "DIR",
      validate: isDirectory,
      help: "a PEFT adapter folder (e.g. deno task client's) to merge into --base first",
    },
    base: {
      type: "string",
      value: "DIR",
      validate: isDirectory,
      defaultText: "models/perfit-tiny, the bundled model, or a random tiny one where it is absent",
      help: "base model folder (config.json, model.safetensors, tokenizer.json)",
    },
    prompt: {
      type: "string",
      value: "TEXT",
      defaultText: `a held-out example when personalizing here, else ${JSON.stringify(FALLBACK_PROMPT)}`,
      help: "the prompt",
    },
    "max-new-tokens": { type: "int", min: 1, max: 4096, default: 24, help: "most tokens generated" },
    "min-new-tokens": { type: "int", min: 0, max: 4096, default: 8, help: "fewest tokens generated" },
    category: {
      type: "string",
      value: "NAME",
      choices: categories(),
      default: "acronyms",
      help: "lexicon-instruct category to personalize on (without --model/--adapter)",
    },
    steps: { type: "int", min: 1, default: 40, help: "training steps when personalizing here" },
    out: { type: "string", value: "DIR", default: "out/generate", help: "where exports are written" },
  },
});

type Flags = ReturnType<typeof generateCli.parse>["values"];

function exists(p: string): boolean {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
}

/** Trains a dense LoRA adapter on one category and exports it (PEFT folder + merged model). */
async function personalize(f: Flags, out: string): Promise<{ merged: string; prompt: string }> {
  let base = f.base ?? BUNDLED;
  if (!exists(`${base}/config.json`)) {
    base = `${out}/base`;
    console.log(`no bundled base model at ${BUNDLED}: generating a tiny random one at ${base}`);
    await generateTinyModel(base, { seed: 0 });
  }
  const category = f.category;
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
  const steps = f.steps;
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

/** The flags' combinations that mean nothing: one line, exit 2. */
function checkFlags(f: Flags, given: (k: keyof Flags) => boolean): void {
  if (f.model !== undefined && (f.adapter !== undefined || given("base"))) {
    throw new UsageError("--model is a merged folder: give it alone, or --base with --adapter to merge one");
  }
  const personalizing = f.model === undefined && f.adapter === undefined;
  for (const k of ["category", "steps"] as const) {
    if (!personalizing && given(k)) {
      throw new UsageError(`--${k} only applies when personalizing here (no --model or --adapter)`);
    }
  }
  if (f["min-new-tokens"] > f["max-new-tokens"]) {
    throw new UsageError(
      `--min-new-tokens (${f["min-new-tokens"]}) must be at most --max-new-tokens (${f["max-new-tokens"]})`,
    );
  }
}

async function main(args: string[]): Promise<void> {
  const { values: f, sources } = generateCli.parse(args);
  checkFlags(f, (k) => sources[k] !== "default");
  const out = f.out;
  let merged: string;
  let prompt = f.prompt;
  if (f.model) {
    merged = f.model;
  } else if (f.adapter) {
    const base = f.base ?? BUNDLED;
    const a = await readPeftAdapter(f.adapter);
    merged = `${out}/personalized`;
    await writeMergedModel(merged, { baseDir: base, layout: a.layout, adapter: a.adapter, scale: a.scale });
    console.log(`merged ${f.adapter} into ${base}: ${merged}`);
  } else {
    const p = await personalize(f, out);
    merged = p.merged;
    prompt ??= p.prompt;
  }
  prompt ??= FALLBACK_PROMPT;
  // Loaded here, not at the top: --help and flag errors need none of Transformers.js.
  const { env, pipeline } = await import("@huggingface/transformers");
  // Offline: Transformers.js must read only the local folder.
  env.allowRemoteModels = false;
  const generator: any = await pipeline(
    "text-generation",
    Deno.realPathSync(merged),
    { dtype: "fp32", local_files_only: true } as any,
  );
  const [res] = await generator(
    prompt,
    { max_new_tokens: f["max-new-tokens"], min_new_tokens: f["min-new-tokens"], do_sample: false } as any,
  );
  console.log(
    `\nprompt: ${JSON.stringify(prompt)}\nTransformers.js: ${
      JSON.stringify(res.generated_text.slice(prompt.length))
    }`,
  );
  await generator.dispose?.();
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    generateCli.fail(e);
  }
}
