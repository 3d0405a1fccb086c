/**
 * `deno task demo`: federated PerFIT in process with the bundled base model and the bundled
 * lexicon-instruct data, 8 clients (one per category). Prints, per round, each client's
 * personalized perplexity on its own test split; a progress bar runs on stderr.
 * `deno task demo --help` lists the flags (`--server URL` runs it against a coordinator).
 */
import { defineCli } from "../runtime/cli/flags.ts";
import { BACKENDS, COORDINATOR_FLAGS, coordinatorOf } from "../runtime/cli/common.ts";
import { DEFAULT_SIM, formatRound, runFederated, type SimConfig } from "../runtime/federation/mod.ts";

/** The demo CLI's flags. */
export const demoCli = defineCli({
  name: "demo",
  summary: "PerFIT on the bundled model and data: 8 clients (one per category), tiers high/mid/low.",
  flags: {
    rounds: { type: "int", min: 1, default: 4, help: "federated rounds" },
    "local-steps": { type: "int", min: 1, default: 15, help: "optimizer steps per client per round" },
    backend: { type: "string", choices: BACKENDS, default: "auto", help: "onnxruntime backend" },
    ...COORDINATOR_FLAGS,
  },
});

async function main(args: string[]): Promise<void> {
  const { values: f, sources } = demoCli.parse(args);
  const server = coordinatorOf(f, sources);
  const cfg: SimConfig = {
    ...DEFAULT_SIM,
    method: "perfit",
    rounds: f.rounds,
    localSteps: f["local-steps"],
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
    backend: f.backend,
    batchSize: 8,
    maxLen: 96,
    maxTrain: 400,
    maxTest: 32,
    progress: true,
    onRound: (r) => console.log(formatRound(r) + "\n"),
    ...(server ? { server } : {}),
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
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    demoCli.fail(e);
  }
}
