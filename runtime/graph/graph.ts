/**
 * A tiny tensor-graph builder whose nodes are ONNX (opset 17) operators. Shapes are tracked
 * statically with symbolic dims; where a runtime size is needed (Reshape, Expand, Range) the
 * builder emits Shape-based subgraphs reading the size off a tensor that carries that dim.
 */
import {
  addDim,
  broadcastShapes,
  canonDim,
  type Dim,
  dimEq,
  dimTerms,
  divDim,
  fmtShape,
  isSymbol,
  normAxis,
  numel,
  type Shape,
  subDim,
} from "./shape.ts";

/** Element types a graph tensor can have ("bool" comes from comparisons). */
export type GraphDType = "f32" | "i64" | "bool";
/** ONNX TensorProto.DataType codes. */
export const ONNX_DTYPE: Record<GraphDType, number> = { f32: 1, i64: 7, bool: 9 };
/** Constant payloads. */
export type ConstData = Float32Array | BigInt64Array | Uint8Array;
/** ONNX attributes used by this builder: all integer or integer lists. */
export type Attrs = Record<string, number | number[]>;
/** Operand that may be a literal scalar (lifted to a constant of the other operand's dtype). */
export type TensorLike = Tensor | number;

/** One ONNX node with a single output. */
export interface Node {
  readonly id: number;
  readonly op: string;
  readonly inputs: Tensor[];
  readonly attrs: Attrs;
  readonly output: Tensor;
}

/** A value in a graph: a graph input, a constant (initializer) or the output of a node. */
export class Tensor {
  /** @internal */
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly dtype: GraphDType,
    readonly shape: Shape,
    readonly kind: "input" | "const" | "op",
    readonly name: string,
    readonly node?: Node,
    readonly data?: ConstData,
  ) {}
  /** Number of axes. */
  get rank(): number {
    return this.shape.length;
  }
  toString(): string {
    return `${this.name}:${this.dtype}${fmtShape(this.shape)}`;
  }
}

/** Large finite negative used for masked logits so fully-masked rows stay finite. */
export const MASK_VALUE = -1e9;
/** "Slice to the end" sentinel (ONNX clamps it; any end >= 2^31 means "to the end" here). */
export const END = 2 ** 62;

/** Graph builder. Node ids are creation order, which is a topological order. */
export class Graph {
  readonly nodes: Node[] = [];
  readonly inputs: Tensor[] = [];
  readonly constants: Tensor[] = [];
  readonly outputs = new Map<string, Tensor>();
  private nextId = 0;
  private dimSource = new Map<string, { t: Tensor; axis: number }>();
  private cache = new Map<string, Tensor>();

  private make(
    dtype: GraphDType,
    shape: Shape,
    kind: Tensor["kind"],
    name: string | undefined,
    node?: Node,
    data?: ConstData,
  ) {
    const id = this.nextId++;
    const t = new Tensor(this, id, dtype, shape.map(canonDim), kind, name ?? `_t${id}`, node, data);
    t.shape.forEach((d, axis) => {
      if (typeof d === "string" && !this.dimSource.has(d)) this.dimSource.set(d, { t, axis });
    });
    return t;
  }

  private check(...ts: Tensor[]) {
    for (const t of ts) if (t.graph !== this) throw new Error(`tensor ${t} belongs to another graph`);
  }

  /** Appends a raw ONNX node. Prefer the typed helpers; this is the escape hatch they all use. */
  node(op: string, inputs: Tensor[], attrs: Attrs, dtype: GraphDType, shape: Shape): Tensor {
    this.check(...inputs);
    const node = { id: this.nodes.length, op, inputs, attrs } as Omit<Node, "output"> as Node;
    const out = this.make(dtype, shape, "op", undefined, node);
    (node as { output: Tensor }).output = out;
    this.nodes.push(node);
    return out;
  }

  // ---------- leaves ----------

  /** Declares a graph input. Shape entries are sizes or symbolic names like "batch". */
  input(name: string, dtype: "f32" | "i64", shape: Shape): Tensor {
    if (/^_t\d+$/.test(name)) throw new Error(`input name ${name} is reserved`);
    for (const d of shape) {
      if (typeof d === "string") canonDim(d); // throws on a malformed expression
      if (typeof d === "number" && !(Number.isInteger(d) && d >= 0)) {
        throw new Error(`input ${name}: bad dim ${d}`);
      }
    }
    if (this.inputs.some((t) => t.name === name)) throw new Error(`duplicate input ${name}`);
    const t = this.make(dtype, shape, "input", name);
    this.inputs.push(t);
    return t;
  }

  /** A constant stored as an ONNX initializer. Numbers default to f32. */
  constant(data: ConstData | number[] | number, shape?: number[], dtype?: GraphDType): Tensor {
    let arr: ConstData;
    const isScalar = typeof data === "number";
    if (typeof data === "number") data = [data];
    if (Array.isArray(data)) {
      const dt = dtype ?? "f32";
      arr = dt === "f32"
        ? Float32Array.from(data)
        : dt === "i64"
        ? BigInt64Array.from(data.map((v) => BigInt(v)))
        : Uint8Array.from(data);
    } else arr = data;
    const dt: GraphDType = arr instanceof Float32Array
      ? "f32"
      : arr instanceof BigInt64Array
      ? "i64"
      : "bool";
    const shp = shape ?? (isScalar ? [] : [arr.length]);
    const n = shp.reduce((a, b) => a * b, 1);
    if (n !== arr.length) throw new Error(`constant has ${arr.length} values but shape ${fmtShape(shp)}`);
    const t = this.make(dt, shp, "const", undefined, undefined, arr);
    this.constants.push(t);
    return t;
  }

  /** Cached scalar constant. */
  scalar(value: number, dtype: GraphDType = "f32"): Tensor {
    const key = `s:${dtype}:${value}`;
    let t = this.cache.get(key);
    if (!t) this.cache.set(key, t = this.constant([value], [], dtype));
    return t;
  }

  private lift(x: TensorLike, like: TensorLike): Tensor {
    if (typeof x !== "number") return x;
    return this.scalar(x, typeof like === "number" ? "f32" : like.dtype);
  }

  /** Marks a tensor as a named graph output. */
  output(name: string, t: Tensor): void {
    this.check(t);
    if (this.outputs.has(name)) throw new Error(`duplicate output ${name}`);
    if (this.inputs.some((i) => i.name === name)) throw new Error(`output ${name} collides with an input`);
    this.outputs.set(name, t);
  }

  /**
   * Checks run-time input dims against the declared shapes: rank, static sizes, and one value per
   * symbol across all inputs. Returns the symbol bindings; throws a clear error otherwise.
   * `partial` skips inputs that are not fed.
   */
  checkFeeds(
    feeds: Record<string, { dims: readonly number[] }>,
    opts: { partial?: boolean } = {},
  ): Map<string, number> {
    const bound = new Map<string, number>();
    for (const t of this.inputs) {
      const f = feeds[t.name];
      if (!f && opts.partial) continue;
      if (!f) throw new Error(`missing input "${t.name}"`);
      if (f.dims.length !== t.rank) {
        throw new Error(`input "${t.name}": rank ${f.dims.length}, expected ${fmtShape(t.shape)}`);
      }
      t.shape.forEach((d, i) => {
        const v = f.dims[i];
        if (typeof d === "number") {
          if (v !== d) throw new Error(`input "${t.name}": dim ${i} is ${v}, expected ${d}`);
        } else if (isSymbol(d)) {
          const prev = bound.get(d);
          if (prev !== undefined && prev !== v) {
            throw new Error(`input "${t.name}": "${d}" is ${v} here but ${prev} elsewhere`);
          }
          bound.set(d, v);
        }
      });
    }
    return bound;
  }

  // ---------- runtime shapes ----------

  /** i64 [1] tensor holding the runtime value of a dim. */
  dimTensor(d: Dim): Tensor {
    d = canonDim(d);
    if (typeof d === "number") return this.constant([d], [1], "i64");
    const key = `d:${d}`;
    const hit = this.cache.get(key);
    if (hit) return hit;
    let t: Tensor;
    const src = this.dimSource.get(d);
    const terms = dimTerms(d);
    if (src) t = this.node("Shape", [src.t], { start: src.axis, end: src.axis + 1 }, "i64", [1]);
    else if (terms.length === 1 && terms[0][0] === 1 && terms[0][1].length === 1) {
      throw new Error(`symbolic dim "${d}" is not carried by any tensor in the graph`);
    } else {
      const mul = (a: Tensor, b: Tensor) => this.node("Mul", [a, b], {}, "i64", [1]);
      t = terms.map(([c, syms]) => {
        const prod = syms.map((s) => this.dimTensor(s));
        if (c !== 1 || !prod.length) prod.push(this.constant([c], [1], "i64"));
        return prod.reduce(mul);
      }).reduce((a, b) => this.node("Add", [a, b], {}, "i64", [1]));
    }
    this.cache.set(key, t);
    return t;
  }

  /** i64 1-D tensor holding a (possibly symbolic) shape; a constant when fully static. */
  shapeOf(dims: Dim[]): Tensor {
    if (dims.every((d) => typeof d === "number")) {
      return this.constant(dims as number[], [dims.length], "i64");
    }
    const key = `sh:${dims.map(canonDim).join(",")}`;
    let t = this.cache.get(key);
    if (!t) {
      t = dims.length === 1 ? this.dimTensor(dims[0]) : this.node(
        "Concat",
        dims.map((d) => this.dimTensor(d)),
        { axis: 0 },
        "i64",
        [dims.length],
      );
      this.cache.set(key, t);
    }
    return t;
  }

  /** Runtime value of a dim as a scalar of the given dtype. */
  dimValue(d: Dim, dtype: GraphDType = "f32"): Tensor {
    if (typeof canonDim(d) === "number") return this.scalar(canonDim(d) as number, dtype);
    const s = this.reshape(this.dimTensor(d), []);
    return dtype === "i64" ? s : this.cast(s, dtype);
  }

  // ---------- elementwise ----------

  private binary(op: string, a: TensorLike, b: TensorLike, outType?: GraphDType): Tensor {
    const ta = this.lift(a, b), tb = this.lift(b, a);
    if (ta.dtype !== tb.dtype) throw new Error(`${op}: dtype mismatch ${ta} vs ${tb}`);
    return this.node(op, [ta, tb], {}, outType ?? ta.dtype, broadcastShapes(ta.shape, tb.shape));
  }
  /** a + b (broadcasting). */
  add(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Add", a, b);
  }
  /** a - b (broadcasting). */
  sub(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Sub", a, b);
  }
  /** a * b (broadcasting). */
  mul(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Mul", a, b);
  }
  /** a / b (broadcasting). */
  div(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Div", a, b);
  }
  /** a ** b (broadcasting). */
  pow(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Pow", a, b);
  }
  /** Elementwise max (gradient to the larger operand). */
  max(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Max", a, b);
  }
  /** Elementwise min (gradient to the smaller operand). */
  min(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Min", a, b);
  }
  /** a == b as bool. */
  equal(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Equal", a, b, "bool");
  }
  /** a < b as bool. */
  less(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Less", a, b, "bool");
  }
  /** a > b as bool. */
  greater(a: TensorLike, b: TensorLike): Tensor {
    return this.binary("Greater", a, b, "bool");
  }
  /** cond ? a : b (broadcasting). */
  where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
    const ta = this.lift(a, b), tb = this.lift(b, a);
    if (cond.dtype !== "bool") throw new Error(`where: condition must be bool, got ${cond}`);
    if (ta.dtype !== tb.dtype) throw new Error(`where: dtype mismatch ${ta} vs ${tb}`);
    const shape = broadcastShapes(broadcastShapes(cond.shape, ta.shape), tb.shape);
    return this.node("Where", [cond, ta, tb], {}, ta.dtype, shape);
  }

  private unary(op: string, x: Tensor): Tensor {
    return this.node(op, [x], {}, x.dtype, x.shape);
  }
  /** e^x */
  exp(x: Tensor): Tensor {
    return this.unary("Exp", x);
  }
  /** ln x */
  log(x: Tensor): Tensor {
    return this.unary("Log", x);
  }
  /** √x */
  sqrt(x: Tensor): Tensor {
    return this.unary("Sqrt", x);
  }
  /** 1/x */
  reciprocal(x: Tensor): Tensor {
    return this.unary("Reciprocal", x);
  }
  /** -x */
  neg(x: Tensor): Tensor {
    return this.unary("Neg", x);
  }
  /** 1/(1+e^-x) */
  sigmoid(x: Tensor): Tensor {
    return this.unary("Sigmoid", x);
  }
  /** tanh x */
  tanh(x: Tensor): Tensor {
    return this.unary("Tanh", x);
  }
  /** |x| */
  abs(x: Tensor): Tensor {
    return this.unary("Abs", x);
  }
  /** sign(x) (gradient zero). */
  sign(x: Tensor): Tensor {
    return this.unary("Sign", x);
  }
  /** Converts dtype. */
  cast(x: Tensor, dtype: GraphDType): Tensor {
    if (x.dtype === dtype) return x;
    return this.node("Cast", [x], { to: ONNX_DTYPE[dtype] }, dtype, x.shape);
  }

  // ---------- composites (pure builder code, gradients come from their parts) ----------

  /** x * sigmoid(x) */
  silu(x: Tensor): Tensor {
    return this.mul(x, this.sigmoid(x));
  }

  /** RMSNorm over the last axis: x / sqrt(mean(x²) + eps) * weight. */
  rmsNorm(x: Tensor, weight: Tensor | undefined, eps: number): Tensor {
    const ms = this.reduceMean(this.mul(x, x), [-1], true);
    const y = this.mul(x, this.reciprocal(this.sqrt(this.add(ms, eps))));
    return weight ? this.mul(y, weight) : y;
  }

  // ---------- linear algebra ----------

  /** Batched, broadcasting matrix product of [..., m, k] and [..., k, n]. */
  matmul(a: Tensor, b: Tensor): Tensor {
    if (a.rank < 2 || b.rank < 2) throw new Error(`matmul needs rank >= 2 operands, got ${a} and ${b}`);
    const [m, k1] = a.shape.slice(-2), [k2, n] = b.shape.slice(-2);
    if (!dimEq(k1, k2)) throw new Error(`matmul: inner dims differ in ${a} @ ${b}`);
    const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
    if (a.dtype !== "f32" || b.dtype !== "f32") throw new Error("matmul needs f32 operands");
    return this.node("MatMul", [a, b], {}, "f32", [...batch, m, n]);
  }

  // ---------- reductions ----------

  private reduce(op: string, x: Tensor, axes: number[], keepdims: boolean): Tensor {
    const ax = [...new Set(axes.map((a) => normAxis(a, x.rank)))].sort((p, q) => p - q);
    const shape = keepdims
      ? x.shape.map((d, i) => ax.includes(i) ? 1 : d)
      : x.shape.filter((_, i) => !ax.includes(i));
    const attrs: Attrs = { keepdims: keepdims ? 1 : 0 };
    // Opset 13+ ReduceSum takes axes as an input; ReduceMean/Max/Prod keep the attribute until opset 18.
    if (op === "ReduceSum") {
      return this.node(op, [x, this.constant(ax, [ax.length], "i64")], attrs, x.dtype, shape);
    }
    return this.node(op, [x], { ...attrs, axes: ax }, x.dtype, shape);
  }
  /** Sum over axes. */
  reduceSum(x: Tensor, axes: number[], keepdims = false): Tensor {
    return this.reduce("ReduceSum", x, axes, keepdims);
  }
  /** Mean over axes. */
  reduceMean(x: Tensor, axes: number[], keepdims = false): Tensor {
    return this.reduce("ReduceMean", x, axes, keepdims);
  }
  /** Max over axes. */
  reduceMax(x: Tensor, axes: number[], keepdims = false): Tensor {
    return this.reduce("ReduceMax", x, axes, keepdims);
  }
  /** Product over axes (no gradient; used for runtime sizes). */
  reduceProd(x: Tensor, axes: number[], keepdims = false): Tensor {
    return this.reduce("ReduceProd", x, axes, keepdims);
  }
  /** Softmax along one axis. */
  softmax(x: Tensor, axis = -1): Tensor {
    return this.node("Softmax", [x], { axis: normAxis(axis, x.rank) }, x.dtype, x.shape);
  }
  /** Log-softmax along one axis. */
  logSoftmax(x: Tensor, axis = -1): Tensor {
    return this.node("LogSoftmax", [x], { axis: normAxis(axis, x.rank) }, x.dtype, x.shape);
  }

  // ---------- indexing ----------

  /** Embedding-style gather: data[..., indices, ...] along axis (i64 indices). */
  gather(data: Tensor, indices: Tensor, axis = 0): Tensor {
    const ax = normAxis(axis, data.rank);
    if (indices.dtype !== "i64") throw new Error(`gather indices must be i64, got ${indices}`);
    const shape = [...data.shape.slice(0, ax), ...indices.shape, ...data.shape.slice(ax + 1)];
    return this.node("Gather", [data, indices], { axis: ax }, data.dtype, shape);
  }

  /** ONNX GatherElements: out[i][j] = data[i][indices[i][j]] along axis. */
  gatherElements(data: Tensor, indices: Tensor, axis = -1): Tensor {
    const ax = normAxis(axis, data.rank);
    if (indices.dtype !== "i64" || indices.rank !== data.rank) {
      throw new Error(`gatherElements needs i64 indices of rank ${data.rank}, got ${indices}`);
    }
    return this.node("GatherElements", [data, indices], { axis: ax }, data.dtype, indices.shape);
  }

  /** Picks data[..., ids[...]] along the last axis: [..., V] x i64 [...] -> [...]. For cross-entropy targets. */
  pick(data: Tensor, ids: Tensor): Tensor {
    const ax = data.rank - 1;
    return this.squeeze(this.gatherElements(data, this.unsqueeze(ids, [ax]), ax), [ax]);
  }

  /** i64 [0, 1, ..., n-1]. */
  arange(n: Dim): Tensor {
    if (typeof n === "number") return this.constant(Array.from({ length: n }, (_, i) => i), [n], "i64");
    return this.node(
      "Range",
      [this.scalar(0, "i64"), this.dimValue(n, "i64"), this.scalar(1, "i64")],
      {},
      "i64",
      [n],
    );
  }

  /** f32 one-hot of i64 ids: [...] -> [..., depth]. */
  oneHot(ids: Tensor, depth: Dim): Tensor {
    return this.cast(this.equal(this.unsqueeze(ids, [ids.rank]), this.arange(depth)), "f32");
  }

  /** Additive causal mask [seq, seq]: 0 where key <= query, MASK_VALUE above the diagonal. */
  causalMask(seq: Dim): Tensor {
    const r = this.arange(seq);
    const future = this.greater(this.unsqueeze(r, [0]), this.unsqueeze(r, [1]));
    return this.where(future, MASK_VALUE, 0);
  }

  // ---------- shape ops ----------

  /** Reshape; one entry may be -1 (inferred, symbolically if needed). */
  reshape(x: Tensor, shape: Dim[]): Tensor {
    const known = shape.filter((d) => d !== -1);
    if (shape.length - known.length > 1) throw new Error("reshape: at most one -1");
    const total = numel(x.shape);
    const out = shape.map((d) => d === -1 ? divDim(total, numel(known)) : d);
    if (!dimEq(numel(out), total)) throw new Error(`reshape: ${x} cannot become ${fmtShape(shape)}`);
    if (x.shape.length === out.length && x.shape.every((d, i) => dimEq(d, out[i]))) return x;
    return this.node("Reshape", [x, this.shapeOf(shape)], {}, x.dtype, out);
  }

  /** Permutes axes (default: reverse). */
  transpose(x: Tensor, perm?: number[]): Tensor {
    const p = perm ?? x.shape.map((_, i) => x.rank - 1 - i);
    if (p.length !== x.rank || [...p].sort().some((v, i) => v !== i)) {
      throw new Error(`bad perm ${p} for ${x}`);
    }
    return this.node("Transpose", [x], { perm: p }, x.dtype, p.map((i) => x.shape[i]));
  }

  /** Swaps the last two axes. */
  transposeLast(x: Tensor): Tensor {
    const p = x.shape.map((_, i) => i);
    [p[x.rank - 2], p[x.rank - 1]] = [p[x.rank - 1], p[x.rank - 2]];
    return this.transpose(x, p);
  }

  /** Concatenates along an axis. */
  concat(xs: Tensor[], axis: number): Tensor {
    if (xs.length === 0) throw new Error("concat of nothing");
    const ax = normAxis(axis, xs[0].rank);
    const shape = [...xs[0].shape];
    for (const x of xs.slice(1)) {
      if (x.rank !== shape.length || x.dtype !== xs[0].dtype) {
        throw new Error(`concat: ${x} does not match ${xs[0]}`);
      }
      x.shape.forEach((d, i) => {
        if (i !== ax && !dimEq(d, shape[i])) throw new Error(`concat: ${x} does not match ${xs[0]}`);
      });
      shape[ax] = addDim(shape[ax], x.shape[ax]);
    }
    return this.node("Concat", xs, { axis: ax }, xs[0].dtype, shape);
  }

  /**
   * Step-1 slice along axes. starts/ends may be negative (from the end) or symbolic dims;
   * use END for "to the end".
   */
  slice(x: Tensor, starts: Dim[], ends: Dim[], axes?: number[]): Tensor {
    const ax = (axes ?? starts.map((_, i) => i)).map((a) => normAxis(a, x.rank));
    if (starts.length !== ax.length || ends.length !== ax.length) {
      throw new Error("slice: starts/ends/axes lengths differ");
    }
    const shape = [...x.shape];
    ax.forEach((a, i) => shape[a] = sliceDim(x.shape[a], starts[i], ends[i]));
    const c = (v: Dim[]) => this.shapeOf(v);
    return this.node(
      "Slice",
      [x, c(starts), c(ends), this.constant(ax, [ax.length], "i64")],
      {},
      x.dtype,
      shape,
    );
  }

  /** Inserts size-1 axes (positions in the output). */
  unsqueeze(x: Tensor, axes: number[]): Tensor {
    const r = x.rank + axes.length;
    const ax = axes.map((a) => normAxis(a, r)).sort((p, q) => p - q);
    const shape: Dim[] = [];
    let j = 0;
    for (let i = 0; i < r; i++) shape.push(ax.includes(i) ? 1 : x.shape[j++]);
    return this.node("Unsqueeze", [x, this.constant(ax, [ax.length], "i64")], {}, x.dtype, shape);
  }

  /** Removes size-1 axes. */
  squeeze(x: Tensor, axes: number[]): Tensor {
    const ax = axes.map((a) => normAxis(a, x.rank)).sort((p, q) => p - q);
    for (const a of ax) if (x.shape[a] !== 1) throw new Error(`squeeze: axis ${a} of ${x} is not 1`);
    const shape = x.shape.filter((_, i) => !ax.includes(i));
    return this.node("Squeeze", [x, this.constant(ax, [ax.length], "i64")], {}, x.dtype, shape);
  }

  /** Broadcasts to a shape (numpy rules). */
  expand(x: Tensor, shape: Dim[]): Tensor {
    const out = broadcastShapes(x.shape, shape);
    if (out.length === x.rank && out.every((d, i) => dimEq(d, x.shape[i]))) return x;
    return this.node("Expand", [x, this.shapeOf(shape)], {}, x.dtype, out);
  }

  /** Zero-pads (pads = [begin per axis..., end per axis...] as an i64 tensor). */
  pad(x: Tensor, pads: Tensor, shape: Shape): Tensor {
    return this.node("Pad", [x, pads], {}, x.dtype, shape);
  }

  /** Zeros of a (possibly symbolic) shape. */
  zeros(shape: Dim[], dtype: GraphDType = "f32"): Tensor {
    return this.full(shape, 0, dtype);
  }

  /** A filled tensor of a (possibly symbolic) shape. */
  full(shape: Dim[], value: number, dtype: GraphDType = "f32"): Tensor {
    return this.expand(this.scalar(value, dtype), shape);
  }
}

/** Output size of a step-1 slice along one dim (symbolic bounds are assumed in range). */
function sliceDim(d: Dim, s: Dim, e: Dim): Dim {
  if (typeof d === "number" && typeof s === "number" && typeof e === "number") {
    const cl = (v: number) => Math.min(Math.max(v < 0 ? v + d : v, 0), d);
    return Math.max(0, cl(e) - cl(s));
  }
  const sN = typeof s === "number" && s < 0 ? addDim(d, s) : s;
  const eN = typeof e === "number" ? (e >= 2 ** 31 ? d : e < 0 ? addDim(d, e) : e) : e;
  const len = subDim(eN, sN);
  return typeof len === "number" ? Math.max(0, len) : len;
}
