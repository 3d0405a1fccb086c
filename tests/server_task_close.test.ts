/**
 * A client that asks for its task while the round is being closed (typically right after its own
 * upload took the last seat) gets the round that follows, not "wait": the answer waits for the
 * close, as the slice does, and saves the client a poll (and makes a test that steps a client right
 * after its upload independent of how fast the close lands).
 */
import assert from "node:assert/strict";
import { Coordinator } from "../server/coordinator.ts";
import { InlineFolder } from "../server/folder.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { packMask, popcountBits } from "../runtime/client/wire.ts";
import { fakeMask, runBody } from "./server_helpers.ts";
import { faultyKv, isClose } from "./server_faults.ts";

Deno.test("server task: asked while the round closes, the task is the next round's (not wait)", async () => {
  const raw = await Deno.openKv(":memory:");
  const { kv, faults } = faultyKv(raw);
  const coord = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const run = await coord.createRun(parseRunConfig(runBody("perfit", { clientsPerRound: 1, quorum: 1 })));
    const me = await coord.join(run.id, {});
    const maskBits = packMask(fakeMask(0, 1000, 300, false));
    const values = new Float32Array(popcountBits(maskBits)).fill(0.5);
    const u = {
      run: run.id,
      round: 1,
      samples: 3,
      metrics: {},
      maskBits,
      values,
      popcount: values.length,
      sumSq: 75,
    };
    faults.hold = isClose; // the close's commit waits until released
    assert.equal((await coord.upload(run.id, me.id, 1, u, "u1")).status, "accepted");
    while (faults.held === 0) await new Promise((r) => setTimeout(r, 1)); // the close is in its commit
    const task = coord.task(run.id, me);
    faults.release();
    const t = await task;
    assert.deepEqual([t.round, t.status, t.globalRound], [2, "train", 1]);
  } finally {
    faults.release();
    await coord.close();
    raw.close();
  }
});
