/** Taylor importance |theta * dL/dtheta| accumulated over search steps. */

/** How per-step importance is accumulated. */
export interface ImportanceOptions {
  /** "ema" (default): acc = beta*acc + (1-beta)*imp; "sum": acc += imp. */
  mode?: "ema" | "sum";
  /** EMA decay (default 0.85, as in PerFIT/AdaLoRA-style sensitivity smoothing). */
  beta?: number;
}

/** Taylor importance of one step, |theta * grad| per position (for engines that return only grads). */
export function taylorImportance(theta: Float32Array, grad: Float32Array, out?: Float32Array): Float32Array {
  if (theta.length !== grad.length) throw new RangeError(`theta ${theta.length} vs grad ${grad.length}`);
  const o = out ?? new Float32Array(theta.length);
  for (let i = 0; i < theta.length; i++) o[i] = Math.abs(theta[i] * grad[i]);
  return o;
}

/** Folds one step's importance into `acc` in place and returns it. NaN importance is rejected. */
export function accumulateImportance(
  acc: Float32Array,
  step: Float32Array,
  opts: ImportanceOptions = {},
): Float32Array {
  if (acc.length !== step.length) {
    throw new RangeError(`importance length ${step.length} != accumulator ${acc.length}`);
  }
  const mode = opts.mode ?? "ema";
  const beta = opts.beta ?? 0.85;
  if (mode === "ema" && !(beta >= 0 && beta < 1)) {
    throw new RangeError(`EMA beta must be in [0, 1), got ${beta}`);
  }
  for (let i = 0; i < acc.length; i++) {
    const v = step[i];
    if (Number.isNaN(v)) throw new RangeError(`importance is NaN at position ${i}`);
    acc[i] = mode === "ema" ? beta * acc[i] + (1 - beta) * v : acc[i] + v;
  }
  return acc;
}
