/**
 * Issue 12's load benchmark found the cost of an attack in its flood of refused uploads: a joined
 * client re-sending uploads that are refused (422) got each one read, decoded and answered in full,
 * at up to its rate limit, and a client that ignored Retry-After got its 429s as fast as the server
 * could write them. A refused upload now costs its client `refusedUploadCost` tokens, and a 429 of
 * the client's bucket is held until its next token (at most `rateLimitHoldMs`).
 */
import assert from "node:assert/strict";
import { TokenBuckets } from "../server/ratelimit.ts";
import { encodeUpdate } from "../runtime/client/wire.ts";
import { fakeMask, makeApp, runBody } from "./server_helpers.ts";
import { join, JSON_HEADERS } from "./server_hardening_util.ts";
import { ADMIN } from "./server_helpers.ts";

/** An upload body with `metrics`, forged past our encoder's own check (as an attacker sends it). */
function body(run: string, metrics: Record<string, number>): Uint8Array {
  const ok = encodeUpdate({
    run,
    round: 1,
    samples: 3,
    values: new Float32Array(1000).fill(0.01),
    mask: fakeMask(0, 1000, 300, false),
    metrics: { loss: 1 },
  });
  const view = new DataView(ok.buffer, ok.byteOffset, ok.byteLength);
  const hlen = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(ok.subarray(8, 8 + hlen)));
  header.__metadata__.metrics = JSON.stringify(metrics);
  const text = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (text.length % 8)) % 8;
  const out = new Uint8Array(8 + text.length + pad + ok.length - 8 - hlen);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length + pad), true);
  out.set(text, 8);
  out.fill(0x20, 8 + text.length, 8 + text.length + pad);
  out.set(ok.subarray(8 + hlen), 8 + text.length + pad);
  return out;
}

Deno.test("server flood: each refused upload costs its client 10 tokens, so a flooder gets 4 refusals of its burst of 40, then 429; accepted uploads and 409s cost one", async () => {
  const kv = await Deno.openKv(":memory:");
  let t = 1_000_000;
  const app = makeApp(kv, {
    rateLimit: { ip: { rate: 0, burst: 0 }, client: { rate: 10, burst: 40 } },
    rateLimitHoldMs: 0,
  }, () => t);
  try {
    const created = await app.request("/v1/runs", {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}`, ...JSON_HEADERS },
      body: JSON.stringify(runBody("perfit")),
    });
    const run = (await created.json()).run.id;
    const flooder = await join(app, run);
    const send = async (c: typeof flooder, b: Uint8Array) => {
      const res = await app.request(`/v1/runs/${run}/clients/${c.id}/rounds/1/update`, {
        method: "POST",
        headers: { authorization: `Bearer ${c.token}`, "content-type": "application/octet-stream" },
        body: b as Uint8Array<ArrayBuffer>,
      });
      const code = res.status === 201 ? null : (await res.json()).error.code;
      return [res.status, code];
    };
    let seq = 0;
    const flood = () =>
      body(run, Object.fromEntries(Array.from({ length: 16 }, (_, k) => [`m${seq++}_${k}`, k])));
    const outcomes = [];
    for (let i = 0; i < 6; i++) outcomes.push(await send(flooder, flood()));
    assert.deepEqual(outcomes, [
      [422, "bad_metrics"],
      [422, "bad_metrics"],
      [422, "bad_metrics"],
      [422, "bad_metrics"],
      [429, "rate_limited"],
      [429, "rate_limited"],
    ]);
    // 40 − 4·11 − 2 = −6: 0.7 s later it may send again, and a valid upload is taken.
    t += 700;
    assert.deepEqual(await send(flooder, body(run, { loss: 1 })), [201, null]);

    // An honest client pays one token a request, also for the protocol's own refusals (409).
    const honest = await join(app, run);
    const ref = encodeUpdate({
      run,
      round: 1,
      samples: 3,
      values: new Float32Array(1000).fill(0.01),
      mask: fakeMask(1, 1000, 300, false),
      maskRef: "0".repeat(64), // a reference the coordinator does not hold
    });
    for (let i = 0; i < 30; i++) assert.deepEqual(await send(honest, ref), [409, "mask_unknown"]);
    assert.deepEqual(await send(honest, body(run, { loss: 1 })), [201, null]);
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("server flood: a 429 of the client's bucket is held until its next token (at most rateLimitHoldMs) before it is answered", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv, {
    rateLimit: { ip: { rate: 0, burst: 0 }, client: { rate: 2, burst: 1 } },
    rateLimitHoldMs: 150,
  }, () => 1_000_000); // the clock stands still: the client's next token never comes
  try {
    const created = await app.request("/v1/runs", {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN}`, ...JSON_HEADERS },
      body: JSON.stringify(runBody("perfit")),
    });
    const run = (await created.json()).run.id;
    const c = await join(app, run);
    const task = () =>
      app.request(`/v1/runs/${run}/clients/${c.id}/task`, {
        headers: { authorization: `Bearer ${c.token}` },
      });
    const first = await task();
    assert.equal(first.status, 200);
    await first.body?.cancel();
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const res = await task();
      const held = performance.now() - t0;
      assert.equal(res.status, 429);
      assert.equal(res.headers.get("retry-after"), "1");
      await res.body?.cancel();
      assert.ok(held >= 140, `answered after ${held.toFixed(0)} ms`);
    }
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("server flood: TokenBuckets.charge takes tokens into a debt of at most one burst, paid back by the refill", () => {
  let t = 0;
  const b = new TokenBuckets({ rate: 10, burst: 40 }, () => t);
  b.charge("c", 100);
  assert.ok(Math.abs(b.take("c") - 4.1) < 1e-9, "−40 tokens: 4.1 s until one is back");
  t += 4100;
  assert.equal(b.take("c"), 0);
  const off = new TokenBuckets({ rate: 0, burst: 0 }, () => t);
  off.charge("c", 100);
  assert.equal(off.take("c"), 0, "no limit, no charge");
});
