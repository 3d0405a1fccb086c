/**
 * In-process federation: clients, a strategy and the engine, round by round. Every method goes
 * through this one loop; only the strategy's configuration and the clients' expansion differ.
 */
import type { TextTokenizer } from "../data/types.ts";
import { deriveSeed } from "../data/rng.ts";
import { initAdapter } from "../model/lora.ts";
import { expansionFactor } from "../perfit/expansion.ts";
import { embed, extract, rankLayout } from "../perfit/layout.ts";
import { kernels } from "../kernels/mod.ts";
import { FlClient, type StepHook } from "./client.ts";
import { maskFormOf } from "../client/wire.ts";
import type { ClientData } from "./partition.ts";
import { PersonalizedStrategy } from "./strategy.ts";
import { strategyFor } from "./strategies.ts";
import type { ClientRound, EngineFactory, SimConfig, SimResult, SimRound } from "./types.ts";

/** Everything a simulation needs besides its config. */
export interface SimulationInputs {
  clients: ClientData[];
  tokenizer: TextTokenizer;
  engineFactory: EngineFactory;
  backend?: string;
  batchSize: number;
  maxLen: number;
  evalBatchSize?: number;
  /** Called after each client's step of local training. */
  onStep?: StepHook;
  /** Called after each finished round (e.g. to print it). */
  onRound?: (r: SimRound) => void;
  /** Called after each client evaluation (progress). */
  onEval?: (clientId: string) => void;
  /** Called after each round with the live clients (tests and debugging inspect their state). */
  inspect?: (round: number, clients: readonly FlClient[]) => void;
}

/** Expansion factor of each client under a method: FedIT and the e=1 ablation expand nobody. */
export function clientExpansion(cfg: SimConfig, index: number): { tier: string; e: number } {
  const tier = cfg.clientTiers.length ? cfg.clientTiers[index % cfg.clientTiers.length] : "low";
  const e = expansionFactor(tier, cfg.tiers);
  return { tier, e: strategyFor(cfg.method).expands ? e : 1 };
}

/** Runs a full simulation and returns per-round, per-client results. */
export async function simulate(cfg: SimConfig, inp: SimulationInputs): Promise<SimResult> {
  const t0 = performance.now();
  if (inp.clients.length === 0) throw new RangeError("simulation needs at least one client");
  const assign = inp.clients.map((_, i) => clientExpansion(cfg, i));
  const eMax = Math.max(...assign.map((a) => a.e));
  const engines = new Map<number, Awaited<ReturnType<EngineFactory>>>();
  const engineFor = async (rank: number) => {
    if (!engines.has(rank)) engines.set(rank, await inp.engineFactory(rank));
    return engines.get(rank)!;
  };
  const first = await engineFor(cfg.rank * assign[0].e);
  const base = rankLayout(first.layout, cfg.rank);
  const global = rankLayout(base, cfg.rank * eMax);
  // Every client starts from the same global init, so positions mean the same thing everywhere.
  const init = initAdapter(global, deriveSeed(cfg.seed, 0x1417));
  const clients: FlClient[] = [];
  for (let i = 0; i < inp.clients.length; i++) {
    const engine = await engineFor(cfg.rank * assign[i].e);
    const own = extract(global, init, engine.layout);
    clients.push(
      new FlClient(inp.clients[i], assign[i].tier, assign[i].e, engine, cfg.rank, own, {
        tokenizer: inp.tokenizer,
        batchSize: inp.batchSize,
        maxLen: inp.maxLen,
        evalBatchSize: inp.evalBatchSize,
      }, deriveSeed(cfg.seed, i, 0xc1)),
    );
  }
  const ids = clients.map((c) => c.id);
  if (new Set(ids).size !== ids.length) throw new RangeError("client ids must be unique");
  const strategy = new PersonalizedStrategy(cfg, global, new Map(clients.map((c) => [c.id, c.layout])));
  const target = { run: `sim-${cfg.method}-${cfg.seed}`, global };
  const rounds: SimRound[] = [];
  for (let round = 1; round <= cfg.rounds; round++) {
    const tr = performance.now();
    const fitIns = strategy.configureFit(round, ids);
    const results = [];
    const losses = new Map<string, number>();
    for (const c of clients) {
      const ins = fitIns.get(c.id);
      if (!ins) continue;
      const res = await c.fit(ins, cfg, strategy.aggregates ? target : null, inp.onStep);
      losses.set(c.id, res.meanLoss);
      results.push(res);
    }
    const downloads = await strategy.aggregateFit(round, results);
    const uploads = new Map(results.map((r) => [r.clientId, r.upload]));
    const records: ClientRound[] = [];
    for (const c of clients) {
      const up = uploads.get(c.id) ?? null;
      if (up) c.acknowledge();
      const down = downloads.get(c.id);
      if (down) c.receive(down);
      // A client whose adapter did not change since its last evaluation (frozen base) is not re-evaluated.
      const prev = rounds.length
        ? rounds[rounds.length - 1].clients.find((x) => x.clientId === c.id)
        : undefined;
      const unchanged = !strategy.trains && prev !== undefined;
      const ev = unchanged ? { nllSum: prev.testNll, tokens: prev.testTokens } : await c.evaluate();
      inp.onEval?.(c.id);
      records.push({
        clientId: c.id,
        tier: c.tier,
        expansion: c.expansion,
        trained: fitIns.has(c.id),
        meanLoss: losses.get(c.id) ?? null,
        testNll: ev.nllSum,
        testTokens: ev.tokens,
        perplexity: Math.exp(ev.nllSum / Math.max(1, ev.tokens)),
        uploadBytes: up ? up.length : 0,
        maskMode: up ? maskFormOf(up) : null,
        downloadBytes: down ? down.length * 4 : 0,
      });
    }
    const rec: SimRound = {
      round,
      clients: records,
      meanPerplexity: records.reduce((s, r) => s + r.perplexity, 0) / records.length,
      seconds: (performance.now() - tr) / 1000,
    };
    rounds.push(rec);
    inp.onRound?.(rec);
    inp.inspect?.(round, clients);
  }
  const globalMasks = clients.map((c) => embed(c.layout, c.mask, global));
  const k = kernels();
  const maskStats = clients.map((c, i) => {
    let inA = 0;
    for (const e of c.layout.entries) {
      if (e.kind === "A") { for (let j = 0; j < e.size; j++) inA += c.mask[e.offset + j]; }
    }
    const others = globalMasks.filter((_, j) => j !== i).map((m) => k.jaccard(globalMasks[i], m));
    return {
      id: c.id,
      fractionInA: inA / Math.max(1, k.popcount(c.mask)),
      meanJaccard: others.length ? others.reduce((a, b) => a + b, 0) / others.length : 1,
    };
  });
  return {
    method: cfg.method,
    maskStats,
    config: cfg,
    backend: inp.backend ?? "unknown",
    clients: clients.map((c) => ({
      id: c.id,
      tier: c.tier,
      expansion: c.expansion,
      train: c.data.train.length,
      test: c.data.test.length,
      trainableParams: strategyFor(cfg.method).trains ? c.plan.budget : 0,
      searchSpace: c.plan.total,
    })),
    budget: base.size,
    rounds,
    wallSeconds: (performance.now() - t0) / 1000,
  };
}

/** Flattens a result into CSV rows: one per (round, client). */
export function resultToCsv(r: SimResult): string {
  const head =
    "method,round,client,tier,expansion,trained,mean_loss,test_tokens,perplexity,upload_bytes,mask_mode,download_bytes";
  const rows = r.rounds.flatMap((rd) =>
    rd.clients.map((c) =>
      [
        r.method,
        rd.round,
        c.clientId,
        c.tier,
        c.expansion,
        c.trained,
        c.meanLoss ?? "",
        c.testTokens,
        c.perplexity.toFixed(4),
        c.uploadBytes,
        c.maskMode ?? "",
        c.downloadBytes,
      ].join(",")
    )
  );
  return [head, ...rows].join("\n") + "\n";
}
