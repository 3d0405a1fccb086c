/**
 * Structural copies of the adapter-layout types agreed in COMMON.md (runtime/model/lora.ts owns them),
 * so export code type-checks on its own; any object of the engine's layout type fits.
 */

/** Target module short names (model area's `TargetModule`). */
export type TargetModuleName = "q" | "k" | "v" | "o" | "gate" | "up" | "down";

/** One matrix of the flat adapter: A is [rank, in], B is [out, rank], row-major. */
export interface AdapterEntryLike {
  name: string;
  layer: number;
  module: TargetModuleName;
  kind: "A" | "B";
  shape: [number, number] | number[];
  offset: number;
  size: number;
}

/** Layout of a flat adapter. */
export interface AdapterLayoutLike {
  rank: number;
  entries: AdapterEntryLike[];
  size: number;
}

/** Bad export input (wrong lengths, non-finite values, missing weights); the message says which. */
export class ExportError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ExportError";
  }
}
