/**
 * Coordinator upload throughput: 1000 simulated clients each upload one sparse update of a
 * 1M-parameter adapter (PerFIT budget N/4, so 262 144 values + a 128 KiB bitmask ≈ 1.15 MB per body)
 * in one round over loopback. The server runs in a subprocess (its own KV file) so its peak RSS
 * (VmHWM) is measured alone. Reports uploads/s, p50/p99 latency and peak server memory.
 *
 *   deno run -A bench/server_uploads.ts [--clients=1000] [--n=1048576] [--concurrency=128] [--rounds=2]
 *       [--client=raw|fetch]
 *
 * `--client=raw` (default) plays the clients with a lean keep-alive HTTP/1.1 client (raw_http.ts) so
 * that the load generator takes as little as possible of the two cores it shares with the server;
 * `--client=fetch` uses `fetch`, as a browser or Deno client would.
 */
import { encodeUpdate } from "../runtime/client/wire.ts";
import { RawHttpConnection } from "./raw_http.ts";
import { loadAverages, procStatusMb } from "./machine.ts";

const ADMIN = "bench-admin-token-0123456789";

function arg(name: string, dflt: number): number {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.split("=")[1]) : dflt;
}

async function startServer(kvPath: string): Promise<{ url: string; proc: Deno.ChildProcess }> {
  const root = new URL("..", import.meta.url).pathname;
  const proc = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-kv",
      // e.g. PERFIT_BENCH_DENO_FLAGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the server.
      ...(Deno.env.get("PERFIT_BENCH_DENO_FLAGS")?.split(" ").filter(Boolean) ?? []),
      `${root}server/main.ts`,
      `--kv=${kvPath}`,
      "--port=0",
      "--rate-ip=0",
      "--rate-client=0",
      `--admin-token=${ADMIN}`,
      ...Deno.args.filter((a) => a.startsWith("--max-concurrent-uploads=")),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server exited early: ${buf}`);
    buf += value;
    const m = /listening on (http:\/\/[^ \n]+)/.exec(buf);
    if (m) {
      (async () => {
        while (!(await reader.read()).done) { /* drain */ }
      })();
      return { url: m[1], proc };
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
  hwm: number;
  cpuMs: number;
  threads: string;
  clientCpuMs: number;
  accepted: number;
  failures: number;
  closed: boolean;
  load: string;
}

/** Runs the benchmark and returns a Markdown section. */
export async function run(): Promise<string> {
  const clients = arg("clients", 1000);
  const n = arg("n", 1 << 20);
  const concurrency = arg("concurrency", 128);
  const rounds = arg("rounds", 2);
  const clientKind = Deno.args.find((a) => a.startsWith("--client="))?.split("=")[1] ?? "raw";
  if (clientKind !== "raw" && clientKind !== "fetch") throw new Error("--client must be raw or fetch");
  const budget = n / 4;
  const dir = await Deno.makeTempDir({ prefix: "perfit-bench-" });
  const { url, proc } = await startServer(`${dir}/bench.kv`);
  const admin = { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" };
  try {
    const runRes = await fetch(`${url}/v1/runs`, {
      method: "POST",
      headers: { ...admin, "content-type": "application/json" },
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
    await pool(idx, concurrency, async () => {
      const j = await (await fetch(`${url}/v1/runs/${runId}/join`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      })).json();
      joined.push({ id: j.clientId, token: j.token });
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
    // Connections are opened before the clock starts (clients are already connected when they upload).
    const conns = clientKind === "raw"
      ? await Promise.all(Array.from({ length: concurrency }, () => RawHttpConnection.open(url)))
      : [];
    const rows: RoundRow[] = [];
    for (let round = 1; round <= rounds; round++) {
      const bodies = updates.map((u) => encodeUpdate({ run: runId, round, ...u, metrics: { loss: 2 } }));
      rows.push(await uploadRound(url, proc.pid, runId, round, joined, bodies, concurrency, conns));
    }
    for (const c of conns) c.close();
    const mb = (x: number) => (x / 1024 / 1024).toFixed(0);
    const bodyMb = (encodeUpdate({ run: runId, round: 1, ...updates[0] }).byteLength / 1024 / 1024).toFixed(
      2,
    );
    return [
      `### Coordinator uploads (bench/server_uploads.ts)`,
      ``,
      `${clients} clients × one sparse update of an N=${n} adapter per round (budget ${budget}, body ${bodyMb} MiB), ` +
      `concurrency ${concurrency}, loopback HTTP (${
        clientKind === "raw" ? "lean keep-alive HTTP/1.1 client" : "fetch"
      }), ` +
      `server in a subprocess with a KV file on disk. Round 1 is PerFIT's search round (every mask is new and ` +
      `is stored); from round 2 each client's mask is unchanged and only referenced.`,
      ``,
      `| round | uploads/s | p50 latency | p99 latency | peak server RSS (VmHWM) | server CPU / upload | by thread (ms) | bench client CPU / upload | accepted | failures | round closed | load avg before → after |`,
      `|---|---|---|---|---|---|---|---|---|---|---|---|`,
      ...rows.map((r) =>
        [
          `| ${r.round}${r.round === 1 ? " (new masks)" : " (masks unchanged)"}`,
          `${r.uploadsPerS.toFixed(0)}`,
          `${r.p50.toFixed(0)} ms`,
          `${r.p99.toFixed(0)} ms`,
          `${mb(r.hwm)} MiB`,
          `${r.cpuMs.toFixed(1)} ms`,
          r.threads,
          `${r.clientCpuMs.toFixed(1)} ms`,
          `${r.accepted}`,
          `${r.failures}`,
          `${r.closed}`,
          `${r.load} |`,
        ].join(" | ")
      ),
      ``,
      `Peak RSS is the server's high-water mark since it started, so a later round's figure includes the earlier ones.`,
      ``,
    ].join("\n");
  } finally {
    proc.kill("SIGTERM");
    await proc.status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** One round: every client uploads once, C at a time; returns its measurements once the round closed. */
async function uploadRound(
  url: string,
  pid: number,
  runId: string,
  round: number,
  joined: { id: string; token: string }[],
  bodies: Uint8Array[],
  concurrency: number,
  conns: RawHttpConnection[],
): Promise<RoundRow> {
  const admin = { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" };
  const lat: number[] = [];
  let failures = 0;
  const cpu0 = cpuSeconds(pid);
  const self0 = cpuSeconds(Deno.pid);
  const threads0 = threadCpu(pid);
  const load0 = loadAverages();
  const t0 = performance.now();
  const path = (c: { id: string }) => `/v1/runs/${runId}/clients/${c.id}/rounds/${round}/update`;
  const headers = (c: { token: string }) => ({
    authorization: `Bearer ${c.token}`,
    "content-type": "application/octet-stream",
  });
  const report = (status: number, txt: string) => {
    if (status !== 201) {
      failures++;
      if (failures <= 3) console.error(`upload failed: ${status} ${txt}`);
    }
  };
  if (conns.length === 0) {
    await pool(joined, concurrency, async (c, i) => {
      const s = performance.now();
      const res = await fetch(`${url}${path(c)}`, {
        method: "POST",
        headers: headers(c),
        body: bodies[i % bodies.length] as Uint8Array<ArrayBuffer>,
      });
      report(res.status, res.status !== 201 ? await res.text() : (await res.body?.cancel(), ""));
      lat.push(performance.now() - s);
    });
  } else {
    let next = 0;
    await Promise.all(conns.map(async (conn) => {
      while (next < joined.length) {
        const i = next++;
        const c = joined[i];
        const s = performance.now();
        const res = await conn.request("POST", path(c), headers(c), bodies[i % bodies.length]);
        report(res.status, res.body);
        lat.push(performance.now() - s);
      }
    }));
  }
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(pid) - cpu0;
  const clientCpu = cpuSeconds(Deno.pid) - self0;
  const threads1 = threadCpu(pid);
  const clients = joined.length;
  const perThread = [...threads1].map(([k, v]) => [k, v - (threads0.get(k) ?? 0)] as const)
    .filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${((v * 1000) / clients).toFixed(1)}`).join(", ");
  const load1 = loadAverages();
  const hwm = procStatusMb(pid, "VmHWM") * 2 ** 20;
  // The round closes at the last seat; wait for it and check every upload was counted.
  let closed = false;
  for (let t = 0; t < 600 && !closed; t++) {
    const info = await (await fetch(`${url}/v1/runs/${runId}`, { headers: admin })).json();
    closed = info.run.globalRound >= round;
    if (!closed) await new Promise((r) => setTimeout(r, 100));
  }
  const metrics = await (await fetch(`${url}/v1/runs/${runId}/metrics`, { headers: admin })).json();
  const accepted = metrics.rounds.find((r: { index: number }) => r.index === round)?.accepted ?? 0;
  lat.sort((a, b) => a - b);
  return {
    round,
    uploadsPerS: clients / wall,
    p50: pct(lat, 50),
    p99: pct(lat, 99),
    hwm,
    cpuMs: (cpu * 1000) / clients,
    threads: perThread || "n/a",
    clientCpuMs: (clientCpu * 1000) / clients,
    accepted,
    failures,
    closed,
    load: `${load0} → ${load1}`,
  };
}

if (import.meta.main) console.log(await run());
