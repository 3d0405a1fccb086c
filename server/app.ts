/**
 * The coordinator's HTTP surface: a Hono app over a `Coordinator`. Runs the same on a local Deno
 * (KV file) and on Deno Deploy (distributed KV). Middleware, in order: errors -> CORS -> per-IP rate
 * limit -> route (auth, per-route body limit, validation). `createApp` returns the Hono app so other
 * areas can mount extra routes (e.g. `app.route("/ui", ui)`) before serving.
 */
import { Hono } from "hono";
import type { Context } from "hono";
import { cors } from "hono/cors";
import { ApiError, invalid } from "./errors.ts";
import { adminAuth, adminOrClientAuth, type AuthDeps, clientAuth, type ClientVars } from "./auth.ts";
import { idParam, intParam } from "./params.ts";
import { readBody, readJson } from "./body.ts";
import { type RateLimit, TokenBuckets } from "./ratelimit.ts";
import { sha256Hex, TokenSigner } from "./tokens.ts";
import { Coordinator, RetryableError } from "./coordinator.ts";
import { parseRunConfig } from "./run_config.ts";
import type { RunRecord } from "./records.ts";
import { decodeUpdate, encodeSlice, WireError } from "../runtime/client/wire.ts";
import { encodeSafetensors } from "../runtime/io/safetensors.ts";
import { openapi } from "./openapi.ts";
import { Semaphore } from "./semaphore.ts";
import { defaultFolder, InlineFolder } from "./folder.ts";

/** Server settings (main.ts fills them from flags/env; tests pass them directly). */
export interface ServerConfig {
  /** Admin bearer token in clear (tests), or… */
  adminToken?: string;
  /** …its SHA-256 hex (what main.ts persists). One of the two is required. */
  adminTokenHash?: string;
  /** HMAC secret for client tokens (≥ 16 chars). */
  secret: string;
  /** Allowed CORS origins; "*" for any; empty/undefined = no CORS headers. */
  corsOrigins?: string[] | "*";
  /** Token buckets; rate 0 disables. Defaults: ip 50/s burst 100, client 10/s burst 40. */
  rateLimit?: { ip?: RateLimit; client?: RateLimit };
  /** Body limit of JSON routes (default 64 KiB). */
  maxJsonBytes?: number;
  /** Upper bound of any upload body (default 256 MiB); per run it is also capped by the adapter size. */
  maxUploadBytes?: number;
  /** Upload bodies read and decoded at once (default 8); the rest wait unread. */
  maxConcurrentUploads?: number;
  /** Interval of the round-deadline ticker in ms (default 1000; 0 = no timer, deadlines close lazily). */
  tickMs?: number;
  /**
   * Fold uploads into the accumulators on a Worker thread (default: where the platform has Workers
   * and SharedArrayBuffer); false folds on the request thread, as on platforms without Workers.
   */
  foldWorker?: boolean;
}

/** What `createApp` needs. */
export interface AppOptions {
  kv: Deno.Kv;
  config: ServerConfig;
  /** Clock (ms since epoch); tests inject one to cross deadlines. */
  now?: () => number;
}

/** The Hono app plus the coordinator behind it and a `close()` that stops timers and drains commits. */
export type PerfitApp = Hono & { coordinator: Coordinator; close(): Promise<void> };

const VERSION = "0.1.0";

function remoteIp(c: Context): string {
  const info = c.env as { remoteAddr?: { hostname?: string } } | undefined;
  return info?.remoteAddr?.hostname ?? "local";
}

/** Builds the coordinator app on an open KV. */
export function createApp(opts: AppOptions): PerfitApp {
  const { kv, config } = opts;
  const now = opts.now ?? Date.now;
  if (!config.adminToken && !config.adminTokenHash) {
    throw new Error("ServerConfig needs adminToken or adminTokenHash");
  }
  const adminHash = config.adminTokenHash
    ? Promise.resolve(config.adminTokenHash)
    : sha256Hex(config.adminToken!);
  const signer = TokenSigner.create(config.secret);
  signer.catch(() => {});
  const coord = new Coordinator(kv, now, config.foldWorker === false ? new InlineFolder() : defaultFolder());
  const ipBuckets = new TokenBuckets(config.rateLimit?.ip ?? { rate: 50, burst: 100 }, now);
  const clientBuckets = new TokenBuckets(config.rateLimit?.client ?? { rate: 10, burst: 40 }, now);
  const maxJson = config.maxJsonBytes ?? 64 * 1024;
  const maxUpload = config.maxUploadBytes ?? 256 * 1024 * 1024;
  const uploadPermits = new Semaphore(Math.max(1, config.maxConcurrentUploads ?? 8));

  const limited = (buckets: TokenBuckets, key: string) => {
    const wait = buckets.take(key);
    if (wait > 0) {
      throw new ApiError(429, "rate_limited", "too many requests", {
        "retry-after": String(Math.ceil(wait)),
      });
    }
  };

  const auth: AuthDeps = {
    adminHash,
    signer,
    clientRecord: (run, client) => coord.client(run, client),
    clientBuckets,
    limit: limited,
  };
  const admin = adminAuth(auth);
  const adminOrClient = adminOrClientAuth(auth);

  const app = new Hono();

  app.onError((err, c) => {
    if (err instanceof ApiError) {
      for (const [k, v] of Object.entries(err.headers)) c.header(k, v);
      return c.json({ error: { code: err.code, message: err.message } }, err.status as 400);
    }
    if (err instanceof WireError) {
      return c.json({ error: { code: err.code, message: err.message } }, err.status);
    }
    // SQLite busy (two processes on one KV file) is transient: the client should retry.
    if (err instanceof RetryableError || /database is locked/.test(String((err as Error)?.message))) {
      c.header("retry-after", "1");
      return c.json({ error: { code: "retry", message: err.message } }, 503);
    }
    console.error("perfit server: unhandled error", err);
    return c.json({ error: { code: "internal", message: "internal error" } }, 500);
  });
  app.notFound((c) =>
    c.json({ error: { code: "not_found", message: `no route ${c.req.method} ${c.req.path}` } }, 404)
  );

  if (config.corsOrigins && (config.corsOrigins === "*" || config.corsOrigins.length > 0)) {
    app.use(
      "*",
      cors({
        origin: config.corsOrigins === "*" ? "*" : config.corsOrigins,
        allowHeaders: ["authorization", "content-type"],
        allowMethods: ["GET", "POST", "OPTIONS"],
        maxAge: 600,
      }),
    );
  }
  app.use("/v1/*", async (c, next) => {
    limited(ipBuckets, remoteIp(c));
    await next();
  });

  app.get("/health", (c) => c.json({ ok: true, version: VERSION, time: now() }));
  app.get("/openapi.json", (c) => c.json(openapi));

  const runView = (run: RunRecord) => run;

  app.post("/v1/runs", admin, async (c) => {
    const cfg = parseRunConfig(await readJson(c.req.raw, maxJson));
    return c.json({ run: runView(await coord.createRun(cfg)) }, 201);
  });

  app.get("/v1/runs", admin, async (c) => {
    return c.json({ runs: (await coord.listRuns()).map(runView) });
  });

  app.get("/v1/runs/:run", adminOrClient, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const { run: r, round } = await coord.getRun(run);
    return c.json({ run: runView(r), round });
  });

  app.post("/v1/runs/:run/join", async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const body = await readJson(c.req.raw, maxJson);
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      throw invalid("bad_body", "join body must be an object");
    }
    const { name, tier } = body as Record<string, unknown>;
    if (name !== undefined && (typeof name !== "string" || name.length > 100)) {
      throw invalid("bad_body", "name must be a string of ≤ 100 characters");
    }
    if (tier !== undefined && typeof tier !== "string") throw invalid("bad_body", "tier must be a string");
    const rec = await coord.join(run, { name: name as string | undefined, tier: tier as string | undefined });
    const token = await (await signer).sign({ run, client: rec.id, iat: now() });
    const { run: r } = await coord.getRun(run);
    const cfg = r.config;
    return c.json({
      run,
      clientId: rec.id,
      token,
      tier: rec.tier,
      expansion: rec.expansion,
      rank: cfg.lora.rank * rec.expansion,
      budget: cfg.budget,
      adapterSize: cfg.adapterSize,
      method: cfg.method,
    }, 201);
  });

  // Every client route: a token of this run and of this very client (`c.var.client`).
  const client = new Hono<ClientVars>();
  client.use("*", clientAuth(auth));

  client.get("/task", async (c) => {
    const me = c.var.client;
    return c.json(await coord.task(me.run, me));
  });

  client.get("/slice", async (c) => {
    const me = c.var.client;
    const body = encodeSlice(await coord.slice(me.run, me.id));
    return c.body(body as Uint8Array<ArrayBuffer>, 200, { "content-type": "application/octet-stream" });
  });

  client.post("/rounds/:round/update", async (c) => {
    const { run, id: clientId } = c.var.client;
    const round = intParam(c.req.param("round"), "round");
    // No revalidation read here: the upload's group commit checks the round's versionstamp.
    const { run: r } = await coord.getRun(run, false);
    const n = r.config.adapterSize;
    // Dense F32 values + U8 mask is the largest legal form; 64 KiB covers header and metadata.
    const limit = Math.min(maxUpload, n * 5 + 64 * 1024);
    // The body goes out of scope before the upload waits for its group commit, so a request
    // parked on the commit holds only its mask bits (the values are folded and dropped).
    // Bodies not yet admitted stay in the socket, so server memory is bounded by the permits, not
    // by how many clients upload at once.
    const arrived = coord.expectUpload(run);
    try {
      const { u, uploadId } = await uploadPermits.run(async () => {
        const body = await readBody(c.req.raw, limit);
        const u = decodeUpdate(body, n);
        return { u, uploadId: Coordinator.uploadId(body) };
      });
      const res = await coord.upload(run, clientId, round, u, uploadId, arrived);
      return c.json(res, res.status === "accepted" ? 201 : 200);
    } finally {
      arrived();
    }
  });
  app.route("/v1/runs/:run/clients/:client", client);

  app.get("/v1/runs/:run/metrics", adminOrClient, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    return c.json(await coord.metrics(run));
  });

  app.get("/v1/runs/:run/masks", admin, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const offset = intParam(c.req.query("offset") ?? "0", "offset");
    const limit = Math.min(256, Math.max(1, intParam(c.req.query("limit") ?? "64", "limit")));
    const { run: r } = await coord.getRun(run);
    const masks = await coord.masks(run, offset, limit);
    const tensors: Record<string, { dtype: "U32"; shape: number[]; data: Uint32Array }> = {};
    for (const m of masks) tensors[m.client] = { dtype: "U32", shape: [m.bits.length], data: m.bits };
    const body = encodeSafetensors(tensors, {
      format: "perfit-masks/1",
      run,
      adapterSize: String(r.config.adapterSize),
      rounds: JSON.stringify(Object.fromEntries(masks.map((m) => [m.client, m.round]))),
    });
    return c.body(body as Uint8Array<ArrayBuffer>, 200, { "content-type": "application/octet-stream" });
  });

  const tickMs = config.tickMs ?? 1000;
  const timer = tickMs > 0 ? setInterval(() => coord.tick().catch(() => {}), tickMs) : undefined;
  if (timer !== undefined) Deno.unrefTimer(timer);

  return Object.assign(app, {
    coordinator: coord,
    async close() {
      if (timer !== undefined) clearInterval(timer);
      await coord.close();
    },
  });
}
