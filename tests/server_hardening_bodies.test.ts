/**
 * Slow and lying upload bodies (issue 12, bug 2): over real loopback sockets, with raw TCP writers
 * that declare a length and stop sending. A slow body must cost only its own request: no permit
 * held while it arrives, one upload per client, a read deadline that scales with what arrives, and
 * memory that grows with the bytes received rather than the bytes declared.
 */
import assert from "node:assert/strict";
import { readBody } from "../server/body.ts";
import { ApiError } from "../server/errors.ts";
import { createRun, makeApp, runBody } from "./server_helpers.ts";
import {
  captureLogs,
  join,
  rawUpload,
  serve,
  until,
  updateBody,
  upload,
  within,
} from "./server_hardening_util.ts";

Deno.test("server hardening: eight slow upload bodies do not stall another client's upload to another run", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv); // the defaults: 8 upload permits, a 30 s body deadline
  const attacked = await createRun(app, runBody("perfit", { clientsPerRound: 16, quorum: 16 }));
  const other = await createRun(app, runBody("perfit"));
  const attackers = await Promise.all(Array.from({ length: 8 }, () => join(app, attacked)));
  const honest = await join(app, other);
  const srv = serve(app);
  await captureLogs(async () => {
    const slow = await Promise.all(attackers.map((a) => rawUpload(srv.port, a, 60_000, 10)));
    try {
      await until(() => app.uploadStats().receiving === 8, "the 8 slow bodies are being received");
      const res = await within(
        10_000,
        "the honest upload while 8 bodies stall",
        upload((p, init) => fetch(`${srv.url}${p}`, init), honest),
      );
      assert.equal(res.status, 201, await res.text());
      assert.equal(
        app.uploadStats().receiving,
        8,
        "the slow bodies are still open: the honest upload did not wait for their deadline",
      );
      assert.ok(app.uploadStats().bytes <= 8 * 60_000, "at most what the slow bodies sent is held");
    } finally {
      for (const s of slow) s.close();
    }
    await until(() => app.uploadStats().receiving === 0, "the aborted bodies are released");
  });
  await srv.server.shutdown();
  await app.close();
  kv.close();
});

Deno.test("server hardening: a client has one upload in flight (429 upload_in_flight), and an aborted one frees its slot", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const run = await createRun(app, runBody("perfit"));
  const a = await join(app, run);
  const b = await join(app, run);
  const srv = serve(app);
  const request = (p: string, init: RequestInit) => fetch(`${srv.url}${p}`, init);
  await captureLogs(async () => {
    const slow = await rawUpload(srv.port, a, 60_000, 10);
    await until(() => app.uploadStats().receiving === 1, "a's slow body is being received");
    const second = await within(10_000, "a's second upload", upload(request, a));
    assert.equal(second.status, 429);
    assert.equal((await second.json()).error.code, "upload_in_flight");
    assert.equal(second.headers.get("retry-after"), "1");
    const fromB = await within(10_000, "b's upload", upload(request, b));
    assert.equal(fromB.status, 201, "another client of the same run is not held up");
    await fromB.body?.cancel();
    slow.close();
    await until(() => app.uploadStats().receiving === 0, "a's aborted body is released");
    const again = await within(10_000, "a's upload after the abort", upload(request, a));
    assert.equal(again.status, 201, await again.text());
    assert.equal(app.uploadStats().bytes, 0, "no bytes are held once every body is done");
  });
  await srv.server.shutdown();
  await app.close();
  kv.close();
});

Deno.test("server hardening: each aborted upload logs one line, with no stack trace", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const run = await createRun(app, runBody("perfit"));
  const clients = await Promise.all([0, 1, 2].map(() => join(app, run)));
  const srv = serve(app);
  await captureLogs(async (lines) => {
    for (const [i, c] of clients.entries()) {
      const slow = await rawUpload(srv.port, c, 60_000, 10);
      await until(() => app.uploadStats().receiving === 1, "the body is being received");
      slow.close();
      await until(() => app.uploadStats().receiving === 0, "the aborted body is released");
      await until(() => lines.length > i, "the abort is logged");
    }
    assert.equal(lines.length, 3, `one line per aborted upload: ${JSON.stringify(lines)}`);
    for (const [i, l] of lines.entries()) {
      assert.match(l, /body cut off by the client/);
      assert.ok(l.includes(clients[i].id), "the line names the upload");
      assert.ok(!l.includes("\n"), `one line, no stack trace: ${JSON.stringify(l)}`);
    }
  });
  await srv.server.shutdown();
  await app.close();
  kv.close();
});

Deno.test("server hardening: upload bytes held at once are capped (503 server_busy); a body larger than the cap passes alone", async () => {
  const kv = await Deno.openKv(":memory:");
  const body = updateBody("placeholder");
  const app = makeApp(kv, { maxReceivingBytes: 20_000 + Math.floor(body.length / 2) });
  const run = await createRun(app, runBody("perfit"));
  const [a, b] = [await join(app, run), await join(app, run)];
  const srv = serve(app);
  const request = (p: string, init: RequestInit) => fetch(`${srv.url}${p}`, init);
  await captureLogs(async () => {
    const slow = await rawUpload(srv.port, a, 60_000, 20_000);
    await until(() => app.uploadStats().bytes === 20_000, "a's 20 000 bytes are held");
    const busy = await within(10_000, "b's upload while the budget is held", upload(request, b));
    assert.equal(busy.status, 503);
    assert.equal(busy.headers.get("retry-after"), "1");
    assert.equal((await busy.json()).error.code, "server_busy");
    assert.equal(app.uploadStats().bytes, 20_000, "the refused upload gave its bytes back");
    slow.close();
    await until(() => app.uploadStats().bytes === 0, "a's bytes are given back");
    const ok = await within(10_000, "b's upload afterwards", upload(request, b));
    assert.equal(ok.status, 201, await ok.text());
  });
  await srv.server.shutdown();
  await app.close();
  // One body larger than the whole budget still passes when nothing else is held.
  const tiny = makeApp(kv, { maxReceivingBytes: 100 });
  const run2 = await createRun(tiny, runBody("perfit"));
  const c = await join(tiny, run2);
  const alone = await upload((p, init) => tiny.request(p, init), c);
  assert.equal(alone.status, 201, await alone.text());
  await tiny.close();
  kv.close();
});

Deno.test("server hardening: a body that stalls past its deadline is answered 408 body_timeout, and the client may upload again", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv, { bodyTimeoutMs: 300 });
  const run = await createRun(app, runBody("perfit"));
  const a = await join(app, run);
  const srv = serve(app);
  const slow = await rawUpload(srv.port, a, 60_000, 10);
  try {
    const res = await within(10_000, "the stalled body's answer", slow.response());
    assert.equal(res.status, 408, res.body);
    assert.equal(JSON.parse(res.body).error.code, "body_timeout");
  } finally {
    slow.close();
  }
  assert.deepEqual(app.uploadStats(), { receiving: 0, bytes: 0, decoding: 0, waiting: 0 });
  const again = await upload((p, init) => fetch(`${srv.url}${p}`, init), a);
  assert.equal(again.status, 201, await again.text());
  await srv.server.shutdown();
  await app.close();
  kv.close();
});

/** A body of `chunks` chunks of `size` bytes, one every `everyMs` ms; with `stall`, it then stops halfway. */
function paced(chunks: number, size: number, everyMs: number, stall = false) {
  let sent = 0;
  let last = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stream = new ReadableStream<Uint8Array>({
    pull(c) {
      if (sent === chunks) {
        if (!stall) c.close();
        return new Promise<void>(() => {}); // a stalled client: nothing more, ever
      }
      return new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          c.enqueue(new Uint8Array(size).fill(sent++ & 255));
          last = performance.now();
          resolve();
        }, everyMs);
      });
    },
    cancel() {
      clearTimeout(timer);
    },
  });
  const req = new Request("http://x/", {
    method: "POST",
    body: stream,
    headers: { "content-length": String(stall ? chunks * size * 2 : chunks * size) },
  });
  return { req, lastChunkAt: () => last };
}

Deno.test("server hardening: the body deadline scales with the bytes delivered; trickles and stalls get 408", async () => {
  const deadline = { timeoutMs: 400, minBytesPerSecond: 20_000 };
  const is408 = (e: unknown) => e instanceof ApiError && e.status === 408 && e.code === "body_timeout";
  // Honest and slow: 60 KB at ~50 KB/s takes ~1.2 s, three times the grace, and arrives whole.
  const honest = paced(60, 1000, 20);
  const t0 = performance.now();
  const body = await within(20_000, "the honest slow body", readBody(honest.req, 1 << 20, { deadline }));
  assert.equal(body.length, 60_000);
  assert.ok(performance.now() - t0 > deadline.timeoutMs, "the body took longer than the grace alone");
  // A trickle at ~5 KB/s falls behind 20 KB/s and is cut off.
  await within(
    20_000,
    "the trickle",
    assert.rejects(readBody(paced(60, 1000, 200).req, 1 << 20, { deadline }), is408),
  );
  // Sending 30 KB quickly and stopping earns no credit for the pause: 408 within the pause limit.
  const stalled = paced(30, 1000, 2, true);
  await within(20_000, "the stall", assert.rejects(readBody(stalled.req, 1 << 20, { deadline }), is408));
  const pause = performance.now() - stalled.lastChunkAt();
  assert.ok(pause < deadline.timeoutMs + 1000, `cut off ${pause.toFixed(0)} ms after the last chunk`);
});

Deno.test("server hardening: a declared content-length is not allocated up front", async () => {
  const declared = 128 * 1024 * 1024;
  let pulls = 0;
  let finish!: () => void;
  const secondPull = Promise.withResolvers<void>();
  const stream = new ReadableStream<Uint8Array>({
    pull(c) {
      pulls++;
      if (pulls === 1) {
        c.enqueue(new Uint8Array(10));
        return;
      }
      secondPull.resolve(); // the reader took the first chunk and asks for more
      return new Promise<void>((r) => {
        finish = () => {
          c.close();
          r();
        };
      });
    },
  });
  const req = new Request("http://x/", {
    method: "POST",
    body: stream,
    headers: { "content-length": String(declared) },
  });
  const before = Deno.memoryUsage().external;
  const reading = readBody(req, 256 * 1024 * 1024);
  reading.catch(() => {});
  await within(10_000, "the first chunk", secondPull.promise);
  const grown = Deno.memoryUsage().external - before;
  assert.ok(grown < 16 * 1024 * 1024, `10 bytes received, ${(grown / 2 ** 20).toFixed(1)} MiB allocated`);
  finish();
  await assert.rejects(reading, (e) => e instanceof ApiError && e.code === "bad_length");
});

Deno.test("server hardening: memory held grows with the bytes received, not with the chunks they came in", async () => {
  // Deno hands each socket read over as a view on a 64 KiB buffer: 2000 reads of 10 bytes must not
  // pin 2000 such buffers (125 MiB) while the body is still arriving. Measured after a full GC, so in
  // a child process with --expose-gc.
  const script = `
    import { readBody } from ${JSON.stringify(new URL("../server/body.ts", import.meta.url).href)};
    const chunks = 2000;
    let n = 0;
    const last = Promise.withResolvers();
    let finish;
    const stream = new ReadableStream({
      pull(c) {
        if (n < chunks) return void c.enqueue(new Uint8Array(64 * 1024).subarray(0, 10).fill(n++ & 255));
        last.resolve();
        return new Promise((r) => { finish = () => { c.close(); r(); }; });
      },
    });
    // V8 frees array buffers on a sweeper after the collection: collect a few times, a task apart.
    const settle = async () => {
      for (let i = 0; i < 3; i++) {
        globalThis.gc();
        await new Promise((r) => setTimeout(r, 0));
      }
    };
    await settle();
    const before = Deno.memoryUsage().external;
    const reading = readBody(new Request("http://x/", { method: "POST", body: stream,
      headers: { "content-length": String(chunks * 10) } }), 1 << 20);
    await last.promise;
    await settle();
    const held = Deno.memoryUsage().external - before;
    finish();
    const body = await reading;
    let inPlace = body.length === chunks * 10;
    for (let i = 0; i < chunks; i++) inPlace &&= body[i * 10] === (i & 255);
    console.log(JSON.stringify({ held, inPlace }));
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--v8-flags=--expose-gc", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const { held, inPlace } = JSON.parse(text);
  assert.ok(inPlace, "every chunk lands in place");
  assert.ok(
    held < 8 * 1024 * 1024,
    `20 000 bytes received in 2000 chunks hold ${(held / 2 ** 20).toFixed(1)} MiB`,
  );
});
