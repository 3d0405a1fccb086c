/**
 * The library's third-party modules, in one place, as `npm:` specifiers pinned to the versions in
 * package.json (its "dependencies" are the one list of versions: tests/outside_import.test.ts fails when a
 * pin here differs). `npm:` specifiers need no import map, so `mod.ts` imports with no `--config` from any
 * Deno program, by path or URL; inside an npm-installed tree (this repo) Deno takes them from
 * node_modules. The packed tarball ships JavaScript builds of mod.ts (scripts/bundle.ts `bundleLibrary`):
 * there these specifiers are the bare package names again, resolved from the installing project's
 * node_modules (Deno and bundlers), and the browser build has the packages inlined.
 *
 * Everything but onnx-proto is loaded lazily: onnxruntime-node is native (its specifier is a string, not
 * an import, so that bundlers never try to resolve it), onnxruntime-web and Transformers.js are large.
 *
 * @module
 */
// Inline npm: specifiers on purpose: a bare name would need this repo's package.json as the import map,
// which a Deno program elsewhere does not have.
// deno-lint-ignore-file no-import-prefix
export { default as onnxProto } from "npm:onnx-proto@8.0.1";

/** onnxruntime-node, for `import(ORT_NODE)` where a native addon can load (Deno, Node). */
export const ORT_NODE = "npm:onnxruntime-node@1.30.0";

/** onnxruntime-web (WASM). */
export const importOrtWeb = () => import("npm:onnxruntime-web@1.30.0");

/** onnxruntime-web's WebGPU build (also runs the WASM EP). */
export const importOrtWebGpu = () => import("npm:onnxruntime-web@1.30.0/webgpu");

/** Transformers.js (tokenizers, AutoConfig). */
export const importTransformers = () => import("npm:@huggingface/transformers@4.3.1");

// The coordinator (server/), which the simulation runs in process: Hono and the middleware it uses.
export { Hono } from "npm:hono@4.13.19";
export type { Context } from "npm:hono@4.13.19";
export { cors } from "npm:hono@4.13.19/cors";
export { createMiddleware } from "npm:hono@4.13.19/factory";
