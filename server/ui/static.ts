/**
 * Static file serving for the UI: safe path resolution (no escaping the served folder), content
 * types, and the cross-origin isolation headers ORT needs for WASM threads (SharedArrayBuffer).
 */

/** Headers that make a page cross-origin isolated (COOP + COEP) so ORT can use threads. */
export const ISOLATION_HEADERS: Record<string, string> = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
};

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  mjs: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  json: "application/json",
  map: "application/json",
  wasm: "application/wasm",
  txt: "text/plain; charset=utf-8",
  jsonl: "text/plain; charset=utf-8",
  md: "text/plain; charset=utf-8",
};

/** Content type by file extension (octet-stream when unknown). */
export function contentType(path: string): string {
  const ext = path.slice(path.lastIndexOf(".") + 1).toLowerCase();
  return TYPES[ext] ?? "application/octet-stream";
}

/**
 * Joins a request sub-path onto a folder, or returns null when the sub-path is empty, absolute,
 * has `..`/`.` segments, backslashes or NUL (anything that could leave the folder).
 */
export function safeJoin(dir: string, sub: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(sub);
  } catch {
    return null;
  }
  if (decoded === "" || decoded.startsWith("/") || decoded.includes("\\") || decoded.includes("\0")) {
    return null;
  }
  const parts = decoded.split("/");
  if (parts.some((p) => p === "" || p === "." || p === "..")) return null;
  return `${dir.replace(/\/+$/, "")}/${parts.join("/")}`;
}

/** Serves one file with isolation headers, or a 404 JSON error. */
export async function serveFile(path: string | null, extra: Record<string, string> = {}): Promise<Response> {
  const notFound = () =>
    new Response(JSON.stringify({ error: { code: "not_found", message: "no such file" } }), {
      status: 404,
      headers: { "content-type": "application/json", ...ISOLATION_HEADERS },
    });
  if (path === null) return notFound();
  try {
    const info = await Deno.stat(path);
    if (!info.isFile) return notFound();
    const file = await Deno.open(path, { read: true });
    return new Response(file.readable, {
      headers: {
        "content-type": contentType(path),
        "content-length": String(info.size),
        "cache-control": "no-cache",
        ...ISOLATION_HEADERS,
        ...extra,
      },
    });
  } catch {
    return notFound();
  }
}
