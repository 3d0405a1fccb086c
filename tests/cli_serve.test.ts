/**
 * `deno task serve`'s rough edges, with the real server as a subprocess: `--port N` (space form), a port
 * in use that must not eat the "shown once" admin token, a short secret refused at start, and secrets
 * read from files.
 */
import assert from "node:assert/strict";

const MAIN = new URL("../server/main.ts", import.meta.url).pathname;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function spawn(args: string[], env: Record<string, string> = {}) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-kv", MAIN, "--tick-ms", "0", ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
}

/** Starts serve and reads stdout until the listening and dashboard lines are in. */
async function start(args: string[], env: Record<string, string> = {}) {
  const proc = spawn(args, env);
  const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!/listening on http:\/\/\S+/.test(out) || !/dashboard[^\n]*\n/.test(out)) {
    const { value, done } = await reader.read();
    if (done) {
      const err = await new Response(proc.stderr).text();
      throw new Error(`server exited: ${out}${err}`);
    }
    out += value;
  }
  reader.releaseLock();
  return {
    url: /listening on (http:\/\/\S+)/.exec(out)![1],
    out,
    async stop() {
      proc.kill("SIGTERM");
      await proc.status;
      await proc.stdout.cancel().catch(() => {});
      await proc.stderr.cancel().catch(() => {});
    },
  };
}

async function output(args: string[], env: Record<string, string> = {}) {
  const out = await spawn(args, env).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const exists = (p: string) => Deno.stat(p).then(() => true, () => false);

Deno.test("cli serve: `--port N` with a space works (as --port=N did), and PERFIT_PORT is the fallback", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-cli-serve-" });
  try {
    const port = freePort();
    const s = await start(["--port", String(port), "--kv", `${dir}/a.kv`]);
    try {
      assert.equal(s.url, `http://127.0.0.1:${port}`);
      assert.equal((await (await fetch(`${s.url}/health`)).json()).ok, true);
    } finally {
      await s.stop();
    }
    const envPort = freePort();
    const e = await start(["--kv", `${dir}/a.kv`], { PERFIT_PORT: String(envPort) });
    try {
      assert.equal(e.url, `http://127.0.0.1:${envPort}`);
    } finally {
      await e.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli serve: a port in use fails before any admin token is generated; the next start prints it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-cli-serve-" });
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (busy.addr as Deno.NetAddr).port;
  const kv = `${dir}/data/perfit.kv`;
  try {
    const r = await output(["--port", String(port), "--kv", kv]);
    assert.notEqual(r.code, 0);
    assert.doesNotMatch(r.stdout, /admin token/, "no token is shown for a server that never started");
    const lines = r.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], new RegExp(`^serve: port ${port} on 127\\.0\\.0\\.1 is already in use.*--port`));
    assert.equal(await exists(kv), false, "nothing was stored: the KV was not even opened");
    busy.close();
    const s = await start(["--port", String(port), "--kv", kv]);
    try {
      assert.match(s.out, /admin token \(shown once, store it now\): \S+/, "the token is generated now");
    } finally {
      await s.stop();
    }
  } finally {
    try {
      busy.close();
    } catch { /* closed above */ }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli serve: a short secret (flag, env or file) is refused at start: one line, exit 2", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-cli-serve-" });
  try {
    await Deno.writeTextFile(`${dir}/short`, "tooshort\n");
    const runs = await Promise.all([
      output(["--port", "0", "--kv", `${dir}/a.kv`, "--secret=short"]),
      output(["--port", "0", "--kv", `${dir}/a.kv`], { PERFIT_SECRET: "short" }),
      output(["--port", "0", "--kv", `${dir}/a.kv`, "--secret-file", `${dir}/short`]),
      output(["--port", "0", "--kv", `${dir}/a.kv`, "--secret-file", `${dir}/missing`]),
    ]);
    for (const r of runs) {
      assert.equal(r.code, 2, r.stderr);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert.equal(r.stdout, "");
      assert.doesNotMatch(r.stderr, /tooshort|"short"/, "the secret is not echoed");
    }
    assert.match(runs[0].stderr, /^serve: --secret must be at least 16 characters/);
    assert.match(runs[1].stderr, /^serve: PERFIT_SECRET .* must be at least 16 characters/);
    assert.match(runs[2].stderr, /^serve: the secret from --secret-file must be at least 16 characters/);
    assert.match(runs[3].stderr, /^serve: --secret-file "[^"]*missing" cannot be read/);
    assert.equal(await exists(`${dir}/a.kv`), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli serve: --admin-token-file and --secret-file: the file's token is the admin token, joins sign", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-cli-serve-" });
  try {
    await Deno.writeTextFile(`${dir}/admin`, "file-admin-token-1234\n");
    await Deno.writeTextFile(`${dir}/secret`, "a-secret-of-at-least-16-chars\n");
    const s = await start([
      "--port=0",
      `--kv=${dir}/a.kv`,
      "--admin-token-file",
      `${dir}/admin`,
      "--secret-file",
      `${dir}/secret`,
    ]);
    try {
      assert.doesNotMatch(s.out, /shown once/, "a configured token is not generated or printed");
      const auth = { authorization: "Bearer file-admin-token-1234", "content-type": "application/json" };
      const created = await fetch(`${s.url}/v1/runs`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify({
          baseModel: "m",
          lora: { rank: 1, alpha: 1, targets: ["q"] },
          method: "fedit",
          rounds: 1,
          clientsPerRound: 1,
          roundDeadlineMs: 1000,
          adapterSize: 10,
        }),
      });
      assert.equal(created.status, 201, "the file's token (without its newline) is the admin token");
      const run = (await created.json()).run.id;
      const joined = await fetch(`${s.url}/v1/runs/${run}/join`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      assert.equal(joined.status, 201, "client tokens sign with the file's secret");
      await joined.body?.cancel();
      const wrong = await fetch(`${s.url}/v1/runs`, {
        headers: { authorization: "Bearer file-admin-token" },
      });
      assert.equal(wrong.status, 401);
      await wrong.body?.cancel();
    } finally {
      await s.stop();
    }
    const both = await output([
      "--port=0",
      `--kv=${dir}/a.kv`,
      "--admin-token=x",
      `--admin-token-file=${dir}/admin`,
    ]);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /^serve: give --admin-token or --admin-token-file, not both\n$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
