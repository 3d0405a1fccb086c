/**
 * Client page: a person picks a local JSONL file, joins a run and trains in the page on WebGPU (WASM
 * when there is no adapter) with the same runtime as Deno clients: FederatedClient + the ORT Engine +
 * the PerFIT client logic. The file is parsed here and never uploaded; only adapter updates leave.
 */
import * as ort from "onnxruntime-web";
import { Chart, registerables } from "chart.js";
import { loadModel } from "../runtime/model/load.ts";
import { initKernels } from "../runtime/kernels/mod.ts";
import { parseJsonl } from "../runtime/data/jsonl.ts";
import { splitTrainTest } from "../runtime/federation/partition.ts";
import { FederatedClient, type StepOutcome } from "../runtime/client/federated_client.ts";
import { MemoryStorage } from "../runtime/client/storage.ts";
import { webgpuAdapter } from "../runtime/graph/session.ts";
import { engineTrainer, type TrainProgress } from "../runtime/client/engine_trainer.ts";
import { peftAdapterFiles } from "../runtime/export/peft.ts";

ort.env.wasm.wasmPaths = "/ui/ort/";
Chart.register(...registerables);

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const state = (s: string) => (document.body.dataset.state = s);
const log = (msg: string) => {
  const el = $("log");
  el.textContent += `${new Date().toLocaleTimeString()} ${msg}\n`;
  el.scrollTop = el.scrollHeight;
};

for (const k of ["run", "name", "tier", "backend"]) {
  const v = params.get(k);
  if (v) ($(k) as HTMLInputElement).value = v;
}

const lossLabels: string[] = [];
const lossValues: number[] = [];
const lossChart = new Chart($<HTMLCanvasElement>("loss-chart"), {
  type: "line",
  data: {
    labels: lossLabels,
    datasets: [{
      label: "training loss",
      data: lossValues,
      borderColor: "hsl(210, 65%, 45%)",
      pointRadius: 0,
    }],
  },
  options: {
    animation: false,
    maintainAspectRatio: false,
    scales: { x: { title: { display: true, text: "step" } } },
  },
});

const probe = webgpuAdapter().then(async (ok) => {
  let what = "no WebGPU adapter: WASM";
  if (ok) {
    // deno-lint-ignore no-explicit-any
    const a: any = await (navigator as any).gpu.requestAdapter();
    const info = a?.info ?? {};
    what = `WebGPU adapter: ${
      [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "unnamed"
    }${a?.isFallbackAdapter ? " (software fallback)" : ""}`;
    document.body.dataset.adapter = what;
  }
  $("backend-info").textContent = what;
  return ok;
});

let lastPhase = "";
function progress(p: TrainProgress): void {
  if (p.phase !== lastPhase) {
    log(
      `round ${p.round}: ${
        p.phase === "engine"
          ? "building the training graph"
          : p.phase === "eval"
          ? "evaluating on held-out data"
          : "training"
      }`,
    );
  }
  lastPhase = p.phase;
  const bar = $<HTMLProgressElement>("progress");
  bar.max = Math.max(1, p.steps);
  bar.value = p.phase === "engine" ? 0 : p.step;
  const phase = p.phase === "engine"
    ? "building the training graph"
    : p.phase === "eval"
    ? "evaluating"
    : `step ${p.step}/${p.steps}`;
  $("round-info").textContent = `round ${p.round}: ${phase}`;
}

let steps = 0;
function onLoss(round: number, step: number, loss: number): void {
  steps++;
  $("loss-info").textContent = `${loss.toFixed(4)} (round ${round}, step ${step})`;
  lossLabels.push(String(steps));
  lossValues.push(loss);
  lossChart.update("none");
}

async function readFile(): Promise<string> {
  const f = $<HTMLInputElement>("file").files?.[0];
  if (!f) throw new Error("pick a JSONL file first");
  if (f.size > 64 * 1024 * 1024) {
    throw new Error(`file of ${f.size} bytes is too large for an in-browser run (64 MiB max)`);
  }
  return await f.text();
}

async function start(): Promise<void> {
  const runId = $<HTMLInputElement>("run").value.trim();
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(runId)) throw new Error("enter the run id (letters, digits, _ and -)");
  const name = $<HTMLInputElement>("name").value.trim() || "browser";
  const tier = $<HTMLInputElement>("tier").value.trim() || undefined;
  const backend = $<HTMLSelectElement>("backend").value as "auto" | "webgpu" | "wasm";
  state("loading");
  const examples = parseJsonl(await readFile(), { format: "auto" });
  const split = splitTrainTest(examples, name, { seed: 0 });
  if (split.train.length === 0) {
    throw new Error("the file needs at least 2 examples (one is held out for evaluation)");
  }
  $("data-info").textContent =
    `${examples.length} examples (${split.train.length} train, ${split.test.length} held out), kept in this page`;
  log(`parsed ${examples.length} examples`);

  const info = await (await fetch("/ui/api/info")).json();
  if (!info.modelUrl) throw new Error("this coordinator does not serve a base model to browsers");
  const [model, k] = await Promise.all([
    loadModel(new URL(info.modelUrl, location.origin).href),
    initKernels({ wasm: new URL("/ui/kernels/perfit_kernels.wasm", location.origin).href }),
  ]);
  if (!model.tokenizer) throw new Error("the base model has no tokenizer");
  log(
    `model: ${model.config.numLayers} layers, hidden ${model.config.hiddenSize}; kernels: ${
      k.name ?? "ready"
    }`,
  );
  const hasGpu = await probe;
  const trainer = engineTrainer({
    model,
    tokenizer: model.tokenizer,
    data: { id: name, ...split },
    backend: backend === "auto" ? (hasGpu ? "webgpu" : "wasm") : backend,
    onProgress: progress,
    onLoss,
    onMetrics,
  });
  const client = await FederatedClient.create({
    serverUrl: location.origin,
    runId,
    trainer,
    storage: new MemoryStorage(),
    name,
    tier,
    initAdapter: (t) => trainer.initAdapter(t),
  });
  const joined = await client.join();
  $("client-info").textContent = `${joined.clientId} (tier ${joined.tier}, expansion ×${joined.expansion})`;
  log(`joined run ${runId} as ${joined.clientId}`);
  state("training");
  let rounds = 0;
  await client.run({
    onStep(o: StepOutcome) {
      document.body.dataset.backend = trainer.backend();
      $("backend-info").textContent = `${trainer.backend()}${
        trainer.backend() === "wasm"
          ? ` (${ort.env.wasm.numThreads ?? 1} threads, isolated: ${crossOriginIsolated})`
          : ` (${document.body.dataset.adapter ?? ""})`
      }`;
      if (o.kind === "trained" || o.kind === "resumed") {
        rounds++;
        document.body.dataset.roundsDone = String(rounds);
        $("round-info").textContent = `round ${o.round}: upload ${o.status}`;
        log(`round ${o.round}: upload ${o.status}`);
      } else if (o.kind === "waiting") {
        $("round-info").textContent = `round ${o.round}: waiting for the other clients`;
      } else if (o.kind === "done") {
        $("round-info").textContent = `run finished (${rounds} round(s) trained in this page)`;
      }
    },
  });
  const mine = trainer.personalized(client.adapter, client.mask);
  if (mine) {
    // Built in the page: the personalized adapter never has to pass through the coordinator.
    const files = peftAdapterFiles({ ...mine, baseModel: info.baseModel ?? "base" });
    ($("dl-config") as HTMLAnchorElement).href = URL.createObjectURL(
      new Blob([JSON.stringify(files.adapterConfig, null, 2)], { type: "application/json" }),
    );
    ($("dl-weights") as HTMLAnchorElement).href = URL.createObjectURL(
      new Blob([files.safetensors as Uint8Array<ArrayBuffer>], { type: "application/octet-stream" }),
    );
    $("export").hidden = false;
  }
  state("done");
  log("run finished; personalized adapter kept in this page (download it below)");
}

function onMetrics(round: number, m: Record<string, number>): void {
  if (m.ppl !== undefined) $("ppl-info").textContent = `${m.ppl.toFixed(3)} after round ${round}`;
  document.body.dataset.ppl = String(m.ppl ?? "");
}

$("join").addEventListener("click", () => {
  ($("join") as HTMLButtonElement).disabled = true;
  start().catch((e) => {
    state("error");
    $("error").textContent = (e as Error).message;
    log(`error: ${(e as Error).message}`);
    ($("join") as HTMLButtonElement).disabled = false;
  });
});
