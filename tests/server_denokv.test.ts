/**
 * Coordinators on a real distributed store: a self-hosted `denokv` server (the open-source Deno KV
 * backend, built by scripts/denokv_setup.sh) with an access token, and 3 coordinator processes
 * started as a user would, `deno task serve --kv=http://127.0.0.1:PORT` with DENO_KV_ACCESS_TOKEN
 * set. 8 `FederatedClient`s go through a small load balancer that sends each request to the next
 * live instance in turn, so every client's uploads, tasks and slices land on all three.
 *
 * The aggregates are compared with the same federation on one coordinator (one app on a local KV
 * file). They agree to 1e-6, not bit for bit by construction: the sum of a round is accumulated in
 * f32 in the order the uploads arrive, and that order differs between runs (and, across instances,
 * a sum is continued by whichever instance commits next). The test reports the largest difference
 * it saw; the f64 reference federation is matched to 1e-5 as in the other server tests.
 *
 * Without a denokv binary the tests are ignored (with a message saying how to build it), unless
 * PERFIT_REQUIRE_DENOKV=1 (CI sets it), when they fail saying the binary is missing.
 */
import assert from "node:assert/strict";
import { FederatedClient } from "../runtime/client/mod.ts";
import {
  ADMIN,
  assertMatchesReference,
  createRun,
  fakeClients,
  makeApp,
  maxDiff,
  runBody,
  runMetrics,
  SECRET,
} from "./server_helpers.ts";
import {
  type CoordinatorProcess,
  denokvBinary,
  type DenoKvServer,
  removeStrayKvDir,
  startCoordinator,
  startDenokv,
} from "../scripts/denokv.ts";

const BIN = denokvBinary();
const REQUIRED = Deno.env.get("PERFIT_REQUIRE_DENOKV") === "1";
if (!BIN && !REQUIRED) {
  console.warn(
    "server_denokv: no denokv binary (run `bash scripts/denokv_setup.sh`, or set PERFIT_DENOKV): tests ignored",
  );
}

/**
 * The run both the single instance and the three instances federate. A short deadline: on a loaded
 * machine a round's deadline then passes while its last uploads commit, which once made a queued
 * close shut the next round with no upload in it (a close now names its round).
 */
const RUN = runBody("perfit", { roundDeadlineMs: 2_000 });
const LB = "http://lb.test";

interface Summary {
  index: number;
  accepted: number;
  samples: number;
  clients: number;
  covered: number;
  metrics: Record<string, number>;
}

interface Ack {
  client: string;
  round: number;
  uploadId: string;
  status: string;
  backend: number;
}

/**
 * A load balancer in front of `backends`: each request goes to the next live backend in turn; a
 * backend whose connection fails is taken out (what a proxy's passive health check does) and the
 * error goes back to the client, whose retry then lands on a live one. Records every acknowledged
 * upload, and calls `onAck` before the acknowledgement is handed to the client.
 */
function loadBalancer(backends: CoordinatorProcess[], onAck: (a: Ack) => void) {
  const down = new Set<number>();
  const served = backends.map(() => 0);
  const failed = backends.map(() => 0);
  const updates = backends.map(() => 0);
  const acks: Ack[] = [];
  // Uploads take turns apart from the other requests, so every live instance gets some whatever the
  // clients' interleaving (an instance that loses a commit race answers 503 and the retry moves on).
  let next = 0, nextUpdate = 0;
  const fetchVia: typeof fetch = async (input, init) => {
    const live = backends.map((_, i) => i).filter((i) => !down.has(i));
    if (live.length === 0) throw new TypeError("load balancer: no live backend");
    const path = String(input).slice(LB.length);
    const isUpdate = /\/update$/.test(path);
    const b = live[(isUpdate ? nextUpdate++ : next++) % live.length];
    if (isUpdate) updates[b]++;
    let res: Response;
    try {
      res = await fetch(`${backends[b].url}${path}`, init);
    } catch (e) {
      down.add(b);
      failed[b]++;
      throw e;
    }
    served[b]++;
    const m = /\/clients\/([^/]+)\/rounds\/(\d+)\/update$/.exec(path);
    if (m && res.ok) {
      const j = await res.clone().json();
      const ack = { client: m[1], round: Number(m[2]), uploadId: j.uploadId, status: j.status, backend: b };
      acks.push(ack);
      onAck(ack);
    }
    return res;
  };
  return { fetch: fetchVia, down, served, failed, acks, updates };
}

/** denokv on a temp SQLite file and `count` coordinators on it, sharing admin token and secret. */
async function cluster(
  dir: string,
  count: number,
): Promise<{ kv: DenoKvServer; nodes: CoordinatorProcess[] }> {
  const kv = await startDenokv({ sqlitePath: `${dir}/denokv.sqlite`, binary: BIN ?? undefined });
  const nodes: CoordinatorProcess[] = [];
  try {
    // Started one after another: three Deno start-ups at once on two cores only slow each other.
    for (let i = 0; i < count; i++) {
      nodes.push(
        await startCoordinator({
          kv: kv.url,
          kvToken: kv.token,
          via: "task",
          flags: [
            `--admin-token=${ADMIN}`,
            `--secret=${SECRET}`,
            "--rate-ip=0",
            "--rate-client=0",
            "--tick-ms=200",
            "--public-dashboard",
          ],
        }),
      );
    }
  } catch (e) {
    await Promise.all(nodes.map((n) => n.stop()));
    await kv.stop();
    throw e;
  }
  return { kv, nodes };
}

async function teardown(c: { kv: DenoKvServer; nodes: CoordinatorProcess[] }, dir: string): Promise<void> {
  await Promise.all(c.nodes.map((n) => n.stop()));
  await c.kv.stop();
  removeStrayKvDir();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
}

/** The federation on one coordinator (one app, local KV file): each client's final adapter and the round summaries. */
async function singleInstance(): Promise<{ adapters: Float32Array[]; summaries: unknown[] }> {
  const dir = await Deno.makeTempDir({ prefix: "perfit-single-" });
  const kv = await Deno.openKv(`${dir}/kv`);
  const app = makeApp(kv);
  try {
    const runId = await createRun(app, RUN);
    const clients = await fakeClients(() => ({
      serverUrl: LB,
      runId,
      fetch: (i, init) => app.request(String(i).slice(LB.length), init) as Promise<Response>,
      sleep: (ms) => new Promise((r) => setTimeout(r, Math.min(ms, 5))),
      pollMs: 1,
    }));
    await Promise.all(clients.map((c) => c.run({ maxSteps: 5000 })));
    assertMatchesReference("perfit", clients);
    const m = await runMetrics((p, init) => app.request(p, init), runId);
    return { adapters: clients.map((c) => c.adapter!.slice()), summaries: summariesOf(m) };
  } finally {
    await app.close();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
}

// deno-lint-ignore no-explicit-any
function summariesOf(m: any): unknown[] {
  // deno-lint-ignore no-explicit-any
  return m.rounds.map((r: any) => ({
    index: r.index,
    accepted: r.accepted,
    samples: r.samples,
    ...r.summary,
  }));
}

/** Clients of `runId` behind `lb`, with retries generous enough to outlast an instance's death. */
function lbClients(runId: string, lb: { fetch: typeof fetch }): Promise<FederatedClient[]> {
  return fakeClients(() => ({
    serverUrl: LB,
    runId,
    fetch: lb.fetch,
    sleep: (ms) => new Promise((r) => setTimeout(r, Math.min(ms, 50))),
    pollMs: 10,
    retry: { attempts: 40, baseMs: 10, maxMs: 200 },
  }));
}

/** Every acknowledged upload is in the run's record, under its round, with the id that was acknowledged. */
// deno-lint-ignore no-explicit-any
function assertAcksKept(m: any, acks: Ack[]): void {
  for (const a of acks) {
    // deno-lint-ignore no-explicit-any
    const rec = m.rounds[a.round - 1].clients.find((u: any) => u.client === a.client);
    assert.ok(
      rec,
      `acknowledged upload of ${a.client} in round ${a.round} (via instance ${a.backend}) is lost`,
    );
    assert.equal(rec.uploadId, a.uploadId, `round ${a.round}, ${a.client}: a different upload was kept`);
  }
}

function compareWithSingle(
  clients: FederatedClient[],
  single: { adapters: Float32Array[]; summaries: unknown[] },
  // deno-lint-ignore no-explicit-any
  m: any,
): number {
  let worst = 0;
  for (let i = 0; i < clients.length; i++) {
    worst = Math.max(worst, maxDiff(clients[i].adapter!, single.adapters[i]));
  }
  assert.ok(worst <= 1e-6, `adapters differ from the single instance's by up to ${worst}`);
  // Counts are exact; the metrics are f64 sample-weighted means summed in upload order: equal to 1e-12.
  const got = summariesOf(m) as Summary[];
  const want = single.summaries as Summary[];
  assert.deepEqual(got.map(({ metrics: _, ...r }) => r), want.map(({ metrics: _, ...r }) => r));
  for (let r = 0; r < got.length; r++) {
    assert.deepEqual(Object.keys(got[r].metrics).sort(), Object.keys(want[r].metrics).sort());
    for (const k of Object.keys(got[r].metrics)) {
      const [a, b] = [got[r].metrics[k], want[r].metrics[k]];
      assert.ok(Math.abs(a - b) <= 1e-12 * Math.max(1, Math.abs(b)), `round ${r + 1} ${k}: ${a} vs ${b}`);
    }
  }
  return worst;
}

Deno.test({
  name:
    "server denokv: 3 coordinator processes on one denokv, 8 clients across them, 3 PerFIT rounds equal one instance's",
  ignore: !BIN && !REQUIRED,
  async fn() {
    assert.ok(BIN, "denokv is not built: run `bash scripts/denokv_setup.sh` (CI's .ci/run does)");
    const single = await singleInstance();
    const dir = await Deno.makeTempDir({ prefix: "perfit-denokv-" });
    const c = await cluster(dir, 3);
    try {
      const lb = loadBalancer(c.nodes, () => {});
      const created = await lb.fetch(`${LB}/v1/runs`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify(RUN),
      });
      assert.equal(created.status, 201);
      const runId = (await created.json()).run.id;
      const clients = await lbClients(runId, lb);
      await Promise.all(clients.map((cl) => cl.run({ maxSteps: 5000 })));
      assert.ok(clients.every((cl) => cl.lastRound === 3), "every client finished round 3");
      assertMatchesReference("perfit", clients);
      // Every instance took uploads (which of them won each commit race is timing, and not asserted).
      assert.ok(lb.updates.every((n) => n > 0), `upload requests per instance: ${lb.updates.join("/")}`);
      // Every instance reads the same finished run from the shared store.
      const ms = await Promise.all(
        c.nodes.map((n) => runMetrics((p, init) => fetch(`${n.url}${p}`, init), runId)),
      );
      for (const m of ms) {
        assert.equal(m.run.status, "done");
        // deno-lint-ignore no-explicit-any
        assert.deepEqual(m.rounds.map((r: any) => r.accepted), [8, 8, 8]);
        assertAcksKept(m, lb.acks);
      }
      const worst = compareWithSingle(clients, single, ms[0]);
      console.log(
        `server_denokv: requests per instance ${lb.served.join("/")}, uploads acknowledged per instance ${
          [0, 1, 2].map((b) => lb.acks.filter((a) => a.backend === b).length).join("/")
        }; adapters vs one instance: max |diff| ${worst}`,
      );
    } finally {
      await teardown(c, dir);
    }
  },
});

Deno.test({
  name:
    "server denokv: one of 3 instances SIGKILLed mid-round loses nothing acknowledged; the other two finish the run",
  ignore: !BIN && !REQUIRED,
  async fn() {
    assert.ok(BIN, "denokv is not built: run `bash scripts/denokv_setup.sh` (CI's .ci/run does)");
    const single = await singleInstance();
    const dir = await Deno.makeTempDir({ prefix: "perfit-denokv-kill-" });
    const c = await cluster(dir, 3);
    try {
      let killed: { backend: number; round2Acks: number } | null = null;
      let round2 = 0;
      const lb = loadBalancer(c.nodes, (a) => {
        if (a.round !== 2 || a.status !== "accepted") return;
        round2++;
        // Mid-round 2: right after an instance acknowledged the third upload of the round, and
        // before that acknowledgement reaches its client, the instance dies.
        if (round2 === 3 && killed === null) {
          c.nodes[a.backend].kill();
          killed = { backend: a.backend, round2Acks: round2 };
        }
      });
      const created = await lb.fetch(`${LB}/v1/runs`, {
        method: "POST",
        headers: { authorization: `Bearer ${ADMIN}`, "content-type": "application/json" },
        body: JSON.stringify(RUN),
      });
      const runId = (await created.json()).run.id;
      const clients = await lbClients(runId, lb);
      await Promise.all(clients.map((cl) => cl.run({ maxSteps: 5000 })));
      assert.ok(killed, "an instance was killed in round 2");
      const k = (killed as { backend: number }).backend;
      const status = await c.nodes[k].proc.status;
      assert.ok(c.nodes[k].exited() && !status.success, `instance ${k} died (${JSON.stringify(status)})`);
      assert.ok(
        lb.acks.some((a) => a.backend === k && a.round === 2),
        "the killed instance had acknowledged uploads of the round it died in",
      );
      assert.ok(clients.every((cl) => cl.lastRound === 3), "every client finished round 3");
      assertMatchesReference("perfit", clients);
      const survivors = c.nodes.filter((_, i) => i !== k);
      const ms = await Promise.all(
        survivors.map((n) => runMetrics((p, init) => fetch(`${n.url}${p}`, init), runId)),
      );
      for (const m of ms) {
        assert.equal(m.run.status, "done");
        // deno-lint-ignore no-explicit-any
        assert.deepEqual(m.rounds.map((r: any) => r.accepted), [8, 8, 8], "each upload counted exactly once");
        assertAcksKept(m, lb.acks);
      }
      const worst = compareWithSingle(clients, single, ms[0]);
      const served = lb.served.join("/");
      const failed = lb.failed.join("/");
      console.log(
        `server_denokv: killed instance ${k} right after it acknowledged round 2's upload #3 (exit ${
          JSON.stringify(status)
        }); requests per instance ${served}, failed connections ${failed}; acks ${lb.acks.length}; ` +
          `adapters vs one instance: max |diff| ${worst}`,
      );
    } finally {
      await teardown(c, dir);
    }
  },
});
