/**
 * What the dashboard says in words when it has no chart to draw: how to create the first run (the
 * admin CLI, and the same request with curl), and why a refresh failed (a missing or wrong token
 * reads as a sentence, not as the server's JSON). Pure, so the commands and sentences are tested.
 */

/** What `GET /ui/api/info` tells the pages (the fields used here). */
export interface UiInfo {
  /** Where the coordinator serves its base model folder to browsers (null: it serves none). */
  modelUrl: string | null;
  /** The base model's name (null: not configured). */
  baseModel: string | null;
}

/** The bundled model folder of a checkout (the admin CLI's default `--model`). */
export const BUNDLED_MODEL_DIR = "models/perfit-tiny";

/**
 * The two ways to create a first PerFIT run on this coordinator, as commands to paste in a shell
 * where `PERFIT_ADMIN_TOKEN` holds the admin token (the admin CLI reads it from there too).
 */
export function createRunCommands(origin: string, info: UiInfo): { admin: string; curl: string } {
  const base = info.baseModel ?? "perfit-tiny";
  const admin = `deno task admin create --server ${origin} \\\n` +
    `  --model ${BUNDLED_MODEL_DIR} --method perfit --rounds 4 --clients-per-round 2`;
  // The adapter size and budget come from the model's config.json, sent as `model`: the one this
  // coordinator serves to browser clients, or the bundled one of a checkout.
  const config = info.modelUrl
    ? `curl -sS ${new URL(`${info.modelUrl.replace(/\/$/, "")}/config.json`, origin).href}`
    : `cat ${BUNDLED_MODEL_DIR}/config.json`;
  const body = JSON.stringify({
    baseModel: base,
    method: "perfit",
    rounds: 4,
    clientsPerRound: 2,
    roundDeadlineMs: 600_000,
    lora: { rank: 4, alpha: 8, targets: ["q", "v"] },
    expansionTiers: { low: 1, mid: 2, high: 4 },
  }).slice(0, -1).replaceAll("'", "'\\''");
  const curl = `curl -sS -X POST ${origin}/v1/runs \\\n` +
    `  -H "authorization: Bearer $PERFIT_ADMIN_TOKEN" -H "content-type: application/json" \\\n` +
    `  -d '${body},"model":'"$(${config})"'}'`;
  return { admin, curl };
}

/** Why a dashboard refresh failed, as a sentence (`kind` is set on the page for tests and styles). */
export function refreshErrorText(
  status: number,
  body: string,
  hasToken: boolean,
): { kind: "unauthorized" | "error"; text: string } {
  if (status === 401 || status === 403) {
    return {
      kind: "unauthorized",
      text: hasToken
        ? "This dashboard's token is not the one this coordinator expects: open the dashboard URL " +
          "printed by deno task serve (it ends in ?token=…)."
        : "This dashboard needs its token: open the URL printed by deno task serve " +
          "(“dashboard: http://…/dashboard?token=…”).",
    };
  }
  let message = body.trim();
  try {
    const j = JSON.parse(body);
    if (typeof j?.error?.message === "string") message = j.error.message;
  } catch { /* not JSON: show the text */ }
  if (message.length > 200) message = `${message.slice(0, 200)}…`;
  return { kind: "error", text: `Refresh failed (HTTP ${status})${message ? `: ${message}` : ""}` };
}
