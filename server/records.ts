/**
 * What the coordinator keeps in Deno KV, and under which keys. Every record is small (≪ 64 KiB);
 * tensors live in chunked blobs (kv_chunks.ts) that a record points to by generation id, so a blob
 * becomes visible only when the atomic commit that flips the pointer succeeds. Each coordinator
 * instance sums the uploads it accepts into a shard of the open round (its ShardRecord and sum), so
 * instances never contend for one record while a round is open; the close merges the shards. A
 * shard's sum uses two slots ("<instance>.0", "<instance>.1") as generations: a commit rewrites the
 * slot the shard does not point at.
 *
 * Keys:
 *   ["run", run]                          RunRecord
 *   ["live", run]                         LiveRecord: written with the run, rewritten only by its delete
 *                                       (run_life.ts); writes no record check guards check it
 *   ["round", run, r]                     RoundRecord (includes the accumulator pointer `accGen`)
 *   ["acc", run, r, gen, "s", i]          sum accumulator chunks of an open round (gen: a slot)
 *   ["acc", run, r, "shards"]             ShardList: the instances with a shard in the open round
 *   ["acc", run, r, "shard", instance]    ShardRecord: one instance's part of an open round
 *   ["acc", run, r, "claim", client]      ClaimRecord: which instance is committing the client's upload
 *   ["global", run, gen, "v"|"c", i]      aggregated adapter values and covered bitmask
 *   ["global", run, gen, "w", i]          own-weighted methods (perfit-own): each position's weight in
 *                                       the round that made the generation
 *   ["client", run, client]               ClientRecord
 *   ["clients", run]                      join counter {count}
 *   ["upload", run, r, client]            UploadRecord (the accepted marker; its id makes replays idempotent)
 *   ["mask", run, client, r, i]           a client's mask bitmask, stored in the first round it was uploaded
 *                                       (the mask it replaces is deleted when that round closes)
 *   ["lastmask", run, client]             {round, popcount, hash}: which mask is the client's latest
 *   ["held", run, r, client, uploadId, i] an upload's values (f32, in mask bit order) for aggregations
 *                                       that combine at close (trimmed-mean, median); named by the
 *                                       upload marker's id, deleted when the round closes; for
 *                                       own-weighted methods (perfit-own) every accepted upload's,
 *                                       kept until the next round that aggregates closes (slices
 *                                       reweigh the client's own upload)
 *   ["enroll", run]                       {salt, hash} of the run's join key (enrollment "key")
 *   ["invite", run, id]                   InviteRecord: a single-use invite (enrollment "invite")
 *   ["revoked", run, client]              {at}: the client's token revocation (auth.ts)
 * A run's keys are exactly those whose second part is its id: deleting a run (run_admin.ts) deletes
 * every family above (`runFamilies`).
 *
 * Values are bounded whatever clients send: an upload's metrics are admitted only when few and
 * short (admission.ts), and a round summary keeps a bounded number of them (round_close.ts).
 * What a crash or a lost clean-up leaves behind is swept when an instance loads the run (sweep.ts).
 */
import type { RunConfig } from "./run_config.ts";

/** A federated run. */
export interface RunRecord {
  id: string;
  config: RunConfig;
  createdAt: number;
  /** "done" after the last round; "cancelled" by the admin (run_admin.ts): both are final. */
  status: "active" | "done" | "cancelled";
  /** When the admin cancelled the run (ms since epoch). */
  cancelledAt?: number;
  /** The open round (1-based); after the last round, `config.rounds + 1`. */
  round: number;
  /** Generation of the global adapter blob, null before the first aggregation. */
  globalGen: string | null;
  /** Last round folded into the global adapter (0 = none). */
  globalRound: number;
}

/**
 * The run's live key (run_life.ts): `deleting` is null from the run's creation until its delete marks
 * it, so its versionstamp changes once, when the delete begins.
 */
export interface LiveRecord {
  /** When the delete began (ms since epoch); null while the run lives. */
  deleting: number | null;
}

/** Per-round summary computed at close from the accepted uploads' metrics. */
export interface RoundSummary {
  clients: number;
  samples: number;
  /** Sample-weighted means of each reported metric. */
  metrics: Record<string, number>;
  covered: number;
}

/** One round of a run. */
export interface RoundRecord {
  run: string;
  index: number;
  status: "open" | "closed";
  openedAt: number;
  deadline: number;
  closedAt: number | null;
  /** Uploads and samples accepted: the round's totals once closed (open: counted in its shards). */
  accepted: number;
  samples: number;
  /** Sum blob of uploads accepted before rounds were sharded (those without `shard`); else null. */
  accGen: string | null;
  /** Once closed: the instances whose shards the close merged (see shards.ts). */
  shards?: string[];
  summary: RoundSummary | null;
}

/** An instance's claim on a client's upload of an open round, taken before the upload is folded. */
export interface ClaimRecord {
  instance: string;
  uploadId: string;
}

/** The instances with a shard in an open round, in registration order. */
export interface ShardList {
  instances: string[];
}

/** One coordinator instance's part of an open round: the uploads its commits accepted, and their sum. */
export interface ShardRecord {
  instance: string;
  accepted: number;
  samples: number;
  /** Slot of the sum blob holding every upload of this shard (null for runs without a sum). */
  accGen: string | null;
  /** On the round's shard list (its first commit put it there; a takeover may write it before). */
  listed: boolean;
  /** Uploads other instances took over from it (each bump fails its commits in flight). */
  takeovers?: number;
}

/** A joined client. */
export interface ClientRecord {
  id: string;
  run: string;
  name: string;
  tier: string;
  expansion: number;
  joinedAt: number;
  seq: number;
}

/** An accepted upload. */
export interface UploadRecord {
  uploadId: string;
  client: string;
  round: number;
  samples: number;
  metrics: Record<string, number>;
  popcount: number;
  norm: number;
  at: number;
  /** Round under which this upload's mask blob is stored (an earlier one when the mask is unchanged). */
  maskRound: number;
  /** SHA-256 of the mask bitmask ("" for FedIT, whose masks are all ones and never stored). */
  maskHash: string;
  /**
   * When this upload stored a new mask: the round of the client's previous one, which nothing reads
   * once this round closes (it is deleted then).
   */
  replacesMaskRound?: number;
  /**
   * The weights of this upload's fold terms when its method's aggregation does not weigh by samples
   * alone (HetLoRA: one ‖B·A‖_F per projection), so a restart rebuilds the round's weight sums.
   */
  termWeights?: number[];
  /** The instance whose shard sum holds this upload (absent: the round's `accGen`, before shards). */
  shard?: string;
}

/** Pointer to a client's latest mask. */
export interface LastMask {
  /** Round under which the mask blob is stored. */
  round: number;
  popcount: number;
  hash: string;
}

export const K = {
  run: (run: string): Deno.KvKey => ["run", run],
  runs: (): Deno.KvKey => ["run"],
  live: (run: string): Deno.KvKey => ["live", run],
  lives: (): Deno.KvKey => ["live"],
  round: (run: string, r: number): Deno.KvKey => ["round", run, r],
  rounds: (run: string): Deno.KvKey => ["round", run],
  acc: (run: string, r: number, gen: string, part: "s" | "w"): Deno.KvKey => ["acc", run, r, gen, part],
  accRound: (run: string, r: number): Deno.KvKey => ["acc", run, r],
  shard: (run: string, r: number, instance: string): Deno.KvKey => ["acc", run, r, "shard", instance],
  shardList: (run: string, r: number): Deno.KvKey => ["acc", run, r, "shards"],
  claim: (run: string, r: number, client: string): Deno.KvKey => ["acc", run, r, "claim", client],
  accsOf: (run: string): Deno.KvKey => ["acc", run],
  global: (run: string, gen: string, part: "v" | "c" | "w"): Deno.KvKey => ["global", run, gen, part],
  globalGen: (run: string, gen: string): Deno.KvKey => ["global", run, gen],
  globalsOf: (run: string): Deno.KvKey => ["global", run],
  client: (run: string, c: string): Deno.KvKey => ["client", run, c],
  clientsOf: (run: string): Deno.KvKey => ["client", run],
  clientCount: (run: string): Deno.KvKey => ["clients", run],
  upload: (run: string, r: number, c: string): Deno.KvKey => ["upload", run, r, c],
  uploadsOf: (run: string, r: number): Deno.KvKey => ["upload", run, r],
  uploadsAll: (run: string): Deno.KvKey => ["upload", run],
  mask: (run: string, c: string, r: number): Deno.KvKey => ["mask", run, c, r],
  masksOfClient: (run: string, c: string): Deno.KvKey => ["mask", run, c],
  masksOf: (run: string): Deno.KvKey => ["mask", run],
  lastMask: (run: string, c: string): Deno.KvKey => ["lastmask", run, c],
  lastMasksOf: (run: string): Deno.KvKey => ["lastmask", run],
  held: (run: string, r: number, c: string, uploadId: string): Deno.KvKey => ["held", run, r, c, uploadId],
  heldRound: (run: string, r: number): Deno.KvKey => ["held", run, r],
  heldOf: (run: string): Deno.KvKey => ["held", run],
  joinKey: (run: string): Deno.KvKey => ["enroll", run],
  invite: (run: string, id: string): Deno.KvKey => ["invite", run, id],
  invitesOf: (run: string): Deno.KvKey => ["invite", run],
  revoked: (run: string, c: string): Deno.KvKey => ["revoked", run, c],
  revokedOf: (run: string): Deno.KvKey => ["revoked", run],
};

/**
 * Every key family of a run: the single keys and the prefixes of the families above. Deleting these
 * deletes the run (a new family must be added here, or a deleted run leaves it behind; the test of
 * run deletion lists the whole KV).
 */
export function runFamilies(run: string): { keys: Deno.KvKey[]; prefixes: Deno.KvKey[] } {
  return {
    keys: [K.run(run), K.live(run), K.clientCount(run), K.joinKey(run)],
    prefixes: [
      K.rounds(run),
      K.accsOf(run),
      K.globalsOf(run),
      K.clientsOf(run),
      K.uploadsAll(run),
      K.masksOf(run),
      K.lastMasksOf(run),
      K.heldOf(run),
      K.invitesOf(run),
      K.revokedOf(run),
    ],
  };
}
