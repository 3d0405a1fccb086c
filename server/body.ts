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
  // With a declared length the HTTP layer enforces the framing, so one native read is safe and
  // avoids reassembling dozens of stream chunks.
  if (declared !== null) {
    const buf = new Uint8Array(await req.arrayBuffer());
    if (buf.byteLength > max) {
      throw new ApiError(413, "body_too_large", `body exceeds the ${max}-byte limit of this route`);
    }
    return buf;
  }
  const reader = req.body.getReader();
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
