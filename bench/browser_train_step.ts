/**
 * The tiny-model LoRA train step inside headless Chromium, on WASM (2 threads, cross-origin
 * isolated) and WebGPU, in one page served over loopback with the coordinator's COOP/COEP headers
 * (server/ui). The model is runtime/model/tiny.ts's generator at 2 layers, hidden 64, GQA 4:2 with
 * random weights and LoRA r=8 on q,v; the batch is 4 x 64 tokens, the same one every step.
 *
 *   deno run -A bench/browser_train_step.ts [--steps=N]     (or: deno task bench browser)
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
 */
import { parseArgs } from "node:util";
import * as esbuild from "esbuild";
import { Hono } from "hono";
import type { Page } from "playwright-core";
import { bundleEntry } from "../scripts/bundle.ts";
import { ISOLATION_HEADERS, mountUi } from "../server/ui/mod.ts";
import { chromiumPath, launchBrowser, serveLoopback, type TestBrowser } from "../tests/browser_harness.ts";
import { fmtSpread, load1 } from "./machine.ts";
import type { BenchPage, PageBackend, PageInfo, Timed } from "./browser/train_step_page.ts";

const THREADS = 2;
const BACKENDS: PageBackend[] = ["wasm", "webgpu"];
/** A page call that takes longer than this has hung (a SwiftShader step takes seconds, the first ~10 s). */
const CALL_TIMEOUT_MS = 600_000;

/** Options of `run`. */
export interface BrowserTrainStepOptions {
  /** Steady steps per backend after the first (default 5). */
  steps?: number;
}

/** Calls `perfitBench[name](...args)` in the page (bench/browser/train_step_page.ts). */
async function call<K extends keyof BenchPage>(
  page: Page,
  name: K,
  ...args: Parameters<BenchPage[K]>
): Promise<Awaited<ReturnType<BenchPage[K]>>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${name} took over ${CALL_TIMEOUT_MS / 1000} s`)),
      CALL_TIMEOUT_MS,
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
  steps: number,
  progress: (msg: string) => void,
): Promise<Record<PageBackend, Measured>> {
  const m = { wasm: { steady: [] }, webgpu: { steady: [] } } as Record<PageBackend, Measured>;
  const live = () => BACKENDS.filter((b) => !m[b].error);
  for (const b of BACKENDS) {
    m[b].createS = record(m[b], await call(page, "create", b, THREADS), "session creation");
    progress(`${b} session: ${m[b].error ?? `${m[b].createS!.toFixed(1)} s`}`);
  }
  for (const b of live()) {
    m[b].firstS = record(m[b], await call(page, "step", b), "first step");
    progress(`${b} first step: ${m[b].error ?? `${m[b].firstS!.toFixed(2)} s`}`);
  }
  for (let i = 0; i < steps; i++) {
    for (const b of live()) {
      const s = record(m[b], await call(page, "step", b), `steady step ${i + 1}`);
      if (s !== undefined) m[b].steady.push(s);
      progress(`${b} step ${i + 1}/${steps}: ${m[b].error ?? `${s!.toFixed(2)} s`}`);
    }
  }
  return m;
}

function adapterText(a: PageInfo["adapter"]): string {
  if (!a) return "none (navigator.gpu gave no adapter)";
  const name = [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(" / ") || "unnamed";
  return `${name}; isFallbackAdapter: ${a.fallback}`;
}

/** Markdown section: one row per backend. */
export async function run(opts: BrowserTrainStepOptions = {}): Promise<string> {
  const steps = opts.steps ?? 5;
  if (!(Number.isInteger(steps) && steps >= 1)) {
    throw new Error(`--steps must be a positive integer, got ${steps}`);
  }
  const title = "## Browser: tiny LoRA train step in headless Chromium (WASM and WebGPU)";
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
  let b: TestBrowser | undefined;
  let info: PageInfo, version: string, m: Record<PageBackend, Measured>;
  try {
    b = await launchBrowser(exe);
    version = await chromiumVersion(b);
    await b.page.goto(srv.url);
    await b.page.waitForFunction(() => "perfitBench" in globalThis, undefined, { timeout: 120_000 })
      .catch((e) => {
        throw new Error(`the bench page did not start: ${e.message}\n${b!.logs.join("\n")}`);
      });
    info = await call(b.page, "info");
    progress(`${version}, isolated: ${info.crossOriginIsolated}, adapter: ${adapterText(info.adapter)}`);
    if (!info.crossOriginIsolated) {
      throw new Error("the page is not cross-origin isolated: WASM would run on one thread");
    }
    m = await measure(b.page, steps, progress);
  } finally {
    await b?.close();
    await srv.close();
  }
  const s = info.shape;
  const tokens = s.batch * s.seq;
  const rows = BACKENDS.map((k) => {
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
  const errors = BACKENDS.filter((k) => m[k].error).map((k) => `- ${k} failed at ${m[k].error}`);
  return [
    title,
    ``,
    `Tiny LLaMA (random weights): ${s.layers} layers, hidden ${s.hidden}, GQA ${s.heads}, vocab ${s.vocab}; ` +
    `LoRA r=8 on q,v; batch ${s.batch} x seq ${s.seq} (${tokens} tokens a step). One page, both sessions; ` +
    `steady steps interleaved (WASM, WebGPU, ...), timed in the page.`,
    ``,
    `- Chromium: ${version} (headless, tests/browser_harness.ts flags)`,
    `- crossOriginIsolated: ${info.crossOriginIsolated}; navigator.hardwareConcurrency: ${info.hardwareConcurrency}; ` +
    `WASM threads requested: ${THREADS}`,
    `- WebGPU adapter: ${adapterText(info.adapter)}`,
    `- load average (1 min): ${loadBefore} before, ${load1()} after`,
    ``,
    `| backend | session creation s | first step s | steady steps | steady step s, median (range) | tokens/s, median (range) | loss |`,
    `|---|---:|---:|---:|---:|---:|---:|`,
    ...rows,
    ...(errors.length ? [``, ...errors] : []),
  ].join("\n");
}

if (import.meta.main) {
  const usage = "usage: deno run -A bench/browser_train_step.ts [--steps=N]";
  let steps: number | undefined;
  try {
    const { values } = parseArgs({ args: Deno.args, options: { steps: { type: "string" } }, strict: true });
    if (values.steps !== undefined) {
      steps = Number(values.steps);
      if (!/^\d+$/.test(values.steps) || steps < 1) {
        throw new Error(`--steps must be a positive integer, got "${values.steps}"`);
      }
    }
  } catch (e) {
    console.error(`browser_train_step: ${(e as Error).message}\n${usage}`);
    Deno.exit(2);
  }
  console.log(await run({ steps }));
}
