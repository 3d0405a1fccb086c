/** A dependency-free UTF-8 byte tokenizer: ids 0..2 are PAD/BOS/EOS, byte b is id b+3. */
import type { TextTokenizer } from "./types.ts";

/** Byte-level tokenizer for tests and tiny models (vocabulary 259). */
export class ByteTokenizer implements TextTokenizer {
  readonly padTokenId = 0;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId = 2;
  readonly vocabSize = 259;
  constructor(opts: { bos?: boolean } = {}) {
    this.bosTokenId = opts.bos ? 1 : undefined;
  }
  /** Encodes text as its UTF-8 bytes shifted past the special ids. */
  encode(text: string): number[] {
    return Array.from(new TextEncoder().encode(text), (b) => b + 3);
  }
  /** Decodes ids, skipping special ids. */
  decode(ids: number[]): string {
    return new TextDecoder().decode(Uint8Array.from(ids.filter((i) => i >= 3 && i < 259), (i) => i - 3));
  }
}
