/** The client page's backend decision: software WebGPU adapters are labelled, and `auto` takes WASM over them. */
import assert from "node:assert/strict";
import {
  type AdapterFacts,
  chooseBackend,
  classifyAdapter,
  readAdapterFacts,
} from "../runtime/graph/adapter_choice.ts";

// What adapters report (the SwiftShader one as headless Chromium 156 reports it here).
const SWIFTSHADER: AdapterFacts = {
  vendor: "google",
  architecture: "swiftshader",
  device: "",
  description: "",
  isFallbackAdapter: true,
};
const LLVMPIPE: AdapterFacts = {
  vendor: "mesa",
  architecture: "",
  description: "llvmpipe (LLVM 15.0.6, 256 bits)",
  isFallbackAdapter: false,
};
const NVIDIA: AdapterFacts = {
  vendor: "nvidia",
  architecture: "ampere",
  description: "",
  isFallbackAdapter: false,
};

Deno.test("browser_backend_choice: software adapters are told apart from hardware ones", () => {
  const s = classifyAdapter(SWIFTSHADER);
  assert.equal(s.software, true);
  assert.equal(s.label, "WebGPU adapter: google swiftshader (software, runs on the CPU)");
  // Without the fallback flag the name alone gives it away.
  assert.equal(classifyAdapter({ ...SWIFTSHADER, isFallbackAdapter: undefined }).software, true);
  assert.match(
    classifyAdapter({ ...SWIFTSHADER, isFallbackAdapter: undefined }).why,
    /architecture "swiftshader"/,
  );
  const l = classifyAdapter(LLVMPIPE);
  assert.equal(l.software, true);
  assert.match(l.why, /description "llvmpipe/);
  assert.equal(classifyAdapter({ description: "Microsoft Basic Render Driver" }).software, true);
  assert.equal(classifyAdapter({ vendor: "intel", isFallbackAdapter: true }).software, true);
  const h = classifyAdapter(NVIDIA);
  assert.equal(h.software, false);
  assert.equal(h.label, "WebGPU adapter: nvidia ampere");
  assert.equal(classifyAdapter({}).label, "WebGPU adapter: unnamed");
  assert.deepEqual(classifyAdapter(null), {
    present: false,
    software: false,
    label: "no WebGPU adapter",
    why: "",
  });
});

Deno.test("browser_backend_choice: auto prefers WASM over a software adapter, WebGPU on hardware", () => {
  assert.equal(chooseBackend("auto", classifyAdapter(SWIFTSHADER)).backend, "wasm");
  assert.match(chooseBackend("auto", classifyAdapter(LLVMPIPE)).why, /software .* so WASM/);
  assert.equal(chooseBackend("auto", classifyAdapter(NVIDIA)).backend, "webgpu");
  assert.equal(chooseBackend("auto", classifyAdapter(null)).backend, "wasm");
  // Asked for explicitly, each is taken as asked; WebGPU on software with a warning.
  const forced = chooseBackend("webgpu", classifyAdapter(SWIFTSHADER));
  assert.equal(forced.backend, "webgpu");
  assert.match(forced.why, /slower than WASM/);
  assert.equal(chooseBackend("wasm", classifyAdapter(NVIDIA)).backend, "wasm");
  assert.throws(() => chooseBackend("webgpu", classifyAdapter(null)), /no WebGPU adapter/);
});

Deno.test("browser_backend_choice: facts come from adapter.info, or requestAdapterInfo() in older browsers", async () => {
  assert.equal(await readAdapterFacts(undefined), null);
  assert.equal(await readAdapterFacts({ requestAdapter: () => Promise.resolve(null) }), null);
  assert.equal(await readAdapterFacts({ requestAdapter: () => Promise.reject(new Error("x")) }), null);
  assert.deepEqual(
    await readAdapterFacts({ requestAdapter: () => Promise.resolve({ info: SWIFTSHADER }) }),
    SWIFTSHADER,
  );
  const old = await readAdapterFacts({
    requestAdapter: () =>
      Promise.resolve({
        isFallbackAdapter: false,
        requestAdapterInfo: () => Promise.resolve({ vendor: "mesa", description: "llvmpipe" }),
      }),
  });
  assert.deepEqual(old, {
    vendor: "mesa",
    architecture: undefined,
    device: undefined,
    description: "llvmpipe",
    isFallbackAdapter: false,
  });
  assert.equal(classifyAdapter(old).software, true);
});
