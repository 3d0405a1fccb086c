/**
 * ROUGE-L (longest common subsequence) as Google's `rouge-score` package defines it, the scorer the
 * FedIT, Shepherd and FedDPA papers report: its default tokenizer lowercases, replaces every run of
 * characters outside [a-z0-9] by a space and splits on whitespace (no stemming); precision is
 * LCS / prediction tokens, recall LCS / reference tokens, F1 their harmonic mean, and an empty side
 * scores 0. tests/eval_rouge.test.ts checks these functions against rouge-score itself.
 */

/** Precision, recall and F1 of one (reference, prediction) pair, each in [0, 1]. */
export interface RougeScore {
  precision: number;
  recall: number;
  f: number;
}

/** rouge-score's default tokens: lowercase, non-[a-z0-9] runs become spaces, split on whitespace. */
export function rougeTokens(text: string): string[] {
  if (typeof text !== "string") throw new TypeError(`rougeTokens needs a string, got ${typeof text}`);
  // Python's str.lower() and JS toLowerCase() agree on everything that can land in [a-z0-9] (e.g. the
  // Kelvin sign K becomes k in both); whatever else they produce is dropped by the next step anyway.
  return text.toLowerCase().replace(/[^a-z0-9]+/g, " ").split(/\s+/).filter((t) => t !== "");
}

/** Length of the longest common subsequence of two token lists (O(|a|·|b|) time, O(|b|) memory). */
export function lcsLength(a: readonly string[], b: readonly string[]): number {
  if (a.length === 0 || b.length === 0) return 0;
  let prev = new Uint32Array(b.length + 1), cur = new Uint32Array(b.length + 1);
  for (let i = 1; i <= a.length; i++) {
    const ai = a[i - 1];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = ai === b[j - 1] ? prev[j - 1] + 1 : Math.max(prev[j], cur[j - 1]);
    }
    [prev, cur] = [cur, prev];
  }
  return prev[b.length];
}

/** ROUGE-L of token lists (reference first, as in rouge-score's `score(target, prediction)`). */
export function rougeLTokens(reference: readonly string[], prediction: readonly string[]): RougeScore {
  if (reference.length === 0 || prediction.length === 0) return { precision: 0, recall: 0, f: 0 };
  const lcs = lcsLength(reference, prediction);
  const precision = lcs / prediction.length, recall = lcs / reference.length;
  return {
    precision,
    recall,
    f: precision + recall > 0 ? (2 * precision * recall) / (precision + recall) : 0,
  };
}

/** ROUGE-L of texts: `rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"]`. */
export function rougeL(reference: string, prediction: string): RougeScore {
  return rougeLTokens(rougeTokens(reference), rougeTokens(prediction));
}

/** Mean precision, recall and F1 over pairs (the per-client figure); refuses an empty list. */
export function meanRouge(scores: readonly RougeScore[]): RougeScore {
  if (scores.length === 0) throw new RangeError("meanRouge needs at least one score");
  const n = scores.length;
  let p = 0, r = 0, f = 0;
  for (const s of scores) {
    p += s.precision;
    r += s.recall;
    f += s.f;
  }
  return { precision: p / n, recall: r / n, f: f / n };
}
