/**
 * Builds the dashboard payload from the coordinator's records (through server/read_model.ts):
 * runs, rounds, clients, the perplexity each client reported with its uploads, and, from the clients'
 * latest masks, pairwise Jaccard overlap and the budget spread over layers and modules.
 *
 * Masks are immutable once uploaded, so they are cached by (run, client, round); each refresh reads
 * only the small records plus masks it has not seen.
 */
import type { RunRecord } from "../records.ts";
import type { ReadModel } from "../read_model.ts";
import { countRange, jaccardBits } from "../../runtime/kernels/bits.ts";
import { strategyFor } from "../../runtime/federation/strategies.ts";
import type {
  BudgetSpread,
  ClientInfo,
  DashboardData,
  OverlapMatrix,
  RunInfo,
  RunSetting,
} from "../../web/dashboard/types.ts";
import type { AdapterLayoutLike } from "../../runtime/export/types.ts";
import { type ModelConfig, readConfigFile } from "../../runtime/model/config.ts";
import { adapterLayout } from "../../runtime/model/lora.ts";

/** Metric names a client may report its held-out perplexity under, in order of preference. */
export const PPL_KEYS = ["ppl", "perplexity", "eval_ppl", "evalPpl", "test_ppl"];

/** At most this many clients appear in the overlap heatmap and budget chart (the first joined). */
export const MAX_MASK_CLIENTS = 32;

/** Options of `kvDashboardSource`. */
export interface KvDashboardOptions {
  /** Layout of a run's global adapter (to group mask positions by layer.module); null when unknown. */
  layoutFor?: (run: RunRecord) => AdapterLayoutLike | null | Promise<AdapterLayoutLike | null>;
  maxMaskClients?: number;
}

/** Pairwise Jaccard of bitmasks (1 where both are empty). */
export function jaccardMatrix(masks: Uint32Array[]): number[][] {
  return masks.map((a, i) => masks.map((b, j) => (i === j ? 1 : jaccardBits(a, b))));
}

/** Kept positions per "L{layer}.{module}" group (A and B together), groups in layout order. */
export function budgetCounts(
  layout: AdapterLayoutLike,
  bits: Uint32Array,
): { groups: string[]; counts: number[] } {
  const idx = new Map<string, number>();
  const counts: number[] = [];
  for (const e of layout.entries) {
    const g = `L${e.layer}.${e.module}`;
    if (!idx.has(g)) {
      idx.set(g, counts.length);
      counts.push(0);
    }
    counts[idx.get(g)!] += countRange(bits, e.offset, e.offset + e.size);
  }
  return { groups: [...idx.keys()], counts };
}

/** The parts of a run's data/setting fingerprint: what must match for two runs to be compared. */
export function runSetting(run: RunRecord, clientNames: string[]): RunSetting {
  const { baseModel, lora, rounds, train } = run.config;
  return {
    baseModel,
    lora: { rank: lora.rank, alpha: lora.alpha, targets: [...lora.targets].sort() },
    rounds,
    train: train ?? {},
    clients: [...new Set(clientNames)].sort(),
  };
}

function pplOf(metrics: Record<string, number> | undefined): number | null {
  if (!metrics) return null;
  for (const k of PPL_KEYS) {
    if (typeof metrics[k] === "number" && Number.isFinite(metrics[k])) return metrics[k];
  }
  return null;
}

/** Returns a function that snapshots the dashboard data from the coordinator's records (the read model). */
export function kvDashboardSource(
  reads: ReadModel,
  opts: KvDashboardOptions = {},
): () => Promise<DashboardData> {
  const maskCache = new Map<string, Uint32Array>();
  const maxClients = opts.maxMaskClients ?? MAX_MASK_CLIENTS;

  async function maskOf(run: RunRecord, client: string, round: number): Promise<Uint32Array | null> {
    const key = `${run.id}\u0000${client}\u0000${round}`;
    const hit = maskCache.get(key);
    if (hit) return hit;
    // Null: written but its pointer not yet flipped, or pruned: skip this refresh.
    const bits = await reads.mask(run, client, round);
    if (bits) maskCache.set(key, bits);
    return bits;
  }

  async function runInfo(run: RunRecord): Promise<RunInfo> {
    const rounds = await reads.rounds(run.id);
    const clients = await reads.clients(run.id);
    const ppl = new Map<string, { round: number; ppl: number }[]>();
    for (const u of await reads.uploads(run.id)) {
      const v = pplOf(u.metrics);
      if (v === null) continue;
      const list = ppl.get(u.client) ?? [];
      list.push({ round: u.round, ppl: v });
      ppl.set(u.client, list);
    }
    const clientInfos: ClientInfo[] = clients.map((c) => ({
      id: c.name || c.id,
      tier: c.expansion,
      ppl: (ppl.get(c.id) ?? []).sort((a, b) => a.round - b.round),
    }));
    const info: RunInfo = {
      id: run.id,
      method: run.config.method,
      state: run.status,
      createdAt: run.createdAt,
      totalRounds: run.config.rounds,
      setting: runSetting(run, clients.map((c) => c.name || c.id)),
      rounds: rounds.map((r) => ({
        round: r.index,
        // The round a cancel ended reads as cancelled (its record says closed: it never reopens).
        state: run.status === "cancelled" && r.index === run.round ? "cancelled" : r.status,
        startedAt: r.openedAt,
        closedAt: r.closedAt ?? undefined,
        uploads: r.accepted,
      })),
      clients: clientInfos,
    };
    if (strategyFor(run.config.method).personalMask) {
      const withMasks: { name: string; bits: Uint32Array }[] = [];
      for (const c of clients.slice(0, maxClients)) {
        const last = await reads.lastMaskRound(run.id, c.id);
        if (last === null) continue;
        const bits = await maskOf(run, c.id, last);
        if (bits) withMasks.push({ name: c.name || c.id, bits });
      }
      if (withMasks.length > 0) {
        const overlap: OverlapMatrix = {
          clients: withMasks.map((m) => m.name),
          jaccard: jaccardMatrix(withMasks.map((m) => m.bits)),
        };
        info.overlap = overlap;
        const layout = (await opts.layoutFor?.(run)) ?? null;
        if (layout && layout.size === run.config.adapterSize) {
          const rows = withMasks.map((m) => budgetCounts(layout, m.bits));
          const budget: BudgetSpread = {
            clients: overlap.clients,
            groups: rows[0].groups,
            counts: rows.map((r) => r.counts),
          };
          info.budget = budget;
        }
      }
    }
    return info;
  }

  return async () => {
    const runs = await reads.runs();
    return { generatedAt: Date.now(), runs: await Promise.all(runs.map(runInfo)) };
  };
}

/**
 * Layout of a run's global adapter for a base model folder: the layout's size is linear in the rank,
 * so the global rank is adapterSize / size(rank 1); null when the run does not fit this model.
 */
export function layoutFromModelDir(modelDir: string): (run: RunRecord) => Promise<AdapterLayoutLike | null> {
  let config: Promise<ModelConfig | null> | null = null;
  return async (run) => {
    config ??= readConfigFile(modelDir).catch(() => null);
    const cfg = await config;
    if (!cfg) return null;
    const { targets, alpha } = run.config.lora;
    try {
      const unit = adapterLayout(cfg, { rank: 1, alpha, targets });
      const rank = run.config.adapterSize / unit.size;
      return Number.isInteger(rank) ? adapterLayout(cfg, { rank, alpha, targets }) : null;
    } catch {
      return null;
    }
  };
}
