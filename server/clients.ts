/**
 * Clients of a run: joining (a counter guarded by its versionstamp assigns each client its join
 * order and tier) and the cache of client records, which are immutable once joined.
 */
import { conflict, gone, notFound } from "./errors.ts";
import { type ClientRecord, K, type RunRecord } from "./records.ts";
import type { RunConfig } from "./run_config.ts";
import { b64url } from "./tokens.ts";
import { BoundedCache } from "./bounded_cache.ts";
import { assignTier, checkTier, runCancelled } from "./admission.ts";
import { RetryableError } from "./run_state.ts";
import {
  checkJoinKey,
  type Credentials,
  findInvite,
  inviteUsed,
  isReplay,
  type PresentedInvite,
} from "./enrollment.ts";

/** What a join asks for, and the credentials it presents (enrollment.ts). */
export interface JoinRequest extends Credentials {
  name?: string;
  tier?: string;
}

/** Client records kept in memory (a few hundred bytes each). */
const CLIENT_CACHE = 50_000;

/** What a join needs to know of its run. */
export interface JoinTarget {
  id: string;
  status: RunRecord["status"];
  config: RunConfig;
  /** The run record as read: the join commits only if it is unchanged (not cancelled nor deleted since). */
  entry: Deno.KvEntryMaybe<RunRecord>;
}

/** Joins and client records of every run. */
export class ClientRegistry {
  /** The tail of each run's joins in flight (see `join`). */
  private locks = new Map<string, Promise<unknown>>();
  /** Client records are immutable once joined, so every instance may keep the ones it has read. */
  private records = new BoundedCache<ClientRecord>(CLIENT_CACHE);

  constructor(private readonly kv: Deno.Kv, private readonly now: () => number) {}

  /** A run's record (one small read, no state loaded), or 404: what a joiner may learn before joining. */
  async runRecord(runId: string): Promise<RunRecord> {
    const r = (await this.kv.get<RunRecord>(K.run(runId))).value;
    if (!r) throw notFound(`no run ${runId}`);
    return r;
  }

  /** Registers a client, assigns its tier (requested, else round-robin by join order). */
  join(runId: string, req: JoinRequest): Promise<ClientRecord> {
    // The run record alone (one small read), not the run's state: a join that its enrollment
    // refuses loads nothing (a state holds 8·N bytes of accumulators).
    const run = async (): Promise<JoinTarget> => {
      const entry = await this.kv.get<RunRecord>(K.run(runId));
      const r = entry.value;
      if (!r) throw notFound(`no run ${runId}`);
      return { id: runId, status: r.status, config: r.config, entry };
    };
    // Joins of one run are serialized in-process so the counter check rarely conflicts; the
    // versionstamp check still guards against other instances (Deno Deploy), with retries.
    const prev = this.locks.get(runId) ?? Promise.resolve();
    const p = prev.then(() => this.joinOnce(run, req));
    const tail = p.catch(() => {});
    this.locks.set(runId, tail);
    tail.then(() => {
      if (this.locks.get(runId) === tail) this.locks.delete(runId);
    });
    return p;
  }

  /** Joins in flight (for `settled`). */
  inFlight(): Promise<unknown>[] {
    return [...this.locks.values()];
  }

  private async joinOnce(read: () => Promise<JoinTarget>, req: JoinRequest): Promise<ClientRecord> {
    let run = await read();
    const { id: runId, config: cfg } = run;
    // Enrollment first: someone without a key or invite learns nothing more about the run.
    const enrollment = cfg.enrollment ?? "open";
    if (enrollment === "key") await checkJoinKey(this.kv, runId, req.key);
    const ended = (status: RunRecord["status"]) => {
      if (status === "done") throw gone("run_done", `run ${runId} has finished`);
      if (status === "cancelled") throw runCancelled(runId);
    };
    ended(run.status);
    checkTier(cfg, req.tier);
    for (let attempt = 0; attempt < 20; attempt++) {
      // Re-read after a failed commit: a round close changes the record, a cancel or delete ends the run.
      if (attempt > 0) ended((run = await read()).status);
      let invite: PresentedInvite | null = null;
      if (enrollment === "invite") {
        invite = await findInvite(this.kv, runId, req.invite);
        const used = invite.record.used;
        if (used) {
          if (!isReplay(used, req, this.now())) throw inviteUsed();
          return await this.get(runId, used.client);
        }
      }
      const cnt = await this.kv.get<{ count: number }>(K.clientCount(runId));
      const seq = cnt.value?.count ?? 0;
      if (seq >= cfg.maxClients) {
        throw conflict("run_full", `run ${runId} already has ${cfg.maxClients} clients`);
      }
      const id = `c_${b64url(crypto.getRandomValues(new Uint8Array(9)))}`;
      const tier = assignTier(cfg, req.tier, seq);
      const rec: ClientRecord = {
        id,
        run: runId,
        name: req.name ?? "",
        tier,
        expansion: cfg.expansionTiers[tier],
        joinedAt: this.now(),
        seq,
      };
      const op = this.kv.atomic()
        .check(run.entry)
        .check(cnt)
        .check({ key: K.client(runId, id), versionstamp: null })
        .set(K.clientCount(runId), { count: seq + 1 })
        .set(K.client(runId, id), rec);
      if (invite) {
        // Used in the same commit that creates the client: of two joins racing for one invite,
        // one commits and the other sees it used on its retry.
        op.check(invite.entry).set(invite.entry.key, {
          ...invite.record,
          used: { client: id, at: rec.joinedAt, name: req.name ?? null, tier: req.tier ?? null },
        });
      }
      const res = await op.commit();
      if (res.ok) return rec;
    }
    throw new RetryableError("join contention, retry");
  }

  /** A client's record, or 404. */
  async get(runId: string, clientId: string): Promise<ClientRecord> {
    const key = `${runId}/${clientId}`;
    const hit = this.records.get(key);
    if (hit) return hit;
    const c = await this.kv.get<ClientRecord>(K.client(runId, clientId));
    if (!c.value) throw notFound(`no client ${clientId} in run ${runId}`);
    this.records.set(key, c.value);
    return c.value;
  }
}
