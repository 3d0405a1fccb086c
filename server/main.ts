/**
 * `deno task serve`: the coordinator with embedded defaults. Local: KV file under ./data, port
 * printed at start, admin token generated and printed once (only its hash is kept, in KV). On Deno
 * Deploy (DENO_DEPLOYMENT_ID set) the same file runs with the project's KV and Deploy's port.
 * `--help` lists every flag (server/settings.ts); a bad flag or value is one line on stderr and exit 2.
 * The port is bound before the admin token is generated, so a port in use loses nothing.
 */
import { createApp } from "./app.ts";
import { LineLog, silentLog } from "./event_log.ts";
import { parseSettings, serveCli, type Settings } from "./settings.ts";
import { randomToken, sha256Hex } from "./tokens.ts";
import { initKernels } from "../runtime/kernels/mod.ts";
import { mountUi } from "./ui/mod.ts";
import { BUNDLED_MODEL } from "../runtime/federation/run.ts";

/** Returns the admin token hash, creating (and printing once) a token if none is configured or stored. */
async function adminHash(kv: Deno.Kv, configured: string | undefined, reset: boolean): Promise<string> {
  if (configured) return await sha256Hex(configured);
  const key = ["server", "adminHash"];
  const stored = await kv.get<string>(key);
  if (stored.value && !reset) {
    console.log(
      "admin token: generated earlier (only its hash is stored); --reset-admin-token prints a new one",
    );
    return stored.value;
  }
  const token = randomToken();
  const hash = await sha256Hex(token);
  const res = await kv.atomic().check(stored).set(key, hash).commit();
  if (!res.ok) return (await kv.get<string>(key)).value!;
  console.log(`admin token (shown once, store it now): ${token}`);
  return hash;
}

/** The HMAC secret: configured, or generated once and kept in KV so tokens survive restarts. */
function tokenSecret(kv: Deno.Kv, configured: string | undefined): Promise<string> {
  return configuredOrStored(kv, ["server", "secret"], configured);
}

/** A configured value, or a random token generated once and kept in KV under `key`. */
async function configuredOrStored(
  kv: Deno.Kv,
  key: Deno.KvKey,
  configured: string | undefined,
): Promise<string> {
  if (configured) return configured;
  const stored = await kv.get<string>(key);
  if (stored.value) return stored.value;
  const s = randomToken(32);
  const res = await kv.atomic().check(stored).set(key, s).commit();
  return res.ok ? s : (await kv.get<string>(key)).value!;
}

async function main(): Promise<void> {
  serveCli.parse(); // --help prints every flag and exits 0; a bad flag or value: one line, exit 2
  let s: Settings;
  try {
    s = parseSettings(Deno.args, (k) => Deno.env.get(k));
  } catch (e) {
    return serveCli.fail(e); // an unreadable --secret-file, a short secret: one line, exit 2
  }
  const onDeploy = Deno.env.get("DENO_DEPLOYMENT_ID") !== undefined;
  const kvPath = onDeploy ? "" : s.kvPath;
  // Bind before anything is printed or stored: a port in use must not eat the "shown once" admin token.
  // Requests that arrive while the app is being built get a 503 with retry-after.
  let handler: (req: Request) => Response | Promise<Response> = () =>
    new Response(JSON.stringify({ error: { code: "retry", message: "starting" } }), {
      status: 503,
      headers: { "retry-after": "1", "content-type": "application/json" },
    });
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = onDeploy
      ? Deno.serve((req) => handler(req)) as Deno.HttpServer<Deno.NetAddr>
      : Deno.serve({ port: s.port, hostname: s.hostname, onListen: () => {} }, (req) => handler(req));
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      console.error(
        `serve: port ${s.port} on ${s.hostname} is already in use (another coordinator?); pick another with --port N, or --port 0 for any free port`,
      );
    } else {
      console.error(`serve: cannot listen on ${s.hostname}:${s.port}: ${(e as Error).message}`);
    }
    Deno.exit(1);
  }
  // A file KV's folder is made; a remote KV (denokv, `http(s)://…`) has none.
  if (kvPath && !/^https?:\/\//.test(kvPath)) {
    await Deno.mkdir(kvPath.replace(/[/\\][^/\\]*$/, "") || ".", { recursive: true });
  }
  const kv = await Deno.openKv(kvPath || undefined);
  await initKernels().catch(() => {});
  // The dashboard shows run ids, client names and metrics: private unless asked otherwise.
  const dashboardToken = s.publicDashboard
    ? undefined
    : await configuredOrStored(kv, ["server", "dashboardToken"], s.dashboardToken);
  const events = s.log === "off" ? silentLog : new LineLog(s.log);
  const app = createApp({
    kv,
    events,
    config: {
      adminTokenHash: await adminHash(kv, s.adminToken, s.resetAdminToken),
      secret: await tokenSecret(kv, s.secret),
      corsOrigins: s.corsOrigins,
      rateLimit: { ip: s.rateIp, client: s.rateClient },
      maxUploadBytes: s.maxUploadBytes,
      maxConcurrentUploads: s.maxConcurrentUploads,
      tickMs: s.tickMs,
      foldWorker: s.foldWorker,
      tokenTtlMs: s.tokenTtlMs,
      bodyTimeoutMs: s.bodyTimeoutMs,
      ...(s.trustProxy !== undefined ? { trustProxy: s.trustProxy } : {}),
    },
  });
  // Deploy has no esbuild at request time: it serves the bundles committed under web/dist.
  mountUi(app, {
    kv,
    modelDir: s.modelDir ?? BUNDLED_MODEL,
    baseModelName: s.modelDir ? s.modelDir.replace(/\/+$/, "").replace(/^.*\//, "") : "perfit-tiny",
    dashboardToken,
    bundle: onDeploy ? "prebuilt" : () => import("../scripts/bundle.ts").then((m) => m.bundle()),
  });
  handler = app.fetch;
  if (!onDeploy) {
    const { hostname, port } = server.addr;
    console.log(`perfit coordinator listening on http://${hostname}:${port} (kv: ${kvPath})`);
    console.log(
      dashboardToken === undefined
        ? `dashboard (public): http://${hostname}:${port}/dashboard`
        : `dashboard: http://${hostname}:${port}/dashboard?token=${dashboardToken}`,
    );
  }
  const stop = async () => {
    await server.shutdown();
    await app.close();
    events.close();
    kv.close();
    Deno.exit(0);
  };
  if (!onDeploy) {
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
  }
}

if (import.meta.main) await main();
