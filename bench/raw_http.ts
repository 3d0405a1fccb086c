/**
 * A minimal keep-alive HTTP/1.1 client over `Deno.connect`, for load generation only.
 *
 * Why not `fetch`: on the 2-core bench machine the load generator shares the CPU with the server it
 * measures, and `fetch` spends ~2 ms of CPU per 1.13 MiB upload (request/response objects, body
 * streams) against ~0.3 ms here. Whatever the generator burns is taken from the server's cores, so a
 * lean generator measures the server, not the generator. It speaks only what the benchmark sends:
 * one request at a time per connection, `Content-Length` bodies, no chunked encoding in requests.
 */

const enc = new TextEncoder();
const dec = new TextDecoder();

/** One response: status, lower-cased headers, body text. */
export interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: string;
}

/** A single persistent connection; requests on it are sequential. */
export class RawHttpConnection {
  private buf = new Uint8Array(64 * 1024);
  private len = 0;

  private constructor(private conn: Deno.TcpConn, private readonly host: string) {}

  static async open(url: string): Promise<RawHttpConnection> {
    const u = new URL(url);
    const conn = await Deno.connect({ hostname: u.hostname, port: Number(u.port || 80) });
    conn.setNoDelay(true);
    return new RawHttpConnection(conn, u.host);
  }

  /** Sends one request and reads its whole response. */
  async request(
    method: string,
    path: string,
    headers: Record<string, string>,
    body?: Uint8Array,
  ): Promise<RawResponse> {
    let head = `${method} ${path} HTTP/1.1\r\nhost: ${this.host}\r\n`;
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    head += `content-length: ${body?.byteLength ?? 0}\r\n\r\n`;
    await this.writeAll(enc.encode(head));
    if (body && body.byteLength > 0) await this.writeAll(body);
    return await this.readResponse();
  }

  close(): void {
    try {
      this.conn.close();
    } catch { /* already closed */ }
  }

  private async writeAll(b: Uint8Array): Promise<void> {
    let off = 0;
    while (off < b.byteLength) off += await this.conn.write(b.subarray(off));
  }

  /** Reads more bytes into the buffer; throws on EOF. */
  private async fill(): Promise<void> {
    if (this.len === this.buf.byteLength) {
      const bigger = new Uint8Array(this.buf.byteLength * 2);
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    const n = await this.conn.read(this.buf.subarray(this.len));
    if (n === null) throw new Error("connection closed by server");
    this.len += n;
  }

  private consume(n: number): void {
    this.buf.copyWithin(0, n, this.len);
    this.len -= n;
  }

  private async readResponse(): Promise<RawResponse> {
    let end = -1;
    for (;;) {
      end = indexOfCrlfCrlf(this.buf, this.len);
      if (end >= 0) break;
      await this.fill();
    }
    const lines = dec.decode(this.buf.subarray(0, end)).split("\r\n");
    this.consume(end + 4);
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
    if (!m) throw new Error(`bad status line: ${lines[0]}`);
    const headers = new Map<string, string>();
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      if (i > 0) headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
    }
    let body = "";
    if (headers.get("transfer-encoding")?.toLowerCase() === "chunked") {
      body = await this.readChunked();
    } else {
      const n = Number(headers.get("content-length") ?? 0);
      while (this.len < n) await this.fill();
      body = dec.decode(this.buf.subarray(0, n));
      this.consume(n);
    }
    return { status: Number(m[1]), headers, body };
  }

  private async readChunked(): Promise<string> {
    let out = "";
    for (;;) {
      let end: number;
      while ((end = indexOfCrlf(this.buf, this.len)) < 0) await this.fill();
      const size = parseInt(dec.decode(this.buf.subarray(0, end)), 16);
      this.consume(end + 2);
      while (this.len < size + 2) await this.fill();
      out += dec.decode(this.buf.subarray(0, size));
      this.consume(size + 2);
      if (size === 0) return out;
    }
  }
}

function indexOfCrlfCrlf(b: Uint8Array, len: number): number {
  for (let i = 0; i + 3 < len; i++) {
    if (b[i] === 13 && b[i + 1] === 10 && b[i + 2] === 13 && b[i + 3] === 10) return i;
  }
  return -1;
}

function indexOfCrlf(b: Uint8Array, len: number): number {
  for (let i = 0; i + 1 < len; i++) if (b[i] === 13 && b[i + 1] === 10) return i;
  return -1;
}
