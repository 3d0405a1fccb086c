/**
 * Peak resident memory of a data owner's process on the SmolLM2-135M shape: load the model folder
 * (bench/model_135m_folder.ts) the way `deno task client` does (`loadModel`), create the engine
 * (onnxruntime-node, activation checkpointing, as the federation bench's clients run) and take a few
 * small train steps. Each sample is a child process of its own, so each peak (VmHWM) is its own.
 *
 * With `--against=DIR` (another checkout of this repository, e.g. an older commit) the samples
 * alternate between that checkout's code (A) and this one's (B): A, B, A, B, ... (`--pairs` pairs), so
 * both see the same machine. The child imports the engine from the checkout it measures; only this
 * file's child mode and its config are shared, and it calls nothing but `loadModel`, `Engine.create`
 * and `trainStep`, which both sides have.
 *
 *   deno task bench client_memory [--against=DIR] [--pairs=3] [--batch=1] [--seq=64] [--steps=2]
 *     [--backend=node] [--checkpoint=true] [--weight-mode=inputs|constants] [--model-dir=DIR]
 */
import { defineCli } from "../runtime/cli/flags.ts";
import { fmtSpread, loadAverages, machineLine, procStatusMb } from "./machine.ts";
import { ensureModel135mFolder } from "./model_135m_folder.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

export const clientMemoryCli = defineCli({
  name: "bench client_memory",
  usage: "deno task bench client_memory [flags]",
  summary: "Peak RSS of a 135M data-owner process (load, engine, train steps), one child process per sample.",
  flags: {
    against: { type: "string", help: "another checkout to alternate with (A); this checkout is B" },
    pairs: {
      type: "int",
      min: 1,
      default: 3,
      help: "samples per side (alternating when --against is given)",
    },
    batch: { type: "int", min: 1, default: 1, help: "rows of the train batch" },
    seq: { type: "int", min: 2, default: 64, help: "tokens per row" },
    steps: { type: "int", min: 1, default: 2, help: "train steps per sample" },
    eval: {
      type: "boolean",
      default: true,
      help: "then evaluate the batch (a second session, as a client does after its local round)",
    },
    backend: { type: "string", choices: ["node", "wasm"], default: "node", help: "onnxruntime backend" },
    checkpoint: {
      type: "boolean",
      default: true,
      help: "activation checkpointing (as the 135M clients run)",
    },
    "weight-mode": {
      type: "string",
      choices: ["inputs", "constants"],
      help: "base weights as graph inputs or constants (default: the engine's for the backend)",
    },
    "model-dir": { type: "string", help: "model folder (default: the cached random 135M folder)" },
    child: { type: "string", help: "internal: measure once with the code of this checkout and print JSON" },
  },
});

type Values = ReturnType<typeof clientMemoryCli.parse>["values"];

/** Resident memory at a point of the child's run (MiB). */
interface Mark {
  rss: number;
  hwm: number;
}

/** One child's figures. */
export interface Sample {
  root: string;
  loaded: Mark;
  engine: Mark;
  stepped: Mark;
  /** After the evaluation (its session built), or null without `--eval`. */
  evaluated: Mark | null;
  loss: number;
  createS: number;
  stepS: number[];
}

const mark = (): Mark => ({ rss: procStatusMb("self", "VmRSS"), hwm: procStatusMb("self", "VmHWM") });

/** The sample's last mark: its peak is the process's. */
const last = (s: Sample): Mark => s.evaluated ?? s.stepped;

/** The child: one measured run with the engine of checkout `root`. */
async function measure(root: string, v: Values, modelDir: string): Promise<Sample> {
  const { loadModel, Engine } = await import(`${root}/runtime/model/engine.ts`);
  const { initAdapter } = await import(`${root}/runtime/model/lora.ts`);
  const { benchBatch } = await import(`${root}/bench/model_135m.ts`);
  const model = await loadModel(modelDir, { tokenizer: false });
  const loaded = mark();
  const t0 = performance.now();
  const engine = await Engine.create(model, { rank: 8, alpha: 16, targets: ["q", "v"] }, {
    backend: v.backend,
    checkpoint: v.checkpoint,
    weightMode: v["weight-mode"],
  });
  const createS = (performance.now() - t0) / 1000;
  const engineMark = mark();
  const adapter = initAdapter(engine.layout, 0);
  const mask = new Uint8Array(adapter.length).fill(1);
  const batch = benchBatch(model.config.vocabSize, v.batch, v.seq);
  const stepS: number[] = [];
  let loss = NaN;
  for (let i = 0; i < v.steps; i++) {
    const t = performance.now();
    loss = (await engine.trainStep(batch, adapter, mask)).loss;
    stepS.push((performance.now() - t) / 1000);
  }
  const stepped = mark();
  if (v.eval) await engine.evalNll(batch, adapter, mask);
  return {
    root,
    loaded,
    engine: engineMark,
    stepped,
    evaluated: v.eval ? mark() : null,
    loss,
    createS,
    stepS,
  };
}

async function sample(root: string, v: Values, modelDir: string): Promise<Sample> {
  const args = [
    "run",
    "-A",
    "--unstable-kv",
    `--config=${ROOT}/deno.json`,
    new URL(import.meta.url).pathname,
    `--child=${root}`,
    `--model-dir=${modelDir}`,
    `--batch=${v.batch}`,
    `--seq=${v.seq}`,
    `--steps=${v.steps}`,
    `--backend=${v.backend}`,
    `--checkpoint=${v.checkpoint}`,
    `--eval=${v.eval}`,
    ...(v["weight-mode"] ? [`--weight-mode=${v["weight-mode"]}`] : []),
  ];
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join("\n");
    throw new Error(`client_memory child (${root}) failed:\n${err}`);
  }
  return JSON.parse(text.split("\n").at(-1)!);
}

/** Markdown section; with `--against`, the A and B samples side by side. */
export async function run(argv = Deno.args.filter((a) => a.startsWith("--"))): Promise<string> {
  const { values: v } = clientMemoryCli.parse(argv);
  const modelDir = v["model-dir"] ?? await ensureModel135mFolder();
  const sides = v.against ? [{ label: "A", root: v.against }, { label: "B", root: ROOT }] : [
    { label: "B", root: ROOT },
  ];
  const before = loadAverages();
  const samples: { label: string; s: Sample }[] = [];
  for (let p = 0; p < v.pairs; p++) {
    for (const side of sides) {
      const s = await sample(side.root, v, modelDir);
      samples.push({ label: side.label, s });
      console.error(
        `client_memory: ${side.label} ${p + 1}/${v.pairs}: peak ${last(s).hwm.toFixed(0)} MiB ` +
          `(after load ${s.loaded.rss.toFixed(0)}, engine ${s.engine.rss.toFixed(0)}), loss ${s.loss}`,
      );
    }
  }
  const f0 = (x: number) => x.toFixed(0);
  const rows = samples.map(({ label, s }, i) =>
    `| ${i + 1} | ${label} | ${f0(s.loaded.hwm)} | ${f0(s.loaded.rss)} | ${f0(s.engine.hwm)} | ${
      f0(s.engine.rss)
    } | ${f0(s.stepped.hwm)} | ${f0(s.stepped.rss)} | ${s.evaluated ? f0(s.evaluated.hwm) : "–"} | ${
      s.evaluated ? f0(s.evaluated.rss) : "–"
    } | ${s.createS.toFixed(1)} | ${s.stepS.map((x) => x.toFixed(2)).join(", ")} | ${s.loss} |`
  );
  const summary = sides.map(({ label, root }) => {
    const mine = samples.filter((x) => x.label === label).map((x) => x.s);
    return `- ${label} (\`${root}\`): process peak ${
      fmtSpread(mine.map((s) => last(s).hwm), 0)
    } MiB, peak to the ` +
      `end of the steps ${fmtSpread(mine.map((s) => s.stepped.hwm), 0)} MiB, resident at the end ${
        fmtSpread(mine.map((s) => last(s).rss), 0)
      } MiB, after loading ${
        fmtSpread(mine.map((s) => s.loaded.rss), 0)
      } MiB (median (range) of ${mine.length})`;
  });
  const losses = new Set(samples.map((x) => x.s.loss));
  return [
    `### Client process memory: SmolLM2-135M shape (bench/client_memory.ts)`,
    ``,
    "```",
    `deno task bench client_memory ${argv.join(" ")}`.trimEnd(),
    "```",
    ``,
    `- machine: ${machineLine()}; load average ${before} before, ${loadAverages()} after`,
    `- each sample a child process: \`loadModel\` of ${modelDir}, \`Engine.create\` (${v.backend}, r = 8 on q,v, ` +
    `checkpointing ${v.checkpoint ? "on" : "off"}, weights ${
      v["weight-mode"] ?? "the backend's default"
    }), ` +
    `${v.steps} train step(s) of ${v.batch} × ${v.seq} tokens${
      v.eval ? ", then `evalNll` of that batch" : ""
    }`,
    `- MiB from /proc/self/status: VmHWM (peak so far) and VmRSS (resident now) after each phase`,
    ``,
    ...summary,
    `- loss: ${[...losses].join(", ")}${losses.size === 1 ? " (every sample)" : ""}`,
    ``,
    `| # | side | load peak | load RSS | engine peak | engine RSS | steps peak | steps RSS | eval peak | eval RSS | create s | step s | loss |`,
    `|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|`,
    ...rows,
  ].join("\n");
}

if (import.meta.main) {
  const { values } = clientMemoryCli.parse(Deno.args);
  if (values.child) {
    const modelDir = values["model-dir"];
    if (!modelDir) throw new Error("--child needs --model-dir");
    console.log(JSON.stringify(await measure(values.child, values, modelDir)));
  } else console.log(await run());
}
