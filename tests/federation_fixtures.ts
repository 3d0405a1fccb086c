/** Shared fixtures of the federation tests: one tiny model per test process, and word data by category. */
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { type LoadedModel, loadModel } from "../runtime/model/engine.ts";
import type { Example } from "../runtime/data/types.ts";
import { DEFAULT_SIM, type SimConfig } from "../runtime/federation/types.ts";
import type { Method } from "../runtime/federation/strategies.ts";

let cached: Promise<LoadedModel> | undefined;
/** The seed-3 tiny model (default merges), generated and loaded once per process; its folder is removed. */
export function federationTinyModel(): Promise<LoadedModel> {
  cached ??= (async () => {
    const dir = await Deno.makeTempDir();
    await generateTinyModel(dir, { seed: 3 });
    const m = await loadModel(dir);
    await Deno.remove(dir, { recursive: true });
    return m;
  })();
  return cached;
}

const WORDS = ["tree", "house", "cache", "fox", "dog", "kludge", "memory", "plant", "unit", "data"];
const KINDS = {
  define: (w: string): Example => ({
    prompt: `Define the word "${w}".`,
    response: `a ${w} is a tall ${w}`,
    category: "define",
  }),
  translate: (w: string): Example => ({
    prompt: `Translate ${w}.`,
    response: `maison ${w} Haus`,
    category: "translate",
  }),
  acronym: (w: string): Example => ({
    prompt: `Acronym ${w}?`,
    response: `CPU stands for ${w}`,
    category: "acronym",
  }),
};

/** `n` examples of each category, interleaved (define, translate[, acronym], define, …). */
export function wordData(n: number, categories: (keyof typeof KINDS)[] = ["define", "translate"]): Example[] {
  const out: Example[] = [];
  for (let i = 0; i < n; i++) for (const c of categories) out.push(KINDS[c](WORDS[i % WORDS.length]));
  return out;
}

/** The small simulations' config: 2 rounds × 6 steps at rank 2 over three tiers, seed 1. */
export function smallSimConfig(method: Method, over: Partial<SimConfig> = {}): SimConfig {
  return {
    ...DEFAULT_SIM,
    method,
    rounds: 2,
    localSteps: 6,
    rank: 2,
    alpha: 4,
    lr: 5e-3,
    pruneStages: 3,
    clientTiers: ["high", "mid", "low"],
    seed: 1,
    ...over,
  };
}
