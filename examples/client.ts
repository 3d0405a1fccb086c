/**
 * `deno task client`: a data owner's process. Joins a run on a coordinator with a JSONL file, trains
 * each round with the run's method, writes its personalized adapter as a PEFT folder after each round,
 * and resumes from its state folder after a crash.
 *
 *   deno task client --server http://127.0.0.1:8787 --run RUN_ID --data my.jsonl --state state/me
 */
import { defineCli, UsageError } from "../runtime/cli/flags.ts";
import { BACKENDS, httpUrl } from "../runtime/cli/common.ts";
import { runDataOwner } from "../runtime/client/data_owner.ts";
import { BUNDLED_MODEL, ProgressBar } from "../runtime/federation/mod.ts";

/** The client CLI's flags (also what --help prints). */
export const clientCli = defineCli({
  name: "client",
  summary:
    "A data owner's process: joins a run, trains every round the coordinator asks for with the run's method, " +
    "writes its personalized adapter (PEFT) after each round, and resumes from --state after a crash.",
  flags: {
    server: {
      type: "string",
      value: "URL",
      env: "PERFIT_SERVER",
      validate: httpUrl,
      defaultText: "required",
      help: "coordinator URL",
    },
    run: { type: "string", value: "ID", defaultText: "required", help: "run id" },
    data: {
      type: "string",
      value: "FILE",
      defaultText: "required",
      help: "JSONL file: Dolly, Alpaca or chat `messages` records",
    },
    state: {
      type: "string",
      value: "DIR",
      defaultText: "required",
      help: "state folder: token, adapter, mask, pending upload",
    },
    model: {
      type: "string",
      value: "DIR",
      default: BUNDLED_MODEL,
      defaultText: "models/perfit-tiny",
      help: "base model folder",
    },
    tier: {
      type: "string",
      value: "T",
      defaultText: "assigned by the coordinator",
      help:
        "requested tier, or auto: the largest whose round fits half the deadline on this device (a probe)",
    },
    key: {
      type: "string",
      value: "K",
      secret: true,
      env: "PERFIT_JOIN_KEY",
      defaultText: "none",
      help: 'the run\'s join key, for runs with enrollment "key" (prefer the env var: flags show in `ps`)',
    },
    invite: {
      type: "string",
      value: "I",
      secret: true,
      env: "PERFIT_INVITE",
      defaultText: "none",
      help: 'a single-use invite, for runs with enrollment "invite"',
    },
    backend: { type: "string", choices: BACKENDS, default: "auto", help: "onnxruntime backend" },
    checkpoint: {
      type: "boolean",
      help: "activation checkpointing: about half the memory of a train step, for one more forward pass",
    },
    adapter: {
      type: "string",
      value: "DIR",
      defaultText: "<state>/adapter",
      help: "where the PEFT adapter is written",
    },
    name: {
      type: "string",
      value: "S",
      defaultText: "the data file's name",
      help: "client name (seeds its test split)",
    },
    "max-train": { type: "int", min: 1, defaultText: "all", help: "at most this many training records" },
    "poll-ms": {
      type: "int",
      min: 1,
      default: 1000,
      help: "poll interval while waiting for other clients (ms)",
    },
    quiet: { type: "boolean", help: "no progress bar" },
  },
});

if (import.meta.main) {
  const { values: v } = clientCli.parse();
  for (const k of ["server", "run", "data", "state"] as const) {
    if (!v[k]) {
      console.error(`client: ${new UsageError(`--${k} is required (see --help)`).message}`);
      Deno.exit(2);
    }
  }
  const ui: { bar: ProgressBar | null } = { bar: null };
  try {
    const res = await runDataOwner({
      server: v.server!,
      run: v.run!,
      data: v.data!,
      stateDir: v.state!,
      model: v.model,
      tier: v.tier,
      enrollment: v.key || v.invite ? { key: v.key || undefined, invite: v.invite || undefined } : undefined,
      backend: v.backend,
      checkpoint: v.checkpoint,
      adapterDir: v.adapter,
      name: v.name,
      maxTrain: v["max-train"],
      pollMs: v["poll-ms"],
      log: (line) => {
        ui.bar?.clear();
        console.log(line);
      },
      onProgress: (round, step, steps) => {
        if (v.quiet) return;
        if (step === 1 || !ui.bar) ui.bar = new ProgressBar(steps);
        ui.bar.tick(`round ${round} step ${step}/${steps}`);
      },
    });
    ui.bar?.clear();
    console.log(`done: ${res.trained} round(s) trained here; adapter in ${res.adapterDir}`);
  } catch (e) {
    ui.bar?.clear();
    console.error(`client: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
