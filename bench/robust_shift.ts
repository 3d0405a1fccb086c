/**
 * What one malicious client among 8 can shift (issue 12, "one client decides the aggregate"), with
 * and without each defence of server/robust.ts. In process: the Coordinator over an in-memory KV.
 *
 *   deno run -A --unstable-kv bench/robust_shift.ts [--n=4096] [--max-norm=10]
 *
 * Seven honest clients upload values near 0.01 (0.01 ± 0.001, seeded) with 500 samples each. The
 * attacker uploads the worst it can within the run's norm bound: every value of its mask at
 * +maxNorm/√popcount (any value beyond the honest ones moves a median or a trimmed mean the same,
 * and this one moves the mean most), and claims 1e9 samples (or the run's maxSamples). The shift is
 * the honest client 0's personalized slice minus the slice the same run gives without the attacker
 * (7 honest clients), so it is what the attacker alone moved: its mean over the slice, its largest
 * value, and the mean as a multiple of the honest value 0.01.
 *
 * Two layouts: FedIT (every mask dense: all 8 hold every position) and PerFIT masks (each client a
 * random N/4 of the positions, so a position has ~2 honest holders and the attacker on a quarter).
 */
import { Coordinator } from "../server/coordinator.ts";
import { InlineFolder } from "../server/folder.ts";
import { parseRunConfig } from "../server/run_config.ts";
import { maxSamplesOf } from "../server/robust.ts";
import { type DecodedUpdate, packMask, popcountBits } from "../runtime/client/wire.ts";
import { mulberry32 } from "../runtime/data/rng.ts";
import { loadAverages } from "./machine.ts";

function arg(name: string, dflt: number): number {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.split("=")[1]) : dflt;
}

const HONEST = 7;
const HONEST_SAMPLES = 500;
const CLAIM = 1e9;

interface Case {
  label: string;
  over: Record<string, unknown>;
}

const CASES: Case[] = [
  { label: "mean, weighting samples (main's default)", over: {} },
  { label: "mean, samples, maxSamples 1000", over: { maxSamples: 1000 } },
  { label: "mean, weighting equal", over: { weighting: "equal" } },
  {
    label: "clipped-mean clipNorm 1, equal",
    over: { weighting: "equal", aggregation: "clipped-mean", clipNorm: 1 },
  },
  {
    label: "clipped-mean clipNorm 1, samples, maxSamples 1000",
    over: { maxSamples: 1000, aggregation: "clipped-mean", clipNorm: 1 },
  },
  {
    label: "trimmed-mean trim 0.125, equal",
    over: { weighting: "equal", aggregation: "trimmed-mean", trim: 0.125 },
  },
  {
    label: "trimmed-mean trim 0.125, samples, maxSamples 1000",
    over: { maxSamples: 1000, aggregation: "trimmed-mean", trim: 0.125 },
  },
  { label: "median, equal", over: { weighting: "equal", aggregation: "median" } },
  { label: "median, samples (no cap)", over: { aggregation: "median" } },
  { label: "median, samples, maxSamples 1000", over: { maxSamples: 1000, aggregation: "median" } },
];

/** A mask of `k` seeded positions out of n (all of them when k = n). */
function mask(n: number, k: number, seed: number): Uint8Array {
  const m = new Uint8Array(n);
  if (k >= n) return m.fill(1);
  const rnd = mulberry32(seed);
  for (let got = 0; got < k;) {
    const p = Math.floor(rnd() * n);
    if (!m[p]) (m[p] = 1, got++);
  }
  return m;
}

function update(run: string, m: Uint8Array, value: (r: number) => number, samples: number): DecodedUpdate {
  const maskBits = packMask(m);
  const popcount = popcountBits(maskBits);
  const values = Float32Array.from({ length: popcount }, (_, r) => value(r));
  let sumSq = 0;
  for (const v of values) sumSq += v * v;
  return { run, round: 1, samples, metrics: {}, maskBits, values, popcount, sumSq };
}

/** Client 0's slice after one round of the honest clients, and of the attacker when `attack`. */
async function slice(
  layout: "fedit" | "perfit",
  n: number,
  maxNorm: number,
  over: Record<string, unknown>,
  attack: boolean,
): Promise<Float32Array> {
  const kv = await Deno.openKv(":memory:");
  const coord = new Coordinator(kv, Date.now, new InlineFolder());
  try {
    const k = HONEST + (attack ? 1 : 0);
    const budget = layout === "fedit" ? n : n / 4;
    const cfg = parseRunConfig({
      baseModel: "robust-shift",
      lora: { rank: 8, alpha: 16, targets: ["q", "v"] },
      method: layout,
      rounds: 1,
      clientsPerRound: k,
      quorum: k,
      roundDeadlineMs: 3_600_000,
      adapterSize: n,
      ...(layout === "perfit" ? { expansionTiers: { base: 1 }, budget } : {}),
      maxNorm,
      ...over,
    });
    const run = await coord.createRun(cfg);
    const ids: string[] = [];
    for (let i = 0; i < k; i++) ids.push((await coord.join(run.id, {})).id);
    for (let i = 0; i < HONEST; i++) {
      const rnd = mulberry32(100 + i);
      const u = update(
        run.id,
        mask(n, budget, 1 + i),
        () => Math.fround(0.01 + 0.002 * (rnd() - 0.5)),
        HONEST_SAMPLES,
      );
      await coord.upload(run.id, ids[i], 1, u, `h${i}`);
    }
    if (attack) {
      const m = mask(n, budget, 999);
      const c = Math.fround((maxNorm / Math.sqrt(popcountBits(packMask(m)))) * (1 - 1e-6));
      const claim = Math.min(CLAIM, maxSamplesOf(cfg));
      await coord.upload(run.id, ids[HONEST], 1, update(run.id, m, () => c, claim), "attacker");
    }
    await coord.settled();
    return (await coord.slice(run.id, ids[0])).values;
  } finally {
    await coord.close();
    kv.close();
  }
}

/** Runs every case on both layouts; returns a Markdown section. */
export async function run(): Promise<string> {
  const n = arg("n", 4096);
  const maxNorm = arg("max-norm", 10);
  const load0 = loadAverages();
  const lines: string[] = [
    `### One attacker among 8 (bench/robust_shift.ts)`,
    ``,
    `N = ${n}, maxNorm = ${maxNorm} (an honest update's norm is about ${
      (0.01 * Math.sqrt(n)).toFixed(2)
    } dense, ` +
    `${(0.01 * Math.sqrt(n / 4)).toFixed(2)} on an N/4 mask). 7 honest clients at 0.01 ± 0.001 with ` +
    `${HONEST_SAMPLES} samples; the attacker at +maxNorm/√popcount on its whole mask, claiming ${CLAIM} samples ` +
    `(capped to maxSamples where set). Shift: client 0's slice with the attacker minus without it.`,
    ``,
  ];
  for (const layout of ["fedit", "perfit"] as const) {
    lines.push(
      layout === "fedit"
        ? `**FedIT (dense: every client holds every position)**`
        : `**PerFIT masks (each client a random N/4; ~2 honest holders per position)**`,
      ``,
      `| rule | mean shift | max shift | mean shift / 0.01 |`,
      `| --- | --- | --- | --- |`,
    );
    for (const c of CASES) {
      const clean = await slice(layout, n, maxNorm, c.over, false);
      const hit = await slice(layout, n, maxNorm, c.over, true);
      let sum = 0;
      let max = 0;
      for (let i = 0; i < hit.length; i++) {
        const d = hit[i] - clean[i];
        sum += d;
        max = Math.max(max, Math.abs(d));
      }
      const mean = sum / hit.length;
      lines.push(
        `| ${c.label} | ${mean.toExponential(2)} | ${max.toExponential(2)} | ${(mean / 0.01).toFixed(3)}× |`,
      );
    }
    lines.push(``);
  }
  lines.push(`Load average before → after: ${load0} → ${loadAverages()}.`, ``);
  return lines.join("\n");
}

if (import.meta.main) console.log(await run());
