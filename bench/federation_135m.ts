/**
 * A SmolLM2-135M-shaped model (random weights, bench/model_135m.ts, written once as a model folder)
 * federated through the deployed system over loopback HTTP: the coordinator (`deno task serve`) as
 * a process on a fresh KV file, a PerFIT run created with `deno task admin create`, 4 data-owner
 * processes (`deno task client`, onnxruntime-node, activation checkpointing) and 1 headless
 * Chromium page running the browser client (/client, onnxruntime-web WASM, checkpointing, weights
 * as inputs), each on its own category of lexicon-instruct. A systems test, not a learning one:
 * the run's `train` keys keep the compute small (few local steps, short examples, batch 1).
 *
 *   deno task bench federation_135m                       # the 135M configuration (heavy)
 *   deno task bench federation_135m --model=tiny          # bundled tiny model, 2 Deno clients,
 *                                                         # Chromium only where one is installed
 *
 * Per round it reports the wall time (the coordinator's round record: opened -> closed), each
 * client's tokens/s (the `tokens` and `trainS` the client reports with its upload), each client's
 * peak memory in the round (VmHWM of the process, reset through /proc/<pid>/clear_refs at each
 * round close; for Chromium the page's renderer), the coordinator's, and the HTTP body bytes up
 * (uploads) and down (slices), counted by a relay on loopback in front of the coordinator, one per
 * client, that forwards every request unchanged.
 */
import { chromiumPath, launchBrowser, serveLoopback, type TestBrowser } from "../tests/browser_harness.ts";
import { BUNDLED_MODEL } from "../runtime/federation/run.ts";
import { loadAverages, machineLine, procStatusMb } from "./machine.ts";
import { chromiumType, descendants } from "./proc_memory.ts";
import { ensureModel135mFolder } from "./model_135m_folder.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const DENO = `${ROOT}/scripts/deno.sh`;
const CATEGORIES = ["acronyms", "computing", "dictionary", "hacker_slang", "satire"];
const ADMIN = "federation-bench-admin-token";

/** What one federation runs. */
export interface FederationOptions {
  model: "135m" | "tiny";
  /** Data-owner processes (default 4 for 135m, 2 for tiny). */
  denoClients?: number;
  /** A Chromium page as one more client: always (fails without Chromium), never, or where found. */
  browser?: "yes" | "no" | "auto";
  rounds?: number;
  /** The run's `train` keys. */
  train?: Record<string, number>;
  /** Records per client file (a tenth of them, at least one, is its held-out split). */
  records?: number;
  /** Progress lines (stderr by default). */
  log?: (line: string) => void;
}

/** One client's figures in one round. */
export interface ClientRoundFigures {
  round: number;
  tokens: number;
  trainS: number;
  tokensPerS: number;
  /** Peak resident memory while the round was open (MiB), weights included. */
  peakMb: number;
  upBytes: number;
  downBytes: number;
}

/** One client of the federation. */
export interface ClientFigures {
  name: string;
  kind: "deno" | "chromium";
  backend: string;
  tier: string;
  expansion: number;
  rounds: ClientRoundFigures[];
  /** Every other HTTP body (join, task polls, token refresh; the page, its scripts and the model). */
  otherUpBytes: number;
  otherDownBytes: number;
  /** Of `otherDownBytes`: the base model folder fetched from /ui/model/ (the browser's only). */
  modelDownBytes: number;
}

/** One round's figures. */
export interface RoundFigures {
  round: number;
  status: string;
  accepted: number;
  wallS: number;
  coordinatorPeakMb: number;
}

/** What `federate` measured. */
export interface FederationReport {
  model: string;
  modelDir: string;
  runId: string;
  clientsPerRound: number;
  train: Record<string, number>;
  rounds: RoundFigures[];
  clients: ClientFigures[];
  /** Highest sum of every Chromium process's VmRSS in one sample (MiB), when a page took part. */
  chromiumRssSumMb: number | null;
  chromiumVersion: string | null;
  wallS: number;
  loadBefore: string;
  loadAfter: string;
}

const TRAIN: Record<FederationOptions["model"], Record<string, number>> = {
  "135m": { localSteps: 4, batchSize: 1, maxLen: 64, pruneStages: 2, lr: 0.005 },
  tiny: { localSteps: 4, batchSize: 2, maxLen: 48, pruneStages: 2, lr: 0.005 },
};

/** Bytes of HTTP bodies one client sent and received, by kind. */
class Meter {
  up = new Map<number, number>();
  down = new Map<number, number>();
  otherUp = 0;
  otherDown = 0;
  modelDown = 0;
}

const add = (m: Map<number, number>, k: number, n: number) => m.set(k, (m.get(k) ?? 0) + n);

/** The round a slice body names in its safetensors metadata (-1 when it names none). */
function sliceRound(body: Uint8Array): number {
  try {
    const n = Number(new DataView(body.buffer, body.byteOffset).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(body.subarray(8, 8 + n)));
    return Number(header.__metadata__?.round ?? -1);
  } catch {
    return -1;
  }
}

/**
 * A relay on loopback in front of the coordinator that forwards every request and answer as they
 * are and counts their bodies into `m`: uploads by the round in their path, slices by the round
 * in their metadata, the rest as other traffic. The model folder streams through uncopied.
 */
function meteredRelay(target: string, m: Meter) {
  return serveLoopback(async (req) => {
    const url = new URL(req.url);
    const body = req.body ? new Uint8Array(await req.arrayBuffer()) : undefined;
    const up = /\/rounds\/(\d+)\/update$/.exec(url.pathname);
    if (body) up ? add(m.up, Number(up[1]), body.byteLength) : (m.otherUp += body.byteLength);
    const headers = new Headers(req.headers);
    for (const h of ["host", "connection", "content-length"]) headers.delete(h);
    const res = await fetch(`${target}${url.pathname}${url.search}`, {
      method: req.method,
      headers,
      body,
      redirect: "manual",
    });
    const out = new Headers(res.headers);
    if (url.pathname.endsWith("/slice") && res.ok) {
      const b = new Uint8Array(await res.arrayBuffer());
      add(m.down, sliceRound(b), b.byteLength);
      return new Response(b, { status: res.status, headers: out });
    }
    if (!res.body) return new Response(null, { status: res.status, headers: out });
    const model = url.pathname.startsWith("/ui/model/");
    const count = new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, c) {
        m.otherDown += chunk.byteLength;
        if (model) m.modelDown += chunk.byteLength;
        c.enqueue(chunk);
      },
    });
    return new Response(res.body.pipeThrough(count), { status: res.status, headers: out });
  });
}

/** A child process whose stdout and stderr lines are kept (and go to a log file). */
interface Proc {
  name: string;
  child: Deno.ChildProcess;
  pid: number;
  lines: string[];
  status: Promise<Deno.CommandStatus>;
}

function spawn(
  name: string,
  args: string[],
  logDir: string,
  env: Record<string, string> = {},
  onLine?: (line: string) => void,
): Proc {
  const child = new Deno.Command("bash", {
    args: [DENO, ...args],
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const lines: string[] = [];
  const file = Deno.openSync(`${logDir}/${name}.log`, { write: true, create: true, append: true });
  const pump = async (s: ReadableStream<Uint8Array>) => {
    let rest = "";
    const dec = new TextDecoder();
    for await (const bytes of s) {
      file.writeSync(bytes);
      const chunk = dec.decode(bytes, { stream: true });
      const parts = (rest + chunk).split(/\r?\n|\r/);
      rest = parts.pop()!;
      for (const l of parts) (lines.push(l), onLine?.(l));
    }
    if (rest) (lines.push(rest), onLine?.(rest));
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const status = pumped.then(() => child.status).finally(() => file.close());
  return { name, child, pid: child.pid, lines, status };
}

/**
 * Per-window peaks of named processes: each sample reads VmHWM (the kernel's high-water mark,
 * whatever the sampling rate); `cut()` closes the window and resets the marks through
 * /proc/<pid>/clear_refs, so the next window's peak is its own. A process that exits keeps the
 * last figure read from it.
 */
class WindowPeaks {
  private current = new Map<string, number>();
  readonly windows: Map<string, number>[] = [];
  private timer: ReturnType<typeof setInterval>;
  chromiumRssSum = 0;
  constructor(private readonly pids: () => Map<string, number[]>, ms = 250) {
    this.timer = setInterval(() => this.sample(), ms);
  }
  sample(): void {
    for (const [name, pids] of this.pids()) {
      for (const pid of pids) {
        const hwm = procStatusMb(pid, "VmHWM");
        if (Number.isFinite(hwm)) this.current.set(name, Math.max(this.current.get(name) ?? 0, hwm));
      }
    }
    let sum = 0;
    for (const pid of chromiumPids()) sum += procStatusMb(pid, "VmRSS") || 0;
    this.chromiumRssSum = Math.max(this.chromiumRssSum, sum);
  }
  cut(): void {
    this.sample();
    this.windows.push(this.current);
    this.current = new Map();
    for (const pids of this.pids().values()) {
      for (const pid of pids) {
        try {
          Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
        } catch { /* exited */ }
      }
    }
  }
  stop(): Map<string, number> {
    clearInterval(this.timer);
    this.sample();
    return this.current;
  }
}

/** Chromium processes below this one. */
function chromiumPids(): number[] {
  const out: number[] = [];
  for (const pid of descendants(Deno.pid)) {
    try {
      if (chromiumType(pid) !== null) out.push(pid);
    } catch { /* exited */ }
  }
  return out;
}

/** Chromium's renderers below this one: the page's is the one holding the model. */
function rendererPids(): number[] {
  return chromiumPids().filter((pid) => {
    try {
      return chromiumType(pid) === "renderer";
    } catch {
      return false;
    }
  });
}

/** Runs the federation and returns its figures; throws, with the processes' last lines, when it fails. */
export async function federate(o: FederationOptions): Promise<FederationReport> {
  const log = o.log ?? ((l: string) => console.error(`federation: ${l}`));
  const t0 = performance.now();
  const loadBefore = loadAverages();
  const nDeno = o.denoClients ?? (o.model === "135m" ? 4 : 2);
  const chromium = chromiumPath();
  const browser = o.browser ?? (o.model === "135m" ? "yes" : "auto");
  if (browser === "yes" && !chromium) throw new Error("no Chromium found (CHROMIUM_PATH, /usr/bin/chromium)");
  const useBrowser = browser !== "no" && chromium !== null;
  const n = nDeno + (useBrowser ? 1 : 0);
  if (n > CATEGORIES.length) throw new RangeError(`at most ${CATEGORIES.length} clients, asked for ${n}`);
  const rounds = o.rounds ?? 2;
  const train = o.train ?? TRAIN[o.model];
  const records = o.records ?? 20;
  const modelDir = o.model === "135m" ? await ensureModel135mFolder() : BUNDLED_MODEL;

  const dir = await Deno.makeTempDir({ prefix: "perfit-federation-" });
  const procs: Proc[] = [];
  const relays: { close(): Promise<void> }[] = [];
  let page: TestBrowser | null = null;
  let peaks: WindowPeaks | null = null;
  const tails = () =>
    procs.map((p) => `--- ${p.name} (pid ${p.pid}) ---\n${p.lines.slice(-15).join("\n")}`).join("\n") +
    (page ? `\n--- chromium ---\n${page.logs.slice(-15).join("\n")}` : "");
  try {
    const names = CATEGORIES.slice(0, n);
    for (const c of names) {
      const lines = (await Deno.readTextFile(`${ROOT}/datasets/lexicon-instruct/${c}.jsonl`)).trim().split(
        "\n",
      );
      await Deno.writeTextFile(`${dir}/${c}.jsonl`, lines.slice(0, records).join("\n") + "\n");
    }

    // The coordinator, as `deno task serve` runs it, on a fresh KV file; round closes cut the
    // memory windows as they are announced.
    const closed: number[] = [];
    let onClose = (_round: number) => {};
    let listening: (url: string) => void;
    const url = new Promise<string>((r) => (listening = r));
    const coord = spawn(
      "coordinator",
      [
        "run",
        "-A",
        "--unstable-kv",
        "server/main.ts",
        "--port=0",
        `--kv=${dir}/kv.sqlite3`,
        `--model=${modelDir}`,
        "--log=json",
        "--tick-ms=200",
        "--public-dashboard",
      ],
      dir,
      { PERFIT_ADMIN_TOKEN: ADMIN, PERFIT_SECRET: "federation-bench-secret-0123456789" },
      (line) => {
        const m = /listening on (http:\/\/[^ ]+)/.exec(line);
        if (m) listening(m[1]);
        if (line.startsWith("{")) {
          try {
            const e = JSON.parse(line);
            if (e.kind === "round_closed") (closed.push(e.round), onClose(e.round));
          } catch { /* not an event */ }
        }
      },
    );
    procs.push(coord);
    const server = await Promise.race([
      url,
      coord.status.then((s) => Promise.reject(new Error(`coordinator exited with ${s.code}`))),
    ]);
    log(`coordinator at ${server} (pid ${coord.pid})`);

    // The run, through the admin CLI.
    const admin = spawn(
      "admin",
      [
        "run",
        "-A",
        "examples/admin.ts",
        "create",
        `--server=${server}`,
        `--model=${modelDir}`,
        "--method=perfit",
        "--rank=8",
        "--targets=q,v",
        `--rounds=${rounds}`,
        `--clients-per-round=${n}`,
        `--quorum=${n}`,
        "--round-deadline=120m",
        `--train=${Object.entries(train).map(([k, v]) => `${k}=${v}`).join(",")}`,
        "--json",
      ],
      dir,
      { PERFIT_ADMIN_TOKEN: ADMIN },
    );
    const st = await admin.status;
    if (!st.success) throw new Error(`admin create failed (${st.code}):\n${admin.lines.join("\n")}`);
    const runId = JSON.parse(admin.lines.join("\n")).run.id as string;
    log(`run ${runId}: PerFIT, r = 8 on q,v, ${rounds} rounds, ${n} clients per round`);

    const meters = names.map(() => new Meter());
    const relayUrls: string[] = [];
    for (const m of meters) {
      const r = meteredRelay(server, m);
      relays.push(r);
      relayUrls.push(r.url);
    }

    const clientProcs: Proc[] = [];
    const pidsOf = () => {
      const m = new Map<string, number[]>([["coordinator", [coord.pid]]]);
      for (const p of clientProcs) m.set(p.name, [p.pid]);
      if (useBrowser) m.set(names[nDeno], rendererPids());
      return m;
    };
    peaks = new WindowPeaks(pidsOf);
    // The last round's window stays open until every client has its final slice.
    onClose = (round) => round < rounds && peaks!.cut();

    for (let i = 0; i < nDeno; i++) {
      const c = names[i];
      const p = spawn(
        c,
        [
          "run",
          "-A",
          "--unstable-kv",
          "examples/client.ts",
          `--server=${relayUrls[i]}`,
          `--run=${runId}`,
          `--data=${dir}/${c}.jsonl`,
          `--state=${dir}/state-${c}`,
          `--model=${modelDir}`,
          "--backend=node",
          "--checkpoint",
          "--quiet",
          "--poll-ms=500",
        ],
        dir,
        {},
        (l) => log(`${c}: ${l}`),
      );
      clientProcs.push(p);
      procs.push(p);
    }

    let browserDone: Promise<Record<string, string | undefined>> | null = null;
    let chromiumVersion: string | null = null;
    if (useBrowser) {
      const c = names[nDeno];
      page = await launchBrowser(chromium!);
      const cdp = await page.context.newCDPSession(page.page);
      chromiumVersion = (await cdp.send("Browser.getVersion")).product;
      await cdp.detach();
      const p = page.page;
      p.on("console", (m) => m.text().includes("round") && log(`${c} (chromium): ${m.text()}`));
      await p.goto(
        `${relayUrls[nDeno]}/client?run=${runId}&name=${c}&backend=wasm&checkpoint=1&weightMode=inputs`,
      );
      await p.waitForFunction(() => document.body.dataset.ready === "true");
      await p.setInputFiles("#file", `${dir}/${c}.jsonl`);
      await p.click("#join");
      browserDone = p.waitForFunction(
        () => ["done", "error"].includes(document.body.dataset.state ?? ""),
        null,
        { timeout: o.model === "135m" ? 7_200_000 : 300_000, polling: 500 },
      ).then(() =>
        p.evaluate(() => ({
          ...document.body.dataset,
          error: document.getElementById("error")!.textContent ?? "",
        }))
      );
      log(`${c}: Chromium page joined (WASM, checkpointing, weights as inputs)`);
    }

    for (const p of clientProcs) {
      const s = await p.status;
      if (!s.success) throw new Error(`client ${p.name} exited with ${s.code}`);
      log(`${p.name}: finished`);
    }
    if (browserDone) {
      const s = await browserDone;
      if (s.state !== "done") throw new Error(`the Chromium page stopped: ${s.error}`);
      log(`${names[nDeno]}: page finished (backend ${s.backend})`);
    }
    // Every client has its last slice: the last round's window ends here.
    peaks.windows.push(peaks.stop());

    const res = await fetch(`${server}/v1/runs/${runId}/metrics`, {
      headers: { authorization: `Bearer ${ADMIN}` },
    });
    if (!res.ok) throw new Error(`metrics: HTTP ${res.status} ${await res.text()}`);
    // deno-lint-ignore no-explicit-any
    const metrics: any = await res.json();
    coord.child.kill("SIGINT");
    await coord.status;

    // Window w holds round w + 1 (round 1's window opens before the clients start).
    const windowOf = (round: number, name: string) => peaks!.windows[round - 1]?.get(name) ?? NaN;
    // deno-lint-ignore no-explicit-any
    const byId = new Map<string, any>(metrics.clients.map((c: any) => [c.id, c]));
    const clients: ClientFigures[] = names.map((name, i) => {
      // deno-lint-ignore no-explicit-any
      const rec = metrics.clients.find((c: any) => c.name === name);
      const m = meters[i];
      return {
        name,
        kind: i < nDeno ? "deno" : "chromium",
        backend: i < nDeno ? "onnxruntime-node" : "onnxruntime-web WASM",
        tier: rec?.tier ?? "?",
        expansion: rec?.expansion ?? NaN,
        // deno-lint-ignore no-explicit-any
        rounds: metrics.rounds.map((r: any) => {
          // deno-lint-ignore no-explicit-any
          const u = r.clients.find((u: any) => byId.get(u.client)?.name === name);
          const tokens = u?.metrics?.tokens ?? NaN, trainS = u?.metrics?.trainS ?? NaN;
          return {
            round: r.index,
            tokens,
            trainS,
            tokensPerS: tokens / trainS,
            peakMb: windowOf(r.index, name),
            upBytes: m.up.get(r.index) ?? 0,
            downBytes: m.down.get(r.index) ?? 0,
          };
        }),
        otherUpBytes: m.otherUp,
        otherDownBytes: m.otherDown,
        modelDownBytes: m.modelDown,
      };
    });
    // deno-lint-ignore no-explicit-any
    const roundFigures: RoundFigures[] = metrics.rounds.map((r: any) => ({
      round: r.index,
      status: r.status,
      accepted: r.accepted,
      wallS: (r.closedAt - r.openedAt) / 1000,
      coordinatorPeakMb: windowOf(r.index, "coordinator"),
    }));
    await Deno.remove(dir, { recursive: true });
    return {
      model: o.model === "135m" ? "SmolLM2-135M shape, random weights" : "perfit-tiny (bundled)",
      modelDir,
      runId,
      clientsPerRound: n,
      train,
      rounds: roundFigures,
      clients,
      chromiumRssSumMb: useBrowser ? peaks.chromiumRssSum : null,
      chromiumVersion,
      wallS: (performance.now() - t0) / 1000,
      loadBefore,
      loadAfter: loadAverages(),
    };
  } catch (e) {
    // The folder is kept: its logs say what each process did.
    throw new Error(`${(e as Error).message}\n${tails()}\n(logs in ${dir})`);
  } finally {
    peaks?.stop();
    await page?.close();
    for (const p of procs) {
      try {
        p.child.kill("SIGTERM");
      } catch { /* already exited */ }
      await p.status.catch(() => {});
    }
    for (const r of relays) await r.close();
  }
}

const mb = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : "n/a");

/** The Markdown section of a report. */
export function formatReport(r: FederationReport, command: string): string {
  const lines = [
    `### Federation through the deployed system: ${r.model} (bench/federation_135m.ts)`,
    ``,
    "```",
    command,
    "```",
    ``,
    `- machine: ${machineLine()}; load average ${r.loadBefore} before, ${r.loadAfter} after`,
    `- coordinator: \`server/main.ts\` process, KV file, loopback HTTP; run ${r.runId}: PerFIT, r = 8 on q,v, ` +
    `tiers low/mid/high (×1/×2/×4), ${r.rounds.length} rounds of ${r.clientsPerRound} clients; train ` +
    `${Object.entries(r.train).map(([k, v]) => `${k}=${v}`).join(", ")}`,
    `- clients: ${r.clients.filter((c) => c.kind === "deno").length} \`examples/client.ts\` processes ` +
    `(onnxruntime-node, --checkpoint)${
      r.clients.some((c) => c.kind === "chromium")
        ? `, 1 headless Chromium page on /client (WASM, checkpoint=1, weightMode=inputs; ${r.chromiumVersion})`
        : ""
    }; one lexicon-instruct category each`,
    `- whole run: ${r.wallS.toFixed(1)} s wall, from the coordinator's start to its stop`,
    ``,
    `| round | status | uploads | wall s (opened → closed) | coordinator peak MiB |`,
    `|---:|---|---:|---:|---:|`,
    ...r.rounds.map((x) =>
      `| ${x.round} | ${x.status} | ${x.accepted} | ${x.wallS.toFixed(1)} | ${mb(x.coordinatorPeakMb)} |`
    ),
    ``,
    `| client | backend | tier | round | tokens | train s | tokens/s | peak MiB | up B | down B |`,
    `|---|---|---|---:|---:|---:|---:|---:|---:|---:|`,
  ];
  for (const c of r.clients) {
    for (const x of c.rounds) {
      lines.push(
        `| ${c.name} | ${c.backend} | ${c.tier} ×${c.expansion} | ${x.round} | ${x.tokens} | ${
          x.trainS.toFixed(1)
        } | ${x.tokensPerS.toFixed(1)} | ${mb(x.peakMb)} | ${x.upBytes} | ${x.downBytes} |`,
      );
    }
  }
  lines.push(
    ``,
    `Other HTTP bodies per client (join, task polls, token refresh; for the page also its HTML, scripts, ` +
      `ORT's WASM and the model folder):`,
    ``,
    ...r.clients.map((c) =>
      `- ${c.name}: ${c.otherUpBytes} B up, ${c.otherDownBytes} B down` +
      (c.modelDownBytes ? ` (of which the model folder: ${c.modelDownBytes} B)` : "")
    ),
  );
  if (r.chromiumRssSumMb !== null) {
    lines.push(
      `- Chromium: highest sum of all its processes' resident memory in one sample: ${
        mb(r.chromiumRssSumMb)
      } MiB`,
    );
  }
  lines.push(
    ``,
    `Wall time is the coordinator's round record (openedAt → closedAt): round 1 opens when the run is ` +
      `created, so it includes every client's start (model load, session creation). tokens/s = the ` +
      `unpadded tokens of the round's training batches / the seconds of local training (evaluation ` +
      `excluded), as each client reported them with its upload. Peak memory is VmHWM of the process ` +
      `(Chromium: its renderers), reset at each round close; the last round's window runs until ` +
      `every client has its final slice. Bytes are HTTP bodies counted by a relay in front of the ` +
      `coordinator: up = the round's upload bodies, down = the slice of that round's aggregate.`,
  );
  return lines.join("\n");
}

/** `deno task bench federation_135m [--model=tiny|135m] [--deno-clients=N] [--no-browser]`. */
export async function run(): Promise<string> {
  const arg = (k: string) => Deno.args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
  const model = arg("model") ?? "135m";
  if (model !== "135m" && model !== "tiny") throw new Error(`--model must be 135m or tiny, got ${model}`);
  const denoClients = arg("deno-clients") === undefined ? undefined : Number(arg("deno-clients"));
  if (denoClients !== undefined && !(Number.isInteger(denoClients) && denoClients >= 1)) {
    throw new Error(`--deno-clients must be a positive integer, got ${arg("deno-clients")}`);
  }
  const report = await federate({
    model,
    denoClients,
    browser: Deno.args.includes("--no-browser") ? "no" : undefined,
  });
  const cmd = `deno task bench federation_135m${model === "tiny" ? " --model=tiny" : ""}`;
  return formatReport(report, cmd);
}

if (import.meta.main) console.log(await run());
