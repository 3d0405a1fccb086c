/**
 * The library imported from outside the checkout, each way a user would, from a temporary folder with no
 * deno.json and no flag beyond permissions:
 * - a Deno program importing mod.ts by file path, by file:// URL and by http:// URL;
 * - a Deno program (and a Node one) in a project that npm-installed the `npm pack` tarball;
 * - a browser page importing the tarball's prebuilt ESM bundle.
 * Each runs the kernels (WASM), an ONNX graph on onnxruntime, and (Deno) the bundled model's engine.
 * Under Node, the installed tarball is also a whole data owner: it loads its bundled model and data and
 * joins a PerFIT run on a real coordinator (`deno task serve`), as `deno task client` does.
 * Plus the rules that keep it so: no bare specifier in the library, one list of versions, and no node:
 * import in the browser build.
 */
import assert from "node:assert/strict";
import { chromiumPath, launchBrowser, serveLoopback } from "./browser_harness.ts";
import { bundleLibrary, LIB_DIRS } from "../scripts/bundle.ts";
import { startCoordinator } from "../scripts/denokv.ts";
import { ADMIN_COMMANDS, AdminClient, createBody } from "../examples/admin.ts";
import { readPeftAdapter } from "../runtime/export/peft_read.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const chromium = chromiumPath();
/** `node --version`, or null where there is no node on PATH (the Node checks are then skipped). */
const NODE = await new Deno.Command("node", { args: ["--version"], stdout: "piped", stderr: "null" }).output()
  .then((o) => (o.success ? new TextDecoder().decode(o.stdout).trim() : null), () => null);
if (NODE === null) console.warn("outside import: no node on PATH: the Node checks are skipped");

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

/** The tarball npm-installed into a project outside the checkout, once for the tests below. */
let installing: Promise<string> | undefined;
let installDir: string | undefined;
function installed(): Promise<string> {
  installing ??= (async () => {
    const { tarball } = await pack();
    const dir = installDir = await outsideDir();
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
    return dir;
  })();
  return installing;
}

Deno.test("outside import: the npm pack tarball installed into another project imports as `perfit` (Deno, Node)", async () => {
  const { tarball } = await pack();
  const list = await run("tar", ["tzf", tarball], "/");
  for (const f of ["package/mod.ts", "package/dist/esm/perfit.js", "package/dist/browser/perfit.js"]) {
    assert.ok(list.stdout.split("\n").includes(f), `the tarball holds ${f}`);
  }
  assert.ok(!list.stdout.includes("package/tests/"), "tests are not packed");
  // The browser build never imports a Node module: node:fs and the like are stubbed out (scripts/bundle.ts).
  const browserJs = list.stdout.split("\n").filter((f) =>
    f.startsWith(`package/${LIB_DIRS.browser}/`) && /\.m?js$/.test(f)
  );
  assert.ok(browserJs.length > 1, browserJs.join(", "));
  for (const f of browserJs) {
    const text = await Deno.readTextFile(`${ROOT}/${f.slice("package/".length)}`);
    const m = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*)["'](node:[^"']*)["']/.exec(text);
    assert.equal(m?.[1], undefined, `${f} imports ${m?.[1]}`);
  }
  const dir = await installed();
  assertSmoke(await smoke(dir, "perfit", `${dir}/node_modules/perfit/models/perfit-tiny`), true);
  // npm users on Node get the same ESM build.
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
  if (NODE === null) console.warn(`no node on PATH: the Node import was not tried (${node.stderr})`);
  else {
    assert.equal(node.code, 0, node.stderr);
    assert.deepEqual(JSON.parse(node.stdout.trim()), { kernels: "wasm-simd", y: [25] });
  }
});

/**
 * A data owner's program under Node, as an npm user writes it: the bundled model and data of the
 * installed package, then `runDataOwner` (what `deno task client` runs) against the coordinator at
 * argv[2], run argv[3], with its state in argv[4]. Prints what it did, and what a Deno-only part says.
 */
const NODE_OWNER = `
import { readdir, readFile, writeFile } from "node:fs/promises";
import * as p from "perfit";
const [server, run, work] = process.argv.slice(2);
const { BUNDLED_MODEL, BUNDLED_DATA } = p.federation;
const model = await p.loadModel(BUNDLED_MODEL);
const file = BUNDLED_DATA + "/satire.jsonl";
const records = (await p.loadJsonl(file)).length;
// The owner's own file: the first 40 records of it.
await writeFile(work + "/mine.jsonl", (await readFile(file, "utf8")).split("\\n").slice(0, 40).join("\\n") + "\\n");
const log = [];
const owner = await p.runDataOwner({
  server, run, data: work + "/mine.jsonl", model: BUNDLED_MODEL, stateDir: work + "/state",
  backend: "node", pollMs: 50, log: (l) => log.push(l),
});
const a = await p.exporter.readPeftAdapter(owner.adapterDir);
let nonZeroB = 0;
for (const e of a.layout.entries) {
  if (e.kind === "B") for (let j = 0; j < e.size; j++) if (a.adapter[e.offset + j] !== 0) nonZeroB++;
}
let denoOnly = null;
try { await p.inProcessCoordinator(); } catch (e) { denoOnly = { name: e.name, message: e.message }; }
console.log("RESULT " + JSON.stringify({
  model: { tokens: model.tokenizer.encode("hello world").length, source: model.source },
  records, owner, log, nonZeroB, state: (await readdir(work + "/state")).sort(), denoOnly,
}));
`;

const OWNER_ADMIN = "outside-node-admin-token-0123456789";

Deno.test({
  name:
    "outside import: under Node, the installed tarball loads its model and data and, as a data owner on a real coordinator, finishes a PerFIT round, keeps its state in a folder and writes a PEFT adapter with non-zero lora_B",
  ignore: NODE === null,
  // The coordinator process's output is drained in the background (scripts/denokv.ts).
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await installed();
    const work = await Deno.makeTempDir({ prefix: "perfit-node-owner-" });
    const server = await startCoordinator({
      kv: `${work}/coordinator.kv`,
      flags: [`--admin-token=${OWNER_ADMIN}`],
    });
    try {
      // The run, through the admin route, sized from the model folder as `deno task admin create` does.
      const parsed = ADMIN_COMMANDS.create.tryParse([
        "--server",
        server.url,
        "--model",
        `${ROOT}/models/perfit-tiny`,
        "--method",
        "perfit",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--rounds",
        "1",
        "--clients-per-round",
        "1",
        "--train",
        "localSteps=3,batchSize=4,maxLen=48,pruneStages=2",
      ]);
      const admin = new AdminClient(server.url, OWNER_ADMIN);
      const { run: created } = await admin.json<{ run: { id: string } }>(
        "POST",
        "/v1/runs",
        await createBody(parsed.values, parsed.sources),
      );
      await Deno.writeTextFile(`${dir}/owner.mjs`, NODE_OWNER);
      const r = await run("node", ["owner.mjs", server.url, created.id, work], dir);
      assert.equal(r.code, 0, `node owner.mjs:\n${r.stdout}\n${r.stderr}\ncoordinator:\n${server.log()}`);
      const line = r.stdout.split("\n").find((l) => l.startsWith("RESULT "));
      assert.ok(line, r.stdout);
      const res = JSON.parse(line.slice(7));
      assert.equal(
        res.model.source,
        `${dir}/node_modules/perfit/models/perfit-tiny`,
        "the package's own model",
      );
      assert.ok(res.model.tokens > 0);
      assert.equal(res.records, 990, "the bundled satire.jsonl, whole");
      assert.equal(res.owner.trained, 1, res.log.join("\n"));
      const log = res.log.join("\n");
      assert.match(log, new RegExp(`joined run ${created.id} as c_\\S+`));
      assert.match(log, /round 1: trained, upload accepted; loss \d/);
      assert.match(log, /finished after round 1/);
      assert.ok(res.nonZeroB > 0, "lora_B is non-zero (read back under Node)");
      // The state folder: the client's resume state beside the adapter.
      assert.ok(res.state.includes("adapter") && res.state.length > 1, res.state.join(", "));
      const a = await readPeftAdapter(`${work}/state/adapter`);
      let nonZeroB = 0;
      for (const e of a.layout.entries) {
        if (e.kind === "B") {
          for (let j = 0; j < e.size; j++) if (a.adapter[e.offset + j] !== 0) nonZeroB++;
        }
      }
      assert.equal(nonZeroB, res.nonZeroB, "the same adapter read here");
      const after = await admin.json<{ run: { status: string; round: number } }>(
        "GET",
        `/v1/runs/${created.id}`,
      );
      assert.deepEqual([after.run.status, after.run.round], ["done", 2], "the coordinator closed round 1");
      // What stays Deno's says so under Node.
      assert.equal(res.denoOnly?.name, "NeedsDenoError", JSON.stringify(res.denoOnly));
      assert.match(res.denoOnly.message, /needs Deno .*not Node v?\d/);
    } finally {
      await server.stop();
      await Deno.remove(work, { recursive: true });
    }
  },
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

// The packed tarball's folder and the installing project go when the file's tests are done.
globalThis.addEventListener("unload", () => {
  for (const d of [packDir, installDir]) if (d) Deno.removeSync(d, { recursive: true });
});
