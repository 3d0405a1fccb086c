/**
 * Bundles the browser pages (client and dashboard) with esbuild into `web/dist/`.
 *
 * `onnxruntime-web` is pointed at its WebGPU build (which also carries the WASM EP) with the
 * extern-wasm condition, so the large .wasm/.mjs runtime files are fetched from `ort.env.wasm.wasmPaths`
 * (served by server/ui) instead of being inlined. Node-only modules reachable from shared runtime code
 * (behind `typeof Deno` guards or dynamic imports) resolve to a stub that throws if ever called.
 *
 * The library's `npm:name@version` specifiers (runtime/deps.ts) resolve to the bare package in node_modules.
 *
 * `--lib` builds the library's browser ESM bundle instead (`bundleLibrary`): dist/browser/perfit.js from
 * mod.ts, with lazily loaded chunks and onnxruntime-web's runtime files next to it (npm pack ships it).
 *
 * Usage: deno run -A scripts/bundle.ts [--minify] [--lib]
 */
import * as esbuild from "esbuild";

/** Page entry points (web/<name>.ts -> web/dist/<name>.js). */
export const ENTRIES = ["client", "dashboard"] as const;

const NODE_ONLY =
  /^(onnxruntime-node|sharp|node:.*|fs|path|os|url|crypto|worker_threads|child_process|module)$/;

const stubNodeOnly: esbuild.Plugin = {
  name: "stub-node-only",
  setup(build) {
    build.onResolve({ filter: NODE_ONLY }, (args) => ({ path: args.path, namespace: "node-stub" }));
    build.onLoad({ filter: /.*/, namespace: "node-stub" }, (args) => ({
      contents: `const fail = () => { throw new Error(${
        JSON.stringify(`${args.path} is not available in the browser`)
      }); };
        export default new Proxy({}, { get: (_t, k) => k === "__esModule" ? false : fail });
        export const InferenceSession = undefined, Tensor = undefined, env = {};`,
      loader: "js",
    }));
    // One ORT for the whole page: the WebGPU build also runs the WASM EP.
    build.onResolve({ filter: /^onnxruntime-web$/ }, async (args) => {
      if (args.pluginData === "ort-redirect") return undefined;
      const r = await build.resolve("onnxruntime-web/webgpu", {
        kind: args.kind,
        resolveDir: args.resolveDir,
        pluginData: "ort-redirect",
      });
      return { path: r.path, namespace: r.namespace };
    });
  },
};

/** `npm:name@version/sub` → `name/sub`, resolved from node_modules like the bare import it pins. */
const npmSpecifiers: esbuild.Plugin = {
  name: "npm-specifiers",
  setup(build) {
    build.onResolve({ filter: /^npm:/ }, (args) => {
      const m = /^npm:((?:@[^/@]+\/)?[^/@]+)(?:@[^/]*)?(\/.*)?$/.exec(args.path);
      if (!m) return { errors: [{ text: `bad npm: specifier ${args.path}` }] };
      return build.resolve(m[1] + (m[2] ?? ""), {
        kind: args.kind,
        resolveDir: args.resolveDir,
        importer: args.importer,
        pluginData: args.pluginData,
      });
    });
  },
};

/** Options of `bundle`. */
export interface BundleOptions {
  /** Repository root (default: the folder above scripts/). */
  root?: string;
  minify?: boolean;
  /** Log esbuild warnings (default false: ORT and Transformers.js produce known, harmless ones). */
  verbose?: boolean;
}

const defaultRoot = () => new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** What every browser bundle shares: target, ORT resolution and the Node-only stubs. */
function browserBuild(root: string, opts: BundleOptions): esbuild.BuildOptions {
  return {
    absWorkingDir: root,
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    conditions: ["onnxruntime-web-use-extern-wasm"],
    minify: opts.minify ?? false,
    logLevel: opts.verbose ? "warning" : "error",
    define: { "process.env.NODE_ENV": '"production"' },
    plugins: [npmSpecifiers, stubNodeOnly],
  };
}

/**
 * Bundles one more entry (a page outside web/, e.g. a benchmark's) the way the pages are bundled and
 * returns the script instead of writing it, so nothing lands in web/dist.
 */
export async function bundleEntry(entry: string, opts: BundleOptions = {}): Promise<string> {
  const result = await esbuild.build({
    ...browserBuild(opts.root ?? defaultRoot(), opts),
    entryPoints: [entry],
    write: false,
  });
  return result.outputFiles[0].text;
}

/** Builds web/dist/*.js; returns the output paths with their sizes in bytes. */
export async function bundle(opts: BundleOptions = {}): Promise<Record<string, number>> {
  const root = opts.root ?? defaultRoot();
  const result = await esbuild.build({
    ...browserBuild(root, opts),
    entryPoints: ENTRIES.map((e) => `web/${e}.ts`),
    outdir: "web/dist",
    sourcemap: "linked",
    metafile: true,
    // Written below via temp file + rename: parallel test files bundle while pages are being served.
    write: false,
  });
  await Deno.mkdir(`${root}/web/dist`, { recursive: true });
  for (const f of result.outputFiles!) {
    const tmp = `${f.path}.${crypto.randomUUID()}.tmp`;
    await Deno.writeFile(tmp, f.contents);
    await Deno.rename(tmp, f.path);
  }
  const sizes: Record<string, number> = {};
  for (const [path, info] of Object.entries(result.metafile!.outputs)) {
    if (path.endsWith(".js")) sizes[path] = info.bytes;
  }
  return sizes;
}

/**
 * Where `bundleLibrary` writes: the browser build (packages inlined) and the ESM build for Deno and
 * bundlers (packages left as bare imports). Both lie two folders below the package root, so that the
 * library's `new URL("../../wasm/perfit_kernels.wasm", import.meta.url)` (and ../../models/) still point
 * into the package.
 */
export const LIB_DIRS = { browser: "dist/browser", esm: "dist/esm" } as const;

/** onnxruntime-web's runtime files the browser build's WebGPU/WASM backend fetches from next to itself. */
const ORT_RUNTIME = ["ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"];

/** The `npm:name@version/sub` specifiers of runtime/deps.ts as bare `name/sub` (for the ESM build). */
const bareDeps: esbuild.Plugin = {
  name: "bare-deps",
  setup(build) {
    build.onResolve({ filter: /^npm:/ }, (args) => {
      const m = /^npm:((?:@[^/@]+\/)?[^/@]+)(?:@[^/]*)?(\/.*)?$/.exec(args.path)!;
      return { path: m[1] + (m[2] ?? ""), external: true };
    });
    // ORT_NODE is a string (imported dynamically by value): rewrite it too.
    build.onLoad({ filter: /[/\\]runtime[/\\]deps\.ts$/ }, async (args) => ({
      contents: (await Deno.readTextFile(args.path)).replace(
        /"npm:((?:@[^/@"]+\/)?[^/@"]+)(?:@[^/"]*)?(\/[^"]*)?"/g,
        (_m, name, sub) => JSON.stringify(name + (sub ?? "")),
      ),
      loader: "ts",
    }));
  },
};

/**
 * Builds the library for the npm tarball: `dist/browser/perfit.js` (mod.ts for browsers, packages inlined,
 * Transformers.js and ORT in chunks loaded on first use, ORT's runtime files next to it) and
 * `dist/esm/perfit.js` (mod.ts as one ES module whose packages are bare imports, for Deno programs that
 * npm-installed the tarball: Deno does not strip types under node_modules). Returns paths and sizes.
 */
export async function bundleLibrary(opts: BundleOptions = {}): Promise<Record<string, number>> {
  const root = opts.root ?? defaultRoot();
  const sizes: Record<string, number> = {};
  const record = (meta: esbuild.Metafile) => {
    for (const [path, info] of Object.entries(meta.outputs)) {
      if (path.endsWith(".js")) sizes[path] = info.bytes;
    }
  };
  for (const dir of Object.values(LIB_DIRS)) {
    await Deno.remove(`${root}/${dir}`, { recursive: true }).catch(() => {});
  }
  const browser = await esbuild.build({
    ...browserBuild(root, opts),
    entryPoints: { perfit: "mod.ts" },
    outdir: LIB_DIRS.browser,
    splitting: true,
    // Chunks next to perfit.js: the same relative URLs (wasm/, ORT's files) hold in every one of them.
    chunkNames: "[name]-[hash]",
    sourcemap: "linked",
    metafile: true,
  });
  record(browser.metafile!);
  for (const f of ORT_RUNTIME) {
    await Deno.copyFile(`${root}/node_modules/onnxruntime-web/dist/${f}`, `${root}/${LIB_DIRS.browser}/${f}`);
    sizes[`${LIB_DIRS.browser}/${f}`] = (await Deno.stat(`${root}/${LIB_DIRS.browser}/${f}`)).size;
  }
  const esm = await esbuild.build({
    absWorkingDir: root,
    entryPoints: { perfit: "mod.ts" },
    outdir: LIB_DIRS.esm,
    bundle: true,
    format: "esm",
    platform: "node",
    target: "es2022",
    packages: "external",
    minify: opts.minify ?? false,
    logLevel: opts.verbose ? "warning" : "error",
    sourcemap: "linked",
    metafile: true,
    plugins: [bareDeps],
  });
  record(esm.metafile!);
  return sizes;
}

if (import.meta.main && Deno.args.includes("--lib")) {
  const sizes = await bundleLibrary({ minify: Deno.args.includes("--minify") });
  for (const [p, n] of Object.entries(sizes)) console.log(`${p}  ${(n / 1024).toFixed(0)} KiB`);
  await esbuild.stop();
} else if (import.meta.main) {
  const sizes = await bundle({
    minify: Deno.args.includes("--minify"),
    verbose: Deno.args.includes("--verbose"),
  });
  for (const [p, n] of Object.entries(sizes)) console.log(`${p}  ${(n / 1024).toFixed(0)} KiB`);
  await esbuild.stop();
}
