/**
 * Admission: the checks that decide whether a join or an upload may change a run, as pure functions
 * of the run's configuration and what the caller read. Each refusal is an ApiError with a stable code
 * (or a RetryableError when waiting would help), thrown before anything is written or folded, so a
 * refused request leaves KV byte-for-byte unchanged.
 */
import { type ApiError, conflict, gone, invalid } from "./errors.ts";
import type { MethodStrategy } from "../runtime/federation/strategies.ts";
import type { RoundRecord, RunRecord, UploadRecord } from "./records.ts";
import type { RunConfig } from "./run_config.ts";
import type { DecodedUpdate } from "../runtime/client/wire.ts";
import { RetryableError } from "./run_state.ts";
import { maxSamplesOf } from "./robust.ts";

/** Most uploads per commit: 2 mutations each + 2 must stay under KV's 1000, and 800 KiB in total. */
export const MAX_GROUP = 400;
// The metric rule is the wire format's (one definition); admission re-checks it for callers of the
// Coordinator API that bypass the wire decoder.
import { MAX_METRICS, METRIC_NAME } from "../runtime/client/wire.ts";
export { MAX_METRICS, METRIC_NAME };

/** The run's tiers, smallest expansion first: the order in which joins are assigned round-robin. */
export function tierOrder(cfg: RunConfig): string[] {
  return Object.keys(cfg.expansionTiers).sort((a, b) => cfg.expansionTiers[a] - cfg.expansionTiers[b]);
}

/** Refuses a requested tier the run does not define (an own key: "toString" is not a tier). */
export function checkTier(cfg: RunConfig, requested: string | undefined): void {
  if (requested !== undefined && !Object.hasOwn(cfg.expansionTiers, requested)) {
    throw invalid("unknown_tier", `tier must be one of ${tierOrder(cfg).join(", ")}`);
  }
}

/** The tier of the `seq`-th client to join: the requested one (checked), else round-robin. */
export function assignTier(cfg: RunConfig, requested: string | undefined, seq: number): string {
  checkTier(cfg, requested);
  if (requested !== undefined) return requested;
  const tiers = tierOrder(cfg);
  return tiers[seq % tiers.length];
}

/** 409 for anything but reading a cancelled run (server/run_admin.ts). */
export const runCancelled = (run: string): ApiError =>
  conflict(
    "run_cancelled",
    `run ${run} was cancelled by the admin: it takes no more joins, tasks or uploads`,
  );

/** Refuses a request that would change or train a cancelled run. */
export function refuseCancelled(run: RunRecord): void {
  if (run.status === "cancelled") throw runCancelled(run.id);
}

/** Where an upload's round stands against the run's open round (a cancelled run: 409). */
export function roundPosition(run: RunRecord, round: number): "closed" | "ahead" | "open" {
  refuseCancelled(run);
  if (round < run.round || run.status === "done") return "closed";
  return round > run.round ? "ahead" : "open";
}

export function roundClosed(run: RunRecord, round: number): ApiError {
  const current = run.status === "done" ? "none, run finished" : run.round;
  return gone("round_closed", `round ${round} is closed (current round: ${current})`);
}

export function roundNotOpen(run: RunRecord, round: number): ApiError {
  return conflict("round_not_open", `round ${round} is not open yet (current round: ${run.round})`);
}

/** The update's own metadata must name the run and round of its path. */
export function checkTarget(u: { run: string; round: number }, runId: string, round: number): void {
  if (u.run !== runId) throw invalid("wrong_run", `update is for run ${u.run}, not ${runId}`);
  if (u.round !== round) {
    throw invalid("wrong_round", `update metadata says round ${u.round}, path says ${round}`);
  }
}

/**
 * What to do about the client's earlier upload of this round: "replay" when it is this very upload
 * and accepted, "wait" when it is this very upload and still being committed, null when there is
 * none; a different upload is refused.
 */
export function priorUpload(
  accepted: UploadRecord | undefined,
  pending: { uploadId: string } | undefined,
  uploadId: string,
  round: number,
): "replay" | "wait" | null {
  if (accepted) {
    if (accepted.uploadId === uploadId) return "replay";
    throw conflict("already_uploaded", `client already has a different update accepted in round ${round}`);
  }
  if (pending) {
    if (pending.uploadId === uploadId) return "wait";
    throw conflict("already_uploaded", "a different update from this client is in flight");
  }
  return null;
}

/**
 * Room in the open round and in the commit queue, by what a run's state (run_state.ts) holds: its
 * queue, and the round's uploads accepted (by every instance, as last counted) and pending here.
 */
export function checkCapacity(
  cfg: RunConfig,
  s: {
    dead: boolean;
    closing: boolean;
    queue: readonly unknown[];
    accepted: number;
    pending: { size: number };
  },
  round: number,
): void {
  if (s.dead) throw new RetryableError("run state was reloaded, retry");
  if (s.closing) throw gone("round_closed", `round ${round} is closing`);
  // A commit snapshots the sum with every folded upload in it, so its group must hold every queued
  // upload (folding ones too): past one atomic operation's worth, push back (503, retry) instead.
  if (s.queue.length >= MAX_GROUP) throw new RetryableError("commit queue is full, retry");
  if (s.accepted + s.pending.size >= cfg.clientsPerRound) {
    throw conflict("round_full", `round ${round} already has ${cfg.clientsPerRound} updates`);
  }
}

/** The update's content against the run's policy; returns its L2 norm. */
export function checkUpdate(cfg: RunConfig, strategy: MethodStrategy, u: DecodedUpdate): number {
  if (u.popcount > cfg.budget) {
    throw invalid("over_budget", `mask selects ${u.popcount} positions, budget is ${cfg.budget}`);
  }
  if (strategy.denseMask && u.popcount !== cfg.adapterSize) {
    throw invalid("dense_required", `${cfg.method} updates must cover every position (all-ones mask)`);
  }
  if (u.popcount === 0 && strategy.aggregates) throw invalid("empty_mask", "mask selects no positions");
  if (!strategy.aggregates && u.popcount !== 0) {
    throw invalid(
      "metrics_only",
      `${cfg.method} runs aggregate nothing: uploads carry metrics and an empty mask`,
    );
  }
  const maxSamples = maxSamplesOf(cfg);
  if (u.samples > maxSamples) {
    throw invalid(
      "too_many_samples",
      `update claims ${u.samples} samples; this run admits at most ${maxSamples}`,
    );
  }
  const norm = Math.sqrt(u.sumSq);
  if (!(norm <= cfg.maxNorm)) {
    throw invalid("norm_bound", `update L2 norm ${norm.toFixed(3)} exceeds ${cfg.maxNorm}`);
  }
  checkMetrics(u.metrics);
  return norm;
}

/** At most MAX_METRICS metrics, each named by METRIC_NAME and a finite number. */
export function checkMetrics(metrics: Record<string, number>): void {
  if (metrics === null || typeof metrics !== "object" || Array.isArray(metrics)) {
    throw invalid("bad_metrics", "metrics must be an object");
  }
  const names = Object.keys(metrics);
  if (names.length > MAX_METRICS) {
    throw invalid("bad_metrics", `at most ${MAX_METRICS} metrics, got ${names.length}`);
  }
  for (const k of names) {
    if (!METRIC_NAME.test(k)) {
      throw invalid("bad_metrics", `metric names must match ${METRIC_NAME.source}, got ${JSON.stringify(k)}`);
    }
    const v = metrics[k];
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw invalid("bad_metrics", `metric ${k} must be a finite number`);
    }
  }
}

/**
 * The open round's deadline passed with a quorum in: `counted` is its accepted uploads (every
 * instance's, as last read) plus those queued for commit here.
 */
export function closeDue(cfg: RunConfig, round: RoundRecord, counted: number, now: number): boolean {
  return round.status === "open" && now >= round.deadline && counted >= cfg.quorum;
}

/**
 * Every slot of the open round is durably taken (`accepted`: by every instance): nothing more can be
 * admitted, so it closes now (normally right after its last commit; after a crash between that
 * commit and the close, on load).
 */
export function roundComplete(cfg: RunConfig, accepted: number): boolean {
  return accepted >= cfg.quorum && accepted >= cfg.clientsPerRound;
}
