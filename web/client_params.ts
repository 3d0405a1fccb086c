/** The client page's URL parameters that are not form fields, parsed without a browser (tested in Deno). */

/** Engine options a page URL may set. */
export interface EngineParams {
  checkpoint?: boolean;
  weightMode?: "inputs" | "constants";
}

/** `checkpoint=1|0|true|false` and `weightMode=inputs|constants`; a bad value is refused, not ignored. */
export function engineParamsOf(params: URLSearchParams): EngineParams {
  const out: EngineParams = {};
  const c = params.get("checkpoint");
  if (c !== null) {
    if (!["1", "true", "0", "false"].includes(c)) throw new Error(`checkpoint must be 1 or 0, got "${c}"`);
    out.checkpoint = c === "1" || c === "true";
  }
  const w = params.get("weightMode");
  if (w !== null) {
    if (w !== "inputs" && w !== "constants") {
      throw new Error(`weightMode must be inputs or constants, got "${w}"`);
    }
    out.weightMode = w;
  }
  return out;
}
