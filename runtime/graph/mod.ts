/**
 * Graph core: build ONNX graphs in TypeScript, differentiate them, serialize them, run them.
 *
 * ```ts
 * const g = new Graph();
 * const x = g.input("x", "f32", ["batch", 4]);
 * const w = g.input("w", "f32", [4, 3]);
 * const loss = g.reduceMean(g.mul(g.matmul(x, w), g.matmul(x, w)), [0, 1]);
 * const [dw] = grad(loss, [w]);
 * g.output("loss", loss); g.output("dw", dw);
 * const s = await createSession(toOnnx(g), { backend: "auto" });
 * const out = await s.run({ x: { data, dims: [2, 4] }, w: { data: wData, dims: [4, 3] } });
 * ```
 */
export {
  type Attrs,
  type ConstData,
  END,
  Graph,
  type GraphDType,
  MASK_VALUE,
  type Node,
  Tensor,
  type TensorLike,
} from "./graph.ts";
export { broadcastShapes, type Dim, dimEq, numel, type Shape } from "./shape.ts";
export { grad, type GradOptions, unbroadcast } from "./autodiff.ts";
export { IR_VERSION, OPSET, toOnnx } from "./onnx.ts";
export {
  availableBackends,
  type Backend,
  clearSessionCache,
  createSession,
  type Feed,
  type GpuProbe,
  type GraphSession,
  type Output,
  probeWebgpu,
  resolveBackend,
  type ResolvedBackend,
  type SessionOptions,
  type SessionTuning,
  sessionTuning,
  tuneNativeMalloc,
} from "./session.ts";
