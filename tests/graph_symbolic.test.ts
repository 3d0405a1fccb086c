// Symbolic dims ("batch", "seq"): runtime-shaped Reshape/Expand/Slice/Concat/Range subgraphs and their
// gradients, a causal attention block and a masked cross-entropy, each checked against finite differences.
import assert from "node:assert/strict";
import { END, grad, Graph, type Tensor } from "../runtime/graph/mod.ts";
import { interpret } from "../runtime/graph/interpret.ts";
import { type Case, checkCase, f32, i64, rng } from "./graph_util.ts";

const r = rng(11);
const BS = ["batch", "seq"];

function attention(g: Graph, q: Tensor, k: Tensor, v: Tensor): Tensor {
  const d = q.shape[q.rank - 1] as number;
  const scores = g.add(g.div(g.matmul(q, g.transposeLast(k)), Math.sqrt(d)), g.causalMask(q.shape[1]));
  return g.matmul(g.softmax(scores, -1), v);
}

const cases: Record<string, Case> = {
  "reshape merge/split symbolic axes": {
    inputs: { a: f32(r, [...BS, 4], [2, 3, 4]), w: f32(r, [4, 3]) },
    build: (g, x) => g.reshape(g.matmul(g.reshape(x.a, [-1, 4]), x.w), ["batch", "seq", 3]),
    wrt: ["a", "w"],
  },
  "reduceMean over symbolic axis": {
    inputs: { a: f32(r, [...BS, 2], [2, 3, 2]) },
    build: (g, x) => g.reduceMean(x.a, [1]),
    wrt: ["a"],
  },
  "expand to symbolic shape": {
    inputs: { a: f32(r, [...BS, 4], [2, 3, 4]), w: f32(r, [1, 4]) },
    build: (g, x) => g.mul(x.a, g.expand(x.w, ["batch", "seq", 4])),
    wrt: ["w"],
  },
  "slice symbolic axis (shift)": {
    inputs: { a: f32(r, [...BS, 2], [2, 4, 2]) },
    build: (g, x) => g.mul(g.slice(x.a, [0], [-1], [1]), g.slice(x.a, [1], [END], [1])),
    wrt: ["a"],
  },
  "concat along symbolic axis": {
    inputs: { a: f32(r, [...BS, 2], [2, 3, 2]), b: f32(r, ["batch", 2, 2], [2, 2, 2]) },
    build: (g, x) => g.softmax(g.concat([x.a, x.b, x.a], 1), 1),
    wrt: ["a", "b"],
  },
  "causal attention [2,3]": {
    inputs: {
      q: f32(r, [...BS, 4], [2, 3, 4]),
      k: f32(r, [...BS, 4], [2, 3, 4]),
      v: f32(r, [...BS, 4], [2, 3, 4]),
    },
    build: (g, x) => attention(g, x.q, x.k, x.v),
    wrt: ["q", "k", "v"],
  },
  "causal attention [1,5] (same symbolic graph, other sizes)": {
    inputs: {
      q: f32(r, [...BS, 4], [1, 5, 4]),
      k: f32(r, [...BS, 4], [1, 5, 4]),
      v: f32(r, [...BS, 4], [1, 5, 4]),
    },
    build: (g, x) => attention(g, x.q, x.k, x.v),
    wrt: ["q", "k", "v"],
  },
  "embedding + masked cross-entropy": {
    inputs: {
      e: f32(r, [6, 4]),
      w: f32(r, [4, 6]),
      ids: i64([1, 2, 5, 0, 3, 3], BS, [2, 3]),
      tgt: i64([2, 5, 0, 3, 3, 1], BS, [2, 3]),
      m: { dtype: "f32", shape: BS, dims: [2, 3], data: Float32Array.from([1, 1, 0, 0, 1, 1]) },
    },
    build: (g, x) => {
      const logits = g.matmul(g.gather(x.e, x.ids), x.w);
      const nll = g.neg(g.pick(g.logSoftmax(logits, -1), x.tgt));
      return g.div(g.reduceSum(g.mul(nll, x.m), [0, 1]), g.reduceSum(x.m, [0, 1]));
    },
    wrt: ["e", "w"],
  },
};

for (const [name, c] of Object.entries(cases)) {
  Deno.test(`graph symbolic ${name}: forward and gradient`, () => checkCase(c, name.length));
}

Deno.test("graph symbolic causal mask values", () => {
  const g = new Graph();
  const x = g.input("x", "f32", ["batch", "seq"]);
  g.output("mask", g.causalMask(x.shape[1]));
  const m = interpret(g, { x: { data: new Float32Array(6), dims: [2, 3] } }).mask;
  assert.deepEqual(m.dims, [3, 3]);
  assert.deepEqual(Array.from(m.data, (v) => v < -1e8 ? 1 : v), [0, 1, 1, 0, 0, 1, 0, 0, 0]);
});

Deno.test("graph grad prunes nodes not between wrt and loss, zeros for unused wrt", () => {
  const g = new Graph();
  const a = g.input("a", "f32", [3]);
  const b = g.input("b", "f32", [3]);
  const c = g.input("c", "f32", [3]);
  const side = g.exp(b); // feeds the loss but does not depend on a
  const loss = g.reduceSum(g.mul(g.exp(a), side), [0]);
  const before = g.nodes.length;
  const [da, dc] = grad(loss, [a, c]);
  const added = g.nodes.slice(before).map((n) => n.op);
  // Only d(exp a) and the mul rule run; nothing differentiates through exp(b).
  assert.ok(added.filter((op) => op === "Exp").length === 0, `unexpected Exp in backward: ${added}`);
  g.output("da", da);
  g.output("dc", dc);
  const feeds = {
    a: { data: [0, 1, 2], dims: [3] },
    b: { data: [0, 0, 1], dims: [3] },
    c: { data: [5, 5, 5], dims: [3] },
  };
  const out = interpret(g, feeds);
  assert.deepEqual(Array.from(out.dc.data), [0, 0, 0]);
  assert.ok(Math.abs(out.da.data[2] - Math.exp(2) * Math.E) < 1e-9);
});

Deno.test("graph builder rejects bad shapes with clear errors", () => {
  const g = new Graph();
  const a = g.input("a", "f32", ["batch", 3]);
  const b = g.input("b", "f32", [4, 2]);
  assert.throws(() => g.matmul(a, b), /inner dims/);
  assert.throws(() => g.add(a, b), /broadcast/);
  assert.throws(() => g.reshape(a, [5, -1]), /cannot divide|cannot become/);
  assert.throws(() => g.input("a", "f32", [1]), /duplicate/);
  assert.throws(() => grad(g.reduceSum(a, [1]), [a]), /scalar/);
  g.input("c", "f32", ["batch"]);
  const feeds = { a: { dims: [2, 3] }, b: { dims: [4, 2] }, c: { dims: [2] } };
  assert.deepEqual([...g.checkFeeds(feeds)], [["batch", 2]]);
  assert.throws(() => g.checkFeeds({ ...feeds, c: { dims: [5] } }), /"batch" is 5 here but 2 elsewhere/);
  assert.throws(() => g.checkFeeds({ ...feeds, b: { dims: [4, 3] } }), /dim 1 is 3, expected 2/);
  assert.throws(() => g.checkFeeds({ a: feeds.a, b: feeds.b }), /missing input "c"/);
});
