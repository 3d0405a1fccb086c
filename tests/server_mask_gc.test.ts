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
    const waitRound = async (r: number) => {
      for (let t = 0; t < 500 && (await coord.getRun(run.id)).run.globalRound < r; t++) {
        await new Promise((res) => setTimeout(res, 2));
      }
      assert.equal((await coord.getRun(run.id)).run.globalRound, r);
    };
    const waitMasks = async (want: number[]) => {
      for (let t = 0; t < 500; t++) {
        if (JSON.stringify(await storedMaskRounds(kv, run.id, c)) === JSON.stringify(want)) return;
        await new Promise((res) => setTimeout(res, 2));
      }
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
