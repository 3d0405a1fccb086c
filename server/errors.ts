/**
 * One error type for every refusal the API makes, so each route answers with the same JSON shape
 * `{error: {code, message}}` and a 4xx/5xx status instead of leaking stack traces.
 */

/** A refusal with an HTTP status and a stable machine-readable code. */
export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** 400: the request is syntactically broken (JSON, safetensors, parameters). */
export const badRequest = (code: string, msg: string): ApiError => new ApiError(400, code, msg);
/** 422: well-formed but semantically invalid (shapes, NaN, budget, norm). */
export const invalid = (code: string, msg: string): ApiError => new ApiError(422, code, msg);
/** 401: no or unverifiable credentials. */
export const unauthorized = (msg = "missing or invalid token"): ApiError =>
  new ApiError(401, "unauthorized", msg);
/** 403: valid credentials, wrong resource. */
export const forbidden = (msg: string): ApiError => new ApiError(403, "forbidden", msg);
/** 404: unknown run/client/route. */
export const notFound = (msg: string): ApiError => new ApiError(404, "not_found", msg);
/** 409: conflicts with the current state (round not open yet, a different update already accepted). */
export const conflict = (code: string, msg: string): ApiError => new ApiError(409, code, msg);
/** 410: the round this request targets is closed for good. */
export const gone = (code: string, msg: string): ApiError => new ApiError(410, code, msg);
