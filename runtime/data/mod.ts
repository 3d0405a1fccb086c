/** Instruction data: loaders, templates, tokenization, batching, seeded randomness. */
export * from "./types.ts";
export * from "./template.ts";
export * from "./jsonl.ts";
export * from "./tokenize.ts";
export * from "./batches.ts";
export * from "./rng.ts";
export { ByteTokenizer } from "./byte_tokenizer.ts";
