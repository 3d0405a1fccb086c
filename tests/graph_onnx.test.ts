// Serialization: the ModelProto decodes, declares opset 17 / IR 8, keeps inputs as inputs and
// constants as initializers, and uses no training-only or non-default-domain operators.
import assert from "node:assert/strict";
import onnxproto from "onnx-proto";
import { grad, Graph, IR_VERSION, OPSET, toOnnx } from "../runtime/graph/mod.ts";

const { onnx } = onnxproto;
// deno-lint-ignore no-explicit-any
const decode = (b: Uint8Array): any => onnx.ModelProto.decode(b);

Deno.test("graph toOnnx: model structure", () => {
  const g = new Graph();
  const x = g.input("x", "f32", ["batch", 3]);
  const w = g.input("w", "f32", [3, 2]);
  const b = g.constant(Float32Array.from([0.5, -0.5]), [2]);
  const y = g.softmax(g.add(g.matmul(x, w), b), -1);
  const loss = g.reduceMean(g.log(y), [0, 1]);
  const [dw] = grad(loss, [w]);
  g.output("loss", loss);
  g.output("dw", dw);
  g.output("y", y);
  const m = decode(toOnnx(g));
  assert.equal(Number(m.irVersion), IR_VERSION);
  assert.deepEqual(
    m.opsetImport.map((o: { domain: string; version: number }) => [o.domain, Number(o.version)]),
    [["", OPSET]],
  );
  const graph = m.graph;
  assert.deepEqual(graph.input.map((i: { name: string }) => i.name), ["x", "w"]);
  assert.deepEqual(graph.output.map((o: { name: string }) => o.name), ["loss", "dw", "y"]);
  const xdims = graph.input[0].type!.tensorType!.shape!.dim!;
  assert.equal(xdims[0].dimParam, "batch");
  assert.equal(Number(xdims[1].dimValue), 3);
  const init = graph.initializer.find((t: { rawData?: Uint8Array; dataType: number }) =>
    t.rawData && t.rawData.length === 8 && t.dataType === 1
  );
  assert.ok(init, "bias constant stored as an initializer");
  assert.deepEqual(Array.from(new Float32Array(new Uint8Array(init.rawData).buffer)), [0.5, -0.5]);
  const ops = new Set(graph.node.map((n: { opType: string }) => n.opType));
  for (const op of ops) {
    assert.ok(!/Grad|Training|Adam|SoftmaxCrossEntropy/.test(op as string), `training op ${op}`);
  }
  for (const n of graph.node) assert.ok(!n.domain, `node ${n.name} uses domain ${n.domain}`);
  const names = new Set<string>([
    ...graph.input.map((i: { name: string }) => i.name),
    ...graph.initializer.map((i: { name: string }) => i.name),
  ]);
  for (const n of graph.node) {
    for (const i of n.input) assert.ok(names.has(i), `node ${n.name} reads undefined ${i}`);
    for (const o of n.output) names.add(o);
  }
});

Deno.test("graph toOnnx: unused nodes and constants are not emitted", () => {
  const g = new Graph();
  const x = g.input("x", "f32", [4]);
  g.exp(g.mul(x, g.constant([1, 2, 3, 4], [4])));
  g.output("y", g.neg(x));
  const m = decode(toOnnx(g));
  assert.deepEqual(m.graph.node.map((n: { opType: string }) => n.opType), ["Neg", "Identity"]);
  assert.equal(m.graph.initializer.length, 0);
  assert.throws(() => toOnnx(new Graph()), /no outputs/);
});
