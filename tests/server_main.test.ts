/** `deno task serve` entry: defaults, printed port and one-time admin token that survives a restart. */
import assert from "node:assert/strict";

const MAIN = new URL("../server/main.ts", import.meta.url).pathname;

async function start(kvPath: string, extra: string[] = []) {
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-kv", MAIN, `--kv=${kvPath}`, "--port=0", "--tick-ms=0", ...extra],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const reader = proc.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!/listening on http:\/\/\S+/.test(out) || !/dashboard[^\n]*\n/.test(out)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server exited: ${out}`);
    out += value;
  }
  reader.releaseLock();
  const url = /listening on (http:\/\/\S+)/.exec(out)![1];
  const token = /admin token \(shown once, store it now\): (\S+)/.exec(out)?.[1] ?? null;
  const dashboardToken = /dashboard: \S+\/dashboard\?token=(\S+)/.exec(out)?.[1] ?? null;
  return {
    url,
    token,
    dashboardToken,
    out,
    async stop() {
      proc.kill("SIGTERM");
      await proc.status;
      await proc.stdout.cancel().catch(() => {});
    },
  };
}

Deno.test("server main: prints port and a one-time admin token; a restart keeps the token and the client tokens", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-main-" });
  const kvPath = `${dir}/data/perfit.kv`;
  const a = await start(kvPath);
  try {
    assert.ok(a.token, `first start prints a token: ${a.out}`);
    assert.equal((await (await fetch(`${a.url}/health`)).json()).ok, true);
    // `deno task serve` mounts the browser UI: both pages are served, cross-origin isolated.
    for (const page of ["/dashboard", "/client"]) {
      const res = await fetch(`${a.url}${page}`);
      assert.equal(res.status, 200, page);
      assert.match(res.headers.get("content-type") ?? "", /text\/html/, page);
      assert.equal(res.headers.get("cross-origin-opener-policy"), "same-origin", page);
      assert.match(await res.text(), /<html/i, page);
    }
    // No dashboard token configured: one is generated, kept in KV and printed as the dashboard's URL.
    assert.ok(a.dashboardToken, `the dashboard URL carries a token: ${a.out}`);
    const closed = await fetch(`${a.url}/ui/api/dashboard`);
    assert.equal(closed.status, 401, "the dashboard data is private by default");
    await closed.body?.cancel();
    const dash = await fetch(`${a.url}/ui/api/dashboard`, {
      headers: { authorization: `Bearer ${a.dashboardToken}` },
    });
    assert.equal(dash.status, 200);
    assert.ok(Array.isArray((await dash.json()).runs));
    const created = await fetch(`${a.url}/v1/runs`, {
      method: "POST",
      headers: { authorization: `Bearer ${a.token}`, "content-type": "application/json" },
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
    assert.equal(created.status, 201);
    const runId = (await created.json()).run.id;
    const joined = await (await fetch(`${a.url}/v1/runs/${runId}/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    }))
      .json();
    await a.stop();

    const b = await start(kvPath, ["--dashboard-token=dash-secret-1"]);
    try {
      assert.equal(b.token, null, "the token is not printed again");
      const locked = await fetch(`${b.url}/ui/api/dashboard`);
      assert.equal(locked.status, 401, "--dashboard-token protects the dashboard data");
      await locked.body?.cancel();
      const unlocked = await fetch(`${b.url}/ui/api/dashboard`, {
        headers: { authorization: "Bearer dash-secret-1" },
      });
      assert.equal(unlocked.status, 200);
      assert.equal((await unlocked.json()).runs[0].id, runId);
      const runs = await fetch(`${b.url}/v1/runs`, { headers: { authorization: `Bearer ${a.token}` } });
      assert.equal(runs.status, 200);
      assert.equal((await runs.json()).runs[0].id, runId);
      const task = await fetch(`${b.url}/v1/runs/${runId}/clients/${joined.clientId}/task`, {
        headers: { authorization: `Bearer ${joined.token}` },
      });
      assert.equal(task.status, 200, "client tokens stay valid: the HMAC secret is persisted");
      await task.body?.cancel();
      const wrong = await fetch(`${b.url}/v1/runs`, { headers: { authorization: "Bearer nope" } });
      assert.equal(wrong.status, 401);
      await wrong.body?.cancel();
    } finally {
      await b.stop();
    }
    // A restart without flags keeps the generated dashboard token; --public-dashboard opens it.
    const c = await start(kvPath);
    try {
      assert.equal(c.dashboardToken, a.dashboardToken);
    } finally {
      await c.stop();
    }
    const d = await start(kvPath, ["--public-dashboard"]);
    try {
      assert.equal(d.dashboardToken, null);
      assert.match(d.out, /dashboard \(public\)/);
      const open = await fetch(`${d.url}/ui/api/dashboard`);
      assert.equal(open.status, 200);
      await open.body?.cancel();
    } finally {
      await d.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
