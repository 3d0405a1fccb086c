// The same training-step-shaped graph (embedding, causal attention, masked cross-entropy, gradients)
// gives the same outputs on every backend present, and matches the float64 interpreter.
import assert from "node:assert/strict";
import {
  availableBackends,
  type Backend,
  createSession,
  END,
  grad,
  Graph,
  probeWebgpu,
  resolveBackend,
  type ResolvedBackend,
  toOnnx,
} from "../runtime/graph/mod.ts";
import { interpret } from "../runtime/graph/interpret.ts";
import { assertClose, rng, uniform } from "./graph_util.ts";

const present = await availableBackends();
const V = 7, H = 8, B = 2, T = 4;

function buildStep(g = new Graph()) {
  const ids = g.input("ids", "i64", ["batch", "seq"]);
  const tgt = g.input("tgt", "i64", ["batch", "seq"]);
  const mask = g.input("mask", "f32", ["batch", "seq"]);
  const emb = g.input("emb", "f32", [V, H]);
  const wq = g.input("wq", "f32", [H, H]);
  const h = g.gather(emb, ids);
  const q = g.matmul(h, wq);
  const s = g.add(g.div(g.matmul(q, g.transposeLast(h)), Math.sqrt(H)), g.causalMask("seq"));
  const a = g.add(h, g.matmul(g.softmax(s, -1), h));
  const logits = g.matmul(g.rmsNorm(a, undefined, 1e-6), g.transposeLast(emb));
  const nll = g.neg(g.pick(g.logSoftmax(logits, -1), tgt));
  const loss = g.div(g.reduceSum(g.mul(nll, mask), [0, 1]), g.reduceSum(mask, [0, 1]));
  const [demb, dwq] = grad(loss, [emb, wq]);
  g.output("loss", loss);
  g.output("logits", logits);
  g.output("demb", demb);
  g.output("dwq", dwq);
  return g;
}

/** Every other op with a gradient, on symbolic dims: slices (Pad gradient), concat, expand, max, where... */
function buildKitchenSink(g = new Graph()) {
  const x = g.input("x", "f32", ["batch", "seq", 4]);
  const w = g.input("w", "f32", [4, 4]);
  const y = g.matmul(x, w);
  const shifted = g.mul(g.slice(y, [0], [-1], [1]), g.slice(y, [1], [END], [1]));
  const cat = g.concat([shifted, g.sigmoid(y)], 1);
  const p = g.pow(g.add(g.sqrt(g.add(g.mul(cat, cat), 1)), g.abs(g.tanh(cat))), 1.5);
  const m = g.reduceMax(p, [2], true);
  const r = g.where(g.greater(p, 1.2), g.exp(g.neg(p)), g.log(p));
  const e = g.expand(g.reduceMean(x, [1], true), ["batch", "seq", 4]);
  const z = g.add(
    g.sub(g.div(r, m), g.reciprocal(g.add(g.max(p, 1), 1))),
    g.reduceSum(g.transpose(e, [0, 2, 1]), [1, 2], true),
  );
  const loss = g.reduceMean(g.unsqueeze(g.squeeze(g.reduceSum(z, [1, 2], true), [2]), [0]), [0, 1, 2]);
  const [dx, dw] = grad(loss, [x, w]);
  g.output("loss2", loss);
  g.output("dx", dx);
  g.output("dw", dw);
  return g;
}

function feeds() {
  const r = rng(3);
  const ints = (n: number) => BigInt64Array.from({ length: n }, () => BigInt(Math.floor(r() * V)));
  return {
    ids: { data: ints(B * T), dims: [B, T] },
    tgt: { data: ints(B * T), dims: [B, T] },
    mask: { data: Float32Array.from([1, 1, 1, 0, 0, 1, 1, 1]), dims: [B, T] },
    emb: { data: uniform(r, V * H), dims: [V, H] },
    wq: { data: uniform(r, H * H), dims: [H, H] },
  };
}

// One graph (one session) per backend: shader compilation dominates on software WebGPU.
for (const backend of ["node", "wasm", "webgpu"] as ResolvedBackend[]) {
  Deno.test({
    name: `graph backend ${backend}: train-step and op-coverage graphs match the float64 interpreter`,
    ignore: !present.includes(backend),
    async fn() {
      const g = buildKitchenSink(buildStep());
      const f = {
        ...feeds(),
        x: { data: uniform(rng(5), B * T * 4), dims: [B, T, 4] }, // "seq" is one size graph-wide
        w: { data: uniform(rng(6), 16), dims: [4, 4] },
      };
      const ref = interpret(g, f);
      const s = await createSession(toOnnx(g), { backend });
      assert.equal(s.backend, backend);
      const out = await s.run(f);
      for (const name of ["loss", "logits", "demb", "dwq", "loss2", "dx", "dw"]) {
        assert.deepEqual(out[name].dims, ref[name].dims, `${name} dims`);
        const data = Array.from(out[name].data as Float32Array);
        assertClose(data, ref[name].data, `${backend} ${name}`, { rtol: 1e-3, atol: 1e-4 });
      }
    },
  });
}

if (!present.includes("webgpu")) {
  console.warn("graph_backends: WebGPU skipped: navigator.gpu gave no adapter");
}

Deno.test("graph backends: sessions are cached per model bytes and backend", async () => {
  const bytes = toOnnx(buildStep());
  const a = await createSession(bytes, { backend: "wasm" });
  const b = await createSession(bytes.slice(), { backend: "wasm" });
  assert.equal(a, b);
  await assert.rejects(() => a.run({ ids: feeds().ids }), /missing input/);
  const f = feeds();
  await assert.rejects(() => a.run({ ...f, extra: f.mask }), /unknown input/);
  await assert.rejects(
    () => a.run({ ...f, mask: { data: new Float32Array(3), dims: [B, T] } }),
    /values for dims/,
  );
});

Deno.test("graph backends: auto prefers node, never a software WebGPU adapter; unknown backends fail", async () => {
  const auto = await resolveBackend("auto");
  const gpu = await probeWebgpu();
  if (present.includes("node")) assert.equal(auto, "node");
  else if (gpu.fallback) assert.equal(auto, "wasm");
  assert.ok(present.includes(auto));
  const bytes = toOnnx(buildStep());
  await assert.rejects(() => createSession(bytes, { backend: "cuda" as Backend }), /unknown backend/);
  const s = await createSession(bytes);
  assert.equal(s.backend, auto);
});
