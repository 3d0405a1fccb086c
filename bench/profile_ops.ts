/**
 * Where a session's time goes: sums an onnxruntime profile (`SessionOptions.profile`,
 * `bench/model_train_step.ts --profile=PREFIX`) by op type and by op with its input shapes.
 *
 *   deno run -A bench/profile_ops.ts PROFILE.json [--run=N] [--top=N]
 *
 * `--run=N` counts only the N-th `model_run` of the session (1-based; default: the last, so a warm-up
 * step is left out); `--run=all` counts every run.
 */

/** One event of onnxruntime's Chrome-trace profile, as far as this summary reads it. */
export interface ProfileEvent {
  cat?: string;
  name?: string;
  ts?: number;
  dur?: number;
  args?: { op_name?: string; input_type_shape?: Record<string, number[]>[] };
}

/** Time spent in one op type, or one op at one set of input shapes. */
export interface ProfileRow {
  op: string;
  /** Input shapes, for the by-shape rows ("" in the by-op rows). */
  shapes: string;
  calls: number;
  /** Kernel microseconds. */
  us: number;
  /** Share of all kernel time counted. */
  share: number;
}

/** A profile summed by op type and by op with its input shapes, largest first. */
export interface ProfileSummary {
  /** Wall microseconds of each `model_run` in the file, in order. */
  runs: number[];
  /** Which runs were counted (1-based). */
  counted: number[];
  kernelUs: number;
  byOp: ProfileRow[];
  byShape: ProfileRow[];
}

/**
 * Sums the kernel events of the chosen runs (`run`: 1-based index, or "all"; default the last).
 * Refuses what is not a profile: not an array, no `model_run`, or a run index that is not there.
 */
export function summarizeProfile(events: unknown, run: number | "all" = -1): ProfileSummary {
  if (!Array.isArray(events)) throw new TypeError("an onnxruntime profile is a JSON array of events");
  const ev = events as ProfileEvent[];
  const runs = ev.filter((e) => e?.cat === "Session" && e.name === "model_run" && typeof e.ts === "number");
  if (runs.length === 0) throw new RangeError("the profile holds no model_run (was the session run?)");
  const index = run === "all" ? -1 : run === -1 ? runs.length : run;
  if (run !== "all" && !(Number.isInteger(index) && index >= 1 && index <= runs.length)) {
    throw new RangeError(`run ${run} is not in the profile's ${runs.length} run(s)`);
  }
  const chosen = run === "all" ? runs : [runs[index - 1]];
  const inChosen = (ts: number) => chosen.some((r) => ts >= r.ts! && ts <= r.ts! + (r.dur ?? 0));
  const byOp = new Map<string, ProfileRow>(), byShape = new Map<string, ProfileRow>();
  let total = 0;
  const add = (m: Map<string, ProfileRow>, key: string, op: string, shapes: string, us: number) => {
    const r = m.get(key) ?? { op, shapes, calls: 0, us: 0, share: 0 };
    r.calls++;
    r.us += us;
    m.set(key, r);
  };
  for (const e of ev) {
    if (e?.cat !== "Node" || !e.name?.endsWith("_kernel_time") || typeof e.ts !== "number") continue;
    if (!inChosen(e.ts)) continue;
    const op = e.args?.op_name ?? "?";
    const us = e.dur ?? 0;
    const shapes = JSON.stringify((e.args?.input_type_shape ?? []).map((s) => Object.values(s)[0]));
    total += us;
    add(byOp, op, op, "", us);
    add(byShape, `${op} ${shapes}`, op, shapes, us);
  }
  const rows = (m: Map<string, ProfileRow>) =>
    [...m.values()].map((r) => ({ ...r, share: total ? r.us / total : 0 })).sort((a, b) => b.us - a.us);
  return {
    runs: runs.map((r) => r.dur ?? 0),
    counted: run === "all" ? runs.map((_, i) => i + 1) : [index],
    kernelUs: total,
    byOp: rows(byOp),
    byShape: rows(byShape),
  };
}

/** The summary as two Markdown tables (the `top` largest rows of each). */
export function renderProfile(s: ProfileSummary, top = 15): string {
  if (!(Number.isInteger(top) && top >= 1)) {
    throw new RangeError(`top must be a positive integer, got ${top}`);
  }
  const table = (rows: ProfileRow[], shapes: boolean) =>
    [
      `| op${shapes ? " | input shapes" : ""} | calls | ms | share |`,
      `|---${shapes ? "|---" : ""}|---:|---:|---:|`,
      ...rows.slice(0, top).map((r) =>
        `| ${r.op}${shapes ? ` | ${r.shapes}` : ""} | ${r.calls} | ${(r.us / 1000).toFixed(1)} | ${
          (100 * r.share).toFixed(1)
        }% |`
      ),
    ].join("\n");
  return [
    `Runs in the profile (wall ms): ${s.runs.map((u) => (u / 1000).toFixed(0)).join(", ")}; counted: run ${
      s.counted.join(", ")
    }; kernel time ${(s.kernelUs / 1000).toFixed(0)} ms.`,
    "",
    table(s.byOp, false),
    "",
    table(s.byShape, true),
  ].join("\n") + "\n";
}

if (import.meta.main) {
  const { parseArgs } = await import("node:util");
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { run: { type: "string" }, top: { type: "string" } },
  });
  if (positionals.length !== 1) {
    console.error("usage: deno run -A bench/profile_ops.ts PROFILE.json [--run=N|all] [--top=N]");
    Deno.exit(2);
  }
  try {
    const run = values.run === undefined ? -1 : values.run === "all" ? "all" : Number(values.run);
    const top = values.top === undefined ? 15 : Number(values.top);
    const s = summarizeProfile(JSON.parse(await Deno.readTextFile(positionals[0])), run);
    console.log(renderProfile(s, top));
  } catch (e) {
    console.error(`profile_ops: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
