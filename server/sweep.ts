/**
 * The load sweep: what a crash (or a lost background clean-up) can leave behind, found and deleted
 * when an instance first loads a run. Clean-up after a close is best effort (see `cleanUp` in
 * coordinator.ts); this is what bounds the garbage anyway. It only deletes what no record can name
 * again:
 *  - accumulator slots and held upload values of closed rounds (a closed round never reopens),
 *    except an own-weighted run's uploads of the round that made its global, which its slices read;
 *  - masks stored under a closed round that neither the client's `lastmask` pointer nor an upload
 *    of the open round names (a pointer only ever moves to the open round, never back);
 *  - global generations other than the current one that are older than SWEEP_GRACE_MS: a younger one
 *    may be the adapter of a close in flight on another instance, which is written before the commit
 *    that makes it current.
 * The open round's keys are left alone: another instance may be staging them right now. A cancelled
 * run has no open round: every round counts as closed.
 */
import { childParts, deletePrefix } from "./kv_chunks.ts";
import { K, type LastMask, type RunRecord, type UploadRecord } from "./records.ts";
import { genTime } from "./round_close.ts";
import { strategyFor } from "../runtime/federation/strategies.ts";

/** How old a global generation must be before the sweep may take it for an orphan. */
export const SWEEP_GRACE_MS = 10 * 60_000;

/** Deletes the run's orphans; `uploads` are the open round's accepted uploads as loaded. */
export async function sweepRun(
  kv: Deno.Kv,
  run: RunRecord,
  uploads: Iterable<UploadRecord>,
  now: number,
): Promise<void> {
  const id = run.id;
  // Every round below run.round is closed (a finished run's round is past its last).
  const open = run.status === "cancelled" ? Infinity : run.round;
  for await (const r of childParts(kv, K.accsOf(id))) {
    if (typeof r === "number" && r < open) await deletePrefix(kv, K.accRound(id, r));
  }
  // An own-weighted run's slices still read the uploads of the round that made its global.
  const served = strategyFor(run.config.method).ownWeighted ? run.globalRound : -1;
  for await (const r of childParts(kv, K.heldOf(id))) {
    if (typeof r === "number" && r < open && r !== served) await deletePrefix(kv, K.heldRound(id, r));
  }

  const named = new Map<string, Set<number>>();
  for (const u of uploads) {
    const rounds = named.get(u.client) ?? new Set<number>();
    rounds.add(u.maskRound);
    if (u.replacesMaskRound !== undefined) rounds.add(u.replacesMaskRound);
    named.set(u.client, rounds);
  }
  for await (const client of childParts(kv, K.masksOf(id))) {
    if (typeof client !== "string") continue;
    const pointer = (await kv.get<LastMask>(K.lastMask(id, client))).value?.round;
    for await (const r of childParts(kv, K.masksOfClient(id, client))) {
      if (typeof r !== "number" || r >= open || r === pointer || named.get(client)?.has(r)) continue;
      await deletePrefix(kv, K.mask(id, client, r));
    }
  }

  // The run may have moved on since it was loaded: its current generation then is kept too.
  const current = new Set([run.globalGen, (await kv.get<RunRecord>(K.run(id))).value?.globalGen]);
  for await (const gen of childParts(kv, K.globalsOf(id))) {
    if (typeof gen !== "string" || current.has(gen) || !(genTime(gen) < now - SWEEP_GRACE_MS)) continue;
    await deletePrefix(kv, K.globalGen(id, gen));
  }
}
