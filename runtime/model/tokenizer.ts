/**
 * Tokenizers through Transformers.js, wrapped into the small `ModelTokenizer` interface the data
 * pipeline codes against. Local folders and hub ids go through `AutoTokenizer`; http(s) sources (and
 * in-memory JSON) build the same `PreTrainedTokenizer` from the two JSON files directly.
 */
import { type ModelSource, readJsonOptional, resolveSource, transformersOptions } from "./hub.ts";
import { importTransformers } from "../deps.ts";
import type { TextTokenizer } from "../data/types.ts";

/** A tokenizer as the model uses it: the data pipeline's `TextTokenizer` plus the vocabulary size graphs need. */
export interface ModelTokenizer extends TextTokenizer {
  vocabSize: number;
}

/** Missing or unusable tokenizer files. */
export class TokenizerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TokenizerError";
  }
}

// deno-lint-ignore no-explicit-any
type HfTokenizer = any;

/** Wraps a Transformers.js tokenizer. EOS must exist (responses end with it); PAD falls back to EOS. */
export function wrapTokenizer(
  tok: HfTokenizer,
  fallback: { eosTokenId?: number; padTokenId?: number } = {},
): ModelTokenizer {
  const eos = tok.eos_token_id ?? fallback.eosTokenId;
  if (typeof eos !== "number") {
    throw new TokenizerError("tokenizer has no eos_token (set it in tokenizer_config.json)");
  }
  const pad = tok.pad_token_id ?? fallback.padTokenId ?? eos;
  const bos = typeof tok.bos_token_id === "number" ? tok.bos_token_id : undefined;
  const vocabSize: number = tok.get_vocab().size;
  return {
    encode: (text: string) => tok.encode(text, { add_special_tokens: false }) as number[],
    decode: (ids: number[]) =>
      ids.length === 0 ? "" : tok.decode(ids, { skip_special_tokens: true }) as string,
    eosTokenId: eos,
    padTokenId: pad,
    bosTokenId: bos,
    vocabSize,
  };
}

/** Builds a tokenizer from the parsed `tokenizer.json` and `tokenizer_config.json`. */
export async function tokenizerFromJson(
  tokenizerJson: unknown,
  tokenizerConfig: unknown,
): Promise<ModelTokenizer> {
  const { PreTrainedTokenizer } = await importTransformers();
  // deno-lint-ignore no-explicit-any
  const tok = new (PreTrainedTokenizer as any)(tokenizerJson, tokenizerConfig ?? {});
  return wrapTokenizer(tok);
}

/** Loads the tokenizer of a model folder, URL or hub id. */
export async function loadTokenizer(pathOrSource: string | ModelSource): Promise<ModelTokenizer> {
  const src = typeof pathOrSource === "string" ? await resolveSource(pathOrSource) : pathOrSource;
  if (src.kind === "url") {
    const json = await readJsonOptional(src, "tokenizer.json");
    if (json === null) throw new TokenizerError(`no tokenizer.json at ${src.location}`);
    return tokenizerFromJson(json, await readJsonOptional(src, "tokenizer_config.json"));
  }
  const { AutoTokenizer } = await importTransformers();
  let tok: HfTokenizer;
  try {
    tok = await AutoTokenizer.from_pretrained(src.location, transformersOptions(src));
  } catch (e) {
    throw new TokenizerError(`cannot load tokenizer from ${src.location}: ${(e as Error).message}`);
  }
  if (!tok?._tokenizer) {
    throw new TokenizerError(`no tokenizer.json/tokenizer_config.json at ${src.location}`);
  }
  return wrapTokenizer(tok);
}
