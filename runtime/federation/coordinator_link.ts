/**
 * Where a simulation's clients send their HTTP requests: the coordinator's Hono app in this process
 * (Deno KV in memory), or a running coordinator (`deno task serve`) at a URL. Either way every byte
 * goes through the deployed routes, auth, admission and streaming aggregation.
 */
import { createApp } from "../../server/app.ts";
import { requireDeno } from "../deno_only.ts";

/** A coordinator the simulation talks to. */
export interface CoordinatorLink {
  /** Base URL the clients prefix their paths with. */
  url: string;
  /** How requests reach it: `app.request` in process, the network otherwise. */
  fetch: typeof fetch;
  /** Bearer token of the admin routes (to create the run). */
  adminToken: string;
  /**
   * Resolves once the coordinator has no work in flight (in process: its commits, closes and
   * clean-ups); absent for a remote coordinator, whose state is polled instead.
   */
  settled?: () => Promise<void>;
  /** Releases what the link opened (in process: the app and its KV). */
  close(): Promise<void>;
}

const randomToken = () => {
  const b = crypto.getRandomValues(new Uint8Array(24));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
};

/**
 * The real Hono app over an in-memory KV, reached through `app.request`. Needs Deno with `--unstable-kv`
 * (a `NeedsDenoError` elsewhere: under Node, run the clients against a `remoteCoordinator`).
 */
export async function inProcessCoordinator(): Promise<CoordinatorLink> {
  const deno = requireDeno("the in-process coordinator (simulate, runFederated without a server)", {
    kv: true,
    instead: "pass a running coordinator instead: remoteCoordinator(url, adminToken)",
  });
  const kv = await deno.openKv(":memory:");
  const adminToken = randomToken();
  const app = createApp({
    kv,
    config: {
      adminToken,
      secret: randomToken(),
      // One process drives every client: there is no abuse to limit, and no timer is needed
      // because each round closes as its last upload lands.
      rateLimit: { ip: { rate: 0, burst: 0 }, client: { rate: 0, burst: 0 } },
      tickMs: 0,
      foldWorker: false,
    },
  });
  return {
    url: "http://perfit.in-process",
    fetch: (input, init) =>
      Promise.resolve(app.request(input instanceof Request ? input : String(input), init)),
    adminToken,
    settled: () => app.coordinator.settled(),
    async close() {
      await app.close();
      kv.close();
    },
  };
}

/** A coordinator already running at `url` (e.g. `deno task serve`), with its admin token. */
export function remoteCoordinator(url: string, adminToken: string): CoordinatorLink {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RangeError(`--server must be an http(s) URL, got ${JSON.stringify(url)}`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new RangeError(`--server must be an http(s) URL, got ${JSON.stringify(url)}`);
  }
  if (!adminToken) throw new RangeError("a remote coordinator needs its admin token (--admin-token)");
  return {
    url: u.href.replace(/\/$/, ""),
    fetch: (input, init) => fetch(input, init),
    adminToken,
    close: () => Promise.resolve(),
  };
}
