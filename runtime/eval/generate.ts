/**
 * Greedy generation from a personalized client model, for the generation metric (ROUGE-L).
 *
 * The client's adapter is merged into the base weights (W + scale * B@A, masked positions zero,
 * runtime/export/merge.ts) and run through the KV-cache ONNX decoder of runtime/export/onnx_decoder.ts,
 * the graph the merged-model export ships to Transformers.js. Both are checked against the training
 * engine (tests/export_merged.test.ts: same NLL, cache = full forward), so the logits are the ones the
 * perplexity eval scores; with the cache, each new token costs one position per row instead of a forward
 * over the whole sequence, which is what keeps greedy decoding cheap on two CPU cores.
 */
import { createSession, type Feed, type GraphSession, type SessionOptions } from "../graph/session.ts";
import type { ModelConfig } from "../model/config.ts";
import type { Weights } from "../model/weights.ts";
import { tokenizeExample } from "../data/tokenize.ts";
import type { Example, TextTokenizer } from "../data/types.ts";
import { mergeAdapter } from "../export/merge.ts";
import { buildDecoderOnnx } from "../export/onnx_decoder.ts";
import type { AdapterLayoutLike } from "../export/types.ts";

/** A client's adapter in our flat layout (a saved PEFT folder reads back into this with `readPeftAdapter`). */
export interface ClientAdapter {
  layout: AdapterLayoutLike;
  adapter: Float32Array;
  /** LoRA scale (alpha / baseRank; what PEFT's lora_alpha / r equals in our exports). */
  scale: number;
  /** 0/1 per position; masked-out positions count as zero, as in training. Omitted: dense. */
  mask?: Uint8Array;
}

/** Bad generation input; the message says which. */
export class GenerateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GenerateError";
  }
}

/** A decoder session over one set of (merged) weights. */
export interface GreedyDecoder {
  readonly config: ModelConfig;
  readonly session: GraphSession;
  /** Frees the native session. */
  release(): Promise<void>;
}

/**
 * Opens a decoder for the base weights with `adapter` folded in (or the base alone without one). Each
 * call builds its own session (not cached: every client's merged weights are different bytes).
 */
export async function openDecoder(
  config: ModelConfig,
  baseWeights: Weights,
  adapter?: ClientAdapter,
  opts: Pick<SessionOptions, "backend" | "numThreads"> = {},
): Promise<GreedyDecoder> {
  const weights = adapter
    ? mergeAdapter(baseWeights, adapter.layout, adapter.adapter, adapter.scale, adapter.mask)
    : baseWeights;
  const session = await createSession(buildDecoderOnnx(config, weights), { ...opts, noCache: true });
  return { config, session, release: () => session.release() };
}

/**
 * The prompt tokens training feeds for `ex`: what `tokenizeExample` keeps before the response, i.e.
 * [BOS?] + prompt, left-truncated to maxLen - 1 tokens (the window's last slot predicts the first
 * response token). The reference's length plays no part.
 */
export function promptTokens(ex: Example, tok: TextTokenizer, maxLen: number): number[] {
  const t = tokenizeExample({ ...ex, response: "" }, tok, maxLen);
  return t.ids.filter((_, j) => t.isResponse[j] === 0);
}

/** Options of `greedyGenerate`. */
export interface GreedyOptions {
  /** New tokens per prompt, at most (EOS ends a row earlier). */
  maxNewTokens: number;
  eosTokenId: number;
  /** Fills left padding and rows that have finished. */
  padTokenId: number;
  /** Prompts per forward pass (default 24). */
  batchSize?: number;
}

/** Index of the largest value of `v[from, from + n)` (the first one on ties, like torch.argmax), minus from. */
export function argmax(v: Float32Array, from = 0, n = v.length - from): number {
  let best = 0, bv = v[from];
  for (let i = 1; i < n; i++) {
    const x = v[from + i];
    if (x > bv) {
      bv = x;
      best = i;
    }
  }
  return best;
}

/**
 * Greedy completions of token prompts: per prompt, the argmax tokens after it, up to `maxNewTokens`,
 * ending before EOS (EOS itself is not returned). Prompts are batched with left padding (masked keys,
 * positions counted from each row's first real token), so a row's tokens do not depend on its batch.
 */
export async function greedyGenerate(
  dec: GreedyDecoder,
  prompts: readonly number[][],
  opts: GreedyOptions,
): Promise<number[][]> {
  const { config: cfg } = dec;
  if (!Number.isInteger(opts.maxNewTokens) || opts.maxNewTokens < 1) {
    throw new GenerateError(`maxNewTokens must be a positive integer, got ${opts.maxNewTokens}`);
  }
  const bs = opts.batchSize ?? 24;
  if (!Number.isInteger(bs) || bs < 1) {
    throw new GenerateError(`batchSize must be a positive integer, got ${bs}`);
  }
  for (const id of [opts.eosTokenId, opts.padTokenId]) {
    if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) {
      throw new GenerateError(`special token id ${id} is outside the vocabulary`);
    }
  }
  prompts.forEach((p, i) => {
    if (p.length === 0) throw new GenerateError(`prompt ${i} is empty`);
    if (p.length + opts.maxNewTokens > cfg.maxPositionEmbeddings) {
      throw new GenerateError(
        `prompt ${i}: ${p.length} + ${opts.maxNewTokens} new tokens exceed the model's ${cfg.maxPositionEmbeddings} positions`,
      );
    }
    for (const id of p) {
      if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) {
        throw new GenerateError(`prompt ${i} holds token ${id}, outside the vocabulary`);
      }
    }
  });
  const out: number[][] = [];
  for (let s = 0; s < prompts.length; s += bs) {
    out.push(...await generateBatch(dec, prompts.slice(s, s + bs), opts));
  }
  return out;
}

async function generateBatch(
  dec: GreedyDecoder,
  prompts: readonly number[][],
  opts: GreedyOptions,
): Promise<number[][]> {
  const cfg = dec.config;
  const B = prompts.length, V = cfg.vocabSize;
  const P = Math.max(...prompts.map((p) => p.length));
  const ids = new BigInt64Array(B * P), mask: number[][] = [], pos = new BigInt64Array(B * P);
  for (let b = 0; b < B; b++) {
    const p = prompts[b], off = P - p.length;
    const row = new Array<number>(P).fill(0);
    for (let t = 0; t < P; t++) {
      ids[b * P + t] = BigInt(t < off ? opts.padTokenId : p[t - off]);
      pos[b * P + t] = BigInt(Math.max(0, t - off));
      if (t >= off) row[t] = 1;
    }
    mask.push(row);
  }
  const emptyKv: Feed = { data: new Float32Array(0), dims: [B, cfg.numKvHeads, 0, cfg.headDim] };
  const past: Record<string, Feed> = {};
  for (let l = 0; l < cfg.numLayers; l++) {
    past[`past_key_values.${l}.key`] = emptyKv;
    past[`past_key_values.${l}.value`] = emptyKv;
  }
  const gen: number[][] = prompts.map(() => []);
  const done = new Array<boolean>(B).fill(false);
  let feedIds = ids, feedPos = pos, S = P;
  for (let k = 0; k < opts.maxNewTokens; k++) {
    const am = BigInt64Array.from(mask.flat(), (v) => BigInt(v));
    const res = await dec.session.run({
      input_ids: { data: feedIds, dims: [B, S] },
      attention_mask: { data: am, dims: [B, mask[0].length] },
      position_ids: { data: feedPos, dims: [B, S] },
      ...past,
    });
    const logits = res.logits.data as Float32Array;
    const next = new BigInt64Array(B), nextPos = new BigInt64Array(B);
    for (let b = 0; b < B; b++) {
      const tok = done[b] ? opts.padTokenId : argmax(logits, (b * S + S - 1) * V, V);
      if (!done[b]) {
        if (tok === opts.eosTokenId) done[b] = true;
        else gen[b].push(tok);
      }
      next[b] = BigInt(tok);
      nextPos[b] = BigInt(prompts[b].length + k);
      mask[b].push(1);
    }
    if (done.every((d) => d)) break;
    for (let l = 0; l < cfg.numLayers; l++) {
      for (const kind of ["key", "value"]) {
        const o = res[`present.${l}.${kind}`];
        past[`past_key_values.${l}.${kind}`] = { data: o.data as Float32Array, dims: o.dims };
      }
    }
    feedIds = next;
    feedPos = nextPos;
    S = 1;
  }
  return gen;
}
