/**
 * A self-hosted `denokv` server (the open-source Deno KV backend) for tests and benchmarks: finds the
 * binary that `scripts/denokv_setup.sh` built and cached, starts `denokv serve` on a free loopback
 * port with an access token and a fresh SQLite file, and waits until it answers the KV Connect
 * metadata exchange (the same request `Deno.openKv("http://…")` starts with).
 *
 * Also starts coordinator processes on it (`deno task serve --kv=http://…`), each with the pid of
 * the server process itself (not of the `deno task` wrapper), so a test can SIGKILL the coordinator.
 */

/** The denokv version the setup script builds (kept in one place: the script reads it from here too). */
export const DENOKV_VERSION = "0.14.0";

const ROOT = new URL("..", import.meta.url).pathname;

/** Where the setup script caches the binary (outside the clone, beside CI's Python venvs). */
export function denokvCacheDir(): string {
  const cache = Deno.env.get("PERFIT_CACHE") ?? `${Deno.env.get("HOME") ?? "/tmp"}/.cache/perfit`;
  return `${cache}/denokv-${DENOKV_VERSION}`;
}

function isExecutable(p: string): boolean {
  try {
    const s = Deno.statSync(p);
    return s.isFile && ((s.mode ?? 0o111) & 0o111) !== 0;
  } catch {
    return false;
  }
}

/**
 * The denokv binary: `$PERFIT_DENOKV`, else the cached build, else `tests/.tmp/denokv/bin/denokv`,
 * else `denokv` on PATH; null when there is none (run `bash scripts/denokv_setup.sh`).
 */
export function denokvBinary(): string | null {
  const env = Deno.env.get("PERFIT_DENOKV");
  if (env) return isExecutable(env) ? env : null;
  for (const p of [`${denokvCacheDir()}/bin/denokv`, `${ROOT}tests/.tmp/denokv/bin/denokv`]) {
    if (isExecutable(p)) return p;
  }
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir && isExecutable(`${dir}/denokv`)) return `${dir}/denokv`;
  }
  return null;
}

/** A free TCP port on 127.0.0.1 (bound and released: another process could take it, rarely). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Polls `f` until it returns true (every `everyMs`), or throws after `timeoutMs` with `what`. */
export async function until(
  f: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 30_000,
  everyMs = 50,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    if (await f()) return;
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A running denokv server. */
export interface DenoKvServer {
  /** `http://127.0.0.1:PORT`: what `Deno.openKv` and `--kv=` take. */
  url: string;
  token: string;
  sqlitePath: string;
  pid: number;
  proc: Deno.ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  log(): string;
  stop(): Promise<void>;
}

/** Drains a stream into `sink` in the background (a pipe nobody reads would block the child). */
function drain(stream: ReadableStream<Uint8Array<ArrayBuffer>>, sink: (s: string) => void): Promise<void> {
  return (async () => {
    try {
      for await (const s of stream.pipeThrough(new TextDecoderStream())) sink(s);
    } catch { /* the process died */ }
  })();
}

/**
 * Starts `denokv --sqlite-path <sqlitePath> serve --addr 127.0.0.1:<free port> --access-token <token>`
 * and resolves once its metadata endpoint accepts the token.
 */
export async function startDenokv(opts: { sqlitePath: string; token?: string; binary?: string }): Promise<
  DenoKvServer
> {
  const binary = opts.binary ?? denokvBinary();
  if (!binary) throw new Error("denokv is not built: run `bash scripts/denokv_setup.sh`");
  const token = opts.token ?? `perfit-kv-${crypto.randomUUID()}`;
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const proc = new Deno.Command(binary, {
    args: ["--sqlite-path", opts.sqlitePath, "serve", "--addr", `127.0.0.1:${port}`, "--access-token", token],
    stdout: "piped",
    stderr: "piped",
    env: { RUST_LOG: Deno.env.get("RUST_LOG") ?? "warn" },
  }).spawn();
  let out = "";
  const drained = Promise.all([drain(proc.stdout, (s) => out += s), drain(proc.stderr, (s) => out += s)]);
  let exited = false;
  proc.status.then(() => exited = true);
  const stop = async () => {
    if (!exited) {
      try {
        proc.kill("SIGTERM");
      } catch { /* already gone */ }
    }
    await proc.status;
    await drained;
  };
  try {
    await until(async () => {
      if (exited) throw new Error(`denokv exited before it was ready:\n${out}`);
      try {
        const res = await fetch(`${url}/`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ supportedVersions: [1, 2, 3] }),
        });
        await res.body?.cancel();
        return res.ok;
      } catch {
        return false; // not listening yet
      }
    }, `denokv to answer on ${url}`);
  } catch (e) {
    await stop();
    throw e;
  }
  return { url, token, sqlitePath: opts.sqlitePath, pid: proc.pid, proc, log: () => out, stop };
}

/** A running coordinator process. */
export interface CoordinatorProcess {
  url: string;
  /** Pid of the coordinator itself (the Deno process running server/main.ts). */
  pid: number;
  proc: Deno.ChildProcess;
  log(): string;
  /** SIGTERM (graceful: drains commits) and wait. */
  stop(): Promise<void>;
  /** SIGKILL the coordinator process: no drain, no goodbye. */
  kill(): void;
  exited(): boolean;
}

/** The children of `pid` (Linux /proc), or [] where they cannot be read. */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
      const s = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/children`).trim();
      if (s) out.push(...s.split(/\s+/).map(Number));
    }
  } catch { /* not Linux, or gone */ }
  return out;
}

/** The first process under `pid` (itself included) whose command line runs server/main.ts. */
function serverPid(pid: number): number | null {
  const queue = [pid];
  while (queue.length) {
    const p = queue.shift()!;
    try {
      const cmd = Deno.readTextFileSync(`/proc/${p}/cmdline`).split("\0");
      if (cmd.some((a) => a.endsWith("server/main.ts"))) return p;
    } catch { /* gone */ }
    queue.push(...childrenOf(p));
  }
  return null;
}

/**
 * Starts a coordinator on `kv` (a path or `http://…` of a denokv, then with `kvToken`) on a free
 * port, and resolves once it printed its address and answers `/health`. `via: "task"` runs
 * `deno task serve …` (what a user types); `via: "run"` runs `deno run … server/main.ts …` directly
 * (one process fewer, for benchmarks).
 */
export async function startCoordinator(opts: {
  kv: string;
  kvToken?: string;
  flags?: string[];
  via?: "task" | "run";
  env?: Record<string, string>;
  /** Extra Deno flags before the script (run only), e.g. --v8-flags. */
  denoFlags?: string[];
}): Promise<CoordinatorProcess> {
  const serverFlags = [`--kv=${opts.kv}`, "--port=0", ...(opts.flags ?? [])];
  const args = opts.via === "run"
    ? ["run", "-A", "--unstable-kv", ...(opts.denoFlags ?? []), `${ROOT}server/main.ts`, ...serverFlags]
    : ["task", "--quiet", "serve", ...serverFlags];
  const env: Record<string, string> = { ...opts.env };
  if (opts.kvToken) env.DENO_KV_ACCESS_TOKEN = opts.kvToken;
  const proc = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  const drained = Promise.all([drain(proc.stdout, (s) => out += s), drain(proc.stderr, (s) => out += s)]);
  let exited = false;
  proc.status.then(() => exited = true);
  let pid = proc.pid;
  const kill = () => {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* already gone */ }
  };
  const stop = async () => {
    if (!exited) {
      try {
        Deno.kill(pid, "SIGTERM");
      } catch { /* already gone */ }
    }
    await proc.status;
    await drained;
  };
  let url = "";
  try {
    await until(
      () => {
        if (exited) throw new Error(`coordinator exited before it listened:\n${out}`);
        const m = /listening on (http:\/\/[^ \n]+)/.exec(out);
        if (m) url = m[1];
        return m !== null;
      },
      "the coordinator to print its address",
      60_000,
      20,
    );
    const p = serverPid(proc.pid);
    if (p === null) throw new Error(`no server/main.ts process under pid ${proc.pid}`);
    pid = p;
    await until(async () => {
      try {
        const res = await fetch(`${url}/health`);
        await res.body?.cancel();
        return res.ok;
      } catch {
        return false;
      }
    }, `the coordinator on ${url} to answer /health`);
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    url,
    get pid() {
      return pid;
    },
    proc,
    log: () => out,
    stop,
    kill,
    exited: () => exited,
  };
}

/**
 * Removes the empty `http:` directory that server/main.ts leaves in the repository root when
 * `--kv=` is a URL (it creates the KV path's parent directory, which for `http://host:port` is
 * `http:/`). Only an empty one: never anything with contents.
 */
export function removeStrayKvDir(): void {
  try {
    Deno.removeSync(`${ROOT}http:`);
  } catch { /* absent (main.ts fixed), or not empty: left alone */ }
}
