// deno-lint-ignore-file no-explicit-any -- Chart.js scriptable options and Transformers.js pipeline options are untyped here
/**
 * Dashboard page: polls `/ui/api/dashboard` and redraws Chart.js charts in place (no re-creation, so
 * refreshes do not flicker). Data shaping lives in dashboard/series.ts.
 */
import { Chart, registerables } from "chart.js";
import { MatrixController, MatrixElement } from "chartjs-chart-matrix";
import type { DashboardData, RunInfo } from "./dashboard/types.ts";
import { type Method, STRATEGIES } from "../runtime/federation/strategies.ts";
import {
  budgetShares,
  clientPplSeries,
  colour,
  gainText,
  heatColour,
  heatScale,
  meanPpl,
  methodComparison,
  overlapCells,
  runLabel,
  timelineBars,
} from "./dashboard/series.ts";
import { createRunCommands, refreshErrorText, type UiInfo } from "./dashboard/messages.ts";

Chart.register(...registerables, MatrixController, MatrixElement);
Chart.defaults.animation = false;
Chart.defaults.maintainAspectRatio = false;

const POLL_MS = Number(new URLSearchParams(location.search).get("poll") ?? 2000);
const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const charts = new Map<string, { type: string; chart: Chart }>();
let selected: string | null = new URLSearchParams(location.search).get("run");
let refreshes = 0;
let comparison: unknown = null;

function upsert(id: string, config: any): void {
  const existing = charts.get(id);
  if (existing && existing.type === config.type) {
    existing.chart.data = config.data;
    existing.chart.options = config.options ?? {};
    existing.chart.update("none");
    return;
  }
  existing?.chart.destroy();
  charts.set(id, { type: config.type, chart: new Chart($<HTMLCanvasElement>(id), config) });
}

function drawTimeline(data: DashboardData): void {
  const { bars } = timelineBars(data);
  const labels = data.runs.map(runLabel);
  const states = [...new Set(bars.map((b) => b.state))];
  upsert("timeline", {
    type: "bar",
    data: {
      labels,
      datasets: states.map((s, i) => ({
        label: s,
        data: bars.filter((b) => b.state === s).map((b) => ({ y: b.run, x: b.x, round: b.round })),
        backgroundColor: colour(i, 0.7),
        borderSkipped: false,
        grouped: false,
      })),
    },
    options: {
      indexAxis: "y",
      parsing: { xAxisKey: "x", yAxisKey: "y" },
      scales: { x: { title: { display: true, text: "seconds since first round" }, min: 0 } },
      plugins: {
        tooltip: {
          callbacks: {
            label: (c: any) =>
              `round ${c.raw.round} (${c.dataset.label}): ${c.raw.x[0].toFixed(1)}s–${
                c.raw.x[1].toFixed(1)
              }s`,
          },
        },
      },
    },
  });
}

function drawPpl(run: RunInfo | undefined): void {
  const s = run ? clientPplSeries(run) : { rounds: [], series: [] };
  upsert("ppl", {
    type: "line",
    data: {
      labels: s.rounds.map((r) => `round ${r}`),
      datasets: s.series.map((c, i) => ({
        label: c.client,
        data: c.values,
        borderColor: colour(i),
        backgroundColor: colour(i, 0.3),
        spanGaps: true,
      })),
    },
    options: { scales: { y: { title: { display: true, text: "perplexity" } } } },
  });
}

function drawMethods(data: DashboardData): void {
  const cmp = methodComparison(data, selected);
  const rounds = [...new Set(cmp.lines.flatMap((l) => l.points.map((p) => p.round)))].sort((a, b) => a - b);
  upsert("methods", {
    type: "line",
    data: {
      labels: rounds.map((r) => `round ${r}`),
      datasets: cmp.lines.map((l, i) => ({
        label: l.label,
        data: rounds.map((r) => l.points.find((p) => p.round === r)?.ppl ?? null),
        borderColor: colour(i),
        // Methods without personal masks (the references) are dashed.
        borderDash: Object.hasOwn(STRATEGIES, l.method) && !STRATEGIES[l.method as Method].personalMask
          ? [6, 4]
          : [],
        spanGaps: true,
      })),
    },
    options: { scales: { y: { title: { display: true, text: "mean perplexity" } } } },
  });
  $("gain").textContent = gainText(cmp);
  // Runs on other data or settings are not plotted against these: say which, and why.
  $("methods-left").replaceChildren(...cmp.left.map((l) => {
    const li = document.createElement("li");
    li.dataset.run = l.run;
    li.textContent = `${l.label} left out: ${l.reason}`;
    return li;
  }));
  comparison = cmp;
}

function drawOverlap(run: RunInfo | undefined): void {
  const m = run?.overlap;
  let note = "No personalized masks yet (PerFIT runs report them after search).";
  if (m) {
    const off = m.jaccard.flatMap((row, i) => row.filter((_, j) => j !== i));
    note = `${m.clients.length} clients, run ${run!.id}` +
      (off.length
        ? `; off-diagonal Jaccard min ${Math.min(...off).toFixed(3)}, mean ${
          (off.reduce((a, b) => a + b, 0) / off.length).toFixed(3)
        }, max ${Math.max(...off).toFixed(3)}`
        : "");
  }
  $("overlap-note").textContent = note;
  const n = m?.clients.length ?? 0;
  upsert("overlap", {
    type: "matrix",
    data: {
      datasets: [{
        label: "Jaccard",
        data: m ? overlapCells(m) : [],
        backgroundColor: (c: any) => heatColour(c.raw?.v),
        borderColor: "#fff",
        borderWidth: 1,
        width: ({ chart }: any) => (chart.chartArea || {}).width / Math.max(n, 1) - 1,
        height: ({ chart }: any) => (chart.chartArea || {}).height / Math.max(n, 1) - 1,
      }],
    },
    options: {
      plugins: {
        legend: { display: false },
        tooltip: { callbacks: { label: (c: any) => `${c.raw.x} ∩ ${c.raw.y}: ${c.raw.v.toFixed(3)}` } },
      },
      scales: {
        x: { type: "category", labels: m?.clients ?? [], offset: true, grid: { display: false } },
        // A category y axis lists its first label at the top, but the matrix controller's defaults
        // reverse y: unreversed, the diagonal (each client with itself) runs from the top-left
        // corner to the bottom-right one, as a matrix is read.
        y: {
          type: "category",
          labels: m?.clients ?? [],
          offset: true,
          reverse: false,
          grid: { display: false },
        },
      },
    },
  });
}

/** The heatmap's colour legend: the gradient heatColour draws, ticked from 1 (top) to 0. */
function drawScale(): void {
  const stops = heatScale(5);
  const bar = document.querySelector<HTMLElement>("#overlap-scale .scale-bar")!;
  bar.style.background = `linear-gradient(to bottom, ${stops.map((s) => s.colour).join(", ")})`;
  document.querySelector("#overlap-scale .scale-ticks")!.replaceChildren(...stops.map((s) => {
    const t = document.createElement("span");
    t.textContent = s.v.toFixed(2);
    return t;
  }));
}

function drawBudget(run: RunInfo | undefined): void {
  const b = run?.budget;
  $("budget-note").textContent = b
    ? "share of each client's kept positions per layer.module"
    : "No budget spread reported for this run.";
  const rows = b ? budgetShares(b) : [];
  upsert("budget", {
    type: "bar",
    data: {
      labels: b?.groups ?? [],
      datasets: rows.map((r, i) => ({ label: r.client, data: r.shares, backgroundColor: colour(i, 0.75) })),
    },
    options: { scales: { y: { title: { display: true, text: "% of budget" }, min: 0 } } },
  });
}

function drawTable(data: DashboardData): void {
  const body = document.querySelector("#rounds-table tbody")!;
  body.replaceChildren(...data.runs.flatMap((run) => {
    const mean = new Map(meanPpl(run).map((p) => [p.round, p.ppl]));
    return run.rounds.map((rd) => {
      const tr = document.createElement("tr");
      for (
        const v of [
          run.id,
          run.method,
          String(rd.round),
          rd.state,
          String(rd.uploads ?? ""),
          mean.has(rd.round) ? mean.get(rd.round)!.toFixed(3) : "",
        ]
      ) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.append(td);
      }
      tr.dataset.run = run.id;
      tr.dataset.round = String(rd.round);
      return tr;
    });
  }));
}

function syncSelect(data: DashboardData): RunInfo | undefined {
  const sel = $<HTMLSelectElement>("run-select");
  const ids = data.runs.map((r) => r.id);
  if (sel.options.length !== ids.length || [...sel.options].some((o, i) => o.value !== ids[i])) {
    sel.replaceChildren(...data.runs.map((r) => new Option(runLabel(r), r.id)));
  }
  if (!selected || !ids.includes(selected)) selected = ids[ids.length - 1] ?? null;
  if (selected) sel.value = selected;
  return data.runs.find((r) => r.id === selected);
}

let info: Promise<UiInfo> | null = null;
/** Shows how to create a run while there is none. */
async function drawEmpty(data: DashboardData): Promise<void> {
  const empty = data.runs.length === 0;
  $("empty").hidden = !empty;
  document.body.dataset.empty = String(empty);
  if (!empty) return;
  info ??= fetch("/ui/api/info").then((r) => r.json()).catch(() => ({ modelUrl: null, baseModel: null }));
  const cmds = createRunCommands(location.origin, await info);
  $("empty-admin").textContent = cmds.admin;
  $("empty-curl").textContent = cmds.curl;
  ($("empty-client") as HTMLAnchorElement).href = `${location.origin}/client?run=RUN_ID`;
  $("empty-client").textContent = `${location.origin}/client?run=RUN_ID`;
}

/** A refresh that failed: in words in the header (and a banner for a missing or wrong token). */
function showError(kind: "unauthorized" | "error", text: string): void {
  document.body.dataset.error = kind;
  const banner = $("auth-error");
  banner.hidden = kind !== "unauthorized";
  banner.textContent = kind === "unauthorized" ? text : "";
  $("status").textContent = kind === "unauthorized" ? "no access" : text;
}

async function refresh(): Promise<void> {
  try {
    const token = new URLSearchParams(location.search).get("token");
    const res = await fetch("/ui/api/dashboard", {
      cache: "no-store",
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    if (!res.ok) {
      const e = refreshErrorText(res.status, await res.text(), token !== null);
      showError(e.kind, e.text);
      return;
    }
    const data = (await res.json()) as DashboardData;
    delete document.body.dataset.error;
    $("auth-error").hidden = true;
    const run = syncSelect(data);
    await drawEmpty(data);
    drawTimeline(data);
    drawPpl(run);
    drawMethods(data);
    drawOverlap(run);
    drawBudget(run);
    drawTable(data);
    refreshes++;
    $("status").textContent = `${data.runs.length} run(s) · updated ${
      new Date(data.generatedAt).toLocaleTimeString()
    }`;
    document.body.dataset.refreshes = String(refreshes);
    // Read-only hook for tests and the browser console: what each chart currently draws.
    (globalThis as unknown as { perfitDashboard: unknown }).perfitDashboard = {
      data,
      comparison,
      overlap: overlapGeometry(),
      charts: Object.fromEntries(
        [...charts].map((
          [id, c],
        ) => [id, {
          type: c.type,
          datasets: c.chart.data.datasets.map((d) => ({ label: d.label, points: d.data.length })),
        }]),
      ),
    };
  } catch (e) {
    showError("error", `Refresh failed: ${(e as Error).message}`);
  }
}

/** Where the heatmap drew each cell (pixels), so a test can check the diagonal's direction. */
function overlapGeometry(): { x: string; y: string; px: number; py: number }[] {
  const c = charts.get("overlap")?.chart;
  if (!c) return [];
  const meta = c.getDatasetMeta(0);
  return (c.data.datasets[0].data as { x: string; y: string }[]).map((d, i) => ({
    x: d.x,
    y: d.y,
    px: (meta.data[i] as unknown as { x: number }).x,
    py: (meta.data[i] as unknown as { y: number }).y,
  }));
}

$<HTMLSelectElement>("run-select").addEventListener("change", (e) => {
  selected = (e.target as HTMLSelectElement).value;
  void refresh();
});
drawScale();
await refresh();
setInterval(refresh, POLL_MS);
