/**
 * FedDPA's instance-wise dynamic weighting at evaluation, as the authors' code computes it
 * (github.com/Lydia-yang/FedDPA, commit cf638c1, code/GlobalModel_generated.py 312-346, 368-389):
 * - an instance's representation is the final hidden state at its last prompt token (`emb_type`
 *   "last": `hidden_states[-1][:, -1, :]` of the left-padded prompt) with the LOCAL adapter alone;
 * - each test instance is compared with `instance_num` = 5 training instances of the client drawn at
 *   random (`random.sample`, without replacement): the mean cosine similarity, times `max_weight`
 *   (0.5 with the default `half`), is the GLOBAL adapter's weight w, and the local adapter's is 1 − w
 *   (`set_local(['local'], [w, 1-w])` with the global adapter active). The more an instance resembles
 *   the client's own data, the more weight the global adapter gets and the less the local one, which
 *   never gets less than 1 − max_weight. We follow the code's direction; we could not check it against
 *   the paper's own equation;
 * - the instance is then answered with that mix.
 * Differences here: the representation is read from the prompt+response sequence at the last prompt
 * token (causal attention makes it the prompt's own last state), over the rendered prompt (the authors
 * embed the bare instruction); refs are drawn with a seeded generator. Our eval graph takes one adapter
 * per batch, so each test instance is scored in a batch of its own (the embeddings are batched).
 * Note that in the released script, with its default `batched=True`, the answers are generated
 * (lines 350-365) before any weight is computed and set, i.e. by the global adapter alone; its
 * instance-wise weights only take effect with `--batched False`.
 */
import { collate } from "../data/batches.ts";
import { deriveSeed, mulberry32 } from "../data/rng.ts";
import { type TokenizedExample, tokenizeExample } from "../data/tokenize.ts";
import type { Example } from "../data/types.ts";
import type { AdapterLayout } from "../perfit/layout.ts";
import type { TrainEngine } from "../federation/types.ts";
import type { ClientDataOptions } from "./local_update.ts";
import { adapterWeights, combineDual } from "./feddpa.ts";

/** The knobs of the instance-wise weighting. */
export interface InstanceWeighting {
  /** The global adapter's weight is this times the mean cosine similarity (authors: 0.5). */
  maxWeight: number;
  /** Training instances each test instance is compared with (authors: 5). */
  refs: number;
  /** Seed of the draws. */
  seed: number;
}

/** Mean cosine similarity of row `i` of `a` with rows `js` of `b` (rows of length `h`). */
export function meanCosine(a: Float32Array, i: number, b: Float32Array, js: number[], h: number): number {
  const dot = (x: Float32Array, p: number, y: Float32Array, q: number) => {
    let s = 0;
    for (let k = 0; k < h; k++) s += x[p * h + k] * y[q * h + k];
    return s;
  };
  const na = Math.sqrt(dot(a, i, a, i));
  let sum = 0;
  for (const j of js) sum += dot(a, i, b, j) / Math.max(1e-12, na * Math.sqrt(dot(b, j, b, j)));
  return sum / js.length;
}

/** `k` distinct indices of [0, n) (all of them when k ≥ n), drawn with `rand`. */
export function drawDistinct(n: number, k: number, rand: () => number): number[] {
  const idx = Array.from({ length: n }, (_, i) => i);
  const m = Math.min(k, n);
  for (let i = 0; i < m; i++) {
    const j = i + Math.floor(rand() * (n - i));
    [idx[i], idx[j]] = [idx[j], idx[i]];
  }
  return idx.slice(0, m);
}

const hasLoss = (t: TokenizedExample) => t.isResponse.some((v, j) => j > 0 && v === 1);

/** The last prompt token of each row: the first position whose loss mask is 1 (it predicts the response). */
function lastPromptPick(lossMask: Float32Array, batch: number, seq: number): Float32Array {
  const pick = new Float32Array(batch * seq);
  for (let b = 0; b < batch; b++) {
    const t = lossMask.subarray(b * seq, (b + 1) * seq).indexOf(1);
    pick[b * seq + t] = 1;
  }
  return pick;
}

/** Hidden states at the last prompt token of each item, [items × hidden], in batches of `size`. */
async function embedAll(
  engine: Required<Pick<TrainEngine, "hiddenAt">>,
  items: TokenizedExample[],
  size: number,
  padId: number,
  adapter: Float32Array,
  mask: Uint8Array,
): Promise<{ h: number; rows: Float32Array }> {
  const parts: Float32Array[] = [];
  for (let i = 0; i < items.length; i += size) {
    const b = collate(items.slice(i, i + size), padId, { padMultiple: 8 });
    parts.push(await engine.hiddenAt(b, lastPromptPick(b.lossMask, b.batch, b.seq), adapter, mask));
  }
  const h = parts[0].length / Math.min(size, items.length);
  const rows = new Float32Array(items.length * h);
  let o = 0;
  for (const p of parts) rows.set(p, (o += p.length) - p.length);
  return { h, rows };
}

/**
 * Summed response-token NLL of the test split with each instance under its own mix of the two
 * adapters; also the global adapter's weight per scored instance.
 */
export async function evaluateInstanceWise(
  engine: TrainEngine,
  dual: { layout: AdapterLayout; adapter: Float32Array; mask: Uint8Array; r: number },
  data: { train: Example[]; test: Example[] },
  opts: ClientDataOptions,
  w: InstanceWeighting,
): Promise<{ nllSum: number; tokens: number; globalWeights: number[] }> {
  if (!engine.hiddenAt) throw new Error("instance-wise weighting needs an engine with hiddenAt");
  const hidden = { hiddenAt: engine.hiddenAt.bind(engine) };
  const tok = (xs: Example[]) =>
    xs.map((x) => tokenizeExample(x, opts.tokenizer, opts.maxLen)).filter(hasLoss);
  const test = tok(data.test);
  const train = tok(data.train);
  if (test.length === 0) return { nllSum: 0, tokens: 0, globalWeights: [] };
  if (train.length === 0) throw new Error("instance-wise weighting needs training instances to compare with");
  const { layout, adapter, mask, r } = dual;
  const size = opts.evalBatchSize ?? opts.batchSize;
  const pad = opts.tokenizer.padTokenId;
  // The authors embed with the local adapter alone: the global adapter's B columns at 0.
  const localW = adapterWeights(layout, r, 0, 1);
  const localOnly = adapter.map((v, i) => v * localW[i]);
  const rand = mulberry32(deriveSeed(w.seed, 0xd9a));
  const refsOf = test.map(() => drawDistinct(train.length, w.refs, rand));
  const used = [...new Set(refsOf.flat())].sort((a, b) => a - b);
  const slot = new Map(used.map((j, s) => [j, s]));
  const t = await embedAll(hidden, test, size, pad, localOnly, mask);
  const ref = await embedAll(hidden, used.map((j) => train[j]), size, pad, localOnly, mask);
  let nllSum = 0, tokens = 0;
  const globalWeights: number[] = [];
  for (let i = 0; i < test.length; i++) {
    const g = w.maxWeight * meanCosine(t.rows, i, ref.rows, refsOf[i].map((j) => slot.get(j)!), t.h);
    globalWeights.push(g);
    const ev = await engine.evalNll(
      collate([test[i]], pad, { padMultiple: 8 }),
      combineDual(layout, adapter, r, 1 - g),
      mask,
    );
    nllSum += ev.nllSum;
    tokens += ev.tokens;
  }
  return { nllSum, tokens, globalWeights };
}
