/**
 * Robust aggregation: what one client can do to the parameter-wise mean, and the rules that bound
 * it. Pure functions over flat arrays; the coordinator owns the buffers and calls these through the
 * run's `AggregationRule` (see `ruleFor`), never by comparing names.
 *
 * The run configuration chooses two things (server/run_config.ts):
 *  - `weighting`: what an upload weighs in the round. "samples" (the default, FedAvg) trusts the
 *    client's self-reported sample count, capped by `maxSamples`; "equal" weighs every upload 1.
 *  - `aggregation`: how the holders of one position are combined.
 *      "mean"          Σ w·v / Σ w, streamed into the round's accumulators (the default).
 *      "clipped-mean"  the same, after scaling each upload's values so that their L2 norm is at most
 *                      `clipNorm` (streamed too: the scale depends on the upload alone).
 *      "trimmed-mean"  per position, sort the holders by value and drop `trim`·W of weight from each
 *                      end (W: the holders' total weight; fractionally at the boundary), then take the
 *                      weighted mean of what is left. With equal weights and `trim`·k whole (k
 *                      holders) this is the classic coordinate-wise trimmed mean.
 *      "median"        per position, the weighted median: the value at weight W/2, or the midpoint of
 *                      the two values around it when W/2 falls between two holders (with equal
 *                      weights: the classic median). It is the limit of the trimmed mean at trim → ½.
 *    The last two need every holder's value at once, so the round's uploads are held (in memory
 *    and in KV, see group_commit.ts) and combined when the round closes (`combineHeld`).
 */
import type { RunConfig } from "./run_config.ts";

/** The aggregation rules a run may choose. */
export const AGGREGATIONS = ["mean", "trimmed-mean", "median", "clipped-mean"] as const;
export type Aggregation = typeof AGGREGATIONS[number];
/** What an upload weighs. */
export const WEIGHTINGS = ["samples", "equal"] as const;
export type Weighting = typeof WEIGHTINGS[number];

/** Largest `samples` the wire format carries: the default `maxSamples`. */
export const WIRE_MAX_SAMPLES = 1e9;

/** One position's holders: values and weights, `count` of them (both arrays may be longer). */
export type Combine = (xs: Float64Array, ws: Float64Array, count: number) => number;

/** An upload held for a rule that combines at close: its mask, its values in bit order, its weight. */
export interface HeldUpdate {
  bits: Uint32Array;
  values: Float32Array;
  weight: number;
}

/** How a run aggregates a position (chosen by `ruleFor` from the run's configuration). */
export interface AggregationRule {
  readonly name: Aggregation;
  /**
   * True: uploads are folded into sum/weight accumulators as they arrive (server/aggregate.ts).
   * False: the round's uploads are held and `combine` runs per position when the round closes.
   */
  readonly streams: boolean;
  /** The values as they enter the round, given their L2 norm (the same array when unchanged). */
  admit(values: Float32Array, norm: number): Float32Array;
  /** The aggregate of one position's holders (rules that do not stream). */
  readonly combine: Combine | null;
}

/** Factor that brings a vector of L2 norm `norm` to at most `clipNorm` (1 when already within). */
export function clipFactor(norm: number, clipNorm: number): number {
  return norm > clipNorm ? clipNorm / norm : 1;
}

/** `values` scaled to an L2 norm of at most `clipNorm`: a scaled copy, or `values` itself when within. */
export function clipToNorm(values: Float32Array, norm: number, clipNorm: number): Float32Array {
  const f = clipFactor(norm, clipNorm);
  if (f === 1) return values;
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = values[i] * f;
  return out;
}

/** Sorts the first `count` pairs (xs[i], ws[i]) by value, in place; ties keep their order. */
export function sortPairs(xs: Float64Array, ws: Float64Array, count: number): void {
  if (count <= 48) {
    for (let i = 1; i < count; i++) {
      const x = xs[i], w = ws[i];
      let j = i - 1;
      while (j >= 0 && xs[j] > x) {
        xs[j + 1] = xs[j];
        ws[j + 1] = ws[j];
        j--;
      }
      xs[j + 1] = x;
      ws[j + 1] = w;
    }
    return;
  }
  const idx = new Uint32Array(count);
  for (let i = 0; i < count; i++) idx[i] = i;
  idx.sort((a, b) => xs[a] - xs[b] || a - b);
  const x2 = Float64Array.from(idx, (i) => xs[i]);
  const w2 = Float64Array.from(idx, (i) => ws[i]);
  xs.set(x2);
  ws.set(w2);
}

/**
 * Weighted trimmed mean of the first `count` pairs (weights > 0, 0 ≤ trim < ½): sorted by value, the
 * weight mass outside [trim·W, (1−trim)·W] is dropped (an item straddling a boundary keeps its part
 * inside) and the weighted mean of the rest is returned. Sorts the pairs in place.
 */
export function weightedTrimmedMean(xs: Float64Array, ws: Float64Array, count: number, trim: number): number {
  if (count === 0) return NaN;
  if (!(trim >= 0 && trim < 0.5)) throw new RangeError(`trim must be in [0, 0.5), got ${trim}`);
  sortPairs(xs, ws, count);
  let total = 0;
  for (let i = 0; i < count; i++) total += ws[i];
  const lo = trim * total;
  const hi = total - lo;
  let at = 0;
  let sum = 0;
  let kept = 0;
  for (let i = 0; i < count; i++) {
    const a = Math.max(at, lo);
    const b = Math.min(at + ws[i], hi);
    at += ws[i];
    if (b > a) {
      sum += (b - a) * xs[i];
      kept += b - a;
    }
  }
  return sum / kept;
}

/**
 * Weighted median of the first `count` pairs (weights > 0): the value of the item whose weight
 * interval holds W/2, or the midpoint of the two items whose intervals meet exactly there. Sorts
 * the pairs in place.
 */
export function weightedMedian(xs: Float64Array, ws: Float64Array, count: number): number {
  if (count === 0) return NaN;
  sortPairs(xs, ws, count);
  let total = 0;
  for (let i = 0; i < count; i++) total += ws[i];
  const half = total / 2;
  let at = 0;
  for (let i = 0; i < count; i++) {
    at += ws[i];
    if (at > half) return xs[i];
    if (at === half) return i + 1 < count ? (xs[i] + xs[i + 1]) / 2 : xs[i];
  }
  return xs[count - 1];
}

/** Holder entries buffered per block of positions in `combineHeld` (16 MiB of f64 pairs at most). */
const BLOCK_ENTRIES = 1 << 20;

/**
 * Closes a round of held uploads into the global adapter: at every position that some upload's
 * mask selects, `out[p] = combine(holders' values, holders' weights)` and the position is marked
 * in `covered`; elsewhere `out` keeps its previous value. Positions are processed in blocks so the
 * scratch memory stays at most BLOCK_ENTRIES pairs whatever the round holds.
 */
export function combineHeld(
  held: HeldUpdate[],
  n: number,
  combine: Combine,
  out: Float32Array,
  covered: Uint32Array,
): void {
  const k = held.length;
  if (k === 0) return;
  const words = Math.ceil(n / 32);
  for (const h of held) {
    if (h.bits.length !== words) throw new RangeError(`mask of ${h.bits.length} words, expected ${words}`);
    if (!(h.weight > 0)) throw new RangeError(`weights must be positive, got ${h.weight}`);
  }
  if (out.length !== n || covered.length !== words) throw new RangeError("output arrays of the wrong size");
  const blockWords = Math.max(1, Math.floor(BLOCK_ENTRIES / (32 * k)));
  const span = blockWords * 32;
  const xs = new Float64Array(span * k);
  const ws = new Float64Array(span * k);
  const count = new Uint32Array(span);
  const cursor = new Uint32Array(k); // index of each upload's next value (values are in bit order)
  for (let w0 = 0; w0 < words; w0 += blockWords) {
    const w1 = Math.min(words, w0 + blockWords);
    const p0 = w0 * 32;
    count.fill(0);
    for (let u = 0; u < k; u++) {
      const { bits, values, weight } = held[u];
      let c = cursor[u];
      for (let wi = w0; wi < w1; wi++) {
        let b = bits[wi];
        while (b !== 0) {
          const t = b & -b;
          const j = (wi << 5) + (31 - Math.clz32(t)) - p0;
          if (c >= values.length) throw new RangeError("an upload has fewer values than its mask selects");
          const at = j * k + count[j]++;
          xs[at] = values[c++];
          ws[at] = weight;
          b ^= t;
        }
      }
      cursor[u] = c;
    }
    for (let j = 0; j < span; j++) {
      const cnt = count[j];
      if (cnt === 0) continue;
      const p = p0 + j;
      out[p] = combine(xs.subarray(j * k, j * k + cnt), ws.subarray(j * k, j * k + cnt), cnt);
      covered[p >>> 5] |= 1 << (p & 31);
    }
  }
}

/** What an upload of `samples` weighs in a run (old runs without `weighting` weigh samples). */
export function weightOf(cfg: Pick<RunConfig, "weighting">, samples: number): number {
  return cfg.weighting === "equal" ? 1 : samples;
}

/** The largest `samples` a run admits (old runs without `maxSamples`: the wire format's bound). */
export function maxSamplesOf(cfg: Pick<RunConfig, "maxSamples">): number {
  return cfg.maxSamples ?? WIRE_MAX_SAMPLES;
}

const identity = (values: Float32Array) => values;

/** Each rule, built from a run's configuration (its parameters validated by parseRunConfig). */
const RULES: Readonly<Record<Aggregation, (cfg: RunConfig) => AggregationRule>> = {
  mean: () => ({ name: "mean", streams: true, admit: identity, combine: null }),
  "clipped-mean": (cfg) => {
    const clipNorm = cfg.clipNorm!;
    return {
      name: "clipped-mean",
      streams: true,
      admit: (values, norm) => clipToNorm(values, norm, clipNorm),
      combine: null,
    };
  },
  "trimmed-mean": (cfg) => {
    const trim = cfg.trim!;
    return {
      name: "trimmed-mean",
      streams: false,
      admit: identity,
      combine: (xs, ws, count) => weightedTrimmedMean(xs, ws, count, trim),
    };
  },
  median: () => ({ name: "median", streams: false, admit: identity, combine: weightedMedian }),
};

/** The aggregation rule of a run (old runs without `aggregation`: the mean). */
export function ruleFor(cfg: RunConfig): AggregationRule {
  const name = cfg.aggregation ?? "mean";
  if (!Object.hasOwn(RULES, name)) throw new RangeError(`unknown aggregation ${JSON.stringify(name)}`);
  return RULES[name](cfg);
}
