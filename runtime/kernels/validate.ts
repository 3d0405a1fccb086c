/** Input checks shared by every kernel backend, so all backends reject the same inputs the same way. */
import { KernelError } from "./types.ts";

/** Asserts `x` is a typed array of the given constructor. */
// deno-lint-ignore no-explicit-any
export function checkType(name: string, x: unknown, ctor: new (...args: any[]) => unknown): void {
  if (!(x instanceof ctor)) {
    throw new KernelError(`${name} must be a ${ctor.name}, got ${describe(x)}`);
  }
  // A view whose buffer was detached (e.g. WASM memory grew under it) reads as empty: refuse it.
  if ((ArrayBuffer.isView(x) && (x.buffer as ArrayBuffer & { detached?: boolean }).detached === true)) {
    throw new KernelError(
      `${name} is detached: WASM memory grew after it was allocated; call kernels().reserve(bytes) before allocating`,
    );
  }
}

function describe(x: unknown): string {
  if (x === null) return "null";
  if (typeof x === "object") return (x as object).constructor?.name ?? "object";
  return typeof x;
}

/** Asserts two lengths agree. */
export function checkSameLength(aName: string, a: number, bName: string, b: number): void {
  if (a !== b) {
    throw new KernelError(`length mismatch: ${aName} has ${a} elements but ${bName} has ${b}`);
  }
}

/** Asserts `k` is an integer in [0, n]. */
/**
 * Returns the caller's `out` array, checked to be a `ctor` of length `n` (`what` names that length in the
 * error), or a fresh one when none was given.
 */
export function outArray<T extends Uint8Array | Uint32Array | Float32Array>(
  out: T | undefined,
  ctor: new (n: number) => T,
  n: number,
  what: string,
): T {
  if (out === undefined) return new ctor(n);
  checkType("out", out, ctor);
  checkSameLength("out", out.length, what, n);
  return out;
}

export function checkK(k: number, n: number): void {
  if (!Number.isInteger(k) || k < 0) throw new KernelError(`k must be a non-negative integer, got ${k}`);
  if (k > n) throw new KernelError(`k = ${k} exceeds the number of scores n = ${n}`);
}

/** Asserts `n` is a non-negative integer length. */
export function checkLength(name: string, n: number): void {
  if (!Number.isInteger(n) || n < 0) {
    throw new KernelError(`${name} must be a non-negative integer, got ${n}`);
  }
}

/** Asserts a sample count / weight is finite and non-negative. */
export function checkWeight(n: number): void {
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0) {
    throw new KernelError(`sample count must be a finite number >= 0, got ${n}`);
  }
}

/** Asserts AdamW hyper-parameters are usable. */
export function checkAdamW(
  o: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number },
): void {
  for (const key of ["lr", "beta1", "beta2", "eps", "weightDecay"] as const) {
    if (typeof o[key] !== "number" || !Number.isFinite(o[key])) {
      throw new KernelError(`AdamW ${key} must be a finite number, got ${o[key]}`);
    }
  }
  if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1)) {
    throw new KernelError(`AdamW betas must lie in [0, 1), got ${o.beta1}, ${o.beta2}`);
  }
  if (!Number.isInteger(o.step) || o.step < 1) {
    throw new KernelError(`AdamW step must be an integer >= 1, got ${o.step}`);
  }
}

/** Upper bound on the bytes `encodeDeltas` writes for `ones` selected positions out of `n`. */
export function deltaBound(ones: number, n: number): number {
  // A gap g costs 1 + floor(log128 g) bytes and every extra byte needs >= 128 skipped positions.
  return ones + Math.ceil(n / 128) + 5;
}

/** Checks a bitmask covers exactly `n` positions with no bits set past the end. */
export function checkBits(bits: Uint32Array, n: number): void {
  checkSameLength("bits", bits.length, "ceil(n/32)", Math.ceil(n / 32));
  if (n % 32 !== 0 && bits[bits.length - 1] >>> (n % 32) !== 0) {
    throw new KernelError(`bitmask has bits set past position n = ${n}`);
  }
}
