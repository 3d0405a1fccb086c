/**
 * Shared set-up of the browser tests: Debian's Chromium driven by playwright-core, headless, with the
 * flags this closed network needs (no background/component/sync traffic, no QUIC; without them
 * Chromium's start-up connections are refused and slow everything down) and WebGPU enabled so a
 * SwiftShader adapter appears where the browser has one.
 */
import { type BrowserContext, chromium, type Page } from "playwright-core";

/** The Chromium binary, or null when none is installed (tests then skip with a message). */
export function chromiumPath(): string | null {
  const candidates = [Deno.env.get("CHROMIUM_PATH"), "/usr/bin/chromium", "/usr/bin/chromium-browser"];
  for (const p of candidates) {
    if (!p) continue;
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* try next */ }
  }
  return null;
}

/** Flags for headless Chromium in CI. */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
];

/** A launched browser with a fresh profile; `close()` removes the profile. */
export interface TestBrowser {
  context: BrowserContext;
  page: Page;
  /** Console and page errors, for assertion messages. */
  logs: string[];
  close(): Promise<void>;
}

/** Launches Chromium with a fresh --user-data-dir and opens one page. */
export async function launchBrowser(executablePath: string): Promise<TestBrowser> {
  const profile = await Deno.makeTempDir({ prefix: "perfit-chromium-" });
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 1400 },
  });
  const page = context.pages()[0] ?? await context.newPage();
  const logs: string[] = [];
  page.on("console", (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`[pageerror] ${e.message}`));
  return {
    context,
    page,
    logs,
    async close() {
      await context.close();
      await Deno.remove(profile, { recursive: true }).catch(() => {});
    },
  };
}

/** Where tests save screenshots (gitignored). */
export const ARTIFACTS = new URL("./.tmp/artifacts/", import.meta.url).pathname;

/** Saves a full-page screenshot under tests/.tmp/artifacts/ and returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  await Deno.mkdir(ARTIFACTS, { recursive: true });
  const path = `${ARTIFACTS}${name}.png`;
  await page.screenshot({ path, fullPage: true });
  return path;
}

/**
 * Serves a Hono-style fetch handler on a loopback port: a random one, or `port` (to bring a closed
 * server back up on the address its pages already use).
 */
export function serveLoopback(
  handler: (req: Request) => Response | Promise<Response>,
  port = 0,
): { url: string; port: number; close(): Promise<void> } {
  const ac = new AbortController();
  const server = Deno.serve({ hostname: "127.0.0.1", port, signal: ac.signal, onListen() {} }, handler);
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    port: server.addr.port,
    async close() {
      ac.abort();
      await server.finished;
    },
  };
}
