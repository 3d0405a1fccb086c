/**
 * Bitmask math on LSB-first `Uint32Array` bitmasks (bit `i & 31` of word `i >> 5` is position `i`),
 * the one home of these helpers for the wire format, the coordinator, the simulation and the
 * dashboard. Pure functions, no allocation beyond their results.
 */

/** Words of a bitmask over n positions. */
export const bitWords = (n: number): number => Math.ceil(n / 32);

/** Set bits of one 32-bit word. */
export function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  x = (x + (x >>> 4)) & 0x0f0f0f0f;
  return Math.imul(x, 0x01010101) >>> 24;
}

/** Number of set bits. */
export function popcountBits(bits: Uint32Array): number {
  let c = 0;
  for (let i = 0; i < bits.length; i++) c += popcount32(bits[i]);
  return c;
}

/** Calls `f(position, rank)` for every set bit in index order (rank = index among the ones). */
export function forEachBit(bits: Uint32Array, f: (pos: number, rank: number) => void): void {
  let r = 0;
  for (let w = 0; w < bits.length; w++) {
    let x = bits[w];
    while (x !== 0) {
      const t = x & -x;
      f((w << 5) + (31 - Math.clz32(t)), r++);
      x ^= t;
    }
  }
}

/** Values of `dense` at the set bits of `bits`, in index order. */
export function gatherBits(dense: Float32Array, bits: Uint32Array, count = popcountBits(bits)): Float32Array {
  const out = new Float32Array(count);
  forEachBit(bits, (p, r) => (out[r] = dense[p]));
  return out;
}

/**
 * The set bits of `bits` whose value (`values`, one per set bit in index order) is not exactly zero,
 * and those values: a sparse vector without its stored zeros (−0 counts as zero).
 */
export function withoutZeros(
  bits: Uint32Array,
  values: Float32Array,
): { bits: Uint32Array; values: Float32Array } {
  const count = popcountBits(bits);
  if (count !== values.length) throw new RangeError(`${values.length} values for ${count} set bits`);
  const out = new Uint32Array(bits.length);
  forEachBit(bits, (p, r) => {
    if (values[r] !== 0) out[p >>> 5] |= 1 << (p & 31);
  });
  return { bits: out, values: values.filter((v) => v !== 0) };
}

/** Bitwise AND of two equally long bitmasks. */
export function andBits(a: Uint32Array, b: Uint32Array): Uint32Array {
  const out = new Uint32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] & b[i];
  return out;
}

/** A bitmask with the first n bits set. */
export function fullBits(n: number): Uint32Array {
  const bits = new Uint32Array(bitWords(n)).fill(0xffffffff);
  if (n % 32) bits[bits.length - 1] = (1 << (n % 32)) - 1;
  return bits;
}

/** Number of set bits of a & b and of a | b. */
export function andOrCounts(a: Uint32Array, b: Uint32Array): { and: number; or: number } {
  let and = 0, or = 0;
  for (let i = 0; i < a.length; i++) {
    and += popcount32(a[i] & b[i]);
    or += popcount32(a[i] | b[i]);
  }
  return { and, or };
}

/** Jaccard overlap |a ∩ b| / |a ∪ b| of two bitmasks (1 when both are empty). */
export function jaccardBits(a: Uint32Array, b: Uint32Array): number {
  const { and, or } = andOrCounts(a, b);
  return or === 0 ? 1 : and / or;
}

/** Set bits of `bits` in [start, end). */
export function countRange(bits: Uint32Array, start: number, end: number): number {
  let c = 0;
  for (let p = start; p < end;) {
    const w = p >>> 5, off = p & 31;
    if (off === 0 && p + 32 <= end) {
      c += popcount32(bits[w]);
      p += 32;
    } else {
      c += (bits[w] >>> off) & 1;
      p++;
    }
  }
  return c;
}

/**
 * SHA-256 (lowercase hex) of a bitmask's little-endian bytes: the reference by which an unchanged
 * mask travels instead of its bits (the wire's `maskRef`), and the key the coordinator stores it by.
 */
export async function maskRef(bits: Uint32Array): Promise<string> {
  const bytes = new Uint8Array(bits.buffer, bits.byteOffset, bits.byteLength);
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  let s = "";
  for (let i = 0; i < d.length; i++) s += d[i].toString(16).padStart(2, "0");
  return s;
}
