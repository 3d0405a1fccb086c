/**
 * Reading request bodies under a per-route byte limit and a read deadline, and parsing JSON ones.
 *
 * Memory grows with the bytes that actually arrived, never with what a `content-length` declares:
 * a client that declares 256 MiB and sends 10 bytes costs 64 KiB, not 256 MiB.
 *
 * The deadline is the slow-client defence. A body may take `timeoutMs` (the grace), plus one
 * second for every `minBytesPerSecond` bytes it has delivered so far, and may never go `timeoutMs`
 * without a byte. So an honest client sending at any pace at or above `minBytesPerSecond` (a phone on
 * a poor link) always finishes, however large its body, while a client that trickles, or sends most
 * of a body and stops, is answered 408 and its memory freed within `timeoutMs` of falling behind.
 */
import { ApiError, badRequest } from "./errors.ts";

/** How long a body may take (see the module comment). */
export interface BodyDeadline {
  /** Grace for any body, and the longest pause between two chunks, in ms. */
  timeoutMs: number;
  /** Each byte delivered extends the deadline by 1000 / minBytesPerSecond ms. */
  minBytesPerSecond: number;
}

/** Defaults of `ServerConfig.bodyTimeoutMs` and `ServerConfig.bodyMinBytesPerSecond`. */
export const DEFAULT_BODY_DEADLINE: BodyDeadline = { timeoutMs: 30_000, minBytesPerSecond: 8 * 1024 };

/** Options of `readBody`. */
export interface ReadBodyOptions {
  /** Read deadline; defaults to `DEFAULT_BODY_DEADLINE`. */
  deadline?: BodyDeadline;
  /**
   * Called with the size of each chunk before it is kept; throwing refuses the body (the caller's
   * budget of bytes being received, see app.ts).
   */
  onChunk?: (bytes: number) => void;
}

/** Chunks smaller than this, or not filling their own buffer, are copied into blocks of BLOCK_BYTES. */
const SMALL_CHUNK = 16 * 1024;
const BLOCK_BYTES = 64 * 1024;

/** The client stopped sending before its body was complete (the socket closed under the read). */
export class BodyAbortedError extends ApiError {
  constructor(readonly detail: string) {
    super(400, "body_aborted", "the request body was cut off before it was complete");
  }
}

/**
 * Reads the whole body, refusing (413) as soon as it exceeds `max` bytes, declared or streamed, and
 * (408) as soon as it falls behind its deadline.
 */
export async function readBody(req: Request, max: number, opts: ReadBodyOptions = {}): Promise<Uint8Array> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > max) {
    throw new ApiError(
      413,
      "body_too_large",
      `body of ${declared} bytes exceeds the ${max}-byte limit of this route`,
    );
  }
  if (!req.body) return new Uint8Array(0);
  const size = declared === null ? -1 : Number(declared);
  const exact = Number.isSafeInteger(size) && size >= 0;
  const cap = exact ? size : max;
  const { timeoutMs, minBytesPerSecond } = opts.deadline ?? DEFAULT_BODY_DEADLINE;
  const reader = req.body.getReader();

  const start = performance.now();
  let last = start;
  let total = 0;
  let timedOut = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const due = () => Math.min(last + timeoutMs, start + timeoutMs + (total * 1000) / minBytesPerSecond);
  const arm = () => {
    timer = setTimeout(() => {
      if (performance.now() < due()) return arm();
      timedOut = true;
      // Resolves the pending read with `done`; the loop below then answers 408.
      reader.cancel().catch(() => {});
    }, Math.max(1, due() - performance.now()));
  };
  arm();

  // What is held while a body arrives is what arrived, and an honest body costs one copy, as
  // before. A chunk that fills its own buffer (a full socket read) is kept as it came. A smaller one
  // is a view on Deno's 64 KiB read buffer, so keeping it would keep that buffer: a client sending
  // 10-byte chunks would pin 64 KiB per 10 bytes. Those are copied into blocks, one block filling
  // at a time. All of it is joined once at the end. (Copying every chunk into one buffer of the
  // declared size allocated that size up front; growing one buffer by doubling instead took twice
  // as long per 1.13 MiB body, in page faults.)
  const parts: Uint8Array[] = [];
  let block: Uint8Array | null = null;
  let used = 0;
  const endBlock = () => {
    if (block && used > 0) parts.push(block.subarray(0, used));
    block = null;
    used = 0;
  };
  const keep = (v: Uint8Array) => {
    if (v.byteOffset === 0 && v.byteLength === v.buffer.byteLength && v.byteLength >= SMALL_CHUNK) {
      endBlock();
      parts.push(v);
      return;
    }
    for (let o = 0; o < v.byteLength;) {
      // A block never outgrows what the body may still bring (a 100-byte JSON body gets 100 bytes).
      block ??= new Uint8Array(Math.min(BLOCK_BYTES, cap - total - o));
      const n = Math.min(v.byteLength - o, block.byteLength - used);
      block.set(v.subarray(o, o + n), used);
      used += n;
      o += n;
      if (used === block.byteLength) endBlock();
    }
  };
  try {
    for (;;) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        if (timedOut) break;
        throw new BodyAbortedError((e as Error)?.message ?? String(e));
      }
      if (r.done) break;
      const value = r.value;
      if (total + value.byteLength > cap) {
        await reader.cancel().catch(() => {});
        if (exact) throw badRequest("bad_length", `body is longer than its content-length of ${size} bytes`);
        throw new ApiError(413, "body_too_large", `body exceeds the ${max}-byte limit of this route`);
      }
      opts.onChunk?.(value.byteLength);
      last = performance.now();
      keep(value);
      total += value.byteLength;
    }
  } catch (e) {
    await reader.cancel().catch(() => {});
    throw e;
  } finally {
    clearTimeout(timer);
  }
  if (timedOut) {
    throw new ApiError(
      408,
      "body_timeout",
      `the body arrived too slowly (${total} bytes in ${Math.round(performance.now() - start)} ms; ` +
        `allowed: ${timeoutMs} ms plus 1 s per ${minBytesPerSecond} bytes, and no pause over ${timeoutMs} ms)`,
      { connection: "close" },
    );
  }
  if (exact && total !== size) {
    throw badRequest("bad_length", `body has ${total} of its declared ${size} bytes`);
  }
  endBlock();
  if (parts.length === 1) return parts[0];
  const whole = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    whole.set(p, o);
    o += p.byteLength;
  }
  return whole;
}

/** `application/json`, or `application/<x>+json`, with optional parameters (charset). */
const JSON_TYPE = /^application\/([\w.-]+\+)?json$/i;

/** True when the request declares a JSON body (Hono's validator recognizes the same media types). */
export function isJsonContentType(req: Request): boolean {
  const ct = req.headers.get("content-type");
  return ct !== null && JSON_TYPE.test(ct.split(";")[0].trim());
}

/**
 * Reads and parses a JSON body (empty body = `{}`) under `max` bytes. The request must say
 * `content-type: application/json` (415 otherwise): a browser sends a cross-site `text/plain` or form
 * POST without asking first, but a JSON one only after a CORS preflight that the origin must pass.
 */
export async function readJson(req: Request, max: number, opts: ReadBodyOptions = {}): Promise<unknown> {
  if (!isJsonContentType(req)) {
    throw new ApiError(
      415,
      "unsupported_media_type",
      `this route takes content-type: application/json, got ${
        JSON.stringify(req.headers.get("content-type")?.slice(0, 100) ?? null)
      }`,
    );
  }
  const bytes = await readBody(req, max, opts);
  if (bytes.byteLength === 0) return {};
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw badRequest("malformed_json", `body is not valid JSON: ${(e as Error).message}`);
  }
}
