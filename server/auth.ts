/**
 * Who may call what, as Hono middleware: `adminAuth` (the admin bearer token), `clientAuth` (a
 * client token of the path's run, and of the path's client when the path names one; the record is
 * then `c.var.client`) and `adminOrClientAuth`. Handlers only read `c.var.client`. Hono's own
 * `bearerAuth` answers every failure with a 401 of its own shape; a token of another run or client
 * must be a 403, and every refusal our `{error: {code, message}}`, so these are written with
 * `createMiddleware`.
 */
import type { Context } from "hono";
import { createMiddleware } from "hono/factory";
import { ApiError, forbidden, unauthorized } from "./errors.ts";
import { idParam } from "./params.ts";
import type { TokenBuckets } from "./ratelimit.ts";
import type { ClientRecord } from "./records.ts";
import { adminTokenMatches, type TokenSigner } from "./tokens.ts";

/** The variables the client middleware sets. */
export type ClientVars = { Variables: { client: ClientRecord } };

/** What the middleware checks credentials against. */
export interface AuthDeps {
  /** SHA-256 hex of the admin token. */
  adminHash: Promise<string>;
  signer: Promise<TokenSigner>;
  /** A client's record, or an `ApiError` 404 when it is not registered. */
  clientRecord: (run: string, client: string) => Promise<ClientRecord>;
  /** Per-client token buckets; `limit` throws 429 when one is empty. */
  clientBuckets: TokenBuckets;
  limit: (buckets: TokenBuckets, key: string) => void;
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
  deps.limit(deps.clientBuckets, claims.client);
  try {
    return await deps.clientRecord(run, claims.client);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) throw unauthorized("token's client is not registered");
    throw e;
  }
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

/** The admin, or a registered client of the path's run. */
export const adminOrClientAuth = (deps: AuthDeps) =>
  createMiddleware(async (c, next) => {
    if (!(await isAdmin(deps, c))) await verifyClient(deps, c);
    await next();
  });
