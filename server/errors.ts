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

/** 503 for a commit that lost a race (another instance) or a KV failure: the client retries. */
export class RetryableError extends Error {
  override name = "RetryableError";
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
/** 429: slow down (`retry-after` seconds). */
export const tooMany = (code: string, msg: string, retryAfterS = 1): ApiError =>
  new ApiError(429, code, msg, { "retry-after": String(retryAfterS) });

/**
 * Server-side log lines that may repeat on every request (a KV that refuses a value, say): each
 * distinct line is written once, then at most once per `everyMs` with how often it recurred since,
 * so a failure that lasts cannot flood the log. The client only ever sees a generic message.
 */
export class ThrottledLog {
  private seen = new Map<string, { at: number; repeats: number }>();

  constructor(
    private readonly write: (line: string) => void = (l) => console.error(l),
    private readonly everyMs = 60_000,
    private readonly now: () => number = Date.now,
    private readonly maxKeys = 1000,
  ) {}

  /** Logs `line` unless the same line was logged less than `everyMs` ago. */
  log(line: string): void {
    const t = this.now();
    const s = this.seen.get(line);
    if (s && t - s.at < this.everyMs) {
      s.repeats++;
      return;
    }
    if (!s && this.seen.size >= this.maxKeys) this.seen.delete(this.seen.keys().next().value!);
    this.seen.set(line, { at: t, repeats: 0 });
    this.write(s && s.repeats > 0 ? `${line} (and ${s.repeats} more times since)` : line);
  }
}
