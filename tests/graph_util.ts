// Shared harness for graph tests: seeded data, ORT-vs-reference comparison, finite differences.
import assert from "node:assert/strict";
import {
  type Backend,
  createSession,
  type Feed,
  grad,
  Graph,
  type Tensor,
  toOnnx,
} from "../runtime/graph/mod.ts";
import { interpret, type RefFeed } from "../runtime/graph/interpret.ts";
import { mulberry32 } from "../runtime/data/rng.ts";

/** Deterministic PRNG: the runtime's mulberry32, so tests draw the same streams as the code under test. */
export const rng: (seed: number) => () => number = mulberry32;

/** Uniform f32 values in [lo, hi). */
export function uniform(r: () => number, n: number, lo = -1, hi = 1): Float32Array {
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * r());
}

/** Asserts |a-b| <= atol + rtol*|b| elementwise, with a readable message. */
export function assertClose(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  what: string,
  { rtol = 1e-3, atol = 1e-4 }: { rtol?: number; atol?: number } = {},
): void {
  assert.equal(a.length, b.length, `${what}: length ${a.length} vs ${b.length}`);
  for (let i = 0; i < a.length; i++) {
    const ok = Math.abs(a[i] - b[i]) <= atol + rtol * Math.abs(b[i]);
    if (!ok || Number.isNaN(a[i]) !== Number.isNaN(b[i])) {
      assert.fail(`${what}[${i}]: got ${a[i]}, want ${b[i]} (rtol ${rtol}, atol ${atol})`);
    }
  }
}

/** A test case: builds a graph from inputs, returns the tensor to check and which inputs to differentiate. */
export interface Case {
  inputs: Record<
    string,
    { dtype: "f32" | "i64"; shape: (number | string)[]; dims: number[]; data: Float32Array | BigInt64Array }
  >;
  build: (g: Graph, x: Record<string, Tensor>) => Tensor;
  wrt: string[];
}

/**
 * Checks forward values of ORT against the float64 interpreter, and ORT gradients of
 * sum(out * R) (R random, fed as an input) against central finite differences of the interpreter.
 */
export async function checkCase(
  c: Case,
  seed = 1,
  backend: Backend = "node",
  tol = { rtol: 2e-3, atol: 2e-4 },
): Promise<void> {
  const g = new Graph();
  const x: Record<string, Tensor> = {};
  for (const [name, v] of Object.entries(c.inputs)) x[name] = g.input(name, v.dtype, v.shape);
  const out = c.build(g, x);
  const rIn = g.input("__r", "f32", out.shape);
  const loss = g.reduceSum(g.mul(out, rIn), out.shape.map((_, i) => i));
  const grads = grad(loss, c.wrt.map((n) => x[n]));
  g.output("out", out);
  g.output("loss", loss);
  grads.forEach((t, i) => g.output(`d_${c.wrt[i]}`, t));

  const feeds: Record<string, Feed & RefFeed> = {};
  for (const [name, v] of Object.entries(c.inputs)) feeds[name] = { data: v.data, dims: v.dims };
  const ref = interpret(g, feeds, ["out"]).out;
  feeds.__r = { data: uniform(rng(seed + 99), ref.data.length), dims: ref.dims };

  const s = await createSession(toOnnx(g), { backend });
  const res = await s.run(feeds);
  assert.deepEqual(res.out.dims, ref.dims, "output dims");
  assertClose(Array.from(res.out.data as Float32Array), ref.data, "forward", tol);

  const lossAt = (name: string, data: Float64Array) =>
    interpret(g, { ...feeds, [name]: { data, dims: feeds[name].dims } }, ["loss"]).loss.data[0];
  for (const name of c.wrt) {
    const base = Float64Array.from(feeds[name].data as Float32Array);
    const fd = new Float64Array(base.length);
    const h = 1e-5;
    for (let i = 0; i < base.length; i++) {
      const p = base.slice(), m = base.slice();
      p[i] += h;
      m[i] -= h;
      fd[i] = (lossAt(name, p) - lossAt(name, m)) / (2 * h);
    }
    const got = res[`d_${name}`];
    assert.deepEqual(got.dims, feeds[name].dims, `grad dims of ${name}`);
    const scale = Math.max(1e-3, ...Array.from(fd, Math.abs));
    assertClose(Array.from(got.data as Float32Array), fd, `d/d${name}`, {
      rtol: tol.rtol,
      atol: tol.atol * scale * 10,
    });
  }
  await s.release();
}

/** f32 input spec with random data. */
export function f32(r: () => number, shape: (number | string)[], dims?: number[], lo = -1, hi = 1) {
  const d = dims ?? (shape as number[]);
  return { dtype: "f32" as const, shape, dims: d, data: uniform(r, d.reduce((a, b) => a * b, 1), lo, hi) };
}

/** i64 input spec. */
export function i64(values: number[], shape: (number | string)[], dims?: number[]) {
  return {
    dtype: "i64" as const,
    shape,
    dims: dims ?? (shape as number[]),
    data: BigInt64Array.from(values.map(BigInt)),
  };
}
