/** Unit tests of the coordinator's pure parts: tokens, buckets, aggregation math, wire codec, chunks, settings. */
import assert from "node:assert/strict";
import { adminTokenMatches, sha256Hex, timingSafeEqual, TokenSigner } from "../server/tokens.ts";
import { TokenBuckets } from "../server/ratelimit.ts";
import { finalizeInto, foldSparse } from "../server/aggregate.ts";
import { andBits, forEachBit, fullBits, gatherBits, withoutZeros } from "../runtime/kernels/bits.ts";
import { CHUNK_BYTES, readChunks, writeBlobs, writeChunks } from "../server/kv_chunks.ts";
import { parseSettings } from "../server/settings.ts";
import { parseRunConfig } from "../server/run_config.ts";
import {
  decodeSlice,
  decodeUpdate,
  encodeSlice,
  encodeUpdate,
  isMaskRef,
  packMask,
  popcountBits,
  sumSquares,
  unpackMask,
  WireError,
} from "../runtime/client/wire.ts";
import { checksum128 } from "../server/checksum.ts";
import { readBody } from "../server/body.ts";
import { ApiError } from "../server/errors.ts";
import { Coordinator } from "../server/coordinator.ts";
import { scalarKernels } from "../runtime/kernels/mod.ts";
import {
  decodeSafetensors,
  encodeSafetensors,
  type TensorIn,
  type TensorOut,
} from "../runtime/io/safetensors.ts";
import { tinyConfig } from "../runtime/model/tiny.ts";
import { toHfConfig } from "../runtime/model/config.ts";
import { adapterLayout } from "../runtime/model/lora.ts";
import { fakeMask } from "./server_helpers.ts";

Deno.test("server tokens: sign/verify round-trips; forged, tampered and foreign tokens are rejected", async () => {
  const s = await TokenSigner.create("0123456789abcdef0123");
  const t = await s.sign({ run: "run_a", client: "c_1", iat: 7 });
  assert.deepEqual(await s.verify(t), { run: "run_a", client: "c_1", iat: 7 });
  const other = await TokenSigner.create("fedcba9876543210fedc");
  assert.equal(await other.verify(t), null);
  const [p, body, mac] = t.split(".");
  const evil = btoa(JSON.stringify({ run: "run_a", client: "c_2", iat: 7 })).replace(/=+$/, "");
  assert.equal(await s.verify(`${p}.${evil}.${mac}`), null);
  assert.equal(await s.verify(`${p}.${body}.${mac.slice(0, -1)}`), null);
  assert.equal(await s.verify("pc1..."), null);
  assert.equal(await s.verify("x".repeat(5000)), null);
  assert.ok(await adminTokenMatches("hello", await sha256Hex("hello")));
  assert.ok(!(await adminTokenMatches("hellO", await sha256Hex("hello"))));
  assert.ok(timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2])));
  assert.ok(!timingSafeEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2, 3])));
  await assert.rejects(() => TokenSigner.create("short"));
});

Deno.test("server rate limit: token bucket refills at its rate, rate 0 disables", () => {
  let t = 0;
  const b = new TokenBuckets({ rate: 2, burst: 2 }, () => t);
  assert.equal(b.take("a"), 0);
  assert.equal(b.take("a"), 0);
  assert.ok(b.take("a") > 0);
  assert.equal(b.take("b"), 0, "buckets are per key");
  t += 500;
  assert.equal(b.take("a"), 0, "one token back after 1/rate s");
  assert.ok(b.take("a") > 0);
  const off = new TokenBuckets({ rate: 0, burst: 0 }, () => t);
  for (let i = 0; i < 100; i++) assert.equal(off.take("x"), 0);
});

Deno.test("server aggregate: sparse fold + finalize equal the kernels' dense accumulate/finalize", () => {
  const n = 777;
  const k = scalarKernels;
  const sumA = new Float32Array(n), wA = new Float32Array(n);
  const sumB = new Float32Array(n), wB = new Float32Array(n);
  for (let c = 0; c < 5; c++) {
    const mask = fakeMask(c, n, 200, false);
    const dense = new Float32Array(n).map((_, i) => Math.sin(i * 0.3 + c));
    const bits = packMask(mask);
    foldSparse(sumA, wA, bits, gatherBits(dense, bits, popcountBits(bits)), 3 + c);
    k.accumulate(sumB, wB, dense, mask, 3 + c);
  }
  assert.deepEqual(sumA, sumB);
  assert.deepEqual(wA, wB);
  const own = new Float32Array(n).fill(9);
  const g = own.slice();
  const cov = new Uint32Array(Math.ceil(n / 32));
  finalizeInto(k, sumA, wA, g, cov);
  for (let i = 0; i < n; i++) {
    const covered = ((cov[i >>> 5] >>> (i & 31)) & 1) === 1;
    assert.equal(covered, wA[i] > 0);
    assert.equal(g[i], covered ? Math.fround(sumA[i] / wA[i]) : 9);
  }
  assert.equal(popcountBits(fullBits(70)), 70);
  assert.deepEqual(andBits(new Uint32Array([0b1100]), new Uint32Array([0b1010])), new Uint32Array([0b1000]));
});

Deno.test("wire: updates round-trip in sparse and dense form; slices round-trip", () => {
  const n = 100;
  const mask = fakeMask(1, n, 30, false);
  const values = new Float32Array(n).map((_, i) => i / 10);
  const body = encodeUpdate({ run: "r", round: 2, samples: 7, values, mask, metrics: { loss: 1.5 } });
  const u = decodeUpdate(body, n);
  assert.ok(!isMaskRef(u));
  assert.equal(u.popcount, 30);
  assert.deepEqual(unpackMask(u.maskBits, n), mask);
  assert.deepEqual(Array.from(u.values), Array.from(values).filter((_, i) => mask[i]));
  assert.deepEqual([u.run, u.round, u.samples, u.metrics.loss], ["r", 2, 7, 1.5]);
  assert.throws(() => decodeUpdate(body, n + 40), /shape/);
  const dense = encodeSafetensors(
    { mask: { dtype: "U8", shape: [n], data: mask }, values: { dtype: "F32", shape: [n], data: values } },
    { run: "r", round: "2", samples: "7" },
  );
  const d = decodeUpdate(dense, n);
  assert.ok(!isMaskRef(d));
  assert.deepEqual(d.values, u.values);
  assert.deepEqual(d.maskBits, u.maskBits);
  const bits = packMask(mask);
  const s = decodeSlice(
    encodeSlice({ run: "r", round: 3, adapterSize: n, maskBits: bits, coveredBits: bits, values: u.values }),
  );
  assert.deepEqual(s.values, u.values);
  assert.equal(s.round, 3);
});

Deno.test("wire: a slice's bitmasks travel in their smallest code and decode to the same bits; bad forms are refused", () => {
  const n = 200_000;
  // A run-structured mask (as the coordinator's are: whole rank components) and a sparse subset of it.
  const mask = new Uint8Array(n), covered = new Uint8Array(n);
  for (let p = 0; p < n; p++) mask[p] = (p >> 10) % 3 === 0 ? 1 : 0;
  for (let p = 0; p < n; p += 7) covered[p] = mask[p];
  const maskBits = packMask(mask), coveredBits = packMask(covered);
  const values = new Float32Array(popcountBits(coveredBits)).map((_, i) => i + 1);
  const slice = { run: "r", round: 4, adapterSize: n, maskBits, coveredBits, values };
  const body = encodeSlice(slice);
  const plain = encodeSafetensors(
    {
      mask: { dtype: "U32", shape: [maskBits.length], data: maskBits },
      covered: { dtype: "U32", shape: [coveredBits.length], data: coveredBits },
      values: { dtype: "F32", shape: [values.length], data: values },
    },
    { format: "perfit-slice/1", run: "r", round: "4", adapterSize: String(n) },
  );
  assert.ok(body.length < plain.length - 2 * n / 8 + 4096, `${body.length} vs plain ${plain.length}`);
  for (const b of [body, plain]) {
    const s = decodeSlice(b);
    assert.deepEqual(s.maskBits, maskBits);
    assert.deepEqual(s.coveredBits, coveredBits);
    assert.deepEqual(s.values, values);
    assert.deepEqual([s.run, s.round, s.adapterSize], ["r", 4, n]);
  }
  // An empty slice (no mask yet) round-trips too.
  const none = new Uint32Array(maskBits.length);
  const e = decodeSlice(
    encodeSlice({ ...slice, maskBits: none, coveredBits: none, values: new Float32Array(0) }),
  );
  assert.equal(popcountBits(e.maskBits) + popcountBits(e.coveredBits) + e.values.length, 0);

  const dec = decodeSafetensors(body);
  const tensorsOf = (drop: string[] = [], add: Record<string, TensorOut> = {}) => {
    const out: Record<string, TensorIn> = {};
    for (const [k, t] of [...dec.tensors, ...Object.entries(add)]) {
      if (!drop.includes(k)) out[k] = { dtype: t.dtype, shape: t.shape, data: t.bytes };
    }
    return out;
  };
  const refused = (tensors: ReturnType<typeof tensorsOf>, meta: Record<string, string>, code: string) =>
    assert.throws(
      () => decodeSlice(encodeSafetensors(tensors, meta)),
      (err) => err instanceof WireError && err.status === 422 && err.code === code,
      code,
    );
  const meta = dec.metadata;
  const plainMask = decodeSafetensors(plain).tensors.get("mask")!;
  refused(tensorsOf([], { mask: plainMask }), meta, "missing_tensor"); // both forms of one bitmask
  refused(tensorsOf(["mask_code"]), meta, "missing_tensor"); // neither
  refused(tensorsOf([], { extra: plainMask }), meta, "unknown_tensor");
  refused(tensorsOf(), { ...meta, maskCode: "zip" }, "bad_metadata");
  refused(tensorsOf(), { ...meta, maskCount: String(popcountBits(maskBits) + 1) }, "bad_mask");
  refused(tensorsOf(), { ...meta, maskCount: "many" }, "bad_mask");
  const cut = dec.tensors.get("covered_code")!;
  refused(
    tensorsOf([], { covered_code: { ...cut, shape: [cut.bytes.length - 9], bytes: cut.bytes.subarray(9) } }),
    meta,
    "bad_mask",
  );
  const { maskCount: _, ...noCount } = meta;
  refused(tensorsOf(), noCount, "missing_metadata");
  assert.throws(
    () => decodeSlice(new Uint8Array([1, 2, 3])),
    (err) => err instanceof WireError && err.status === 400,
  );
});

Deno.test("bits: withoutZeros keeps each nonzero value at its position and drops the zeros, -0 too", () => {
  const n = 75;
  const bits = new Uint32Array(3);
  const dense = new Float32Array(n);
  for (let p = 0; p < n; p += 2) {
    bits[p >>> 5] |= 1 << (p & 31);
    dense[p] = p % 3 === 0 ? 0 : p % 5 === 0 ? -0 : p - 30;
  }
  const values = gatherBits(dense, bits, popcountBits(bits));
  const out = withoutZeros(bits, values);
  const back = new Float32Array(n);
  forEachBit(out.bits, (p, r) => back[p] = out.values[r]);
  assert.deepEqual(Array.from(back), Array.from(dense).map((v) => v === 0 ? 0 : v));
  assert.ok(out.values.every((v) => v !== 0));
  assert.equal(popcountBits(out.bits), out.values.length);
  for (let p = 0; p < n; p++) {
    const kept = (out.bits[p >>> 5] >>> (p & 31)) & 1;
    assert.equal(kept, p % 2 === 0 && dense[p] !== 0 ? 1 : 0, `position ${p}`);
  }
  assert.throws(() => withoutZeros(bits, values.subarray(1)), RangeError);
});

Deno.test("server kv chunks: blobs larger than one KV value round-trip; batched writes too", async () => {
  const kv = await Deno.openKv(":memory:");
  const big = new Uint8Array(CHUNK_BYTES * 5 + 123).map((_, i) => (i * 31) & 255);
  await writeChunks(kv, ["b"], big);
  assert.deepEqual(await readChunks(kv, ["b"], new Uint8Array(big.length)), big);
  await writeBlobs(kv, [[["x"], big.subarray(0, 1000)], [["y"], big]]);
  assert.deepEqual(await readChunks(kv, ["y"], new Uint8Array(big.length)), big);
  await assert.rejects(() => readChunks(kv, ["b"], new Uint8Array(big.length + CHUNK_BYTES)), /chunks/);
  kv.close();
});

Deno.test("server settings: flags override env, defaults, bad values rejected", () => {
  const env = (k: string) =>
    ({
      PERFIT_PORT: "9000",
      PERFIT_RATE_IP: "5/10",
      PERFIT_CORS_ORIGINS: "https://a.example, https://b.example",
    } as Record<string, string>)[k];
  const s = parseSettings(["--port=0", "--kv=/tmp/x.kv"], env);
  assert.equal(s.port, 0);
  assert.equal(s.kvPath, "/tmp/x.kv");
  assert.deepEqual(s.rateIp, { rate: 5, burst: 10 });
  assert.deepEqual(s.corsOrigins, ["https://a.example", "https://b.example"]);
  assert.equal(parseSettings([], () => undefined).kvPath, "./data/perfit.kv");
  // The dashboard is public unless a token is set, by flag or env (the flag wins).
  assert.equal(s.dashboardToken, undefined);
  const dashEnv = (k: string) => (k === "PERFIT_DASHBOARD_TOKEN" ? "from-env" : undefined);
  assert.equal(parseSettings([], dashEnv).dashboardToken, "from-env");
  assert.equal(parseSettings(["--dashboard-token=from-flag"], dashEnv).dashboardToken, "from-flag");
  assert.throws(() => parseSettings(["--port=abc"], () => undefined), /port/);
  assert.throws(() => parseSettings(["--bogus=1"], () => undefined), /unknown flag/);
  // Folds run on a worker unless turned off (platforms without Workers fall back by themselves).
  assert.equal(s.foldWorker, true);
  assert.equal(parseSettings(["--fold-worker=false"], () => undefined).foldWorker, false);
  assert.equal(parseSettings([], (k) => (k === "PERFIT_FOLD_WORKER" ? "0" : undefined)).foldWorker, false);
  assert.throws(() => parseSettings(["--fold-worker=maybe"], () => undefined), /fold-worker/);
  // The dashboard is private unless --public-dashboard (a flag, or the env var as true/1).
  assert.equal(s.publicDashboard, false);
  assert.equal(parseSettings(["--public-dashboard"], () => undefined).publicDashboard, true);
  assert.throws(
    () => parseSettings([], (k) => (k === "PERFIT_PUBLIC_DASHBOARD" ? "yes" : undefined)),
    /public-dashboard/,
  );
});

Deno.test("server run config: sizes computed from a model config match the model's layout", () => {
  const cfg = tinyConfig();
  const run = parseRunConfig({
    baseModel: "tiny",
    lora: { rank: 2, alpha: 4, targets: ["q", "v"] },
    method: "perfit",
    rounds: 1,
    clientsPerRound: 2,
    roundDeadlineMs: 1000,
    expansionTiers: { low: 1, high: 4 },
    model: toHfConfig(cfg),
  });
  assert.equal(run.adapterSize, adapterLayout(cfg, { rank: 8, alpha: 4, targets: ["q", "v"] }).size);
  assert.equal(run.budget, adapterLayout(cfg, { rank: 2, alpha: 4, targets: ["q", "v"] }).size);
  const fedit = parseRunConfig({
    baseModel: "t",
    lora: { rank: 2, alpha: 4, targets: ["q"] },
    method: "fedit",
    rounds: 1,
    clientsPerRound: 1,
    roundDeadlineMs: 1,
    adapterSize: 50,
  });
  assert.equal(fedit.budget, 50);
  assert.equal(fedit.quorum, 1);
});

Deno.test("server openapi: every documented path is routed and every /v1 route is documented", async () => {
  const { makeApp } = await import("./server_helpers.ts");
  const { openapi } = await import("../server/openapi.ts");
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const res = await app.request("/openapi.json");
  assert.equal(res.status, 200);
  const doc = await res.json();
  assert.equal(doc.openapi, "3.1.0");
  const toHono = (p: string) => p.replace(/\{(\w+)\}/g, ":$1");
  const routed = new Set(app.routes.filter((r) => r.method !== "ALL").map((r) => `${r.method} ${r.path}`));
  const documented = new Set<string>();
  for (const [path, ops] of Object.entries(openapi.paths)) {
    for (const m of Object.keys(ops)) documented.add(`${m.toUpperCase()} ${toHono(path)}`);
  }
  assert.deepEqual([...documented].filter((d) => !routed.has(d)), []);
  assert.deepEqual([...routed].filter((r) => r.includes("/v1/") && !documented.has(r)), []);
  await app.close();
  kv.close();
});

Deno.test("server cors: allowed origins get CORS headers, others do not; off by default", async () => {
  const { makeApp } = await import("./server_helpers.ts");
  const kv = await Deno.openKv(":memory:");
  const on = makeApp(kv, { corsOrigins: ["https://ok.example"] });
  const pre = await on.request("/v1/runs", {
    method: "OPTIONS",
    headers: { origin: "https://ok.example", "access-control-request-method": "POST" },
  });
  assert.equal(pre.headers.get("access-control-allow-origin"), "https://ok.example");
  const other = await on.request("/health", { headers: { origin: "https://evil.example" } });
  assert.equal(other.headers.get("access-control-allow-origin"), null);
  const off = makeApp(kv);
  const res = await off.request("/health", { headers: { origin: "https://ok.example" } });
  assert.equal(res.headers.get("access-control-allow-origin"), null);
  await on.close();
  await off.close();
  kv.close();
});

Deno.test("server checksum: upload ids are deterministic, alignment-free, and change with any byte or the length", () => {
  let s = 99;
  const body = new Uint8Array(4099).map(() => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 24);
  const id = checksum128(body);
  assert.match(id, /^[0-9a-f]{32}$/);
  assert.equal(checksum128(body.slice()), id, "same bytes, same id");
  // The same bytes at an unaligned offset (a view into a larger buffer) give the same id.
  const shifted = new Uint8Array(body.length + 3);
  shifted.set(body, 3);
  assert.equal(checksum128(shifted.subarray(3)), id);
  // Flipping any single bit (stripes, tail words, tail bytes) changes the id.
  const seen = new Set([id]);
  for (const i of [0, 1, 5, 15, 16, 2047, 4092, 4095, 4096, 4098]) {
    const b = body.slice();
    b[i] ^= 1 << (i % 8);
    seen.add(checksum128(b));
  }
  assert.equal(seen.size, 11);
  // Appending a zero byte or swapping two words changes it too.
  const longer = new Uint8Array(body.length + 1);
  longer.set(body);
  assert.notEqual(checksum128(longer), id);
  const swapped = body.slice();
  swapped.set(body.subarray(0, 4), 4);
  swapped.set(body.subarray(4, 8), 0);
  assert.notEqual(checksum128(swapped), id);
  assert.notEqual(checksum128(new Uint8Array(0)), checksum128(new Uint8Array(1)));
  assert.equal(Coordinator.uploadId(body), `u1-${id}`);
});

Deno.test("wire: sumSquares equals the plain f64 sum of squares and flags NaN/Inf", () => {
  for (const n of [0, 1, 3, 4, 7, 1001]) {
    const v = new Float32Array(n).map((_, i) => Math.sin(i + 1) * 3);
    let ref = 0;
    for (const x of v) ref += x * x;
    assert.ok(Math.abs(sumSquares(v) - ref) <= 1e-12 * Math.max(1, ref), `n=${n}`);
  }
  const bad = new Float32Array([1, 2, NaN, 4, 5]);
  assert.ok(!Number.isFinite(sumSquares(bad)));
  bad[2] = Infinity;
  assert.ok(!Number.isFinite(sumSquares(bad)));
});

Deno.test("server body: declared lengths are read exactly; longer, shorter and oversized bodies are refused; undeclared ones stream", async () => {
  const bytes = new Uint8Array(3000).map((_, i) => i * 7);
  // A stream in uneven chunks, as a socket delivers it.
  const chunked = (b: Uint8Array) =>
    new ReadableStream<Uint8Array>({
      start(c) {
        for (let o = 0; o < b.length; o += 1000) c.enqueue(b.slice(o, o + 1000));
        c.close();
      },
    });
  const req = (b: Uint8Array, length?: number) =>
    new Request("http://x/", {
      method: "POST",
      body: chunked(b),
      headers: length === undefined ? {} : { "content-length": String(length) },
    });
  assert.deepEqual(await readBody(req(bytes, 3000), 4000), bytes);
  assert.deepEqual(await readBody(req(bytes), 4000), bytes);
  await assert.rejects(
    readBody(req(bytes, 2999), 4000),
    (e) => e instanceof ApiError && e.code === "bad_length",
  );
  await assert.rejects(
    readBody(req(bytes, 3001), 4000),
    (e) => e instanceof ApiError && e.code === "bad_length",
  );
  await assert.rejects(readBody(req(bytes, 3000), 2000), (e) => e instanceof ApiError && e.status === 413);
  await assert.rejects(readBody(req(bytes), 2000), (e) => e instanceof ApiError && e.status === 413);
});
