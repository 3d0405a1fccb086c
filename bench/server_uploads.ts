/**
 * Coordinator upload throughput: 1000 simulated clients each upload one sparse update of a
 * 1M-parameter adapter (PerFIT budget N/4, so 262 144 values + a 128 KiB bitmask ≈ 1.15 MB per body)
 * in one round over loopback. The servers run in subprocesses so their peak RSS (VmHWM) is measured
 * alone. Reports uploads/s, p50/p99 latency, peak memory per instance, and refusals.
 *
 *   deno run -A bench/server_uploads.ts [--clients=1000] [--n=1048576] [--concurrency=128] [--rounds=2]
 *       [--client=raw|fetch] [--kv=file|denokv|http://HOST:PORT] [--denokv] [--instances=1]
 *       [--setups=file,denokv,denokv:3 --pairs=3] [--kv-bytes]
 *
 * Stores: `--kv=file` (default) gives each run a fresh KV file on disk; `--kv=denokv` (or `--denokv`)
 * starts a fresh self-hosted denokv server (scripts/denokv.ts; built by scripts/denokv_setup.sh) on
 * a temp SQLite file for each run; `--kv=http://…` uses a denokv that is already running
 * (DENO_KV_ACCESS_TOKEN must hold its token). `--instances=K` starts K coordinator processes on the
 * one store; the load generator's connections are spread over them in turn (a round-robin load
 * balancer), so each instance takes 1/K of the uploads.
 *
 * `--setups=A,B,…` measures each setup (`file`, `denokv`, `file:K`, `denokv:K`) once per pair, in
 * turn (A, B, A, B, …, `--pairs` times), and ends with a summary table: median and range per round.
 *
 * Uploads answered `503` (a commit that lost to another instance's, a full commit queue) are retried
 * after the server's `Retry-After`, as `FederatedClient` does; the latency of an upload runs from
 * its first try to its acceptance, and the retries are counted.
 *
 * `--kv-bytes` (denokv only) puts a byte-counting TCP proxy between the coordinators and denokv and
 * reports the bytes each way per round (up: writes; down: reads), beside the group commits the
 * coordinators log.
 * The proxy costs CPU on the same cores: figures taken with it are for traffic, not for speed.
 *
 * `--client=raw` (default) plays the clients with a lean keep-alive HTTP/1.1 client (raw_http.ts) so
 * that the load generator takes as little as possible of the two cores it shares with the server;
 * `--client=fetch` uses `fetch`, as a browser or Deno client would.
 */
import { encodeUpdate } from "../runtime/client/wire.ts";
import { RawHttpConnection } from "./raw_http.ts";
import { fmtSpread, loadAverages, procStatusMb } from "./machine.ts";
import {
  type CoordinatorProcess,
  type DenoKvServer,
  removeStrayKvDir,
  startCoordinator,
  startDenokv,
} from "../scripts/denokv.ts";

const ADMIN = "bench-admin-token-0123456789";

function arg(name: string, dflt: number): number {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.split("=")[1]) : dflt;
}

function strArg(name: string): string | undefined {
  return Deno.args.find((x) => x.startsWith(`--${name}=`))?.slice(name.length + 3);
}

/** Where the coordinators keep their state, and how many of them share it. */
interface Setup {
  /** "file": a fresh KV file; "denokv": a fresh denokv server; else the URL of a running denokv. */
  store: string;
  instances: number;
}

function parseSetup(s: string): Setup {
  const [store, k] = s.split(":").length > 2 ? [s, "1"] : s.split(":");
  if (/^https?:\/\//.test(s)) return { store: s, instances: 1 };
  if (store !== "file" && store !== "denokv") throw new Error(`setup ${s}: expected file[:K] or denokv[:K]`);
  return { store, instances: Math.max(1, Number(k ?? 1)) };
}

function setupName(s: Setup): string {
  const store = s.store === "file" ? "KV file" : s.store === "denokv" ? "denokv" : `denokv at ${s.store}`;
  return `${store}, ${s.instances} instance${s.instances > 1 ? "s" : ""}`;
}

/**
 * A TCP proxy in front of denokv that counts bytes each way. Deno's KV client speaks HTTP/2 (prior
 * knowledge) to it, many requests multiplexed on one connection, so bytes are counted by direction,
 * not by endpoint: up (coordinators → denokv) is almost all atomic writes (a snapshot read's request
 * holds only its key ranges), down (denokv → coordinators) almost all snapshot reads (a write's answer
 * is a versionstamp).
 */
class CountingProxy {
  up = 0;
  down = 0;
  private listener: Deno.TcpListener;
  private conns = new Set<Deno.Conn>();
  readonly url: string;

  constructor(private readonly target: URL) {
    this.listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.url = `http://127.0.0.1:${(this.listener.addr as Deno.NetAddr).port}`;
    this.accept();
  }

  private async accept(): Promise<void> {
    try {
      for await (const c of this.listener) this.pipe(c);
    } catch { /* closed */ }
  }

  private async pipe(c: Deno.Conn): Promise<void> {
    let u: Deno.Conn;
    try {
      u = await Deno.connect({ hostname: this.target.hostname, port: Number(this.target.port) });
    } catch {
      c.close();
      return;
    }
    this.conns.add(c).add(u);
    const copy = async (from: Deno.Conn, to: Deno.Conn, up: boolean) => {
      const buf = new Uint8Array(256 * 1024);
      try {
        for (;;) {
          const n = await from.read(buf);
          if (n === null) break;
          if (up) this.up += n;
          else this.down += n;
          let off = 0;
          while (off < n) off += await to.write(buf.subarray(off, n));
        }
      } catch { /* one side closed */ }
      try {
        to.close();
      } catch { /* already closed */ }
    };
    await Promise.all([copy(c, u, true), copy(u, c, false)]);
    this.conns.delete(c);
    this.conns.delete(u);
  }

  /** Bytes up and down since the last call. */
  take(): { up: number; down: number } {
    const out = { up: this.up, down: this.down };
    this.up = this.down = 0;
    return out;
  }

  close(): void {
    this.listener.close();
    for (const c of this.conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  }
}

async function pool<T>(
  items: T[],
  concurrency: number,
  f: (x: T, i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < items.length) {
      const i = next++;
      await f(items[i], i);
    }
  }));
}

/** utime + stime of a process in seconds (Linux /proc). */
function cpuSeconds(pid: number): number {
  try {
    const f = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

/** CPU seconds per thread name of a process (e.g. "deno" = the JS thread, "tokio-runtime-w", ...). */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  try {
    for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
      const stat = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/stat`);
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
      const f = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
      const key = t.name === String(pid) ? "main (JS)" : name;
      out.set(key, (out.get(key) ?? 0) + (Number(f[11]) + Number(f[12])) / 100);
    }
  } catch { /* not Linux */ }
  return out;
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

interface RoundRow {
  round: number;
  uploadsPerS: number;
  p50: number;
  p99: number;
  /** Peak RSS (VmHWM) of each coordinator instance, bytes. */
  hwm: number[];
  /** Peak RSS of the denokv server, bytes (NaN for a KV file or an external denokv). */
  storeHwm: number;
  /** CPU per upload: all coordinators, and the denokv server. */
  cpuMs: number;
  storeCpuMs: number;
  threads: string;
  clientCpuMs: number;
  accepted: number;
  failures: number;
  /** 503 answers retried (commit conflicts between instances, full commit queues). */
  retries: number;
  closed: boolean;
  load: string;
  /** With --kv-bytes: KV Connect bytes each way during the round. */
  kvBytes?: { up: number; down: number };
  /** With --kv-bytes: group commits attempted in the round (all instances) and the uploads they held. */
  commits?: { count: number; uploads: number };
}

/** One measured run of one setup. */
interface Measured {
  setup: Setup;
  rows: RoundRow[];
  bodyMb: string;
  at: string;
}

const ADMIN_HEADERS = { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" };

/** Starts the setup's store and coordinators, runs `rounds` upload rounds, stops everything. */
async function measure(setup: Setup, kvBytes: boolean): Promise<Measured> {
  const clients = arg("clients", 1000);
  const n = arg("n", 1 << 20);
  const concurrency = arg("concurrency", 128);
  const rounds = arg("rounds", 2);
  const clientKind = strArg("client") ?? "raw";
  if (clientKind !== "raw" && clientKind !== "fetch") throw new Error("--client must be raw or fetch");
  const budget = n / 4;
  const dir = await Deno.makeTempDir({ prefix: "perfit-bench-" });
  let denokv: DenoKvServer | null = null;
  let proxy: CountingProxy | null = null;
  const nodes: CoordinatorProcess[] = [];
  const at = new Date().toISOString().slice(11, 19);
  try {
    let kv = `${dir}/bench.kv`;
    let kvToken: string | undefined;
    if (setup.store === "denokv") {
      denokv = await startDenokv({ sqlitePath: `${dir}/denokv.sqlite` });
      kv = denokv.url;
      kvToken = denokv.token;
    } else if (setup.store !== "file") {
      kv = setup.store;
      kvToken = Deno.env.get("DENO_KV_ACCESS_TOKEN");
      if (!kvToken) throw new Error(`--kv=${kv}: set DENO_KV_ACCESS_TOKEN to the denokv server's token`);
    }
    if (kvBytes) {
      if (setup.store === "file") throw new Error("--kv-bytes counts denokv traffic: use a denokv setup");
      proxy = new CountingProxy(new URL(kv));
      kv = proxy.url;
    }
    const denoFlags = Deno.env.get("PERFIT_BENCH_DENO_FLAGS")?.split(" ").filter(Boolean) ?? [];
    for (let i = 0; i < setup.instances; i++) {
      nodes.push(
        await startCoordinator({
          kv,
          kvToken,
          via: "run",
          // --kv-bytes: the coordinators log each group commit ("flush: group N"), counted per round.
          env: kvBytes ? { PERFIT_DEBUG: "1" } : undefined,
          // e.g. PERFIT_BENCH_DENO_FLAGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the server.
          denoFlags,
          flags: [
            "--rate-ip=0",
            "--rate-client=0",
            `--admin-token=${ADMIN}`,
            "--public-dashboard",
            ...Deno.args.filter((a) => a.startsWith("--max-concurrent-uploads=")),
          ],
        }),
      );
    }
    const urls = nodes.map((x) => x.url);
    const runRes = await fetch(`${urls[0]}/v1/runs`, {
      method: "POST",
      headers: ADMIN_HEADERS,
      body: JSON.stringify({
        baseModel: "bench",
        lora: { rank: 8, alpha: 16, targets: ["q", "v"] },
        method: "perfit",
        rounds,
        clientsPerRound: clients,
        quorum: clients,
        roundDeadlineMs: 3_600_000,
        adapterSize: n,
        budget,
        expansionTiers: { low: 1, high: 4 },
        maxNorm: 1e9,
        maxClients: clients,
      }),
    });
    const runId = (await runRes.json()).run.id as string;
    const joined: { id: string; token: string }[] = [];
    const idx = Array.from({ length: clients }, (_, i) => i);
    await pool(idx, Math.min(concurrency, 32), async (_, i) => {
      for (;;) {
        const res = await fetch(`${urls[i % urls.length]}/v1/runs/${runId}/join`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: "{}",
        });
        if (res.status === 503) {
          await res.body?.cancel();
          continue; // join contention between instances (the join counter's check): retry
        }
        const j = await res.json();
        joined.push({ id: j.clientId, token: j.token });
        return;
      }
    });
    // A few distinct sparse updates, reused across clients (the server never compares one client's
    // body with another's: upload ids and mask references are per client). Client i sends update
    // i % 8 in every round, so from round 2 on its mask is unchanged, as after PerFIT's search.
    const updates: { mask: Uint8Array; values: Float32Array; samples: number }[] = [];
    for (let b = 0; b < 8; b++) {
      const mask = new Uint8Array(n);
      const values = new Float32Array(n);
      let s = 12345 + b;
      for (let k = 0; k < budget;) {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        const p = s % n;
        if (!mask[p]) {
          mask[p] = 1;
          values[p] = ((s >>> 8) % 2000) / 1000 - 1;
          k++;
        }
      }
      updates.push({ mask, values, samples: 10 + b });
    }
    // Connections are opened before the clock starts (clients are already connected when they
    // upload), spread over the instances in turn.
    const conns = clientKind === "raw"
      ? await Promise.all(
        Array.from({ length: concurrency }, (_, i) => RawHttpConnection.open(urls[i % urls.length])),
      )
      : [];
    const rows: RoundRow[] = [];
    for (let round = 1; round <= rounds; round++) {
      const bodies = updates.map((u) => encodeUpdate({ run: runId, round, ...u, metrics: { loss: 2 } }));
      proxy?.take();
      const logAt = nodes.map((x) => x.log().length);
      const row = await uploadRound(
        urls,
        nodes.map((x) => x.pid),
        denokv?.pid ?? null,
        runId,
        round,
        joined,
        bodies,
        concurrency,
        conns,
      );
      if (proxy) {
        row.kvBytes = proxy.take();
        const groups = nodes.flatMap((x, k) =>
          [...x.log().slice(logAt[k]).matchAll(/flush: group (\d+)/g)].map((m) => Number(m[1]))
        );
        row.commits = { count: groups.length, uploads: groups.reduce((a, b) => a + b, 0) };
      }
      rows.push(row);
    }
    for (const c of conns) c.close();
    const bodyMb = (encodeUpdate({ run: runId, round: 1, ...updates[0] }).byteLength / 1024 / 1024).toFixed(
      2,
    );
    return { setup, rows, bodyMb, at };
  } finally {
    await Promise.all(nodes.map((x) => x.stop()));
    proxy?.close();
    await denokv?.stop();
    removeStrayKvDir();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const mb = (x: number) => (x / 1024 / 1024).toFixed(0);

/** One run's table. */
function section(m: Measured): string {
  const clients = arg("clients", 1000);
  const n = arg("n", 1 << 20);
  const concurrency = arg("concurrency", 128);
  const clientKind = strArg("client") ?? "raw";
  const out = [
    `### Coordinator uploads (bench/server_uploads.ts): ${setupName(m.setup)}, ${m.at} UTC`,
    ``,
    `${clients} clients × one sparse update of an N=${n} adapter per round (budget ${
      n / 4
    }, body ${m.bodyMb} MiB), ` +
    `concurrency ${concurrency}, loopback HTTP (${
      clientKind === "raw" ? "lean keep-alive HTTP/1.1 client" : "fetch"
    }), ${m.setup.instances} coordinator process${m.setup.instances > 1 ? "es" : ""} on ${
      m.setup.store === "file"
        ? "one KV file on disk"
        : "one denokv server (SQLite file on disk, loopback HTTP)"
    }. Round 1 is PerFIT's search round (every mask is new and is stored); from round 2 each client's mask is ` +
    `unchanged and only referenced.`,
    ``,
    `| round | uploads/s | p50 latency | p99 latency | peak RSS per instance (VmHWM) | denokv peak RSS | coordinators' CPU / upload | denokv CPU / upload | by thread (ms) | bench client CPU / upload | accepted | 503 retried | failures | round closed | load avg before → after |`,
    `|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|`,
    ...m.rows.map((r) =>
      [
        `| ${r.round}${r.round === 1 ? " (new masks)" : " (masks unchanged)"}`,
        `${r.uploadsPerS.toFixed(0)}`,
        `${r.p50.toFixed(0)} ms`,
        `${r.p99.toFixed(0)} ms`,
        r.hwm.map((h) => `${mb(h)}`).join(" / ") + " MiB",
        Number.isNaN(r.storeHwm) ? "–" : `${mb(r.storeHwm)} MiB`,
        `${r.cpuMs.toFixed(1)} ms`,
        Number.isNaN(r.storeCpuMs) ? "–" : `${r.storeCpuMs.toFixed(1)} ms`,
        r.threads,
        `${r.clientCpuMs.toFixed(1)} ms`,
        `${r.accepted}`,
        `${r.retries}`,
        `${r.failures}`,
        `${r.closed}`,
        `${r.load} |`,
      ].join(" | ")
    ),
    ``,
    `Peak RSS is each process's high-water mark since it started, so a later round's figure includes the earlier ones.`,
    ``,
  ];
  if (m.rows.some((r) => r.kvBytes)) {
    const n = arg("n", 1 << 20);
    const mib = (x: number) => `${(x / 2 ** 20).toFixed(0)} MiB`;
    out.push(
      `KV Connect traffic through the counting proxy. Up (coordinators → denokv) is almost all atomic writes, ` +
        `down (denokv → coordinators) almost all reads. What the writes hold follows from the commits the ` +
        `coordinators logged (PERFIT_DEBUG=1): each group commit writes the whole sum (4·N = ${
          mib(4 * n)
        }), ` +
        `and each new mask is written once (N/8 = ${
          (n / 8 / 1024).toFixed(0)
        } KiB; in the search round every ` +
        `mask is new). A reload after another instance's commit reads the sum and every accepted upload's mask.`,
      ``,
      `| round | bytes up | bytes down | group commits (attempted, all instances) | uploads in them | of the bytes up: sums (commits × 4·N) | new masks (uploads × N/8) |`,
      `|---|---|---|---|---|---|---|`,
    );
    for (const r of m.rows) {
      const c = r.commits!;
      const masks = r.round === 1 ? (arg("clients", 1000) * n) / 8 : 0;
      out.push(
        `| ${r.round} | ${mib(r.kvBytes!.up)} | ${mib(r.kvBytes!.down)} | ${c.count} | ${c.uploads} | ${
          mib(c.count * 4 * n)
        } | ${mib(masks)} |`,
      );
    }
    out.push(``);
  }
  return out.join("\n");
}

/** Median (range) of each setup's figures per round, over the interleaved runs. */
function summary(all: Measured[], setups: Setup[], pairs: number): string {
  const out = [
    `### Summary: ${pairs} interleaved repetitions of ${setups.map(setupName).join(" / ")}`,
    ``,
    `| setup | round | uploads/s, median (range) | each run | p50, median (range) | p99, median (range) | peak RSS per instance, max over instances (range) | 503 retried, median (range) | accepted / failures |`,
    `|---|---|---|---|---|---|---|---|---|`,
  ];
  for (const s of setups) {
    const runs = all.filter((m) => m.setup === s);
    for (let r = 0; r < runs[0].rows.length; r++) {
      const rows = runs.map((m) => m.rows[r]);
      out.push(
        [
          `| ${setupName(s)}`,
          `${r + 1}${r === 0 ? " (new masks)" : " (masks unchanged)"}`,
          `**${fmtSpread(rows.map((x) => x.uploadsPerS), 0)}**`,
          rows.map((x) => x.uploadsPerS.toFixed(0)).join(", "),
          `${fmtSpread(rows.map((x) => x.p50), 0)} ms`,
          `${fmtSpread(rows.map((x) => x.p99), 0)} ms`,
          `${fmtSpread(rows.map((x) => Math.max(...x.hwm) / 2 ** 20), 0)} MiB`,
          fmtSpread(rows.map((x) => x.retries), 0),
          `${rows.map((x) => x.accepted).join(", ")} / ${rows.reduce((a, x) => a + x.failures, 0)} |`,
        ].join(" | "),
      );
    }
  }
  out.push(``);
  return out.join("\n");
}

/** Runs the benchmark and returns a Markdown section. */
export async function run(): Promise<string> {
  const kvBytes = Deno.args.includes("--kv-bytes");
  const setupsArg = strArg("setups");
  if (setupsArg) {
    const setups = setupsArg.split(",").map(parseSetup);
    const pairs = arg("pairs", 3);
    const all: Measured[] = [];
    const parts: string[] = [`Load average before: ${loadAverages()}`, ``];
    for (let i = 0; i < pairs; i++) {
      for (const s of setups) {
        const m = await measure(s, kvBytes);
        all.push(m);
        const text = section(m);
        console.error(text); // progress, and the raw record of each run
        parts.push(text);
      }
    }
    parts.push(`Load average after: ${loadAverages()}`, ``, summary(all, setups, pairs));
    return parts.join("\n");
  }
  const kv = strArg("kv") ?? (Deno.args.includes("--denokv") ? "denokv" : "file");
  const setup: Setup = /^https?:\/\//.test(kv)
    ? { store: kv, instances: arg("instances", 1) }
    : { ...parseSetup(kv), instances: arg("instances", 1) };
  return section(await measure(setup, kvBytes));
}

/** One round: every client uploads once, C at a time; returns its measurements once the round closed. */
async function uploadRound(
  urls: string[],
  pids: number[],
  storePid: number | null,
  runId: string,
  round: number,
  joined: { id: string; token: string }[],
  bodies: Uint8Array[],
  concurrency: number,
  conns: RawHttpConnection[],
): Promise<RoundRow> {
  const lat: number[] = [];
  let failures = 0;
  let retries = 0;
  const cpuOf = (ps: number[]) => ps.reduce((a, p) => a + cpuSeconds(p), 0);
  const cpu0 = cpuOf(pids);
  const store0 = storePid === null ? NaN : cpuSeconds(storePid);
  const self0 = cpuSeconds(Deno.pid);
  const threads0 = pids.map(threadCpu);
  const load0 = loadAverages();
  const t0 = performance.now();
  const path = (c: { id: string }) => `/v1/runs/${runId}/clients/${c.id}/rounds/${round}/update`;
  const headers = (c: { token: string }) => ({
    authorization: `Bearer ${c.token}`,
    "content-type": "application/octet-stream",
  });
  /** null when the upload is settled (accepted, or failed for good), else the ms to wait before its retry. */
  const report = (status: number, txt: string, retryAfter: string | null | undefined): number | null => {
    if (status === 201 || status === 200) return null;
    if (status === 503 && retries < 50 * joined.length) {
      retries++;
      return Math.min(10_000, Number(retryAfter ?? 1) * 1000);
    }
    failures++;
    if (failures <= 3) console.error(`upload failed: ${status} ${txt}`);
    return null;
  };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  if (conns.length === 0) {
    await pool(joined, concurrency, async (c, i) => {
      const s = performance.now();
      for (let attempt = 0;; attempt++) {
        const res = await fetch(`${urls[(i + attempt) % urls.length]}${path(c)}`, {
          method: "POST",
          headers: headers(c),
          body: bodies[i % bodies.length] as Uint8Array<ArrayBuffer>,
        });
        const ok = res.status === 201 || res.status === 200;
        const wait = report(
          res.status,
          ok ? (await res.body?.cancel(), "") : await res.text(),
          res.headers.get("retry-after"),
        );
        if (wait === null) break;
        await sleep(wait);
      }
      lat.push(performance.now() - s);
    });
  } else {
    let next = 0;
    await Promise.all(conns.map(async (conn) => {
      while (next < joined.length) {
        const i = next++;
        const c = joined[i];
        const s = performance.now();
        for (;;) {
          const res = await conn.request("POST", path(c), headers(c), bodies[i % bodies.length]);
          const wait = report(res.status, res.body, res.headers.get("retry-after"));
          if (wait === null) break;
          await sleep(wait);
        }
        lat.push(performance.now() - s);
      }
    }));
  }
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuOf(pids) - cpu0;
  const storeCpu = storePid === null ? NaN : cpuSeconds(storePid) - store0;
  const clientCpu = cpuSeconds(Deno.pid) - self0;
  const clients = joined.length;
  const perThread = new Map<string, number>();
  pids.forEach((p, k) => {
    for (const [name, v] of threadCpu(p)) {
      perThread.set(name, (perThread.get(name) ?? 0) + v - (threads0[k].get(name) ?? 0));
    }
  });
  const threads = [...perThread].filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${((v * 1000) / clients).toFixed(1)}`).join(", ");
  const load1 = loadAverages();
  const hwm = pids.map((p) => procStatusMb(p, "VmHWM") * 2 ** 20);
  const storeHwm = storePid === null ? NaN : procStatusMb(storePid, "VmHWM") * 2 ** 20;
  // The round closes at the last seat; wait for it and check every upload was counted.
  let closed = false;
  for (let t = 0; t < 600 && !closed; t++) {
    const info = await (await fetch(`${urls[0]}/v1/runs/${runId}`, { headers: ADMIN_HEADERS })).json();
    closed = info.run.globalRound >= round;
    if (!closed) await sleep(100);
  }
  const metrics = await (await fetch(`${urls[0]}/v1/runs/${runId}/metrics`, { headers: ADMIN_HEADERS }))
    .json();
  const accepted = metrics.rounds.find((r: { index: number }) => r.index === round)?.accepted ?? 0;
  lat.sort((a, b) => a - b);
  return {
    round,
    uploadsPerS: clients / wall,
    p50: pct(lat, 50),
    p99: pct(lat, 99),
    hwm,
    storeHwm,
    cpuMs: (cpu * 1000) / clients,
    storeCpuMs: (storeCpu * 1000) / clients,
    threads: threads || "n/a",
    clientCpuMs: (clientCpu * 1000) / clients,
    accepted,
    failures,
    retries,
    closed,
    load: `${load0} → ${load1}`,
  };
}

if (import.meta.main) console.log(await run());
