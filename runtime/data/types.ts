/** Shared types of the instruction-data pipeline. */

/** One instruction example after loading: the rendered prompt and the target response. */
export interface Example {
  prompt: string;
  response: string;
  category?: string;
}

/**
 * The tokenizer surface the data pipeline needs (Transformers.js tokenizers adapt to it); the model
 * area's `ModelTokenizer` adds the vocabulary size, which only graph building needs, so toy
 * tokenizers in data code and tests may leave it out.
 */
export interface TextTokenizer {
  /** Token ids of `text`, without special tokens (templates add BOS/EOS themselves). */
  encode(text: string): number[];
  /** Text of `ids`, special tokens dropped. */
  decode(ids: number[]): string;
  eosTokenId: number;
  padTokenId: number;
  bosTokenId?: number;
}

/** A padded training/eval batch: the engine's own `Batch`, which the data pipeline produces. */
export type { Batch } from "../model/engine.ts";

/** Error raised for malformed data; the message names the source and line. */
export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataError";
  }
}
