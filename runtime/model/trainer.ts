/**
 * The LoRA training loop (masked AdamW, clipping, warm-up + cosine, seeded batch order) and
 * perplexity evaluation. Deterministic: equal inputs and seed give bit-equal adapters.
 */
import type { Batch, Engine } from "./engine.ts";
import { AdamW, clipGradNorm, cosineSchedule } from "./optim.ts";
import { Rng } from "./rng.ts";

/** Options of `trainLora`. */
export interface TrainOptions {
  /** Optimizer steps (one batch each; batches are cycled in a seeded order per epoch). */
  steps: number;
  lr: number;
  /** Warm-up steps (default 10% of steps). */
  warmup?: number;
  /** Final learning rate of the cosine decay (default 10% of lr). */
  minLr?: number;
  weightDecay?: number;
  betas?: [number, number];
  /** Global gradient-norm clip (default 1; 0 disables). */
  maxGradNorm?: number;
  seed?: number;
  /** Continue with an existing optimizer state (its moments); created when absent. */
  optimizer?: AdamW;
  /** Called after each step. */
  onStep?: (info: { step: number; loss: number; lr: number; gradNorm: number }) => void;
}

/** What `trainLora` returns. */
export interface TrainResult {
  losses: number[];
  /** Sum of |theta * grad| over all steps (PerFIT's accumulated Taylor importance). */
  importance: Float32Array;
  optimizer: AdamW;
}

/** Trains `adapter` in place on `batches`; positions where `mask` is 0 never change. */
export async function trainLora(
  engine: Engine,
  batches: Batch[],
  adapter: Float32Array,
  mask: Uint8Array,
  opts: TrainOptions,
): Promise<TrainResult> {
  if (batches.length === 0) throw new Error("trainLora: no batches");
  if (!(opts.steps >= 0) || !Number.isInteger(opts.steps)) {
    throw new Error(`trainLora: steps must be an integer >= 0`);
  }
  const rng = new Rng(opts.seed ?? 0);
  const opt = opts.optimizer ??
    new AdamW(adapter.length, { lr: opts.lr, betas: opts.betas, weightDecay: opts.weightDecay ?? 0 });
  const sched = cosineSchedule({
    warmup: opts.warmup ?? Math.floor(opts.steps / 10),
    total: opts.steps,
    peak: opts.lr,
    min: opts.minLr ?? opts.lr / 10,
  });
  const importance = new Float32Array(adapter.length);
  const losses: number[] = [];
  let order: number[] = [];
  for (let step = 0; step < opts.steps; step++) {
    if (order.length === 0) order = rng.shuffle(batches.map((_, i) => i));
    const batch = batches[order.pop()!];
    const r = await engine.trainStep(batch, adapter, mask);
    if (!Number.isFinite(r.loss)) throw new Error(`trainLora: loss became ${r.loss} at step ${step}`);
    for (let i = 0; i < importance.length; i++) importance[i] += r.importance[i];
    const gradNorm = opts.maxGradNorm === 0 ? NaN : clipGradNorm(r.grads, opts.maxGradNorm ?? 1);
    const lr = sched(step);
    opt.step(adapter, r.grads, mask, lr);
    losses.push(r.loss);
    opts.onStep?.({ step, loss: r.loss, lr, gradNorm });
  }
  return { losses, importance, optimizer: opt };
}

/** Perplexity over loss-mask tokens: exp(total NLL / total tokens). */
export interface Perplexity {
  nll: number;
  tokens: number;
  perplexity: number;
}

/** Evaluates the mean response-token NLL of `batches` with the forward-only graph. */
export async function evaluatePerplexity(
  engine: Engine,
  batches: Batch[],
  adapter: Float32Array,
  mask?: Uint8Array,
): Promise<Perplexity> {
  let nll = 0, tokens = 0;
  for (const b of batches) {
    const r = await engine.evalNll(b, adapter, mask);
    nll += r.nllSum;
    tokens += r.tokens;
  }
  if (tokens === 0) throw new Error("evaluatePerplexity: no loss-bearing tokens");
  return { nll: nll / tokens, tokens, perplexity: Math.exp(nll / tokens) };
}
