/**
 * Two coordinator instances on one KV file (what several Deno Deploy isolates are): requests land on
 * either at random; versionstamp checks and revalidation keep every upload counted exactly once.
 */
import assert from "node:assert/strict";
import { mulberry32 } from "../runtime/data/rng.ts";
import {
  assertMatchesReference,
  createRun,
  fakeClients,
  makeApp,
  runBody,
  runMetrics,
} from "./server_helpers.ts";

Deno.test("server multi-instance: two apps on one KV finish a PerFIT run matching the reference", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-multi-" });
  const kvA = await Deno.openKv(`${dir}/kv`);
  const kvB = await Deno.openKv(`${dir}/kv`);
  const a = makeApp(kvA);
  const b = makeApp(kvB);
  const rnd = mulberry32(42);
  const either: typeof fetch = (input, init) =>
    (rnd() < 0.5 ? a : b).request(String(input), init) as Promise<Response>;
  try {
    const runId = await createRun(a, runBody("perfit"));
    const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.min(ms, 5)));
    const clients = await fakeClients(() => ({
      serverUrl: "http://x",
      runId,
      fetch: either,
      sleep,
      pollMs: 1,
      retry: { attempts: 30, baseMs: 1, maxMs: 5 },
    }));
    await Promise.all(clients.map((c) => c.run({ maxSteps: 5000 })));
    assertMatchesReference("perfit", clients);
    for (const app of [a, b]) {
      const m = await runMetrics((path, init) => app.request(path, init), runId);
      assert.equal(m.run.status, "done");
      assert.deepEqual(m.rounds.map((r: { accepted: number }) => r.accepted), [8, 8, 8]);
    }
  } finally {
    await a.close();
    await b.close();
    kvA.close();
    kvB.close();
    await Deno.remove(dir, { recursive: true });
  }
});
