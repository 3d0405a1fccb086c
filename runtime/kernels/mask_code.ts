/**
 * Compact codes for a 0/1 mask, for the one time a new mask travels (after that it goes by
 * reference): a bitmask, LEB128 gaps (the kernels' delta code), Golomb-Rice gaps, or Golomb-Rice
 * run lengths. Importance masks are clustered along rows, so runs usually win; a random mask of
 * density p costs about H(p)·n/8 bytes as Rice gaps, below the n/8 of a bitmask.
 */
import { KernelError, type Kernels } from "./types.ts";

/** How a mask is coded. */
export type MaskCodeMode = "bits" | "deltas" | "rice-gaps" | "rice-runs" | "rice-runs-rle";
/** Every mode, in the order a tie is broken (first wins). */
export const MASK_CODE_MODES: readonly MaskCodeMode[] = [
  "bits",
  "deltas",
  "rice-gaps",
  "rice-runs",
  "rice-runs-rle",
];

/**
 * A coded mask: the mode, its Rice parameters (0 where unused) and the bytes. `rice-runs-rle` codes
 * each (zeros, ones) run pair with how often it repeats at once: the part of a mask that holds a few
 * rank components of every row of a LoRA B matrix is one pair repeated once per row.
 */
export interface MaskCode {
  mode: MaskCodeMode;
  k1: number;
  k2: number;
  k3: number;
  bytes: Uint8Array;
}

/** Largest Rice parameter tried (a run of 2^20 costs one quotient bit). */
const MAX_K = 20;

class BitWriter {
  private bytes: number[] = [];
  private cur = 0;
  private nbits = 0;
  bit(b: number) {
    this.cur |= (b & 1) << this.nbits;
    if (++this.nbits === 8) this.flush();
  }
  private flush() {
    this.bytes.push(this.cur);
    this.cur = 0;
    this.nbits = 0;
  }
  rice(v: number, k: number) {
    let q = Math.floor(v / 2 ** k);
    while (q-- > 0) this.bit(1);
    this.bit(0);
    for (let i = 0; i < k; i++) this.bit(Math.floor(v / 2 ** i) & 1);
  }
  finish(): Uint8Array {
    if (this.nbits > 0) this.flush();
    return Uint8Array.from(this.bytes);
  }
}

class BitReader {
  private pos = 0;
  constructor(private bytes: Uint8Array) {}
  bit(): number {
    const byte = this.pos >>> 3;
    if (byte >= this.bytes.length) throw new KernelError("mask code truncated");
    return (this.bytes[byte] >>> (this.pos++ & 7)) & 1;
  }
  rice(k: number, limit: number): number {
    let q = 0;
    while (this.bit() === 1) if (++q > limit) throw new KernelError("mask code run exceeds mask length");
    let r = 0;
    for (let i = 0; i < k; i++) r += this.bit() * 2 ** i;
    return q * 2 ** k + r;
  }
  /** The code must end here: only the zero padding of its last byte may follow. */
  end(): void {
    if (Math.ceil(this.pos / 8) !== this.bytes.length) {
      throw new KernelError(
        `mask code has ${this.bytes.length - Math.ceil(this.pos / 8)} bytes past its end`,
      );
    }
    if (this.pos & 7 && this.bytes[this.bytes.length - 1] >>> (this.pos & 7)) {
      throw new KernelError("mask code padding is not zero");
    }
  }
}

function riceBits(values: number[], k: number): number {
  let bits = 0;
  for (const v of values) bits += Math.floor(v / 2 ** k) + 1 + k;
  return bits;
}

function bestK(values: number[]): number {
  let best = 0;
  let bestBits = Infinity;
  for (let k = 0; k <= MAX_K; k++) {
    const b = riceBits(values, k);
    if (b < bestBits) [best, bestBits] = [k, b];
  }
  return best;
}

/** Gaps (zeros skipped before each one). */
function gapsOf(mask: Uint8Array): number[] {
  const gaps: number[] = [];
  let gap = 0;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] === 0) gap++;
    else {
      gaps.push(gap);
      gap = 0;
    }
  }
  return gaps;
}

/** Alternating run lengths: zeros, ones, ... (a zero run may be 0; ones runs are >= 1, coded minus 1). */
function runsOf(mask: Uint8Array): { zeros: number[]; ones: number[] } {
  const zeros: number[] = [];
  const ones: number[] = [];
  let i = 0;
  while (i < mask.length) {
    let z = 0;
    while (i < mask.length && mask[i] === 0) z++, i++;
    if (i >= mask.length) break; // trailing zeros are implied by n
    let o = 0;
    while (i < mask.length && mask[i] !== 0) o++, i++;
    zeros.push(z);
    ones.push(o - 1);
  }
  return { zeros, ones };
}

/** The code's name on the wire: `deltas`, `rice-gaps:K`, `rice-runs:K1:K2`, `rice-runs-rle:K1:K2:K3`. */
export function maskCodeName(c: MaskCode): string {
  switch (c.mode) {
    case "bits":
    case "deltas":
      return c.mode;
    case "rice-gaps":
      return `rice-gaps:${c.k1}`;
    case "rice-runs":
      return `rice-runs:${c.k1}:${c.k2}`;
    case "rice-runs-rle":
      return `rice-runs-rle:${c.k1}:${c.k2}:${c.k3}`;
  }
}

const CODE_NAME = /^(bits|deltas|rice-gaps|rice-runs|rice-runs-rle)((?::[0-9]{1,2}){0,3})$/;
const PARAMS: Record<MaskCodeMode, number> = {
  bits: 0,
  deltas: 0,
  "rice-gaps": 1,
  "rice-runs": 2,
  "rice-runs-rle": 3,
};

/** The code a wire name stands for, with its bytes; null for a name that is not one of `maskCodeName`'s. */
export function parseMaskCodeName(name: string, bytes: Uint8Array): MaskCode | null {
  const m = CODE_NAME.exec(name);
  if (!m) return null;
  const mode = m[1] as MaskCodeMode;
  const ks = m[2] ? m[2].slice(1).split(":").map(Number) : [];
  if (ks.length !== PARAMS[mode]) return null;
  return { mode, k1: ks[0] ?? 0, k2: ks[1] ?? 0, k3: ks[2] ?? 0, bytes };
}

/** The mask in one mode. */
export function encodeMaskAs(mask: Uint8Array, mode: MaskCodeMode, k: Kernels): MaskCode {
  switch (mode) {
    case "bits": {
      const bits = k.maskToBits(mask);
      const bytes = new Uint8Array(bits.buffer, bits.byteOffset, Math.ceil(mask.length / 8)).slice();
      return { mode, k1: 0, k2: 0, k3: 0, bytes };
    }
    case "deltas":
      return { mode, k1: 0, k2: 0, k3: 0, bytes: k.encodeDeltas(mask) };
    case "rice-gaps": {
      const gaps = gapsOf(mask);
      const kg = bestK(gaps);
      const w = new BitWriter();
      for (const g of gaps) w.rice(g, kg);
      return { mode, k1: kg, k2: 0, k3: 0, bytes: w.finish() };
    }
    case "rice-runs":
    case "rice-runs-rle": {
      const { zeros, ones } = runsOf(mask);
      const z: number[] = [], o: number[] = [], again: number[] = [];
      for (let i = 0; i < zeros.length;) {
        let j = i + 1;
        if (mode === "rice-runs-rle") {
          while (j < zeros.length && zeros[j] === zeros[i] && ones[j] === ones[i]) j++;
        }
        z.push(zeros[i]);
        o.push(ones[i]);
        again.push(j - i - 1);
        i = j;
      }
      const [kz, ko] = [bestK(z), bestK(o)];
      const ka = mode === "rice-runs-rle" ? bestK(again) : 0;
      const w = new BitWriter();
      for (let i = 0; i < z.length; i++) {
        w.rice(z[i], kz);
        w.rice(o[i], ko);
        if (mode === "rice-runs-rle") w.rice(again[i], ka);
      }
      return { mode, k1: kz, k2: ko, k3: ka, bytes: w.finish() };
    }
    default:
      throw new KernelError(`unknown mask code mode ${mode}`);
  }
}

/**
 * The fewest bytes a mode can take for `ones` set positions out of n: a byte per set position for LEB128
 * gaps, a bit per set position for Rice gaps (its unary end), nothing known for runs.
 */
function floorBytes(mode: MaskCodeMode, n: number, ones: number): number {
  return mode === "bits"
    ? Math.ceil(n / 8)
    : mode === "deltas"
    ? ones
    : mode === "rice-gaps"
    ? Math.ceil(ones / 8)
    : 0;
}

/** The cheap modes first, so that a slow one that cannot beat them is not computed (Rice gaps ~10×). */
const TRY_ORDER: readonly MaskCodeMode[] = ["bits", "rice-runs-rle", "rice-runs", "deltas", "rice-gaps"];

/** The smallest code of the mask over every mode; a tie goes to the first in `MASK_CODE_MODES`. */
export function encodeMask(mask: Uint8Array, k: Kernels): MaskCode {
  const ones = k.popcount(mask);
  const rank = (m: MaskCodeMode) => MASK_CODE_MODES.indexOf(m);
  let best: MaskCode | null = null;
  for (const m of TRY_ORDER) {
    // A skipped mode is longer than the best so far, so the full search would not pick it either.
    if (best && floorBytes(m, mask.length, ones) > best.bytes.length) continue;
    const c = encodeMaskAs(mask, m, k);
    const [a, b] = [c.bytes.length, best?.bytes.length ?? Infinity];
    if (a < b || (a === b && rank(m) < rank(best!.mode))) best = c;
  }
  return best!;
}

/**
 * Decodes a mask of n positions with `count` ones. Throws `KernelError` on any inconsistency (a
 * truncated code, a run past the end, a count that does not match), never returns a wrong mask.
 */
export function decodeMask(code: MaskCode, n: number, count: number, k: Kernels): Uint8Array {
  if (!Number.isSafeInteger(count) || count < 0 || count > n) {
    throw new KernelError(`mask count ${count} is outside [0, ${n}]`);
  }
  for (const kk of [code.k1, code.k2, code.k3]) {
    if (!Number.isInteger(kk) || kk < 0 || kk > MAX_K) {
      throw new KernelError(`Rice parameter ${kk} is outside [0, ${MAX_K}]`);
    }
  }
  let mask: Uint8Array;
  switch (code.mode) {
    case "bits": {
      if (code.bytes.length !== Math.ceil(n / 8)) {
        throw new KernelError(`bitmask has ${code.bytes.length} bytes, expected ${Math.ceil(n / 8)}`);
      }
      const words = new Uint32Array(Math.ceil(n / 32));
      new Uint8Array(words.buffer).set(code.bytes);
      mask = k.bitsToMask(words, n);
      break;
    }
    case "deltas":
      mask = k.decodeDeltas(code.bytes, n);
      break;
    case "rice-gaps": {
      mask = new Uint8Array(n);
      const r = new BitReader(code.bytes);
      let pos = 0;
      for (let c = 0; c < count; c++) {
        pos += r.rice(code.k1, n);
        if (pos >= n) throw new KernelError("rice gap runs past the mask end");
        mask[pos++] = 1;
      }
      r.end();
      break;
    }
    case "rice-runs":
    case "rice-runs-rle": {
      const rle = code.mode === "rice-runs-rle";
      mask = new Uint8Array(n);
      const r = new BitReader(code.bytes);
      let pos = 0;
      let seen = 0;
      while (seen < count) {
        const z = r.rice(code.k1, n);
        const o = r.rice(code.k2, n) + 1;
        const times = rle ? r.rice(code.k3, n) + 1 : 1;
        for (let t = 0; t < times; t++) {
          pos += z;
          if (pos + o > n) throw new KernelError("rice run past the mask end");
          mask.fill(1, pos, pos + o);
          pos += o;
          seen += o;
        }
      }
      r.end();
      break;
    }
    default:
      throw new KernelError(`unknown mask code mode ${(code as MaskCode).mode}`);
  }
  const ones = k.popcount(mask);
  if (ones !== count) throw new KernelError(`mask code gives ${ones} ones, expected ${count}`);
  return mask;
}
