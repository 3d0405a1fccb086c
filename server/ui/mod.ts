/**
 * The coordinator's browser UI: `mountUi(app, deps)` adds
 *   GET /dashboard, GET /client          the two pages
 *   GET /ui/static/*                     stylesheet
 *   GET /ui/dist/*                       the esbuild bundles (prebuilt, or built on first request)
 *   GET /ui/ort/*                        onnxruntime-web's .wasm/.mjs runtime files (ort.env.wasm.wasmPaths)
 *   GET /ui/kernels/perfit_kernels.wasm  the pruning/aggregation SIMD kernels
 *   GET /ui/model/*                      the base model folder browser clients train on (when configured)
 *   GET /ui/api/dashboard                the dashboard payload (web/dashboard/types.ts)
 *   GET /ui/api/info                     what the client page needs to start (model URL, defaults)
 * Every response carries COOP/COEP so pages are cross-origin isolated and ORT can run WASM threads.
 */
import type { Hono } from "../../runtime/deps.ts";
import type { DashboardData } from "../../web/dashboard/types.ts";
import type { RunRecord } from "../records.ts";
import type { AdapterLayoutLike } from "../../runtime/export/types.ts";
import { kvDashboardSource, layoutFromModelDir } from "./dashboard_data.ts";
import { ReadModel } from "../read_model.ts";
import { ISOLATION_HEADERS, safeJoin, serveFile } from "./static.ts";
import { timingSafeEqual } from "../tokens.ts";

/** What the UI needs from the coordinator. Every field is optional. */
export interface UiDeps {
  /** The coordinator's KV store: the dashboard reads runs, rounds, clients, uploads and masks from it. */
  kv?: Deno.Kv;
  /** Overrides the dashboard data source (default: read `kv`). */
  dashboardData?: () => Promise<DashboardData>;
  /** Layout of a run's global adapter, for the budget-spread chart (default: from `modelDir`'s config). */
  layoutFor?: (run: RunRecord) => AdapterLayoutLike | null | Promise<AdapterLayoutLike | null>;
  /** Local base-model folder served at /ui/model/ for browser clients. */
  modelDir?: string;
  /** Name written as `base_model_name_or_path` in adapters exported from the client page. */
  baseModelName?: string;
  /** Repository root holding web/ and node_modules/ (default: two folders above this file). */
  root?: string;
  /**
   * When set, /ui/api/dashboard requires `Authorization: Bearer <token>` (the page forwards the
   * `?token=` of its own URL). Unset, the dashboard is public: run ids, client names, perplexities
   * and mask statistics are visible to anyone who reaches the server. (`server/main.ts` always sets
   * one unless started with `--public-dashboard`.)
   */
  dashboardToken?: string;
  /**
   * How /ui/dist gets its bundles: "prebuilt" (default) serves web/dist as is; a function builds them,
   * once, on the first /ui/dist request (the shell passes the build script's `bundle`, so the server
   * never imports the build tooling itself).
   */
  bundle?: "prebuilt" | (() => Promise<unknown>);
}

const DEFAULT_ROOT = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");

/** Mounts the UI routes on a Hono app (call before any catch-all 404 handler). */
export function mountUi(app: Hono, deps: UiDeps = {}): void {
  const root = deps.root ?? DEFAULT_ROOT;
  const ortDir = `${root}/node_modules/onnxruntime-web/dist`;
  const build = deps.bundle;
  let built: Promise<unknown> | null = typeof build === "function" ? null : Promise.resolve();
  const ensureBundle = () => {
    built ??= (build as () => Promise<unknown>)().catch((e) => {
      built = null; // let a later request retry after a fixed source
      throw e;
    });
    return built;
  };
  const source = deps.dashboardData ?? (deps.kv
    ? kvDashboardSource(new ReadModel(deps.kv), {
      layoutFor: deps.layoutFor ?? (deps.modelDir ? layoutFromModelDir(deps.modelDir) : undefined),
    })
    : null);
  const json = (body: unknown, status = 200) =>
    new Response(JSON.stringify(body), {
      status,
      headers: { "content-type": "application/json", ...ISOLATION_HEADERS },
    });

  app.get("/dashboard", () => serveFile(`${root}/web/dashboard.html`));
  app.get("/client", () => serveFile(`${root}/web/client.html`));
  app.get(
    "/ui/static/*",
    (c) => serveFile(safeJoin(`${root}/web/static`, c.req.path.slice("/ui/static/".length))),
  );
  app.get("/ui/dist/*", async (c) => {
    try {
      await ensureBundle();
    } catch (e) {
      return json({ error: { code: "bundle_failed", message: (e as Error).message } }, 500);
    }
    return serveFile(safeJoin(`${root}/web/dist`, c.req.path.slice("/ui/dist/".length)));
  });
  app.get("/ui/ort/*", (c) => {
    const name = c.req.path.slice("/ui/ort/".length);
    // Only ORT's runtime files, not its whole dist folder.
    if (!/^ort-wasm-simd-threaded(\.[a-z]+)?\.(wasm|mjs)$/.test(name)) return serveFile(null);
    return serveFile(safeJoin(ortDir, name));
  });
  app.get("/ui/kernels/perfit_kernels.wasm", () => serveFile(`${root}/wasm/perfit_kernels.wasm`));
  app.get("/ui/model/*", (c) => {
    if (!deps.modelDir) return serveFile(null);
    return serveFile(safeJoin(deps.modelDir, c.req.path.slice("/ui/model/".length)));
  });
  app.get(
    "/ui/api/info",
    () =>
      json({
        modelUrl: deps.modelDir ? "/ui/model" : null,
        baseModel: deps.baseModelName ?? null,
        ortWasmPath: "/ui/ort/",
      }),
  );
  app.get("/ui/api/dashboard", async (c) => {
    if (deps.dashboardToken !== undefined) {
      const m = /^Bearer\s+(\S+)$/i.exec(c.req.header("authorization") ?? "");
      const enc = new TextEncoder();
      if (!m || !timingSafeEqual(enc.encode(m[1]), enc.encode(deps.dashboardToken))) {
        return json({
          error: { code: "unauthorized", message: "dashboard token required (open /dashboard?token=...)" },
        }, 401);
      }
    }
    if (!source) {
      return json({
        error: { code: "no_source", message: "the UI was mounted without a KV store or data source" },
      }, 503);
    }
    try {
      return json(await source());
    } catch (e) {
      return json({ error: { code: "dashboard_failed", message: (e as Error).message } }, 500);
    }
  });
}

export { kvDashboardSource, layoutFromModelDir } from "./dashboard_data.ts";
export { ISOLATION_HEADERS } from "./static.ts";
