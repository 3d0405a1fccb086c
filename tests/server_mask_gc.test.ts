/**
 * Mask storage stays one mask per client: when a client's upload stores a new mask, the mask it
 * replaced is deleted once that round closes, an unchanged mask is only referenced, and the client's
 * slice follows its latest mask throughout.
 */
import assert from "node:assert/strict";
import { Coordinator } from "../server/coordinator.ts";
import { InlineFolder } from "../server/folder.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { runBody } from "./server_helpers.ts";
import { type DecodedUpdate, packMask, popcountBits } from "../runtime/client/wire.ts";

function update(run: string, round: number, n: number, every: number): DecodedUpdate {
  const mask = new Uint8Array(n).map((_, i) => (i % every === 0 ? 1 : 0));
  const maskBits = packMask(mask);
  const values = new Float32Array(popcountBits(maskBits)).fill(0.5);
  return {
    run,
    round,
    samples: 3,
    metrics: {},
    maskBits,
    values,
    popcount: values.length,
    sumSq: 0.25 * values.length,
  };
}

async function storedMaskRounds(kv: Deno.Kv, run: string, client: string): Promise<number[]> {
  const rounds = new Set<number>();
  for await (const e of kv.list({ prefix: ["mask", run, client] })) rounds.add(e.key[3] as number);
  return [...rounds].sort((a, b) => a - b);
}

Deno.test("server mask gc: a replaced mask is deleted when its round closes; an unchanged one is referenced", async () => {
  const kv = await Deno.openKv(":memory:");
  const coord = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const n = 4096;
    const run = await coord.createRun(
      parseRunConfig(runBody("perfit", { clientsPerRound: 1, quorum: 1, adapterSize: n, budget: n })),
    );
    const c = (await coord.join(run.id, {})).id;
    // With one client per round, an accepted upload closes its round in the background; `settled`
    // reports when that close and its clean-up have landed.
    const waitRound = async (r: number) => {
      await coord.settled();
      assert.equal((await coord.getRun(run.id)).run.globalRound, r);
    };
    const waitMasks = async (want: number[]) => {
      await coord.settled();
      assert.deepEqual(await storedMaskRounds(kv, run.id, c), want);
    };

    // Round 1: mask A (every 4th position) is stored under round 1.
    await coord.upload(run.id, c, 1, update(run.id, 1, n, 4), "u1");
    await waitRound(1);
    await waitMasks([1]);
    // Round 2: mask B replaces A; once round 2 closes only B is stored.
    await coord.upload(run.id, c, 2, update(run.id, 2, n, 3), "u2");
    await waitRound(2);
    await waitMasks([2]);
    const slice = await coord.slice(run.id, c);
    assert.deepEqual(slice.maskBits, update(run.id, 2, n, 3).maskBits);
    // Round 3: B again is only referenced, and stays stored.
    await coord.upload(run.id, c, 3, update(run.id, 3, n, 3), "u3");
    await waitRound(3);
    await waitMasks([2]);
    assert.deepEqual((await coord.slice(run.id, c)).maskBits, update(run.id, 3, n, 3).maskBits);
  } finally {
    await coord.close();
    kv.close();
  }
});

/** A KV whose delete-bearing commits wait for `release`, so a close's clean-up can be held in flight. */
function kvWithHeldDeletes(kv: Deno.Kv): { kv: Deno.Kv; release: () => void } {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const held = new Proxy(kv, {
    get(target, key) {
      if (key === "atomic") {
        return () => {
          const op = target.atomic();
          const del = op.delete.bind(op);
          const commit = op.commit.bind(op);
          let deletes = 0;
          op.delete = (k: Deno.KvKey) => (deletes++, del(k));
          op.commit = async () => (deletes > 0 && (await gate), commit());
          return op;
        };
      }
      const v = Reflect.get(target, key);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { kv: held, release };
}

Deno.test("server clean-up: settled() waits until a closed round's accumulators are deleted", async () => {
  const base = await Deno.openKv(":memory:");
  const { kv, release } = kvWithHeldDeletes(base);
  const coord = new Coordinator(kv, Date.now, new InlineFolder());
  const accKeys = async (run: string) => {
    let n = 0;
    for await (const _ of base.list({ prefix: ["acc", run] })) n++;
    return n;
  };
  try {
    const n = 4096;
    const run = await coord.createRun(
      parseRunConfig(runBody("perfit", { clientsPerRound: 1, quorum: 1, adapterSize: n, budget: n })),
    );
    const c = (await coord.join(run.id, {})).id;
    await coord.upload(run.id, c, 1, update(run.id, 1, n, 4), "u1");
    let settled = false;
    const waiting = coord.settled().then(() => (settled = true));
    // The round closes in the background; its clean-up is held, so settled() must not resolve.
    for (let i = 0; i < 50 && (await coord.getRun(run.id, false)).run.globalRound < 1; i++) {
      await new Promise((r) => setTimeout(r, 0));
    }
    assert.equal((await coord.getRun(run.id, false)).run.globalRound, 1);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(settled, false, "settled() resolved while the clean-up was still in flight");
    assert.ok((await accKeys(run.id)) > 0, "the held delete already landed");
    release();
    await waiting;
    assert.equal(await accKeys(run.id), 0, "settled() resolved before the accumulators were deleted");
  } finally {
    release();
    await coord.close();
    base.close();
  }
});
