/**
 * Issue 12's load benchmark: 1000 honest clients upload one round while 50 attackers hold slow
 * bodies and 50 flood uploads with distinct metric names, against the same round without attackers,
 * interleaved (attack-free, attack, attack-free, attack, …). Reports honest uploads/s and p99 latency
 * per case with the median and range, and checks that nothing was lost and every round closed.
 *
 *   deno run -A --unstable-kv bench/server_attack.ts [--pairs=3] [--clients=1000] [--n=1048576]
 *       [--concurrency=64] [--slow=50] [--flood=50] [--flood-body=small|full]
 *
 * The server is a subprocess (this file with `--serve`): `createApp` on a KV file on disk, on a real
 * loopback `Deno.serve`, with the shipped defaults (body deadline 30 s at 8 KiB/s, one upload per
 * client, 512 MiB receive budget, 8 decode permits, rate limits 50/s per IP and 10/s per client)
 * and `trustProxy: 1`: every client, honest or not, sends its own `X-Forwarded-For` address, as
 * behind a reverse proxy, so the per-IP limit sees 1100 addresses rather than one loopback peer.
 * Each case starts a fresh server and KV file. The attackers run in a third process, so that their
 * JS does not delay the honest load generator's (on the bench machine all three share two cores).
 *
 * Honest clients: the 8 PerFIT updates of bench/server_uploads.ts (N = 2^20 at budget N/4: 1.13 MiB
 * bodies, every mask new, the search round), C at a time over the lean keep-alive client of
 * raw_http.ts; a 503 is retried after its Retry-After, like the runtime client.
 * Slow attackers: joined clients, each on a raw TCP socket declaring the honest body's length,
 * sending 10 bytes and then 64 bytes a second (far below the 8 KiB/s pace); when the server cuts
 * one off (408) it reconnects at once.
 * Flooders: joined clients, each sending uploads with 16 metric names never used before, one after
 * the other without pause (they ignore Retry-After): 422 bad_metrics, or 429 once rate limited. The
 * bodies are forged (our encoder refuses such metrics) and, with `--flood-body=small` (default), a
 * few hundred bytes; `full` pads them to the honest size.
 */
import { encodeUpdate } from "../runtime/client/wire.ts";
import { encodeSafetensors } from "../runtime/io/safetensors.ts";
import { RawHttpConnection } from "./raw_http.ts";
import { fmtSpread, loadAverages, procStatusMb, spread } from "./machine.ts";

const ADMIN = "bench-admin-token-0123456789";
const SECRET = "bench-secret-0123456789abcdef";
const enc = new TextEncoder();

function arg(name: string, dflt: number): number {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.split("=")[1]) : dflt;
}

// ---------- the server (child process) ----------

async function serve(kvPath: string): Promise<void> {
  const { createApp } = await import("../server/app.ts");
  const { initKernels } = await import("../runtime/kernels/mod.ts");
  await initKernels().catch(() => {});
  const kv = await Deno.openKv(kvPath);
  const app = createApp({ kv, config: { adminToken: ADMIN, secret: SECRET, trustProxy: 1 } });
  // What the upload route holds, for the bench to see that the attack is on.
  app.get("/bench/stats", (c) => c.json({ ...app.uploadStats(), rssMb: procStatusMb("self", "VmRSS") }));
  const server = Deno.serve({
    port: 0,
    hostname: "127.0.0.1",
    onListen: ({ port }) => console.log(`listening on http://127.0.0.1:${port}`),
  }, app.fetch);
  Deno.addSignalListener("SIGTERM", async () => {
    await server.shutdown().catch(() => {});
    await app.close().catch(() => {});
    kv.close();
    Deno.exit(0);
  });
}

async function startServer(kvPath: string): Promise<{ url: string; proc: Deno.ChildProcess }> {
  const proc = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-kv",
      // e.g. PERFIT_BENCH_DENO_FLAGS="--cpu-prof --cpu-prof-dir=/tmp/prof" to profile the server.
      ...(Deno.env.get("PERFIT_BENCH_DENO_FLAGS")?.split(" ").filter(Boolean) ?? []),
      new URL(import.meta.url).pathname,
      "--serve",
      `--kv=${kvPath}`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // The server logs one line per aborted body (the slow attackers); keep a count, not the lines.
  (async () => {
    for await (const _ of proc.stderr.pipeThrough(new TextDecoderStream())) { /* drain */ }
  })();
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

// ---------- clients ----------

interface Joined {
  id: string;
  token: string;
  ip: string;
}

/** A fake address per client: what a trusted proxy would write into X-Forwarded-For. */
const ipOf = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;

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

async function joinAll(url: string, runId: string, count: number, first: number): Promise<Joined[]> {
  const out: Joined[] = new Array(count);
  await pool(Array.from({ length: count }, (_, i) => i), 32, async (i) => {
    const ip = ipOf(first + i);
    const res = await fetch(`${url}/v1/runs/${runId}/join`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-forwarded-for": ip },
      body: "{}",
    });
    if (res.status !== 201) throw new Error(`join: ${res.status} ${await res.text()}`);
    const j = await res.json();
    out[i] = { id: j.clientId, token: j.token, ip };
  });
  return out;
}

const uploadPath = (runId: string, c: Joined) => `/v1/runs/${runId}/clients/${c.id}/rounds/1/update`;

/** Attack traffic and what the server answered it. */
interface AttackStats {
  slowConnects: number;
  slowCutOff: number;
  flood: Map<number, number>;
}

/** One slow attacker: holds an upload open at 64 bytes/s, reconnecting whenever it is cut off. */
async function slowWriter(
  port: number,
  path: string,
  c: Joined,
  length: number,
  stop: { stopped: boolean },
  stats: AttackStats,
): Promise<void> {
  while (!stop.stopped) {
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port });
    } catch {
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    stats.slowConnects++;
    const head = `POST ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${c.token}\r\n` +
      `content-type: application/octet-stream\r\nx-forwarded-for: ${c.ip}\r\ncontent-length: ${length}\r\n\r\n`;
    let answered = false;
    const reading = (async () => {
      const buf = new Uint8Array(4096);
      try {
        while ((await conn.read(buf)) !== null) answered = true;
      } catch { /* reset */ }
      answered = true;
    })();
    try {
      await conn.write(enc.encode(head));
      await conn.write(new Uint8Array(10));
      while (!stop.stopped && !answered) {
        await new Promise((r) => setTimeout(r, 1000));
        if (!answered && !stop.stopped) await conn.write(new Uint8Array(64));
      }
    } catch { /* the server closed it */ }
    if (answered && !stop.stopped) stats.slowCutOff++;
    try {
      conn.close();
    } catch { /* closed */ }
    await reading;
  }
}

/** A forged upload with 16 metric names never sent before (`--flood-body=full`: honest-sized). */
function floodBody(runId: string, seq: number, padTo: number): Uint8Array {
  const metrics = Object.fromEntries(Array.from({ length: 16 }, (_, k) => [`m${seq}_${k}`, k]));
  const values = padTo > 0
    ? new Float32Array(Math.max(1, Math.floor((padTo - 512) / 4)))
    : new Float32Array(1);
  return encodeSafetensors(
    { values: { dtype: "F32", shape: [values.length], data: values } },
    {
      format: "perfit-update/1",
      run: runId,
      round: "1",
      samples: "1",
      metrics: JSON.stringify(metrics),
      maskRef: "0".repeat(64),
    },
  );
}

/** One flooder: uploads bodies with fresh metric names back to back on a keep-alive connection. */
async function flooder(
  url: string,
  runId: string,
  c: Joined,
  padTo: number,
  stop: { stopped: boolean },
  stats: AttackStats,
  seq: { n: number },
): Promise<void> {
  let conn: RawHttpConnection | null = null;
  while (!stop.stopped) {
    try {
      conn ??= await RawHttpConnection.open(url);
      const res = await conn.request("POST", uploadPath(runId, c), {
        authorization: `Bearer ${c.token}`,
        "content-type": "application/octet-stream",
        "x-forwarded-for": c.ip,
      }, floodBody(runId, seq.n++, padTo));
      stats.flood.set(res.status, (stats.flood.get(res.status) ?? 0) + 1);
      if (res.headers.get("connection") === "close") {
        conn.close();
        conn = null;
      }
    } catch {
      conn?.close();
      conn = null;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  conn?.close();
}

/** What the attack process needs: the server, the run, its attackers and their bodies' sizes. */
interface AttackPlan {
  url: string;
  runId: string;
  slow: Joined[];
  flood: Joined[];
  length: number;
  padTo: number;
}

/**
 * The attackers, in a process of their own (attackers are other machines: their JS must not delay
 * the honest load generator's). Prints its counters as one JSON line every 250 ms, and once more
 * after SIGTERM, when it stops.
 */
async function attackProcess(planPath: string): Promise<void> {
  const plan: AttackPlan = JSON.parse(await Deno.readTextFile(planPath));
  const stop = { stopped: false };
  const stats: AttackStats = { slowConnects: 0, slowCutOff: 0, flood: new Map() };
  const port = Number(new URL(plan.url).port);
  const seq = { n: 0 };
  const report = () =>
    console.log(JSON.stringify({ ...stats, flood: Object.fromEntries(stats.flood), stopped: stop.stopped }));
  const all = [
    ...plan.slow.map((c) => slowWriter(port, uploadPath(plan.runId, c), c, plan.length, stop, stats)),
    ...plan.flood.map((c) => flooder(plan.url, plan.runId, c, plan.padTo, stop, stats, seq)),
  ];
  const timer = setInterval(report, 250);
  Deno.addSignalListener("SIGTERM", async () => {
    stop.stopped = true;
    await Promise.all(all);
    clearInterval(timer);
    report();
    Deno.exit(0);
  });
}

/** Starts the attack process; `latest()` is its last counters. */
function startAttack(plan: AttackPlan, dir: string): {
  latest: () => { slowConnects: number; slowCutOff: number; flood: Record<string, number> } | null;
  stop: () => Promise<void>;
} {
  const path = `${dir}/attack.json`;
  Deno.writeTextFileSync(path, JSON.stringify(plan));
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, `--attack=${path}`],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let last: ReturnType<ReturnType<typeof startAttack>["latest"]> = null;
  const lines = (async () => {
    let buf = "";
    for await (const chunk of proc.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.startsWith("{")) last = JSON.parse(line);
      }
    }
  })();
  return {
    latest: () => last,
    async stop() {
      proc.kill("SIGTERM");
      await proc.status;
      await lines;
    },
  };
}

const floodTotal = (f: Record<string, number> | undefined) =>
  Object.values(f ?? {}).reduce((a, b) => a + b, 0);

/** utime + stime of a process in seconds (Linux /proc), NaN elsewhere. */
function cpuSeconds(pid: number): number {
  try {
    const f = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

interface CaseResult {
  attack: boolean;
  uploadsPerS: number;
  p50: number;
  p99: number;
  accepted: number;
  failures: number;
  retries: number;
  closed: boolean;
  heldDuring: string;
  attackLine: string;
  peakRssMb: number;
  /** Server CPU during the honest round, per honest upload (attack work included), in ms. */
  serverCpuMs: number;
  load: string;
}

/** One case on a fresh server: join everyone, start the attack (if any), time the honest round. */
async function oneCase(attack: boolean, o: {
  clients: number;
  n: number;
  concurrency: number;
  slow: number;
  flood: number;
  floodFull: boolean;
}): Promise<CaseResult> {
  const dir = await Deno.makeTempDir({ prefix: "perfit-attack-" });
  const { url, proc } = await startServer(`${dir}/bench.kv`);
  const admin = { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" };
  let attacker: ReturnType<typeof startAttack> | null = null;
  try {
    const budget = o.n / 4;
    const runRes = await fetch(`${url}/v1/runs`, {
      method: "POST",
      headers: admin,
      body: JSON.stringify({
        baseModel: "bench",
        lora: { rank: 8, alpha: 16, targets: ["q", "v"] },
        method: "perfit",
        rounds: 1,
        clientsPerRound: o.clients,
        quorum: o.clients,
        roundDeadlineMs: 3_600_000,
        adapterSize: o.n,
        budget,
        expansionTiers: { low: 1, high: 4 },
        maxNorm: 1e9,
        maxClients: o.clients + o.slow + o.flood,
      }),
    });
    if (runRes.status !== 201) throw new Error(`create run: ${runRes.status} ${await runRes.text()}`);
    const runId = (await runRes.json()).run.id as string;
    const honest = await joinAll(url, runId, o.clients, 0);
    const slow = await joinAll(url, runId, o.slow, o.clients);
    const floods = await joinAll(url, runId, o.flood, o.clients + o.slow);

    const updates: Uint8Array[] = [];
    for (let b = 0; b < 8; b++) {
      const mask = new Uint8Array(o.n);
      const values = new Float32Array(o.n);
      let s = 12345 + b;
      for (let k = 0; k < budget;) {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        const p = s % o.n;
        if (!mask[p]) {
          mask[p] = 1;
          values[p] = ((s >>> 8) % 2000) / 1000 - 1;
          k++;
        }
      }
      updates.push(
        encodeUpdate({ run: runId, round: 1, mask, values, samples: 10 + b, metrics: { loss: 2 } }),
      );
    }
    const bodyBytes = updates[0].byteLength;
    const conns = await Promise.all(Array.from({ length: o.concurrency }, () => RawHttpConnection.open(url)));

    let heldDuring = "—";
    if (attack) {
      attacker = startAttack(
        { url, runId, slow, flood: floods, length: bodyBytes, padTo: o.floodFull ? bodyBytes : 0 },
        dir,
      );
      // The clock starts once every slow body is being held.
      for (let t = 0; t < 200; t++) {
        const s = await (await fetch(`${url}/bench/stats`)).json();
        if (s.receiving >= o.slow) break;
        await new Promise((r) => setTimeout(r, 50));
      }
    }

    const lat: number[] = [];
    let failures = 0;
    let retries = 0;
    const load0 = loadAverages();
    const flood0 = floodTotal(attacker?.latest()?.flood);
    const sample = setInterval(async () => {
      try {
        const s = await (await fetch(`${url}/bench/stats`)).json();
        heldDuring = `${s.receiving} bodies arriving, ${(s.bytes / 1024).toFixed(0)} KiB held`;
      } catch { /* between requests */ }
    }, 1000);
    const cpu0 = cpuSeconds(proc.pid);
    const t0 = performance.now();
    let next = 0;
    await Promise.all(conns.map(async (conn) => {
      while (next < honest.length) {
        const i = next++;
        const c = honest[i];
        const s = performance.now();
        for (let attempt = 0;; attempt++) {
          const res = await conn.request("POST", uploadPath(runId, c), {
            authorization: `Bearer ${c.token}`,
            "content-type": "application/octet-stream",
            "x-forwarded-for": c.ip,
          }, updates[i % updates.length]);
          if (res.status === 503 && attempt < 20) {
            retries++;
            await new Promise((r) => setTimeout(r, 1000 * Number(res.headers.get("retry-after") ?? 1)));
            continue;
          }
          if (res.status !== 201) {
            failures++;
            if (failures <= 3) console.error(`honest upload failed: ${res.status} ${res.body}`);
          }
          break;
        }
        lat.push(performance.now() - s);
      }
    }));
    const wall = (performance.now() - t0) / 1000;
    const serverCpuMs = ((cpuSeconds(proc.pid) - cpu0) * 1000) / honest.length;
    clearInterval(sample);
    const load1 = loadAverages();
    const floodDuring = floodTotal(attacker?.latest()?.flood) - flood0;
    for (const conn of conns) conn.close();

    // The round closes at its last seat: wait for it, then count what it accepted.
    let closed = false;
    for (let t = 0; t < 600 && !closed; t++) {
      const info = await (await fetch(`${url}/v1/runs/${runId}`, { headers: admin })).json();
      closed = info.run.status === "done" && info.run.globalRound >= 1;
      if (!closed) await new Promise((r) => setTimeout(r, 100));
    }
    const metrics = await (await fetch(`${url}/v1/runs/${runId}/metrics`, { headers: admin })).json();
    const accepted = metrics.rounds.find((r: { index: number }) => r.index === 1)?.accepted ?? 0;
    await attacker?.stop();
    const stats = attacker?.latest() ?? { slowConnects: 0, slowCutOff: 0, flood: {} };
    attacker = null;
    const peakRssMb = procStatusMb(proc.pid, "VmHWM");
    lat.sort((a, b) => a - b);
    const floodCodes = Object.entries(stats.flood).sort((a, b) => Number(a[0]) - Number(b[0]))
      .map(([k, v]) => `${v}× ${k}`).join(", ");
    return {
      attack,
      uploadsPerS: honest.length / wall,
      p50: pct(lat, 50),
      p99: pct(lat, 99),
      accepted,
      failures,
      retries,
      closed,
      heldDuring,
      attackLine: attack
        ? `slow: ${o.slow} held, ${stats.slowConnects} connections, ${stats.slowCutOff} cut off (408); ` +
          `flood: ${(floodDuring / wall).toFixed(0)} req/s during the round (${floodCodes})`
        : "—",
      peakRssMb,
      serverCpuMs,
      load: `${load0} → ${load1}`,
    };
  } finally {
    await attacker?.stop().catch(() => {});
    proc.kill("SIGTERM");
    await proc.status;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Runs the interleaved comparison and returns a Markdown section. */
export async function run(): Promise<string> {
  const o = {
    clients: arg("clients", 1000),
    n: arg("n", 1 << 20),
    concurrency: arg("concurrency", 64),
    slow: arg("slow", 50),
    flood: arg("flood", 50),
    floodFull: Deno.args.includes("--flood-body=full"),
  };
  const pairs = arg("pairs", 3);
  const results: CaseResult[] = [];
  for (let p = 0; p < pairs; p++) {
    for (const attack of [false, true]) {
      const r = await oneCase(attack, o);
      console.error(
        `pair ${p + 1} ${attack ? "attack" : "attack-free"}: ${r.uploadsPerS.toFixed(0)} uploads/s, p99 ${
          r.p99.toFixed(0)
        } ms, server CPU ${
          r.serverCpuMs.toFixed(1)
        } ms/upload, accepted ${r.accepted}, failures ${r.failures}, ` +
          `closed ${r.closed}, load ${r.load}; ${r.attackLine}`,
      );
      results.push(r);
    }
  }
  const free = results.filter((r) => !r.attack);
  const hit = results.filter((r) => r.attack);
  const ratio = hit.map((r, i) => r.uploadsPerS / free[i].uploadsPerS);
  const lines = [
    `### Honest uploads under attack (bench/server_attack.ts)`,
    ``,
    `${o.clients} honest clients × one PerFIT upload (N = ${o.n}, budget N/4, every mask new), C = ${o.concurrency}, ` +
    `against ${o.slow} slow-body attackers and ${o.flood} metric-name flooders (${
      o.floodFull ? "honest-sized" : "small"
    } bodies), ${pairs} interleaved pairs, a fresh server and KV file per case.`,
    ``,
    `| case | honest uploads/s | p50 | p99 | server CPU / honest upload | accepted | failed | 503 retries | round closed | during the round | peak server RSS | load avg before → after |`,
    `| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |`,
    ...results.map((r, i) =>
      `| ${Math.floor(i / 2) + 1} ${r.attack ? "attack" : "attack-free"} | ${r.uploadsPerS.toFixed(0)} | ${
        r.p50.toFixed(0)
      } ms | ${r.p99.toFixed(0)} ms | ${
        r.serverCpuMs.toFixed(1)
      } ms | ${r.accepted} | ${r.failures} | ${r.retries} | ${r.closed} | ${
        r.attack ? `${r.heldDuring}; ${r.attackLine}` : "—"
      } | ${r.peakRssMb.toFixed(0)} MiB | ${r.load} |`
    ),
    ``,
    `- attack-free: ${fmtSpread(free.map((r) => r.uploadsPerS), 0)} uploads/s, p99 ${
      fmtSpread(free.map((r) => r.p99), 0)
    } ms (median, range)`,
    `- attack: ${fmtSpread(hit.map((r) => r.uploadsPerS), 0)} uploads/s, p99 ${
      fmtSpread(hit.map((r) => r.p99), 0)
    } ms`,
    `- attack / attack-free, per pair: ${ratio.map((x) => x.toFixed(2)).join(", ")} (median ${
      spread(ratio).median.toFixed(2)
    })`,
    `- server CPU per honest upload: attack-free ${fmtSpread(free.map((r) => r.serverCpuMs), 1)} ms, attack ${
      fmtSpread(hit.map((r) => r.serverCpuMs), 1)
    } ms; attack / attack-free per pair: ${
      hit.map((r, i) => (r.serverCpuMs / free[i].serverCpuMs).toFixed(2)).join(", ")
    } (what bounds the rate on a machine whose cores the server has to itself)`,
    `- every case accepted ${o.clients} of ${o.clients}: ${
      results.every((r) => r.accepted === o.clients)
    }; ` +
    `every round closed: ${results.every((r) => r.closed)}; honest failures: ${
      results.reduce((a, r) => a + r.failures, 0)
    }`,
    ``,
  ];
  return lines.join("\n");
}

if (import.meta.main) {
  const attackPlan = Deno.args.find((a) => a.startsWith("--attack="));
  if (Deno.args.includes("--serve")) {
    await serve(Deno.args.find((a) => a.startsWith("--kv="))!.slice(5));
  } else if (attackPlan) {
    await attackProcess(attackPlan.slice("--attack=".length));
  } else {
    console.log(await run());
  }
}
