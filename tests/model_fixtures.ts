/** Shared fixtures of the model tests: tiny models in temp folders and deterministic batches. */
import { generateTinyModel, type TinyModelOptions } from "../runtime/model/tiny.ts";
import { type LoadedModel, loadModel } from "../runtime/model/load.ts";
import type { Batch } from "../runtime/model/engine.ts";
import { Rng } from "../runtime/model/rng.ts";
import type { ModelConfig } from "../runtime/model/config.ts";

/** Generates a tiny model into a fresh temp folder and loads it. */
export async function tinyModel(opts: TinyModelOptions = {}): Promise<{ dir: string; model: LoadedModel }> {
  const dir = await Deno.makeTempDir({ prefix: "perfit_model_" });
  await generateTinyModel(dir, { merges: 30, ...opts });
  return { dir, model: await loadModel(dir) };
}

/**
 * A random batch: row b has `lens[b]` real tokens then padding; the loss covers positions
 * 1..len-2 (a "prompt" of one token), so padding and the last real token never count.
 */
export function randomBatch(
  vocab: number,
  lens: number[],
  seq: number,
  seed: number,
  padId = 1,
): Batch & { inputIds: BigInt64Array } {
  const rng = new Rng(seed);
  const B = lens.length;
  const inputIds = new BigInt64Array(B * seq);
  const attentionMask = new Float32Array(B * seq);
  const lossMask = new Float32Array(B * seq);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < seq; t++) {
      const real = t < lens[b];
      inputIds[b * seq + t] = BigInt(real ? 2 + rng.int(vocab - 2) : padId);
      attentionMask[b * seq + t] = real ? 1 : 0;
      lossMask[b * seq + t] = t >= 1 && t + 1 < lens[b] ? 1 : 0;
    }
  }
  return { inputIds, attentionMask, lossMask, batch: B, seq };
}

/** Adapter values with non-zero B so gradients of A are non-trivial. */
export function perturbedAdapter(size: number, seed: number, scale = 0.1): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: size }, () => scale * rng.normal());
}

/** A learnable batch: each row counts up by 3 (mod the vocab) from its start, loss on all but the first and last positions. */
export function patternBatch(
  vocab: number,
  starts: number[],
  seq: number,
): Batch & { inputIds: BigInt64Array } {
  const B = starts.length;
  const inputIds = new BigInt64Array(B * seq);
  const lossMask = new Float32Array(B * seq);
  starts.forEach((s, b) => {
    for (let t = 0; t < seq; t++) {
      inputIds[b * seq + t] = BigInt(2 + ((s + 3 * t) % (vocab - 2)));
      lossMask[b * seq + t] = t >= 1 && t + 1 < seq ? 1 : 0;
    }
  });
  return { inputIds, attentionMask: new Float32Array(B * seq).fill(1), lossMask, batch: B, seq };
}

/**
 * Bytes of every distinct buffer behind a typed array reachable from `roots` through plain objects,
 * arrays, Maps and instances of `classes` (not through other objects: onnxruntime's sessions, promises,
 * closures): what the JS side holds, each buffer counted once however many views share it.
 */
export function reachableBuffers(
  roots: unknown[],
  classes: { prototype: object }[] = [],
): Map<ArrayBufferLike, ArrayBufferView> {
  const buffers = new Map<ArrayBufferLike, ArrayBufferView>();
  const seen = new Set<unknown>();
  const todo = [...roots];
  while (todo.length) {
    const v = todo.pop();
    if (v === null || typeof v !== "object" || seen.has(v)) continue;
    seen.add(v);
    if (ArrayBuffer.isView(v)) {
      if (!buffers.has(v.buffer)) buffers.set(v.buffer, v);
      continue;
    }
    if (v instanceof Map) {
      for (const [k, x] of v) todo.push(k, x);
      continue;
    }
    const proto = Object.getPrototypeOf(v);
    const walk = Array.isArray(v) || proto === Object.prototype || proto === null ||
      classes.some((c) => Object.prototype.isPrototypeOf.call(c.prototype, v));
    if (walk) todo.push(...Object.values(v as object));
  }
  return buffers;
}

/** A two-layer llama shape small enough to write adapter layouts out by hand (no weights behind it). */
export function tinyConfigLike(): ModelConfig {
  return {
    modelType: "llama",
    vocabSize: 50,
    hiddenSize: 8,
    intermediateSize: 16,
    numLayers: 2,
    numHeads: 2,
    numKvHeads: 1,
    headDim: 4,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    maxPositionEmbeddings: 64,
    tieWordEmbeddings: true,
    qkvBias: false,
    oBias: false,
    mlpBias: false,
  };
}
