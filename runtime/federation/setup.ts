/** I/O shell for runs on real data: loading lexicon-instruct, engines per rank, CLI flags. */
import { loadJsonl } from "../data/jsonl.ts";
import { fileNames } from "../io/files.ts";
import type { Example } from "../data/types.ts";
import { Engine, type LoadedModel } from "../model/engine.ts";
import type { EngineFactory, SimConfig } from "./types.ts";

/**
 * Records the bundled base model was pre-trained on: `scripts/pretrain.ts` uses every record whose
 * index in its file is 0 mod 4. Federated runs on the bundled data skip them, so no client is
 * evaluated on text the base has seen.
 */
export const PRETRAIN_STRIDE = 4;

/** Loads every `*.jsonl` file of a folder (sorted by name, any supported format). */
export async function loadFolder(dir: string, opts: { skipEvery?: number } = {}): Promise<Example[]> {
  const names = (await fileNames(dir)).filter((n) => n.endsWith(".jsonl"));
  if (names.length === 0) throw new Error(`no .jsonl files in ${dir}`);
  const out: Example[] = [];
  for (const n of names.sort()) {
    let exs = await loadJsonl(`${dir}/${n}`);
    const stride = opts.skipEvery ?? 0;
    if (stride > 0) exs = exs.filter((_, i) => i % stride !== 0);
    // Files without a category field are one category each, named after the file.
    for (const ex of exs) out.push(ex.category ? ex : { ...ex, category: n.replace(/\.jsonl$/, "") });
  }
  return out;
}

/** Engine factory that builds one engine per rank, all with the base-rank scale alpha / r. */
export function engineFactory(
  model: LoadedModel,
  cfg: SimConfig,
  backend: "auto" | "node" | "wasm" | "webgpu" = "auto",
): EngineFactory & { backendName: () => string } {
  const cache = new Map<number, Promise<Engine>>();
  let name = backend as string;
  const f = (rank: number) => {
    if (!cache.has(rank)) {
      cache.set(
        rank,
        Engine.create(model, { rank, alpha: cfg.alpha, targets: cfg.targets, baseRank: cfg.rank }, {
          backend,
        })
          .then((e) => {
            name = e.backend;
            return e;
          }),
      );
    }
    return cache.get(rank)!;
  };
  return Object.assign(f, { backendName: () => name });
}
