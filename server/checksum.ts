/**
 * A fast 128-bit content checksum for upload ids (four xxHash32-style lanes, each finalized, plus the
 * length). An upload id only has to tell a client's replay from a *different* second upload of the
 * same client and round; a collision (accidental: ~2^-128; deliberate: only the uploading client can
 * craft one) would merely answer that client's own second upload "replay" instead of
 * "already_uploaded", with no state change either way. So a cryptographic hash is not needed, and on
 * 1 MiB bodies this is several times cheaper than SHA-256 on the JS thread.
 */

const P1 = 0x9e3779b1 | 0;
const P2 = 0x85ebca77 | 0;
const P3 = 0xc2b2ae3d | 0;
const P5 = 0x165667b1 | 0;

function round(acc: number, w: number): number {
  acc = (acc + Math.imul(w, P2)) | 0;
  acc = (acc << 13) | (acc >>> 19);
  return Math.imul(acc, P1);
}

function avalanche(h: number): number {
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  return (h ^ (h >>> 16)) >>> 0;
}

/** 32 hex digits summarizing `bytes` (any alignment, any length). Deterministic across platforms. */
export function checksum128(bytes: Uint8Array): string {
  const n = bytes.byteLength;
  const words = n >>> 2;
  // Little-endian word view without copying when aligned (the usual case: a fresh request buffer).
  const u32 = bytes.byteOffset % 4 === 0
    ? new Uint32Array(bytes.buffer, bytes.byteOffset, words)
    : new Uint32Array(bytes.slice(0, words * 4).buffer);
  let a = (P1 + P2) | 0, b = P2, c = 0, d = -P1 | 0;
  const stripes = words & ~3;
  for (let i = 0; i < stripes; i += 4) {
    a = round(a, u32[i]);
    b = round(b, u32[i + 1]);
    c = round(c, u32[i + 2]);
    d = round(d, u32[i + 3]);
  }
  // Tail words and bytes feed lane a in order, so every byte position matters.
  for (let i = stripes; i < words; i++) a = round(a, u32[i]);
  for (let i = words * 4; i < n; i++) a = round(a, bytes[i] | 0x100);
  const len = n | 0, hi = Math.floor(n / 2 ** 32) | 0;
  const lanes = [a, b, c, d];
  let out = "";
  for (let k = 0; k < 4; k++) {
    // Each output word mixes its own lane with the others and the length.
    const h = (lanes[k] + Math.imul(lanes[(k + 1) & 3], P5) + Math.imul(lanes[(k + 2) & 3], P3) + len + hi +
      k) | 0;
    out += avalanche(h).toString(16).padStart(8, "0");
  }
  return out;
}
