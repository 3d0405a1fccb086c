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
  type RoundRecord,
  type RunRecord,
  type UploadRecord,
} from "./records.ts";
import { bitWords } from "../runtime/kernels/bits.ts";

/** A client's latest stored mask. */
export interface StoredMask {
  round: number;
  bits: Uint32Array;
}

/** A run's timeline: its state, clients, and every round with the uploads accepted in it. */
export interface RunMetrics {
  run: Pick<RunRecord, "id" | "status" | "round" | "globalRound" | "config">;
  clients: Pick<ClientRecord, "id" | "name" | "tier" | "expansion" | "joinedAt">[];
  rounds: (RoundRecord & { clients: UploadRecord[] })[];
}

/** Display reads over one KV. */
export class ReadModel {
  constructor(private readonly kv: Deno.Kv) {}

  /** Every run, oldest first. */
  async runs(): Promise<RunRecord[]> {
    const out: RunRecord[] = [];
    for await (const e of this.kv.list<RunRecord>({ prefix: K.runs() })) out.push(e.value);
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

  /** The /metrics payload of a run. */
  async metrics(run: RunRecord): Promise<RunMetrics> {
    const rounds = (await this.rounds(run.id)).map((r) => ({ ...r, clients: [] as UploadRecord[] }));
    const byIndex = new Map(rounds.map((r) => [r.index, r]));
    for (const u of await this.uploads(run.id)) byIndex.get(u.round)?.clients.push(u);
    const { id, status, round, globalRound, config } = run;
    return {
      run: { id, status, round, globalRound, config },
      clients: (await this.clients(run.id)).map(({ id, name, tier, expansion, joinedAt }) => ({
        id,
        name,
        tier,
        expansion,
        joinedAt,
      })),
      rounds,
    };
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
