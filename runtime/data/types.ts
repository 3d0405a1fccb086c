/** Shared types of the instruction-data pipeline. */

/** One instruction example after loading: the rendered prompt and the target response. */
export interface Example {
  prompt: string;
  response: string;
  category?: string;
}

/** Minimal tokenizer surface the data pipeline needs (Transformers.js tokenizers adapt to it). */
export interface TextTokenizer {
  encode(text: string): number[];
  decode(ids: number[]): string;
  eosTokenId: number;
  padTokenId: number;
  bosTokenId?: number;
}

/**
 * A padded training/eval batch, structurally identical to the engine's `Batch`.
 * `lossMask[b*seq+t] = 1` iff token t+1 of row b is a real response (or EOS) token,
 * i.e. the mask is already shifted to the position that predicts it.
 */
export interface Batch {
  inputIds: BigInt64Array | Int32Array;
  attentionMask: Float32Array;
  lossMask: Float32Array;
  batch: number;
  seq: number;
}

/** Error raised for malformed data; the message names the source and line. */
export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataError";
  }
}
