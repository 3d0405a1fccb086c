/** Shared fixtures of the federation tests: one tiny model per test process, and word data by category. */
import { generateTinyModel } from "../runtime/model/tiny.ts";
import { type LoadedModel, loadModel } from "../runtime/model/engine.ts";
import type { Example } from "../runtime/data/types.ts";

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
