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
import { type Pending, RetryableError, type RunState } from "./run_state.ts";

/** Deno KV's limit on keys per `getMany`. */
const GET_MANY = 10;

/**
 * Most shards in one round: the close (and a cancel) checks the run, the round, the shard list and
 * every shard, and denokv allows 10 checks per atomic operation. An instance restarted mid-round counts again (its
 * id is new); past this, uploads go to instances that hold a shard already (503, the client retries).
 */
export const MAX_SHARDS = 7;

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
 * How long a claim holds a client's upload for the instance that took it. Past it, another instance
 * may take the upload over (the claimer died before committing it, and the client re-sent it). The
 * claimer renews a claim older than half of it before committing the upload (`renewClaims`), and
 * when the upload is sent again, so a live instance never loses an upload it is committing, provided
 * a commit lands within the other half and the instances' clocks agree to within seconds. Short, because the
 * uploads in flight on a killed instance wait for it (clients retry for seconds, not minutes).
 */
export const CLAIM_LEASE_MS = 10_000;

/**
 * Claims the client's upload of the open round for `instance` before it is folded: one small atomic
 * operation, checked against the client's claim and marker (our own claim is renewed). Returns the
 * marker when some instance
 * has accepted an upload of this client already (the caller answers replay or conflict), and when
 * the claim was taken (`performance.now()`); refuses with a retryable error while another instance
 * holds a live claim on it.
 */
export async function claimUpload(
  kv: Deno.Kv,
  st: RunState,
  instance: string,
  client: string,
  uploadId: string,
  now: () => number,
): Promise<{ accepted?: UploadRecord; at: number }> {
  const run = st.run.id;
  const round = st.round!.index;
  const claimKey = K.claim(run, round, client);
  const markerKey = K.upload(run, round, client);
  for (let attempt = 0; attempt < 3; attempt++) {
    const [claim, marker] = await kv.getMany<[ClaimRecord, UploadRecord]>([claimKey, markerKey]);
    if (marker.value) return { accepted: marker.value, at: performance.now() };
    const c = claim.value;
    if (c && c.instance !== instance && now() < c.at + CLAIM_LEASE_MS) {
      throw new RetryableError("another instance is committing this client's upload, retry");
    }
    const res = await kv.atomic().check(claim).check({ key: markerKey, versionstamp: null })
      .set(claimKey, { instance, uploadId, at: now() } satisfies ClaimRecord).commit();
    if (res.ok) return { at: performance.now() };
  }
  throw new RetryableError("another instance is claiming this client's upload, retry");
}

/**
 * Renews this instance's claims on the uploads of `group` taken more than half a lease ago (a slow
 * store, a long queue), each in one small atomic operation checked against the claim; throws when
 * one lapsed and another instance took it over (the group then fails, and its uploads are retried).
 */
export async function renewClaims(
  kv: Deno.Kv,
  st: RunState,
  instance: string,
  group: Pending[],
  now: () => number,
): Promise<void> {
  const round = st.round!.index;
  for (const p of group) {
    if (performance.now() - (p.claimedAt ?? -Infinity) <= CLAIM_LEASE_MS / 2) continue;
    const claim = await kv.get<ClaimRecord>(K.claim(st.run.id, round, p.client));
    const c = claim.value;
    if (!c || c.instance !== instance || c.uploadId !== p.uploadId) {
      throw new Error(`the claim on ${p.client}'s upload was taken over`);
    }
    const res = await kv.atomic().check(claim).set(claim.key, { ...c, at: now() } satisfies ClaimRecord)
      .commit();
    if (!res.ok) throw new Error(`the claim on ${p.client}'s upload was taken over`);
    p.claimedAt = performance.now();
  }
}
