/**
 * First-fit allocator over a WebAssembly.Memory, managed from TypeScript (the Rust crate has none).
 * Grows memory geometrically so growth — which detaches every existing view — stays rare.
 */
import { KernelError } from "./types.ts";

const PAGE = 65536;
const ALIGN = 16;

/** Byte ranges of a WebAssembly.Memory above `base`, handed out 16-byte aligned. */
export class LinearArena {
  private top: number;
  private readonly live = new Map<number, number>();
  /** Free ranges below `top`, sorted by offset, never adjacent (coalesced). */
  private readonly holes: Array<{ off: number; size: number }> = [];

  constructor(readonly memory: WebAssembly.Memory, base: number) {
    this.top = align(base);
  }

  /** Bytes currently handed out. */
  get used(): number {
    let s = 0;
    for (const size of this.live.values()) s += size;
    return s;
  }

  /** Reserves `bytes` of a fresh block and returns its offset. May grow (and so detach views). */
  alloc(bytes: number): number {
    const size = Math.max(ALIGN, align(bytes));
    for (let h = 0; h < this.holes.length; h++) {
      const hole = this.holes[h];
      if (hole.size < size) continue;
      const off = hole.off;
      if (hole.size === size) this.holes.splice(h, 1);
      else {
        hole.off += size;
        hole.size -= size;
      }
      this.live.set(off, size);
      return off;
    }
    const off = this.top;
    this.ensure(off + size);
    this.top = off + size;
    this.live.set(off, size);
    return off;
  }

  /** Returns a block to the arena. */
  free(off: number): void {
    const size = this.live.get(off);
    if (size === undefined) throw new KernelError(`free of offset ${off}, which is not an allocated block`);
    this.live.delete(off);
    if (off + size === this.top) {
      this.top = off;
      // Absorb a hole that now touches the top.
      const last = this.holes[this.holes.length - 1];
      if (last && last.off + last.size === this.top) {
        this.top = last.off;
        this.holes.pop();
      }
      return;
    }
    let i = 0;
    while (i < this.holes.length && this.holes[i].off < off) i++;
    this.holes.splice(i, 0, { off, size });
    const next = this.holes[i + 1];
    if (next && off + size === next.off) {
      this.holes[i].size += next.size;
      this.holes.splice(i + 1, 1);
    }
    const prev = this.holes[i - 1];
    if (prev && prev.off + prev.size === off) {
      prev.size += this.holes[i].size;
      this.holes.splice(i, 1);
    }
  }

  /** Grows memory so that `bytes` more fit above the current top without a later grow. */
  reserve(bytes: number): void {
    if (!Number.isFinite(bytes) || bytes < 0) {
      throw new KernelError(`reserve needs a byte count >= 0, got ${bytes}`);
    }
    this.ensure(this.top + align(bytes), true);
  }

  private ensure(end: number, exact = false): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const limit = 65536 * PAGE;
    if (end > limit) throw new KernelError(`WASM memory would exceed 4 GiB (${end} bytes requested)`);
    // Doubling (capped at +1 GiB per step) keeps grows, which detach every view, rare.
    const target = exact ? end : Math.min(limit, Math.max(end, have + Math.min(have, 1 << 30)));
    try {
      this.memory.grow(Math.ceil((target - have) / PAGE));
    } catch (err) {
      throw new KernelError(`WASM memory could not grow to ${target} bytes: ${(err as Error).message}`);
    }
  }
}

function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}
