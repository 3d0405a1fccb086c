// Every differentiable op: ORT (onnxruntime-node, f32) forward vs the float64 interpreter, and ORT
// gradients vs central finite differences of the interpreter.
import { type Case, checkCase, f32, i64, rng } from "./graph_util.ts";

const r = rng(7);
const cases: Record<string, Case> = {
  "add broadcast": {
    inputs: { a: f32(r, [2, 3, 4]), b: f32(r, [3, 1]) },
    build: (g, x) => g.add(x.a, x.b),
    wrt: ["a", "b"],
  },
  "sub broadcast + scalar": {
    inputs: { a: f32(r, [3, 1]), b: f32(r, [2, 1, 4]) },
    build: (g, x) => g.sub(g.sub(x.a, x.b), 0.5),
    wrt: ["a", "b"],
  },
  "mul broadcast": {
    inputs: { a: f32(r, [2, 3, 4]), b: f32(r, [4]) },
    build: (g, x) => g.mul(x.a, x.b),
    wrt: ["a", "b"],
  },
  "div broadcast": {
    inputs: { a: f32(r, [2, 3]), b: f32(r, [2, 1], undefined, 0.5, 2) },
    build: (g, x) => g.div(x.a, x.b),
    wrt: ["a", "b"],
  },
  "pow tensor exponent": {
    inputs: { a: f32(r, [2, 3], undefined, 0.5, 2), b: f32(r, [3], undefined, -1.5, 2) },
    build: (g, x) => g.pow(x.a, x.b),
    wrt: ["a", "b"],
  },
  "pow scalar exponent": {
    inputs: { a: f32(r, [5], undefined, 0.5, 2) },
    build: (g, x) => g.pow(x.a, -0.5),
    wrt: ["a"],
  },
  "max/min broadcast": {
    inputs: { a: f32(r, [2, 3]), b: f32(r, [3]) },
    build: (g, x) => g.add(g.max(x.a, x.b), g.mul(g.min(x.a, 0.1), 2)),
    wrt: ["a", "b"],
  },
  "exp": { inputs: { a: f32(r, [6]) }, build: (g, x) => g.exp(x.a), wrt: ["a"] },
  "log": { inputs: { a: f32(r, [6], undefined, 0.3, 3) }, build: (g, x) => g.log(x.a), wrt: ["a"] },
  "sqrt": { inputs: { a: f32(r, [6], undefined, 0.3, 3) }, build: (g, x) => g.sqrt(x.a), wrt: ["a"] },
  "reciprocal": {
    inputs: { a: f32(r, [6], undefined, 0.5, 3) },
    build: (g, x) => g.reciprocal(x.a),
    wrt: ["a"],
  },
  "neg": { inputs: { a: f32(r, [6]) }, build: (g, x) => g.neg(x.a), wrt: ["a"] },
  "sigmoid": { inputs: { a: f32(r, [6], undefined, -3, 3) }, build: (g, x) => g.sigmoid(x.a), wrt: ["a"] },
  "tanh": { inputs: { a: f32(r, [6], undefined, -2, 2) }, build: (g, x) => g.tanh(x.a), wrt: ["a"] },
  "abs": { inputs: { a: f32(r, [6], undefined, 0.2, 1) }, build: (g, x) => g.abs(g.neg(x.a)), wrt: ["a"] },
  "silu + rmsNorm composites": {
    inputs: { a: f32(r, [2, 5]), w: f32(r, [5]) },
    build: (g, x) => g.rmsNorm(g.silu(x.a), x.w, 1e-5),
    wrt: ["a", "w"],
  },
  "matmul 2d": {
    inputs: { a: f32(r, [3, 4]), b: f32(r, [4, 2]) },
    build: (g, x) => g.matmul(x.a, x.b),
    wrt: ["a", "b"],
  },
  "matmul batched broadcast": {
    inputs: { a: f32(r, [2, 1, 3, 4]), b: f32(r, [3, 4, 2]) },
    build: (g, x) => g.matmul(x.a, x.b),
    wrt: ["a", "b"],
  },
  "matmul weight shared across batch": {
    inputs: { a: f32(r, [2, 3, 4]), b: f32(r, [4, 5]) },
    build: (g, x) => g.matmul(x.a, x.b),
    wrt: ["a", "b"],
  },
  "reduceSum": { inputs: { a: f32(r, [2, 3, 4]) }, build: (g, x) => g.reduceSum(x.a, [0, 2]), wrt: ["a"] },
  "reduceSum keepdims": {
    inputs: { a: f32(r, [2, 3, 4]) },
    build: (g, x) => g.reduceSum(x.a, [1], true),
    wrt: ["a"],
  },
  "reduceMean": { inputs: { a: f32(r, [2, 3, 4]) }, build: (g, x) => g.reduceMean(x.a, [-1]), wrt: ["a"] },
  "reduceMean keepdims all": {
    inputs: { a: f32(r, [2, 3]) },
    build: (g, x) => g.reduceMean(x.a, [0, 1], true),
    wrt: ["a"],
  },
  "reduceMax": { inputs: { a: f32(r, [3, 4]) }, build: (g, x) => g.reduceMax(x.a, [1]), wrt: ["a"] },
  "reduceMax keepdims": {
    inputs: { a: f32(r, [3, 4]) },
    build: (g, x) => g.reduceMax(x.a, [0], true),
    wrt: ["a"],
  },
  "softmax last": {
    inputs: { a: f32(r, [2, 5], undefined, -2, 2) },
    build: (g, x) => g.softmax(x.a),
    wrt: ["a"],
  },
  "softmax axis 0": {
    inputs: { a: f32(r, [4, 3], undefined, -2, 2) },
    build: (g, x) => g.softmax(x.a, 0),
    wrt: ["a"],
  },
  "logSoftmax": {
    inputs: { a: f32(r, [2, 3, 5], undefined, -2, 2) },
    build: (g, x) => g.logSoftmax(x.a, 1),
    wrt: ["a"],
  },
  "gather embedding": {
    inputs: { e: f32(r, [5, 3]), ids: i64([0, 4, 4, 1, 2, 0], [2, 3]) },
    build: (g, x) => g.gather(x.e, x.ids),
    wrt: ["e"],
  },
  "gatherElements / pick": {
    inputs: { a: f32(r, [2, 3, 4]), ids: i64([0, 3, 1, 2, 2, 0], [2, 3]) },
    build: (g, x) => g.pick(x.a, x.ids),
    wrt: ["a"],
  },
  "reshape with -1": {
    inputs: { a: f32(r, [2, 3, 4]) },
    build: (g, x) => g.mul(g.reshape(x.a, [-1, 4]), g.reshape(x.a, [6, 4])),
    wrt: ["a"],
  },
  "transpose": { inputs: { a: f32(r, [2, 3, 4]) }, build: (g, x) => g.transpose(x.a, [2, 0, 1]), wrt: ["a"] },
  "concat": {
    inputs: { a: f32(r, [2, 3]), b: f32(r, [2, 2]), c: f32(r, [2, 1]) },
    build: (g, x) => g.concat([x.a, x.b, x.c], 1),
    wrt: ["a", "b", "c"],
  },
  "slice negative end": {
    inputs: { a: f32(r, [3, 5]) },
    build: (g, x) => g.slice(x.a, [1, 1], [3, -1]),
    wrt: ["a"],
  },
  "slice two pieces (rotate-half)": {
    inputs: { a: f32(r, [2, 6]) },
    build: (g, x) => g.concat([g.neg(g.slice(x.a, [3], [6], [1])), g.slice(x.a, [0], [3], [1])], -1),
    wrt: ["a"],
  },
  "unsqueeze + squeeze": {
    inputs: { a: f32(r, [2, 3]) },
    build: (g, x) =>
      g.mul(g.unsqueeze(x.a, [0, 2]), g.unsqueeze(g.squeeze(g.unsqueeze(x.a, [1]), [1]), [0, 2])),
    wrt: ["a"],
  },
  "expand": { inputs: { a: f32(r, [3, 1]) }, build: (g, x) => g.expand(x.a, [2, 3, 4]), wrt: ["a"] },
  "where": {
    inputs: { a: f32(r, [2, 3]), b: f32(r, [3]), c: f32(r, [2, 3]) },
    build: (g, x) => g.where(g.greater(x.c, 0), x.a, x.b),
    wrt: ["a", "b"],
  },
  "cast round trip + one-hot": {
    inputs: { a: f32(r, [3, 4]), ids: i64([1, 0, 3], [3]) },
    build: (g, x) => g.mul(x.a, g.cast(g.cast(g.oneHot(x.ids, 4), "i64"), "f32")),
    wrt: ["a"],
  },
};

for (const [name, c] of Object.entries(cases)) {
  Deno.test(`graph op ${name}: forward and gradient`, () => checkCase(c, name.length));
}
