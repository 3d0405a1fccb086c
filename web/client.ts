/**
 * Client page: a person picks a local JSONL file, joins a run and trains in the page on WebGPU (WASM
 * when there is no adapter, or only a software one) with the same runtime as Deno clients:
 * FederatedClient + the ORT Engine + the PerFIT client logic. The file is parsed here and never
 * uploaded; only adapter updates leave. The client's state lives in IndexedDB per coordinator and run,
 * so a reload resumes the run as the same client from its last acknowledged round.
 *
 * State for tests and scripts, on `document.body.dataset`: state (idle, loading, training, done,
 * error), clientId, resumed, savedClient/savedRound (progress held for the run in the form),
 * lastAcked, trainedRounds (rounds trained in this page load), roundsDone, retries/retrying
 * (requests being retried while the coordinator is unreachable), adapter/adapterSoftware, backend,
 * ppl, ready (the page has looked for saved progress), forgotten (the run just forgotten).
 *
 * URL parameters: run, name, tier, backend fill the form; `checkpoint=1` turns on activation
 * checkpointing and `weightMode=inputs|constants` says how the engine holds the base weights (a
 * 135M-parameter model trains in about 1.7 GB of renderer memory with both, against 3.7 GB with the
 * WASM defaults).
 */
import * as ort from "onnxruntime-web";
import { Chart, registerables } from "chart.js";
import { loadModel } from "../runtime/model/load.ts";
import { initKernels } from "../runtime/kernels/mod.ts";
import { parseJsonl } from "../runtime/data/jsonl.ts";
import { splitTrainTest } from "../runtime/federation/partition.ts";
import { FederatedClient, type StepOutcome } from "../runtime/client/federated_client.ts";
import { IndexedDbStorage } from "../runtime/client/storage.ts";
import {
  type AdapterVerdict,
  chooseBackend,
  classifyAdapter,
  readAdapterFacts,
} from "../runtime/graph/adapter_choice.ts";
import {
  forgetStore,
  ForgettableStorage,
  readPageRecord,
  resumeFileProblem,
  runStoreName,
  sha256Hex,
  storeExists,
  writePageRecord,
} from "./client_storage.ts";
import { engineTrainer, type TrainProgress } from "../runtime/client/engine_trainer.ts";
import { peftAdapterFiles } from "../runtime/export/peft.ts";
import { engineParamsOf } from "./client_params.ts";

ort.env.wasm.wasmPaths = "/ui/ort/";
Chart.register(...registerables);

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const data = document.body.dataset;
const state = (s: string) => (data.state = s);
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

// deno-lint-ignore no-explicit-any
const probe: Promise<AdapterVerdict> = readAdapterFacts((navigator as any).gpu).then(classifyAdapter);
function showBackendPlan(v: AdapterVerdict): void {
  const requested = $<HTMLSelectElement>("backend").value as "auto" | "webgpu" | "wasm";
  let plan: string;
  try {
    plan = chooseBackend(requested, v).why;
  } catch (e) {
    plan = (e as Error).message;
  }
  $("backend-info").textContent = `${v.label}; ${plan}`;
}
void probe.then((v) => {
  data.adapter = v.label;
  data.adapterSoftware = String(v.software);
  showBackendPlan(v);
});
$("backend").addEventListener("change", () => void probe.then(showBackendPlan));

let lastPhase = "";
function progress(p: TrainProgress): void {
  if (retrying) reachable();
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

async function readFile(): Promise<{ name: string; text: string }> {
  const f = $<HTMLInputElement>("file").files?.[0];
  if (!f) throw new Error("pick a JSONL file first");
  if (f.size > 64 * 1024 * 1024) {
    throw new Error(`file of ${f.size} bytes is too large for an in-browser run (64 MiB max)`);
  }
  return { name: f.name, text: await f.text() };
}

const runIdOf = () => $<HTMLInputElement>("run").value.trim();
const validRun = (id: string) => /^[A-Za-z0-9_-]{1,64}$/.test(id);

/** The run's storage in this browser; kept so "forget" can stop a running client writing it back. */
let storage: { run: string; store: ForgettableStorage } | null = null;
function storageFor(runId: string): ForgettableStorage {
  if (storage?.run !== runId) {
    storage = {
      run: runId,
      store: new ForgettableStorage(new IndexedDbStorage(runStoreName(location.origin, runId))),
    };
  }
  return storage.store;
}

/** What this browser holds of a run: the client it joined as and its last acknowledged round. */
async function savedProgress(runId: string) {
  if (!validRun(runId) || !(await storeExists(runStoreName(location.origin, runId)))) return null;
  const store = storageFor(runId);
  // The client reads its saved state without any request; its trainer is never called here.
  const c = await FederatedClient.create({
    serverUrl: location.origin,
    runId,
    storage: store,
    trainer: () => Promise.reject(new Error("not training")),
  });
  if (c.clientId === null) return null;
  return { clientId: c.clientId, lastRound: c.lastRound, page: await readPageRecord(store) };
}

/** Shows (or hides) the saved progress of the run in the form, and names the button accordingly. */
async function showSaved(): Promise<void> {
  const runId = runIdOf();
  const saved = await savedProgress(runId).catch(() => null);
  if (runIdOf() !== runId) return; // the field changed meanwhile
  $("saved").hidden = saved === null;
  if (saved) {
    data.savedClient = saved.clientId;
    data.savedRound = String(saved.lastRound);
    const next = data.state === "done"
      ? "The run is finished: forgetting it frees the space."
      : data.state === "training" || data.state === "loading"
      ? ""
      : "Pick the same file and press Resume to continue.";
    $("saved-info").textContent = `This browser is client ${saved.clientId} of run ${runId}` +
      (saved.page ? ` (name ${saved.page.name}, file ${saved.page.file.name})` : "") +
      `; last acknowledged round: ${saved.lastRound || "none yet"}. ${next}`;
    if (data.state !== "training") $("join").textContent = "Resume";
  } else {
    delete data.savedClient;
    delete data.savedRound;
    $("join").textContent = "Join and train";
  }
}

let retries = 0;
let retrying = false;
/** A request failed and will be retried: say so, with what failed and when the next try is. */
function onRetry(what: string, attempt: number, waitMs: number, error: unknown): void {
  retries++;
  retrying = true;
  data.retries = String(retries);
  data.retrying = what;
  const why = error instanceof Error ? error.message : String(error);
  const msg = `coordinator unreachable: ${what} failed (${why}); retry ${attempt} of ${
    RETRY.attempts - 1
  } in ${(waitMs / 1000).toFixed(1)} s`;
  const el = $("net-info");
  el.textContent = msg;
  el.className = "retry";
  log(msg);
}
/** A request went through after retries. */
function reachable(): void {
  if (retrying) log("coordinator reachable again");
  retrying = false;
  data.retrying = "";
  $("net-info").textContent = `reachable (${location.origin})`;
  $("net-info").className = "";
}
/** How long the page keeps retrying a request before it stops with an error (about 4 minutes). */
const RETRY = { attempts: 20, baseMs: 500, maxMs: 15_000 };

/**
 * Runs `f` holding this browser's lock on the run: tabs of one browser share the run's saved client,
 * so a second tab must not train it at the same time (it gets an error saying so instead).
 */
async function withRunLock(runId: string, f: () => Promise<void>): Promise<void> {
  const locks = (navigator as Navigator & { locks?: LockManager }).locks;
  if (!locks) return await f(); // no Web Locks: nothing to coordinate with
  await locks.request(runStoreName(location.origin, runId), { ifAvailable: true }, async (lock) => {
    if (!lock) {
      throw new Error(
        `run ${runId} is already training in another tab or window of this browser, as the same client ` +
          "(they share what this browser saved of the run): close that one, or join from another browser " +
          "profile to be a second client",
      );
    }
    await f();
  });
}

/** The form's fields are fixed while a run trains (the page's storage is the run's in the field). */
function lockForm(on: boolean): void {
  for (const id of ["file", "run", "name", "tier", "backend"]) ($(id) as HTMLInputElement).disabled = on;
}

async function start(): Promise<void> {
  const runId = runIdOf();
  if (!validRun(runId)) throw new Error("enter the run id (letters, digits, _ and -)");
  lockForm(true);
  try {
    await withRunLock(runId, () => train(runId));
  } finally {
    lockForm(false);
  }
}

async function train(runId: string): Promise<void> {
  const formName = $<HTMLInputElement>("name").value.trim() || "browser";
  const formTier = $<HTMLInputElement>("tier").value.trim() || undefined;
  const backend = $<HTMLSelectElement>("backend").value as "auto" | "webgpu" | "wasm";
  const engine = engineParamsOf(params);
  state("loading");
  const file = await readFile();
  const sha = await sha256Hex(file.text);
  const store = storageFor(runId);
  const saved = await savedProgress(runId);
  const page = saved ? saved.page : null;
  const problem = saved ? resumeFileProblem(page, sha, runId) : null;
  if (problem) throw new Error(problem);
  // A resumed client keeps the name it joined with: the held-out split is drawn from it.
  const name = page?.name ?? formName;
  const tier = page?.tier ?? formTier;
  if (saved && name !== formName) log(`resuming as ${name}, the name this browser joined with`);
  const examples = parseJsonl(file.text, { format: "auto" });
  const split = splitTrainTest(examples, name, { seed: 0 });
  if (split.train.length === 0) {
    throw new Error("the file needs at least 2 examples (one is held out for evaluation)");
  }
  $("data-info").textContent =
    `${examples.length} examples (${split.train.length} train, ${split.test.length} held out), kept in this page`;
  log(`parsed ${examples.length} examples from ${file.name}`);

  log("loading the base model and kernels from the coordinator");
  const unreachable = (e: unknown): never => {
    throw new Error(
      `could not load the base model from the coordinator at ${location.origin}: ${
        (e as Error).message
      } (is it running? pressing the button again retries)`,
    );
  };
  const info = await fetch("/ui/api/info").then((r) => r.json()).catch(unreachable);
  if (!info.modelUrl) throw new Error("this coordinator does not serve a base model to browsers");
  const [model, k] = await Promise.all([
    loadModel(new URL(info.modelUrl, location.origin).href),
    initKernels({ wasm: new URL("/ui/kernels/perfit_kernels.wasm", location.origin).href }),
  ]).catch(unreachable);
  if (!model.tokenizer) throw new Error("the base model has no tokenizer");
  log(
    `model: ${model.config.numLayers} layers, hidden ${model.config.hiddenSize}; kernels: ${
      k.name ?? "ready"
    }`,
  );
  const choice = chooseBackend(backend, await probe);
  log(`backend: ${choice.why}`);
  const trainer = engineTrainer({
    model,
    tokenizer: model.tokenizer,
    data: { id: name, ...split },
    backend: choice.backend,
    engine,
    reportThroughput: true,
    onProgress: progress,
    onLoss,
    onMetrics,
  });
  const client = await FederatedClient.create({
    serverUrl: location.origin,
    runId,
    trainer,
    storage: store,
    name,
    tier,
    initAdapter: (t) => trainer.initAdapter(t),
    retry: RETRY,
    onRetry,
  });
  const resumed = client.clientId !== null;
  if (!resumed) {
    await writePageRecord(store, {
      name,
      tier,
      file: { name: file.name, sha256: sha, examples: examples.length },
      joinedAt: Date.now(),
    });
  }
  const joined = await client.join();
  reachable();
  data.clientId = joined.clientId;
  data.resumed = String(resumed);
  $("client-info").textContent = `${joined.clientId} (tier ${joined.tier}, expansion ×${joined.expansion})${
    resumed ? ", resumed" : ""
  }`;
  log(
    resumed
      ? `resumed run ${runId} as ${joined.clientId} (no new join); last acknowledged round: ${
        client.lastRound || "none"
      }`
      : `joined run ${runId} as ${joined.clientId}`,
  );
  state("training");
  void showSaved();
  let rounds = 0;
  const trained: number[] = [];
  await client.run({
    onStep(o: StepOutcome) {
      reachable();
      data.backend = trainer.backend();
      $("backend-info").textContent = `${trainer.backend()}${
        trainer.backend() === "wasm"
          ? ` (${ort.env.wasm.numThreads ?? 1} threads, isolated: ${crossOriginIsolated})`
          : ` (${data.adapter ?? ""})`
      }; ${choice.why}`;
      if (o.kind === "trained" || o.kind === "resumed") {
        rounds++;
        if (o.kind === "trained") trained.push(o.round);
        data.roundsDone = String(rounds);
        data.trainedRounds = trained.join(",");
        data.lastAcked = String(client.lastRound);
        $("round-info").textContent = `round ${o.round}: upload ${o.status}`;
        log(`round ${o.round}: ${o.kind === "resumed" ? "saved upload re-sent" : "upload"} ${o.status}`);
        void showSaved();
      } else if (o.kind === "waiting") {
        $("round-info").textContent = `round ${o.round}: waiting for the other clients`;
      } else if (o.kind === "done") {
        $("round-info").textContent = `run finished (${trained.length} round(s) trained in this page${
          resumed ? " since the reload" : ""
        })`;
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
  void showSaved();
  log(
    mine
      ? "run finished; personalized adapter kept in this page (download it below)"
      : "run finished; this page trained no round of it since the reload, so it has no adapter to offer",
  );
}

function onMetrics(round: number, m: Record<string, number>): void {
  if (m.ppl !== undefined) $("ppl-info").textContent = `${m.ppl.toFixed(3)} after round ${round}`;
  data.ppl = String(m.ppl ?? "");
}

$("join").addEventListener("click", () => {
  ($("join") as HTMLButtonElement).disabled = true;
  $("error").textContent = "";
  start().catch((e) => {
    state("error");
    const saved = data.savedClient ? " Your progress is kept in this browser: press Resume to continue." : "";
    $("error").textContent = `${(e as Error).message}${saved}`;
    log(`error: ${(e as Error).message}`);
    ($("join") as HTMLButtonElement).disabled = false;
    void showSaved();
  });
});

$("forget").addEventListener("click", async () => {
  const runId = runIdOf();
  if (!validRun(runId)) return;
  const training = data.state === "training" || data.state === "loading";
  if (
    !confirm(
      `Forget run ${runId} in this browser? Its client token, adapter and mask are deleted${
        training ? " and training here stops" : ""
      }; joining again makes a new client.`,
    )
  ) return;
  // A client still running must not write the run back.
  if (storage?.run === runId) storage.store.forget();
  await forgetStore(runStoreName(location.origin, runId));
  sessionStorage.setItem("perfit-forgotten", runId);
  // A fresh page: nothing of the forgotten run (client, model, open database connection) stays.
  location.reload();
});

$("run").addEventListener("change", () => void showSaved());
const forgotten = sessionStorage.getItem("perfit-forgotten");
if (forgotten) {
  sessionStorage.removeItem("perfit-forgotten");
  log(`forgot run ${forgotten}: this browser holds nothing of it any more`);
  data.forgotten = forgotten;
}
void showSaved().then(() => (data.ready = "true"));
