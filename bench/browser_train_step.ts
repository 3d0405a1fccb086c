/**
 * The LoRA train step inside headless Chromium, in one page served over loopback with the
 * coordinator's COOP/COEP headers (server/ui), so WASM runs on 2 threads, cross-origin isolated.
 *
 *   deno run -A bench/browser_train_step.ts [--steps=N] [--model=tiny|135m|360m] [--checkpoint]
 *     [--weight-mode=inputs|constants] [--batch=N --seq=N] [--threads=N] [--arena=on|off]
 *                                                           (or: deno task bench browser)
 *
 * `--model=tiny` (the default): runtime/model/tiny.ts's generator at 2 layers, hidden 64, GQA 4:2
 * with random weights and LoRA r=8 on q,v, batch 4 x 64 tokens, the same one every step; on WASM
 * and WebGPU.
 *
 * `--model=135m`: bench/model_135m.ts's random SmolLM2-135M shape and batch (4 x 256), generated in
 * the page with the Deno bench's seeds (so the losses should agree), LoRA r=8 on q,v, on WASM only:
 * SwiftShader WebGPU would take many minutes a step. Default weight mode `inputs`, as the Deno
 * bench. This is the "Real sizes" question: does the step fit in 2 GB in a browser, and under
 * wasm32's 4 GB heap at all?
 *
 * `--model=360m`: the same for the SmolLM2-360M shape (1.45 GB of f32 weights), to find the
 * settings under which its step fits a tab at all. `--batch`/`--seq` change the SmolLM2 shapes'
 * batch (default 4 x 256); `--threads` the WASM threads (default 2); `--arena` ORT's CPU memory
 * arena (default ORT's own, on).
 *
 * Per backend: session creation, first step (WebGPU compiles its shaders there), then `--steps`
 * steady steps (default 5), median and range. Both sessions live in the same page, which is what a
 * browser client has: the bundler gives the page one ORT, the WebGPU build, which also runs the
 * WASM EP. So the steady steps are interleaved (WASM, WebGPU, WASM, ...) and load from other
 * processes falls on both alike. One consequence: `ort.env.wasm.numThreads` is global to that ORT
 * and fixed when it first initializes, so the WebGPU session's CPU-side kernels get the same 2
 * threads.
 *
 * Headless Chromium on a machine without a GPU offers WebGPU only through SwiftShader, a CPU
 * renderer, so a WebGPU step there costs seconds; the adapter is named in the output so such a
 * figure is not read as a GPU's. Steps are timed in the page, so the DevTools round trip is not in
 * them.
 *
 * Memory: a page's memory is not the Deno process's, so the peaks are read from /proc/<pid>/status
 * (VmHWM, the kernel's resident high-water mark) of every Chromium process below this one, sampled
 * through the run so a process that dies (a renderer killed for memory) keeps its last figure.
 * The renderer is the page's process (its ORT worker threads included); the GPU, utility and
 * zygote processes are listed beside it. The page adds what it can see itself.
 */
import { parseArgs } from "node:util";
import * as esbuild from "esbuild";
import { Hono } from "hono";
import type { Page } from "playwright-core";
import { bundleEntry } from "../scripts/bundle.ts";
import { ISOLATION_HEADERS, mountUi } from "../server/ui/mod.ts";
import { chromiumPath, launchBrowser, serveLoopback, type TestBrowser } from "../tests/browser_harness.ts";
import { fmtSpread, load1 } from "./machine.ts";
import { ChromiumMemory, type ProcPeak, SAMPLE_MS } from "./proc_memory.ts";
import type { WeightMode } from "../runtime/model/train_step.ts";
import type {
  BenchPage,
  PageBackend,
  PageInfo,
  PageMemory,
  PageModel,
  PageShape,
  Timed,
} from "./browser/train_step_page.ts";

const DEFAULT_THREADS = 2;
const MODELS: PageModel[] = ["tiny", "135m", "360m"];
const WEIGHT_MODES: WeightMode[] = ["inputs", "constants"];
/**
 * A page call that takes longer than this has hung: a tiny SwiftShader step takes seconds (the
 * first ~10 s); a 135M WASM step ~40 s on a busy 2-core machine, whose processes may also be
 * paused for minutes.
 */
const CALL_TIMEOUT_MS: Record<PageModel, number> = { tiny: 600_000, "135m": 3_600_000, "360m": 3_600_000 };
const MB = 2 ** 20;

/** Options of `run`. */
export interface BrowserTrainStepOptions {
  /** Steady steps per backend after the first (default 5 for the tiny model, 2 for 135M). */
  steps?: number;
  /** Default "tiny". */
  model?: PageModel;
  /** Rows and tokens per row of a SmolLM2 shape's batch (default 4 x 256; the tiny model's is fixed). */
  batch?: number;
  seq?: number;
  /** WASM threads (`ort.env.wasm.numThreads`, default 2). */
  threads?: number;
  /** ORT's CPU memory arena (`SessionTuningOptions.memArena`); default ORT's own (on). */
  memArena?: boolean;
  /** Activation checkpointing (`EngineOptions.checkpoint`, default false). */
  checkpoint?: boolean;
  /** Default: "inputs" for 135M (as bench/model_train_step.ts), the engine's ("constants") for tiny. */
  weightMode?: WeightMode;
}

/** Calls `perfitBench[name](...args)` in the page (bench/browser/train_step_page.ts). */
async function call<K extends keyof BenchPage>(
  page: Page,
  timeoutMs: number,
  name: K,
  ...args: Parameters<BenchPage[K]>
): Promise<Awaited<ReturnType<BenchPage[K]>>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${name} took over ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([
      page.evaluate(([n, a]) => {
        const p = (globalThis as unknown as { perfitBench: Record<string, (...x: unknown[]) => unknown> })
          .perfitBench;
        return p[n](...a);
      }, [name, args] as [string, unknown[]]) as Promise<Awaited<ReturnType<BenchPage[K]>>>,
      hung,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Per-backend figures; `error` ends that backend's measurement where it happened. */
interface Measured {
  createS?: number;
  firstS?: number;
  steady: number[];
  threads?: number;
  loss?: number;
  error?: string;
}

function record(m: Measured, r: Timed, what: string): number | undefined {
  if ("error" in r) {
    m.error = `${what}: ${r.error}`;
    return undefined;
  }
  m.threads = r.threads;
  if (Number.isFinite(r.loss)) m.loss = r.loss;
  return r.s;
}

/** A page call whose failure (the renderer killed for memory, a hang) is a result, not a crash of the bench. */
function tryCall(page: Page, timeoutMs: number, name: "create" | "step", ...args: unknown[]): Promise<Timed> {
  return (call as (p: Page, t: number, n: string, ...a: unknown[]) => Promise<Timed>)(
    page,
    timeoutMs,
    name,
    ...args,
  )
    .catch((e: Error) => ({ error: `${e.message.split("\n")[0]} (the page call failed)` }));
}

async function chromiumVersion(b: TestBrowser): Promise<string> {
  // navigator.userAgent reports only the major version (User-Agent reduction).
  const cdp = await b.context.newCDPSession(b.page);
  try {
    return (await cdp.send("Browser.getVersion")).product;
  } finally {
    await cdp.detach();
  }
}

async function measure(
  page: Page,
  backends: PageBackend[],
  steps: number,
  spec: {
    timeoutMs: number;
    weightMode?: WeightMode;
    checkpoint: boolean;
    threads: number;
    memArena?: boolean;
  },
  phase: (msg: string) => void,
): Promise<Record<PageBackend, Measured>> {
  const m = Object.fromEntries(backends.map((b) => [b, { steady: [] }])) as unknown as Record<
    PageBackend,
    Measured
  >;
  const live = () => backends.filter((b) => !m[b].error);
  const t = spec.timeoutMs;
  for (const b of backends) {
    const r = await tryCall(page, t, "create", b, spec.threads, {
      weightMode: spec.weightMode,
      checkpoint: spec.checkpoint,
      memArena: spec.memArena,
    });
    m[b].createS = record(m[b], r, "session creation");
    phase(`${b} session: ${m[b].error ?? `${m[b].createS!.toFixed(1)} s`}`);
  }
  for (const b of live()) {
    m[b].firstS = record(m[b], await tryCall(page, t, "step", b), "first step");
    phase(`${b} first step: ${m[b].error ?? `${m[b].firstS!.toFixed(2)} s`}`);
  }
  for (let i = 0; i < steps; i++) {
    for (const b of live()) {
      const s = record(m[b], await tryCall(page, t, "step", b), `steady step ${i + 1}`);
      if (s !== undefined) m[b].steady.push(s);
      phase(`${b} step ${i + 1}/${steps}: ${m[b].error ?? `${s!.toFixed(2)} s`}`);
    }
  }
  return m;
}

function adapterText(a: PageInfo["adapter"]): string {
  if (!a) return "none (navigator.gpu gave no adapter)";
  const name = [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(" / ") || "unnamed";
  return `${name}; isFallbackAdapter: ${a.fallback}`;
}

function fmtMb(bytes: number): string {
  return `${(bytes / MB).toFixed(0)} MB`;
}

/**
 * The page's own view of its memory, and V8's over DevTools. measureUserAgentSpecificMemory
 * answers at a garbage collection, so one is forced once the measurement has been asked for
 * (headless Chromium 156 still did not answer within 30 s here; the page then says so).
 */
async function pageMemory(b: TestBrowser): Promise<{ inPage: PageMemory | string; devtools: string }> {
  const pending = call(b.page, 120_000, "memory").catch((e: Error) => `failed: ${e.message.split("\n")[0]}`);
  const cdp = await b.context.newCDPSession(b.page);
  let devtools: string;
  try {
    await new Promise((r) => setTimeout(r, 1000));
    await cdp.send("HeapProfiler.collectGarbage");
    // backingStorageSize counts ArrayBuffer contents (the weights' Float32Arrays), outside the V8 heap.
    const h = await cdp.send("Runtime.getHeapUsage");
    devtools = `V8 heap used ${fmtMb(h.usedSize)} of ${fmtMb(h.totalSize)}, ArrayBuffer backing stores ` +
      `${fmtMb((h as { backingStorageSize?: number }).backingStorageSize ?? NaN)}`;
  } catch (e) {
    devtools = `failed: ${(e as Error).message.split("\n")[0]}`;
  } finally {
    await cdp.detach().catch(() => {});
  }
  return { inPage: await pending, devtools };
}

/** The report's memory lines. */
function memoryLines(
  mem: ChromiumMemory,
  phases: string[],
  { inPage, devtools }: { inPage: PageMemory | string; devtools: string },
): string[] {
  const byType = new Map<string, ProcPeak[]>();
  for (const p of mem.procs.values()) byType.set(p.type, [...byType.get(p.type) ?? [], p]);
  const types = [...byType.keys()].sort((a, b) =>
    (a === "renderer" ? -1 : b === "renderer" ? 1 : 0) || a.localeCompare(b)
  );
  const rows = types.map((t) => {
    const ps = byType.get(t)!;
    const hwm = ps.map((p) => p.hwm);
    return `| ${t} | ${ps.length} | ${Math.max(...hwm).toFixed(0)} | ${
      hwm.reduce((a, b) => a + b, 0).toFixed(0)
    } |`;
  });
  let page: string[];
  if (typeof inPage === "string") page = [`- in the page: ${inPage}`];
  else {
    const ua = "error" in inPage.uaSpecific
      ? `unavailable (${inPage.uaSpecific.error})`
      : `${fmtMb(inPage.uaSpecific.bytes)} (${
        inPage.uaSpecific.breakdown.map((x) => `${fmtMb(x.bytes)} ${x.types.join("+") || "untyped"}`).join(
          ", ",
        )
      })`;
    const js = inPage.jsHeap
      ? `used ${fmtMb(inPage.jsHeap.used)}, total ${fmtMb(inPage.jsHeap.total)}, limit ${
        fmtMb(inPage.jsHeap.limit)
      } ` +
        `(Chromium's own figure, coarse without --enable-precise-memory-info; it counts ArrayBuffer contents, ` +
        `compare the DevTools line)`
      : "unavailable";
    const wasm = inPage.wasmMemories.length
      ? inPage.wasmMemories.map(fmtMb).join(", ") +
        " (never shrinks, so this is its peak; wasm32 ceiling 4096 MB)"
      : "none created";
    page = [
      `- in the page, after the last step: performance.measureUserAgentSpecificMemory(): ${ua}`,
      `- performance.memory: ${js}`,
      `- ORT's WASM heap (byteLength of the page's WebAssembly.Memory): ${wasm}`,
    ];
  }
  page.push(`- DevTools Runtime.getHeapUsage, after a forced GC: ${devtools}`);
  return [
    `Chromium's processes: VmHWM (resident high-water mark) from /proc/<pid>/status of every Chromium ` +
    `process below this Deno process, sampled every ${
      SAMPLE_MS / 1000
    } s. The page's memory is its renderer's (its ORT worker threads run in it): the renderer with the ` +
    `largest peak; the other renderers (spare, initial page) and the other processes are Chromium's own.`,
    ``,
    `| process type | processes | peak VmHWM MB, largest | sum of the peaks MB |`,
    `|---|---:|---:|---:|`,
    ...rows,
    ``,
    `- highest sampled sum of VmRSS: renderers ${mem.rendererRssSum.toFixed(0)} MB, all Chromium processes ` +
    `${mem.rssSum.toFixed(0)} MB`,
    `- renderer by phase: ${phases.join("; ")}`,
    ...page,
  ];
}

/** The options with their defaults, or an error naming the bad one (the command line's values are unchecked strings). Exported for its test. */
export function resolveOptions(opts: BrowserTrainStepOptions) {
  const model = opts.model ?? "tiny";
  if (!MODELS.includes(model)) throw new Error(`--model must be one of ${MODELS.join(", ")}, got "${model}"`);
  if (opts.weightMode !== undefined && !WEIGHT_MODES.includes(opts.weightMode)) {
    throw new Error(`--weight-mode must be one of ${WEIGHT_MODES.join(", ")}, got "${opts.weightMode}"`);
  }
  const big = model !== "tiny";
  const steps = opts.steps ?? (big ? 2 : 5);
  const threads = opts.threads ?? DEFAULT_THREADS;
  for (
    const [name, v] of [["steps", steps], ["threads", threads], ["batch", opts.batch], [
      "seq",
      opts.seq,
    ]] as const
  ) {
    if (v !== undefined && !(Number.isInteger(v) && v >= 1)) {
      throw new Error(`--${name} must be a positive integer, got ${v}`);
    }
  }
  if (!big && (opts.batch !== undefined || opts.seq !== undefined)) {
    throw new Error("--batch and --seq apply to the SmolLM2 shapes (135m, 360m), not to tiny");
  }
  if (opts.seq === 1) throw new Error("--seq must be at least 2 (a row predicts its next tokens)");
  return {
    model,
    big,
    steps,
    threads,
    batch: opts.batch,
    seq: opts.seq,
    checkpoint: opts.checkpoint ?? false,
    memArena: opts.memArena,
    weightMode: opts.weightMode ?? (big ? "inputs" as const : undefined),
  };
}

/** Markdown section: one row per backend, then Chromium's memory. */
export async function run(opts: BrowserTrainStepOptions = {}): Promise<string> {
  const { model, big, steps, threads, batch, seq, checkpoint, memArena, weightMode } = resolveOptions(opts);
  const backends: PageBackend[] = big ? ["wasm"] : ["wasm", "webgpu"];
  const name = `SmolLM2-${model.toUpperCase()}`;
  const title = big
    ? `## Browser: ${name}-shape LoRA train step in headless Chromium (WASM; checkpointing ${
      checkpoint ? "on" : "off"
    }, weights as ${weightMode}${
      batch || seq ? `, batch ${batch ?? 4} x ${seq ?? 256}` : ""
    }, ${threads} threads${memArena === undefined ? "" : `, arena ${memArena ? "on" : "off"}`})`
    : "## Browser: tiny LoRA train step in headless Chromium (WASM and WebGPU)";
  const loadBefore = load1();
  const exe = chromiumPath();
  if (exe === null) {
    return `${title}\n\nSkipped: no Chromium (looked at $CHROMIUM_PATH, /usr/bin/chromium, ` +
      `/usr/bin/chromium-browser; \`apt-get install -y chromium\`).`;
  }
  const progress = (msg: string) => console.error(`browser_train_step: ${msg}`);
  const t0 = performance.now();
  let js: string;
  try {
    js = await bundleEntry("bench/browser/train_step_page.ts");
  } finally {
    await esbuild.stop();
  }
  progress(`page bundled in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const app = new Hono();
  mountUi(app); // for /ui/ort/, ORT's runtime files, with the isolation headers
  const page = (body: string, type: string) => () =>
    new Response(body, { headers: { "content-type": type, ...ISOLATION_HEADERS } });
  app.get("/", page(`<!doctype html><script type="module" src="/bench.js"></script>`, "text/html"));
  app.get("/bench.js", page(js, "text/javascript"));
  const srv = serveLoopback(app.fetch);
  const timeoutMs = CALL_TIMEOUT_MS[model];
  let b: TestBrowser | undefined;
  let info: PageInfo, version: string, m: Record<PageBackend, Measured> | undefined;
  let shape: PageShape | undefined, genS: number | undefined, failure: string | undefined;
  let pageMem: Parameters<typeof memoryLines>[2] = { inPage: "not measured", devtools: "not measured" };
  const mem = new ChromiumMemory();
  const phases: string[] = [];
  const phase = (msg: string) => {
    const r = mem.renderer();
    phases.push(`${msg.replace(/:.*/, "")}: ${r}`);
    progress(`${msg} (renderer: ${r})`);
  };
  try {
    b = await launchBrowser(exe);
    version = await chromiumVersion(b);
    await b.page.goto(srv.url);
    await b.page.waitForFunction(() => "perfitBench" in globalThis, undefined, { timeout: 120_000 })
      .catch((e) => {
        throw new Error(`the bench page did not start: ${e.message}\n${b!.logs.join("\n")}`);
      });
    info = await call(b.page, timeoutMs, "info");
    progress(`${version}, isolated: ${info.crossOriginIsolated}, adapter: ${adapterText(info.adapter)}`);
    if (!info.crossOriginIsolated) {
      throw new Error("the page is not cross-origin isolated: WASM would run on one thread");
    }
    phase("page started");
    const loaded = await call(b.page, timeoutMs, "load", model, batch, seq).catch((e: Error) => ({
      error: e.message,
    }));
    if ("error" in loaded) failure = `weight generation: ${loaded.error}`;
    else {
      ({ shape, s: genS } = loaded);
      phase(`weights generated in ${genS.toFixed(1)} s`);
      m = await measure(
        b.page,
        backends,
        steps,
        { timeoutMs, weightMode, checkpoint, threads, memArena },
        phase,
      );
      pageMem = await pageMemory(b);
    }
    mem.sample();
  } finally {
    mem.stop();
    await b?.close();
    await srv.close();
  }
  const lines = [
    title,
    ``,
    ...(shape
      ? [
        `${
          big ? `${name} shape` : "Tiny LLaMA"
        } (random weights): ${shape.layers} layers, hidden ${shape.hidden}, ` +
        `GQA ${shape.heads}, vocab ${shape.vocab}; ${(shape.params / 1e6).toFixed(1)}M base parameters ` +
        `(${
          (shape.params * 4 / MB).toFixed(0)
        } MB as f32); LoRA r=8 on q,v; batch ${shape.batch} x seq ${shape.seq} ` +
        `(${shape.batch * shape.seq} tokens a step). ` +
        (big
          ? `Weights and batch generated in the page by bench/model_135m.ts (the Deno bench's seeds) in ${
            genS!.toFixed(1)
          } s. `
          : `One page, both sessions; steady steps interleaved (WASM, WebGPU, ...). `) +
        `Steps timed in the page.`,
      ]
      : []),
    ``,
    `- Chromium: ${version!} (headless, tests/browser_harness.ts flags)`,
    `- crossOriginIsolated: ${info!.crossOriginIsolated}; navigator.hardwareConcurrency: ${
      info!.hardwareConcurrency
    }; WASM threads requested: ${threads}`,
    ...(big ? [] : [`- WebGPU adapter: ${adapterText(info!.adapter)}`]),
    `- activation checkpointing: ${checkpoint ? "on" : "off"}; weight mode: ${
      weightMode ?? "constants (the engine's browser default)"
    }; ORT CPU memory arena: ${memArena === undefined ? "ORT's default (on)" : memArena ? "on" : "off"}`,
    `- load average (1 min): ${loadBefore} before, ${load1()} after`,
  ];
  if (failure) lines.push(``, `- failed at ${failure}`);
  if (m && shape) {
    const tokens = shape.batch * shape.seq;
    const rows = backends.map((k) => {
      const x = m[k];
      const name = k === "wasm"
        ? `WASM (ort.env.wasm.numThreads ${x.threads ?? "?"})`
        : `WebGPU (${info.adapter?.fallback ? "fallback adapter" : info.adapter ? "adapter" : "no adapter"})`;
      const cell = (v?: number, d = 2) => v === undefined ? "–" : v.toFixed(d);
      const steady = x.steady.length ? fmtSpread(x.steady) : "–";
      const tps = x.steady.length ? fmtSpread(x.steady.map((t) => tokens / t), 0) : "–";
      return `| ${name} | ${cell(x.createS, 1)} | ${
        cell(x.firstS)
      } | ${x.steady.length} | ${steady} | ${tps} | ${cell(x.loss, 3)} |`;
    });
    const errors = backends.filter((k) => m[k].error).map((k) => `- ${k} failed at ${m[k].error}`);
    lines.push(
      ``,
      `| backend | session creation s | first step s | steady steps | steady step s, median (range) | tokens/s, median (range) | loss |`,
      `|---|---:|---:|---:|---:|---:|---:|`,
      ...rows,
      ...(errors.length ? [``, ...errors] : []),
    );
  }
  lines.push(``, ...memoryLines(mem, phases, pageMem));
  return lines.join("\n");
}

if (import.meta.main) {
  const usage =
    "usage: deno run -A bench/browser_train_step.ts [--steps=N] [--model=tiny|135m|360m] [--checkpoint] " +
    "[--weight-mode=inputs|constants] [--batch=N] [--seq=N] [--threads=N] [--arena=on|off]";
  let opts: BrowserTrainStepOptions;
  try {
    const { values } = parseArgs({
      args: Deno.args,
      options: {
        steps: { type: "string" },
        model: { type: "string" },
        checkpoint: { type: "boolean" },
        "weight-mode": { type: "string" },
        batch: { type: "string" },
        seq: { type: "string" },
        threads: { type: "string" },
        arena: { type: "string" },
      },
      strict: true,
    });
    opts = {
      checkpoint: values.checkpoint,
      model: values.model as PageModel | undefined,
      weightMode: values["weight-mode"] as WeightMode | undefined,
    };
    const int = (v: string) => /^\d+$/.test(v) ? Number(v) : NaN;
    if (values.steps !== undefined) opts.steps = int(values.steps);
    if (values.batch !== undefined) opts.batch = int(values.batch);
    if (values.seq !== undefined) opts.seq = int(values.seq);
    if (values.threads !== undefined) opts.threads = int(values.threads);
    if (values.arena !== undefined) {
      if (values.arena !== "on" && values.arena !== "off") {
        throw new Error(`--arena must be on or off, got "${values.arena}"`);
      }
      opts.memArena = values.arena === "on";
    }
    resolveOptions(opts);
  } catch (e) {
    console.error(`browser_train_step: ${(e as Error).message}\n${usage}`);
    Deno.exit(2);
  }
  console.log(await run(opts));
}
