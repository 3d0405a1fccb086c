/**
 * Partitioning a dataset into federated clients: by category (one or several clients per category)
 * or Dirichlet(alpha) over categories, each with a deterministic seeded train/test split.
 */
import { deriveSeed, dirichlet, mulberry32, shuffled } from "../data/rng.ts";
import type { Example } from "../data/types.ts";

/** One client's data. */
export interface ClientData {
  id: string;
  train: Example[];
  test: Example[];
  /** Examples carved from the training data (never trained on) to choose the client's own knobs on. */
  validation?: Example[];
  /** Example count per category (train + test), for reports. */
  categories: Record<string, number>;
}

/** Split options shared by the partitioners. */
export interface SplitOptions {
  seed?: number;
  /** Fraction of each client's examples held out for testing (default 0.1). */
  testFraction?: number;
  /** Caps applied after the split (small demos). */
  maxTrain?: number;
  maxTest?: number;
}

/** Partition spec as given on the command line: "category", "category:K" or "dirichlet:ALPHA". */
export type PartitionSpec =
  | { kind: "category"; clientsPerCategory: number }
  | { kind: "dirichlet"; alpha: number; clients: number };

function strHash(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** Examples grouped by category, categories sorted, each group shuffled with a seed derived from its name. */
export function groupByCategory(examples: Example[], seed = 0): Map<string, Example[]> {
  const groups = new Map<string, Example[]>();
  for (const ex of examples) {
    const c = ex.category ?? "unknown";
    if (!groups.has(c)) groups.set(c, []);
    groups.get(c)!.push(ex);
  }
  const sorted = new Map<string, Example[]>();
  for (const c of [...groups.keys()].sort()) {
    sorted.set(c, shuffled(groups.get(c)!, deriveSeed(seed, strHash(c))));
  }
  return sorted;
}

/** Deterministic train/test split of one client's examples. */
export function splitTrainTest(
  examples: Example[],
  id: string,
  opts: SplitOptions = {},
): { train: Example[]; test: Example[] } {
  const frac = opts.testFraction ?? 0.1;
  if (!(frac > 0 && frac < 1)) throw new RangeError(`testFraction must be in (0, 1), got ${frac}`);
  const mixed = shuffled(examples, deriveSeed(opts.seed ?? 0, strHash(id), 1));
  const nTest = examples.length < 2 ? 0 : Math.max(1, Math.round(examples.length * frac));
  let test = mixed.slice(0, nTest);
  let train = mixed.slice(nTest);
  if (opts.maxTrain !== undefined) train = train.slice(0, opts.maxTrain);
  if (opts.maxTest !== undefined) test = test.slice(0, opts.maxTest);
  return { train, test };
}

/**
 * A validation split carved from a client's training examples (seeded, never from its test split):
 * `share` of them, at least one, held out from training to choose the client's own knobs on.
 */
export function splitValidation(
  train: Example[],
  share: number,
  seed: number,
): { fit: Example[]; validation: Example[] } {
  if (!(share > 0 && share < 1)) throw new RangeError(`validation share must be in (0, 1), got ${share}`);
  if (train.length < 2) throw new RangeError(`${train.length} training examples leave none to validate on`);
  const mixed = shuffled(train, deriveSeed(seed, 0x7a1));
  const n = Math.min(train.length - 1, Math.max(1, Math.round(train.length * share)));
  return { fit: mixed.slice(n), validation: mixed.slice(0, n) };
}

function countCategories(examples: Example[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const ex of examples) out[ex.category ?? "unknown"] = (out[ex.category ?? "unknown"] ?? 0) + 1;
  return out;
}

function finish(id: string, examples: Example[], opts: SplitOptions): ClientData {
  const { train, test } = splitTrainTest(examples, id, opts);
  return { id, train, test, categories: countCategories(examples) };
}

/** One client per category, or `clientsPerCategory` clients sharing each category's examples evenly. */
export function partitionByCategory(
  examples: Example[],
  clientsPerCategory = 1,
  opts: SplitOptions = {},
): ClientData[] {
  if (!Number.isInteger(clientsPerCategory) || clientsPerCategory < 1) {
    throw new RangeError(`clientsPerCategory must be a positive integer, got ${clientsPerCategory}`);
  }
  const out: ClientData[] = [];
  for (const [cat, exs] of groupByCategory(examples, opts.seed)) {
    for (let j = 0; j < clientsPerCategory; j++) {
      const part = exs.filter((_, i) => i % clientsPerCategory === j);
      out.push(finish(clientsPerCategory === 1 ? cat : `${cat}-${j}`, part, opts));
    }
  }
  return out;
}

/**
 * Dirichlet(alpha) label skew: each category's examples are split over `clients` clients with
 * proportions drawn from Dir(alpha). Small alpha → each client sees few categories.
 */
export function partitionDirichlet(
  examples: Example[],
  clients: number,
  alpha: number,
  opts: SplitOptions = {},
): ClientData[] {
  if (!Number.isInteger(clients) || clients < 1) {
    throw new RangeError(`clients must be a positive integer, got ${clients}`);
  }
  if (!(alpha > 0)) throw new RangeError(`alpha must be > 0, got ${alpha}`);
  const rand = mulberry32(deriveSeed(opts.seed ?? 0, 0xd1c4));
  const buckets: Example[][] = Array.from({ length: clients }, () => []);
  for (const [, exs] of groupByCategory(examples, opts.seed)) {
    const p = dirichlet(alpha, clients, rand);
    let start = 0;
    let acc = 0;
    for (let c = 0; c < clients; c++) {
      acc += p[c];
      const end = c === clients - 1 ? exs.length : Math.round(acc * exs.length);
      buckets[c].push(...exs.slice(start, end));
      start = end;
    }
  }
  return buckets.map((b, c) => finish(`client-${c}`, b, opts));
}

/** Parses "category", "category:K" or "dirichlet:ALPHA" (clients taken from `clients`). */
export function parsePartition(spec: string, clients: number): PartitionSpec {
  const [kind, arg] = spec.split(":");
  if (kind === "category") {
    const k = arg === undefined ? 1 : Number(arg);
    if (!Number.isInteger(k) || k < 1) {
      throw new RangeError(`bad partition "${spec}": clients per category must be a positive integer`);
    }
    return { kind: "category", clientsPerCategory: k };
  }
  if (kind === "dirichlet") {
    const alpha = Number(arg);
    if (!(alpha > 0)) throw new RangeError(`bad partition "${spec}": use dirichlet:ALPHA with ALPHA > 0`);
    return { kind: "dirichlet", alpha, clients };
  }
  throw new RangeError(`unknown partition "${spec}" (use category, category:K or dirichlet:ALPHA)`);
}

/** Applies a parsed partition spec. */
export function partition(examples: Example[], spec: PartitionSpec, opts: SplitOptions = {}): ClientData[] {
  return spec.kind === "category"
    ? partitionByCategory(examples, spec.clientsPerCategory, opts)
    : partitionDirichlet(examples, spec.clients, spec.alpha, opts);
}
