/**
 * Who may call what, as Hono middleware: `adminAuth` (the admin bearer token), `clientAuth` (a
 * client token of the path's run, and of the path's client when the path names one; the record is
 * then `c.var.client`) and `adminOrClientAuth` (either; `c.var.viewer` says which). Handlers only
 * read these variables. Hono's own `bearerAuth` answers every failure with a 401 of its own shape; a
 * token of another run or client must be a 403, and every refusal our `{error: {code, message}}`, so
 * these are written with `createMiddleware`.
 *
 * A client token is refused once it is older than the TTL (`token_expired`: the client refreshes it
 * before then, POST …/token) or when the admin revoked its client after it was issued
 * (`token_revoked`). Revocations live in KV under `["revoked", run, client]` so every instance
 * sees them; each instance caches what it read for `cacheMs` (its own revocations at once).
 */
import { type Context, createMiddleware } from "../runtime/deps.ts";
import { ApiError, forbidden, RetryableError, unauthorized } from "./errors.ts";
import { idParam } from "./params.ts";
import type { TokenBuckets } from "./ratelimit.ts";
import { type ClientRecord, K } from "./records.ts";
import { adminTokenMatches, type ClientClaims, type TokenSigner } from "./tokens.ts";
import { BoundedCache } from "./bounded_cache.ts";
import { liveCheck, liveStamp } from "./run_life.ts";

/** The variables the client middleware sets. */
export type ClientVars = { Variables: { client: ClientRecord } };

/** Who passed `adminOrClientAuth`. */
export type Viewer = { admin: true } | { admin: false; client: ClientRecord };

/** The variables the admin-or-client middleware sets. */
export type ViewerVars = { Variables: { viewer: Viewer } };

/** KV key of a client's revocation record `{at}`: tokens issued at or before `at` are refused. */
export const revokedKey = (run: string, client: string): Deno.KvKey => K.revoked(run, client);

/** Per-client token revocations in KV, with a short per-instance cache of what was read. */
export class Revocations {
  private cache: BoundedCache<{ at: number | null; read: number }>;

  constructor(
    private readonly kv: Deno.Kv,
    private readonly now: () => number,
    private readonly cacheMs = 5_000,
    cacheSize = 50_000,
  ) {
    this.cache = new BoundedCache(cacheSize);
  }

  /** When the client was last revoked (ms), or null; at most `cacheMs` old. */
  async revokedAt(run: string, client: string, fresh = false): Promise<number | null> {
    const key = `${run}/${client}`;
    const t = this.now();
    const hit = this.cache.get(key);
    if (!fresh && hit && t - hit.read < this.cacheMs) return hit.at;
    const at = (await this.kv.get<{ at: number }>(revokedKey(run, client))).value?.at ?? null;
    this.cache.set(key, { at, read: t });
    return at;
  }

  /**
   * Revokes every token of the client issued until now; returns the revocation time. No record check
   * guards the write: the run's live key does, so none lands once the run's delete has begun (404).
   */
  async revoke(run: string, client: string): Promise<number> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const live = liveCheck(run, await liveStamp(this.kv, run));
      const at = this.now();
      if ((await this.kv.atomic().check(live).set(revokedKey(run, client), { at }).commit()).ok) {
        this.cache.set(`${run}/${client}`, { at, read: at });
        return at;
      }
    }
    throw new RetryableError(`run ${run} changed while revoking, retry`);
  }
}

/** What the middleware checks credentials against. */
export interface AuthDeps {
  /** SHA-256 hex of the admin token. */
  adminHash: Promise<string>;
  signer: Promise<TokenSigner>;
  /** A client's record, or an `ApiError` 404 when it is not registered. */
  clientRecord: (run: string, client: string) => Promise<ClientRecord>;
  /** Per-client token buckets; `limit` throws 429 when one is empty (possibly after holding it). */
  clientBuckets: TokenBuckets;
  limit: (buckets: TokenBuckets, key: string) => void | Promise<void>;
  revocations: Revocations;
  /** Lifetime of a client token from its `iat`, in ms. */
  tokenTtlMs: number;
  now: () => number;
}

function bearer(c: Context): string | null {
  const h = c.req.header("authorization");
  if (!h) return null;
  const m = /^Bearer\s+(\S+)$/i.exec(h);
  return m ? m[1] : null;
}

async function isAdmin(deps: AuthDeps, c: Context): Promise<boolean> {
  const t = bearer(c);
  return t !== null && t.length <= 512 && await adminTokenMatches(t, await deps.adminHash);
}

/** When a token of these claims stops being accepted (ms since epoch). */
export const tokenExpiresAt = (claims: ClientClaims, ttlMs: number): number => claims.iat + ttlMs;

/** Verifies a client token for the path's run (and its client, when the path names one). */
async function verifyClient(deps: AuthDeps, c: Context): Promise<ClientRecord> {
  const run = idParam(c.req.param("run") ?? "", "run id");
  const pathClient = c.req.param("client");
  const client = pathClient === undefined ? undefined : idParam(pathClient, "client id");
  const t = bearer(c);
  if (!t) throw unauthorized("client token required");
  const claims = await (await deps.signer).verify(t);
  if (!claims) throw unauthorized("invalid or forged token");
  if (claims.run !== run) throw forbidden("token belongs to another run");
  if (client !== undefined && claims.client !== client) {
    throw forbidden("a client may only access its own slice");
  }
  if (deps.now() >= tokenExpiresAt(claims, deps.tokenTtlMs)) {
    throw new ApiError(
      401,
      "token_expired",
      "token expired: join again, or refresh tokens before they expire",
    );
  }
  await deps.limit(deps.clientBuckets, claims.client);
  let rec: ClientRecord;
  try {
    rec = await deps.clientRecord(run, claims.client);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) throw unauthorized("token's client is not registered");
    throw e;
  }
  const revoked = await deps.revocations.revokedAt(run, claims.client);
  if (revoked !== null && claims.iat <= revoked) {
    throw new ApiError(401, "token_revoked", "this client's tokens were revoked by the admin");
  }
  return rec;
}

/** Only the admin passes. */
export const adminAuth = (deps: AuthDeps) =>
  createMiddleware(async (c, next) => {
    if (!(await isAdmin(deps, c))) throw unauthorized("admin token required");
    await next();
  });

/** A registered client of the path's run (its own client, when the path names one); sets `c.var.client`. */
export const clientAuth = (deps: AuthDeps) =>
  createMiddleware<ClientVars>(async (c, next) => {
    c.set("client", await verifyClient(deps, c));
    await next();
  });

/** The admin, or a registered client of the path's run; sets `c.var.viewer`. */
export const adminOrClientAuth = (deps: AuthDeps) =>
  createMiddleware<ViewerVars>(async (c, next) => {
    c.set(
      "viewer",
      await isAdmin(deps, c) ? { admin: true } : { admin: false, client: await verifyClient(deps, c) },
    );
    await next();
  });
