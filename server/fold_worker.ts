/// <reference lib="deno.worker" />
/**
 * The fold worker behind `WorkerFolder` (folder.ts): runs fold, snapshot and drain jobs one at a
 * time, in the order they were posted, and answers each with its id.
 */
import { foldSparse } from "./aggregate.ts";

type Msg =
  | {
    id: number;
    type: "fold";
    sum: Float32Array;
    weight: Float32Array;
    bits: Uint32Array;
    values: Float32Array;
    samples: number;
  }
  | { id: number; type: "snapshot"; sum: Float32Array }
  | { id: number; type: "drain" };

globalThis.onmessage = (e: MessageEvent<Msg>) => {
  const m = e.data;
  try {
    if (m.type === "fold") {
      foldSparse(m.sum, m.weight, m.bits, m.values, m.samples);
      globalThis.postMessage({ id: m.id });
    } else if (m.type === "snapshot") {
      const copy = new Float32Array(m.sum.length);
      copy.set(m.sum);
      globalThis.postMessage({ id: m.id, sum: copy.buffer }, [copy.buffer]);
    } else {
      globalThis.postMessage({ id: m.id });
    }
  } catch (err) {
    globalThis.postMessage({ id: m.id, error: String((err as Error)?.message ?? err) });
  }
};
