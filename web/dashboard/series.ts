/**
 * Pure transforms from DashboardData to the series the charts draw. Kept apart from Chart.js so the
 * numbers on screen are unit-tested in Deno.
 */
import type { BudgetSpread, DashboardData, OverlapMatrix, RunInfo, RunSetting } from "./types.ts";

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
  return `${run.method} · ${run.id}${run.state === "cancelled" ? " (cancelled)" : ""}`;
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

/** Canonical JSON (object keys sorted at every level), so equal settings give equal strings. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${
      Object.keys(o).filter((k) => o[k] !== undefined).sort().map((k) =>
        `${JSON.stringify(k)}:${canonicalJson(o[k])}`
      )
        .join(",")
    }}`;
  }
  return JSON.stringify(v) ?? "null";
}

/** A run's data/setting fingerprint (null when its source does not report the setting). */
export function settingKey(s: RunSetting | undefined): string | null {
  return s ? canonicalJson(s) : null;
}

const loraText = (l: RunSetting["lora"]) => `r${l.rank} α${l.alpha} ${l.targets.join(",")}`;
const listText = (xs: string[]) => (xs.length ? xs.join(", ") : "none yet");

/** Why two settings differ, one phrase per differing part (empty when they match). */
export function settingDiff(a: RunSetting, b: RunSetting): string[] {
  const out: string[] = [];
  if (a.baseModel !== b.baseModel) out.push(`base model ${b.baseModel}, not ${a.baseModel}`);
  if (canonicalJson(a.lora) !== canonicalJson(b.lora)) {
    out.push(`LoRA ${loraText(b.lora)}, not ${loraText(a.lora)}`);
  }
  if (a.rounds !== b.rounds) out.push(`${b.rounds} rounds, not ${a.rounds}`);
  if (canonicalJson(a.train) !== canonicalJson(b.train)) {
    out.push(`train settings ${canonicalJson(b.train)}, not ${canonicalJson(a.train)}`);
  }
  if (canonicalJson(a.clients) !== canonicalJson(b.clients)) {
    out.push(`clients ${listText(b.clients)}, not ${listText(a.clients)}`);
  }
  return out;
}

/** A method's mean-perplexity line in the comparison chart. */
export interface ComparisonLine {
  run: string;
  label: string;
  method: string;
  points: { round: number; ppl: number }[];
}

/** What the comparison chart shows, what it left out and why, and the PerFIT vs FedIT gain. */
export interface MethodComparison {
  /** The run the others are compared with (null when no run reported a perplexity). */
  anchor: string | null;
  lines: ComparisonLine[];
  /** Runs not compared because their data/setting differs from the anchor's. */
  left: { run: string; label: string; reason: string }[];
  /** (FedIT - PerFIT) / FedIT mean perplexity at the last common round: > 0 when PerFIT is lower. */
  perfitVsFedit: number | null;
  /** The two runs and the round the gain is taken at (when it is not null). */
  gain?: { perfit: string; fedit: string; round: number; perfitPpl: number; feditPpl: number };
}

/**
 * Method comparison: mean perplexity per round of every run with the same data and setting as the
 * anchor (the run `anchorId` when it reported perplexities, else the newest PerFIT run that did, else
 * the newest run that did), the runs left out with the reason, and the relative gain of PerFIT over
 * FedIT at the last round both reached (null unless both ran on that setting).
 */
export function methodComparison(data: DashboardData, anchorId?: string | null): MethodComparison {
  const line = (r: RunInfo): ComparisonLine => ({
    run: r.id,
    label: runLabel(r),
    method: r.method,
    points: meanPpl(r),
  });
  const all = data.runs.map((r) => ({ run: r, line: line(r) }));
  const reported = all.filter((x) => x.line.points.length > 0);
  const anchor = reported.find((x) => x.run.id === anchorId) ??
    reported.findLast((x) => x.run.method === "perfit") ?? reported[reported.length - 1];
  if (!anchor) return { anchor: null, lines: all.map((x) => x.line), left: [], perfitVsFedit: null };
  const key = settingKey(anchor.run.setting);
  const lines: ComparisonLine[] = [];
  const left: MethodComparison["left"] = [];
  for (const x of all) {
    if (x === anchor) lines.push(x.line);
    else if (key === null || x.run.setting === undefined) {
      left.push({
        run: x.run.id,
        label: x.line.label,
        reason: `its data and setting are unknown, so it is not compared with ${anchor.run.id}`,
      });
    } else if (settingKey(x.run.setting) !== key) {
      left.push({
        run: x.run.id,
        label: x.line.label,
        reason: `other data or setting than ${anchor.run.id}: ${
          settingDiff(anchor.run.setting!, x.run.setting).join("; ")
        }`,
      });
    } else lines.push(x.line);
  }
  const pick = (m: string) =>
    anchor.run.method === m
      ? anchor.line
      : lines.findLast((l) => l.method === m && l.points.length > 0) ?? null;
  const p = pick("perfit"), f = pick("fedit");
  let perfitVsFedit: number | null = null;
  let gain: MethodComparison["gain"];
  if (p && f) {
    const common = p.points.map((x) => x.round).filter((r) => f.points.some((y) => y.round === r));
    if (common.length) {
      const round = Math.max(...common);
      const pv = p.points.find((x) => x.round === round)!.ppl;
      const fv = f.points.find((x) => x.round === round)!.ppl;
      perfitVsFedit = (fv - pv) / fv;
      gain = { perfit: p.run, fedit: f.run, round, perfitPpl: pv, feditPpl: fv };
    }
  }
  return { anchor: anchor.run.id, lines, left, perfitVsFedit, gain };
}

/** The sentence under the comparison chart: which way PerFIT differs from FedIT, by how much. */
export function gainText(cmp: MethodComparison): string {
  if (cmp.anchor === null) return "No run has reported a perplexity yet.";
  if (cmp.perfitVsFedit === null || !cmp.gain) {
    return `No PerFIT and FedIT runs with the same data and setting as ${cmp.anchor} have a round in common ` +
      "yet: run both on the same clients and settings to compare them.";
  }
  const g = cmp.gain;
  const pct = Math.abs(100 * cmp.perfitVsFedit);
  const how = pct < 0.05
    ? "the same as"
    : `${pct.toFixed(1)}% ${cmp.perfitVsFedit > 0 ? "lower" : "higher"} than`;
  return `PerFIT perplexity is ${how} FedIT at round ${g.round} (${
    g.perfitPpl.toFixed(3)
  } in ${g.perfit} vs ` +
    `${g.feditPpl.toFixed(3)} in ${g.fedit}; lower is better).`;
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

/** The heatmap's colour scale as legend stops, from 1 (top of the legend) down to 0. */
export function heatScale(ticks = 5): { v: number; colour: string }[] {
  return Array.from({ length: ticks }, (_, i) => {
    const v = 1 - i / (ticks - 1);
    return { v, colour: heatColour(v) };
  });
}
