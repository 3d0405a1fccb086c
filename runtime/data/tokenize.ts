/** Tokenization of examples: prompt tokens carry no loss, response tokens and EOS do. */
import { DataError, type Example, type TextTokenizer } from "./types.ts";

/** One tokenized example: ids and, per id, whether it is a response (loss-bearing) token. */
export interface TokenizedExample {
  ids: number[];
  /** `isResponse[j] = 1` iff ids[j] belongs to the response or is the appended EOS. */
  isResponse: Uint8Array;
}

/**
 * Tokenizes one example: [BOS?] prompt | response EOS, truncated to `maxLen`. When too long the
 * response keeps at least half the window (or all of it if shorter) and the prompt loses its
 * oldest tokens first, so every kept example still has response tokens to learn from.
 */
export function tokenizeExample(ex: Example, tok: TextTokenizer, maxLen: number): TokenizedExample {
  if (!Number.isInteger(maxLen) || maxLen < 2) {
    throw new DataError(`maxLen must be an integer >= 2, got ${maxLen}`);
  }
  const prompt = tok.encode(ex.prompt);
  if (tok.bosTokenId !== undefined) prompt.unshift(tok.bosTokenId);
  const response = tok.encode(ex.response);
  response.push(tok.eosTokenId);
  let p = prompt;
  let r = response;
  if (p.length + r.length > maxLen) {
    const rKeep = Math.min(r.length, Math.max(maxLen - p.length, Math.floor(maxLen / 2)));
    r = r.slice(0, rKeep);
    p = p.slice(p.length - (maxLen - rKeep));
  }
  const ids = p.concat(r);
  const isResponse = new Uint8Array(ids.length);
  isResponse.fill(1, p.length);
  return { ids, isResponse };
}

/** Number of loss-bearing (predicted response) positions of a tokenized example. */
export function responseTokenCount(t: TokenizedExample): number {
  let n = 0;
  for (let j = 1; j < t.isResponse.length; j++) n += t.isResponse[j];
  return n;
}
