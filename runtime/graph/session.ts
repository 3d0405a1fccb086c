/**
 * Runs serialized graphs on onnxruntime: onnxruntime-node (Deno/Node, native), onnxruntime-web
 * WASM, or onnxruntime-web WebGPU. Runtimes are imported lazily so browser bundles never see
 * onnxruntime-node. Sessions are cached per (model bytes digest, backend, threads).
 */
import { classifyAdapter, type GpuLike, readAdapterFacts } from "./adapter_choice.ts";
import { importOrtWeb, importOrtWebGpu, ORT_NODE } from "../deps.ts";

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
  /**
   * onnxruntime's CPU memory arena. Default: off on onnxruntime-node (the arena keeps every block it
   * ever carved, which made a 135M LoRA step peak ~40% higher for ~15% less step time; see
   * bench/results/model.md), onnxruntime's own default (on) on WASM/WebGPU.
   */
  memArena?: boolean;
  /** Pre-plan activation buffers from the first run's allocation pattern (onnxruntime default: on). */
  memPattern?: boolean;
  /** Run independent nodes in parallel (more threads, more live buffers); default sequential. */
  executionMode?: "sequential" | "parallel";
  /** Graph optimization level (default "all"). */
  graphOptimizationLevel?: "disabled" | "basic" | "extended" | "all";
  /**
   * onnxruntime-node only, in Deno on Linux/glibc with FFI allowed: the process-wide glibc malloc mmap
   * threshold (bytes) set before the session opens (see `tuneNativeMalloc`). Default 1 MiB; false
   * leaves malloc alone. Without the arena, ORT frees activations back to malloc, and glibc's dynamic
   * threshold (up to 32 MiB) otherwise keeps them on fragmented per-thread heaps: a 135M LoRA step's
   * peak RSS drifted from 2.9 to 4.3 GB between runs; with the fixed threshold it stays at ~2.75 GB.
   */
  mallocMmapThreshold?: number | false;
  /**
   * onnxruntime-node only: write onnxruntime's per-node profile (Chrome-trace JSON, every kernel's
   * time and shapes) to a file starting with this prefix, flushed when the session is released.
   * `bench/profile_ops.ts` sums it by op, to find where a step's time goes.
   */
  profile?: string;
}

const DEFAULT_MMAP_THRESHOLD = 1 << 20;
let mallocThreshold: number | undefined;

/**
 * Sets glibc's M_MMAP_THRESHOLD through Deno FFI, so native allocations at least that large are
 * mmapped and returned to the OS when freed (it also turns off glibc's dynamic threshold). Process-wide
 * and sticky. Returns false where it cannot apply: not Deno, not glibc, or no --allow-ffi (checked
 * without prompting).
 */
export function tuneNativeMalloc(mmapThreshold: number = DEFAULT_MMAP_THRESHOLD): boolean {
  if (!Number.isInteger(mmapThreshold) || mmapThreshold < 0 || mmapThreshold > 2 ** 31 - 1) {
    throw new Error(`mallocMmapThreshold must be an integer in [0, 2^31), got ${mmapThreshold}`);
  }
  if (mallocThreshold === mmapThreshold) return true;
  // deno-lint-ignore no-explicit-any
  const deno = (globalThis as any).Deno;
  try {
    if (!isDeno || deno.build?.os !== "linux") return false;
    if (deno.permissions.querySync({ name: "ffi" }).state !== "granted") return false;
    const lib = deno.dlopen("libc.so.6", { mallopt: { parameters: ["i32", "i32"], result: "i32" } });
    const M_MMAP_THRESHOLD = -3;
    const ok = lib.symbols.mallopt(M_MMAP_THRESHOLD, mmapThreshold) === 1;
    lib.close();
    if (ok) mallocThreshold = mmapThreshold;
    return ok;
  } catch {
    return false; // musl or another libc: no mallopt
  }
}

/** The tuning part of SessionOptions, as resolved for one backend (part of the cache key). */
export interface SessionTuning {
  memArena?: boolean;
  memPattern?: boolean;
  executionMode: "sequential" | "parallel";
  graphOptimizationLevel: "disabled" | "basic" | "extended" | "all";
  profile?: string;
}

/** Resolves the tuning options a session on `backend` gets (defaults filled in; undefined = ORT's). */
export function sessionTuning(backend: ResolvedBackend, opts: SessionOptions = {}): SessionTuning {
  const executionMode = opts.executionMode ?? "sequential";
  const graphOptimizationLevel = opts.graphOptimizationLevel ?? "all";
  if (executionMode !== "sequential" && executionMode !== "parallel") {
    throw new Error(`executionMode must be "sequential" or "parallel", got "${executionMode}"`);
  }
  if (!["disabled", "basic", "extended", "all"].includes(graphOptimizationLevel)) {
    throw new Error(
      `graphOptimizationLevel must be disabled, basic, extended or all, got "${graphOptimizationLevel}"`,
    );
  }
  if (
    opts.profile !== undefined && (backend !== "node" || typeof opts.profile !== "string" || !opts.profile)
  ) {
    throw new Error(`profile needs a non-empty file prefix and onnxruntime-node (backend is ${backend})`);
  }
  return {
    memArena: opts.memArena ?? (backend === "node" ? false : undefined),
    memPattern: opts.memPattern,
    executionMode,
    graphOptimizationLevel,
    ...(opts.profile ? { profile: opts.profile } : {}),
  };
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
const NODE_SPEC = ORT_NODE;

const modules = new Map<ResolvedBackend, Promise<Ort | null>>();

/** Loads the onnxruntime module for a backend, or null when it is unavailable here. */
export function loadOrt(backend: ResolvedBackend): Promise<Ort | null> {
  let p = modules.get(backend);
  if (!p) {
    p = (async () => {
      try {
        if (backend === "node") return (isDeno || isNode) ? await import(NODE_SPEC) : null;
        if (backend === "wasm") return await importOrtWeb();
        if (!(await webgpuAdapter())) return null;
        return await importOrtWebGpu();
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
      const gpu = (globalThis.navigator as { gpu?: GpuLike } | undefined)?.gpu;
      const facts = await readAdapterFacts(gpu);
      if (!facts) return { available: false, fallback: false };
      // Software adapters (SwiftShader, llvmpipe, …) by name too: some do not set isFallbackAdapter.
      const v = classifyAdapter(facts);
      return { available: true, fallback: v.software, description: v.label };
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
  const tuning = sessionTuning(backend, opts);
  const key = `${await digest(model)}|${backend}|${backend === "node" || backend === "wasm" ? threads : 1}|${
    JSON.stringify(tuning)
  }`;
  if (!opts.noCache) {
    const hit = sessions.get(key);
    if (hit) return hit;
  }
  const p = open(model, backend, threads, tuning, key, opts.mallocMmapThreshold);
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
  tuning: SessionTuning,
  key: string,
  mallocOpt: number | false | undefined,
): Promise<GraphSession> {
  const ort = await loadOrt(backend);
  // Severity 3 = errors only: ORT otherwise warns on every CPU-placed shape op.
  const so: Record<string, unknown> = {
    graphOptimizationLevel: tuning.graphOptimizationLevel,
    executionMode: tuning.executionMode,
    logSeverityLevel: 3,
  };
  if (tuning.memArena !== undefined) so.enableCpuMemArena = tuning.memArena;
  if (tuning.memPattern !== undefined) so.enableMemPattern = tuning.memPattern;
  if (backend !== "node") ort.env.logLevel = "error";
  if (backend === "node") {
    if (mallocOpt !== false) tuneNativeMalloc(mallocOpt ?? DEFAULT_MMAP_THRESHOLD);
    so.executionProviders = ["cpu"];
    so.intraOpNumThreads = threads;
    if (tuning.profile) {
      so.enableProfiling = true;
      so.profileFilePrefix = tuning.profile;
    }
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
