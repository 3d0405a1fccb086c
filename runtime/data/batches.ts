/** Batching: length bucketing, right padding, attention and (shifted) loss masks. */
import { shuffled } from "./rng.ts";
import type { PromptTemplate } from "./template.ts";
import { type TokenizedExample, tokenizeExample } from "./tokenize.ts";
import { type Batch, DataError, type Example, type TextTokenizer } from "./types.ts";

/** Options of `makeBatches`. */
export interface BatchOptions {
  maxLen: number;
  batchSize: number;
  seed?: number;
  /** Shuffle examples and batch order (default true); eval sets pass false for a fixed order. */
  shuffle?: boolean;
  /** Pad each batch's length up to a multiple of this (fewer distinct shapes; default 8). */
  padMultiple?: number;
  /** Bucketing window in batches: examples are length-sorted within windows of this many batches (default 8). */
  bucketWindow?: number;
  /** Kept for interface compatibility: examples already carry the rendered prompt. */
  template?: PromptTemplate;
  /** Integer type of inputIds (default int64, what ONNX Gather takes). */
  idType?: "int64" | "int32";
  /** Drop examples with no loss-bearing token after truncation (default true). */
  dropEmpty?: boolean;
}

/** Packs tokenized examples (all of them, in order) into one right-padded `Batch`. */
export function collate(
  items: TokenizedExample[],
  padTokenId: number,
  opts: { padMultiple?: number; maxLen?: number; idType?: "int64" | "int32" } = {},
): Batch {
  if (items.length === 0) throw new DataError("cannot collate an empty batch");
  const mult = Math.max(1, opts.padMultiple ?? 1);
  let seq = Math.max(...items.map((t) => t.ids.length));
  seq = Math.ceil(seq / mult) * mult;
  if (opts.maxLen !== undefined) {
    seq = Math.min(
      seq,
      Math.max(opts.maxLen, ...items.map((t) => t.ids.length)),
    );
  }
  const batch = items.length;
  const inputIds = opts.idType === "int32" ? new Int32Array(batch * seq) : new BigInt64Array(batch * seq);
  const attentionMask = new Float32Array(batch * seq);
  const lossMask = new Float32Array(batch * seq);
  for (let b = 0; b < batch; b++) {
    const { ids, isResponse } = items[b];
    const row = b * seq;
    for (let t = 0; t < seq; t++) {
      const id = t < ids.length ? ids[t] : padTokenId;
      if (inputIds instanceof Int32Array) inputIds[row + t] = id;
      else inputIds[row + t] = BigInt(id);
      if (t < ids.length) attentionMask[row + t] = 1;
      // Shifted: position t is trained to predict token t+1.
      if (t + 1 < ids.length && isResponse[t + 1] === 1) lossMask[row + t] = 1;
    }
  }
  return { inputIds, attentionMask, lossMask, batch, seq };
}

/**
 * Tokenizes, (optionally) shuffles with `seed`, buckets by length and collates examples into
 * batches. Same inputs and seed give identical batches.
 */
export function makeBatches(examples: Example[], tokenizer: TextTokenizer, opts: BatchOptions): Batch[] {
  if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) {
    throw new DataError(`batchSize must be a positive integer, got ${opts.batchSize}`);
  }
  const shuffle = opts.shuffle ?? true;
  const seed = opts.seed ?? 0;
  let toks = examples.map((ex) => tokenizeExample(ex, tokenizer, opts.maxLen));
  if (opts.dropEmpty ?? true) toks = toks.filter((t) => t.isResponse.some((v, j) => j > 0 && v === 1));
  if (shuffle) toks = shuffled(toks, seed);
  const window = opts.batchSize * Math.max(1, opts.bucketWindow ?? 8);
  const groups: TokenizedExample[][] = [];
  for (let w = 0; w < toks.length; w += window) {
    // Stable sort keeps ties in the (shuffled) order, so bucketing stays deterministic.
    const chunk = toks.slice(w, w + window).sort((a, b) => a.ids.length - b.ids.length);
    for (let i = 0; i < chunk.length; i += opts.batchSize) groups.push(chunk.slice(i, i + opts.batchSize));
  }
  const ordered = shuffle ? shuffled(groups, seed ^ 0x5bd1e995) : groups;
  return ordered.map((g) =>
    collate(g, tokenizer.padTokenId, {
      padMultiple: opts.padMultiple ?? 8,
      maxLen: opts.maxLen,
      idType: opts.idType,
    })
  );
}

/** Count of loss-bearing positions in a batch (the denominator of the mean NLL). */
export function lossTokens(b: Batch): number {
  let n = 0;
  for (let i = 0; i < b.lossMask.length; i++) n += b.lossMask[i];
  return n;
}
