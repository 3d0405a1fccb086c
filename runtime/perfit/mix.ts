/**
 * `perfit-mix`: a client's personalized B as a convex mix of its own trained B and the federation's
 * average, λ·own + (1 − λ)·global, with λ picked per client on a validation split carved from its
 * training data (APFL's mixing, Deng et al. 2020, with PerFIT's searched mask). λ = 0 is PerFIT, λ = 1
 * keeps B private as `perfit-sa` does: the client finds where between the two its own data sits,
 * which a fixed rule cannot (keeping B private wins where clients differ by category and loses where
 * they mix categories, bench/results/perfit.md).
 */

/** The λ a client tries, each evaluated on its validation split. */
export const MIX_GRID: readonly number[] = [0, 0.25, 0.5, 0.75, 1];

/**
 * `global` with `own` mixed in at `positions`: λ·own + (1 − λ)·global there, `global` elsewhere.
 * Refuses vectors of different lengths and λ outside [0, 1] (an extrapolated mix is not a mix).
 */
export function mixAt(
  own: Float32Array,
  global: Float32Array,
  positions: Uint8Array,
  lambda: number,
): Float32Array {
  if (own.length !== global.length || positions.length !== global.length) {
    throw new RangeError(
      `mix of ${own.length} own, ${global.length} global values at ${positions.length} positions`,
    );
  }
  if (!(lambda >= 0 && lambda <= 1)) throw new RangeError(`mix weight must be in [0, 1], got ${lambda}`);
  const out = global.slice();
  for (let i = 0; i < out.length; i++) {
    if (positions[i]) out[i] = lambda * own[i] + (1 - lambda) * global[i];
  }
  return out;
}

/**
 * The candidate with the lowest validation loss, and its loss; ties go to the earlier candidate (the
 * smaller λ in `MIX_GRID`, the more federated one). Refuses an empty grid and a non-finite loss.
 */
export async function pickMix(
  grid: readonly number[],
  loss: (lambda: number) => Promise<number>,
): Promise<{ lambda: number; loss: number }> {
  if (grid.length === 0) throw new RangeError("mix grid is empty");
  let best: { lambda: number; loss: number } | null = null;
  for (const lambda of grid) {
    const l = await loss(lambda);
    if (!Number.isFinite(l)) throw new RangeError(`validation loss at mix ${lambda} is ${l}`);
    if (!best || l < best.loss) best = { lambda, loss: l };
  }
  return best!;
}
