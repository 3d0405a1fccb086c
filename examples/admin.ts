/**
 * `deno task admin <command>`: the coordinator's admin over HTTP with the admin token.
 *
 *   deno task admin create --model models/perfit-tiny --method perfit --rounds 4 --clients-per-round 2
 *   deno task admin create --config run.json          # a create-run body; flags given override its fields
 *   deno task admin list
 *   deno task admin show RUN
 *   deno task admin metrics RUN [--out metrics.json]
 *   deno task admin masks RUN --out masks.safetensors
 *   deno task admin adapter RUN --out DIR            # the global adapter as a PEFT folder (--raw: as served)
 *   deno task admin cancel RUN                       # no more joins, tasks or uploads; reads still answer
 *   deno task admin delete RUN --yes                 # every key of the run, for good
 *
 * A command on one run takes its id as the first argument or as --run RUN.
 * `create` computes the adapter size and budget from the model folder's config.json (it sends the config as
 * `model`, and the coordinator derives the sizes from it): no made-up `adapterSize`. The body is checked
 * here with the coordinator's own validation first, so a bad flag or `train` key is one line and exit 2.
 * The token comes from --admin-token-file, PERFIT_ADMIN_TOKEN or --admin-token (the last shows in `ps`).
 */
import { type CliSpec, defineCli, type FlagTable, isDirectory, UsageError } from "../runtime/cli/flags.ts";
import { ADMIN_TOKEN_FLAGS, adminTokenOf, httpUrl, TARGET_CHOICES } from "../runtime/cli/common.ts";
import { DEPLOYED_METHODS, strategyFor } from "../runtime/federation/strategies.ts";
import { DEFAULT_SIM } from "../runtime/federation/types.ts";
import { parseTrainSettings, TRAIN_SETTINGS, type TrainSettings } from "../runtime/client/train_settings.ts";
import { decodeSafetensors, encodeSafetensors } from "../runtime/io/safetensors.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { ApiError } from "../server/errors.ts";
import { decodeGlobalAdapter, globalPeftAdapter } from "../runtime/client/global_adapter.ts";
import { readConfigFile } from "../runtime/model/config.ts";
import { writePeftAdapter } from "../runtime/export/write.ts";
import { popcountBits } from "../runtime/kernels/bits.ts";

/** The bundled base model (the default of `create --model`). */
const BUNDLED_MODEL = new URL("../models/perfit-tiny", import.meta.url).pathname;

/** Flags every command takes: where the coordinator is, and the admin token. */
const CONNECTION = {
  server: {
    type: "string",
    value: "URL",
    default: "http://127.0.0.1:8787",
    env: "PERFIT_SERVER",
    validate: httpUrl,
    help: "the coordinator (deno task serve)",
  },
  ...ADMIN_TOKEN_FLAGS,
} as const satisfies FlagTable;

const json = { type: "boolean", help: "print the coordinator's JSON answer instead of a summary" } as const;
const out = (what: string) => ({ type: "string", value: "PATH", help: `write ${what} to PATH` }) as const;

const durationCheck = (v: string) =>
  /^\d+(ms|s|m|h)?$/.test(v) && parseDuration(v) > 0
    ? undefined
    : "a duration like 90s, 10m, 1h or 60000 (ms)";

/** "90s" → 90000; "10m", "1h", "250ms", a bare number is milliseconds. */
export function parseDuration(v: string): number {
  const m = /^(\d+)(ms|s|m|h)?$/.exec(v)!;
  return Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "ms"] ?? 1);
}

const tiersCheck = (v: string) =>
  v.split(",").every((p) => /^[A-Za-z0-9_-]{1,32}=\d+$/.test(p.trim()))
    ? undefined
    : "NAME=E,... (e.g. low=1,mid=2,high=4)";

const trainKeys = Object.keys(TRAIN_SETTINGS).join(", ");

const createCli = defineCli({
  name: "admin create",
  usage: "deno task admin create [flags]",
  summary: "Creates a run sized from the model folder's config.json (adapter size and budget).\n" +
    "--config FILE gives a whole create-run body (see /openapi.json); flags that are given override its fields.",
  flags: {
    ...CONNECTION,
    config: { type: "string", value: "FILE", help: "a JSON create-run body to start from" },
    model: {
      type: "string",
      value: "DIR",
      validate: isDirectory,
      defaultText: "models/perfit-tiny (the bundled model)",
      help: "model folder: its config.json sizes the adapter (sent as `model`)",
    },
    "base-model": {
      type: "string",
      value: "NAME",
      defaultText: "the model folder's name",
      help: "the base model's name clients load (e.g. a hub id)",
    },
    method: {
      type: "string",
      value: "M",
      choices: DEPLOYED_METHODS,
      default: "perfit",
      help: "federated method",
    },
    rank: { type: "int", min: 1, max: 1024, default: DEFAULT_SIM.rank, help: "LoRA base rank r" },
    alpha: { type: "number", min: 0, exclusiveMin: true, default: DEFAULT_SIM.alpha, help: "LoRA alpha" },
    targets: {
      type: "list",
      choices: TARGET_CHOICES,
      default: DEFAULT_SIM.targets,
      help: "LoRA target modules",
    },
    rounds: { type: "int", min: 1, default: DEFAULT_SIM.rounds, help: "federated rounds" },
    "clients-per-round": { type: "int", min: 1, default: 2, help: "uploads a round waits for" },
    quorum: {
      type: "int",
      min: 1,
      defaultText: "--clients-per-round",
      help: "uploads that close a round at its deadline",
    },
    "round-deadline": {
      type: "string",
      value: "T",
      default: "10m",
      validate: durationCheck,
      help: "a round closes at this deadline with at least --quorum uploads",
    },
    tiers: {
      type: "string",
      value: "NAME=E,...",
      validate: tiersCheck,
      defaultText: "low=1,mid=2,high=4 for PerFIT, base=1 otherwise",
      help: "expansion tiers (client rank r·E)",
    },
    budget: { type: "int", min: 1, defaultText: "the rank-r adapter size", help: "ones per PerFIT mask" },
    "max-norm": {
      type: "number",
      min: 0,
      exclusiveMin: true,
      defaultText: "10000",
      help: "largest upload L2 norm",
    },
    "max-clients": { type: "int", min: 1, defaultText: "10000", help: "clients that may join" },
    seed: { type: "int", min: 0, default: 0, help: "seed handed to clients" },
    train: {
      type: "string",
      value: "K=V,...|JSON",
      help: `training settings clients read (${trainKeys}); 'localSteps=4,lr=0.01' or a JSON object`,
    },
    "dry-run": { type: "boolean", help: "print the body that would be sent, send nothing" },
    json,
  },
});

const listCli = defineCli({
  name: "admin list",
  usage: "deno task admin list [flags]",
  summary: "Lists the coordinator's runs.",
  flags: { ...CONNECTION, json },
});

const runArg = [{ name: "RUN", help: "the run id (deno task admin list), or --run RUN" }];
/** Every command on one run: the first argument or --run names it, and --server/--admin-token reach it. */
const ON_RUN = {
  ...CONNECTION,
  run: { type: "string", value: "RUN", defaultText: "the first argument", help: "the run id" },
} as const satisfies FlagTable;

const showCli = defineCli({
  name: "admin show",
  usage: "deno task admin show RUN [flags]",
  summary: "Shows a run: its config, status and open round (JSON).",
  positionals: runArg,
  flags: { ...ON_RUN },
});

const metricsCli = defineCli({
  name: "admin metrics",
  usage: "deno task admin metrics RUN [flags]",
  summary: "Downloads a run's metrics: every round with each accepted upload's metrics (JSON).",
  positionals: runArg,
  flags: { ...ON_RUN, out: { ...out("the JSON"), defaultText: "stdout" } },
});

const masksCli = defineCli({
  name: "admin masks",
  usage: "deno task admin masks RUN --out FILE [flags]",
  summary: "Downloads every client's latest mask as one safetensors file (one U32 bitmask per client id).",
  positionals: runArg,
  flags: { ...ON_RUN, out: out("the safetensors file") },
});

const adapterCli = defineCli({
  name: "admin adapter",
  usage: "deno task admin adapter RUN --out DIR [flags]",
  summary: "Downloads the run's global (aggregated) adapter as a PEFT folder (PeftModel.from_pretrained).\n" +
    "Rank r · the largest tier; a position no round aggregated is 0. --raw writes the coordinator's body\n" +
    "instead: values and covered bitmask in the global layout (safetensors, runtime/client/global_adapter.ts).",
  positionals: runArg,
  flags: {
    ...ON_RUN,
    out: {
      type: "string",
      value: "PATH",
      help: "the PEFT folder to write (adapter_config.json, adapter_model.safetensors); with --raw, a file",
    },
    model: {
      type: "string",
      value: "DIR",
      validate: isDirectory,
      defaultText: "the model config the run was created with",
      help: "model folder whose config.json lays the adapter out (for runs created without one)",
    },
    raw: { type: "boolean", help: "write the coordinator's safetensors body as it is, not a PEFT folder" },
  },
});

const cancelCli = defineCli({
  name: "admin cancel",
  usage: "deno task admin cancel RUN [flags]",
  summary: "Cancels an active run: no more joins, tasks or uploads (409 run_cancelled); reads still answer.",
  positionals: runArg,
  flags: { ...ON_RUN, json },
});

const deleteCli = defineCli({
  name: "admin delete",
  usage: "deno task admin delete RUN --yes [flags]",
  summary: "Deletes a run and everything the coordinator keeps of it (an active run is cancelled first).",
  positionals: runArg,
  flags: { ...ON_RUN, yes: { type: "boolean", help: "yes, delete it for good (required)" } },
});

/** Every command. */
export const ADMIN_COMMANDS = {
  create: createCli,
  list: listCli,
  show: showCli,
  metrics: metricsCli,
  masks: masksCli,
  adapter: adapterCli,
  cancel: cancelCli,
  delete: deleteCli,
} as const;
type Command = keyof typeof ADMIN_COMMANDS;

/** `deno task admin --help`. */
export function adminHelp(): string {
  const w = Math.max(...Object.keys(ADMIN_COMMANDS).map((c) => c.length)) + 4;
  return [
    "usage: deno task admin <command> [flags]",
    "",
    "The coordinator's admin over HTTP (--server URL, default http://127.0.0.1:8787, env PERFIT_SERVER) with",
    "the admin token (--admin-token-file PATH, PERFIT_ADMIN_TOKEN, or --admin-token T, which shows in `ps`).",
    "",
    "commands:",
    ...Object.entries(ADMIN_COMMANDS).map(([n, c]) => `  ${n.padEnd(w)}${c.spec.summary!.split("\n")[0]}`),
    "",
    "deno task admin <command> --help lists a command's flags with their defaults.",
  ].join("\n");
}

/** An HTTP failure: the coordinator's error code and message, or why it could not be reached. */
export class AdminError extends Error {
  override name = "AdminError";
}

/** A small client of the admin routes. */
export class AdminClient {
  constructor(readonly server: string, private readonly token: string, private readonly fetchFn = fetch) {}

  async request(method: string, path: string, body?: unknown): Promise<Response> {
    let res: Response;
    try {
      res = await this.fetchFn(`${this.server}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${this.token}`,
          ...(body !== undefined ? { "content-type": "application/json" } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new AdminError(
        `cannot reach the coordinator at ${this.server} (${
          (e as Error).message
        }); is deno task serve running?`,
      );
    }
    if (res.ok) return res;
    const text = await res.text();
    let code = "", message = text.slice(0, 300);
    try {
      const j = JSON.parse(text);
      code = j?.error?.code ?? "";
      message = j?.error?.message ?? message;
    } catch { /* not JSON */ }
    if (res.status === 401) {
      throw new AdminError(
        `${method} ${path}: 401 ${
          code || "unauthorized"
        }: the coordinator refused the admin token (check PERFIT_ADMIN_TOKEN / --admin-token-file)`,
      );
    }
    if (res.status === 404 && code === "not_found" && /^no route /.test(message)) {
      throw new AdminError(`${method} ${path}: this coordinator has no such route (${message})`);
    }
    throw new AdminError(`${method} ${path}: ${res.status} ${code}: ${message}`.replace(/ : /, ": "));
  }

  async json<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    return await (await this.request(method, path, body)).json() as T;
  }

  async bytes(path: string): Promise<Uint8Array> {
    return new Uint8Array(await (await this.request("GET", path)).arrayBuffer());
  }
}

/** `train` from `k=v,k=v` (typed by the train-settings table) or a JSON object; validated. */
export function parseTrainFlag(v: string): Record<string, unknown> {
  let train: Record<string, unknown>;
  if (v.trim().startsWith("{")) {
    try {
      train = JSON.parse(v);
    } catch (e) {
      throw new UsageError(`--train is not valid JSON: ${(e as Error).message}`);
    }
  } else {
    train = {};
    for (const part of v.split(",").map((p) => p.trim()).filter(Boolean)) {
      const eq = part.indexOf("=");
      if (eq < 1) {
        throw new UsageError(`--train must be KEY=VALUE,... or a JSON object, got ${JSON.stringify(part)}`);
      }
      const key = part.slice(0, eq), raw = part.slice(eq + 1);
      const spec = (TRAIN_SETTINGS as Record<string, { type: string }>)[key];
      train[key] = spec?.type === "enum" || (spec === undefined && !/^[-+0-9.e]+$/i.test(raw))
        ? raw
        : Number(raw);
    }
  }
  try {
    parseTrainSettings(train);
  } catch (e) {
    throw new UsageError(`--train: ${(e as Error).message}`);
  }
  return train;
}

/** The create-run body from flags (and --config), checked with the coordinator's validation. */
export async function createBody(
  f: ReturnType<typeof createCli.tryParse>["values"],
  sources: ReturnType<typeof createCli.tryParse>["sources"],
): Promise<Record<string, unknown>> {
  let body: Record<string, unknown> = {};
  if (f.config !== undefined) {
    try {
      body = JSON.parse(await Deno.readTextFile(f.config));
    } catch (e) {
      throw new UsageError(`--config ${JSON.stringify(f.config)}: ${(e as Error).message}`);
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      throw new UsageError(`--config ${JSON.stringify(f.config)} must hold a JSON object`);
    }
  }
  const given = (k: keyof typeof sources) => sources[k] !== "default";
  const set = (k: string, v: unknown, flag: keyof typeof sources) => {
    if (given(flag) || body[k] === undefined) body[k] = v;
  };
  if (body.adapterSize !== undefined && body.model === undefined && !given("model")) {
    throw new UsageError(
      "adapterSize is computed from the model: drop it from --config and give --model DIR (or a `model` config)",
    );
  }
  if (given("model") || body.model === undefined) {
    const dir = f.model ?? BUNDLED_MODEL;
    let cfg: unknown;
    try {
      cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    } catch (e) {
      throw new UsageError(
        `--model ${JSON.stringify(dir)}: cannot read config.json: ${(e as Error).message}`,
      );
    }
    body.model = cfg;
    delete body.adapterSize;
    set("baseModel", f["base-model"] ?? dir.replace(/\/+$/, "").split("/").pop(), "base-model");
  } else if (f["base-model"] !== undefined) body.baseModel = f["base-model"];
  const lora = (body.lora ?? {}) as Record<string, unknown>;
  if (given("rank") || lora.rank === undefined) lora.rank = f.rank;
  if (given("alpha") || lora.alpha === undefined) lora.alpha = f.alpha;
  if (given("targets") || lora.targets === undefined) lora.targets = f.targets;
  body.lora = lora;
  set("method", f.method, "method");
  set("rounds", f.rounds, "rounds");
  set("clientsPerRound", f["clients-per-round"], "clients-per-round");
  if (f.quorum !== undefined) body.quorum = f.quorum;
  set("roundDeadlineMs", parseDuration(f["round-deadline"]), "round-deadline");
  if (f.tiers !== undefined) {
    body.expansionTiers = Object.fromEntries(
      f.tiers.split(",").map((p) => p.trim().split("=")).map(([n, e]) => [n, Number(e)]),
    );
  } else if (body.expansionTiers === undefined) {
    const method = String(body.method) as typeof DEPLOYED_METHODS[number];
    const strategy = DEPLOYED_METHODS.includes(method) ? strategyFor(method) : null;
    body.expansionTiers = strategy?.expands ? { ...DEFAULT_SIM.tiers } : { base: strategy?.dual ? 2 : 1 };
  }
  if (f.budget !== undefined) body.budget = f.budget;
  if (f["max-norm"] !== undefined) body.maxNorm = f["max-norm"];
  if (f["max-clients"] !== undefined) body.maxClients = f["max-clients"];
  set("seed", f.seed, "seed");
  if (f.train !== undefined) body.train = parseTrainFlag(f.train);
  // The coordinator's own checks, here first: the same messages, before anything is sent.
  try {
    parseRunConfig(body);
  } catch (e) {
    if (e instanceof ApiError) throw new UsageError(e.message);
    throw e;
  }
  return body;
}

interface RunRecordLike {
  id: string;
  status: string;
  round: number;
  createdAt: number;
  config: {
    method: string;
    rounds: number;
    clientsPerRound: number;
    adapterSize: number;
    budget: number;
    baseModel: string;
    train?: Partial<TrainSettings>;
  };
}

const summary = (r: RunRecordLike) =>
  `${r.id}  ${r.config.method}  ${r.status}  round ${r.round}/${r.config.rounds}  ${r.config.clientsPerRound} clients/round  ` +
  `adapter ${r.config.adapterSize}  budget ${r.config.budget}  ${r.config.baseModel}  ${
    new Date(r.createdAt).toISOString()
  }`;

function connect(
  f: { server: string; "admin-token"?: string; "admin-token-file"?: string },
  sources: { "admin-token": "flag" | "env" | "default"; "admin-token-file": "flag" | "env" | "default" },
): AdminClient {
  const token = adminTokenOf(f, sources);
  if (!token) {
    throw new UsageError(
      "no admin token: --admin-token-file PATH, PERFIT_ADMIN_TOKEN or --admin-token T (serve printed it once at its first start)",
    );
  }
  return new AdminClient(f.server.replace(/\/+$/, ""), token);
}

async function write(path: string, data: Uint8Array | string): Promise<void> {
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
  if (dir) await Deno.mkdir(dir, { recursive: true });
  if (typeof data === "string") await Deno.writeTextFile(path, data);
  else await Deno.writeFile(path, data);
}

const needOut = (o: string | undefined, cmd: string): string => {
  if (!o) throw new UsageError(`${cmd} needs --out PATH`);
  return o;
};

/** The run id of a one-run command: its argument or --run (the same one if both). */
const needRun = (p: string[], flag: string | undefined, cmd: string): string => {
  if (p[0] !== undefined && flag !== undefined && p[0] !== flag) {
    throw new UsageError(`${cmd}: two run ids (${p[0]} and --run ${flag}); give one`);
  }
  const run = p[0] ?? flag;
  if (!run) throw new UsageError(`${cmd} needs the run id: deno task admin ${cmd} RUN (or --run RUN)`);
  return encodeURIComponent(run);
};

/** Runs one admin command; returns the exit code. */
export async function adminMain(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === "--help" || cmd === "-h" || cmd === "help") {
    console.log(adminHelp());
    return cmd === undefined ? 2 : 0;
  }
  const cli = (ADMIN_COMMANDS as Record<string, (typeof ADMIN_COMMANDS)[Command]>)[cmd];
  if (!cli) {
    throw new UsageError(
      `unknown command ${JSON.stringify(cmd)}; commands: ${Object.keys(ADMIN_COMMANDS).join(", ")} (--help)`,
    );
  }
  const parsed = cli.tryParse(rest);
  if (parsed.help) {
    console.log(cli.help());
    return 0;
  }
  const { positionals } = parsed;
  switch (cmd as Command) {
    case "create": {
      const { values: f, sources } = parsed as ReturnType<typeof createCli.tryParse>;
      const body = await createBody(f, sources);
      if (f["dry-run"]) {
        const cfg = parseRunConfig(body);
        console.log(JSON.stringify({ body, adapterSize: cfg.adapterSize, budget: cfg.budget }, null, 1));
        return 0;
      }
      const admin = connect(f, sources);
      const res = await admin.json<{ run: RunRecordLike }>("POST", "/v1/runs", body);
      console.log(f.json ? JSON.stringify(res, null, 1) : `created ${summary(res.run)}`);
      return 0;
    }
    case "list": {
      const { values: f, sources } = parsed as ReturnType<typeof listCli.tryParse>;
      const res = await connect(f, sources).json<{ runs: RunRecordLike[] }>("GET", "/v1/runs");
      if (f.json) console.log(JSON.stringify(res, null, 1));
      else if (res.runs.length === 0) console.log("no runs yet: deno task admin create --help");
      else for (const r of res.runs) console.log(summary(r));
      return 0;
    }
    case "show": {
      const { values: f, sources } = parsed as ReturnType<typeof showCli.tryParse>;
      const run = needRun(positionals, f.run, "show");
      console.log(JSON.stringify(await connect(f, sources).json("GET", `/v1/runs/${run}`), null, 1));
      return 0;
    }
    case "metrics": {
      const { values: f, sources } = parsed as ReturnType<typeof metricsCli.tryParse>;
      const run = needRun(positionals, f.run, "metrics");
      const text = JSON.stringify(await connect(f, sources).json("GET", `/v1/runs/${run}/metrics`), null, 1);
      if (f.out) {
        await write(f.out, text + "\n");
        console.error(`wrote ${f.out}`);
      } else console.log(text);
      return 0;
    }
    case "masks": {
      const { values: f, sources } = parsed as ReturnType<typeof masksCli.tryParse>;
      const run = needRun(positionals, f.run, "masks");
      const path = needOut(f.out, "masks");
      const admin = connect(f, sources);
      // The route pages by 256 clients: fetch every page, write one file.
      const tensors: Parameters<typeof encodeSafetensors>[0] = {};
      let metadata: Record<string, string> = {};
      const rounds: Record<string, number> = {};
      for (let offset = 0;; offset += 256) {
        const page = decodeSafetensors(await admin.bytes(`/v1/runs/${run}/masks?offset=${offset}&limit=256`));
        metadata = page.metadata;
        Object.assign(rounds, JSON.parse(metadata.rounds ?? "{}"));
        for (const [n, t] of page.tensors) tensors[n] = { dtype: t.dtype, shape: t.shape, data: t.bytes };
        if (page.tensors.size < 256) break;
      }
      await write(path, encodeSafetensors(tensors, { ...metadata, rounds: JSON.stringify(rounds) }));
      console.error(`wrote ${path} (${Object.keys(tensors).length} masks)`);
      return 0;
    }
    case "adapter": {
      const { values: f, sources } = parsed as ReturnType<typeof adapterCli.tryParse>;
      const run = needRun(positionals, f.run, "adapter");
      const path = needOut(f.out, "adapter");
      const admin = connect(f, sources);
      const model = f.model === undefined ? undefined : await readConfigFile(f.model);
      const bytes = await admin.bytes(`/v1/runs/${run}/adapter`);
      if (f.raw) {
        await write(path, bytes);
        console.error(`wrote ${path} (${bytes.length} bytes)`);
        return 0;
      }
      const g = decodeGlobalAdapter(bytes);
      if (!g.model && !model) {
        throw new UsageError(
          `run ${g.run} was created without a model config: give --model DIR (the model it was sized for), or --raw`,
        );
      }
      await writePeftAdapter(path, {
        ...globalPeftAdapter(g, model),
        baseModel: f.model ?? g.baseModel,
        metadata: { run: g.run, round: String(g.round), method: g.method },
      });
      const covered = popcountBits(g.covered);
      console.error(
        `wrote ${path}: the global ${g.method} adapter of ${g.run} after round ${g.round} (${g.status}), ` +
          `rank ${g.rank}, ${covered} of ${g.adapterSize} positions aggregated` +
          (g.round === 0 ? " (no round aggregated yet: all zeros)" : ""),
      );
      return 0;
    }
    case "cancel": {
      const { values: f, sources } = parsed as ReturnType<typeof cancelCli.tryParse>;
      const run = needRun(positionals, f.run, "cancel");
      const res = await connect(f, sources).json<{ run: RunRecordLike }>("POST", `/v1/runs/${run}/cancel`);
      console.log(f.json ? JSON.stringify(res, null, 1) : `cancelled ${summary(res.run)}`);
      return 0;
    }
    case "delete": {
      const { values: f, sources } = parsed as ReturnType<typeof deleteCli.tryParse>;
      const run = needRun(positionals, f.run, "delete");
      if (!f.yes) {
        throw new UsageError(
          `delete removes run ${decodeURIComponent(run)} and all its data for good: add --yes`,
        );
      }
      await connect(f, sources).request("DELETE", `/v1/runs/${run}`);
      console.log(`deleted ${decodeURIComponent(run)}`);
      return 0;
    }
  }
}

/** The spec of one command (tests list their flags). */
export function commandSpec(cmd: Command): CliSpec<FlagTable> {
  return ADMIN_COMMANDS[cmd].spec as CliSpec<FlagTable>;
}

if (import.meta.main) {
  try {
    Deno.exit(await adminMain(Deno.args));
  } catch (e) {
    const msg = (e instanceof Error ? e.message : String(e)).replace(/\s*\n\s*/g, " ");
    console.error(`admin: ${msg}`);
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
}
