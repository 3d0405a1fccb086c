/** Command-line flags and environment variables of `deno task serve`, parsed into one settings object. */
import type { RateLimit } from "./ratelimit.ts";

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
}

/** Help text for `--help`. */
export const USAGE = `deno task serve [flags]
  --port=N            PERFIT_PORT            (default 8787; 0 = any free port)
  --hostname=H        PERFIT_HOSTNAME        (default 127.0.0.1; 0.0.0.0 to expose)
  --kv=PATH           PERFIT_KV              (default ./data/perfit.kv; "" = Deno.openKv() default / Deploy KV)
  --admin-token=T     PERFIT_ADMIN_TOKEN     (default: generated once, printed once, stored hashed)
  --secret=S          PERFIT_SECRET          (client-token HMAC key; default: generated once, kept in KV)
  --cors=a,b|*        PERFIT_CORS_ORIGINS    (default: none)
  --rate-ip=R/B       PERFIT_RATE_IP         (requests/s and burst per IP, default 50/100; 0 disables)
  --rate-client=R/B   PERFIT_RATE_CLIENT     (per client token, default 10/40; 0 disables)
  --max-upload-mb=M   PERFIT_MAX_UPLOAD_MB   (default 256)
  --max-concurrent-uploads=K PERFIT_MAX_CONCURRENT_UPLOADS (bodies decoded at once, default 8)
  --tick-ms=MS        PERFIT_TICK_MS         (round-deadline check interval, default 1000)
  --fold-worker=B     PERFIT_FOLD_WORKER     (fold uploads on a Worker thread: true|false, default true)
  --dashboard-token=T PERFIT_DASHBOARD_TOKEN (token /dashboard?token=T needs; default: generated once,
                                             kept in KV, its URL printed at start)
  --public-dashboard  PERFIT_PUBLIC_DASHBOARD (no dashboard token: run ids, client names and metrics public)
  --reset-admin-token                        (generate and print a new admin token)`;

function rate(s: string, name: string): RateLimit {
  const m = /^([0-9.]+)(?:\/([0-9]+))?$/.exec(s);
  if (!m) throw new Error(`${name}: expected RATE or RATE/BURST, got ${s}`);
  const r = Number(m[1]);
  return { rate: r, burst: m[2] ? Number(m[2]) : Math.max(1, Math.ceil(r * 2)) };
}

function intOf(s: string, name: string): number {
  const v = Number(s);
  if (!Number.isInteger(v) || v < 0) throw new Error(`${name}: expected a non-negative integer, got ${s}`);
  return v;
}

function boolOf(s: string, name: string): boolean {
  if (s === "true" || s === "1") return true;
  if (s === "false" || s === "0") return false;
  throw new Error(`${name}: expected true or false, got ${s}`);
}

/** Flags override env vars, which override defaults. Throws with a readable message on bad values. */
export function parseSettings(args: string[], env: (k: string) => string | undefined): Settings {
  const flags = new Map<string, string>();
  for (const a of args) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    if (!m) throw new Error(`unknown argument ${a}\n${USAGE}`);
    flags.set(m[1], m[2] ?? "true");
  }
  const known = [
    "port",
    "hostname",
    "kv",
    "admin-token",
    "secret",
    "cors",
    "rate-ip",
    "rate-client",
    "max-upload-mb",
    "max-concurrent-uploads",
    "tick-ms",
    "fold-worker",
    "reset-admin-token",
    "dashboard-token",
    "public-dashboard",
    "help",
  ];
  for (const k of flags.keys()) if (!known.includes(k)) throw new Error(`unknown flag --${k}\n${USAGE}`);
  const get = (flag: string, envName: string) => flags.get(flag) ?? env(envName);
  const cors = get("cors", "PERFIT_CORS_ORIGINS") ?? "";
  return {
    port: intOf(get("port", "PERFIT_PORT") ?? "8787", "port"),
    hostname: get("hostname", "PERFIT_HOSTNAME") ?? "127.0.0.1",
    kvPath: get("kv", "PERFIT_KV") ?? "./data/perfit.kv",
    adminToken: get("admin-token", "PERFIT_ADMIN_TOKEN") || undefined,
    secret: get("secret", "PERFIT_SECRET") || undefined,
    corsOrigins: cors === "*" ? "*" : cors.split(",").map((s) => s.trim()).filter(Boolean),
    rateIp: rate(get("rate-ip", "PERFIT_RATE_IP") ?? "50/100", "rate-ip"),
    rateClient: rate(get("rate-client", "PERFIT_RATE_CLIENT") ?? "10/40", "rate-client"),
    maxUploadBytes: intOf(get("max-upload-mb", "PERFIT_MAX_UPLOAD_MB") ?? "256", "max-upload-mb") * 1024 *
      1024,
    maxConcurrentUploads: Math.max(
      1,
      intOf(get("max-concurrent-uploads", "PERFIT_MAX_CONCURRENT_UPLOADS") ?? "8", "max-concurrent-uploads"),
    ),
    tickMs: intOf(get("tick-ms", "PERFIT_TICK_MS") ?? "1000", "tick-ms"),
    foldWorker: boolOf(get("fold-worker", "PERFIT_FOLD_WORKER") ?? "true", "fold-worker"),
    resetAdminToken: flags.has("reset-admin-token"),
    dashboardToken: get("dashboard-token", "PERFIT_DASHBOARD_TOKEN") || undefined,
    publicDashboard: boolOf(
      get("public-dashboard", "PERFIT_PUBLIC_DASHBOARD") ?? "false",
      "public-dashboard",
    ),
  };
}
