/**
 * Enrollment: who may join a run (RunConfig.enrollment).
 *  - "open": anyone who knows the run id (the default, for demos, tests and simulations; not for a
 *    production run, see docs/security.md).
 *  - "key": the join body must carry the run's join key (`key`). The admin sets it at creation; the
 *    coordinator stores only `SHA-256(salt ‖ key)` with a random salt under `["enroll", run]`, apart
 *    from the run record that GET returns, and compares hashes in constant time.
 *  - "invite": the join body must carry a single-use invite (`invite`) that the admin issued
 *    (POST /v1/runs/:run/invites). An invite reads `pi1.<id>.<secret>`; KV holds, under
 *    `["invite", run, id]`, the SHA-256 of its secret, never the secret. The join that uses it marks
 *    it used in the same atomic operation that creates the client, so two joins racing for one
 *    invite make one client. A replay of that very join (same name and tier, within
 *    INVITE_REPLAY_MS of it: a lost answer) gets the same client back with a fresh token; any other
 *    later use is 403 `invite_used`.
 * Every refusal is a 403: `enrollment_required` (missing, wrong or unknown key or invite, or an
 * invite of another run), `invite_used`.
 */
import { ApiError, conflict, gone, invalid } from "./errors.ts";
import { K, type RunRecord } from "./records.ts";
import type { RunConfig } from "./run_config.ts";
import { RetryableError } from "./run_state.ts";
import { liveCheck, MAX_CHECKS } from "./run_life.ts";
import { b64url, sha256Hex, timingSafeEqual } from "./tokens.ts";

const enc = new TextEncoder();

/** How long after its use an invite still answers a replay of the join that used it. */
export const INVITE_REPLAY_MS = 10 * 60_000;
/** Most invites one request issues. */
export const MAX_INVITES_PER_REQUEST = 1000;

const INVITE = /^pi1\.([A-Za-z0-9_-]{12})\.([A-Za-z0-9_-]{43})$/;

/** What KV holds for the run's join key. */
export interface JoinKeyRecord {
  salt: string;
  hash: string;
}

/** What KV holds for one invite. */
export interface InviteRecord {
  /** SHA-256 (hex) of the invite's secret part. */
  hash: string;
  createdAt: number;
  /** The join that used it: its client, when, and the request it made (for replays). */
  used: { client: string; at: number; name: string | null; tier: string | null } | null;
}

/** What a join presents. */
export interface Credentials {
  key?: string;
  invite?: string;
}

export const enrollmentRequired = (msg: string): ApiError => new ApiError(403, "enrollment_required", msg);
export const inviteUsed = (): ApiError =>
  new ApiError(403, "invite_used", "this invite was used by another join; ask the admin for a new one");

/** Constant-time equality of two hex digests. */
function sameHash(a: string, b: string): boolean {
  return timingSafeEqual(enc.encode(a), enc.encode(b));
}

/** The record to store for a join key: a fresh salt and the salted hash. */
export async function joinKeyRecord(key: string): Promise<JoinKeyRecord> {
  const salt = b64url(crypto.getRandomValues(new Uint8Array(16)));
  return { salt, hash: await sha256Hex(`${salt}:${key}`) };
}

/** Refuses a join whose `key` is not the run's join key (403 `enrollment_required`). */
export async function checkJoinKey(kv: Deno.Kv, run: string, presented: string | undefined): Promise<void> {
  if (presented === undefined) {
    throw enrollmentRequired("this run needs its join key (`key` in the join body)");
  }
  const rec = (await kv.get<JoinKeyRecord>(K.joinKey(run))).value;
  // No record (a store written by hand): nothing can match, and the work done is the same.
  const got = await sha256Hex(`${rec?.salt ?? ""}:${presented}`);
  if (!rec || !sameHash(got, rec.hash)) throw enrollmentRequired("wrong join key");
}

/** A new invite: its token (returned once) and its KV record. */
export async function newInvite(now: number): Promise<{ id: string; token: string; record: InviteRecord }> {
  const id = b64url(crypto.getRandomValues(new Uint8Array(9)));
  const secret = b64url(crypto.getRandomValues(new Uint8Array(32)));
  return {
    id,
    token: `pi1.${id}.${secret}`,
    record: { hash: await sha256Hex(secret), createdAt: now, used: null },
  };
}

/** An invite presented to a join, checked against the run's record (not yet marked used). */
export interface PresentedInvite {
  entry: Deno.KvEntryMaybe<InviteRecord>;
  record: InviteRecord;
}

/**
 * The run's record of the presented invite, or 403 `enrollment_required` when the invite is missing,
 * malformed, unknown in this run (another run's invites live under that run) or its secret is
 * wrong. A used invite is returned as is: whether this join is its replay is the caller's call.
 */
export async function findInvite(
  kv: Deno.Kv,
  run: string,
  presented: string | undefined,
): Promise<PresentedInvite> {
  if (presented === undefined) {
    throw enrollmentRequired("this run needs an invite (`invite` in the join body)");
  }
  const m = INVITE.exec(presented);
  if (!m) throw enrollmentRequired("not an invite of this run");
  const entry = await kv.get<InviteRecord>(K.invite(run, m[1]));
  const got = await sha256Hex(m[2]);
  if (!entry.value || !sameHash(got, entry.value.hash)) throw enrollmentRequired("not an invite of this run");
  return { entry, record: entry.value };
}

/** True when a join asking for `req` at `now` replays the join that used `used`. */
export function isReplay(
  used: NonNullable<InviteRecord["used"]>,
  req: { name?: string; tier?: string },
  now: number,
): boolean {
  return used.name === (req.name ?? null) && used.tier === (req.tier ?? null) &&
    now - used.at <= INVITE_REPLAY_MS;
}

/** Validates an invite count of a request body. */
export function inviteCount(body: unknown): number {
  const count = (body as Record<string, unknown> | null)?.count ?? 1;
  if (typeof count !== "number" || !Number.isInteger(count) || count < 1 || count > MAX_INVITES_PER_REQUEST) {
    throw invalid("bad_body", `count must be an integer in [1, ${MAX_INVITES_PER_REQUEST}]`);
  }
  return count;
}

/**
 * The join key record a new run stores under `["enroll", run]`: for enrollment "key", which needs
 * `joinKey`, its salted hash; for any other enrollment null (and a `joinKey` is refused).
 */
export async function joinKeyFor(
  config: RunConfig,
  joinKey: string | null | undefined,
): Promise<JoinKeyRecord | null> {
  const keyed = (config.enrollment ?? "open") === "key";
  if (keyed !== (typeof joinKey === "string")) {
    throw invalid(
      "invalid_config",
      keyed ? 'enrollment "key" needs a joinKey' : "joinKey without enrollment key",
    );
  }
  return keyed ? await joinKeyRecord(joinKey!) : null;
}

/** Invites per atomic operation: each checks its id is new, and the run's live key is one check more. */
const INVITES_PER_COMMIT = MAX_CHECKS - 1;

/**
 * Issues `count` single-use invites to a run with enrollment "invite" (409 `enrollment_mismatch`
 * otherwise, 410 once it finished, 409 `run_cancelled` once cancelled). Returns the tokens; KV keeps only their hashes.
 */
export async function issueInvites(
  kv: Deno.Kv,
  st: { run: RunRecord; liveVs: string },
  count: number,
  now: number,
): Promise<string[]> {
  const run = st.run;
  const enrollment = run.config.enrollment ?? "open";
  if (enrollment !== "invite") {
    throw conflict("enrollment_mismatch", `run ${run.id} does not take invites (enrollment ${enrollment})`);
  }
  if (run.status === "done") throw gone("run_done", `run ${run.id} has finished`);
  if (run.status === "cancelled") {
    throw conflict("run_cancelled", `run ${run.id} was cancelled by the admin: it takes no more joins`);
  }
  const invites = await Promise.all(Array.from({ length: count }, () => newInvite(now)));
  // No check of the run's records guards an invite: the live key does (a delete begun refuses them).
  const commits: Promise<Deno.KvCommitResult | Deno.KvCommitError>[] = [];
  for (let i = 0; i < invites.length; i += INVITES_PER_COMMIT) {
    const op = kv.atomic().check(liveCheck(run.id, st.liveVs));
    for (const inv of invites.slice(i, i + INVITES_PER_COMMIT)) {
      op.check({ key: K.invite(run.id, inv.id), versionstamp: null }).set(
        K.invite(run.id, inv.id),
        inv.record,
      );
    }
    commits.push(op.commit());
  }
  for (const r of await Promise.all(commits)) {
    if (!r.ok) throw new RetryableError("invite id collision or the run changed, retry");
  }
  return invites.map((inv) => inv.token);
}

/** The credentials of a join body: `key` and `invite`, strings of at most 512 characters if given. */
export function parseCredentials(body: Record<string, unknown>): Credentials {
  const out: Credentials = {};
  for (const k of ["key", "invite"] as const) {
    const v = body[k];
    if (v !== undefined && (typeof v !== "string" || v.length > 512)) {
      throw invalid("bad_body", `${k} must be a string of ≤ 512 characters`);
    }
    if (v !== undefined) out[k] = v as string;
  }
  return out;
}
