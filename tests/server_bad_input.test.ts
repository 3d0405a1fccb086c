/** Every route refuses bad input with a clear 4xx JSON error and leaves the KV byte-for-byte unchanged. */
import assert from "node:assert/strict";
import { encodeSafetensors } from "../runtime/io/safetensors.ts";
import { encodeUpdate, packMask } from "../runtime/client/wire.ts";
import { TokenSigner } from "../server/tokens.ts";
import type { PerfitApp } from "../server/app.ts";
import { ADMIN, createRun, dumpKv, fakeMask, makeApp, runBody, SECRET } from "./server_helpers.ts";

const N = 1000;
const BUDGET = 300;
/** JSON routes take only application/json (a cross-site text/plain POST gets 415). */
const json = { "content-type": "application/json" };

interface Ctx {
  kv: Deno.Kv;
  app: PerfitApp;
  runId: string;
  otherRun: string;
  a: { id: string; token: string };
  b: { id: string; token: string };
  setTime(t: number): void;
}

async function setup(): Promise<Ctx> {
  const kv = await Deno.openKv(":memory:");
  let t = 1_000_000;
  const app = makeApp(kv, { maxJsonBytes: 4096 }, () => t);
  const runId = await createRun(
    app,
    runBody("perfit", { clientsPerRound: 4, quorum: 2, roundDeadlineMs: 1000, maxNorm: 50 }),
  );
  const otherRun = await createRun(app, runBody("perfit"));
  const join = async (run: string) => {
    const r = await app.request(`/v1/runs/${run}/join`, { method: "POST", headers: json, body: "{}" });
    assert.equal(r.status, 201);
    const j = await r.json();
    return { id: j.clientId as string, token: j.token as string };
  };
  const a = await join(runId);
  const b = await join(runId);
  await join(otherRun);
  return { kv, app, runId, otherRun, a, b, setTime: (x) => (t = x) };
}

function update(
  ctx: Ctx,
  over: { round?: number; run?: string; values?: Float32Array; mask?: Uint8Array; samples?: number } = {},
): Uint8Array {
  const mask = over.mask ?? fakeMask(0, N, BUDGET, false);
  const values = over.values ?? new Float32Array(N).fill(0.01);
  return encodeUpdate({
    run: over.run ?? ctx.runId,
    round: over.round ?? 1,
    samples: over.samples ?? 3,
    values,
    mask,
    metrics: { loss: 1 },
  });
}

function upload(
  ctx: Ctx,
  who: { id: string; token: string },
  body: Uint8Array,
  round = 1,
  path = who.id,
): Promise<Response> {
  return ctx.app.request(`/v1/runs/${ctx.runId}/clients/${path}/rounds/${round}/update`, {
    method: "POST",
    headers: { authorization: `Bearer ${who.token}` },
    body: body as Uint8Array<ArrayBuffer>,
  }) as Promise<Response>;
}

/**
 * Sends a request and checks status, JSON error shape, optional code, and that KV did not change.
 * Both snapshots wait until the coordinator reports it settled: the "before" must not race the
 * clean-up of an earlier close, and the "after" must include anything the refusal set in motion.
 */
async function refused(
  ctx: Ctx,
  send: () => Response | Promise<Response>,
  status: number,
  code?: string,
): Promise<void> {
  await ctx.app.coordinator.settled();
  const before = await dumpKv(ctx.kv);
  const res = await send();
  const text = await res.text();
  await ctx.app.coordinator.settled();
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  const j = JSON.parse(text);
  assert.equal(typeof j.error?.message, "string", text);
  assert.ok(j.error.message.length > 0);
  if (code) assert.equal(j.error.code, code, text);
  assert.deepEqual(await dumpKv(ctx.kv), before, "state changed on a refused request");
}

const admin = { authorization: `Bearer ${ADMIN}` };

Deno.test("server bad input: admin routes (tokens, malformed JSON, invalid config, oversized body)", async () => {
  const ctx = await setup();
  const post = (body: string, headers: Record<string, string> = admin) => () =>
    ctx.app.request("/v1/runs", { method: "POST", headers: { ...json, ...headers }, body });
  await refused(ctx, post(JSON.stringify(runBody("perfit")), {}), 401, "unauthorized");
  await refused(ctx, post(JSON.stringify(runBody("perfit")), { authorization: "Bearer wrong-token" }), 401);
  await refused(
    ctx,
    post(JSON.stringify(runBody("perfit")), { authorization: `Bearer ${ctx.a.token}` }),
    401,
  );
  await refused(ctx, post("{not json"), 400, "malformed_json");
  await refused(
    ctx,
    post(JSON.stringify(runBody("perfit", { lora: { rank: 0, alpha: 1, targets: ["q"] } }))),
    422,
    "invalid_config",
  );
  await refused(ctx, post(JSON.stringify(runBody("perfit", { quorum: 9 }))), 422, "invalid_config");
  await refused(
    ctx,
    post(JSON.stringify(runBody("fedit", { expansionTiers: { big: 4 } }))),
    422,
    "invalid_config",
  );
  await refused(
    ctx,
    post(JSON.stringify(runBody("perfit", { lora: { rank: 2, alpha: 4, targets: ["zz"] } }))),
    422,
  );
  await refused(
    ctx,
    post(JSON.stringify({ ...runBody("perfit"), pad: "x".repeat(5000) })),
    413,
    "body_too_large",
  );
  await refused(ctx, () => ctx.app.request("/v1/runs"), 401);
  await refused(
    ctx,
    () =>
      ctx.app.request(`/v1/runs/${ctx.runId}/masks`, { headers: { authorization: `Bearer ${ctx.a.token}` } }),
    401,
  );
  await refused(
    ctx,
    () => ctx.app.request(`/v1/runs/run_doesnotexist`, { headers: admin }),
    404,
    "not_found",
  );
  await refused(ctx, () => ctx.app.request(`/v1/runs/bad%20id!`, { headers: admin }), 400, "bad_parameter");
  await refused(ctx, () => ctx.app.request(`/v1/nope`), 404);
  await ctx.app.close();
  ctx.kv.close();
});

Deno.test("server bad input: join, task, slice, metrics (forged, foreign and unknown tokens)", async () => {
  const ctx = await setup();
  const join = (body: string, run = ctx.runId) => () =>
    ctx.app.request(`/v1/runs/${run}/join`, { method: "POST", headers: json, body });
  await refused(ctx, join("[1,"), 400, "malformed_json");
  await refused(ctx, join("[1,2]"), 422);
  await refused(ctx, join(JSON.stringify({ tier: "gigantic" })), 422, "unknown_tier");
  await refused(ctx, join(JSON.stringify({ name: 42 })), 422);
  await refused(ctx, join("{}", "run_missing"), 404);
  await refused(ctx, join(JSON.stringify({ name: "x".repeat(5000) })), 413);

  const signer = await TokenSigner.create(SECRET);
  const forged = await (await TokenSigner.create("another-secret-of-enough-length")).sign({
    run: ctx.runId,
    client: ctx.a.id,
    iat: 0,
  });
  const ghost = await signer.sign({ run: ctx.runId, client: "c_ghost", iat: 0 });
  const tampered = ctx.a.token.slice(0, -2) + (ctx.a.token.endsWith("AA") ? "BB" : "AA");
  for (const route of ["task", "slice"]) {
    const get = (token: string | null, client = ctx.a.id, run = ctx.runId) => () =>
      ctx.app.request(`/v1/runs/${run}/clients/${client}/${route}`, {
        headers: token ? { authorization: `Bearer ${token}` } : {},
      });
    await refused(ctx, get(null), 401);
    await refused(ctx, get(forged), 401);
    await refused(ctx, get(tampered), 401);
    await refused(ctx, get("garbage"), 401);
    await refused(ctx, get(ghost, "c_ghost"), 401);
    await refused(ctx, get(ctx.b.token), 403, "forbidden"); // b asks for a's slice/task
    await refused(ctx, get(ctx.a.token, ctx.a.id, ctx.otherRun), 403);
  }
  await refused(ctx, () => ctx.app.request(`/v1/runs/${ctx.runId}/metrics`), 401);
  await refused(
    ctx,
    () =>
      ctx.app.request(`/v1/runs/${ctx.runId}/metrics`, { headers: { authorization: `Bearer ${forged}` } }),
    401,
  );
  await ctx.app.close();
  ctx.kv.close();
});

Deno.test("server bad input: uploads (safetensors, shapes, dtypes, NaN/Inf, budget, norm, replays, rounds, size)", async () => {
  const ctx = await setup();
  const mask = fakeMask(0, N, BUDGET, false);
  const bits = packMask(mask);
  const meta = { run: ctx.runId, round: "1", samples: "3" };
  const st = (t: Parameters<typeof encodeSafetensors>[0], m: Record<string, string> = meta) =>
    encodeSafetensors(t, m);
  const sparse = new Float32Array(BUDGET).fill(0.01);
  const bad: [string, Uint8Array, number, string?][] = [
    ["random bytes", new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 400, "malformed_safetensors"],
    ["empty body", new Uint8Array(0), 400, "malformed_safetensors"],
    [
      "broken header JSON",
      (() => {
        const h = new TextEncoder().encode('{"values":');
        const b = new Uint8Array(8 + h.length);
        new DataView(b.buffer).setBigUint64(0, BigInt(h.length), true);
        b.set(h, 8);
        return b;
      })(),
      400,
      "malformed_safetensors",
    ],
    ["no values", st({ mask: { dtype: "U32", shape: [bits.length], data: bits } }), 422, "missing_tensor"],
    ["no mask", st({ values: { dtype: "F32", shape: [BUDGET], data: sparse } }), 422, "missing_tensor"],
    [
      "extra tensor",
      st({
        mask: { dtype: "U32", shape: [bits.length], data: bits },
        values: { dtype: "F32", shape: [BUDGET], data: sparse },
        x: { dtype: "U8", shape: [1], data: new Uint8Array(1) },
      }),
      422,
      "unknown_tensor",
    ],
    [
      "mask wrong shape",
      st({
        mask: { dtype: "U32", shape: [3], data: new Uint32Array(3) },
        values: { dtype: "F32", shape: [0], data: new Float32Array(0) },
      }),
      422,
      "bad_shape",
    ],
    [
      "values wrong shape",
      st({
        mask: { dtype: "U32", shape: [bits.length], data: bits },
        values: { dtype: "F32", shape: [BUDGET - 1], data: sparse.subarray(1) },
      }),
      422,
      "bad_shape",
    ],
    [
      "values 2-d",
      st({
        mask: { dtype: "U32", shape: [bits.length], data: bits },
        values: { dtype: "F32", shape: [BUDGET / 2, 2], data: sparse },
      }),
      422,
      "bad_shape",
    ],
    [
      "values int dtype",
      st({
        mask: { dtype: "U32", shape: [bits.length], data: bits },
        values: { dtype: "I32", shape: [BUDGET], data: new Int32Array(BUDGET) },
      }),
      422,
      "bad_dtype",
    ],
    [
      "mask f32 dtype",
      st({
        mask: { dtype: "F32", shape: [N], data: new Float32Array(N) },
        values: { dtype: "F32", shape: [0], data: new Float32Array(0) },
      }),
      422,
      "bad_dtype",
    ],
    [
      "mask byte 2",
      st({
        mask: { dtype: "U8", shape: [N], data: new Uint8Array(N).fill(2) },
        values: { dtype: "F32", shape: [0], data: new Float32Array(0) },
      }),
      422,
      "bad_mask",
    ],
    [
      "bits past N",
      st({
        mask: {
          dtype: "U32",
          shape: [bits.length],
          data: (() => {
            const b = bits.slice();
            b[b.length - 1] |= 1 << 31;
            return b;
          })(),
        },
        values: { dtype: "F32", shape: [BUDGET + 1], data: new Float32Array(BUDGET + 1) },
      }),
      422,
      "bad_mask",
    ],
    ["NaN", update(ctx, { values: new Float32Array(N).fill(NaN) }), 422, "non_finite"],
    [
      "Inf",
      update(ctx, {
        values: (() => {
          const v = new Float32Array(N).fill(0.01);
          v[mask.indexOf(1)] = Infinity;
          return v;
        })(),
      }),
      422,
      "non_finite",
    ],
    ["over budget", update(ctx, { mask: fakeMask(0, N, BUDGET + 1, false) }), 422, "over_budget"],
    ["empty mask", update(ctx, { mask: new Uint8Array(N) }), 422, "empty_mask"],
    ["norm bound", update(ctx, { values: new Float32Array(N).fill(10) }), 422, "norm_bound"],
    ["wrong run", update(ctx, { run: ctx.otherRun }), 422, "wrong_run"],
    ["metadata round mismatch", update(ctx, { round: 2 }), 422, "wrong_round"],
    [
      "samples 0",
      st({
        mask: { dtype: "U32", shape: [bits.length], data: bits },
        values: { dtype: "F32", shape: [BUDGET], data: sparse },
      }, { ...meta, samples: "0" }),
      422,
      "bad_metadata",
    ],
    [
      "samples missing",
      st({
        mask: { dtype: "U32", shape: [bits.length], data: bits },
        values: { dtype: "F32", shape: [BUDGET], data: sparse },
      }, { run: ctx.runId, round: "1" }),
      422,
      "missing_metadata",
    ],
    [
      "metrics not JSON",
      st({
        mask: { dtype: "U32", shape: [bits.length], data: bits },
        values: { dtype: "F32", shape: [BUDGET], data: sparse },
      }, { ...meta, metrics: "{" }),
      400,
      "malformed_json",
    ],
    [
      "metrics NaN-ish",
      st({
        mask: { dtype: "U32", shape: [bits.length], data: bits },
        values: { dtype: "F32", shape: [BUDGET], data: sparse },
      }, { ...meta, metrics: '{"loss":"x"}' }),
      422,
      "bad_metrics",
    ],
    ["oversized", new Uint8Array(N * 5 + 64 * 1024 + 1), 413, "body_too_large"],
  ];
  for (const [name, body, status, code] of bad) {
    await refused(ctx, () => upload(ctx, ctx.a, body), status, code).catch((e) => {
      throw new Error(`${name}: ${e.message}`);
    });
  }
  await refused(ctx, () => upload(ctx, ctx.a, update(ctx, { round: 2 }), 2), 409, "round_not_open");
  await refused(ctx, () => upload(ctx, ctx.b, update(ctx), 1, ctx.a.id), 403, "forbidden"); // b's token on a's path
  await refused(ctx, () => upload(ctx, ctx.a, update(ctx), 1, "c_ghost"), 403);
  await refused(ctx, () => upload(ctx, ctx.a, update(ctx), "x" as unknown as number), 400, "bad_parameter");

  // Accepted once; the identical replay is acknowledged and changes nothing; a different update is refused.
  const good = update(ctx);
  const first = await upload(ctx, ctx.a, good);
  assert.equal(first.status, 201);
  const firstJ = await first.json();
  assert.equal(firstJ.status, "accepted");
  await ctx.app.coordinator.settled();
  const before = await dumpKv(ctx.kv);
  const again = await upload(ctx, ctx.a, good);
  assert.equal(again.status, 200);
  assert.deepEqual(await again.json(), { ...firstJ, status: "replay" });
  await ctx.app.coordinator.settled();
  assert.deepEqual(await dumpKv(ctx.kv), before);
  await refused(ctx, () => upload(ctx, ctx.a, update(ctx, { samples: 4 })), 409, "already_uploaded");

  // Deadline passes with quorum (2) met after b uploads: the round closes; late uploads get 410.
  assert.equal((await upload(ctx, ctx.b, update(ctx))).status, 201);
  ctx.setTime(1_000_000 + 5000);
  await ctx.app.coordinator.tick();
  const run = await (await ctx.app.request(`/v1/runs/${ctx.runId}`, { headers: admin })).json();
  assert.equal(run.run.round, 2);
  const c =
    await (await ctx.app.request(`/v1/runs/${ctx.runId}/join`, { method: "POST", headers: json, body: "{}" }))
      .json();
  const late = { id: c.clientId, token: c.token };
  await refused(ctx, () => upload(ctx, late, update(ctx)), 410, "round_closed");
  // …but a replay of an upload the closed round accepted is still acknowledged.
  const replayLate = await upload(ctx, ctx.a, good);
  assert.equal(replayLate.status, 200);
  assert.equal((await replayLate.json()).status, "replay");
  await ctx.app.close();
  ctx.kv.close();
});

Deno.test("server: a round under quorum stays open past its deadline; dropped clients do not block it", async () => {
  const ctx = await setup();
  assert.equal((await upload(ctx, ctx.a, update(ctx))).status, 201);
  ctx.setTime(1_000_000 + 5000);
  await ctx.app.coordinator.tick();
  let run = await (await ctx.app.request(`/v1/runs/${ctx.runId}`, { headers: admin })).json();
  assert.equal(run.run.round, 1, "one upload < quorum 2: still open");
  // Client b never shows up (dropped); a newcomer fills the quorum and the overdue round closes.
  const c =
    await (await ctx.app.request(`/v1/runs/${ctx.runId}/join`, { method: "POST", headers: json, body: "{}" }))
      .json();
  assert.equal(
    (await upload(
      ctx,
      { id: c.clientId, token: c.token },
      update(ctx, { mask: fakeMask(5, N, BUDGET, false) }),
    )).status,
    201,
  );
  await ctx.app.coordinator.tick();
  run = await (await ctx.app.request(`/v1/runs/${ctx.runId}`, { headers: admin })).json();
  assert.equal(run.run.round, 2);
  assert.equal(run.run.globalRound, 1);
  await ctx.app.close();
  ctx.kv.close();
});

Deno.test("server: rate limits answer 429 with Retry-After and change nothing", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(
    kv,
    { rateLimit: { ip: { rate: 1, burst: 3 }, client: { rate: 0, burst: 0 } } },
    () => 5,
  );
  const ctx = { kv, app } as unknown as Ctx;
  for (let i = 0; i < 3; i++) assert.equal((await app.request("/v1/runs", { headers: admin })).status, 200);
  await refused(ctx, () => app.request("/v1/runs", { headers: admin }), 429, "rate_limited");
  const res = await app.request("/v1/runs", { headers: admin });
  assert.equal(res.headers.get("retry-after"), "1");
  await res.body?.cancel();
  await app.close();
  kv.close();
});
