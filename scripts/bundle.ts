/**
 * Bundles the browser pages (client and dashboard) with esbuild into `web/dist/`.
 *
 * `onnxruntime-web` is pointed at its WebGPU build (which also carries the WASM EP) with the
 * extern-wasm condition, so the large .wasm/.mjs runtime files are fetched from `ort.env.wasm.wasmPaths`
 * (served by server/ui) instead of being inlined. Node-only modules reachable from shared runtime code
 * (behind `typeof Deno` guards or dynamic imports) resolve to a stub that throws if ever called.
 *
 * Usage: deno run -A scripts/bundle.ts [--minify] [--watch]
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
    plugins: [stubNodeOnly],
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

if (import.meta.main) {
  const sizes = await bundle({
    minify: Deno.args.includes("--minify"),
    verbose: Deno.args.includes("--verbose"),
  });
  for (const [p, n] of Object.entries(sizes)) console.log(`${p}  ${(n / 1024).toFixed(0)} KiB`);
  await esbuild.stop();
}
