/**
 * Two coordinator instances on one KV file (what several Deno Deploy isolates are): requests land on
 * either at random; versionstamp checks and revalidation keep every upload counted exactly once.
 */
import assert from "node:assert/strict";
import { FederatedClient } from "../runtime/client/mod.ts";
import {
  ADMIN,
  createRun,
  fakeTrainer,
  makeApp,
  maxDiff,
  referenceFederation,
  runBody,
} from "./server_helpers.ts";

function mulberry(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("server multi-instance: two apps on one KV finish a PerFIT run matching the reference", async () => {
  const dir = await Deno.makeTempDir({ prefix: "perfit-multi-" });
  const kvA = await Deno.openKv(`${dir}/kv`);
  const kvB = await Deno.openKv(`${dir}/kv`);
  const a = makeApp(kvA);
  const b = makeApp(kvB);
  const rnd = mulberry(42);
  const either: typeof fetch = (input, init) =>
    (rnd() < 0.5 ? a : b).request(String(input), init) as Promise<Response>;
  try {
    const runId = await createRun(a, runBody("perfit"));
    const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.min(ms, 5)));
    const clients = await Promise.all(Array.from({ length: 8 }, (_, i) =>
      FederatedClient.create({
        serverUrl: "http://x",
        runId,
        trainer: fakeTrainer(i),
        fetch: either,
        sleep,
        pollMs: 1,
        retry: { attempts: 30, baseMs: 1, maxMs: 5 },
      })));
    await Promise.all(clients.map((c) => c.run({ maxSteps: 5000 })));
    const ref = referenceFederation("perfit", 8, 3, 1000, 300);
    for (let i = 0; i < 8; i++) {
      const d = maxDiff(clients[i].adapter!, ref[i]);
      assert.ok(d < 1e-5, `client ${i} differs from the reference by ${d}`);
    }
    for (const app of [a, b]) {
      const m = await (await app.request(`/v1/runs/${runId}/metrics`, {
        headers: { authorization: `Bearer ${ADMIN}` },
      })).json();
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
