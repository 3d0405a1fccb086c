/**
 * The HTTP layer's hardening (issue 12): JSON routes take only JSON (no cross-site text/plain join),
 * a trusted-proxy setting for the per-IP rate limit, 503s that keep KV's text to the server's log,
 * and tier names that cannot be Object.prototype's.
 */
import assert from "node:assert/strict";
import { ADMIN, createRun, dumpKv, makeApp, runBody } from "./server_helpers.ts";
import { captureLogs, JSON_HEADERS } from "./server_hardening_util.ts";
import { clientIp } from "../server/ratelimit.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { ThrottledLog } from "../server/errors.ts";

const admin = { authorization: `Bearer ${ADMIN}` };

Deno.test("server hardening: JSON routes refuse other content types with 415 (a cross-site text/plain join creates nothing)", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv, { corsOrigins: ["https://ok.example"] });
  const run = await createRun(app, runBody("perfit"));
  const before = await dumpKv(kv);
  // What a page on another site can send without a preflight: text/plain, a form, or no type.
  for (
    const type of [
      "text/plain;charset=UTF-8",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      null,
      "application/jsonx",
    ]
  ) {
    const res = await app.request(`/v1/runs/${run}/join`, {
      method: "POST",
      headers: { origin: "https://evil.example", ...(type === null ? {} : { "content-type": type }) },
      body: type === null ? new TextEncoder().encode('{"name":"victim"}') : '{"name":"victim"}',
    });
    assert.equal(res.status, 415, `${type}: ${res.status}`);
    assert.equal((await res.json()).error.code, "unsupported_media_type");
    const create = await app.request("/v1/runs", {
      method: "POST",
      headers: { ...admin, ...(type === null ? {} : { "content-type": type }) },
      body: type === null
        ? new TextEncoder().encode(JSON.stringify(runBody("perfit")))
        : JSON.stringify(runBody("perfit")),
    });
    assert.equal(create.status, 415, `create with ${type}`);
    await create.body?.cancel();
  }
  assert.deepEqual(await dumpKv(kv), before, "no client and no run was created");
  for (const type of ["application/json", "application/json; charset=utf-8", "Application/JSON"]) {
    const res = await app.request(`/v1/runs/${run}/join`, {
      method: "POST",
      headers: { "content-type": type },
      body: "{}",
    });
    assert.equal(res.status, 201, `${type}: ${await res.clone().text()}`);
    await res.body?.cancel();
  }
  // The preflight a JSON join needs is answered for allowed origins only.
  const pre = await app.request(`/v1/runs/${run}/join`, {
    method: "OPTIONS",
    headers: {
      origin: "https://evil.example",
      "access-control-request-method": "POST",
      "access-control-request-headers": "content-type",
    },
  });
  assert.equal(pre.headers.get("access-control-allow-origin"), null);
  await app.close();
  kv.close();
});

/** A GET /v1/runs from socket peer `peer` with an optional X-Forwarded-For. */
function from(app: ReturnType<typeof makeApp>, peer: string, xff?: string) {
  return app.request("/v1/runs", { headers: { ...admin, ...(xff ? { "x-forwarded-for": xff } : {}) } }, {
    remoteAddr: { hostname: peer, port: 1234, transport: "tcp" },
  });
}

Deno.test("server hardening: trustProxy off (default): X-Forwarded-For is ignored and cannot buy fresh rate-limit buckets", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv, { rateLimit: { ip: { rate: 0.001, burst: 1 } } });
  assert.equal((await from(app, "10.0.0.1", "1.1.1.1")).status, 200);
  const spoofed = await from(app, "10.0.0.1", "2.2.2.2");
  assert.equal(spoofed.status, 429, "a new X-Forwarded-For is the same client");
  assert.equal((await spoofed.json()).error.code, "rate_limited");
  assert.equal((await from(app, "10.0.0.2")).status, 200, "another socket peer has its own bucket");
  await app.close();
  kv.close();
});

Deno.test("server hardening: trustProxy as hops or proxy addresses: each client behind the proxy has its own bucket", async () => {
  const kv = await Deno.openKv(":memory:");
  const ip = { rate: 0.001, burst: 1 };
  // One hop: the proxy appends the real client as the last entry; earlier entries are the client's own.
  const hops = makeApp(kv, { rateLimit: { ip }, trustProxy: 1 });
  assert.equal((await from(hops, "10.0.0.1", "5.5.5.5")).status, 200);
  assert.equal((await from(hops, "10.0.0.1", "6.6.6.6")).status, 200, "a second client behind the proxy");
  assert.equal(
    (await from(hops, "10.0.0.1", "forged, 5.5.5.5")).status,
    429,
    "a prepended entry is not trusted",
  );
  await hops.close();
  // A list of proxies: only a listed peer is believed; an unlisted one is the client itself.
  const listed = makeApp(kv, { rateLimit: { ip }, trustProxy: ["10.0.0.1", "10.0.0.9"] });
  assert.equal((await from(listed, "10.0.0.1", "7.7.7.7")).status, 200);
  assert.equal(
    (await from(listed, "10.0.0.1", "8.8.8.8, 10.0.0.9")).status,
    200,
    "two listed proxies skipped",
  );
  assert.equal((await from(listed, "10.0.0.1", "7.7.7.7")).status, 429, "7.7.7.7's bucket is spent");
  assert.equal((await from(listed, "10.0.0.66", "9.9.9.9")).status, 200);
  assert.equal((await from(listed, "10.0.0.66", "4.4.4.4")).status, 429, "an unlisted peer is the client");
  await listed.close();
  kv.close();
  // The rule itself, as a function.
  assert.equal(clientIp("10.0.0.1", "1.1.1.1", false), "10.0.0.1");
  assert.equal(clientIp("10.0.0.1", "a, b, 1.1.1.1", 1), "1.1.1.1");
  assert.equal(clientIp("10.0.0.1", "3.3.3.3, 1.1.1.1", 2), "3.3.3.3");
  assert.equal(clientIp("10.0.0.1", "1.1.1.1", 5), "1.1.1.1", "fewer entries than hops: the leftmost");
  assert.equal(clientIp("::ffff:10.0.0.1", "1.1.1.1", ["10.0.0.1"]), "1.1.1.1");
  assert.equal(clientIp("10.0.0.1", "not-an-ip", 1), "10.0.0.1", "garbage in a trusted slot: the peer");
});

Deno.test("server hardening: a 503 answers a generic message and code; the detail is logged once, not per request", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const run = await createRun(app, runBody("perfit"));
  await app.coordinator.close(); // every run read now fails with the coordinator's own retryable error
  await captureLogs(async (lines) => {
    for (let i = 0; i < 3; i++) {
      const res = await app.request(`/v1/runs/${run}`, { headers: admin });
      assert.equal(res.status, 503);
      assert.equal(res.headers.get("retry-after"), "1");
      const j = await res.json();
      assert.deepEqual(j, { error: { code: "retry", message: "temporarily unavailable, retry shortly" } });
    }
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.match(lines[0], /shutting down/, "the operator sees the detail");
  });
  await app.close();
  kv.close();
  // The throttle: each distinct line once per interval, with the count of what it held back.
  let t = 0;
  const out: string[] = [];
  const log = new ThrottledLog((l) => out.push(l), 1000, () => t);
  log.log("a");
  log.log("a");
  log.log("b");
  t = 1500;
  log.log("a");
  assert.deepEqual(out, ["a", "b", "a (and 1 more times since)"]);
});

Deno.test("server hardening: tier names of Object.prototype are refused with 422; the tier table has only own entries", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const base = JSON.stringify(runBody("perfit", { expansionTiers: { low: 1, high: 4 } }));
  for (const name of ["__proto__", "constructor", "toString", "hasOwnProperty", "valueOf", "isPrototypeOf"]) {
    // Raw JSON text: an object literal in JS would not carry an own `__proto__` key.
    const body = base.replace('"low":1', `"low":1,${JSON.stringify(name)}:2`);
    assert.ok(body.includes(name));
    const res = await app.request("/v1/runs", {
      method: "POST",
      headers: { ...admin, ...JSON_HEADERS },
      body,
    });
    assert.equal(res.status, 422, `${name}: ${res.status}`);
    const j = await res.json();
    assert.equal(j.error.code, "invalid_config");
    assert.match(j.error.message, /tier name/);
  }
  assert.deepEqual((await (await app.request("/v1/runs", { headers: admin })).json()).runs, []);
  const cfg = parseRunConfig(JSON.parse(base));
  assert.deepEqual(Object.keys(cfg.expansionTiers), ["low", "high"]);
  assert.ok(Object.getOwnPropertyNames(cfg.expansionTiers).every((k) => k === "low" || k === "high"));
  await app.close();
  kv.close();
});
