/**
 * How any error thrown by a route becomes the client's answer: our refusals (ApiError, WireError) as
 * their status and code, transient KV trouble as a generic 503 retry (its detail goes to the
 * operator's log, throttled), anything else as a 500 that leaks nothing.
 */
import type { Context } from "../runtime/deps.ts";
import { ApiError, type ThrottledLog } from "./errors.ts";
import { BodyAbortedError } from "./body.ts";
import { RetryableError } from "./run_state.ts";
import { WireError } from "../runtime/client/wire.ts";
import type { EventLog } from "./event_log.ts";

/** The answer to `err` (and the refusal it counts in the event log). */
export function errorAnswer(err: unknown, c: Context, events: EventLog, log503: ThrottledLog): Response {
  if (err instanceof BodyAbortedError) {
    // The client is gone; one line, not a stack trace per dropped connection.
    console.warn(`perfit server: ${c.req.method} ${c.req.path}: body cut off by the client (${err.detail})`);
  }
  if (err instanceof ApiError || err instanceof WireError) {
    events.emit({ kind: "refused", status: err.status, code: err.code });
  }
  if (err instanceof ApiError) {
    for (const [k, v] of Object.entries(err.headers)) c.header(k, v);
    return c.json({ error: { code: err.code, message: err.message } }, err.status as 400);
  }
  if (err instanceof WireError) {
    return c.json({ error: { code: err.code, message: err.message } }, err.status);
  }
  // SQLite busy (two processes on one KV file) is transient: the client should retry. The detail
  // (KV's own text, ids, sizes) is for the operator's log, not for the client.
  if (err instanceof RetryableError || /database is locked/.test(String((err as Error)?.message))) {
    log503.log(`perfit server: answered 503 retry: ${(err as Error)?.message ?? err}`);
    c.header("retry-after", "1");
    return c.json({ error: { code: "retry", message: "temporarily unavailable, retry shortly" } }, 503);
  }
  console.error("perfit server: unhandled error", err);
  return c.json({ error: { code: "internal", message: "internal error" } }, 500);
}
