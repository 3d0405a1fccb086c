/**
 * A federation simulated with the deployed system: the coordinator's Hono app (in this process, or
 * a running one at a URL), one `FederatedClient` + `engineTrainer` per data owner, and the wire
 * format between them. The simulation adds only what a study needs on top: seeded sampling, each
 * client driven in turn (so folds land in a fixed order and a seed gives the same numbers on every
 * carrier), the personalized model's evaluation after every round, and the bytes of the HTTP bodies.
 */
import type { TextTokenizer } from "../data/types.ts";
import { deriveSeed } from "../data/rng.ts";
import { expansionFactor } from "../perfit/expansion.ts";
import { type AdapterLayout, embed, extract, rankLayout } from "../perfit/layout.ts";
import { makePrunePlan, type PrunePlan } from "../perfit/prune.ts";
import { kernels } from "../kernels/mod.ts";
import { maskFormOf, SLICE_REVISION } from "../client/wire.ts";
import { FederatedClient, type TaskInfo } from "../client/federated_client.ts";
import { type EngineTrainer, engineTrainer, type TrainProgress } from "../client/engine_trainer.ts";
import type { StepHook } from "../client/local_update.ts";
import type { ClientData } from "./partition.ts";
import { sampleClients, strategyFor } from "./strategies.ts";
import { type CoordinatorLink, inProcessCoordinator } from "./coordinator_link.ts";
import type { ClientRound, EngineFactory, SimConfig, SimResult, SimRound } from "./types.ts";

/** A client as a test or a debugger sees it after a round, in its own rank-(r*e) layout. */
export interface SimClientView {
  id: string;
  layout: AdapterLayout;
  plan: PrunePlan;
  adapter: Float32Array;
  mask: Uint8Array;
  /**
   * What the client exports as its personalized model (engineTrainer's `personalized`; null before
   * training), built when called from the client's state then: a stacking method's is every stack it
   * merged, too large to build for every view nobody exports.
   */
  exported: () => ReturnType<EngineTrainer["personalized"]>;
}

/** Everything a simulation needs besides its config. */
export interface SimulationInputs {
  clients: ClientData[];
  tokenizer: TextTokenizer;
  engineFactory: EngineFactory;
  backend?: string;
  batchSize: number;
  maxLen: number;
  evalBatchSize?: number;
  /** The coordinator (default: the Hono app in this process over an in-memory KV). */
  coordinator?: CoordinatorLink;
  /** The run's `baseModel` name (default "simulation"). */
  baseModel?: string;
  /**
   * The base model's config.json, for methods whose coordinator aggregates per projection (HetLoRA):
   * the run is then created with it and the coordinator rebuilds the layout.
   */
  modelConfig?: Record<string, unknown>;
  /** Called after each client's step of local training. */
  onStep?: StepHook;
  /** Called after each finished round (e.g. to print it). */
  onRound?: (r: SimRound) => void;
  /** Called after each client evaluation (progress). */
  onEval?: (clientId: string) => void;
  /** Called after each round with the clients (tests and debugging inspect their state). */
  inspect?: (round: number, clients: readonly SimClientView[]) => void | Promise<void>;
}

/**
 * Expansion factor of each client under a method: FedIT and the e=1 ablation expand nobody, FedDPA
 * holds its two adapters at 2r in every tier.
 */
export function clientExpansion(cfg: SimConfig, index: number): { tier: string; e: number } {
  const tier = cfg.clientTiers.length ? cfg.clientTiers[index % cfg.clientTiers.length] : "low";
  return { tier, e: tierExpansion(cfg, expansionFactor(tier, cfg.tiers)) };
}

/** A tier's expansion under the run's method. */
const tierExpansion = (cfg: SimConfig, e: number): number => {
  const s = strategyFor(cfg.method);
  return s.dual ? 2 : s.expands ? e : 1;
};

/** The run's `train` settings: every knob of the local round travels to the clients with the task. */
export function trainSettings(cfg: SimConfig, inp: Pick<SimulationInputs, "batchSize" | "maxLen">) {
  return {
    localSteps: cfg.localSteps,
    lr: cfg.lr,
    weightDecay: cfg.weightDecay,
    clipNorm: cfg.clipNorm,
    pruneStages: cfg.pruneStages,
    searchFraction: cfg.searchFraction,
    schedule: cfg.schedule,
    allocation: cfg.allocation,
    importanceMode: cfg.importance.mode,
    ...(cfg.importance.beta !== undefined ? { importanceBeta: cfg.importance.beta } : {}),
    researchEvery: cfg.researchEvery,
    ...(cfg.proximalMu > 0 ? { proximalMu: cfg.proximalMu } : {}),
    ...(strategyFor(cfg.method).dual ? cfg.dpa : {}),
    ...(cfg.mixPart && cfg.mixPart !== "B" ? { mixPart: cfg.mixPart } : {}),
    ...(cfg.validationShare !== undefined ? { validationShare: cfg.validationShare } : {}),
    ...(cfg.finetuneSteps ? { finetuneSteps: cfg.finetuneSteps } : {}),
    ...(cfg.finetuneLrScale !== undefined && cfg.finetuneLrScale !== 1
      ? { finetuneLrScale: cfg.finetuneLrScale }
      : {}),
    ...(cfg.optimizerState === "kept" ? { optimizerState: cfg.optimizerState } : {}),
    ...(cfg.rankPruning
      ? { rankPruning: "on", rankDecay: cfg.rankPruning.decay, rankTailWeight: cfg.rankPruning.tailWeight }
      : {}),
    batchSize: inp.batchSize,
    maxLen: inp.maxLen,
  };
}

/** One data owner of the simulation. */
interface Owner {
  index: number;
  data: ClientData;
  tier: string;
  e: number;
  trainer: EngineTrainer;
  client: FederatedClient | null;
  /** Body bytes sent to the update route per round, and the mask form of the last one. */
  up: Map<number, { bytes: number; form: string }>;
  /** Response bytes of slices received. */
  down: number;
  losses: Map<number, number>;
  /** The run's train settings, for evaluating without a coordinator's task (the frozen base). */
  train: Record<string, unknown>;
}

const DAY_MS = 24 * 3600_000;

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

/** Runs a full simulation and returns per-round, per-client results. */
export async function simulate(cfg: SimConfig, inp: SimulationInputs): Promise<SimResult> {
  const t0 = performance.now();
  if (inp.clients.length === 0) throw new RangeError("simulation needs at least one client");
  if (new Set(inp.clients.map((c) => c.id)).size !== inp.clients.length) {
    throw new RangeError("client ids must be unique");
  }
  const strategy = strategyFor(cfg.method);
  const assign = inp.clients.map((_, i) => clientExpansion(cfg, i));
  const eMax = Math.max(...assign.map((a) => a.e));
  const probe = await inp.engineFactory(cfg.rank * assign[0].e);
  const base = rankLayout(probe.layout, cfg.rank);
  // A stacking method (FLoRA) holds one slot of rank r·e_max per client.
  const global = rankLayout(base, cfg.rank * eMax * (strategy.stacks ? inp.clients.length : 1));
  const owners: Owner[] = inp.clients.map((data, index) => {
    const o: Owner = {
      index,
      data,
      ...assign[index],
      client: null,
      up: new Map(),
      down: 0,
      losses: new Map(),
      train: trainSettings(cfg, inp),
      trainer: null as unknown as EngineTrainer,
    };
    o.trainer = engineTrainer({
      engines: inp.engineFactory,
      tokenizer: inp.tokenizer,
      data,
      seed: deriveSeed(cfg.seed, index, 0xc1),
      evalBatchSize: inp.evalBatchSize,
      evaluateAfterTraining: false,
      onProgress: (p: TrainProgress) => {
        if (p.phase === "train") inp.onStep?.(data.id, p.step, p.steps);
      },
      onMetrics: (round, m) => o.losses.set(round, m.loss),
    });
    return o;
  });
  const rounds: SimRound[] = [];
  const link = strategy.trains ? (inp.coordinator ?? await inProcessCoordinator()) : null;
  try {
    const runId = link ? await createRun(link, cfg, inp, owners.length, global.size, base.size) : null;
    for (const o of owners) if (link && runId) o.client = await joinOwner(link, runId, o);
    let previous: Map<string, ClientRound> | null = null;
    for (let round = 1; round <= cfg.rounds; round++) {
      const tr = performance.now();
      const sampled = strategy.trains ? sampleClients(owners, cfg.fractionFit, cfg.seed, round) : [];
      const compute = new Map<Owner, number>();
      for (const o of sampled) {
        const t = performance.now();
        const out = await o.client!.step();
        compute.set(o, (performance.now() - t) / 1000);
        if (out.kind !== "trained" || out.round !== round || out.status !== "accepted") {
          throw new Error(`client ${o.data.id} in round ${round}: ${JSON.stringify(out)}`);
        }
      }
      if (link) await untilClosed(link, owners[0].client!, round);
      if (round === cfg.rounds && cfg.finetuneSteps) {
        // The run is done: each client's done-step fine-tunes its final model, as a deployed one does.
        for (const o of owners) {
          const t = performance.now();
          const out = await o.client!.step();
          compute.set(o, (compute.get(o) ?? 0) + (performance.now() - t) / 1000);
          if (out.kind !== "done") {
            throw new Error(`client ${o.data.id} after the last round: ${JSON.stringify(out)}`);
          }
        }
      }
      const records: ClientRound[] = [];
      for (const o of owners) {
        const rec = await evaluateOwner(o, round, sampled.includes(o), previous, global, base, cfg);
        rec.computeSeconds = compute.get(o) ?? 0;
        inp.onEval?.(o.data.id);
        records.push(rec);
      }
      previous = new Map(records.map((r) => [r.clientId, r]));
      const rec: SimRound = {
        round,
        clients: records,
        meanPerplexity: records.reduce((s, r) => s + r.perplexity, 0) / records.length,
        seconds: (performance.now() - tr) / 1000,
      };
      rounds.push(rec);
      inp.onRound?.(rec);
      if (inp.inspect) {
        await inp.inspect(
          round,
          await Promise.all(owners.map((o) => viewOf(o, global, base, cfg))),
        );
      }
    }
    const views = await Promise.all(owners.map((o) => viewOf(o, global, base, cfg)));
    return {
      method: cfg.method,
      maskStats: maskStats(views, global),
      config: cfg,
      backend: inp.backend ?? "unknown",
      clients: views.map((v, i) => ({
        id: v.id,
        tier: owners[i].tier,
        expansion: owners[i].e,
        train: owners[i].data.train.length,
        test: owners[i].data.test.length,
        // Pruning methods train their budget; the others (FedDPA's 2r, HetLoRA's r·e) their whole
        // layout, a self-pruned HetLoRA client the rank it has pruned to (its mask).
        trainableParams: !strategy.trains
          ? 0
          : strategy.prunes
          ? v.plan.budget
          : strategy.selfPrunes
          ? v.mask.reduce((a, m) => a + m, 0)
          : v.plan.total,
        searchSpace: v.plan.total,
      })),
      budget: base.size,
      rounds,
      wallSeconds: (performance.now() - t0) / 1000,
      sliceRevision: SLICE_REVISION,
    };
  } finally {
    if (link && !inp.coordinator) await link.close();
  }
}

/** Creates the run on the coordinator through its admin route; returns its id. */
async function createRun(
  link: CoordinatorLink,
  cfg: SimConfig,
  inp: SimulationInputs,
  clients: number,
  adapterSize: number,
  budget: number,
): Promise<string> {
  const perRound =
    sampleClients(Array.from({ length: clients }, (_, i) => i), cfg.fractionFit, cfg.seed, 1).length;
  const tiers = Object.fromEntries(
    Object.keys(cfg.tiers).map((t) => [t, tierExpansion(cfg, cfg.tiers[t])]),
  );
  const res = await link.fetch(`${link.url}/v1/runs`, {
    method: "POST",
    headers: { authorization: `Bearer ${link.adminToken}`, "content-type": "application/json" },
    body: JSON.stringify({
      baseModel: inp.baseModel ?? "simulation",
      lora: { rank: cfg.rank, alpha: cfg.alpha, targets: cfg.targets },
      method: cfg.method,
      rounds: cfg.rounds,
      clientsPerRound: perRound,
      quorum: perRound,
      roundDeadlineMs: DAY_MS,
      expansionTiers: tiers,
      adapterSize,
      budget,
      ...(strategyFor(cfg.method).aggregation.needsLayout ? { model: modelConfigFor(cfg.method, inp) } : {}),
      maxNorm: 1e9,
      ...(cfg.ownWeight !== undefined ? { ownWeight: cfg.ownWeight } : {}),
      maxClients: clients,
      seed: cfg.seed,
      train: trainSettings(cfg, inp),
    }),
  });
  if (res.status !== 201) throw new Error(`creating the run failed: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()).run.id;
}

function modelConfigFor(method: string, inp: SimulationInputs): Record<string, unknown> {
  if (!inp.modelConfig) throw new RangeError(`${method} needs the base model's config.json (modelConfig)`);
  return inp.modelConfig;
}

/** Joins one owner, with a fetch that meters the HTTP bodies its uploads and slices carry. */
async function joinOwner(link: CoordinatorLink, runId: string, o: Owner): Promise<FederatedClient> {
  const metered: typeof fetch = async (input, init) => {
    const url = String(input instanceof Request ? input.url : input);
    const up = /\/rounds\/(\d+)\/update$/.exec(url);
    if (up && init?.body instanceof Uint8Array) {
      const r = Number(up[1]);
      const prev = o.up.get(r)?.bytes ?? 0;
      o.up.set(r, { bytes: prev + init.body.byteLength, form: maskFormOf(init.body) });
    }
    const res = await link.fetch(input, init);
    if (!url.endsWith("/slice") || !res.ok) return res;
    const body = new Uint8Array(await res.arrayBuffer());
    o.down += body.byteLength;
    return new Response(body, { status: res.status, headers: res.headers });
  };
  const client = await FederatedClient.create({
    serverUrl: link.url,
    runId,
    trainer: o.trainer,
    name: o.data.id,
    tier: o.tier,
    initAdapter: (t) => o.trainer.initAdapter(t),
    fetch: metered,
    pollMs: 5,
  });
  await client.join();
  return client;
}

/** Waits until the coordinator has closed `round` (in process: until it has no work in flight). */
async function untilClosed(link: CoordinatorLink, client: FederatedClient, round: number): Promise<void> {
  await link.settled?.();
  for (let i = 0;; i++) {
    const t = await client.task();
    if (t.round > round || t.status === "done") return;
    if (i >= 2000) throw new Error(`round ${round} did not close (still at round ${t.round}, ${t.status})`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The task of a run that has no coordinator (the frozen base evaluates its clients alone). */
function standaloneTask(cfg: SimConfig, o: Owner, adapterSize: number, budget: number): TaskInfo {
  return {
    run: "frozen-base",
    round: 0,
    status: "done",
    deadline: null,
    method: "local",
    baseModel: "simulation",
    lora: { rank: cfg.rank, alpha: cfg.alpha, targets: cfg.targets },
    tier: o.tier,
    expansion: o.e,
    rank: cfg.rank * o.e,
    budget,
    adapterSize,
    seed: cfg.seed,
    globalRound: 0,
    // The run's settings, so the base is evaluated on the same batches (max length) as every method.
    train: o.train,
    plan: { search: false, randomMask: false },
  };
}

/** Installs the round's personalized slice and evaluates it on the client's own test split. */
async function evaluateOwner(
  o: Owner,
  round: number,
  trained: boolean,
  previous: Map<string, ClientRound> | null,
  global: AdapterLayout,
  base: AdapterLayout,
  cfg: SimConfig,
): Promise<ClientRound> {
  const id = o.data.id;
  const prev = previous?.get(id);
  let ev: { nllSum: number; tokens: number };
  let downloadBytes = 0;
  if (!o.client) {
    // The frozen base never changes: evaluate it once.
    ev = prev ? { nllSum: prev.testNll, tokens: prev.testTokens } : await (async () => {
      const task = standaloneTask(cfg, o, global.size, base.size);
      return o.trainer.evaluate(task, await o.trainer.initAdapter(task), null);
    })();
  } else {
    const task = await o.client.task();
    const before = o.down;
    await o.client.pullSlice(task);
    downloadBytes = o.down - before;
    ev = await o.trainer.evaluate(task, o.client.adapter!, o.client.mask);
  }
  const mix = o.trainer.mixWeight();
  const up = trained ? o.up.get(round) : undefined;
  return {
    clientId: id,
    tier: o.tier,
    expansion: o.e,
    trained,
    meanLoss: trained ? o.losses.get(round) ?? null : null,
    testNll: ev.nllSum,
    testTokens: ev.tokens,
    perplexity: Math.exp(ev.nllSum / Math.max(1, ev.tokens)),
    uploadBytes: up?.bytes ?? 0,
    maskMode: up?.form ?? null,
    downloadBytes,
    ...(mix !== null ? { mix } : {}),
  };
}

/** A client's adapter and mask in its own layout. */
async function viewOf(
  o: Owner,
  global: AdapterLayout,
  base: AdapterLayout,
  cfg: SimConfig,
): Promise<SimClientView> {
  const layout = rankLayout(base, cfg.rank * o.e);
  const plan = makePrunePlan(layout, cfg.rank, cfg.allocation);
  const adapter = o.client?.adapter ??
    await o.trainer.initAdapter(standaloneTask(cfg, o, global.size, base.size));
  const mask = o.client?.mask;
  // A stacking client's own positions are its slot's.
  const slot = o.trainer.slot();
  return {
    id: o.data.id,
    layout,
    plan,
    adapter: extract(global, adapter, layout, undefined, slot),
    mask: mask ? extract(global, mask, layout, undefined, slot) : new Uint8Array(layout.size).fill(1),
    exported: () => o.trainer.personalized(o.client?.adapter, o.client?.mask),
  };
}

/**
 * Share of each final mask in A matrices, its Jaccard overlap with every client's mask (the row of the
 * pairwise matrix, in client order, 1 on the diagonal) and its mean over the others (global layout).
 */
function maskStats(views: SimClientView[], global: AdapterLayout): SimResult["maskStats"] {
  const k = kernels();
  const masks = views.map((v) => embed(v.layout, v.mask, global));
  return views.map((v, i) => {
    let inA = 0;
    for (const e of v.layout.entries) {
      if (e.kind === "A") { for (let j = 0; j < e.size; j++) inA += v.mask[e.offset + j]; }
    }
    const jaccard = masks.map((m, j) => j === i ? 1 : k.jaccard(masks[i], m));
    const others = jaccard.filter((_, j) => j !== i);
    return {
      id: v.id,
      fractionInA: inA / Math.max(1, k.popcount(v.mask)),
      jaccard,
      meanJaccard: others.length ? others.reduce((a, b) => a + b, 0) / others.length : 1,
    };
  });
}
