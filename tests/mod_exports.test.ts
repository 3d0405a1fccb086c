import assert from "node:assert/strict";
import * as perfit from "../mod.ts";

Deno.test("mod.ts exports the public API for clients, simulations and export", async () => {
  for (
    const name of [
      "Engine",
      "loadModel",
      "FederatedClient",
      "engineTrainer",
      "Graph",
      "grad",
      "toOnnx",
      "createSession",
      "loadJsonl",
      "makeBatches",
      "initKernels",
      "encodeSafetensors",
      "writePeftAdapter",
    ] as const
  ) {
    assert.equal(typeof (perfit as Record<string, unknown>)[name], "function", `${name} is exported`);
  }
  for (const ns of ["graph", "model", "data", "perfit", "federation", "client", "exporter", "io"]) {
    assert.equal(typeof (perfit as Record<string, unknown>)[ns], "object", `namespace ${ns}`);
  }
  // The namespaces carry the same objects as the headline exports, not copies.
  assert.equal(perfit.model.Engine, perfit.Engine);
  const k = await perfit.initKernels();
  assert.equal(k.popcount(new Uint8Array([1, 0, 1])), 2);
});
