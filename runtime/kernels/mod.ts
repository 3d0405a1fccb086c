/**
 * Kernel entry point: `await initKernels()` once, then `kernels()` returns the fastest available
 * implementation (WASM SIMD, else the scalar TypeScript reference `scalarKernels`).
 *
 * Zero-copy hot path: buffers from `kernels().allocF32(n)` / `allocU8(n)` live in WASM linear memory,
 * so kernels run on them in place. Ordinary arrays work too but are copied in and out per call.
 * Views from `alloc*` are invalidated when linear memory grows: call `kernels().reserve(bytes)` once,
 * before allocating long-lived buffers (e.g. the aggregator's sum and weight). Element-wise kernels
 * (accumulate, accumulateSparse, finalize, maskedAdamW, jaccard, countNonFinite) never grow memory;
 * the others may grow it once to copy ordinary arrays in. A detached view is refused with a
 * `KernelError`, never read as empty.
 *
 * Arrays already on the GPU: `await GpuKernels.create(device)` runs accumulate/finalize and the top-k
 * threshold as WGSL compute shaders on `GPUBuffer`s.
 */
import { type Kernels } from "./types.ts";
import { scalarKernels } from "./scalar.ts";
import { loadWasmKernels, type WasmSource } from "./wasm.ts";

export { type AdamWStep, KernelError, type Kernels } from "./types.ts";
export { scalarKernels } from "./scalar.ts";
export { simdSupported, type WasmSource } from "./wasm.ts";
export { GpuKernels, type GpuTopk } from "./webgpu.ts";

/** Options of `initKernels`. */
export interface InitKernelsOptions {
  /** Force a backend; "auto" (default) picks WASM SIMD when supported and loadable. */
  backend?: "auto" | "wasm" | "scalar";
  /**
   * Where to get the module: bytes, a compiled `WebAssembly.Module` (edge workers that forbid compiling
   * bytes import the .wasm as a module), or a URL. Defaults to `wasm/perfit_kernels.wasm` in this package.
   */
  wasm?: WasmSource;
}

let active: Kernels | undefined;
let activeBackend: string | undefined;
let loading: Promise<Kernels> | undefined;
let loadError: unknown;

/**
 * Loads the best kernel backend and makes it the one `kernels()` returns. In "auto" mode a failure to
 * load WASM falls back to scalar TypeScript (see `kernelLoadError()`); with backend "wasm" it throws.
 * Repeated calls with the same backend and no `wasm` source share one instance, so buffers from its
 * `allocF32` stay resident for every module that calls `initKernels()`.
 */
export function initKernels(opts: InitKernelsOptions = {}): Promise<Kernels> {
  const backend = opts.backend ?? "auto";
  if (opts.wasm === undefined && loading !== undefined && activeBackend === backend) return loading;
  activeBackend = opts.wasm === undefined ? backend : undefined;
  loading = load(backend, opts.wasm);
  return loading;
}

async function load(backend: "auto" | "wasm" | "scalar", source: WasmSource | undefined): Promise<Kernels> {
  if (backend === "scalar") {
    active = scalarKernels;
    return active;
  }
  try {
    active = await loadWasmKernels(source);
  } catch (err) {
    if (backend === "wasm") {
      activeBackend = undefined;
      throw err;
    }
    loadError = err;
    active = scalarKernels;
  }
  return active;
}

/** The backend chosen by `initKernels` (scalar TypeScript if `initKernels` was never awaited). */
export function kernels(): Kernels {
  return active ?? scalarKernels;
}

/** Why "auto" fell back to scalar TypeScript, if it did. */
export function kernelLoadError(): unknown {
  return loadError;
}
