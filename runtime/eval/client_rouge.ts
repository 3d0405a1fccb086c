/**
 * The generation metric of one client: greedy completions of its held-out prompts, scored with ROUGE-L
 * F1 against the reference responses (as the FedIT, Shepherd and FedDPA papers report it).
 */
import type { Example, TextTokenizer } from "../data/types.ts";
import type { LoadedModel } from "../model/load.ts";
import { fromKernelLayout } from "../model/train_step.ts";
import type { Backend } from "../graph/session.ts";
import { type ClientAdapter, GenerateError, greedyGenerate, openDecoder, promptTokens } from "./generate.ts";
import { meanRouge, rougeL, type RougeScore } from "./rouge.ts";

/** How completions are made and scored. */
export interface RougeSettings {
  /** Held-out examples per client, at most (the first ones of its test split, which is already shuffled). */
  maxExamples: number;
  /** New tokens per completion, at most (EOS ends it earlier). */
  maxNewTokens: number;
  /** Training's window: the prompt keeps what training keeps of it (`promptTokens`). */
  maxLen: number;
}

/** One scored completion. */
export interface RougeSample {
  prompt: string;
  reference: string;
  prediction: string;
  f: number;
}

/** A client's ROUGE-L: means over its scored examples (null with no test example). */
export interface ClientRouge {
  id: string;
  examples: number;
  precision: number | null;
  recall: number | null;
  f: number | null;
  /** Mean completion length in tokens. */
  meanNewTokens: number;
  /** The first few completions, for reading. */
  samples: RougeSample[];
  seconds: number;
}

/** Refuses settings that are not positive integers. */
export function checkRougeSettings(s: RougeSettings): void {
  for (const [k, v] of Object.entries(s)) {
    if (!Number.isInteger(v) || v < 1) throw new GenerateError(`${k} must be a positive integer, got ${v}`);
  }
}

/**
 * Completes and scores one client's test examples with the base model plus its adapter (the base alone
 * without one). The reference is the whole response text, not the part that fits training's window.
 */
export async function clientRouge(
  model: LoadedModel,
  tokenizer: TextTokenizer,
  client: { id: string; test: readonly Example[] },
  adapter: ClientAdapter | undefined,
  settings: RougeSettings,
  opts: { backend?: Backend; numThreads?: number; samples?: number } = {},
): Promise<ClientRouge> {
  checkRougeSettings(settings);
  const t0 = performance.now();
  const exs = client.test.slice(0, settings.maxExamples);
  if (exs.length === 0) {
    return {
      id: client.id,
      examples: 0,
      precision: null,
      recall: null,
      f: null,
      meanNewTokens: 0,
      samples: [],
      seconds: 0,
    };
  }
  // HF layout only for the decoder's build (the model holds the engine's layout).
  const dec = await openDecoder(model.config, fromKernelLayout(model.kernelWeights), adapter, opts);
  let gen: number[][];
  try {
    gen = await greedyGenerate(dec, exs.map((ex) => promptTokens(ex, tokenizer, settings.maxLen)), {
      maxNewTokens: settings.maxNewTokens,
      eosTokenId: tokenizer.eosTokenId,
      padTokenId: tokenizer.padTokenId,
      batchSize: exs.length,
    });
  } finally {
    await dec.release();
  }
  const predictions = gen.map((ids) => tokenizer.decode(ids));
  const scores: RougeScore[] = exs.map((ex, i) => rougeL(ex.response, predictions[i]));
  const m = meanRouge(scores);
  return {
    id: client.id,
    examples: exs.length,
    precision: m.precision,
    recall: m.recall,
    f: m.f,
    meanNewTokens: gen.reduce((a, g) => a + g.length, 0) / gen.length,
    samples: exs.slice(0, opts.samples ?? 3).map((ex, i) => ({
      prompt: ex.prompt,
      reference: ex.response,
      prediction: predictions[i],
      f: scores[i].f,
    })),
    seconds: (performance.now() - t0) / 1000,
  };
}
