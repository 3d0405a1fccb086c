/**
 * `deno task demo`: federated PerFIT in process with the bundled base model and the bundled
 * lexicon-instruct data, 8 clients (one per category). Prints, per round, each client's
 * personalized perplexity on its own test split; a progress bar runs on stderr.
 */
import { DEFAULT_SIM, formatRound, runFederated, type SimConfig } from "../runtime/federation/mod.ts";

const cfg: SimConfig = {
  ...DEFAULT_SIM,
  method: "perfit",
  rounds: 4,
  localSteps: 15,
  lr: 5e-3,
  clientTiers: ["high", "mid", "low"],
};

console.log(
  `PerFIT demo: 8 clients (one per lexicon-instruct category), ${cfg.rounds} rounds, ${cfg.localSteps} local steps,`,
);
console.log(
  `LoRA r=${cfg.rank} on ${cfg.targets.join(",")}, tiers ${cfg.clientTiers.join("/")} -> e=${
    cfg.clientTiers.map((t) => cfg.tiers[t]).join("/")
  }\n`,
);
const result = await runFederated(cfg, {
  partition: { kind: "category", clientsPerCategory: 1 },
  batchSize: 8,
  maxLen: 96,
  maxTrain: 400,
  maxTest: 32,
  progress: true,
  onRound: (r) => console.log(formatRound(r) + "\n"),
});
const first = result.rounds[0].meanPerplexity;
const last = result.rounds[result.rounds.length - 1].meanPerplexity;
console.log(
  `done in ${result.wallSeconds.toFixed(1)} s on ${result.backend}: mean personalized perplexity ${
    first.toFixed(3)
  } -> ${last.toFixed(3)}`,
);
console.log(
  `budget B = ${result.budget} trainable parameters per client (the rank-${cfg.rank} adapter size)`,
);
