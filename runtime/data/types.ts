/** Shared types of the instruction-data pipeline. */
import type { TextTokenizer as ModelTextTokenizer } from "../model/tokenizer.ts";

/** One instruction example after loading: the rendered prompt and the target response. */
export interface Example {
  prompt: string;
  response: string;
  category?: string;
}

/**
 * Minimal tokenizer surface the data pipeline needs (Transformers.js tokenizers adapt to it). It is
 * the model area's tokenizer minus `vocabSize`, which only graph building needs, so toy tokenizers
 * in data code and tests may leave it out.
 */
export type TextTokenizer = Omit<ModelTextTokenizer, "vocabSize">;

/** A padded training/eval batch: the engine's own `Batch`, which the data pipeline produces. */
export type { Batch } from "../model/engine.ts";

/** Error raised for malformed data; the message names the source and line. */
export class DataError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DataError";
  }
}
