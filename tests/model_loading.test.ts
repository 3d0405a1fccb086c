import assert from "node:assert/strict";
import { ConfigError, loadConfigAuto, parseConfig, toHfConfig } from "../runtime/model/config.ts";
import { generateTinyModel, initWeights, tinyConfig } from "../runtime/model/tiny.ts";
import { loadModel } from "../runtime/model/load.ts";
import { loadTokenizer } from "../runtime/model/tokenizer.ts";
import { checkWeights, WeightsError } from "../runtime/model/weights.ts";
import { encodeSafetensors } from "../runtime/io/safetensors.ts";
import { toKernelLayout } from "../runtime/model/train_step.ts";

const SMOLLM2 = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 576,
  intermediate_size: 1536,
  num_hidden_layers: 30,
  num_attention_heads: 9,
  num_key_value_heads: 3,
  rms_norm_eps: 1e-5,
  rope_theta: 100000,
  vocab_size: 49152,
  tie_word_embeddings: true,
  max_position_embeddings: 8192,
  rope_scaling: null,
  attention_bias: false,
  mlp_bias: false,
  bos_token_id: 0,
  eos_token_id: 0,
};

Deno.test("model_loading: llama config (SmolLM2-135M) parses with GQA, tied head and derived head_dim", () => {
  const c = parseConfig(SMOLLM2);
  assert.equal(c.modelType, "llama");
  assert.equal(c.headDim, 64);
  assert.equal(c.numKvHeads, 3);
  assert.equal(c.tieWordEmbeddings, true);
  assert.equal(c.qkvBias, false);
  assert.equal(c.ropeTheta, 100000);
  assert.deepEqual(parseConfig(toHfConfig(c)), c);
});

Deno.test("model_loading: qwen2 config gets q/k/v biases; defaults follow transformers", () => {
  const c = parseConfig({
    model_type: "qwen2",
    hidden_size: 896,
    intermediate_size: 4864,
    num_hidden_layers: 24,
    num_attention_heads: 14,
    num_key_value_heads: 2,
    vocab_size: 151936,
    eos_token_id: [151643, 151645],
  });
  assert.equal(c.qkvBias, true);
  assert.equal(c.oBias, false);
  assert.equal(c.headDim, 64);
  assert.equal(c.rmsNormEps, 1e-6);
  assert.equal(c.ropeTheta, 10000);
  assert.equal(c.tieWordEmbeddings, false);
  assert.equal(c.eosTokenId, 151643);
  const noKv = parseConfig({ ...SMOLLM2, num_key_value_heads: undefined });
  assert.equal(noKv.numKvHeads, 9);
});

Deno.test("model_loading: unsupported or inconsistent configs are rejected", () => {
  assert.throws(() => parseConfig({ ...SMOLLM2, model_type: "gpt2" }), /unsupported model_type/);
  assert.throws(
    () => parseConfig({ ...SMOLLM2, rope_scaling: { type: "linear", factor: 2 } }),
    /rope_scaling/,
  );
  assert.throws(() => parseConfig({ ...SMOLLM2, num_key_value_heads: 4 }), /multiple/);
  assert.throws(() => parseConfig({ ...SMOLLM2, hidden_size: "576" }), ConfigError);
  assert.throws(() => parseConfig({ ...SMOLLM2, vocab_size: undefined }), /vocab_size/);
  assert.throws(() => parseConfig([1, 2]), ConfigError);
});

async function roundTrip(opts: { dtype?: "F32" | "F16" | "BF16"; shards?: number }) {
  const dir = await Deno.makeTempDir({ prefix: "perfit_model_" });
  const cfg = await generateTinyModel(dir, {
    seed: 2,
    config: { modelType: "qwen2", qkvBias: true, tieWordEmbeddings: false },
    ...opts,
  });
  // The model holds the weights in kernel layout (linear weights transposed), the reference in HF layout.
  const ref = toKernelLayout(cfg, initWeights(cfg, 2));
  const m = await loadModel(dir);
  assert.equal(m.kernelWeights.size, ref.size);
  let maxRel = 0;
  for (const [name, w] of ref) {
    const got = m.kernelWeights.get(name)!;
    assert.deepEqual(got.shape, w.shape, name);
    for (let i = 0; i < w.data.length; i++) {
      maxRel = Math.max(maxRel, Math.abs(got.data[i] - w.data[i]) / (Math.abs(w.data[i]) + 1e-3));
    }
  }
  return { dir, maxRel, files: [...Deno.readDirSync(dir)].map((e) => e.name).sort() };
}

Deno.test("model_loading: f32, f16 and bf16 safetensors load into f32", async () => {
  assert.equal((await roundTrip({ dtype: "F32" })).maxRel, 0);
  const f16 = (await roundTrip({ dtype: "F16" })).maxRel;
  assert.ok(f16 > 0 && f16 < 1e-3, `f16 rel error ${f16}`);
  const bf16 = (await roundTrip({ dtype: "BF16" })).maxRel;
  assert.ok(bf16 > 1e-4 && bf16 < 8e-3, `bf16 rel error ${bf16}`);
});

Deno.test("model_loading: sharded checkpoints load through model.safetensors.index.json", async () => {
  const r = await roundTrip({ shards: 3 });
  assert.equal(r.maxRel, 0);
  assert.ok(r.files.includes("model.safetensors.index.json"));
  assert.ok(r.files.includes("model-00003-of-00003.safetensors"));
  assert.ok(!r.files.includes("model.safetensors"));
  // A shard listed in the index but missing fails with its name.
  await Deno.remove(`${r.dir}/model-00002-of-00003.safetensors`);
  await assert.rejects(loadModel(r.dir), /model-00002-of-00003/);
});

Deno.test("model_loading: weights that do not fit the config are rejected", () => {
  const cfg = tinyConfig();
  const w = initWeights(cfg, 1);
  checkWeights(cfg, w);
  const missing = new Map(w);
  missing.delete("model.layers.1.mlp.up_proj.weight");
  assert.throws(() => checkWeights(cfg, missing), /lacks weight model.layers.1.mlp.up_proj.weight/);
  const wrong = new Map(w);
  wrong.set("model.norm.weight", { shape: [31], data: new Float32Array(31) });
  assert.throws(() => checkWeights(cfg, wrong), WeightsError);
  const nan = new Map(w);
  nan.set("model.norm.weight", { shape: [32], data: new Float32Array(32).fill(NaN) });
  assert.throws(() => checkWeights(cfg, nan), /non-finite/);
});

Deno.test("model_loading: a corrupt weights file fails with a clear error", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit_model_" });
  await generateTinyModel(dir, {});
  await Deno.writeFile(`${dir}/model.safetensors`, new Uint8Array([1, 2, 3]));
  await assert.rejects(loadModel(dir), /header/);
  await Deno.writeFile(`${dir}/model.safetensors`, encodeSafetensors({}));
  await assert.rejects(loadModel(dir), /lacks weight/);
  await assert.rejects(loadModel(`${dir}/nope`), /not found/);
});

Deno.test("model_loading: generated tokenizer loads via Transformers.js and round-trips text", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit_model_" });
  const cfg = await generateTinyModel(dir, { merges: 50 });
  const tok = await loadTokenizer(dir);
  assert.equal(tok.vocabSize, cfg.vocabSize);
  assert.equal(tok.eosTokenId, 0);
  assert.equal(tok.padTokenId, 1);
  for (
    const text of ["The quick brown fox.", "Übersetze: Haus -> maison, 123!", "  spaces\tand\nnewlines "]
  ) {
    const ids = tok.encode(text);
    assert.ok(ids.every((i) => i >= 2 && i < cfg.vocabSize));
    assert.equal(tok.decode(ids), text);
  }
  // Merges learned from the corpus make frequent words shorter than their bytes.
  assert.ok(tok.encode("The quick brown fox").length < "The quick brown fox".length);
  const auto = await loadConfigAuto(dir);
  assert.equal(auto.vocabSize, cfg.vocabSize);
  // Deterministic generation: the same options give byte-identical files.
  const dir2 = await Deno.makeTempDir({ prefix: "perfit_model_" });
  await generateTinyModel(dir2, { merges: 50 });
  assert.equal(
    await Deno.readTextFile(`${dir2}/tokenizer.json`),
    await Deno.readTextFile(`${dir}/tokenizer.json`),
  );
  assert.deepEqual(
    await Deno.readFile(`${dir2}/model.safetensors`),
    await Deno.readFile(`${dir}/model.safetensors`),
  );
});

Deno.test("model_loading: a model served over http loads through fetch (the browser path)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit_model_" });
  const cfg = await generateTinyModel(dir, { seed: 4, shards: 2, dtype: "BF16" });
  const ac = new AbortController();
  const server = Deno.serve(
    { port: 0, hostname: "127.0.0.1", signal: ac.signal, onListen: () => {} },
    async (req) => {
      const name = new URL(req.url).pathname.slice(1);
      try {
        return new Response(await Deno.readFile(`${dir}/${name}`));
      } catch {
        return new Response("not found", { status: 404 });
      }
    },
  );
  try {
    const url = `http://127.0.0.1:${server.addr.port}/`;
    const remote = await loadModel(url);
    const local = await loadModel(dir);
    assert.deepEqual(remote.config, cfg);
    for (const [n, w] of local.kernelWeights) assert.deepEqual(remote.kernelWeights.get(n)!.data, w.data, n);
    assert.deepEqual(
      remote.tokenizer!.encode("Translate: house"),
      local.tokenizer!.encode("Translate: house"),
    );
    await assert.rejects(loadModel(`${url}missing`), /no config.json/);
  } finally {
    ac.abort();
    await server.finished;
  }
});
