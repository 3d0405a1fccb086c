/** Serializes a Graph to an ONNX ModelProto (IR 8, opset 17) with onnx-proto (protobufjs). */
import { onnxProto as onnxproto } from "../deps.ts";
import { type Graph, type Node, ONNX_DTYPE, type Tensor } from "./graph.ts";
import type { Shape } from "./shape.ts";

const { onnx } = onnxproto;

/** The opset every graph is emitted for. */
export const OPSET = 17;
/** ONNX IR version matching opset 17. */
export const IR_VERSION = 8;

/** Nodes needed to compute the given tensors, in topological order. */
export function neededNodes(targets: Tensor[]): Node[] {
  const seen = new Set<number>();
  const out: Node[] = [];
  const stack = [...targets];
  while (stack.length) {
    const t = stack.pop()!;
    if (!t.node || seen.has(t.node.id)) continue;
    seen.add(t.node.id);
    out.push(t.node);
    stack.push(...t.node.inputs);
  }
  return out.sort((a, b) => a.id - b.id);
}

function valueInfo(name: string, t: { dtype: Tensor["dtype"]; shape: Shape }) {
  return {
    name,
    type: {
      tensorType: {
        elemType: ONNX_DTYPE[t.dtype],
        shape: { dim: t.shape.map((d) => typeof d === "number" ? { dimValue: d } : { dimParam: d }) },
      },
    },
  };
}

function initializer(t: Tensor) {
  const d = t.data!;
  return {
    name: t.name,
    dataType: ONNX_DTYPE[t.dtype],
    dims: t.shape as number[],
    rawData: new Uint8Array(d.buffer, d.byteOffset, d.byteLength),
  };
}

/** Encodes the graph: declared inputs stay inputs, used constants become initializers, outputs via Identity. */
export function toOnnx(g: Graph, opts: { name?: string } = {}): Uint8Array {
  if (g.outputs.size === 0) throw new Error("graph has no outputs");
  const nodes = neededNodes([...g.outputs.values()]);
  const used = new Set<number>();
  for (const n of nodes) for (const i of n.inputs) used.add(i.id);
  for (const t of g.outputs.values()) used.add(t.id);
  const nodeProtos = nodes.map((n) => ({
    opType: n.op,
    name: `n${n.id}`,
    input: n.inputs.map((i) => i.name),
    output: [n.output.name],
    attribute: Object.entries(n.attrs).map(([name, v]) =>
      Array.isArray(v)
        ? { name, type: onnx.AttributeProto.AttributeType.INTS, ints: v }
        : { name, type: onnx.AttributeProto.AttributeType.INT, i: v }
    ),
  }));
  for (const [name, t] of g.outputs) {
    nodeProtos.push({
      opType: "Identity",
      name: `out_${name}`,
      input: [t.name],
      output: [name],
      attribute: [],
    });
  }
  const model = {
    irVersion: IR_VERSION,
    producerName: "perfit",
    opsetImport: [{ domain: "", version: OPSET }],
    graph: {
      name: opts.name ?? "perfit",
      node: nodeProtos,
      input: g.inputs.map((t) => valueInfo(t.name, t)),
      output: [...g.outputs].map(([name, t]) => valueInfo(name, t)),
      initializer: g.constants.filter((t) => used.has(t.id)).map(initializer),
    },
  };
  return onnx.ModelProto.encode(onnx.ModelProto.fromObject(model)).finish();
}
