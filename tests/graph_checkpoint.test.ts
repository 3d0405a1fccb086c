/**
 * Activation checkpointing in `grad`: the same gradients, and a backward pass that reads no
 * activation from inside a segment (so a runtime frees them after the forward pass), with each
 * rebuilt segment sequenced after the gradient of its end.
 */
import assert from "node:assert/strict";
import { grad, Graph, type Tensor } from "../runtime/graph/mod.ts";
import { interpret } from "../runtime/graph/interpret.ts";

/** Three tanh layers sharing a weight, loss = sum(h3²); returns the graph and its named tensors. */
function chain() {
  const g = new Graph();
  const x = g.input("x", "f32", [4, 5]);
  const w = g.input("w", "f32", [5, 5]);
  const layer = (h: Tensor) => g.tanh(g.add(g.matmul(h, w), 0.1));
  const h1 = layer(x), h2 = layer(h1), h3 = layer(h2);
  const loss = g.reduceSum(g.mul(h3, h3), [0, 1]);
  return { g, x, w, h1, h2, loss };
}

function ancestors(t: Tensor): Set<number> {
  const seen = new Set<number>();
  const stack = [t];
  while (stack.length) {
    const u = stack.pop()!;
    if (seen.has(u.id)) continue;
    seen.add(u.id);
    if (u.node) stack.push(...u.node.inputs);
  }
  return seen;
}

const feeds = {
  x: { data: Array.from({ length: 20 }, (_, i) => Math.sin(i + 1)), dims: [4, 5] },
  w: { data: Array.from({ length: 25 }, (_, i) => 0.3 * Math.cos(2 * i + 1)), dims: [5, 5] },
};

Deno.test("graph checkpoint: gradients equal the plain backward pass", () => {
  const out: Record<string, Float64Array>[] = [];
  for (const checkpointed of [false, true]) {
    const { g, x, w, h1, h2, loss } = chain();
    const [gx, gw] = grad(loss, [x, w], undefined, checkpointed ? { checkpoints: [h1, h2] } : {});
    g.output("gx", gx);
    g.output("gw", gw);
    const r = interpret(g, feeds);
    out.push({ gx: r.gx.data, gw: r.gw.data });
  }
  for (const k of ["gx", "gw"]) {
    const [a, b] = [out[0][k], out[1][k]];
    assert.ok(a.some((v) => v !== 0), `${k} is all zero: nothing compared`);
    a.forEach((v, i) =>
      assert.ok(Math.abs(v - b[i]) <= 1e-12 * (1 + Math.abs(v)), `${k}[${i}]: ${v} vs ${b[i]}`)
    );
  }
});

Deno.test("graph checkpoint: the backward pass reads no segment-internal activation; rebuilds wait for gradients", () => {
  const { g, x, w, h1, h2, loss } = chain();
  const forwardEnd = loss.node!.id;
  const forward = g.nodes.slice(0, forwardEnd + 1);
  // Segment-internal activations: node outputs after the first checkpoint that are not checkpoints.
  const internal = new Set(
    forward.filter((n) => n.id > h1.node!.id && n.output !== h2).map((n) => n.output.id),
  );
  internal.delete(loss.id);
  const [gx, gw] = grad(loss, [x, w], undefined, { checkpoints: [h1, h2] });
  const backward = g.nodes.slice(forwardEnd + 1);
  const reads = backward.flatMap((n) =>
    n.inputs.filter((t) => internal.has(t.id)).map((t) => `${n.op} reads ${t}`)
  );
  assert.deepEqual(reads, [], "the backward pass keeps forward activations alive");
  // Without checkpoints the same check finds reads (so the check can fail).
  const plain = chain();
  const plainEnd = plain.loss.node!.id;
  const plainInternal = new Set(
    plain.g.nodes.filter((n) => n.id > plain.h1.node!.id && n.id < plainEnd).map((n) => n.output.id),
  );
  grad(plain.loss, [plain.x, plain.w]);
  assert.ok(plain.g.nodes.slice(plainEnd + 1).some((n) => n.inputs.some((t) => plainInternal.has(t.id))));
  // Both segments are rebuilt, the last first; the first segment's copy is computed from the gradient
  // that the last segment's copy gave, so it cannot run before the backward pass has reached it.
  const rebuiltTanh = backward.filter((n) => n.op === "Tanh");
  assert.equal(rebuiltTanh.length, 2, "segments 1 and 2 are rebuilt, each with one tanh");
  const [last, first] = rebuiltTanh;
  assert.ok(ancestors(first.output).has(last.output.id), "the first segment's rebuild is not sequenced");
  assert.equal(gx.shape.length, 2);
  assert.equal(gw.shape.length, 2);
});

Deno.test("graph checkpoint: refuses checkpoints out of order, from another graph, or after the loss", () => {
  const a = chain();
  assert.throws(() => grad(a.loss, [a.w], undefined, { checkpoints: [a.h2, a.h1] }), /forward order/);
  const b = chain();
  assert.throws(() => grad(b.loss, [b.w], undefined, { checkpoints: [a.h1] }), /this graph/);
  const c = chain();
  assert.throws(() => grad(c.loss, [c.w], undefined, { checkpoints: [c.x] }), /node output/);
  const d = chain();
  assert.throws(() => grad(d.h1, [d.w], d.g.zeros([4, 5]), { checkpoints: [d.h2] }), /not before the loss/);
});
