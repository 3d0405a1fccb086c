/**
 * Shared types of the kernel layer: the `Kernels` interface every backend
 * (WASM SIMD, scalar TypeScript) implements, and `KernelError`.
 *
 * Conventions shared by all backends:
 * - A mask is a `Uint8Array`; any non-zero byte counts as "selected" (1).
 * - A bitmask is a `Uint32Array`, LSB-first: bit `i & 31` of word `i >> 5` is position `i`.
 * - Scores are ordered by value with `-0 == +0`; `±Infinity` are ordinary values; NaN is an error.
 */

/** Thrown for bad kernel input (mismatched lengths, k > n, NaN scores, malformed codes). */
export class KernelError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KernelError";
  }
}

/** Hyper-parameters of one masked AdamW step (decoupled weight decay, PyTorch semantics). */
export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step number, used for bias correction. */
  step: number;
}

/** The kernel API. Obtain the best implementation with `await initKernels(); kernels()`. */
export interface Kernels {
  /** "wasm-simd" or "scalar". */
  readonly name: string;

  /**
   * Allocates a zeroed Float32Array that kernels can use without copying (for WASM: a view into linear
   * memory). Views stay valid until linear memory grows: call `reserve` first for long-lived buffers.
   */
  allocF32(n: number): Float32Array;
  /** Like `allocF32` for masks and byte buffers. */
  allocU8(n: number): Uint8Array;
  /** Returns a buffer from `allocF32`/`allocU8` to the allocator (no-op for ordinary arrays). */
  free(view: Float32Array | Uint8Array): void;
  /** Grows memory once so that `bytes` more can be allocated without invalidating existing views. */
  reserve(bytes: number): void;

  /**
   * The k-th largest score (k >= 1): the mask of `topkMask` keeps every score above it and, among the
   * scores equal to it, the lowest indices. Returns +Infinity for k = 0. O(n) radix select.
   */
  topkThreshold(scores: Float32Array, k: number): number;
  /** 0/1 mask with exactly k ones on the largest scores; ties broken by lower index first. */
  topkMask(scores: Float32Array, k: number, out?: Uint8Array): Uint8Array;
  /** Packs a mask into `ceil(n/32)` LSB-first words. */
  maskToBits(mask: Uint8Array, out?: Uint32Array): Uint32Array;
  /** Unpacks `n` positions of a bitmask; bits past `n` must be zero. */
  bitsToMask(bits: Uint32Array, n: number, out?: Uint8Array): Uint8Array;
  /** Number of selected positions of a mask (Uint8Array) or set bits of a bitmask (Uint32Array). */
  popcount(x: Uint8Array | Uint32Array): number;
  /** Index list of a mask as LEB128 varints, each the number of unselected positions skipped before a one. */
  encodeDeltas(mask: Uint8Array): Uint8Array;
  /** Inverse of `encodeDeltas` for a mask of length n. */
  decodeDeltas(bytes: Uint8Array, n: number, out?: Uint8Array): Uint8Array;
  /** Values of `dense` at the selected positions, in index order. */
  gather(dense: Float32Array, mask: Uint8Array, out?: Float32Array): Float32Array;
  /** Writes `values` (in index order) to the selected positions of `out`; other positions are untouched. */
  scatter(values: Float32Array, mask: Uint8Array, out: Float32Array): void;
  /** One client's upload: `sum += n*m*values; weight += n*m` (values outside the mask are ignored). */
  accumulate(
    sum: Float32Array,
    weight: Float32Array,
    values: Float32Array,
    mask: Uint8Array,
    n: number,
  ): void;
  /**
   * `accumulate` for a compact upload, without scattering it first: for the r-th set bit p of `bits`
   * (LSB-first, `ceil(sum.length/32)` words, no bits past the end), `sum[p] += n*values[r]; weight[p] += n`.
   */
  accumulateSparse(
    sum: Float32Array,
    weight: Float32Array,
    bits: Uint32Array,
    values: Float32Array,
    n: number,
  ): void;
  /** `out = sum/weight` where weight > 0, else `own`. `out` may alias `own` or `sum`. */
  finalize(sum: Float32Array, weight: Float32Array, own: Float32Array, out: Float32Array): void;
  /** AdamW step on the selected positions (all when `mask` is undefined); unselected params, m, v never move. */
  maskedAdamW(
    params: Float32Array,
    grads: Float32Array,
    m: Float32Array,
    v: Float32Array,
    mask: Uint8Array | undefined,
    opts: AdamWStep,
  ): void;
  /** |a ∧ b| / |a ∨ b|; 1 for two empty masks. */
  jaccard(a: Uint8Array, b: Uint8Array): number;
  /** Number of NaN or ±Infinity entries (to validate uploads before `accumulate`). */
  countNonFinite(x: Float32Array): number;
}
