/**
 * Adapter layouts at different ranks and the mapping between a client's rank-(r*e) layout and the
 * run's global rank-(r*e_max) layout. The coordinator aggregates in the global layout; a client with
 * a smaller e occupies the leading rows of each A and the leading columns of each B.
 */

import type { AdapterLayout } from "../model/lora.ts";
export type { AdapterEntry, AdapterLayout, TargetModule } from "../model/lora.ts";

/** Errors of layout mapping (mismatched layouts, wrong lengths). */
export class LayoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LayoutError";
  }
}

/** The same modules at another rank: A is [rank, in], B is [out, rank]; offsets re-packed in entry order. */
export function rankLayout(layout: AdapterLayout, rank: number): AdapterLayout {
  if (!Number.isInteger(rank) || rank < 1) {
    throw new LayoutError(`rank must be a positive integer, got ${rank}`);
  }
  let offset = 0;
  const entries = layout.entries.map((e) => {
    const shape: [number, number] = e.kind === "A" ? [rank, e.shape[1]] : [e.shape[0], rank];
    const size = shape[0] * shape[1];
    const out = { ...e, shape, offset, size };
    offset += size;
    return out;
  });
  return { rank, entries, size: offset };
}

function checkPair(small: AdapterLayout, big: AdapterLayout, at = 0): void {
  if (small.entries.length !== big.entries.length) {
    throw new LayoutError(`layouts differ: ${small.entries.length} vs ${big.entries.length} entries`);
  }
  if (!Number.isInteger(at) || at < 0 || small.rank + at > big.rank) {
    throw new LayoutError(`client rank ${small.rank} at component ${at} exceeds global rank ${big.rank}`);
  }
  for (let i = 0; i < small.entries.length; i++) {
    const a = small.entries[i];
    const b = big.entries[i];
    if (a.name !== b.name || a.kind !== b.kind) throw new LayoutError(`entry ${i}: ${a.name} vs ${b.name}`);
  }
}

type Flat = Float32Array | Uint8Array;

/**
 * Copies a client-layout vector into the global layout (other positions of `out` are zeroed). The
 * client's components go to the global components from `at` on (default 0: the leading ones; FLoRA's
 * slots sit further on).
 */
export function embed<T extends Flat>(
  client: AdapterLayout,
  values: T,
  global: AdapterLayout,
  out?: T,
  at = 0,
): T {
  checkPair(client, global, at);
  if (values.length !== client.size) {
    throw new LayoutError(`values length ${values.length} != client layout ${client.size}`);
  }
  const dst = (out ?? new (values.constructor as { new (n: number): T })(global.size)) as T;
  if (dst.length !== global.size) {
    throw new LayoutError(`out length ${dst.length} != global layout ${global.size}`);
  }
  dst.fill(0);
  forEachRow(client, global, (src, dstOff, len) => dst.set(values.subarray(src, src + len), dstOff), at);
  return dst;
}

/** Reads a client-layout vector out of a global-layout vector (the inverse of `embed`). */
export function extract<T extends Flat>(
  global: AdapterLayout,
  values: T,
  client: AdapterLayout,
  out?: T,
  at = 0,
): T {
  checkPair(client, global, at);
  if (values.length !== global.size) {
    throw new LayoutError(`values length ${values.length} != global layout ${global.size}`);
  }
  const dst = (out ?? new (values.constructor as { new (n: number): T })(client.size)) as T;
  if (dst.length !== client.size) {
    throw new LayoutError(`out length ${dst.length} != client layout ${client.size}`);
  }
  forEachRow(client, global, (src, dstOff, len) => dst.set(values.subarray(dstOff, dstOff + len), src), at);
  return dst;
}

/** Calls `fn(clientOffset, globalOffset, length)` for each contiguous run shared by the two layouts. */
function forEachRow(
  client: AdapterLayout,
  global: AdapterLayout,
  fn: (c: number, g: number, len: number) => void,
  at: number,
) {
  for (let i = 0; i < client.entries.length; i++) {
    const c = client.entries[i];
    const g = global.entries[i];
    if (c.kind === "A") {
      // Rows of A are the rank dimension: the client's rows are rows at, at + 1, ...
      fn(c.offset, g.offset + at * c.shape[1], c.size);
    } else {
      const [out, rc] = c.shape;
      const rg = g.shape[1];
      for (let row = 0; row < out; row++) fn(c.offset + row * rc, g.offset + row * rg + at, rc);
    }
  }
}

/** Groups of positions per (layer, module): the A and B of one adapted projection. */
export function moduleGroups(layout: AdapterLayout): { key: string; ranges: [number, number][] }[] {
  const byKey = new Map<string, [number, number][]>();
  for (const e of layout.entries) {
    const key = `${e.layer}.${e.module}`;
    if (!byKey.has(key)) byKey.set(key, []);
    byKey.get(key)!.push([e.offset, e.size]);
  }
  return [...byKey].map(([key, ranges]) => ({ key, ranges }));
}

/** 0/1 over the layout: 1 at every position of its A matrices (`kind` "A") or of its B matrices. */
export function kindMask(layout: AdapterLayout, kind: "A" | "B"): Uint8Array {
  const out = new Uint8Array(layout.size);
  for (const e of layout.entries) if (e.kind === kind) out.fill(1, e.offset, e.offset + e.size);
  return out;
}
