/**
 * Pre-trains the bundled demo base model `models/perfit-tiny/` with our own engine (full-parameter
 * training: the decoder graph with every weight as a trainable input) on plain text from the bundled
 * lexicon-instruct records, so federated LoRA starts from a model that knows English/French/German/
 * Spanish word shapes but not the per-category instruction formats.
 *
 *   deno run -A scripts/pretrain.ts [--out models/perfit-tiny] [--steps 1200] [--minutes 20]
 *
 * Uses the records whose line index is 0 mod 4 (`PRETRAIN_STRIDE`) of every category, as
 * "instruction\nresponse" documents without any prompt template. Deterministic for a given step count.
 */
import { parseArgs } from "node:util";
import { trainBpe } from "../runtime/model/bpe.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import type { Batch } from "../runtime/model/engine.ts";
import { FullEngine } from "../runtime/model/engine.ts";
import { AdamW, clipGradNorm, cosineSchedule } from "../runtime/model/optim.ts";
import { Rng } from "../runtime/model/rng.ts";
import {
  EOS_TOKEN,
  initWeights,
  PAD_TOKEN,
  saveTokenizer,
  saveWeights,
  tinyConfig,
} from "../runtime/model/tiny.ts";
import { tokenizerFromJson } from "../runtime/model/tokenizer.ts";
import { fromKernelLayout, type KernelWeights, toKernelLayout } from "../runtime/model/train_step.ts";
import { PRETRAIN_STRIDE } from "../runtime/federation/setup.ts";

// Records with line index % PRETRAIN_STRIDE === 0 are the pre-training text (federated runs skip them).

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "models/perfit-tiny" },
    data: { type: "string", default: "datasets/lexicon-instruct" },
    steps: { type: "string", default: "1200" },
    minutes: { type: "string", default: "25" },
    batch: { type: "string", default: "16" },
    seq: { type: "string", default: "128" },
    merges: { type: "string", default: "1790" },
    lr: { type: "string", default: "3e-3" },
    seed: { type: "string", default: "0" },
  },
});
const STEPS = Number(args.steps), BATCH = Number(args.batch), SEQ = Number(args.seq);
const deadline = performance.now() + Number(args.minutes) * 60_000;

// ---- corpus ----
const docs: string[] = [];
const files = [...Deno.readDirSync(args.data!)].filter((e) => e.name.endsWith(".jsonl")).map((e) => e.name)
  .sort();
for (const f of files) {
  const lines = (await Deno.readTextFile(`${args.data}/${f}`)).split("\n").filter((l) => l.trim());
  lines.forEach((l, i) => {
    if (i % PRETRAIN_STRIDE !== 0) return;
    const r = JSON.parse(l);
    docs.push(`${r.instruction}\n${r.context ? r.context + "\n" : ""}${r.response}`);
  });
}
new Rng(Number(args.seed)).shuffle(docs);
console.log(`${docs.length} documents from ${files.length} files`);

// ---- tokenizer ----
let t0 = performance.now();
const bpe = trainBpe(docs, { merges: Number(args.merges), specialTokens: [EOS_TOKEN, PAD_TOKEN] });
const tok = await tokenizerFromJson(bpe.tokenizerJson, { eos_token: EOS_TOKEN, pad_token: PAD_TOKEN });
console.log(`tokenizer: vocab ${bpe.vocabSize} in ${((performance.now() - t0) / 1000).toFixed(1)}s`);

// Pack documents into one EOS-separated stream, cut into rows of SEQ tokens.
const stream: number[] = [];
for (const d of docs) stream.push(...tok.encode(d), tok.eosTokenId);
const rows = Math.floor(stream.length / SEQ);
const evalRows = Math.max(BATCH, Math.floor(rows * 0.03));
console.log(
  `${stream.length} tokens (${
    (docs.join("").length / stream.length).toFixed(2)
  } chars/token), ${rows} rows, ${evalRows} held out`,
);

function batchOf(rowIds: number[]): Batch {
  const n = rowIds.length * SEQ;
  const inputIds = new BigInt64Array(n);
  const lossMask = new Float32Array(n);
  rowIds.forEach((r, b) => {
    for (let t = 0; t < SEQ; t++) {
      inputIds[b * SEQ + t] = BigInt(stream[r * SEQ + t]);
      lossMask[b * SEQ + t] = t + 1 < SEQ ? 1 : 0;
    }
  });
  return { inputIds, attentionMask: new Float32Array(n).fill(1), lossMask, batch: rowIds.length, seq: SEQ };
}
const evalBatches: Batch[] = [];
for (let r = 0; r + BATCH <= evalRows; r += BATCH) {
  evalBatches.push(batchOf(Array.from({ length: BATCH }, (_, i) => r + i)));
}
const trainRows = Array.from({ length: rows - evalRows }, (_, i) => evalRows + i);

// ---- model ----
const cfg = tinyConfig({
  vocabSize: bpe.vocabSize,
  hiddenSize: 192,
  intermediateSize: 512,
  numLayers: 4,
  numHeads: 6,
  numKvHeads: 2,
  headDim: 32,
  maxPositionEmbeddings: 512,
  tieWordEmbeddings: true,
  eosTokenId: 0,
  padTokenId: 1,
});
const hfInit = initWeights(cfg, Number(args.seed));
const init = toKernelLayout(cfg, hfInit);
// One flat parameter buffer with per-weight views, so AdamW and clipping work on flat arrays.
const names = [...init.keys()];
const total = names.reduce((a, n) => a + init.get(n)!.data.length, 0);
const flat = new Float32Array(total);
const weights: KernelWeights = new Map();
let off = 0;
for (const n of names) {
  const w = init.get(n)!;
  flat.set(w.data, off);
  weights.set(n, { shape: w.shape, data: flat.subarray(off, off + w.data.length) });
  off += w.data.length;
}
console.log(`model: ${total} parameters (${(total * 4 / 1e6).toFixed(1)} MB f32)`);

const engine = await FullEngine.create(cfg, { backend: "node" });
const grads = new Float32Array(total);
// No weight decay on norms (standard practice).
const decayMask = new Uint8Array(total);
off = 0;
for (const n of names) {
  const len = weights.get(n)!.data.length;
  if (!n.endsWith("norm.weight")) decayMask.fill(1, off, off + len);
  off += len;
}
const opt = new AdamW(total, { lr: Number(args.lr), betas: [0.9, 0.95], weightDecay: 0 });
const sched = cosineSchedule({
  warmup: Math.min(100, Math.floor(STEPS / 10)),
  total: STEPS,
  peak: Number(args.lr),
  min: Number(args.lr) / 10,
});

async function evalPpl(): Promise<number> {
  let nll = 0, n = 0;
  for (const b of evalBatches) {
    const r = await engine.evalNll(b, weights);
    nll += r.nllSum;
    n += r.tokens;
  }
  return Math.exp(nll / n);
}

const ppl0 = await evalPpl();
console.log(`initial held-out perplexity ${ppl0.toFixed(1)}`);
const rng = new Rng(Number(args.seed) + 1);
let order: number[] = [];
t0 = performance.now();
let step = 0, tokens = 0;
const log: { step: number; loss: number; lr: number }[] = [];
for (; step < STEPS && performance.now() < deadline; step++) {
  if (order.length < BATCH) order = rng.shuffle(trainRows.slice());
  const b = batchOf(order.splice(0, BATCH));
  const r = await engine.step(b, weights);
  off = 0;
  for (const n of names) {
    const g = r.grads.get(n)!;
    grads.set(g, off);
    off += g.length;
  }
  clipGradNorm(grads, 1);
  const lr = sched(step);
  // Decoupled decay 0.1 * lr on matrices only, applied before the Adam update.
  for (let i = 0; i < total; i++) if (decayMask[i]) flat[i] *= 1 - lr * 0.1;
  opt.step(flat, grads, undefined, lr);
  tokens += b.batch * b.seq;
  if (step % 25 === 0 || step === STEPS - 1) {
    const s = (performance.now() - t0) / 1000;
    log.push({ step, loss: r.loss, lr });
    console.log(
      `step ${step} loss ${r.loss.toFixed(3)} lr ${lr.toExponential(2)} ${(tokens / s).toFixed(0)} tok/s ${
        s.toFixed(0)
      }s`,
    );
  }
}
const seconds = (performance.now() - t0) / 1000;
const ppl = await evalPpl();
console.log(
  `done: ${step} steps, ${tokens} tokens in ${seconds.toFixed(0)}s; held-out perplexity ${
    ppl0.toFixed(1)
  } -> ${ppl.toFixed(2)}`,
);

// ---- save ----
const out = args.out!;
await Deno.mkdir(out, { recursive: true });
await Deno.writeTextFile(`${out}/config.json`, JSON.stringify(toHfConfig(cfg), null, 1));
await saveTokenizer(out, bpe.tokenizerJson, cfg.maxPositionEmbeddings);
await saveWeights(out, fromKernelLayout(weights), { dtype: "F32" });
await Deno.writeTextFile(
  `${out}/training.json`,
  JSON.stringify(
    {
      command: `deno run -A scripts/pretrain.ts ${Deno.args.join(" ")}`.trim(),
      data:
        `${args.data} (records with line index % ${PRETRAIN_STRIDE} == 0, all categories, no prompt template)`,
      documents: docs.length,
      tokens_in_corpus: stream.length,
      steps: step,
      batch: BATCH,
      seq: SEQ,
      tokens_seen: tokens,
      seconds: Math.round(seconds),
      tokens_per_second: Math.round(tokens / seconds),
      backend: engine.backend,
      parameters: total,
      heldout_tokens: evalBatches.length * BATCH * (SEQ - 1),
      heldout_perplexity_initial: ppl0,
      heldout_perplexity: ppl,
      loss_log: log,
    },
    null,
    1,
  ),
);
console.log(`saved to ${out}`);
