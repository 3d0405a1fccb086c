/**
 * One wire format: a new mask travels in its smallest code, an unchanged one by reference; the
 * coordinator answers an unknown reference with 409 `mask_unknown` and changes nothing, and the
 * client then resends with the mask. Bytes are measured on the HTTP bodies that reach the app.
 */
import assert from "node:assert/strict";
import {
  attachMask,
  decodeUpdate,
  encodeUpdate,
  isMaskRef,
  packMask,
  resolveMaskRef,
  unpackMask,
  WireError,
} from "../runtime/client/wire.ts";
import { FederatedClient, MemoryStorage } from "../runtime/client/mod.ts";
import { maskRef } from "../runtime/kernels/bits.ts";
import { encodeMaskAs, MASK_CODE_MODES, maskCodeName } from "../runtime/kernels/mask_code.ts";
import { scalarKernels } from "../runtime/kernels/mod.ts";
import { decodeSafetensors, encodeSafetensors } from "../runtime/io/safetensors.ts";
import { mulberry32 } from "../runtime/data/rng.ts";
import type { PerfitApp } from "../server/app.ts";
import { K } from "../server/records.ts";
import { appFetch, createRun, dumpKv, fakeMask, fakeTrainer, makeApp, runBody } from "./server_helpers.ts";

const N = 1000;
const BUDGET = 300;
const meta = { run: "r", round: "2", samples: "3" };

function sparseOf(values: Float32Array, mask: Uint8Array): Float32Array {
  return values.filter((_, i) => mask[i] !== 0);
}

Deno.test("wire: a new mask travels in its smallest code, every code round-trips, a reference decodes as one", async () => {
  const values = Float32Array.from({ length: N }, (_, i) => Math.sin(i));
  const random = fakeMask(3, N, BUDGET, false);
  const rows = new Uint8Array(N);
  for (let i = 0; i < N; i += 100) rows.fill(1, i, i + 30);
  for (const mask of [random, rows, new Uint8Array(N).fill(1)]) {
    const plain = encodeUpdate({ run: "r", round: 2, samples: 3, values, mask });
    const compact = encodeUpdate({ run: "r", round: 2, samples: 3, values, mask, compactMask: true });
    assert.ok(compact.length <= plain.length, `${compact.length} > ${plain.length}`);
    for (const body of [plain, compact]) {
      const u = decodeUpdate(body, N);
      assert.ok(!isMaskRef(u));
      assert.deepEqual(unpackMask(u.maskBits, N), mask);
      assert.deepEqual(u.values, sparseOf(values, mask));
    }
    // Every code, sent explicitly, decodes to the same mask.
    for (const mode of MASK_CODE_MODES) {
      const code = encodeMaskAs(mask, mode, scalarKernels);
      const name = maskCodeName(code);
      const sparse = sparseOf(values, mask);
      const body = encodeSafetensors({
        values: { dtype: "F32", shape: [sparse.length], data: sparse },
        mask_code: { dtype: "U8", shape: [code.bytes.length], data: code.bytes },
      }, { ...meta, maskCode: name });
      const u = decodeUpdate(body, N);
      assert.ok(!isMaskRef(u));
      assert.equal(u.maskForm, mode);
      assert.deepEqual(unpackMask(u.maskBits, N), mask, mode);
    }
  }
  // Row-clustered masks: run lengths cost a small fraction of the bitmask.
  const rowsBody = encodeUpdate({ run: "r", round: 2, samples: 3, values, mask: rows, compactMask: true });
  const ru = decodeUpdate(rowsBody, N);
  assert.ok(!isMaskRef(ru) && ru.maskForm === "rice-runs-rle", String(!isMaskRef(ru) && ru.maskForm));
  // By reference: no mask tensor; the coordinator completes it with the mask it holds.
  const ref = await maskRef(packMask(random));
  const byRef = encodeUpdate({ run: "r", round: 2, samples: 3, values, mask: random, maskRef: ref });
  const plain = encodeUpdate({ run: "r", round: 2, samples: 3, values, mask: random });
  assert.equal(plain.length - byRef.length >= N / 8 - 100, true, `${plain.length} vs ${byRef.length}`);
  const r = decodeUpdate(byRef, N);
  assert.ok(isMaskRef(r));
  assert.equal(r.maskRef, ref);
  const full = resolveMaskRef(r, packMask(random));
  assert.equal(full.maskForm, "ref");
  assert.equal(full.popcount, BUDGET);
  assert.deepEqual(full.values, sparseOf(values, random));
  // The same update with the mask attached (what a client sends after a 409) decodes in full.
  const again = decodeUpdate(attachMask(byRef, random), N);
  assert.ok(!isMaskRef(again));
  assert.deepEqual(unpackMask(again.maskBits, N), random);
  assert.deepEqual(again.values, full.values);
  // maskRef is the SHA-256 of the bitmask's little-endian bytes (here 01 00 00 00).
  assert.equal(
    await maskRef(new Uint32Array([1])),
    "67abdd721024f0ff4e0b3f4c2fc13bc5bad42d0b7851d456d88d203d15aaa450",
  );
});

Deno.test("wire: malformed mask codes, references and mixed forms are refused with a clear 422", async () => {
  const mask = fakeMask(1, N, BUDGET, false);
  const values = new Float32Array(BUDGET).fill(0.5);
  const code = encodeMaskAs(mask, "rice-gaps", scalarKernels);
  const body = (
    tensors: Record<string, Uint8Array | Float32Array | Uint32Array>,
    m: Record<string, string>,
  ) =>
    encodeSafetensors(
      Object.fromEntries(
        Object.entries(tensors).map(([k, v]) => [
          k,
          {
            dtype: v instanceof Float32Array
              ? "F32" as const
              : v instanceof Uint32Array
              ? "U32" as const
              : "U8" as const,
            shape: [v.length],
            data: v,
          },
        ]),
      ),
      { ...meta, ...m },
    );
  const refusedWith = (b: Uint8Array, wireCode: string) =>
    assert.throws(() => decodeUpdate(b, N), (e) => e instanceof WireError && e.code === wireCode, wireCode);
  const ref = await maskRef(packMask(mask));
  refusedWith(body({ values, mask: packMask(mask) }, { maskRef: ref }), "ambiguous_mask");
  refusedWith(
    body({ values, mask_code: code.bytes, mask: packMask(mask) }, { maskCode: `rice-gaps:${code.k1}` }),
    "ambiguous_mask",
  );
  refusedWith(body({ values }, { maskRef: ref.toUpperCase() }), "bad_metadata");
  refusedWith(body({ values }, { maskRef: "__proto__" }), "bad_metadata");
  refusedWith(body({ values: new Float32Array(N + 1) }, { maskRef: ref }), "bad_shape");
  refusedWith(body({ values, mask_code: code.bytes }, {}), "missing_metadata");
  refusedWith(body({ values, mask_code: code.bytes }, { maskCode: "bits" }), "bad_mask");
  refusedWith(body({ values, mask_code: code.bytes }, { maskCode: "rice-gaps:99" }), "bad_mask");
  // A truncated code, a count that does not match and a code that runs past the end.
  refusedWith(
    body({ values, mask_code: code.bytes.subarray(0, 10) }, { maskCode: `rice-gaps:${code.k1}` }),
    "bad_mask",
  );
  refusedWith(
    body({ values: values.subarray(1), mask_code: code.bytes }, { maskCode: `rice-gaps:${code.k1}` }),
    "bad_mask",
  );
  refusedWith(body({ values, mask_code: new Uint8Array(40).fill(0xff) }, { maskCode: "deltas" }), "bad_mask");
  refusedWith(body({ values, mask_code: new Uint8Array([1, 2]) }, { maskCode: "rice-runs:0:0" }), "bad_mask");
  const u = decodeUpdate(body({ values: values.subarray(1) }, { maskRef: ref }), N);
  assert.ok(isMaskRef(u));
  assert.throws(
    () => resolveMaskRef(u, packMask(mask)),
    (e) => e instanceof WireError && e.code === "bad_shape",
  );
  const nan = values.slice();
  nan[7] = NaN;
  refusedWith(body({ values: nan }, { maskRef: ref }), "non_finite");
});

interface Client {
  id: string;
  token: string;
}

async function join(app: PerfitApp, run: string): Promise<Client> {
  const r = await app.request(`/v1/runs/${run}/join`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
  });
  assert.equal(r.status, 201);
  const j = await r.json();
  return { id: j.clientId, token: j.token };
}

function post(app: PerfitApp, run: string, c: Client, round: number, body: Uint8Array) {
  return app.request(`/v1/runs/${run}/clients/${c.id}/rounds/${round}/update`, {
    method: "POST",
    headers: { authorization: `Bearer ${c.token}` },
    body: body as Uint8Array<ArrayBuffer>,
  });
}

Deno.test("server: an unknown or forged mask reference is a 409 mask_unknown that changes nothing; a held one is used", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const run = await createRun(app, runBody("perfit", { clientsPerRound: 2, quorum: 2, rounds: 3 }));
  const a = await join(app, run);
  const b = await join(app, run);
  const ma = fakeMask(0, N, BUDGET, false);
  const mb = fakeMask(1, N, BUDGET, false);
  const values = new Float32Array(N).fill(0.01);
  const up = (round: number, mask: Uint8Array, ref?: string) =>
    encodeUpdate({ run, round, samples: 3, values, mask, maskRef: ref, compactMask: true });
  const refA = await maskRef(packMask(ma));
  const refB = await maskRef(packMask(mb));
  const refused = async (c: Client, round: number, body: Uint8Array, status: number, code: string) => {
    const before = await dumpKv(kv);
    const res = await post(app, run, c, round, body);
    const j = await res.json();
    assert.equal(res.status, status, JSON.stringify(j));
    assert.equal(j.error.code, code);
    assert.match(j.error.message, /resend|shape/);
    assert.deepEqual(await dumpKv(kv), before, "a refused upload changed the KV");
  };
  // Round 1: nobody has a stored mask, so any reference is unknown.
  await refused(a, 1, up(1, ma, refA), 409, "mask_unknown");
  assert.equal((await post(app, run, a, 1, up(1, ma))).status, 201);
  assert.equal((await post(app, run, b, 1, up(1, mb))).status, 201);
  // The last seat closes round 1 in the background: wait until round 2 is open and round 1's
  // accumulators are deleted (the close's last write here: no mask was replaced, no global existed).
  for (const until = Date.now() + 30_000;;) {
    if (Date.now() > until) throw new Error("round 1 never finished closing");
    const { run: r } = await app.coordinator.getRun(run);
    if (r.round === 2 && (await Array.fromAsync(kv.list({ prefix: K.accRound(run, 1) }))).length === 0) break;
    await new Promise((res) => setTimeout(res, 0));
  }
  // Round 2: another client's mask, a forged hash and a wrong value count are refused.
  await refused(a, 2, up(2, ma, refB), 409, "mask_unknown");
  await refused(a, 2, up(2, ma, "0".repeat(64)), 409, "mask_unknown");
  // A reference to a's held mask (300 ones) with 299 values.
  const short = fakeMask(5, N, BUDGET - 1, false);
  await refused(
    a,
    2,
    encodeUpdate({ run, round: 2, samples: 3, values, mask: short, maskRef: refA }),
    422,
    "bad_shape",
  );
  const masksBefore = (await dumpKv(kv)).filter((k) => k.startsWith('["mask"')).length;
  const ok = await post(app, run, a, 2, up(2, ma, refA));
  assert.equal(ok.status, 201, await ok.clone().text());
  const rec = (await kv.get<{ maskRound: number; maskHash: string }>(K.upload(run, 2, a.id))).value!;
  assert.deepEqual([rec.maskRound, rec.maskHash], [1, refA], "the held mask is reused, not rewritten");
  assert.equal((await dumpKv(kv)).filter((k) => k.startsWith('["mask"')).length, masksBefore);
  // Replaying the same reference body is a replay.
  assert.equal((await (await post(app, run, a, 2, up(2, ma, refA))).json()).status, "replay");
  await app.close();
  kv.close();
});

/** Runs clients to the end through a fetch that records every upload body and answer. */
async function federate(
  method: "perfit" | "fedit",
  over: Record<string, unknown>,
  clients: number,
  between?: (round: number, swap: (a: PerfitApp) => void, kv: Deno.Kv, run: string) => Promise<void>,
) {
  const kv = await Deno.openKv(":memory:");
  let app = makeApp(kv);
  const run = await createRun(app, runBody(method, { clientsPerRound: clients, quorum: clients, ...over }));
  const sent: { client: number; round: number; bytes: number; ref: boolean; status: number }[] = [];
  const route = appFetch(() => app);
  const cs = [];
  for (let i = 0; i < clients; i++) {
    const rec: typeof fetch = async (input, init) => {
      const url = String(input);
      const m = /\/rounds\/(\d+)\/update$/.exec(url);
      const res = await route(input, init);
      if (m) {
        const body = init!.body as Uint8Array;
        const u = decodeUpdate(body, (over.adapterSize as number | undefined) ?? N);
        sent.push({
          client: i,
          round: Number(m[1]),
          bytes: body.byteLength,
          ref: isMaskRef(u),
          status: res.status,
        });
      }
      return res;
    };
    cs.push(
      await FederatedClient.create({
        serverUrl: "http://t",
        runId: run,
        trainer: fakeTrainer(i),
        fetch: rec,
        storage: new MemoryStorage(),
        sleep: () => new Promise((r) => setTimeout(r, 0)),
      }),
    );
  }
  for (const c of cs) await c.join();
  const rounds = (over.rounds as number | undefined) ?? 3;
  for (let round = 1; round <= rounds; round++) {
    await Promise.all(cs.map(async (c) => {
      for (let i = 0; c.lastRound < round; i++) {
        if (i > 1000) throw new Error(`client never finished round ${round}`);
        await c.step();
      }
    }));
    await between?.(round, (a) => (app = a), kv, run);
  }
  await app.close();
  kv.close();
  return sent;
}

Deno.test("client: after its first upload an unchanged mask goes by reference; a reference the server lost is resent with the mask", async () => {
  const sent = await federate("perfit", {}, 3, async (round, swap, kv, run) => {
    if (round !== 1) return;
    // Simulate a coordinator that lost client 0's mask pointer: a fresh instance with no cache.
    const first = (await Array.fromAsync(kv.list<{ id: string; seq: number }>({ prefix: K.clientsOf(run) })))
      .find((e) => e.value.seq === 0)!.value.id;
    await kv.delete(K.lastMask(run, first));
    swap(makeApp(kv));
  });
  const accepted = sent.filter((s) => s.status === 201);
  assert.equal(accepted.length, 9);
  assert.ok(accepted.filter((s) => s.round === 1).every((s) => !s.ref), "round 1 sends every mask");
  const lost = sent.filter((s) => s.client === 0 && s.round === 2);
  assert.deepEqual(lost.map((s) => [s.ref, s.status]), [[true, 409], [false, 201]]);
  assert.ok(
    accepted.filter((s) => s.round >= 2 && !(s.client === 0 && s.round === 2)).every((s) => s.ref),
    "every other upload after round 1 names its mask by reference",
  );
});

Deno.test("HTTP bodies: PerFIT after its search round costs at most 1.01x FedIT's at the same budget", async () => {
  // The bundled tiny model's q,v adapter at r = 4: B = 10240; PerFIT's global layout at e_max = 4.
  const B = 10240;
  const perfit = await federate("perfit", { adapterSize: 4 * B, budget: B, rounds: 3 }, 3);
  const fedit = await federate("fedit", { adapterSize: B, rounds: 3 }, 3);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const per = (s: typeof perfit, r: number) =>
    mean(s.filter((x) => x.round === r && x.status === 201).map((x) => x.bytes));
  for (const r of [2, 3]) {
    const ratio = per(perfit, r) / per(fedit, r);
    assert.ok(
      ratio <= 1.01,
      `round ${r}: PerFIT ${per(perfit, r)} B vs FedIT ${per(fedit, r)} B (${ratio.toFixed(4)}x)`,
    );
    assert.ok(per(fedit, r) < 4 * B + 400, `FedIT round ${r}: ${per(fedit, r)} B`);
  }
  // Round 1 carries the new mask, here a random one (no structure): at most its bitmask, N/8 bytes.
  assert.ok(per(perfit, 1) <= per(fedit, 1) + (4 * B) / 8, `${per(perfit, 1)} vs ${per(fedit, 1)}`);
  assert.ok(per(perfit, 1) > per(perfit, 2));
});

Deno.test("wire: a mask coded over the client's support decodes to the same mask; bad supports are refused", () => {
  // A client of rank 2 in a global rank-8 layout of four [8, 250] A blocks: its support is the first
  // two rows of each block, and its mask lies inside.
  const N = 8000;
  const support = new Uint8Array(N);
  for (let b = 0; b < 4; b++) support.fill(1, b * 2000, b * 2000 + 500);
  const r = mulberry32(7);
  const mask = support.map((s) => (s && r() < 0.5 ? 1 : 0));
  const values = Float32Array.from({ length: N }, (_, i) => i / N);
  const withSupport = encodeUpdate({
    run: "r",
    round: 1,
    samples: 3,
    values,
    mask,
    support,
    compactMask: true,
  });
  const without = encodeUpdate({ run: "r", round: 1, samples: 3, values, mask, compactMask: true });
  assert.ok(withSupport.length < without.length, `${withSupport.length} vs ${without.length}`);
  const u = decodeUpdate(withSupport, N);
  assert.ok(!isMaskRef(u));
  assert.deepEqual(unpackMask(u.maskBits, N), mask);
  assert.deepEqual(u.values, sparseOf(values, mask));
  const outside = mask.slice();
  outside[N - 1] = 1;
  assert.throws(
    () => encodeUpdate({ run: "r", round: 1, samples: 3, values, mask: outside, support, compactMask: true }),
    /outside the support/,
  );
  // Malformed support metadata and tensors.
  const dec = decodeSafetensors(withSupport);
  const tensors = Object.fromEntries(
    [...dec.tensors].map(([k, t]) => [k, { dtype: t.dtype, shape: t.shape, data: t.bytes }]),
  );
  const again = (t: Record<string, unknown>, m: Record<string, string | undefined>) =>
    encodeSafetensors(
      t as Parameters<typeof encodeSafetensors>[0],
      Object.fromEntries(
        Object.entries({ ...dec.metadata, ...m }).filter(([, v]) => v !== undefined),
      ) as Record<string, string>,
    );
  const refusedWith = (b: Uint8Array, code: string) =>
    assert.throws(() => decodeUpdate(b, N), (e) => e instanceof WireError && e.code === code, code);
  refusedWith(again(tensors, { supportSize: String(N + 1) }), "bad_metadata");
  refusedWith(again(tensors, { supportSize: "10" }), "bad_metadata"); // fewer than the values
  refusedWith(again(tensors, { supportSize: "1999" }), "bad_mask");
  refusedWith(again(tensors, { supportCode: "bits" }), "bad_mask");
  refusedWith(again(tensors, { supportCode: "rice-runs:1" }), "bad_metadata");
  refusedWith(again(tensors, { supportCode: undefined }), "missing_metadata");
  const { support_code: _, ...noSupport } = tensors;
  refusedWith(again(noSupport, {}), "bad_metadata");
  const { mask_code: __, ...noCode } = tensors;
  refusedWith(again(noCode, { maskCode: undefined }), "missing_tensor");
});
