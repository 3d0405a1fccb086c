/**
 * A data owner's process (`deno task client`): join a run with a JSONL file, train every round the
 * coordinator asks for with the run's method, write the personalized adapter as a PEFT folder after
 * each round, and resume from the state folder after a crash. The CLI is a thin shell over this.
 */
import { loadJsonl } from "../data/jsonl.ts";
import { splitTrainTest } from "../federation/partition.ts";
import { loadModel } from "../model/engine.ts";
import { writePeftAdapter } from "../export/write.ts";
import { engineTrainer } from "./engine_trainer.ts";
import { type JoinInfo, pickTier, probeStepSeconds } from "./tier_probe.ts";
import { FederatedClient, type StepOutcome } from "./federated_client.ts";
import { FileStorage } from "./storage.ts";

/** What a data owner's process needs. */
export interface DataOwnerOptions {
  /** Coordinator base URL, e.g. http://127.0.0.1:8787. */
  server: string;
  run: string;
  /** JSONL file: Dolly, Alpaca or chat `messages` records (detected per file). */
  data: string;
  /** Base model folder (config.json, model.safetensors, tokenizer.json). */
  model: string;
  /**
   * Requested tier (default: the coordinator assigns one); "auto": the largest tier whose round fits
   * half the round deadline on this device, from a one-step probe at each tier's rank.
   */
  tier?: string;
  /** The run's join key or an invite, where the run needs one. */
  enrollment?: { key?: string; invite?: string };
  backend?: "auto" | "node" | "wasm" | "webgpu";
  /** Activation checkpointing in the train step: about half the step's memory, one more forward pass. */
  checkpoint?: boolean;
  /** Where the client keeps its token, adapter, mask and pending upload (resumes from it). */
  stateDir: string;
  /** Where the PEFT adapter is written after each round (default `<stateDir>/adapter`). */
  adapterDir?: string;
  name?: string;
  /** Held-out share of the file for the client's own evaluation (default 0.1). */
  testFraction?: number;
  maxTrain?: number;
  /** One line per event (joined, round trained, waiting, retrying, adapter written, done). */
  log?: (line: string) => void;
  /** Per-step progress (e.g. a progress bar). */
  onProgress?: (round: number, step: number, steps: number) => void;
  /** Poll interval while waiting for other clients (default 1000 ms). */
  pollMs?: number;
}

/** What the run left behind for this owner. */
export interface DataOwnerResult {
  clientId: string;
  /** Rounds this process trained (not counting rounds trained before a resume). */
  trained: number;
  adapterDir: string;
}

/** Runs one data owner until the run is done. */
export async function runDataOwner(o: DataOwnerOptions): Promise<DataOwnerResult> {
  const log = o.log ?? (() => {});
  const model = await loadModel(o.model);
  if (!model.tokenizer) throw new Error(`model at ${o.model} has no tokenizer`);
  const examples = await loadJsonl(o.data);
  if (examples.length < 2) throw new Error(`${o.data} holds ${examples.length} record(s): need at least 2`);
  const name = o.name ?? o.data.replace(/^.*\//, "").replace(/\.jsonl$/, "");
  const split = splitTrainTest(examples, name, { testFraction: o.testFraction ?? 0.1, maxTrain: o.maxTrain });
  const adapterDir = o.adapterDir ?? `${o.stateDir}/adapter`;
  let lastMetrics: Record<string, number> = {};
  const trainer = engineTrainer({
    model,
    tokenizer: model.tokenizer,
    data: { id: name, ...split },
    backend: o.backend ?? "auto",
    engine: { checkpoint: o.checkpoint ?? false },
    // Tokens and seconds of local training go with the upload: the coordinator's /metrics shows them.
    reportThroughput: true,
    onProgress: (p) => p.phase === "train" && o.onProgress?.(p.round, p.step, p.steps),
    onMetrics: (_r, m) => (lastMetrics = m),
  });
  let roundStart = performance.now();
  // `client` is assigned before any slice can arrive (slices come from `step`).
  // deno-lint-ignore prefer-const
  let client: FederatedClient;
  const writeAdapter = async (round: number, personalized: boolean) => {
    const mine = trainer.personalized(client.adapter, client.mask);
    if (!mine) return;
    await writePeftAdapter(adapterDir, {
      ...mine,
      baseModel: o.model,
      metadata: { run: o.run, round: String(round) },
    });
    if (personalized) log(`round ${round}: personalized adapter written to ${adapterDir}`);
  };
  let tier = o.tier;
  if (tier === "auto") {
    const res = await fetch(`${o.server.replace(/\/$/, "")}/v1/runs/${o.run}/join`);
    if (!res.ok) throw new Error(`cannot read run ${o.run} to pick a tier: HTTP ${res.status}`);
    const info = (await res.json()) as JoinInfo;
    const times = await probeStepSeconds(model, info, split.train, {
      backend: o.backend,
      batchSize: info.batchSize,
      maxLen: info.maxLen,
    });
    const choice = pickTier(info.tiers, times, info.localSteps, info.roundDeadlineMs);
    log(`tier auto: ${choice.tier} (x${choice.expansion}): ${choice.why}`);
    tier = choice.tier;
  }
  client = await FederatedClient.create({
    serverUrl: o.server.replace(/\/$/, ""),
    runId: o.run,
    trainer,
    storage: new FileStorage(o.stateDir),
    name,
    tier,
    enrollment: o.enrollment,
    initAdapter: (t) => trainer.initAdapter(t),
    pollMs: o.pollMs ?? 1000,
    onRetry: (what, attempt, waitMs, e) =>
      log(
        `waiting for the coordinator: ${what} failed (${(e as Error)?.message ?? e}); retry ${attempt} in ${
          (waitMs / 1000).toFixed(1)
        } s`,
      ),
    onSlice: (round) => (round > 0 && trainer.personalized() ? writeAdapter(round, true) : undefined),
  });
  const resumed = client.clientId !== null;
  const joined = await client.join();
  log(
    `${
      resumed ? "resumed" : "joined"
    } run ${o.run} as ${joined.clientId} (tier ${joined.tier}, ×${joined.expansion}); ` +
      `${split.train.length} train / ${split.test.length} test records from ${o.data}`,
  );
  let trained = 0;
  let waitingFor = -1;
  let pending: Promise<void> = Promise.resolve();
  await client.run({
    onStep: (s: StepOutcome) => {
      if (s.kind === "trained" || s.kind === "resumed") {
        if (s.kind === "trained") trained++;
        // Until the round's aggregate arrives (never, for local-only runs), the adapter just trained.
        pending = writeAdapter(s.round, false);
        const m = Object.entries(lastMetrics).map(([k, v]) =>
          `${k} ${Number.isInteger(v) ? v : v.toFixed(3)}`
        ).join(", ");
        log(
          `round ${s.round}: ${s.kind}, upload ${s.status}${m ? `; ${m}` : ""} (${
            ((performance.now() - roundStart) / 1000).toFixed(1)
          } s)`,
        );
        waitingFor = -1;
      } else if (s.kind === "waiting" && waitingFor !== s.round) {
        waitingFor = s.round;
        log(`round ${s.round}: waiting for the other clients`);
        roundStart = performance.now();
      } else if (s.kind === "done") {
        // A finished run's task names the round after its last.
        log(`run ${o.run} finished after round ${s.round - 1}`);
        // The done-step may have fine-tuned the final model (`finetuneSteps`): that is the one to keep.
        pending = pending.then(() => writeAdapter(s.round - 1, true));
      }
    },
  });
  await pending;
  return { clientId: joined.clientId, trained, adapterDir };
}
