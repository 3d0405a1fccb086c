/**
 * Runs serialized graphs on onnxruntime: onnxruntime-node (Deno/Node, native), onnxruntime-web
 * WASM, or onnxruntime-web WebGPU. Runtimes are imported lazily so browser bundles never see
 * onnxruntime-node. Sessions are cached per (model bytes digest, backend, threads).
 */

/** Backend choice; "auto" picks node, then webgpu, then wasm. */
export type Backend = "auto" | "node" | "wasm" | "webgpu";
/** A concrete backend. */
export type ResolvedBackend = Exclude<Backend, "auto">;
/** Input value. Int32Array is widened to i64 (graphs only take f32 and i64 inputs). */
export interface Feed {
  data: Float32Array | BigInt64Array | Int32Array;
  dims: readonly number[];
}
/** Output value. */
export interface Output {
  data: Float32Array | BigInt64Array | Uint8Array;
  dims: number[];
}
/** Options for createSession. */
export interface SessionOptions {
  backend?: Backend;
  /** WASM threads (default: hardwareConcurrency in Deno/Node, 1 where workers are unavailable). */
  numThreads?: number;
  /** Skip the session cache. */
  noCache?: boolean;
}
/** A ready inference session. */
export interface GraphSession {
  readonly backend: ResolvedBackend;
  readonly inputNames: readonly string[];
  readonly outputNames: readonly string[];
  /** Runs the graph; fetches only the named outputs when given. */
  run(feeds: Record<string, Feed>, outputs?: string[]): Promise<Record<string, Output>>;
  /** Frees the native session and drops it from the cache. */
  release(): Promise<void>;
}

// deno-lint-ignore no-explicit-any
type Ort = any;

const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
const isNode = !isDeno &&
  typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === "string";

// A non-literal specifier keeps browser bundlers from trying to resolve the native addon.
const NODE_SPEC = ["onnxruntime", "node"].join("-");

const modules = new Map<ResolvedBackend, Promise<Ort | null>>();

/** Loads the onnxruntime module for a backend, or null when it is unavailable here. */
export function loadOrt(backend: ResolvedBackend): Promise<Ort | null> {
  let p = modules.get(backend);
  if (!p) {
    p = (async () => {
      try {
        if (backend === "node") return (isDeno || isNode) ? await import(NODE_SPEC) : null;
        if (backend === "wasm") return await import("onnxruntime-web");
        if (!(await webgpuAdapter())) return null;
        return await import("onnxruntime-web/webgpu");
      } catch {
        return null;
      }
    })();
    modules.set(backend, p);
  }
  return p;
}

/** What navigator.gpu offers here. */
export interface GpuProbe {
  available: boolean;
  /** A software adapter (llvmpipe, SwiftShader): works, but far slower than WASM. */
  fallback: boolean;
  description?: string;
}

let adapterProbe: Promise<GpuProbe> | undefined;
/** Probes navigator.gpu once. */
export function probeWebgpu(): Promise<GpuProbe> {
  adapterProbe ??= (async () => {
    try {
      type Info = { isFallbackAdapter?: boolean; description?: string };
      type Adapter = { info?: Info; isFallbackAdapter?: boolean };
      const gpu =
        (globalThis.navigator as { gpu?: { requestAdapter(): Promise<Adapter | null> } } | undefined)?.gpu;
      const a = gpu ? await gpu.requestAdapter() : null;
      if (!a) return { available: false, fallback: false };
      return {
        available: true,
        fallback: !!(a.info?.isFallbackAdapter ?? a.isFallbackAdapter),
        description: a.info?.description,
      };
    } catch {
      return { available: false, fallback: false };
    }
  })();
  return adapterProbe;
}

/** True when navigator.gpu yields an adapter. */
export async function webgpuAdapter(): Promise<boolean> {
  return (await probeWebgpu()).available;
}

/** Backends usable in this runtime (node, wasm, webgpu order; see resolveBackend for "auto"). */
export async function availableBackends(): Promise<ResolvedBackend[]> {
  const out: ResolvedBackend[] = [];
  for (const b of ["node", "wasm", "webgpu"] as const) if (await loadOrt(b)) out.push(b);
  return out;
}

/**
 * Resolves a backend; throws if a named one is unavailable. "auto" takes onnxruntime-node, else
 * WebGPU on a hardware adapter, else WASM (a software WebGPU adapter is used only when asked for).
 */
export async function resolveBackend(b: Backend = "auto"): Promise<ResolvedBackend> {
  if (b !== "auto") {
    if (!["node", "wasm", "webgpu"].includes(b)) {
      throw new Error(`unknown backend "${b}" (use auto, node, wasm or webgpu)`);
    }
    if (!(await loadOrt(b))) throw new Error(`backend "${b}" is not available in this runtime`);
    return b;
  }
  if (await loadOrt("node")) return "node";
  if (!(await probeWebgpu()).fallback && await loadOrt("webgpu")) return "webgpu";
  if (await loadOrt("wasm")) return "wasm";
  throw new Error("no onnxruntime backend is available");
}

function defaultThreads(): number {
  const hc = (globalThis.navigator as { hardwareConcurrency?: number } | undefined)?.hardwareConcurrency ?? 1;
  // The node build of onnxruntime-web starts worker_threads from files; browser bundles need
  // cross-origin isolation for SharedArrayBuffer.
  const canThread = isDeno || isNode ||
    (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated === true;
  return canThread ? Math.max(1, hc) : 1;
}

async function digest(bytes: Uint8Array): Promise<string> {
  const h = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(h), (b) => b.toString(16).padStart(2, "0")).join("");
}

const sessions = new Map<string, Promise<GraphSession>>();

/** Releases every cached session (native memory included). */
export async function clearSessionCache(): Promise<void> {
  const all = [...sessions.values()];
  sessions.clear();
  for (const p of all) await (await p.catch(() => null))?.release();
}

/** Creates (or reuses) an inference session for ONNX model bytes. */
export async function createSession(model: Uint8Array, opts: SessionOptions = {}): Promise<GraphSession> {
  const backend = await resolveBackend(opts.backend ?? "auto");
  const threads = opts.numThreads ?? defaultThreads();
  const key = `${await digest(model)}|${backend}|${backend === "node" || backend === "wasm" ? threads : 1}`;
  if (!opts.noCache) {
    const hit = sessions.get(key);
    if (hit) return hit;
  }
  const p = open(model, backend, threads, key);
  if (!opts.noCache) {
    sessions.set(key, p);
    p.catch(() => sessions.delete(key));
  }
  return p;
}

async function open(
  model: Uint8Array,
  backend: ResolvedBackend,
  threads: number,
  key: string,
): Promise<GraphSession> {
  const ort = await loadOrt(backend);
  // Severity 3 = errors only: ORT otherwise warns on every CPU-placed shape op.
  const so: Record<string, unknown> = { graphOptimizationLevel: "all", logSeverityLevel: 3 };
  if (backend !== "node") ort.env.logLevel = "error";
  if (backend === "node") {
    so.executionProviders = ["cpu"];
    so.intraOpNumThreads = threads;
  } else if (backend === "wasm") {
    // numThreads is global to the WASM module and fixed once it initializes.
    ort.env.wasm.numThreads = threads;
    so.executionProviders = ["wasm"];
  } else {
    // The browser bundle cannot start pthread workers in Deno/Node (see bench/results/graph.md).
    ort.env.wasm.numThreads = isDeno || isNode ? 1 : threads;
    so.executionProviders = ["webgpu"];
  }
  const session = await ort.InferenceSession.create(model, so);
  const toOrt = (name: string, f: Feed) => {
    const data = f.data instanceof Int32Array ? BigInt64Array.from(f.data, (v) => BigInt(v)) : f.data;
    const type = data instanceof Float32Array ? "float32" : data instanceof BigInt64Array ? "int64" : null;
    if (!type) throw new Error(`input ${name}: unsupported data type`);
    const n = f.dims.reduce((a, b) => a * b, 1);
    if (n !== data.length) throw new Error(`input ${name}: ${data.length} values for dims [${f.dims}]`);
    return new ort.Tensor(type, data, f.dims);
  };
  return {
    backend,
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    async run(feeds, outputs) {
      for (const name of session.inputNames) if (!(name in feeds)) throw new Error(`missing input "${name}"`);
      const ortFeeds: Record<string, unknown> = {};
      for (const [name, f] of Object.entries(feeds)) {
        if (!session.inputNames.includes(name)) throw new Error(`unknown input "${name}"`);
        ortFeeds[name] = toOrt(name, f);
      }
      const res = outputs ? await session.run(ortFeeds, outputs) : await session.run(ortFeeds);
      const out: Record<string, Output> = {};
      for (
        const [name, t] of Object.entries(res as Record<string, { data: Output["data"]; dims: number[] }>)
      ) {
        out[name] = { data: t.data, dims: [...t.dims] };
      }
      return out;
    },
    async release() {
      sessions.delete(key);
      await session.release?.();
    },
  };
}
