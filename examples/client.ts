/**
 * `deno task client`: a data owner's process. Joins a run on a coordinator with a JSONL file, trains
 * each round with the run's method, writes its personalized adapter as a PEFT folder after each round,
 * and resumes from its state folder after a crash.
 *
 *   deno task client --server http://127.0.0.1:8787 --run RUN_ID --data my.jsonl --state state/me
 */
import { parseArgs } from "node:util";
import { runDataOwner } from "../runtime/client/data_owner.ts";
import { BUNDLED_MODEL, ProgressBar } from "../runtime/federation/mod.ts";

const FLAGS = {
  server: { type: "string", help: "coordinator URL (required)" },
  run: { type: "string", help: "run id (required)" },
  data: { type: "string", help: "JSONL file: Dolly, Alpaca or chat messages (required)" },
  state: { type: "string", help: "state folder: token, adapter, mask, pending upload (required)" },
  model: { type: "string", default: BUNDLED_MODEL, help: "base model folder" },
  tier: { type: "string", help: "requested tier (default: the coordinator assigns one)" },
  backend: { type: "string", default: "auto", help: "auto | node | wasm | webgpu" },
  adapter: { type: "string", help: "PEFT adapter folder (default: <state>/adapter)" },
  name: { type: "string", help: "client name (default: the data file's name)" },
  "max-train": { type: "string", help: "at most this many training records" },
  "poll-ms": { type: "string", default: "1000", help: "poll interval while waiting (ms)" },
  quiet: { type: "boolean", default: false, help: "no progress bar" },
  help: { type: "boolean", default: false, help: "this text" },
} as const;

function usage(): string {
  const rows = Object.entries(FLAGS).map(([k, f]) =>
    `  --${k.padEnd(10)} ${f.help}${"default" in f && f.type === "string" ? ` (default ${f.default})` : ""}`
  );
  return ["usage: deno task client --server URL --run ID --data FILE.jsonl --state DIR [flags]", ...rows]
    .join("\n");
}

function fail(msg: string): never {
  console.error(`client: ${msg}`);
  Deno.exit(2);
}

if (import.meta.main) {
  let v;
  try {
    v = parseArgs({
      args: Deno.args,
      options: Object.fromEntries(
        Object.entries(FLAGS).map((
          [k, f],
        ) => [k, { type: f.type, ...("default" in f ? { default: f.default } : {}) }]),
      ) as Record<string, { type: "string" | "boolean" }>,
      strict: true,
      allowPositionals: false,
    }).values as Record<string, string | boolean | undefined>;
  } catch (e) {
    fail(`${(e as Error).message} (see --help)`);
  }
  if (v.help) {
    console.log(usage());
    Deno.exit(0);
  }
  for (const k of ["server", "run", "data", "state"]) if (!v[k]) fail(`--${k} is required (see --help)`);
  const backend = String(v.backend);
  if (!["auto", "node", "wasm", "webgpu"].includes(backend)) {
    fail(`--backend must be one of auto, node, wasm, webgpu, got ${JSON.stringify(backend)}`);
  }
  const int = (k: string) => {
    if (v[k] === undefined) return undefined;
    const n = Number(v[k]);
    if (!Number.isInteger(n) || n < 1) fail(`--${k} must be a positive integer, got ${JSON.stringify(v[k])}`);
    return n;
  };
  const ui: { bar: ProgressBar | null } = { bar: null };
  try {
    const res = await runDataOwner({
      server: String(v.server),
      run: String(v.run),
      data: String(v.data),
      stateDir: String(v.state),
      model: String(v.model),
      tier: v.tier as string | undefined,
      backend: backend as "auto",
      adapterDir: v.adapter as string | undefined,
      name: v.name as string | undefined,
      maxTrain: int("max-train"),
      pollMs: int("poll-ms"),
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
