/**
 * The run's live key, `["live", run]`: what makes a delete leave nothing, with several instances on one
 * KV. Blobs are written before the commit that names them (kv_chunks.ts), and an instance holding a copy
 * of a run it has not yet found stale may be writing some while another instance deletes the run: a
 * listing of the run's families taken before those writes land would miss them for good.
 *
 * So the key is written with the run and rewritten only once, by the run's delete, which marks it
 * `deleting` in a commit of its own before it lists a single family. Every write of a run's key that no
 * check of the run's records guards (blob chunks of sums, masks, held values and adapters, claims,
 * invites, revocations) checks the key's versionstamp in the same atomic operation. A write that landed
 * therefore came before the mark, and the delete's listing finds it; a write after the mark fails its
 * check and writes nothing. (Writes that check the run, its round or a shard need no more: the delete
 * cancels an active run first, which changes those records, and no such write lands on an ended run.)
 *
 * Runs created before the key have none: the first instance that needs it writes it, in a commit that
 * checks the run record and the key's absence, so never for a run that a delete has marked (the mark is
 * written over an absent key alike) or already removed.
 */
import { notFound, RetryableError } from "./errors.ts";
import { K, type LiveRecord, type RunRecord } from "./records.ts";

/**
 * Checks per atomic operation that denokv allows (Deno's local KV allows 100): every commit of the
 * coordinator stays within it (a round close, the most: see shards.ts MAX_SHARDS).
 */
export const MAX_CHECKS = 10;

/** The value of a live run's key. */
export const LIVE: LiveRecord = { deleting: null };

/** A write's guard: the run's live key as the writer read it (run_state.ts keeps it as `liveVs`). */
export const liveCheck = (run: string, versionstamp: string): Deno.AtomicCheck => ({
  key: K.live(run),
  versionstamp,
});

/** Tries before giving up on a run whose record keeps changing (each close rewrites it). */
const TRIES = 10;

/**
 * The versionstamp of the run's live key, for writes to check (written first for a run from before the
 * key). 404 when the run is gone or its delete has begun.
 */
export async function liveStamp(kv: Deno.Kv, id: string): Promise<string> {
  for (let attempt = 0; attempt < TRIES; attempt++) {
    const [re, live] = await kv.getMany<[RunRecord, LiveRecord]>([K.run(id), K.live(id)]);
    if (!re.value) throw notFound(`no run ${id}`);
    if (live.value) {
      if (live.value.deleting !== null) throw notFound(`no run ${id}: it is being deleted`);
      return live.versionstamp!;
    }
    const res = await kv.atomic().check(re).check(live).set(K.live(id), LIVE).commit();
    if (res.ok) return res.versionstamp;
  }
  throw new RetryableError(`run ${id} kept changing, retry`);
}

/**
 * The first step of a delete, in a commit of its own: marks the live key `deleting`, so no guarded
 * write of the run lands from here on. Idempotent (a delete cut short repeats it); 404 when the run
 * is gone (a concurrent delete finished: marking its absent key would leave the mark behind).
 */
export async function markDeleting(kv: Deno.Kv, id: string, now: number): Promise<void> {
  for (let attempt = 0; attempt < TRIES; attempt++) {
    const [re, live] = await kv.getMany<[RunRecord, LiveRecord]>([K.run(id), K.live(id)]);
    if (!re.value) throw notFound(`no run ${id}`);
    if (live.value && live.value.deleting !== null) return;
    const mark: LiveRecord = { deleting: now };
    if ((await kv.atomic().check(re).check(live).set(K.live(id), mark).commit()).ok) return;
  }
  throw new RetryableError(`run ${id} kept changing while being deleted, retry`);
}
