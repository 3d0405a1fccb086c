/**
 * Shards of an open round: each coordinator instance sums the uploads it accepts into a shard of
 * its own (a ShardRecord and a sum blob), so instances on one store never contend for one record
 * while a round is open. An instance registers its shard in the round's ShardList with its first
 * commit of the round (the only commit of a shard that touches the list); the close reads the list
 * and every shard on it, and commits only if none of them changed meanwhile.
 * An upload is claimed for one instance before it is folded (`claimUpload`), so two instances never
 * both count it.
 */
import {
  type ClaimRecord,
  K,
  type RoundRecord,
  type ShardList,
  type ShardRecord,
  type UploadRecord,
} from "./records.ts";
import { f32Bytes, readChunks } from "./kv_chunks.ts";
import { liveGuard, RetryableError, type RunState } from "./run_state.ts";
import { notFound } from "./errors.ts";
import { MAX_CHECKS } from "./run_life.ts";

/** Deno KV's limit on keys per `getMany`. */
const GET_MANY = 10;

/**
 * Most shards in one round: the close (and a cancel) checks the run, the round, the shard list and
 * every shard, within denokv's MAX_CHECKS per atomic operation. An instance restarted mid-round
 * counts again (its id is new); past this, uploads go to instances that hold a shard already (503,
 * the client retries).
 */
export const MAX_SHARDS = MAX_CHECKS - 3;

/** An open round's shard list and its shards, as KV holds them now, with their versionstamps. */
export interface RoundShards {
  list: Deno.KvEntryMaybe<ShardList>;
  shards: Deno.KvEntryMaybe<ShardRecord>[];
}

/** The round's shard list and every shard on it. */
export async function readShards(kv: Deno.Kv, round: RoundRecord): Promise<RoundShards> {
  const list = await kv.get<ShardList>(K.shardList(round.run, round.index));
  const keys = (list.value?.instances ?? []).map((i) => K.shard(round.run, round.index, i));
  const shards: Deno.KvEntryMaybe<ShardRecord>[] = [];
  for (let i = 0; i < keys.length; i += GET_MANY) {
    shards.push(...await kv.getMany<ShardRecord[]>(keys.slice(i, i + GET_MANY)));
  }
  return { list, shards };
}

/** Uploads accepted in the round: those counted in the round record (before shards) and each shard's. */
export function acceptedOf(round: RoundRecord, { shards }: RoundShards): number {
  return shards.reduce((a, s) => a + (s.value?.accepted ?? 0), round.accepted);
}

/** Samples of those uploads. */
export function samplesOf(round: RoundRecord, { shards }: RoundShards): number {
  return shards.reduce((a, s) => a + (s.value?.samples ?? 0), round.samples);
}

/** Every accepted upload of the round, whichever instance accepted it. */
export async function uploadsOf(kv: Deno.Kv, run: string, round: number): Promise<UploadRecord[]> {
  const out: UploadRecord[] = [];
  for await (const e of kv.list<UploadRecord>({ prefix: K.uploadsOf(run, round) })) out.push(e.value);
  return out;
}

/**
 * Adds into `sum` the sums of the shards of other instances (and the round's own sum from before
 * shards): with this instance's sum in `sum`, it then holds every accepted upload's contribution.
 */
export async function addOtherSums(
  kv: Deno.Kv,
  round: RoundRecord,
  { shards }: RoundShards,
  instance: string,
  sum: Float32Array,
): Promise<void> {
  const blobs = shards.filter((s) => s.value && s.value.instance !== instance && s.value.accGen)
    .map((s) => s.value!.accGen!);
  if (round.accGen) blobs.push(round.accGen);
  const part = new Float32Array(sum.length);
  for (const gen of blobs) {
    await readChunks(kv, K.acc(round.run, round.index, gen, "s"), f32Bytes(part));
    for (let p = 0; p < sum.length; p++) sum[p] += part[p];
  }
}

/** Re-counts the open round's accepted uploads from its shards (other instances' commits included). */
export async function refreshAccepted(kv: Deno.Kv, st: RunState): Promise<void> {
  const round = st.round;
  if (!round) return;
  const shards = await readShards(kv, round);
  const n = acceptedOf(round, shards);
  // Our own commits during the read are counted already: while the round is open a count only grows.
  if (!st.dead && st.round?.index === round.index && n > st.accepted) {
    st.accepted = n;
    st.samples = samplesOf(round, shards);
  }
}

/**
 * Claims the client's upload of the open round for `instance` before it is folded: one small atomic
 * operation, checked against the client's claim and marker. A claim held by another instance is
 * taken over at once (the claimer died, or the client re-sent its upload elsewhere): the takeover
 * also bumps the claimer's shard record, so that a commit of the upload by the claimer, if it is
 * alive and still committing, fails its shard check (it reloads; the client's retry then finds our
 * marker). Returns the marker when some instance has accepted an upload of this client already (the
 * caller answers replay or conflict).
 */
export async function claimUpload(
  kv: Deno.Kv,
  st: RunState,
  instance: string,
  client: string,
  uploadId: string,
): Promise<UploadRecord | undefined> {
  const run = st.run.id;
  const round = st.round!.index;
  const claimKey = K.claim(run, round, client);
  const markerKey = K.upload(run, round, client);
  for (let attempt = 0; attempt < 3; attempt++) {
    const [claim, marker, live] = await kv.getMany<[ClaimRecord, UploadRecord, unknown]>([
      claimKey,
      markerKey,
      K.live(run),
    ]);
    // A delete has begun (run_life.ts): every retry would fail the live check below.
    if (live.versionstamp !== st.liveVs) throw notFound(`no run ${run}: it is being deleted`);
    if (marker.value) return marker.value;
    // The claim (and a takeover's shard) is no record the delete's cancel changes: the live key guards it.
    const op = kv.atomic().check(claim).check({ key: markerKey, versionstamp: null }).check(liveGuard(st))
      .set(claimKey, { instance, uploadId } satisfies ClaimRecord);
    const holder = claim.value?.instance;
    if (holder !== undefined && holder !== instance) {
      const theirs = await kv.get<ShardRecord>(K.shard(run, round, holder));
      const was = theirs.value ?? { instance: holder, accepted: 0, samples: 0, accGen: null, listed: false };
      op.check(theirs).set(theirs.key, { ...was, takeovers: (was.takeovers ?? 0) + 1 } satisfies ShardRecord);
    }
    if ((await op.commit()).ok) return undefined;
  }
  throw new RetryableError("other instances are claiming this client's upload, retry");
}
