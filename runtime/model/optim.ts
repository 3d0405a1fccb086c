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

  /** The step count and moments as bytes (f64 t, then m and v as f32), for `load` after a restart. */
  save(): Uint8Array {
    const out = new Uint8Array(8 + 8 * this.size);
    new DataView(out.buffer).setFloat64(0, this.t, true);
    out.set(new Uint8Array(this.m.buffer, this.m.byteOffset, this.m.byteLength), 8);
    out.set(new Uint8Array(this.v.buffer, this.v.byteOffset, this.v.byteLength), 8 + 4 * this.size);
    return out;
  }

  /** Takes the state `save` wrote; refuses bytes of another size, a bad step count or bad moments. */
  load(bytes: Uint8Array): void {
    if (bytes.byteLength !== 8 + 8 * this.size) {
      throw new RangeError(
        `AdamW state of ${bytes.byteLength} bytes, this optimizer's is ${8 + 8 * this.size}`,
      );
    }
    const copy = bytes.slice();
    const t = new DataView(copy.buffer).getFloat64(0, true);
    const m = new Float32Array(copy.buffer, 8, this.size),
      v = new Float32Array(copy.buffer, 8 + 4 * this.size, this.size);
    if (!Number.isInteger(t) || t < 0) throw new RangeError(`AdamW state has step count ${t}`);
    for (let i = 0; i < this.size; i++) {
      if (!Number.isFinite(m[i]) || !(v[i] >= 0) || !Number.isFinite(v[i])) {
        throw new RangeError(`AdamW state has a bad moment at ${i}`);
      }
    }
    this.m.set(m);
    this.v.set(v);
    this.t = t;
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
