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
      "rougeL",
      "greedyGenerate",
    ] as const
  ) {
    assert.equal(typeof (perfit as Record<string, unknown>)[name], "function", `${name} is exported`);
  }
  for (
    const ns of ["graph", "model", "data", "perfit", "federation", "client", "exporter", "evaluation", "io"]
  ) {
    assert.equal(typeof (perfit as Record<string, unknown>)[ns], "object", `namespace ${ns}`);
  }
  // The namespaces carry the same objects as the headline exports, not copies.
  assert.equal(perfit.model.Engine, perfit.Engine);
  const k = await perfit.initKernels();
  assert.equal(k.popcount(new Uint8Array([1, 0, 1])), 2);
});

Deno.test("no exported name is defined twice across the source", async () => {
  const root = new URL("..", import.meta.url).pathname;
  const seen = new Map<string, string>();
  const twice: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for await (const e of Deno.readDir(`${root}${dir}`)) {
      const path = `${dir}/${e.name}`;
      if (e.isDirectory && !["dist", "node_modules", "target"].includes(e.name)) await walk(path);
      else if (e.isFile && e.name.endsWith(".ts")) {
        const text = await Deno.readTextFile(`${root}${path}`);
        for (
          const m of text.matchAll(
            /^export (?:interface|type|class|function|const|enum) ([A-Za-z_$][\w$]*)/gm,
          )
        ) {
          const prev = seen.get(m[1]);
          if (prev) twice.push(`${m[1]}: ${prev} and ${path}`);
          else seen.set(m[1], path);
        }
      }
    }
  };
  for (const dir of ["runtime", "server", "web", "examples", "bench", "scripts"]) await walk(dir);
  assert.ok(seen.size > 100, `only ${seen.size} names found: the scan is broken`);
  assert.deepEqual(twice, []);
});
