/**
 * Command-line flags and environment variables of `deno task serve`, parsed into one settings object
 * with the shared flag parser (runtime/cli/flags.ts): every flag has a PERFIT_* fallback, the flag wins.
 */
import type { RateLimit } from "./ratelimit.ts";
import { defineCli, isDirectory, UsageError } from "../runtime/cli/flags.ts";
import { ADMIN_TOKEN_FLAGS, secretFrom } from "../runtime/cli/common.ts";

/** Everything main.ts needs to start a server. */
export interface Settings {
  port: number;
  hostname: string;
  /** KV file path; "" = `Deno.openKv()` default (on Deno Deploy: the project's distributed KV). */
  kvPath: string;
  adminToken?: string;
  secret?: string;
  corsOrigins: string[] | "*";
  rateIp: RateLimit;
  rateClient: RateLimit;
  maxUploadBytes: number;
  maxConcurrentUploads: number;
  tickMs: number;
  foldWorker: boolean;
  resetAdminToken: boolean;
  /** Bearer token the dashboard's data route requires; undefined = main.ts generates one. */
  dashboardToken?: string;
  /** No dashboard token at all: the dashboard data is public. */
  publicDashboard: boolean;
  log: "text" | "json" | "off";
  /** Base model folder served to browser clients (undefined: the bundled one). */
  modelDir?: string;
  trustProxy?: number | string[];
  tokenTtlMs: number;
  bodyTimeoutMs: number;
}

/** The token signer's minimum (server/tokens.ts refuses shorter HMAC keys). */
export const MIN_SECRET_LENGTH = 16;

const RATE = /^([0-9]+(?:\.[0-9]+)?)(?:\/([0-9]+))?$/;
const rateCheck = (v: string) => (RATE.test(v) ? undefined : "RATE or RATE/BURST (e.g. 50/100; 0 disables)");
const secretCheck = (v: string) =>
  v.length >= MIN_SECRET_LENGTH ? undefined : `at least ${MIN_SECRET_LENGTH} characters`;

/** The serve CLI: its flag table is the one place flags, env vars, defaults and help live. */
export const serveCli = defineCli({
  name: "serve",
  summary:
    "The Perfit coordinator: HTTP API, dashboard and browser client. Flags override PERFIT_* env vars.",
  flags: {
    port: {
      type: "int",
      min: 0,
      max: 65535,
      default: 8787,
      env: "PERFIT_PORT",
      help: "TCP port; 0 = any free port",
    },
    hostname: {
      type: "string",
      value: "H",
      default: "127.0.0.1",
      env: "PERFIT_HOSTNAME",
      help: "address to bind; 0.0.0.0 exposes the server",
    },
    kv: {
      type: "string",
      value: "PATH",
      default: "./data/perfit.kv",
      env: "PERFIT_KV",
      emptyEnv: true,
      help: 'Deno KV file; --kv="" = the Deno.openKv() default (Deno Deploy: the project\'s KV)',
    },
    "admin-token": {
      ...ADMIN_TOKEN_FLAGS["admin-token"],
      defaultText: "generated once, printed once, stored hashed",
      help:
        "a human-chosen admin token. A flag value shows in `ps` and shell history: prefer the env var or --admin-token-file",
    },
    "admin-token-file": ADMIN_TOKEN_FLAGS["admin-token-file"],
    secret: {
      type: "string",
      value: "S",
      secret: true,
      env: "PERFIT_SECRET",
      validate: secretCheck,
      defaultText: "generated once, kept in KV",
      help:
        `client-token HMAC key, ≥ ${MIN_SECRET_LENGTH} characters (shows in \`ps\`: prefer the env var or --secret-file)`,
    },
    "secret-file": {
      type: "string",
      value: "PATH",
      env: "PERFIT_SECRET_FILE",
      help: "read the HMAC key from this file (trailing newline ignored)",
    },
    cors: {
      type: "string",
      value: "a,b|*",
      env: "PERFIT_CORS_ORIGINS",
      help: "origins allowed to call the API from a browser",
    },
    "rate-ip": {
      type: "string",
      value: "R/B",
      default: "50/100",
      env: "PERFIT_RATE_IP",
      validate: rateCheck,
      help: "requests/s and burst per IP; 0 disables",
    },
    "rate-client": {
      type: "string",
      value: "R/B",
      default: "10/40",
      env: "PERFIT_RATE_CLIENT",
      validate: rateCheck,
      help: "requests/s and burst per client token; 0 disables",
    },
    "max-upload-mb": {
      type: "int",
      min: 1,
      default: 256,
      env: "PERFIT_MAX_UPLOAD_MB",
      help: "largest upload body in MiB",
    },
    "max-concurrent-uploads": {
      type: "int",
      min: 1,
      default: 8,
      env: "PERFIT_MAX_CONCURRENT_UPLOADS",
      help: "upload bodies decoded at once",
    },
    "tick-ms": {
      type: "int",
      min: 0,
      default: 1000,
      env: "PERFIT_TICK_MS",
      help: "round-deadline check interval in ms; 0 = no timer",
    },
    "fold-worker": {
      type: "boolean",
      default: true,
      env: "PERFIT_FOLD_WORKER",
      help: "fold uploads on a Worker thread (--fold-worker=false folds on the main thread)",
    },
    "dashboard-token": {
      type: "string",
      value: "T",
      secret: true,
      env: "PERFIT_DASHBOARD_TOKEN",
      defaultText: "generated once, kept in KV, its URL printed at start",
      help: "token /dashboard?token=T needs",
    },
    "public-dashboard": {
      type: "boolean",
      env: "PERFIT_PUBLIC_DASHBOARD",
      help: "no dashboard token: run ids, client names and metrics are public",
    },
    "reset-admin-token": {
      type: "boolean",
      help: "generate and print a new admin token",
    },
    log: {
      type: "string",
      choices: ["text", "json", "off"],
      default: "text",
      env: "PERFIT_LOG",
      help:
        "what the coordinator does, one line per event: joins, rounds, accepted uploads, refusals by reason",
    },
    model: {
      type: "string",
      value: "DIR",
      defaultText: "models/perfit-tiny",
      env: "PERFIT_MODEL",
      validate: isDirectory,
      help: "base model folder served to browser clients at /ui/model/",
    },
    "trust-proxy": {
      type: "string",
      value: "N|IPS",
      env: "PERFIT_TRUST_PROXY",
      defaultText: "off",
      validate: (
        v,
      ) => (/^\d+$/.test(v) || v.split(",").every((x) => x.trim().length > 0)
        ? undefined
        : "a hop count or proxy IPs a,b"),
      help: "behind a reverse proxy: hops to trust in X-Forwarded-For, or the proxies' addresses",
    },
    "token-ttl-days": {
      type: "number",
      min: 0,
      exclusiveMin: true,
      default: 30,
      env: "PERFIT_TOKEN_TTL_DAYS",
      help: "client tokens expire after this (clients refresh them before)",
    },
    "body-timeout-ms": {
      type: "int",
      min: 1,
      default: 30_000,
      env: "PERFIT_BODY_TIMEOUT_MS",
      help: "an upload body may take this plus 1 s per 8 KiB delivered, and never pause longer",
    },
  },
});

/** Help text for `--help`. */
export const USAGE = serveCli.help();

function rate(s: string): RateLimit {
  const m = RATE.exec(s)!;
  const r = Number(m[1]);
  return { rate: r, burst: m[2] ? Number(m[2]) : Math.max(1, Math.ceil(r * 2)) };
}

/**
 * Flags override env vars, which override defaults. Throws `UsageError` (one line) on an unknown flag or a
 * bad value; `readFile` reads the *-file flags (default Deno.readTextFileSync).
 */
export function parseSettings(
  args: string[],
  env: (k: string) => string | undefined,
  readFile: (path: string) => string = Deno.readTextFileSync,
): Settings {
  const { values: f, sources } = serveCli.tryParse(args, env);
  const adminToken = secretFrom(
    "admin-token",
    { value: f["admin-token"], source: sources["admin-token"] },
    { value: f["admin-token-file"], source: sources["admin-token-file"] },
    readFile,
  );
  const secret = secretFrom(
    "secret",
    { value: f.secret, source: sources.secret },
    { value: f["secret-file"], source: sources["secret-file"] },
    readFile,
  );
  if (secret !== undefined && secretCheck(secret)) {
    throw new UsageError(
      `the secret from --secret-file must be ${secretCheck(secret)}, got ${secret.length} characters`,
    );
  }
  const cors = f.cors ?? "";
  return {
    port: f.port,
    hostname: f.hostname,
    kvPath: f.kv,
    adminToken,
    secret,
    corsOrigins: cors === "*" ? "*" : cors.split(",").map((s) => s.trim()).filter(Boolean),
    rateIp: rate(f["rate-ip"]),
    rateClient: rate(f["rate-client"]),
    maxUploadBytes: f["max-upload-mb"] * 1024 * 1024,
    maxConcurrentUploads: f["max-concurrent-uploads"],
    tickMs: f["tick-ms"],
    foldWorker: f["fold-worker"],
    resetAdminToken: f["reset-admin-token"],
    dashboardToken: f["dashboard-token"] || undefined,
    publicDashboard: f["public-dashboard"],
    log: f.log,
    modelDir: f.model,
    trustProxy: f["trust-proxy"] === undefined
      ? undefined
      : /^\d+$/.test(f["trust-proxy"])
      ? Number(f["trust-proxy"])
      : f["trust-proxy"].split(",").map((x) => x.trim()),
    tokenTtlMs: f["token-ttl-days"] * 24 * 3600_000,
    bodyTimeoutMs: f["body-timeout-ms"],
  };
}
