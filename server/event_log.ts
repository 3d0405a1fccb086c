/**
 * What the coordinator says it does: one line per event, with figures, as text for people or JSON
 * for machines (`deno task serve --log json`). Events that come by the thousand are summarised
 * instead of printed one by one: accepted uploads as a running count per round at most once per
 * interval, refusals as counts per reason per interval.
 */

import type { ClientRecord, RoundRecord, RunRecord } from "./records.ts";

/** Something the coordinator did. */
export type CoordinatorEvent =
  | { kind: "run_created"; run: string; method: string; rounds: number; clientsPerRound: number }
  | { kind: "joined"; run: string; client: string; tier: string; expansion: number }
  | { kind: "round_opened"; run: string; round: number }
  | { kind: "accepted"; run: string; round: number; accepted: number; clientsPerRound: number }
  | { kind: "round_closed"; run: string; round: number; clients: number; samples: number; seconds: number }
  | { kind: "run_finished"; run: string; rounds: number }
  | { kind: "run_cancelled"; run: string; round: number }
  | { kind: "run_deleted"; run: string }
  | { kind: "refused"; status: number; code: string };

/** The events of a new run: created, and its first round open. */
export function runCreated(run: RunRecord): CoordinatorEvent[] {
  const c = run.config;
  return [
    {
      kind: "run_created",
      run: run.id,
      method: c.method,
      rounds: c.rounds,
      clientsPerRound: c.clientsPerRound,
    },
    { kind: "round_opened", run: run.id, round: run.round },
  ];
}

/** A client joined. */
export const joined = (c: ClientRecord): CoordinatorEvent => ({
  kind: "joined",
  run: c.run,
  client: c.id,
  tier: c.tier,
  expansion: c.expansion,
});

/** The running count of a round's accepted uploads (every instance's, as this one last counted). */
export const accepted = (run: RunRecord, round: RoundRecord, count: number): CoordinatorEvent => ({
  kind: "accepted",
  run: run.id,
  round: round.index,
  accepted: count,
  clientsPerRound: run.config.clientsPerRound,
});

/** Where events go. */
export interface EventLog {
  emit(e: CoordinatorEvent): void;
  /** Prints what is still summarised and stops the timer. */
  close(): void;
}

/** Drops every event (tests, embedded uses). */
export const silentLog: EventLog = { emit: () => {}, close: () => {} };

/** One event as a text line. */
export function formatEvent(e: CoordinatorEvent | RefusalSummary | AcceptedSummary): string {
  switch (e.kind) {
    case "run_created":
      return `run ${e.run} created: ${e.method}, ${e.rounds} rounds, ${e.clientsPerRound} clients per round`;
    case "joined":
      return `run ${e.run}: client ${e.client} joined (tier ${e.tier}, x${e.expansion})`;
    case "round_opened":
      return `run ${e.run}: round ${e.round} opened`;
    case "accepted":
      return `run ${e.run}: round ${e.round}: ${e.accepted}/${e.clientsPerRound} uploads accepted`;
    case "round_closed":
      return `run ${e.run}: round ${e.round} closed: ${e.clients} clients, ${e.samples} samples, ${
        e.seconds.toFixed(1)
      } s`;
    case "run_finished":
      return `run ${e.run} finished after ${e.rounds} rounds`;
    case "run_cancelled":
      return `run ${e.run} cancelled by the admin in round ${e.round}`;
    case "run_deleted":
      return `run ${e.run} deleted by the admin`;
    case "refusals":
      return `refused in the last ${e.seconds.toFixed(0)} s: ${
        Object.entries(e.counts).sort((a, b) => b[1] - a[1]).map(([k, n]) => `${n} x ${k}`).join(", ")
      }`;
    case "refused":
      return `refused: ${e.status} ${e.code}`;
  }
}

/** Refusals of one interval, counted by "status code". */
export interface RefusalSummary {
  kind: "refusals";
  seconds: number;
  counts: Record<string, number>;
}

type AcceptedSummary = Extract<CoordinatorEvent, { kind: "accepted" }>;

/** Writes events as lines (text or JSON) through `write`, summarising the frequent ones. */
export class LineLog implements EventLog {
  private refusals = new Map<string, number>();
  private accepted = new Map<string, AcceptedSummary>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private since: number;

  constructor(
    private readonly format: "text" | "json",
    private readonly write: (line: string) => void = (l) => console.log(l),
    private readonly intervalMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {
    this.since = now();
  }

  emit(e: CoordinatorEvent): void {
    if (e.kind === "refused") {
      const key = `${e.status} ${e.code}`;
      this.refusals.set(key, (this.refusals.get(key) ?? 0) + 1);
      this.arm();
      return;
    }
    if (e.kind === "accepted") {
      this.accepted.set(`${e.run}/${e.round}`, e);
      this.arm();
      return;
    }
    // A round's last count comes before its close, so the close line is never ahead of it.
    if (e.kind === "round_closed") this.flushAccepted(`${e.run}/${e.round}`);
    this.print(e);
  }

  /** Prints the summaries now (the timer calls it; so do tests and `close`). */
  flush(): void {
    this.flushAccepted();
    if (this.refusals.size > 0) {
      const counts = Object.fromEntries(this.refusals);
      this.refusals.clear();
      this.print({ kind: "refusals", seconds: (this.now() - this.since) / 1000, counts });
    }
    this.since = this.now();
  }

  close(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.flush();
  }

  private flushAccepted(only?: string): void {
    for (const [k, e] of this.accepted) {
      if (only !== undefined && k !== only) continue;
      this.accepted.delete(k);
      this.print(e);
    }
  }

  private arm(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, this.intervalMs);
    // A pending summary must not keep a finished process alive.
    Deno.unrefTimer?.(this.timer as unknown as number);
  }

  private print(e: CoordinatorEvent | RefusalSummary): void {
    this.write(
      this.format === "json"
        ? JSON.stringify({ time: new Date(this.now()).toISOString(), ...e })
        : formatEvent(e),
    );
  }
}
