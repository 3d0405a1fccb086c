/** Shared fixtures of the server tests: an app on a fresh KV, a deterministic fake trainer, a reference federation. */
import { createApp, type PerfitApp, type ServerConfig } from "../server/app.ts";
import { ApiError } from "../server/errors.ts";
import assert from "node:assert/strict";
import {
  FederatedClient,
  type FederatedClientOptions,
  type TaskInfo,
  type TrainerOutput,
} from "../runtime/client/mod.ts";
import { mulberry32 as mulberry } from "../runtime/data/rng.ts";

export const ADMIN = "test-admin-token-0123456789";
export const SECRET = "test-secret-0123456789abcdef";

/** App on `kv` with rate limits off and no deadline timer (tests drive the clock). */
export function makeApp(kv: Deno.Kv, over: Partial<ServerConfig> = {}, now?: () => number): PerfitApp {
  return createApp({
    kv,
    now,
    config: {
      adminToken: ADMIN,
      secret: SECRET,
      rateLimit: { ip: { rate: 0, burst: 0 }, client: { rate: 0, burst: 0 } },
      tickMs: 0,
      // Folds on the request thread unless a test asks for the worker: deterministic timing for
      // tests that poll with instant sleeps (server_e2e and server_folder cover the worker).
      foldWorker: false,
      ...over,
    },
  });
}

/** A fetch that routes to whichever app `get()` returns now (lets a test swap servers under clients). */
export function appFetch(get: () => PerfitApp): typeof fetch {
  return ((input: string | URL | Request, init?: RequestInit) =>
    get().request(input as string, init)) as typeof fetch;
}

/** Creates a run as admin through the API. */
export async function createRun(app: PerfitApp, body: Record<string, unknown>): Promise<string> {
  const res = await app.request("/v1/runs", {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (res.status !== 201) throw new Error(`create run: ${res.status} ${await res.text()}`);
  return (await res.json()).run.id;
}

/** Base run config for tests. */
export function runBody(
  method: "perfit" | "fedit" | "local",
  over: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    baseModel: "tiny-test",
    lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
    method,
    rounds: 3,
    clientsPerRound: 8,
    quorum: 8,
    roundDeadlineMs: 60_000,
    adapterSize: 1000,
    expansionTiers: method === "perfit" ? { low: 1, mid: 2, high: 4 } : undefined,
    budget: method === "perfit" ? 300 : undefined,
    ...over,
  };
}

/** Client idx's mask: `budget` distinct seeded positions (PerFIT) or all ones (FedIT/dense). */
export function fakeMask(idx: number, n: number, budget: number, dense: boolean): Uint8Array {
  const m = new Uint8Array(n);
  if (dense) return m.fill(1);
  const rnd = mulberry(1234 + idx);
  let k = 0;
  while (k < budget) {
    const p = Math.floor(rnd() * n);
    if (!m[p]) {
      m[p] = 1;
      k++;
    }
  }
  return m;
}

/** Deterministic stand-in for local training: moves masked values towards a client/round-specific target. */
export function fakeTrain(idx: number, round: number, adapter: Float32Array, mask: Uint8Array): Float32Array {
  const v = adapter.slice();
  for (let p = 0; p < v.length; p++) {
    if (mask[p]) v[p] = Math.fround(0.5 * v[p] + 0.1 * Math.sin(idx * 7 + round * 3 + p * 0.01));
  }
  return v;
}

/** Sample count of client idx. */
export const fakeSamples = (idx: number): number => 5 + idx;

/** Client idx's starting adapter: small, deterministic, never all zeros (the client refuses that). */
export const fakeInit = (idx: number, n: number): Float32Array =>
  Float32Array.from({ length: n }, (_, p) => Math.fround(0.01 * Math.cos(idx * 1.7 + p * 0.37)));

/** A `Trainer` for client idx (with its `initAdapter`, as `engineTrainer` has). */
export function fakeTrainer(idx: number, calls?: number[]) {
  const train = (task: TaskInfo, adapter: Float32Array, mask: Uint8Array | null): Promise<TrainerOutput> => {
    calls?.push(task.round);
    const m = mask ?? fakeMask(idx, task.adapterSize, task.budget, task.method === "fedit");
    const loss = 2 / (task.round + idx * 0.1);
    return Promise.resolve({
      values: fakeTrain(idx, task.round, adapter, m),
      mask: m,
      samples: fakeSamples(idx),
      metrics: { loss, ppl: Math.exp(loss) },
    });
  };
  return Object.assign(train, { initAdapter: (task: TaskInfo) => fakeInit(idx, task.adapterSize) });
}

/**
 * The federation the server should compute, in f64: every client trains every round on its own
 * values with the aggregated ones merged at its mask; returns each client's final adapter. With
 * `ownWeight` s ≠ 1 (perfit-own) a client merges the last round's mean with its own upload weighing
 * s times its samples, written out from the sums: (Σ nⱼvⱼ + (s − 1)·n·v) / (Σ nⱼ + (s − 1)·n).
 */
export function referenceFederation(
  method: "perfit" | "fedit" | "local",
  clients: number,
  rounds: number,
  n: number,
  budget: number,
  ownWeight = 1,
): Float32Array[] {
  const own: Float32Array[] = Array.from({ length: clients }, (_, c) => fakeInit(c, n));
  const masks: (Uint8Array | null)[] = Array(clients).fill(null);
  const global = new Float64Array(n);
  const covered = new Uint8Array(n);
  let sum = new Float64Array(n);
  let w = new Float64Array(n);
  const merge = (c: number) => {
    const m = method === "fedit" ? new Uint8Array(n).fill(1) : masks[c];
    if (!m || method === "local") return;
    // A client merges right after its upload: own[c] still holds what it uploaded.
    const extra = (ownWeight - 1) * fakeSamples(c);
    for (let p = 0; p < n; p++) {
      if (!m[p] || !covered[p]) continue;
      // Where the last round had no holder the global stands, as for PerFIT.
      own[c][p] = w[p] > 0 ? (sum[p] + extra * own[c][p]) / (w[p] + extra) : global[p];
    }
  };
  for (let r = 1; r <= rounds; r++) {
    // Every client merges the last round's sums before any of this round's enter them.
    for (let c = 0; c < clients; c++) merge(c);
    sum = new Float64Array(n);
    w = new Float64Array(n);
    for (let c = 0; c < clients; c++) {
      const m = masks[c] ?? fakeMask(c, n, budget, method === "fedit");
      own[c] = fakeTrain(c, r, own[c], m);
      masks[c] = m;
      for (let p = 0; p < n; p++) {
        if (m[p]) {
          sum[p] += fakeSamples(c) * own[c][p];
          w[p] += fakeSamples(c);
        }
      }
    }
    if (method !== "local") {
      for (let p = 0; p < n; p++) {
        if (w[p] > 0) {
          global[p] = sum[p] / w[p];
          covered[p] = 1;
        }
      }
    }
  }
  for (let c = 0; c < clients; c++) merge(c);
  return own;
}

/** `count` FederatedClients of the `runBody` federation; client i trains with `fakeTrainer(i)`. */
export function fakeClients(
  opts: (i: number) => Omit<FederatedClientOptions, "trainer">,
  count = 8,
): Promise<FederatedClient[]> {
  return Promise.all(
    Array.from({ length: count }, (_, i) => FederatedClient.create({ ...opts(i), trainer: fakeTrainer(i) })),
  );
}

/** Asserts every client finished the 3-round `runBody(method)` run with the reference federation's adapter. */
export function assertMatchesReference(
  method: "perfit" | "fedit" | "local",
  clients: FederatedClient[],
): void {
  const ref = referenceFederation(method, clients.length, 3, 1000, method === "perfit" ? 300 : 1000);
  for (let i = 0; i < clients.length; i++) {
    const d = maxDiff(clients[i].adapter!, ref[i]);
    assert.ok(d < 1e-5, `client ${i} adapter differs from the reference by ${d}`);
  }
}

/** The run's admin metrics, through `request` (an app's `request`, or `fetch` on a server's URL). */
export async function runMetrics(
  request: (path: string, init: RequestInit) => Response | Promise<Response>,
  runId: string,
  // deno-lint-ignore no-explicit-any
): Promise<any> {
  return await (await request(`/v1/runs/${runId}/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } }))
    .json();
}

/** Matches an ApiError (what a refusal throws) with this code, for `assert.rejects`. */
export const isApiError = (code: string) => (e: unknown): boolean => e instanceof ApiError && e.code === code;

/** Largest absolute difference. */
export function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

/** Every KV entry, serialized, for before/after equality checks. */
export async function dumpKv(kv: Deno.Kv): Promise<string[]> {
  const out: string[] = [];
  for await (const e of kv.list({ prefix: [] })) {
    const v = e.value instanceof Uint8Array
      ? `bytes:${Array.from(e.value.subarray(0, 64)).join(",")}:${e.value.length}`
      : JSON.stringify(e.value);
    out.push(`${JSON.stringify(e.key)}=${v}@${e.versionstamp}`);
  }
  return out;
}
