/**
 * Reverse-mode autodiff over a Graph. Every rule is written with the same builder, so the
 * backward pass is ordinary ONNX nodes (no training ops) appended to the same graph.
 */
import { END, type Graph, type Node, type Tensor } from "./graph.ts";
import { addDim, type Dim, fmtShape, numel, type Shape, shapeEq } from "./shape.ts";

type Rule = (g: Graph, n: Node, gy: Tensor, needs: boolean[]) => (Tensor | undefined)[];

/** Sums a broadcast gradient back down to the operand's shape. */
export function unbroadcast(g: Graph, gy: Tensor, shape: Shape): Tensor {
  if (shapeEq(gy.shape, shape)) return gy;
  const lead = gy.rank - shape.length;
  let t = gy;
  if (lead > 0) t = g.reduceSum(t, Array.from({ length: lead }, (_, i) => i), false);
  const axes = shape.flatMap((d, i) => d === 1 && t.shape[i] !== 1 ? [i] : []);
  if (axes.length) t = g.reduceSum(t, axes, true);
  if (!shapeEq(t.shape, shape)) {
    throw new Error(`unbroadcast: cannot reduce ${fmtShape(gy.shape)} to ${fmtShape(shape)}`);
  }
  return t;
}

/** Restores reduced axes (as size 1) and broadcasts back to the input shape. */
function unreduce(g: Graph, n: Node, gy: Tensor): Tensor {
  const x = n.inputs[0];
  const keep = n.attrs.keepdims === 1;
  const axes = reduceAxes(n);
  return g.expand(keep ? gy : g.unsqueeze(gy, axes), x.shape);
}

function reduceAxes(n: Node): number[] {
  if (n.op === "ReduceSum") return Array.from(n.inputs[1].data as BigInt64Array, Number);
  return n.attrs.axes as number[];
}

const ub = (g: Graph, t: Tensor, like: Tensor) => unbroadcast(g, t, like.shape);

const rules: Record<string, Rule> = {
  Add: (g, n, gy) => [ub(g, gy, n.inputs[0]), ub(g, gy, n.inputs[1])],
  Sub: (g, n, gy, need) => [ub(g, gy, n.inputs[0]), need[1] ? ub(g, g.neg(gy), n.inputs[1]) : undefined],
  Mul: (g, n, gy, need) => {
    const [a, b] = n.inputs;
    return [need[0] ? ub(g, g.mul(gy, b), a) : undefined, need[1] ? ub(g, g.mul(gy, a), b) : undefined];
  },
  Div: (g, n, gy, need) => {
    const [a, b] = n.inputs;
    return [
      need[0] ? ub(g, g.div(gy, b), a) : undefined,
      need[1] ? ub(g, g.neg(g.div(g.mul(gy, n.output), b)), b) : undefined,
    ];
  },
  Pow: (g, n, gy, need) => {
    const [a, b] = n.inputs;
    return [
      need[0] ? ub(g, g.mul(gy, g.mul(b, g.pow(a, g.sub(b, 1)))), a) : undefined,
      need[1] ? ub(g, g.mul(gy, g.mul(n.output, g.log(a))), b) : undefined,
    ];
  },
  // Ties send the whole gradient to the first operand (a subgradient).
  Max: (g, n, gy, need) => {
    const [a, b] = n.inputs, bWins = g.less(a, b);
    return [
      need[0] ? ub(g, g.where(bWins, 0, gy), a) : undefined,
      need[1] ? ub(g, g.where(bWins, gy, 0), b) : undefined,
    ];
  },
  Min: (g, n, gy, need) => {
    const [a, b] = n.inputs, bWins = g.greater(a, b);
    return [
      need[0] ? ub(g, g.where(bWins, 0, gy), a) : undefined,
      need[1] ? ub(g, g.where(bWins, gy, 0), b) : undefined,
    ];
  },
  Exp: (g, n, gy) => [g.mul(gy, n.output)],
  Log: (g, n, gy) => [g.div(gy, n.inputs[0])],
  Sqrt: (g, n, gy) => [g.div(g.mul(gy, 0.5), n.output)],
  Reciprocal: (g, n, gy) => [g.neg(g.mul(gy, g.mul(n.output, n.output)))],
  Neg: (g, _n, gy) => [g.neg(gy)],
  Sigmoid: (g, n, gy) => [g.mul(gy, g.mul(n.output, g.sub(1, n.output)))],
  Tanh: (g, n, gy) => [g.mul(gy, g.sub(1, g.mul(n.output, n.output)))],
  Abs: (g, n, gy) => [g.mul(gy, g.sign(n.inputs[0]))],
  Sign: () => [undefined],
  Identity: (_g, _n, gy) => [gy],
  Cast: (g, n, gy) => [n.inputs[0].dtype === "f32" ? g.cast(gy, "f32") : undefined],
  MatMul: (g, n, gy, need) => {
    const [a, b] = n.inputs;
    let db: Tensor | undefined;
    if (need[1] && b.rank === 2 && a.rank > 2) {
      // A weight shared over batch axes: one [K, rows] @ [rows, N] GEMM instead of a batched product plus a sum.
      const [k, m] = [a.shape[a.rank - 1], gy.shape[gy.rank - 1]];
      db = g.matmul(g.transposeLast(g.reshape(a, [-1, k])), g.reshape(gy, [-1, m]));
    } else if (need[1]) db = ub(g, g.matmul(g.transposeLast(a), gy), b);
    return [need[0] ? ub(g, g.matmul(gy, g.transposeLast(b)), a) : undefined, db];
  },
  ReduceSum: (g, n, gy) => [unreduce(g, n, gy)],
  ReduceMean: (g, n, gy) => {
    const x = n.inputs[0];
    const count = numel(reduceAxes(n).map((a) => x.shape[a]));
    return [g.div(unreduce(g, n, gy), g.dimValue(count))];
  },
  ReduceMax: (g, n, gy) => {
    const x = n.inputs[0];
    const axes = reduceAxes(n);
    const m = n.attrs.keepdims === 1 ? n.output : g.unsqueeze(n.output, axes);
    const hit = g.cast(g.equal(x, m), "f32");
    const ties = g.reduceSum(hit, axes, true);
    return [g.mul(hit, g.div(unreduce(g, n, gy), ties))];
  },
  Softmax: (g, n, gy) => {
    const y = n.output;
    return [g.mul(y, g.sub(gy, g.reduceSum(g.mul(gy, y), [n.attrs.axis as number], true)))];
  },
  LogSoftmax: (g, n, gy) => {
    const y = n.output;
    return [g.sub(gy, g.mul(g.exp(y), g.reduceSum(gy, [n.attrs.axis as number], true)))];
  },
  Gather: (g, n, gy) => {
    const [data, idx] = n.inputs;
    if (n.attrs.axis !== 0) throw new Error("gradient of Gather is implemented for axis 0 only");
    // Scatter-add written as one-hot^T @ grad: a plain MatMul every backend runs fast.
    const rest = data.shape.slice(1);
    const oh = g.oneHot(g.reshape(idx, [numel(idx.shape)]), data.shape[0]);
    const g2 = g.reshape(gy, [numel(idx.shape), numel(rest)]);
    return [g.reshape(g.matmul(g.transposeLast(oh), g2), data.shape), undefined];
  },
  GatherElements: (g, n, gy) => {
    const [data, idx] = n.inputs;
    const ax = n.attrs.axis as number;
    if (idx.shape[ax] !== 1) {
      throw new Error("gradient of GatherElements needs indices of size 1 along the axis");
    }
    const r = g.reshape(g.arange(data.shape[ax]), data.shape.map((d, i) => i === ax ? d : 1));
    // Mul(Cast(Equal)) measured a little faster than a broadcasting Where on onnxruntime-node's CPU EP.
    return [ub(g, g.mul(gy, g.cast(g.equal(idx, r), "f32")), data), undefined];
  },
  Reshape: (g, n, gy) => [g.reshape(gy, n.inputs[0].shape), undefined],
  Transpose: (g, n, gy) => {
    const perm = n.attrs.perm as number[];
    const inv = perm.map((_, i) => perm.indexOf(i));
    return [g.transpose(gy, inv)];
  },
  Unsqueeze: (g, n, gy) => [g.squeeze(gy, Array.from(n.inputs[1].data as BigInt64Array, Number)), undefined],
  Squeeze: (g, n, gy) => [g.unsqueeze(gy, Array.from(n.inputs[1].data as BigInt64Array, Number)), undefined],
  Expand: (g, n, gy) => [ub(g, gy, n.inputs[0]), undefined],
  Where: (g, n, gy, need) => {
    const [c, a, b] = n.inputs;
    return [
      undefined,
      need[1] ? ub(g, g.where(c, gy, 0), a) : undefined,
      need[2] ? ub(g, g.where(c, 0, gy), b) : undefined,
    ];
  },
  Concat: (g, n, gy, need) => {
    const ax = n.attrs.axis as number;
    let off: Dim = 0;
    return n.inputs.map((x, i) => {
      const start = off;
      off = i === n.inputs.length - 1 ? off : addDim(off, x.shape[ax]);
      if (!need[i]) return undefined;
      const end = i === n.inputs.length - 1 ? END : off;
      return g.slice(gy, [start], [end], [ax]);
    });
  },
  Slice: (g, n, gy) => [slicePad(g, n, gy), undefined, undefined, undefined],
};

/** Gradient of a step-1 Slice: zero-pad back to the input shape; pads computed at run time in i64. */
function slicePad(g: Graph, n: Node, gy: Tensor): Tensor {
  const [x, starts, ends, axesT] = n.inputs;
  const axes = Array.from(axesT.data as BigInt64Array, Number);
  const dims = g.shapeOf(axes.map((a) => x.shape[a]));
  const norm = (v: Tensor) => g.max(g.min(g.where(g.less(v, 0), g.add(v, dims), v), dims), 0);
  const s = norm(starts);
  const e = g.max(norm(ends), s);
  const begin = s, after = g.sub(dims, e);
  const zero = g.constant([0], [1], "i64");
  const pick = (t: Tensor, a: number) => {
    const j = axes.indexOf(a);
    return j < 0 ? zero : g.slice(t, [j], [j + 1], [0]);
  };
  const rank = x.shape.map((_, a) => a);
  const pads = g.concat([...rank.map((a) => pick(begin, a)), ...rank.map((a) => pick(after, a))], 0);
  return g.pad(gy, pads, x.shape);
}

/** Ops whose outputs never carry gradient. */
const NO_GRAD = new Set(["Shape", "Equal", "Less", "Greater", "Range", "Sign"]);

/** Options of `grad`. */
export interface GradOptions {
  /**
   * Activation recomputation (checkpointing): tensors on the path to the loss, in forward order,
   * that split the forward pass into segments (typically each decoder layer's input). The backward
   * pass recomputes a segment's activations from its checkpoint just before it needs them, instead
   * of keeping every activation alive from the forward pass: memory falls from all segments'
   * activations to one segment's, for one more forward pass of compute.
   */
  checkpoints?: Tensor[];
}

/**
 * Gradients of a loss with respect to tensors, appended to the loss's graph. Only nodes on a path
 * from some wrt tensor to the loss are differentiated. The loss must be a scalar unless a seed
 * (the gradient of the loss, same shape) is given. Tensors the loss does not depend on get zeros.
 */
export function grad(loss: Tensor, wrt: Tensor[], seed?: Tensor, opts: GradOptions = {}): Tensor[] {
  const g = loss.graph;
  if (!seed && loss.rank !== 0) throw new Error(`grad: loss must be a scalar, got ${loss} (pass a seed)`);
  if (loss.dtype !== "f32") throw new Error("grad: loss must be f32");
  const fromWrt = new Set(wrt.map((t) => t.id));
  for (const n of g.nodes) {
    if (n.output.dtype === "f32" && !NO_GRAD.has(n.op) && n.inputs.some((i) => fromWrt.has(i.id))) {
      fromWrt.add(n.output.id);
    }
  }
  const toLoss = new Set([loss.id]);
  const stop = loss.node ? loss.node.id : -1;
  for (let k = stop; k >= 0; k--) {
    const n = g.nodes[k];
    if (toLoss.has(n.output.id)) { for (const i of n.inputs) toLoss.add(i.id); }
  }
  const live = (t: Tensor) => fromWrt.has(t.id) && toLoss.has(t.id) && t.dtype === "f32";
  const grads = new Map<number, Tensor>([[loss.id, seed ?? g.scalar(1)]]);
  const forward = opts.checkpoints?.length ? recomputer(g, loss, opts.checkpoints, grads) : (n: Node) => n;
  for (let k = stop; k >= 0; k--) {
    const n = g.nodes[k];
    const gy = grads.get(n.output.id);
    if (!gy || !live(n.output)) continue;
    const needs = n.inputs.map(live);
    if (!needs.some(Boolean)) continue;
    const rule = rules[n.op];
    if (!rule) throw new Error(`no gradient rule for ${n.op}`);
    const gins = rule(g, forward(n), gy, needs);
    n.inputs.forEach((inp, i) => {
      const gi = gins[i];
      if (!needs[i] || !gi) return;
      if (!shapeEq(gi.shape, inp.shape)) {
        throw new Error(`gradient of ${n.op} input ${inp} has shape ${fmtShape(gi.shape)}`);
      }
      const prev = grads.get(inp.id);
      grads.set(inp.id, prev ? g.add(prev, gi) : gi);
    });
  }
  return wrt.map((w) => grads.get(w.id) ?? g.zeros(w.shape));
}

/**
 * For `grad` with checkpoints: maps a forward node to the node whose values its gradient rule
 * should read. Segment s is every node after checkpoint s, up to the next checkpoint (or the loss),
 * that depends on checkpoint s; the first time the backward pass reaches one of its nodes, the whole
 * segment is rebuilt from checkpoint s and the rules read the rebuilt copies. Nodes that do not
 * depend on the checkpoint (weights, masks, position tables) are shared, not rebuilt.
 *
 * Sequencing: an ONNX runtime may run a node as soon as its inputs exist, which would rebuild every
 * segment right after the forward pass and save nothing. So the rebuilt segment starts from
 * `checkpoint + 0 · g[0]`, where g is the gradient of the segment's end: it cannot run before the
 * backward pass has reached that segment. (0 · g[0] is 0 for any finite gradient; a non-finite one
 * makes the step's gradients non-finite anyway.)
 */
function recomputer(
  g: Graph,
  loss: Tensor,
  checkpoints: Tensor[],
  grads: Map<number, Tensor>,
): (n: Node) => Node {
  const ids = checkpoints.map((c) => c.node?.id ?? -1);
  for (let i = 0; i < checkpoints.length; i++) {
    const c = checkpoints[i];
    if (c.graph !== g || !c.node) {
      throw new Error(`grad: checkpoint ${c} must be a node output of this graph`);
    }
    if (i > 0 && !(ids[i] > ids[i - 1])) throw new Error("grad: checkpoints must be in forward order");
    if (loss.node && ids[i] >= loss.node.id) throw new Error(`grad: checkpoint ${c} is not before the loss`);
  }
  const ends = [...checkpoints.slice(1), loss];
  // segment index of every node that depends on its segment's checkpoint
  const segmentOf = new Map<number, number>();
  for (let s = 0; s < checkpoints.length; s++) {
    const inSeg = new Set([checkpoints[s].id]);
    const last = ends[s].node?.id ?? ids[s];
    for (let k = ids[s] + 1; k <= last; k++) {
      const n = g.nodes[k];
      if (n.inputs.some((t) => inSeg.has(t.id))) {
        inSeg.add(n.output.id);
        segmentOf.set(n.id, s);
      }
    }
  }
  const rebuilt = new Map<number, Node>();
  const done = new Set<number>();
  const rebuild = (s: number) => {
    done.add(s);
    const end = ends[s];
    const gEnd = grads.get(end.id);
    if (!gEnd) return; // nothing in the segment gets a gradient
    const first = gEnd.rank === 0
      ? gEnd
      : g.slice(gEnd, gEnd.shape.map(() => 0), gEnd.shape.map(() => 1), gEnd.shape.map((_, a) => a));
    const c = checkpoints[s];
    const swap = new Map<number, Tensor>([[c.id, g.add(c, g.mul(first, 0))]]);
    const last = end.node?.id ?? ids[s];
    for (let k = ids[s] + 1; k <= last; k++) {
      const n = g.nodes[k];
      if (segmentOf.get(n.id) !== s) continue;
      const inputs = n.inputs.map((t) => swap.get(t.id) ?? t);
      const out = g.node(n.op, inputs, n.attrs, n.output.dtype, n.output.shape);
      swap.set(n.output.id, out);
      rebuilt.set(n.id, { id: n.id, op: n.op, inputs, attrs: n.attrs, output: out });
    }
  };
  return (n) => {
    const s = segmentOf.get(n.id);
    if (s === undefined) return n;
    if (!done.has(s)) rebuild(s);
    return rebuilt.get(n.id) ?? n;
  };
}
