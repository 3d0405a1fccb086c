/**
 * The library imported from outside the checkout, each way a user would, from a temporary folder with no
 * deno.json and no flag beyond permissions:
 * - a Deno program importing mod.ts by file path, by file:// URL and by http:// URL;
 * - a Deno program (and a Node one) in a project that npm-installed the `npm pack` tarball;
 * - a browser page importing the tarball's prebuilt ESM bundle.
 * Each runs the kernels (WASM), an ONNX graph on onnxruntime, and (Deno) the bundled model's engine.
 * Plus the rules that keep it so: no bare specifier in the library, and one list of versions.
 */
import assert from "node:assert/strict";
import { chromiumPath, launchBrowser, serveLoopback } from "./browser_harness.ts";
import { bundleLibrary, LIB_DIRS } from "../scripts/bundle.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const chromium = chromiumPath();

/** The smoke program: kernels, a graph on a backend, and optionally the engine on a model. */
const SMOKE = `
const p = await import(Deno.args[0] === "perfit" ? "perfit" : Deno.args[0]);
const k = await p.initKernels({ backend: "wasm" });
const g = new p.Graph();
const x = g.input("x", "f32", [2]);
const w = g.input("w", "f32", [2]);
g.output("y", g.reduceSum(g.mul(x, w), [0]));
const out = {};
for (const backend of ["wasm", "node"]) {
  const s = await p.createSession(p.toOnnx(g), { backend });
  const r = await s.run({ x: { data: new Float32Array([1, 2]), dims: [2] }, w: { data: new Float32Array([3, 4]), dims: [2] } });
  out[backend] = Array.from(r.y.data);
}
const res = { kernels: k.name, popcount: k.popcount(new Uint8Array([1, 0, 1])), y: out };
if (Deno.args[1]) {
  const m = await p.loadModel(Deno.args[1]);
  const e = await p.Engine.create(m, { rank: 2, alpha: 4, targets: ["q", "v"] }, { backend: "node" });
  res.engine = { backend: e.backend, size: e.layout.size, tokens: m.tokenizer.encode("hello world").length };
}
console.log("RESULT " + JSON.stringify(res));
`;

/** A temp folder outside the checkout with nothing that configures Deno or npm above it. */
async function outsideDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "perfit-outside-" });
  assert.ok(!dir.startsWith(ROOT + "/"), `${dir} is outside ${ROOT}`);
  for (let d = dir.replace(/\/[^/]+$/, ""); d; d = d.replace(/\/[^/]*$/, "")) {
    for (const f of ["deno.json", "deno.jsonc", "package.json"]) {
      const found = await Deno.stat(`${d}/${f}`).then(() => true, () => false);
      assert.ok(!found, `${d}/${f} would configure the outside program: remove it`);
    }
  }
  return dir;
}

async function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function smoke(dir: string, spec: string, model?: string) {
  await Deno.writeTextFile(`${dir}/main.ts`, SMOKE);
  const r = await run(Deno.execPath(), ["run", "-A", "main.ts", spec, ...(model ? [model] : [])], dir);
  assert.equal(r.code, 0, `deno run -A main.ts ${spec}:\n${r.stdout}\n${r.stderr}`);
  const line = r.stdout.split("\n").find((l) => l.startsWith("RESULT "));
  assert.ok(line, r.stdout);
  return JSON.parse(line.slice(7));
}

function assertSmoke(res: Record<string, unknown>, withEngine: boolean) {
  assert.equal(res.kernels, "wasm-simd");
  assert.equal(res.popcount, 2);
  assert.deepEqual(res.y, { wasm: [11], node: [11] });
  if (withEngine) {
    const e = res.engine as { backend: string; size: number; tokens: number };
    assert.equal(e.backend, "node");
    assert.ok(e.size > 0 && e.tokens > 0, JSON.stringify(e));
  }
}

Deno.test("outside import: the library has no bare specifier, and its npm: pins are package.json's versions", async () => {
  const pkg = JSON.parse(await Deno.readTextFile(`${ROOT}/package.json`));
  const deps = await Deno.readTextFile(`${ROOT}/runtime/deps.ts`);
  const pins = [...deps.matchAll(/"npm:((?:@[^/@"]+\/)?[^/@"]+)@([^/"]+)(?:\/[^"]*)?"/g)];
  assert.ok(pins.length >= 4, "runtime/deps.ts pins the library's packages");
  for (const [, name, version] of pins) {
    assert.equal(
      version,
      pkg.dependencies[name],
      `runtime/deps.ts pins ${name}@${version}, package.json's dependencies say ${pkg.dependencies[name]}`,
    );
  }
  // Every third-party import of the library goes through runtime/deps.ts.
  const files = ["mod.ts"];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(`${ROOT}/${d}`)) {
      if (e.isDirectory) await walk(`${d}/${e.name}`);
      else if (e.name.endsWith(".ts")) files.push(`${d}/${e.name}`);
    }
  };
  await walk("runtime");
  // The simulation runs the coordinator in process, so server/ is part of the library too.
  await walk("server");
  const spec = /(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)"([^"]+)"/gm;
  for (const f of files) {
    // Code only: doc comments show imports too.
    const text = (await Deno.readTextFile(`${ROOT}/${f}`)).replace(/\/\*[\s\S]*?\*\//g, "").replace(
      /^\s*\/\/.*$/gm,
      "",
    );
    for (const [, s] of text.matchAll(spec)) {
      const ok = s.startsWith(".") || s.startsWith("node:") ||
        (s.startsWith("npm:") && f === "runtime/deps.ts");
      assert.ok(
        ok,
        `${f} imports "${s}": import it through runtime/deps.ts (a bare name needs an import map)`,
      );
    }
  }
});

Deno.test("outside import: a Deno program anywhere imports mod.ts by file path and by file:// URL", async () => {
  const dir = await outsideDir();
  try {
    assertSmoke(await smoke(dir, `${ROOT}/mod.ts`, `${ROOT}/models/perfit-tiny`), true);
    assertSmoke(await smoke(dir, `file://${ROOT}/mod.ts`), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("outside import: a Deno program imports mod.ts by http:// URL (and loads the model over http)", async () => {
  const dir = await outsideDir();
  // The checkout as a static site (what a raw-file host or a CDN serves).
  const server = serveLoopback(async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    if (path.includes("..") || path.includes("/node_modules/")) return new Response("no", { status: 403 });
    try {
      const type = path.endsWith(".ts") ? "application/typescript" : "application/octet-stream";
      return new Response(await Deno.readFile(`${ROOT}${path}`), { headers: { "content-type": type } });
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  try {
    assertSmoke(await smoke(dir, `${server.url}/mod.ts`, `${server.url}/models/perfit-tiny`), true);
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** `npm pack` of the checkout (with the library builds), once for the tests below. */
let packed: Promise<{ dir: string; tarball: string }> | undefined;
let packDir: string | undefined;
function pack(): Promise<{ dir: string; tarball: string }> {
  packed ??= (async () => {
    await bundleLibrary();
    const dir = packDir = await Deno.makeTempDir({ prefix: "perfit-pack-" });
    const r = await run("npm", ["pack", "--pack-destination", dir, "--json"], ROOT);
    assert.equal(r.code, 0, `npm pack: ${r.stderr}`);
    const name = JSON.parse(r.stdout)[0].filename as string;
    return { dir, tarball: `${dir}/${name}` };
  })();
  return packed;
}

Deno.test("outside import: the npm pack tarball installed into another project imports as `perfit` (Deno, Node)", async () => {
  const { tarball } = await pack();
  const list = await run("tar", ["tzf", tarball], "/");
  for (const f of ["package/mod.ts", "package/dist/esm/perfit.js", "package/dist/browser/perfit.js"]) {
    assert.ok(list.stdout.split("\n").includes(f), `the tarball holds ${f}`);
  }
  assert.ok(!list.stdout.includes("package/tests/"), "tests are not packed");
  const dir = await outsideDir();
  try {
    await Deno.writeTextFile(
      `${dir}/package.json`,
      JSON.stringify({
        name: "outside",
        private: true,
        type: "module",
        dependencies: { perfit: `file:${tarball}` },
      }),
    );
    // The variable onnxruntime-node's install script reads: no CUDA download (newer npm skips it anyway).
    const inst = await run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline"], dir, {
      ONNXRUNTIME_NODE_INSTALL: "skip",
    });
    assert.equal(inst.code, 0, `npm install: ${inst.stderr}`);
    assertSmoke(await smoke(dir, "perfit", `${dir}/node_modules/perfit/models/perfit-tiny`), true);
    // npm users on Node get the same ESM build (the file-system helpers are Deno's; the engine is not).
    const node = await run("node", [
      "--input-type=module",
      "-e",
      `const p = await import("perfit");
       const k = await p.initKernels({ backend: "wasm" });
       const g = new p.Graph(); const x = g.input("x", "f32", [2]);
       g.output("y", g.reduceSum(g.mul(x, x), [0]));
       const s = await p.createSession(p.toOnnx(g), { backend: "node" });
       const r = await s.run({ x: { data: new Float32Array([3, 4]), dims: [2] } });
       console.log(JSON.stringify({ kernels: k.name, y: Array.from(r.y.data) }));`,
    ], dir).catch((e) => ({ code: -1, stdout: "", stderr: String(e) }));
    if (node.code === -1) console.warn(`no node on PATH: the Node import was not tried (${node.stderr})`);
    else {
      assert.equal(node.code, 0, node.stderr);
      assert.deepEqual(JSON.parse(node.stdout.trim()), { kernels: "wasm-simd", y: [25] });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "outside import: a browser page imports the tarball's prebuilt ESM bundle (kernels and ORT WASM)",
  ignore: chromium === null,
  async fn() {
    const { tarball } = await pack();
    const dir = await outsideDir();
    const x = await run("tar", ["xzf", tarball, "-C", dir], "/");
    assert.equal(x.code, 0, x.stderr);
    const pkg = `${dir}/package`;
    const types: Record<string, string> = {
      js: "text/javascript",
      mjs: "text/javascript",
      wasm: "application/wasm",
      html: "text/html",
      json: "application/json",
    };
    await Deno.writeTextFile(
      `${dir}/index.html`,
      `<!doctype html><html><body><script type="module">
      try {
        const p = await import("./package/${LIB_DIRS.browser}/perfit.js");
        const k = await p.initKernels();
        const g = new p.Graph();
        const x = g.input("x", "f32", [2]), w = g.input("w", "f32", [2]);
        g.output("y", g.reduceSum(g.mul(x, w), [0]));
        const s = await p.createSession(p.toOnnx(g), { backend: "wasm" });
        const r = await s.run({ x: { data: new Float32Array([1, 2]), dims: [2] }, w: { data: new Float32Array([3, 4]), dims: [2] } });
        window.result = { kernels: k.name, backend: s.backend, y: Array.from(r.y.data) };
      } catch (e) { window.result = { error: String(e && e.stack || e) }; }
      </script></body></html>`,
    );
    const server = serveLoopback(async (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname);
      if (path.includes("..")) return new Response("no", { status: 403 });
      try {
        const body = await Deno.readFile(`${dir}${path === "/" ? "/index.html" : path}`);
        const ext = (path === "/" ? "html" : path.split(".").pop()) ?? "";
        return new Response(body, { headers: { "content-type": types[ext] ?? "application/octet-stream" } });
      } catch {
        return new Response("not found", { status: 404 });
      }
    });
    const b = await launchBrowser(chromium!);
    try {
      await b.page.goto(`${server.url}/`);
      await b.page.waitForFunction(() => (globalThis as { result?: unknown }).result !== undefined, null, {
        timeout: 60_000,
      });
      const res = await b.page.evaluate(() => (globalThis as { result?: unknown }).result);
      assert.deepEqual(res, { kernels: "wasm-simd", backend: "wasm", y: [11] }, b.logs.join("\n"));
      assert.ok(await Deno.stat(`${pkg}/wasm/perfit_kernels.wasm`), "the kernels came from the package");
    } finally {
      await b.close();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

// The packed tarball's folder goes when the file's tests are done.
globalThis.addEventListener("unload", () => {
  if (packDir) Deno.removeSync(packDir, { recursive: true });
});
