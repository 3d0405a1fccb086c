/**
 * A float64 reference evaluator for Graphs, written from the ONNX operator definitions. Tests use
 * it as the ground truth for forward values and, by central finite differences, for gradients.
 * Integer and bool tensors are held as float64 too (exact below 2^53).
 */
import type { Graph, Tensor } from "./graph.ts";
import { neededNodes } from "./onnx.ts";

/** A dense float64 value. */
export interface Value {
  data: Float64Array;
  dims: number[];
}

/** Interpreter feed: any numeric array with dims. */
export interface RefFeed {
  data: ArrayLike<number> | BigInt64Array;
  dims: readonly number[];
}

const size = (d: readonly number[]) => d.reduce((a, b) => a * b, 1);
const strides = (d: readonly number[]) => {
  const s = new Array(d.length).fill(1);
  for (let i = d.length - 2; i >= 0; i--) s[i] = s[i + 1] * d[i + 1];
  return s;
};

function bcastDims(a: number[], b: number[]): number[] {
  const n = Math.max(a.length, b.length);
  return Array.from({ length: n }, (_, i) => {
    const x = a[i - n + a.length] ?? 1, y = b[i - n + b.length] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`interpret: cannot broadcast [${a}] and [${b}]`);
    return x === 1 ? y : x;
  });
}

/** Index map from an output of dims `out` into an input of dims `inp` under broadcasting. */
function bcastIndex(inp: number[], out: number[]): Int32Array {
  const n = size(out), idx = new Int32Array(n);
  const lead = out.length - inp.length, is = strides(inp), os = strides(out);
  for (let i = 0; i < n; i++) {
    let j = 0;
    for (let a = 0; a < inp.length; a++) {
      const c = Math.floor(i / os[a + lead]) % out[a + lead];
      if (inp[a] !== 1) j += c * is[a];
    }
    idx[i] = j;
  }
  return idx;
}

function nary(vs: Value[], f: (...x: number[]) => number): Value {
  const dims = vs.map((v) => v.dims).reduce(bcastDims);
  const maps = vs.map((v) => bcastIndex(v.dims, dims));
  const out = new Float64Array(size(dims));
  const args = new Array(vs.length);
  for (let i = 0; i < out.length; i++) {
    for (let k = 0; k < vs.length; k++) args[k] = vs[k].data[maps[k][i]];
    out[i] = f(...args);
  }
  return { data: out, dims };
}

function reduce(
  x: Value,
  axes: number[],
  keep: boolean,
  init: number,
  f: (acc: number, v: number) => number,
): Value {
  const ax = axes.map((a) => a < 0 ? a + x.dims.length : a);
  const kd = x.dims.map((d, i) => ax.includes(i) ? 1 : d);
  const out = new Float64Array(size(kd)).fill(init);
  const map = bcastIndex(kd, x.dims);
  for (let i = 0; i < x.data.length; i++) out[map[i]] = f(out[map[i]], x.data[i]);
  return { data: out, dims: keep ? kd : x.dims.filter((_, i) => !ax.includes(i)) };
}

function transpose(x: Value, perm: number[]): Value {
  const dims = perm.map((p) => x.dims[p]), xs = strides(x.dims), os = strides(dims);
  const out = new Float64Array(x.data.length);
  for (let i = 0; i < out.length; i++) {
    let j = 0;
    for (let a = 0; a < dims.length; a++) j += (Math.floor(i / os[a]) % dims[a]) * xs[perm[a]];
    out[i] = x.data[j];
  }
  return { data: out, dims };
}

function matmul(a: Value, b: Value): Value {
  const [m, k] = a.dims.slice(-2), n = b.dims[b.dims.length - 1];
  const batch = bcastDims(a.dims.slice(0, -2), b.dims.slice(0, -2));
  const nb = size(batch);
  const am = bcastIndex(a.dims.slice(0, -2), batch), bm = bcastIndex(b.dims.slice(0, -2), batch);
  const out = new Float64Array(nb * m * n);
  for (let t = 0; t < nb; t++) {
    const ao = am[t] * m * k, bo = bm[t] * k * n, oo = t * m * n;
    for (let i = 0; i < m; i++) {
      for (let p = 0; p < k; p++) {
        const av = a.data[ao + i * k + p];
        for (let j = 0; j < n; j++) out[oo + i * n + j] += av * b.data[bo + p * n + j];
      }
    }
  }
  return { data: out, dims: [...batch, m, n] };
}

/** Applies f to every 1-D lane along an axis. */
function lanes(x: Value, axis: number, f: (lane: number[]) => number[]): Value {
  const ax = axis < 0 ? axis + x.dims.length : axis;
  const st = strides(x.dims)[ax], len = x.dims[ax];
  const out = new Float64Array(x.data.length);
  for (let base = 0; base < x.data.length; base++) {
    if (Math.floor(base / st) % len !== 0) continue;
    const lane = Array.from({ length: len }, (_, i) => x.data[base + i * st]);
    f(lane).forEach((v, i) => out[base + i * st] = v);
  }
  return { data: out, dims: x.dims };
}

function softmaxLane(l: number[]): number[] {
  const m = Math.max(...l), e = l.map((v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

const ints = (v: Value) => Array.from(v.data);
const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

function slice(x: Value, starts: number[], ends: number[], axes: number[], steps?: number[]): Value {
  const r = x.dims.length;
  const st = new Array(r).fill(0), len = [...x.dims], step = new Array(r).fill(1);
  axes.forEach((a0, i) => {
    const a = a0 < 0 ? a0 + r : a0, d = x.dims[a];
    if (steps && steps[i] !== 1) throw new Error("interpret: Slice steps other than 1");
    const cl = (v: number) => Math.min(Math.max(v < 0 ? v + d : v, 0), d);
    st[a] = cl(starts[i]);
    len[a] = Math.max(0, cl(ends[i]) - st[a]);
  });
  const xs = strides(x.dims), os = strides(len), out = new Float64Array(size(len));
  for (let i = 0; i < out.length; i++) {
    let j = 0;
    for (let a = 0; a < r; a++) j += (st[a] + (Math.floor(i / os[a]) % len[a]) * step[a]) * xs[a];
    out[i] = x.data[j];
  }
  return { data: out, dims: len };
}

function pad(x: Value, pads: number[]): Value {
  const r = x.dims.length, dims = x.dims.map((d, a) => d + pads[a] + pads[a + r]);
  const out = new Float64Array(size(dims)), os = strides(dims), xs = strides(x.dims);
  for (let i = 0; i < x.data.length; i++) {
    let j = 0;
    for (let a = 0; a < r; a++) j += ((Math.floor(i / xs[a]) % x.dims[a]) + pads[a]) * os[a];
    out[j] = x.data[i];
  }
  return { data: out, dims };
}

function concat(vs: Value[], axis: number): Value {
  const dims = [...vs[0].dims];
  dims[axis] = vs.reduce((s, v) => s + v.dims[axis], 0);
  const outer = size(dims.slice(0, axis)), out = new Float64Array(size(dims));
  let o = 0;
  for (let i = 0; i < outer; i++) {
    for (const v of vs) {
      const chunk = size(v.dims.slice(axis));
      out.set(v.data.subarray(i * chunk, (i + 1) * chunk), o);
      o += chunk;
    }
  }
  return { data: out, dims };
}

function gather(x: Value, idx: Value, axis: number): Value {
  const outer = size(x.dims.slice(0, axis)), inner = size(x.dims.slice(axis + 1)), n = x.dims[axis];
  const out = new Float64Array(outer * idx.data.length * inner);
  for (let o = 0; o < outer; o++) {
    idx.data.forEach((k0, i) => {
      const k = k0 < 0 ? k0 + n : k0;
      if (k < 0 || k >= n) throw new Error(`interpret: Gather index ${k0} out of range`);
      for (let j = 0; j < inner; j++) {
        out[(o * idx.data.length + i) * inner + j] = x.data[(o * n + k) * inner + j];
      }
    });
  }
  return { data: out, dims: [...x.dims.slice(0, axis), ...idx.dims, ...x.dims.slice(axis + 1)] };
}

function gatherElements(x: Value, idx: Value, axis: number): Value {
  const xs = strides(x.dims), is = strides(idx.dims), out = new Float64Array(idx.data.length);
  for (let i = 0; i < out.length; i++) {
    let j = 0;
    for (let a = 0; a < idx.dims.length; a++) {
      const c = a === axis ? idx.data[i] : Math.floor(i / is[a]) % idx.dims[a];
      j += (c < 0 ? c + x.dims[a] : c) * xs[a];
    }
    out[i] = x.data[j];
  }
  return { data: out, dims: idx.dims };
}

function reshape(x: Value, shape: number[]): Value {
  const dims = shape.map((d, i) => d === 0 ? x.dims[i] : d);
  const k = dims.indexOf(-1);
  if (k >= 0) dims[k] = x.data.length / size(dims.filter((d) => d !== -1));
  if (size(dims) !== x.data.length) throw new Error(`interpret: reshape [${x.dims}] to [${shape}]`);
  return { data: x.data, dims };
}

type OpFn = (v: Value[], attrs: Record<string, number | number[]>) => Value;
const binary = (f: (a: number, b: number) => number): OpFn => (v) => nary(v, f);
const unary = (f: (a: number) => number): OpFn => (v) => nary(v, f);

const OPS: Record<string, OpFn> = {
  Add: binary((a, b) => a + b),
  Sub: binary((a, b) => a - b),
  Mul: binary((a, b) => a * b),
  Div: binary((a, b) => a / b),
  Pow: binary((a, b) => Math.pow(a, b)),
  Max: binary(Math.max),
  Min: binary(Math.min),
  Equal: binary((a, b) => a === b ? 1 : 0),
  Less: binary((a, b) => a < b ? 1 : 0),
  Greater: binary((a, b) => a > b ? 1 : 0),
  Where: (v) => nary(v, (c, a, b) => c ? a : b),
  Exp: unary(Math.exp),
  Log: unary(Math.log),
  Sqrt: unary(Math.sqrt),
  Reciprocal: unary((a) => 1 / a),
  Neg: unary((a) => -a),
  Sigmoid: unary(sigmoid),
  Tanh: unary(Math.tanh),
  Abs: unary(Math.abs),
  Sign: unary(Math.sign),
  Identity: ([x]) => x,
  MatMul: ([a, b]) => matmul(a, b),
  ReduceSum: ([x, axes], at) => reduce(x, ints(axes), at.keepdims !== 0, 0, (s, v) => s + v),
  ReduceMean: ([x], at) => {
    const axes = at.axes as number[], r = reduce(x, axes, at.keepdims !== 0, 0, (s, v) => s + v);
    const n = axes.reduce((p, a) => p * x.dims[a < 0 ? a + x.dims.length : a], 1);
    return { data: r.data.map((v) => v / n), dims: r.dims };
  },
  ReduceMax: ([x], at) => reduce(x, at.axes as number[], at.keepdims !== 0, -Infinity, Math.max),
  ReduceProd: ([x], at) => reduce(x, at.axes as number[], at.keepdims !== 0, 1, (s, v) => s * v),
  Softmax: ([x], at) => lanes(x, at.axis as number, softmaxLane),
  LogSoftmax: ([x], at) =>
    lanes(x, at.axis as number, (l) => {
      const m = Math.max(...l), lse = m + Math.log(l.reduce((s, v) => s + Math.exp(v - m), 0));
      return l.map((v) => v - lse);
    }),
  Gather: ([x, i], at) => gather(x, i, at.axis as number),
  GatherElements: ([x, i], at) => gatherElements(x, i, at.axis as number),
  Reshape: ([x, s]) => reshape(x, ints(s)),
  Transpose: ([x], at) => transpose(x, at.perm as number[]),
  Concat: (vs, at) => concat(vs, at.axis as number),
  Slice: ([x, s, e, a, st]) =>
    slice(x, ints(s), ints(e), a ? ints(a) : ints(s).map((_, i) => i), st && ints(st)),
  Pad: ([x, p]) => pad(x, ints(p)),
  Unsqueeze: ([x, a]) => {
    const r = x.dims.length + a.data.length, ax = ints(a).map((v) => v < 0 ? v + r : v);
    const dims: number[] = [];
    for (let i = 0, j = 0; i < r; i++) dims.push(ax.includes(i) ? 1 : x.dims[j++]);
    return { data: x.data, dims };
  },
  Squeeze: ([x, a]) => {
    const ax = ints(a).map((v) => v < 0 ? v + x.dims.length : v);
    return { data: x.data, dims: x.dims.filter((_, i) => !ax.includes(i)) };
  },
  Expand: ([x, s]) => nary([x, { data: new Float64Array(1), dims: ints(s) }], (a) => a),
  Shape: ([x], at) => {
    const r = x.dims.length, norm = (v: number) => Math.min(Math.max(v < 0 ? v + r : v, 0), r);
    const d = x.dims.slice(norm((at.start as number) ?? 0), norm((at.end as number) ?? r));
    return { data: Float64Array.from(d), dims: [d.length] };
  },
  Range: ([s, l, d]) => {
    const n = Math.max(0, Math.ceil((l.data[0] - s.data[0]) / d.data[0]));
    return { data: Float64Array.from({ length: n }, (_, i) => s.data[0] + i * d.data[0]), dims: [n] };
  },
};

function castTo(v: Value, to: number): Value {
  if (to === 1) return v; // kept in float64: the reference is exact arithmetic, not f32 emulation
  if (to === 7) return { data: v.data.map(Math.trunc), dims: v.dims };
  return { data: v.data.map((x) => x !== 0 ? 1 : 0), dims: v.dims };
}

/**
 * Evaluates named outputs (default: all graph outputs) in float64; f32 constants are widened.
 */
export function interpret(
  g: Graph,
  feeds: Record<string, RefFeed>,
  outputs?: string[],
): Record<string, Value> {
  const names = outputs ?? [...g.outputs.keys()];
  const targets = names.map((n) => {
    const t = g.outputs.get(n);
    if (!t) throw new Error(`interpret: unknown output ${n}`);
    return t;
  });
  g.checkFeeds(feeds, { partial: true });
  const env = new Map<number, Value>();
  const leaf = (t: Tensor): Value => {
    if (t.kind === "const") {
      return { data: Float64Array.from(t.data as ArrayLike<number>, Number), dims: t.shape as number[] };
    }
    const f = feeds[t.name];
    if (!f) throw new Error(`interpret: missing input ${t.name}`);
    if (size(f.dims) !== f.data.length) throw new Error(`interpret: input ${t.name} has wrong length`);
    return { data: Float64Array.from(f.data as ArrayLike<number>, Number), dims: [...f.dims] };
  };
  const get = (t: Tensor) => {
    let v = env.get(t.id);
    if (!v) env.set(t.id, v = leaf(t));
    return v;
  };
  for (const n of neededNodes(targets)) {
    const args = n.inputs.map(get);
    const fn = n.op === "Cast" ? ([x]: Value[]) => castTo(x, n.attrs.to as number) : OPS[n.op];
    if (!fn) throw new Error(`interpret: unsupported op ${n.op}`);
    env.set(n.output.id, fn(args, n.attrs));
  }
  return Object.fromEntries(names.map((n, i) => [n, get(targets[i])]));
}
