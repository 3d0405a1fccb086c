/**
 * Coordinator state written straight into Deno KV under the keys of server/records.ts, so the
 * dashboard is tested on the real storage layout without running a federation.
 */
import {
  type ClientRecord,
  K,
  type RoundRecord,
  type RunRecord,
  type UploadRecord,
} from "../server/records.ts";
import type { RunConfig } from "../server/run_config.ts";
import { writeChunks } from "../server/kv_chunks.ts";
import type { AdapterLayoutLike } from "../runtime/export/types.ts";

/** What seedKv wrote. */
export interface Seeded {
  perfitRun: string;
  feditRun: string;
  /** A FedIT run on other data (other clients): the dashboard must not compare it with the PerFIT run. */
  otherDataRun: string;
  clients: string[];
  totalRounds: number;
  /** Client name -> mask bits as written. */
  masks: Map<string, Uint32Array>;
  /** Opens round 3 of the PerFIT run (for live-refresh checks). */
  addRound(): Promise<void>;
}

function config(method: "perfit" | "fedit", size: number): RunConfig {
  return {
    baseModel: "tiny",
    lora: { rank: 4, alpha: 8, targets: ["q", "v"] },
    method,
    rounds: 3,
    clientsPerRound: 3,
    quorum: 3,
    roundDeadlineMs: 60_000,
    expansionTiers: { base: 1 },
    adapterSize: size,
    budget: method === "perfit" ? Math.floor(size / 2) : size,
    maxNorm: 1e4,
    maxClients: 100,
    seed: 0,
    train: {},
  };
}

/** Seeded LCG so fixtures are deterministic. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/**
 * Writes three runs x 2 closed rounds x 3 clients with perplexities and PerFIT masks: PerFIT and FedIT
 * on the same clients, and (newest) a FedIT run on other clients with far lower perplexities.
 */
export async function seedKv(kv: Deno.Kv, layout: AdapterLayoutLike): Promise<Seeded> {
  const t0 = Date.UTC(2026, 10, 25, 10, 0, 0);
  const clients = ["computing", "satire", "acronyms"];
  const masks = new Map<string, Uint32Array>();
  const rnd = lcg(7);
  const words = Math.ceil(layout.size / 32);
  const runs = [
    { id: "run-perfit", method: "perfit", clients, ppl: 8 },
    { id: "run-fedit", method: "fedit", clients, ppl: 10 },
    { id: "run-fedit-other-data", method: "fedit", clients: ["computing", "satire", "dolly"], ppl: 3 },
  ] as const;
  for (const [runIdx, { id, method, clients, ppl: pplBase }] of runs.entries()) {
    const run: RunRecord = {
      id,
      config: config(method, layout.size),
      createdAt: t0 + runIdx * 1000,
      status: "active",
      round: 3,
      globalGen: null,
      globalRound: 2,
    };
    await kv.set(K.run(id), run);
    for (let r = 1; r <= 2; r++) {
      const rd: RoundRecord = {
        run: id,
        index: r,
        status: "closed",
        openedAt: t0 + runIdx * 1000 + (r - 1) * 20_000,
        deadline: t0 + 600_000,
        closedAt: t0 + runIdx * 1000 + r * 20_000 - 5_000,
        accepted: 3,
        samples: 30,
        accGen: null,
        summary: null,
      };
      await kv.set(K.round(id, r), rd);
    }
    for (const [ci, name] of clients.entries()) {
      const cid = `${id}-c${ci}`;
      const rec: ClientRecord = { id: cid, run: id, name, tier: "base", expansion: 1, joinedAt: t0, seq: ci };
      await kv.set(K.client(id, cid), rec);
      for (let r = 1; r <= 2; r++) {
        // PerFIT ends lower than FedIT on the same data, as the gain text asserts.
        const ppl = pplBase + ci - r;
        const up: UploadRecord = {
          uploadId: `${cid}-${r}`,
          client: cid,
          round: r,
          samples: 10,
          metrics: { loss: Math.log(ppl), ppl },
          popcount: 0,
          norm: 1,
          at: t0,
          maskRound: r,
          maskHash: "",
        };
        await kv.set(K.upload(id, r, cid), up);
      }
      if (method === "perfit") {
        const bits = new Uint32Array(words);
        for (let p = 0; p < layout.size; p++) if (rnd() < 0.5) bits[p >>> 5] |= 1 << (p & 31);
        await writeChunks(kv, K.mask(id, cid, 2), new Uint8Array(bits.buffer));
        await kv.set(K.lastMask(id, cid), { round: 2, popcount: 0 });
        masks.set(name, bits);
      }
    }
  }
  return {
    perfitRun: "run-perfit",
    feditRun: "run-fedit",
    otherDataRun: "run-fedit-other-data",
    clients,
    totalRounds: 6,
    masks,
    async addRound() {
      const rd: RoundRecord = {
        run: "run-perfit",
        index: 3,
        status: "open",
        openedAt: t0 + 40_000,
        deadline: t0 + 600_000,
        closedAt: null,
        accepted: 0,
        samples: 0,
        accGen: null,
        summary: null,
      };
      await kv.set(K.round("run-perfit", 3), rd);
    },
  };
}
