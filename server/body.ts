/** Reading request bodies under a per-route byte limit, and parsing JSON ones. */
import { ApiError, badRequest } from "./errors.ts";

/** Reads the whole body, refusing (413) as soon as it exceeds `max` bytes, declared or streamed. */
export async function readBody(req: Request, max: number): Promise<Uint8Array> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > max) {
    throw new ApiError(
      413,
      "body_too_large",
      `body of ${declared} bytes exceeds the ${max}-byte limit of this route`,
    );
  }
  if (!req.body) return new Uint8Array(0);
  const reader = req.body.getReader();
  // With a declared length, chunks are copied straight into a buffer of that size. Deno's
  // `arrayBuffer()` was ~0.15 ms cheaper per 1.13 MiB body, but with 128 uploads in flight the
  // server's peak memory was 817 MiB against 452 MiB this way (a bare Deno.serve, same load).
  const size = declared === null ? -1 : Number(declared);
  if (Number.isSafeInteger(size) && size >= 0) {
    const out = new Uint8Array(size);
    let o = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (o + value.byteLength > size) {
        await reader.cancel().catch(() => {});
        throw badRequest("bad_length", `body is longer than its content-length of ${size} bytes`);
      }
      out.set(value, o);
      o += value.byteLength;
    }
    if (o !== size) throw badRequest("bad_length", `body has ${o} of its declared ${size} bytes`);
    return out;
  }
  const parts: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > max) {
      await reader.cancel().catch(() => {});
      throw new ApiError(413, "body_too_large", `body exceeds the ${max}-byte limit of this route`);
    }
    parts.push(value);
  }
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

/** Reads and parses a JSON body (empty body = `{}`) under `max` bytes. */
export async function readJson(req: Request, max: number): Promise<unknown> {
  const bytes = await readBody(req, max);
  if (bytes.byteLength === 0) return {};
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw badRequest("malformed_json", `body is not valid JSON: ${(e as Error).message}`);
  }
}
