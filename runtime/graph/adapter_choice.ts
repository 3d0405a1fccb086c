/**
 * Which backend the client page trains on. A WebGPU adapter may be a software rasterizer (SwiftShader
 * in headless or GPU-less Chromium, Mesa's llvmpipe/lavapipe, Windows' WARP): it works, but trains far
 * slower than ORT's WASM backend on the same CPU, so `auto` takes WASM over it. The decision is a pure
 * function of what the adapter says about itself (`adapter.info`, or `requestAdapterInfo()` in older
 * browsers, and `isFallbackAdapter`); `readAdapterFacts` only gathers those facts.
 */

/** What a WebGPU adapter says about itself (GPUAdapterInfo fields and the fallback flag). */
export interface AdapterFacts {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  /** `adapter.info.isFallbackAdapter` (newer browsers) or the deprecated `adapter.isFallbackAdapter`. */
  isFallbackAdapter?: boolean;
}

/** The page's reading of the adapter: present at all, software or hardware, and a label for people. */
export interface AdapterVerdict {
  present: boolean;
  software: boolean;
  /** e.g. "WebGPU adapter: google swiftshader (software: architecture swiftshader)". */
  label: string;
  /** Why it counts as software ("" for hardware or no adapter). */
  why: string;
}

/** Names of software WebGPU implementations as adapters report them. */
const SOFTWARE = /swiftshader|llvmpipe|lavapipe|softpipe|microsoft basic render|\bwarp\b|software/i;

/** Classifies an adapter from its facts (null: navigator.gpu gave no adapter). */
export function classifyAdapter(facts: AdapterFacts | null): AdapterVerdict {
  if (!facts) return { present: false, software: false, label: "no WebGPU adapter", why: "" };
  const name = [facts.vendor, facts.architecture, facts.device, facts.description]
    .map((s) => (s ?? "").trim())
    .filter((s, i, all) => s !== "" && all.indexOf(s) === i)
    .join(" ") || "unnamed";
  let why = "";
  if (facts.isFallbackAdapter) why = "the browser marks it as a fallback adapter";
  else {
    for (const k of ["architecture", "description", "device", "vendor"] as const) {
      const m = SOFTWARE.exec(facts[k] ?? "");
      if (m) {
        why = `${k} "${facts[k]}" names a software renderer`;
        break;
      }
    }
  }
  const software = why !== "";
  return {
    present: true,
    software,
    label: `WebGPU adapter: ${name}${software ? " (software, runs on the CPU)" : ""}`,
    why,
  };
}

/** The backend a page asked for. */
export type RequestedBackend = "auto" | "webgpu" | "wasm";

/** The backend the page trains on, and a sentence on why. */
export interface BackendChoice {
  backend: "webgpu" | "wasm";
  why: string;
}

/**
 * Picks the backend: `wasm` and `webgpu` as asked (WebGPU without any adapter is an error, not a
 * silent switch); `auto` takes a hardware adapter, and WASM when there is none or it is software.
 */
export function chooseBackend(requested: RequestedBackend, adapter: AdapterVerdict): BackendChoice {
  if (requested === "wasm") return { backend: "wasm", why: "WASM, as asked" };
  if (requested === "webgpu") {
    if (!adapter.present) {
      throw new Error("WebGPU was asked for, but this browser offers no WebGPU adapter: pick auto or WASM");
    }
    return {
      backend: "webgpu",
      why: adapter.software
        ? `WebGPU, as asked, on a software adapter (${adapter.why}): expect it to be slower than WASM`
        : "WebGPU, as asked",
    };
  }
  if (!adapter.present) return { backend: "wasm", why: "auto: no WebGPU adapter, so WASM" };
  if (adapter.software) {
    return { backend: "wasm", why: `auto: the WebGPU adapter is software (${adapter.why}), so WASM` };
  }
  return { backend: "webgpu", why: "auto: a hardware WebGPU adapter" };
}

/** Minimal shape of `navigator.gpu` this module reads. */
export interface GpuLike {
  requestAdapter(): Promise<
    {
      info?: AdapterFacts;
      isFallbackAdapter?: boolean;
      requestAdapterInfo?: () => Promise<AdapterFacts>;
    } | null
  >;
}

/** Reads the default adapter's facts from `navigator.gpu` (null when there is no adapter). */
export async function readAdapterFacts(gpu: GpuLike | undefined): Promise<AdapterFacts | null> {
  if (!gpu) return null;
  let a;
  try {
    a = await gpu.requestAdapter();
  } catch {
    return null;
  }
  if (!a) return null;
  let info: AdapterFacts = a.info ?? {};
  if (!a.info && typeof a.requestAdapterInfo === "function") {
    info = await a.requestAdapterInfo().catch(() => ({}));
  }
  return {
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    isFallbackAdapter: info.isFallbackAdapter ?? a.isFallbackAdapter,
  };
}
