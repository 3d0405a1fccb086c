/**
 * Pure transforms from DashboardData to the series the charts draw. Kept apart from Chart.js so the
 * numbers on screen are unit-tested in Deno.
 */
import type { BudgetSpread, DashboardData, OverlapMatrix, RunInfo } from "./types.ts";

/** A floating bar [start, end] on the timeline, in seconds since the first run began. */
export interface TimelineBar {
  run: string;
  round: number;
  state: string;
  x: [number, number];
}

/** Rounds as floating bars; open rounds extend to `now`. */
export function timelineBars(
  data: DashboardData,
  now = data.generatedAt,
): { t0: number; bars: TimelineBar[] } {
  const starts = data.runs.flatMap((r) => r.rounds.map((x) => x.startedAt ?? Infinity));
  const t0 = Math.min(...starts, now);
  const bars: TimelineBar[] = [];
  for (const run of data.runs) {
    for (const rd of run.rounds) {
      if (rd.startedAt === undefined) continue;
      const end = rd.closedAt ?? now;
      bars.push({
        run: runLabel(run),
        round: rd.round,
        state: rd.state,
        x: [(rd.startedAt - t0) / 1000, (Math.max(end, rd.startedAt) - t0) / 1000],
      });
    }
  }
  return { t0, bars };
}

/** Display label of a run: "method · id". */
export function runLabel(run: RunInfo): string {
  return `${run.method} · ${run.id}`;
}

/** Sorted round numbers that any client of the run reported a perplexity for. */
export function reportedRounds(run: RunInfo): number[] {
  return [...new Set(run.clients.flatMap((c) => c.ppl.map((p) => p.round)))].sort((a, b) => a - b);
}

/** Per client, its perplexity at each reported round (null where it did not report). */
export function clientPplSeries(
  run: RunInfo,
): { rounds: number[]; series: { client: string; values: (number | null)[] }[] } {
  const rounds = reportedRounds(run);
  const series = run.clients.map((c) => {
    const byRound = new Map(c.ppl.map((p) => [p.round, p.ppl]));
    return { client: c.id, values: rounds.map((r) => byRound.get(r) ?? null) };
  });
  return { rounds, series };
}

/** Mean over clients of the personalized perplexity per round (only finite values count). */
export function meanPpl(run: RunInfo): { round: number; ppl: number }[] {
  const acc = new Map<number, { s: number; n: number }>();
  for (const c of run.clients) {
    for (const p of c.ppl) {
      if (!Number.isFinite(p.ppl)) continue;
      const a = acc.get(p.round) ?? { s: 0, n: 0 };
      a.s += p.ppl;
      a.n += 1;
      acc.set(p.round, a);
    }
  }
  return [...acc.entries()].sort((a, b) => a[0] - b[0]).map(([round, a]) => ({ round, ppl: a.s / a.n }));
}

/**
 * Method comparison: mean perplexity per round for every run, grouped by method, and the relative
 * gain of PerFIT over FedIT at the last round both reached (null unless both ran).
 */
export function methodComparison(data: DashboardData): {
  lines: { label: string; method: string; points: { round: number; ppl: number }[] }[];
  perfitVsFedit: number | null;
} {
  const lines = data.runs.map((r) => ({ label: runLabel(r), method: r.method, points: meanPpl(r) }));
  const last = (m: string) => {
    const ls = lines.filter((l) => l.method === m && l.points.length > 0);
    return ls.length ? ls[ls.length - 1].points : null;
  };
  const p = last("perfit"), f = last("fedit");
  let gain: number | null = null;
  if (p && f) {
    const common = p.map((x) => x.round).filter((r) => f.some((y) => y.round === r));
    if (common.length) {
      const r = Math.max(...common);
      const pv = p.find((x) => x.round === r)!.ppl, fv = f.find((x) => x.round === r)!.ppl;
      gain = (fv - pv) / fv;
    }
  }
  return { lines, perfitVsFedit: gain };
}

/** Heatmap cells of an overlap matrix. */
export function overlapCells(m: OverlapMatrix): { x: string; y: string; v: number }[] {
  const cells: { x: string; y: string; v: number }[] = [];
  m.clients.forEach((a, i) =>
    m.clients.forEach((b, j) => cells.push({ x: a, y: b, v: m.jaccard[i]?.[j] ?? NaN }))
  );
  return cells;
}

/** Each client's budget share (percent of its kept positions) per group. */
export function budgetShares(b: BudgetSpread): { client: string; shares: number[] }[] {
  return b.clients.map((client, i) => {
    const row = b.counts[i] ?? [];
    const total = row.reduce((s, v) => s + v, 0);
    return { client, shares: b.groups.map((_, g) => (total > 0 ? (100 * (row[g] ?? 0)) / total : 0)) };
  });
}

/** A colour per index, stable across refreshes. */
export function colour(i: number, alpha = 1): string {
  const hue = (i * 137.508) % 360;
  return `hsla(${hue.toFixed(0)}, 65%, 45%, ${alpha})`;
}

/** Colour of a Jaccard value in [0, 1] (white to deep blue). */
export function heatColour(v: number): string {
  if (!Number.isFinite(v)) return "#ddd";
  const t = Math.max(0, Math.min(1, v));
  return `rgba(33, 102, 172, ${(0.08 + 0.92 * t).toFixed(3)})`;
}
