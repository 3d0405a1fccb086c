/**
 * Personalized parameter-wise aggregation (coordinator side): each position is the sample-weighted
 * mean over the clients whose mask holds it; each client receives only its own positions.
 * FedAvg (FedIT) is the special case of all-ones masks.
 */
import { kernels } from "../kernels/mod.ts";
import type { Kernels } from "../kernels/types.ts";

/** One client's contribution, in the global layout. */
export interface ClientUpdate {
  /** Dense values in the global layout (positions outside the mask are ignored). */
  values: Float32Array;
  /** 0/1 mask of the positions this client holds, global layout. */
  mask: Uint8Array;
  /** Sample count: the client's weight. */
  samples: number;
}

/** Running sums of an aggregation round. */
export interface AggregateState {
  sum: Float32Array;
  weight: Float32Array;
}

/** Sums of all updates: sum = Σ n·m·v, weight = Σ n·m. Rejects non-finite values and bad weights. */
export function accumulateUpdates(
  updates: ClientUpdate[],
  size: number,
  k: Kernels = kernels(),
): AggregateState {
  const sum = new Float32Array(size);
  const weight = new Float32Array(size);
  updates.forEach((u, i) => {
    if (u.values.length !== size || u.mask.length !== size) {
      throw new RangeError(`update ${i}: length ${u.values.length}/${u.mask.length} != ${size}`);
    }
    if (!(u.samples > 0) || !Number.isFinite(u.samples)) {
      throw new RangeError(`update ${i}: samples must be > 0, got ${u.samples}`);
    }
    // A NaN outside the mask would be ignored by accumulate, but the client sent garbage either way.
    if (k.countNonFinite(u.values) > 0) throw new RangeError(`update ${i}: non-finite values`);
    k.accumulate(sum, weight, u.values, u.mask, u.samples);
  });
  return { sum, weight };
}

/**
 * What one client gets back, dense in the global layout: the weighted mean at its own positions
 * (its own value where it alone holds a position) and zero elsewhere.
 */
export function personalizedValues(
  state: AggregateState,
  own: ClientUpdate,
  k: Kernels = kernels(),
): Float32Array {
  const out = new Float32Array(own.values.length);
  k.finalize(state.sum, state.weight, own.values, out);
  for (let i = 0; i < out.length; i++) if (own.mask[i] === 0) out[i] = 0;
  return out;
}

/** Aggregates a round: the dense personalized vector of every client, in input order. */
export function aggregateParameterWise(updates: ClientUpdate[], k: Kernels = kernels()): Float32Array[] {
  if (updates.length === 0) return [];
  const state = accumulateUpdates(updates, updates[0].values.length, k);
  return updates.map((u) => personalizedValues(state, u, k));
}

/** The download payload of a client: its personalized values at its mask positions, in index order. */
export function downloadSlice(
  personalized: Float32Array,
  mask: Uint8Array,
  k: Kernels = kernels(),
): Float32Array {
  return k.gather(personalized, mask);
}
