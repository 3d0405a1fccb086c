/** Evaluation beyond perplexity: ROUGE-L of greedy completions from personalized client models. */
export { lcsLength, meanRouge, rougeL, rougeLTokens, type RougeScore, rougeTokens } from "./rouge.ts";
export {
  argmax,
  type ClientAdapter,
  GenerateError,
  type GreedyDecoder,
  greedyGenerate,
  type GreedyOptions,
  openDecoder,
  promptTokens,
} from "./generate.ts";
export {
  checkRougeSettings,
  type ClientRouge,
  clientRouge,
  type RougeSample,
  type RougeSettings,
} from "./client_rouge.ts";
