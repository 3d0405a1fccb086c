/**
 * Optimizer math on flat arrays: masked AdamW, global-norm clipping, warm-up + cosine schedule.
 * Masked positions (mask 0) are never touched: not the weight, not the moments.
 */
export { Rng } from "./rng.ts";

/** AdamW hyper-parameters. */
export interface AdamWOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/** AdamW with decoupled weight decay (Loshchilov & Hutter) over one flat parameter array. */
export class AdamW {
  readonly m: Float32Array;
  readonly v: Float32Array;
  /** Steps taken (bias correction uses it). */
  t = 0;
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;

  constructor(readonly size: number, opts: AdamWOptions) {
    this.m = new Float32Array(size);
    this.v = new Float32Array(size);
    this.lr = opts.lr;
    [this.beta1, this.beta2] = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
  }

  /** One update of `params` in place; `mask` 0 freezes a position; `lr` overrides the base rate. */
  step(params: Float32Array, grads: Float32Array, mask?: Uint8Array | Float32Array, lr = this.lr): void {
    if (params.length !== this.size || grads.length !== this.size || (mask && mask.length !== this.size)) {
      throw new RangeError(
        `AdamW sized ${this.size} got params ${params.length}, grads ${grads.length}, mask ${
          mask?.length ?? "none"
        }`,
      );
    }
    this.t++;
    const b1 = this.beta1, b2 = this.beta2;
    const c1 = 1 - Math.pow(b1, this.t), c2 = 1 - Math.pow(b2, this.t);
    const stepSize = lr / c1, decay = 1 - lr * this.weightDecay;
    const { m, v } = this;
    for (let i = 0; i < params.length; i++) {
      if (mask && mask[i] === 0) continue;
      const g = grads[i];
      const mi = (m[i] = b1 * m[i] + (1 - b1) * g);
      const vi = (v[i] = b2 * v[i] + (1 - b2) * g * g);
      params[i] = params[i] * decay - stepSize * mi / (Math.sqrt(vi / c2) + this.eps);
    }
  }

  /** Clears the moments and step count (e.g. when a new mask starts a new training phase). */
  reset(): void {
    this.m.fill(0);
    this.v.fill(0);
    this.t = 0;
  }
}

/** Scales `grads` in place so their L2 norm is at most `maxNorm`; returns the norm before clipping. */
export function clipGradNorm(grads: Float32Array, maxNorm: number): number {
  let s = 0;
  for (let i = 0; i < grads.length; i++) s += grads[i] * grads[i];
  const norm = Math.sqrt(s);
  if (Number.isFinite(norm) && maxNorm > 0 && norm > maxNorm) {
    const k = maxNorm / (norm + 1e-6);
    for (let i = 0; i < grads.length; i++) grads[i] *= k;
  }
  return norm;
}

/** Linear warm-up to `peak` over `warmup` steps, then cosine decay to `min` at `total`. */
export function cosineSchedule(
  o: { warmup: number; total: number; peak: number; min?: number },
): (step: number) => number {
  const min = o.min ?? 0;
  return (step: number) => {
    if (o.warmup > 0 && step < o.warmup) return o.peak * (step + 1) / o.warmup;
    const span = Math.max(1, o.total - o.warmup);
    const p = Math.min(1, Math.max(0, (step - o.warmup) / span));
    return min + 0.5 * (o.peak - min) * (1 + Math.cos(Math.PI * p));
  };
}
