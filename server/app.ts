/**
 * The coordinator's HTTP surface: a Hono app over a `Coordinator`. Runs the same on a local Deno
 * (KV file) and on Deno Deploy (distributed KV). Middleware, in order: errors -> CORS -> per-IP rate
 * limit -> route (auth, per-route body limit and read deadline, validation). `createApp` returns the
 * Hono app so other areas can mount extra routes (e.g. `app.route("/ui", ui)`) before serving.
 *
 * Upload bodies, and what bounds them (docs/security.md says why): each client has at most one
 * upload in flight (429 `upload_in_flight`); a body is read under a deadline that scales with the
 * bytes it delivers (408 `body_timeout`, server/body.ts) into memory that grows as bytes arrive;
 * the bytes of all bodies being received are capped (`maxReceivingBytes`, 503 `server_busy`); and
 * only a body wholly in memory waits for one of the `maxConcurrentUploads` permits to be decoded and
 * handed to the coordinator. So a slow client holds its own connection and the bytes it really
 * sent, and nothing any other upload needs.
 */
import { type Context, cors, Hono } from "../runtime/deps.ts";
import { ApiError, invalid, ThrottledLog, tooMany } from "./errors.ts";
import {
  adminAuth,
  adminOrClientAuth,
  type AuthDeps,
  clientAuth,
  type ClientVars,
  Revocations,
  tokenExpiresAt,
} from "./auth.ts";
import { idParam, intParam } from "./params.ts";
import { type BodyDeadline, DEFAULT_BODY_DEADLINE, readBody, readJson } from "./body.ts";
import { clientIp, heldLimit, type RateLimit, TokenBuckets, type TrustProxy } from "./ratelimit.ts";
import { sha256Hex, TokenSigner } from "./tokens.ts";
import { Coordinator } from "./coordinator.ts";
import { parseJoinKey, parseRunConfig } from "./run_config.ts";
import { inviteCount, inviteUsed, parseCredentials } from "./enrollment.ts";
import type { RunRecord } from "./records.ts";
import { decodeUpdate, encodeSlice, WireError } from "../runtime/client/wire.ts";
import { adminRunRoutes } from "./admin_routes.ts";
import { refuseCancelled } from "./admission.ts";
import { openapi } from "./openapi.ts";
import { errorAnswer } from "./error_answer.ts";
import { parseTrainSettings } from "../runtime/client/train_settings.ts";
import { type EventLog, silentLog } from "./event_log.ts";
import { ByteBudget, Semaphore } from "./semaphore.ts";
import { defaultFolder, InlineFolder } from "./folder.ts";
import { METRICS_PAGE, ReadModel } from "./read_model.ts";

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
  /**
   * Upload bodies decoded and handed to the coordinator at once (default 8). A permit is taken only
   * once a body is wholly in memory; bodies still arriving wait for nothing.
   */
  maxConcurrentUploads?: number;
  /**
   * Bytes of upload bodies held in memory at once, from their first byte until they are decoded
   * (default 512 MiB). Past it an upload is refused with 503 `server_busy` (the client retries);
   * a single body larger than this still passes when it is the only one.
   */
  maxReceivingBytes?: number;
  /**
   * Read deadline of every request body, in ms (default 30 000; 408 `body_timeout`): a body may
   * take this long plus 1 s per `bodyMinBytesPerSecond` bytes it has delivered, and never pause
   * longer than this between two chunks (server/body.ts).
   */
  bodyTimeoutMs?: number;
  /** Slowest sustained pace a body may arrive at, past the grace (default 8 KiB/s = 64 kbit/s). */
  bodyMinBytesPerSecond?: number;
  /** Lifetime of a client token from its issue, in ms (default 30 days; 401 `token_expired` after). */
  tokenTtlMs?: number;
  /** How long an instance trusts what it read about a client's revocation, in ms (default 5000). */
  revocationCacheMs?: number;
  /**
   * Reverse proxies whose `X-Forwarded-For` names the client for the per-IP rate limit: a number of
   * hops, or the proxies' addresses (see `TrustProxy` in ratelimit.ts). Default: none, the socket's
   * peer is the client (the header is ignored: anyone can send it).
   */
  trustProxy?: TrustProxy;
  /**
   * Tokens an upload refused as invalid (400, 413 or 422: malformed, oversized, or against the run's
   * policy) costs its client's rate-limit bucket on top of its request (default 10: one second of
   * the default 10/s). A client sending garbage gets about one full refusal a second, and 429 for the
   * rest; an honest client, whose uploads are accepted, never pays it. 0 disables.
   */
  refusedUploadCost?: number;
  /**
   * A 429 of the per-client bucket is answered after holding it until the client's next token, at
   * most this long, in ms (default 1000; 0 answers at once). The hold costs a timer, no CPU, so a
   * client that ignores Retry-After and retries at once gets at most one answer per hold and
   * connection, not as many as the server can write.
   */
  rateLimitHoldMs?: number;
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
  /** Where the coordinator says what it does: joins, rounds, accepted uploads, refusals (default: nowhere). */
  events?: EventLog;
}

/** What the upload route holds right now (tests and benches watch it; nothing else reads it). */
export interface UploadStats {
  /** Upload bodies being received. */
  receiving: number;
  /** Bytes of upload bodies held in memory (received, not yet decoded). */
  bytes: number;
  /** Received bodies decoding or being handed to the coordinator (at most `maxConcurrentUploads`). */
  decoding: number;
  /** Received bodies waiting for a permit. */
  waiting: number;
}

/** The Hono app plus the coordinator behind it and a `close()` that stops timers and drains commits. */
export type PerfitApp = Hono & {
  coordinator: Coordinator;
  uploadStats(): UploadStats;
  close(): Promise<void>;
};

/** Default lifetime of a client token. */
export const DEFAULT_TOKEN_TTL_MS = 30 * 24 * 3600_000;

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
  const events = opts.events ?? silentLog;
  const coord = new Coordinator(
    kv,
    now,
    config.foldWorker === false ? new InlineFolder() : defaultFolder(),
    { events },
  );
  const ipBuckets = new TokenBuckets(config.rateLimit?.ip ?? { rate: 50, burst: 100 }, now);
  const clientBuckets = new TokenBuckets(config.rateLimit?.client ?? { rate: 10, burst: 40 }, now);
  const maxJson = config.maxJsonBytes ?? 64 * 1024;
  const maxUpload = config.maxUploadBytes ?? 256 * 1024 * 1024;
  const uploadPermits = new Semaphore(Math.max(1, config.maxConcurrentUploads ?? 8));
  const received = new ByteBudget(Math.max(1, config.maxReceivingBytes ?? 512 * 1024 * 1024));
  const deadline: BodyDeadline = {
    timeoutMs: config.bodyTimeoutMs ?? DEFAULT_BODY_DEADLINE.timeoutMs,
    minBytesPerSecond: config.bodyMinBytesPerSecond ?? DEFAULT_BODY_DEADLINE.minBytesPerSecond,
  };
  /** `run/client` of every upload in flight: one per client at a time. */
  const uploading = new Set<string>();
  let receiving = 0;
  const tokenTtlMs = config.tokenTtlMs ?? DEFAULT_TOKEN_TTL_MS;
  const revocations = new Revocations(kv, now, config.revocationCacheMs ?? 5_000);
  const reads = new ReadModel(kv);
  const trustProxy = config.trustProxy ?? false;
  const log503 = new ThrottledLog();

  const limited = (buckets: TokenBuckets, key: string) => {
    const wait = buckets.take(key);
    if (wait > 0) {
      throw new ApiError(429, "rate_limited", "too many requests", {
        "retry-after": String(Math.ceil(wait)),
      });
    }
  };
  const refusedUploadCost = Math.max(0, config.refusedUploadCost ?? 10);
  const clientLimited = heldLimit(Math.max(0, config.rateLimitHoldMs ?? 1000));

  const auth: AuthDeps = {
    adminHash,
    signer,
    clientRecord: (run, client) => coord.client(run, client),
    clientBuckets,
    limit: clientLimited,
    revocations,
    tokenTtlMs,
    now,
  };
  const admin = adminAuth(auth);
  const adminOrClient = adminOrClientAuth(auth);

  const app = new Hono();

  app.onError((err, c) => errorAnswer(err, c, events, log503));
  app.notFound((c) =>
    c.json({ error: { code: "not_found", message: `no route ${c.req.method} ${c.req.path}` } }, 404)
  );

  if (config.corsOrigins && (config.corsOrigins === "*" || config.corsOrigins.length > 0)) {
    app.use(
      "*",
      cors({
        origin: config.corsOrigins === "*" ? "*" : config.corsOrigins,
        allowHeaders: ["authorization", "content-type"],
        allowMethods: ["GET", "POST", "DELETE", "OPTIONS"],
        maxAge: 600,
      }),
    );
  }
  app.use("/v1/*", async (c, next) => {
    limited(ipBuckets, clientIp(remoteIp(c), c.req.header("x-forwarded-for"), trustProxy));
    await next();
  });

  app.get("/health", (c) => c.json({ ok: true, version: VERSION, time: now() }));
  app.get("/openapi.json", (c) => c.json(openapi));

  const runView = (run: RunRecord) => run;

  app.post("/v1/runs", admin, async (c) => {
    const raw = await readJson(c.req.raw, maxJson, { deadline });
    const cfg = parseRunConfig(raw);
    // The join key is stored only as a salted hash, apart from the run record: never answered.
    const joinKey = parseJoinKey(raw, cfg.enrollment);
    return c.json({ run: runView(await coord.createRun(cfg, { joinKey })) }, 201);
  });

  app.get("/v1/runs", admin, async (c) => {
    return c.json({ runs: (await coord.listRuns()).map(runView) });
  });

  app.get("/v1/runs/:run", adminOrClient, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const { run: r, round } = await coord.getRun(run);
    return c.json({ run: runView(r), round });
  });

  // What a data owner needs to decide before joining (its tier, e.g. `deno task client --tier auto`).
  // No client names, metrics or secrets: the run id is the only credential it takes.
  app.get("/v1/runs/:run/join", async (c) => {
    const r = await coord.joinable(idParam(c.req.param("run"), "run id"));
    const cfg = r.config;
    return c.json({
      run: r.id,
      status: r.status,
      method: cfg.method,
      baseModel: cfg.baseModel,
      lora: cfg.lora,
      tiers: cfg.expansionTiers,
      enrollment: cfg.enrollment ?? "open",
      roundDeadlineMs: cfg.roundDeadlineMs,
      ...(({ localSteps, batchSize, maxLen }) => ({ localSteps, batchSize, maxLen }))(
        parseTrainSettings(cfg.train),
      ),
    });
  });

  app.post("/v1/runs/:run/join", async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const body = await readJson(c.req.raw, maxJson, { deadline });
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      throw invalid("bad_body", "join body must be an object");
    }
    const { name, tier } = body as Record<string, unknown>;
    if (name !== undefined && (typeof name !== "string" || name.length > 100)) {
      throw invalid("bad_body", "name must be a string of ≤ 100 characters");
    }
    if (tier !== undefined && typeof tier !== "string") throw invalid("bad_body", "tier must be a string");
    const rec = await coord.join(run, {
      name: name as string | undefined,
      tier: tier as string | undefined,
      ...parseCredentials(body as Record<string, unknown>),
    });
    // A replayed invite join gets its client back: never once the admin has revoked that client
    // (a fresh token would be issued after the revocation, and so accepted).
    if ((await revocations.revokedAt(run, rec.id, true)) !== null) throw inviteUsed();
    const iat = now();
    const token = await (await signer).sign({ run, client: rec.id, iat });
    const { run: r } = await coord.getRun(run);
    const cfg = r.config;
    return c.json({
      run,
      clientId: rec.id,
      token,
      tokenExpiresAt: iat + tokenTtlMs,
      tier: rec.tier,
      expansion: rec.expansion,
      rank: cfg.lora.rank * rec.expansion,
      budget: cfg.budget,
      adapterSize: cfg.adapterSize,
      method: cfg.method,
    }, 201);
  });

  // Single-use invites for a run with enrollment "invite": the tokens are answered once, KV keeps
  // their hashes (server/enrollment.ts).
  app.post("/v1/runs/:run/invites", admin, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const count = inviteCount(await readJson(c.req.raw, maxJson, { deadline }));
    const invites = await coord.createInvites(run, count);
    return c.json({ run, invites }, 201);
  });

  // Every client route: a token of this run and of this very client (`c.var.client`).
  const client = new Hono<ClientVars>();
  client.use("*", clientAuth(auth));

  client.get("/task", async (c) => {
    const me = c.var.client;
    const task = await coord.task(me.run, me);
    // A run without a round is done or cancelled: the cancelled one says so (409 run_cancelled).
    if (task.status === "done") refuseCancelled((await coord.getRun(me.run, false)).run);
    return c.json(task);
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
    refuseCancelled(r); // before reading a body (a state that missed the cancel fails its commit and retries)
    const n = r.config.adapterSize;
    // Dense F32 values + U8 mask is the largest legal form; 64 KiB covers header and metadata.
    const limit = Math.min(maxUpload, n * 5 + 64 * 1024);
    // One upload per client at a time: a client cannot hold more than one connection's worth of
    // the server's attention, however many it opens.
    const key = `${run}/${clientId}`;
    if (uploading.has(key)) {
      throw tooMany("upload_in_flight", "this client already has an upload in flight; wait for its answer");
    }
    uploading.add(key);
    const arrived = coord.expectUpload(run);
    let held = 0;
    const giveBack = () => {
      received.give(held);
      held = 0;
    };
    let release = () => {};
    try {
      // Memory grows with the bytes that arrived (within `maxReceivingBytes` for all bodies) and no
      // permit is held while they arrive, so a slow body stalls only its own request.
      receiving++;
      let body: Uint8Array | null;
      try {
        body = await readBody(c.req.raw, limit, {
          deadline,
          onChunk: (bytes) => {
            if (!received.take(bytes, held)) {
              throw new ApiError(
                503,
                "server_busy",
                "the server is receiving too many upload bytes at once; retry shortly",
                { "retry-after": "1" },
              );
            }
            held += bytes;
          },
        });
      } finally {
        receiving--;
      }
      release = await uploadPermits.acquire();
      const u = decodeUpdate(body, n);
      const uploadId = Coordinator.uploadId(body);
      // The body goes out of scope before the upload waits for its group commit, so a request
      // parked on the commit holds only its mask bits (the values are folded and dropped).
      body = null;
      giveBack();
      const res = await coord.upload(run, clientId, round, u, uploadId, () => {
        arrived();
        release();
      });
      return c.json(res, res.status === "accepted" ? 201 : 200);
    } catch (e) {
      // A refusal for what the client sent (not for the round's state, 409/410, or for load, 503)
      // costs it more than a request: see `refusedUploadCost`.
      const status = e instanceof ApiError || e instanceof WireError ? e.status : 0;
      if (status === 400 || status === 413 || status === 422) {
        clientBuckets.charge(clientId, refusedUploadCost);
      }
      throw e;
    } finally {
      release();
      giveBack();
      arrived();
      uploading.delete(key);
    }
  });

  // A fresh token: the client refreshes its own (with a token that is still valid), or the admin
  // issues one (say, after revoking a leaked token). Registered before the client sub-app, whose
  // middleware would otherwise demand a client token of the admin.
  app.post("/v1/runs/:run/clients/:client/token", adminOrClient, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const clientId = idParam(c.req.param("client"), "client id");
    await coord.joinable(run); // 404 for a deleted run (client records are cached)
    if (c.var.viewer.admin) await coord.client(run, clientId); // 404 for a client never joined
    // After a revocation, issue strictly later than it (clocks of two instances may differ).
    const revoked = await revocations.revokedAt(run, clientId, true);
    const iat = Math.max(now(), revoked === null ? -Infinity : revoked + 1);
    const token = await (await signer).sign({ run, client: clientId, iat });
    return c.json({
      run,
      clientId,
      token,
      tokenExpiresAt: tokenExpiresAt({ run, client: clientId, iat }, tokenTtlMs),
    });
  });

  // Revokes every token of a client issued until now (each instance notices within
  // `revocationCacheMs`; this one at once).
  app.delete("/v1/runs/:run/clients/:client/token", admin, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const clientId = idParam(c.req.param("client"), "client id");
    await coord.joinable(run); // a deleted run's cached client records must not leave a revocation behind
    await coord.client(run, clientId);
    const revokedAt = await revocations.revoke(run, clientId);
    return c.json({ run, clientId, revokedAt });
  });

  app.route("/v1/runs/:run/clients/:client", client);

  // A page of rounds (`offset`, `limit`; the answer's `next` is the following page's offset). A
  // client sees its own client record and uploads, and every round's aggregates; the admin, all.
  app.get("/v1/runs/:run/metrics", adminOrClient, async (c) => {
    const run = idParam(c.req.param("run"), "run id");
    const offset = intParam(c.req.query("offset") ?? "0", "offset");
    const limit = intParam(c.req.query("limit") ?? String(METRICS_PAGE.default), "limit");
    const viewer = c.var.viewer;
    const { run: r } = await coord.getRun(run);
    return c.json(
      await reads.metrics(r, { offset, limit, onlyClient: viewer.admin ? undefined : viewer.client.id }),
    );
  });

  // Masks, the global adapter, cancel and delete (server/admin_routes.ts, server/run_admin.ts).
  app.route("/v1/runs", adminRunRoutes(coord, admin));

  const tickMs = config.tickMs ?? 1000;
  const timer = tickMs > 0 ? setInterval(() => coord.tick().catch(() => {}), tickMs) : undefined;
  if (timer !== undefined) Deno.unrefTimer(timer);

  return Object.assign(app, {
    coordinator: coord,
    uploadStats: (): UploadStats => ({
      receiving,
      bytes: received.held,
      decoding: uploadPermits.held,
      waiting: uploadPermits.waiting,
    }),
    async close() {
      if (timer !== undefined) clearInterval(timer);
      await coord.close();
    },
  });
}
