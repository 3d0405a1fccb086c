/**
 * A small deterministic byte-level BPE trainer that writes a Hugging Face `tokenizer.json`
 * (GPT-2 style: ByteLevel pre-tokenizer and decoder, BPE model), so our generated models load
 * through Transformers.js like any hub model.
 */

/** GPT-2's reversible byte -> printable-character map (same table as `tokenizers`' ByteLevel). */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let i = 33; i <= 126; i++) bs.push(i);
  for (let i = 161; i <= 172; i++) bs.push(i);
  for (let i = 174; i <= 255; i++) bs.push(i);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out = new Array<string>(256);
  bs.forEach((b, i) => (out[b] = String.fromCharCode(cs[i])));
  return out;
}

const PRETOKEN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Options of `trainBpe`. */
export interface BpeOptions {
  /** Number of merges to learn (vocab = specials + 256 + merges, fewer when the corpus runs out of pairs). */
  merges: number;
  /** Special tokens, given ids 0..n-1 in this order. */
  specialTokens: string[];
}

/** A trained tokenizer: the HF `tokenizer.json` object and its vocab size. */
export interface TrainedBpe {
  tokenizerJson: Record<string, unknown>;
  vocabSize: number;
}

/** Trains byte-level BPE on `texts`. Ties between equally frequent pairs go to the smaller id pair. */
export function trainBpe(texts: Iterable<string>, opts: BpeOptions): TrainedBpe {
  const byteChar = bytesToUnicode();
  const enc = new TextEncoder();
  const tokens: string[] = [...opts.specialTokens, ...byteChar];
  const idOf = new Map<string, number>(tokens.map((t, i) => [t, i]));
  const base = opts.specialTokens.length;

  // Count distinct pre-tokens; BPE never merges across them.
  const wordCount = new Map<string, number>();
  for (const text of texts) {
    for (const m of text.match(PRETOKEN) ?? []) wordCount.set(m, (wordCount.get(m) ?? 0) + 1);
  }
  const words: number[][] = [];
  const counts: number[] = [];
  for (const [w, c] of [...wordCount].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    words.push(Array.from(enc.encode(w), (b) => base + b));
    counts.push(c);
  }

  const SHIFT = 1 << 20;
  const pairCount = new Map<number, number>();
  const where = new Map<number, Set<number>>();
  const addWord = (wi: number, sign: number) => {
    const w = words[wi];
    for (let i = 0; i + 1 < w.length; i++) {
      const k = w[i] * SHIFT + w[i + 1];
      pairCount.set(k, (pairCount.get(k) ?? 0) + sign * counts[wi]);
      if (sign > 0) {
        let s = where.get(k);
        if (!s) where.set(k, s = new Set());
        s.add(wi);
      }
    }
  };
  for (let wi = 0; wi < words.length; wi++) addWord(wi, 1);

  const merges: [string, string][] = [];
  for (let m = 0; m < opts.merges; m++) {
    let best = -1, bestCount = 1;
    for (const [k, c] of pairCount) {
      if (c > bestCount || (c === bestCount && c > 1 && k < best)) {
        best = k;
        bestCount = c;
      }
    }
    if (best < 0) break;
    const a = Math.floor(best / SHIFT), b = best % SHIFT;
    const merged = tokens[a] + tokens[b];
    let id = idOf.get(merged);
    if (id === undefined) {
      id = tokens.length;
      tokens.push(merged);
      idOf.set(merged, id);
    }
    merges.push([tokens[a], tokens[b]]);
    const affected = [...(where.get(best) ?? [])].sort((x, y) => x - y);
    for (const wi of affected) {
      addWord(wi, -1);
      const w = words[wi], out: number[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) {
          out.push(id);
          i++;
        } else out.push(w[i]);
      }
      words[wi] = out;
      addWord(wi, 1);
    }
    pairCount.delete(best);
    where.delete(best);
    for (const [k, c] of pairCount) if (c <= 0) pairCount.delete(k);
  }

  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => {
    if (i >= base) vocab[t] = i;
  });
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: opts.specialTokens.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(opts.specialTokens.map((t, i) => [t, i]).concat(Object.entries(vocab))),
      merges: merges.map(([x, y]) => `${x} ${y}`),
    },
  };
  return { tokenizerJson, vocabSize: tokens.length };
}
