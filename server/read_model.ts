/**
 * The read model: every read of the coordinator's KV records for display (the /metrics and /masks
 * routes, the dashboard) goes through here, so the key layout of server/records.ts is known to the
 * writers and to this file only. Reads are eventually consistent snapshots: a mask whose pointer a
 * round close just moved on reads as absent, and the caller skips it this time.
 */
import { MissingBlobError, readChunks } from "./kv_chunks.ts";
import {
  type ClientRecord,
  K,
  type LastMask,
  type LiveRecord,
  type RoundRecord,
  type RunRecord,
  type UploadRecord,
} from "./records.ts";
import { bitWords } from "../runtime/kernels/bits.ts";
import { acceptedOf, readShards, samplesOf } from "./shards.ts";

/** A client's latest stored mask. */
export interface StoredMask {
  round: number;
  bits: Uint32Array;
}

/**
 * A page of a run's timeline: its state, clients, and a range of rounds with the uploads accepted
 * in them. `next` is the `offset` of the following page, null on the last one.
 */
export interface RunMetrics {
  run: Pick<RunRecord, "id" | "status" | "round" | "globalRound" | "config">;
  clients: Pick<ClientRecord, "id" | "name" | "tier" | "expansion" | "joinedAt">[];
  rounds: (RoundRecord & { clients: UploadRecord[] })[];
  offset: number;
  limit: number;
  next: number | null;
}

/** Rounds per /metrics page: by default, and at most. */
export const METRICS_PAGE = { default: 20, max: 100 } as const;

/** Which page of `metrics`, and for whom. */
export interface MetricsQuery {
  /** Rounds to skip (the page starts at round `offset + 1`). */
  offset?: number;
  /** Rounds in the page (clamped to 1..METRICS_PAGE.max; default METRICS_PAGE.default). */
  limit?: number;
  /**
   * A client's id: only its own client record and uploads are included (round records, which hold
   * the aggregates, are shown in full). Omitted: everything (the admin).
   */
  onlyClient?: string;
}

/** Display reads over one KV. */
export class ReadModel {
  constructor(private readonly kv: Deno.Kv) {}

  /** Every run, oldest first. */
  async runs(): Promise<RunRecord[]> {
    // A run whose delete has begun (its live key marked, server/run_life.ts) is gone to every reader.
    const deleting = new Set<string>();
    for await (const e of this.kv.list<LiveRecord>({ prefix: K.lives() })) {
      if (e.value.deleting !== null) deleting.add(String(e.key[1]));
    }
    const out: RunRecord[] = [];
    for await (const e of this.kv.list<RunRecord>({ prefix: K.runs() })) {
      if (!deleting.has(e.value.id)) out.push(e.value);
    }
    return out.sort((a, b) => a.createdAt - b.createdAt);
  }

  /** A run's rounds in order. */
  async rounds(run: string): Promise<RoundRecord[]> {
    const out: RoundRecord[] = [];
    for await (const e of this.kv.list<RoundRecord>({ prefix: K.rounds(run) })) out.push(e.value);
    return out.sort((a, b) => a.index - b.index);
  }

  /**
   * A run's clients: all of them in join order, or a page (`offset`, `limit`) in key order, read
   * without the rest (what /masks pages through).
   */
  async clients(run: string, offset = 0, limit = Infinity): Promise<ClientRecord[]> {
    const out: ClientRecord[] = [];
    let i = 0;
    for await (const e of this.kv.list<ClientRecord>({ prefix: K.clientsOf(run) })) {
      if (i++ < offset) continue;
      if (out.length >= limit) break;
      out.push(e.value);
    }
    return limit === Infinity ? out.sort((a, b) => a.seq - b.seq) : out;
  }

  /** Every accepted upload of a run (all rounds). */
  async uploads(run: string): Promise<UploadRecord[]> {
    const out: UploadRecord[] = [];
    for await (const e of this.kv.list<UploadRecord>({ prefix: K.uploadsAll(run) })) out.push(e.value);
    return out;
  }

  /** A run's rounds with index in [from, to] (1-based), in order, read without the others. */
  async roundRange(run: string, from: number, to: number): Promise<RoundRecord[]> {
    const out: RoundRecord[] = [];
    if (to < from) return out;
    const [p0, p1] = K.rounds(run);
    const it = this.kv.list<RoundRecord>({ start: [p0, p1, from], end: [p0, p1, to + 1] });
    for await (const e of it) if (typeof e.key[2] === "number") out.push(e.value);
    return out.sort((a, b) => a.index - b.index);
  }

  /** The uploads accepted in rounds [from, to], read without the others (all clients, or one). */
  async uploadRange(run: string, from: number, to: number, client?: string): Promise<UploadRecord[]> {
    const out: UploadRecord[] = [];
    if (to < from) return out;
    if (client !== undefined) {
      const keys: Deno.KvKey[] = [];
      for (let r = from; r <= to; r++) keys.push(K.upload(run, r, client));
      for (let i = 0; i < keys.length; i += 10) {
        for (const e of await this.kv.getMany<UploadRecord[]>(keys.slice(i, i + 10))) {
          if (e.value) out.push(e.value);
        }
      }
      return out;
    }
    const [p0, p1] = K.uploadsAll(run);
    const it = this.kv.list<UploadRecord>({ start: [p0, p1, from], end: [p0, p1, to + 1] });
    for await (const e of it) out.push(e.value);
    return out;
  }

  /**
   * One page of the /metrics payload of a run (see `MetricsQuery`): it reads the page's rounds and
   * their uploads only, so its cost is bounded by the page, not by the run's history.
   */
  async metrics(run: RunRecord, q: MetricsQuery = {}): Promise<RunMetrics> {
    const offset = Math.max(0, Math.floor(q.offset ?? 0));
    const limit = Math.min(METRICS_PAGE.max, Math.max(1, Math.floor(q.limit ?? METRICS_PAGE.default)));
    // Rounds 1..last exist: the open one, or every round once the run is done.
    const last = Math.min(run.round, run.config.rounds);
    const from = offset + 1;
    const to = Math.min(last, offset + limit);
    const rounds = (await this.roundRange(run.id, from, to)).map((r) => ({
      ...r,
      clients: [] as UploadRecord[],
    }));
    const byIndex = new Map(rounds.map((r) => [r.index, r]));
    for (const u of await this.uploadRange(run.id, from, to, q.onlyClient)) {
      byIndex.get(u.round)?.clients.push(u);
    }
    // An open round counts its uploads in its instances' shards until it closes.
    for (const r of rounds) {
      if (r.status !== "open") continue;
      const shards = await readShards(this.kv, r);
      r.accepted = acceptedOf(r, shards);
      r.samples = samplesOf(r, shards);
    }
    const clients = q.onlyClient === undefined
      ? await this.clients(run.id)
      : await this.client(run.id, q.onlyClient).then((c) => (c ? [c] : []));
    const { id, status, round, globalRound, config } = run;
    return {
      run: { id, status, round, globalRound, config },
      clients: clients.map(({ id, name, tier, expansion, joinedAt }) => ({
        id,
        name,
        tier,
        expansion,
        joinedAt,
      })),
      rounds,
      offset,
      limit,
      next: offset + limit < last ? offset + limit : null,
    };
  }

  /** One client's record, or null. */
  async client(run: string, client: string): Promise<ClientRecord | null> {
    return (await this.kv.get<ClientRecord>(K.client(run, client))).value;
  }

  /** The round under which a client's latest mask is stored, or null when it has none. */
  async lastMaskRound(run: string, client: string): Promise<number | null> {
    return (await this.kv.get<LastMask>(K.lastMask(run, client))).value?.round ?? null;
  }

  /** A client's latest mask, or null when it has none (or a close moved it on mid-read). */
  async latestMask(run: RunRecord, client: string): Promise<StoredMask | null> {
    const round = await this.lastMaskRound(run.id, client);
    if (round === null) return null;
    const bits = await this.mask(run, client, round);
    return bits ? { round, bits } : null;
  }

  /** The mask a client stored in `round`, or null when it is not (or no longer) there. */
  async mask(run: RunRecord, client: string, round: number): Promise<Uint32Array | null> {
    const bits = new Uint32Array(bitWords(run.config.adapterSize));
    try {
      await readChunks(this.kv, K.mask(run.id, client, round), new Uint8Array(bits.buffer));
      return bits;
    } catch (e) {
      if (e instanceof MissingBlobError) return null;
      throw e;
    }
  }
}
