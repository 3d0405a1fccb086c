/** Fixtures of the server_hardening tests: a loopback server, raw TCP writers, joins, uploads, log capture. */
import assert from "node:assert/strict";
import type { PerfitApp } from "../server/app.ts";
import { encodeUpdate } from "../runtime/client/wire.ts";
import { fakeMask } from "./server_helpers.ts";

export const JSON_HEADERS = { "content-type": "application/json" };

/** `app` on a real loopback socket. */
export function serve(app: PerfitApp): { url: string; port: number; server: Deno.HttpServer<Deno.NetAddr> } {
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, app.fetch);
  return { url: `http://127.0.0.1:${server.addr.port}`, port: server.addr.port, server };
}

/** A joined client. */
export interface Joined {
  run: string;
  id: string;
  token: string;
}

/** Joins `run` through the app. */
export async function join(app: PerfitApp, run: string): Promise<Joined> {
  const r = await app.request(`/v1/runs/${run}/join`, { method: "POST", headers: JSON_HEADERS, body: "{}" });
  assert.equal(r.status, 201, await r.clone().text());
  const j = await r.json();
  return { run, id: j.clientId, token: j.token };
}

/** A valid round-`round` upload body of a `runBody("perfit")` run (N 1000, budget 300). */
export function updateBody(run: string, round = 1, idx = 0): Uint8Array {
  return encodeUpdate({
    run,
    round,
    samples: 3,
    values: new Float32Array(1000).fill(0.01),
    mask: fakeMask(idx, 1000, 300, false),
    metrics: { loss: 1 },
  });
}

/** The path of a client's upload. */
export const updatePath = (c: Joined, round = 1): string =>
  `/v1/runs/${c.run}/clients/${c.id}/rounds/${round}/update`;

/** Posts an upload through `request` (an app's `request`, or fetch on a server URL). */
export async function upload(
  request: (path: string, init: RequestInit) => Response | Promise<Response>,
  c: Joined,
  body: Uint8Array = updateBody(c.run),
  round = 1,
): Promise<Response> {
  return await request(updatePath(c, round), {
    method: "POST",
    headers: { authorization: `Bearer ${c.token}`, "content-type": "application/octet-stream" },
    body: body as Uint8Array<ArrayBuffer>,
  });
}

/** A parsed HTTP/1.1 response read off a raw socket. */
export interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/** A raw TCP request whose body the test writes (or stops writing) itself. */
export interface RawRequest {
  conn: Deno.TcpConn;
  /** The response, read by its content-length (the server need not close the socket). */
  response(): Promise<RawResponse>;
  close(): void;
}

/** Opens a socket and sends the request head and `first` body bytes of a declared `length`. */
export async function rawPost(
  port: number,
  path: string,
  headers: Record<string, string>,
  length: number,
  first: Uint8Array,
): Promise<RawRequest> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const head = [
    `POST ${path} HTTP/1.1`,
    "host: 127.0.0.1",
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    `content-length: ${length}`,
    "",
    "",
  ].join("\r\n");
  await conn.write(new TextEncoder().encode(head));
  if (first.length > 0) await conn.write(first);
  let closed = false;
  return {
    conn,
    close() {
      if (!closed) conn.close();
      closed = true;
    },
    async response() {
      const dec = new TextDecoder();
      let text = "";
      const buf = new Uint8Array(16 * 1024);
      for (;;) {
        const end = text.indexOf("\r\n\r\n");
        if (end >= 0) {
          const [status, ...lines] = text.slice(0, end).split("\r\n");
          const hs = new Map(lines.map((l) => {
            const i = l.indexOf(":");
            return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()] as [string, string];
          }));
          const want = Number(hs.get("content-length") ?? 0);
          if (text.length - end - 4 >= want) {
            return {
              status: Number(status.split(" ")[1]),
              headers: hs,
              body: text.slice(end + 4, end + 4 + want),
            };
          }
        }
        const n = await conn.read(buf);
        if (n === null) throw new Error(`socket closed before a whole response: ${JSON.stringify(text)}`);
        text += dec.decode(buf.subarray(0, n));
      }
    },
  };
}

/** A raw upload of client `c` declaring `length` bytes and sending only `sent` of them. */
export function rawUpload(port: number, c: Joined, length: number, sent: number): Promise<RawRequest> {
  return rawPost(
    port,
    updatePath(c),
    { authorization: `Bearer ${c.token}`, "content-type": "application/octet-stream" },
    length,
    new Uint8Array(sent).fill(7),
  );
}

/** Polls a condition the code reports (every 5 ms) and fails after `ms` without it. */
export async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const t0 = performance.now();
  while (!cond()) {
    if (performance.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** `p`, or a rejection naming `what` if it takes longer than `ms` (the bound of a test that would hang). */
export async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Records what `console.warn`/`console.error` print while `f` runs (and prints nothing itself). */
export async function captureLogs<T>(f: (lines: string[]) => Promise<T>): Promise<T> {
  const lines: string[] = [];
  const { warn, error } = console;
  const grab = (...args: unknown[]) => {
    lines.push(
      args.map((a) => (a instanceof Error ? `${a.name}: ${a.message}\n${a.stack}` : String(a))).join(" "),
    );
  };
  console.warn = grab;
  console.error = grab;
  try {
    return await f(lines);
  } finally {
    console.warn = warn;
    console.error = error;
  }
}
