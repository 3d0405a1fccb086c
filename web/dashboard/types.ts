/**
 * The dashboard's data contract: what `GET /ui/api/dashboard` returns and the page plots. server/ui
 * fills it from the coordinator's state; the page never sees adapter values or client data.
 */

/** One round of a run. Times are epoch milliseconds. */
export interface RoundInfo {
  round: number;
  state: string;
  startedAt?: number;
  closedAt?: number;
  /** Accepted uploads. */
  uploads?: number;
}

/** One client's personalized perplexity on its own held-out data after a round. */
export interface PplPoint {
  round: number;
  ppl: number;
}

/** A client of a run. */
export interface ClientInfo {
  id: string;
  tier?: number;
  ppl: PplPoint[];
}

/** Pairwise Jaccard overlap of the clients' masks (symmetric, 1 on the diagonal). */
export interface OverlapMatrix {
  clients: string[];
  jaccard: number[][];
}

/** How many budget positions each client keeps in each group ("L0.q", ...). */
export interface BudgetSpread {
  clients: string[];
  groups: string[];
  /** counts[c][g]: kept positions of client c in group g. */
  counts: number[][];
}

/**
 * What a run's numbers depend on besides its method: runs are compared only when these match (the
 * same base model, LoRA shape, rounds and training settings, trained by clients of the same names).
 */
export interface RunSetting {
  baseModel: string;
  lora: { rank: number; alpha: number; targets: string[] };
  rounds: number;
  train: Record<string, unknown>;
  /** Names of the clients that joined, sorted. */
  clients: string[];
}

/** One federated run. */
export interface RunInfo {
  id: string;
  method: string;
  state: string;
  createdAt?: number;
  totalRounds?: number;
  /** Its data/setting fingerprint's parts (absent from sources that do not know them). */
  setting?: RunSetting;
  rounds: RoundInfo[];
  clients: ClientInfo[];
  overlap?: OverlapMatrix;
  budget?: BudgetSpread;
}

/** The whole dashboard payload. */
export interface DashboardData {
  generatedAt: number;
  runs: RunInfo[];
}
