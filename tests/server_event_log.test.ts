/** The coordinator says what it does: one line per event with figures, summaries for the frequent ones. */
import assert from "node:assert/strict";
import { createApp } from "../server/app.ts";
import { formatEvent, LineLog } from "../server/event_log.ts";
import { FederatedClient } from "../runtime/client/mod.ts";
import { ADMIN, appFetch, createRun, fakeTrainer, runBody, SECRET } from "./server_helpers.ts";

const yieldTask = () => new Promise<void>((r) => setTimeout(r, 0));

async function federation(format: "text" | "json") {
  const kv = await Deno.openKv(":memory:");
  const lines: string[] = [];
  const log = new LineLog(format, (l) => lines.push(l), 60_000);
  const app = createApp({
    kv,
    events: log,
    config: {
      adminToken: ADMIN,
      secret: SECRET,
      rateLimit: { ip: { rate: 0, burst: 0 }, client: { rate: 0, burst: 0 } },
      tickMs: 0,
      foldWorker: false,
    },
  });
  const runId = await createRun(app, runBody("perfit", { clientsPerRound: 2, quorum: 2, rounds: 2 }));
  const route = appFetch(() => app);
  const clients = await Promise.all(
    [0, 1].map((i) =>
      FederatedClient.create({
        serverUrl: "http://t",
        runId,
        trainer: fakeTrainer(i),
        fetch: route,
        sleep: yieldTask,
        pollMs: 1,
      })
    ),
  );
  await Promise.all(clients.map((c) => c.run({ maxSteps: 200 })));
  // Two refusals of one kind and one of another, summarised in one line.
  for (const body of ["{", "{"]) {
    await app.request(`/v1/runs/${runId}/join`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
    });
  }
  await app.request(`/v1/runs/${runId}/join`, { method: "POST", body: "{}" });
  await app.coordinator.settled();
  log.close();
  await app.close();
  kv.close();
  return { runId, ids: clients.map((c) => c.clientId!), lines };
}

Deno.test("event log: joins, rounds, accepted counts, closes and a refusal summary, in order, as text", async () => {
  const { runId, ids, lines } = await federation("text");
  const at = (re: RegExp) => {
    const i = lines.findIndex((l) => re.test(l));
    assert.ok(i >= 0, `no line matches ${re}:\n${lines.join("\n")}`);
    return i;
  };
  const created = at(new RegExp(`^run ${runId} created: perfit, 2 rounds, 2 clients per round$`));
  const joined = ids.map((id) => at(new RegExp(`^run ${runId}: client ${id} joined \\(tier \\w+, x\\d\\)$`)));
  const accepted1 = at(new RegExp(`^run ${runId}: round 1: 2/2 uploads accepted$`));
  const closed1 = at(new RegExp(`^run ${runId}: round 1 closed: 2 clients, 11 samples, \\d+\\.\\d s$`));
  const opened2 = at(new RegExp(`^run ${runId}: round 2 opened$`));
  const finished = at(new RegExp(`^run ${runId} finished after 2 rounds$`));
  const refused = at(/^refused in the last \d+ s: 2 x 400 malformed_json, 1 x 415 \w+$/);
  assert.ok(created < Math.min(...joined) && Math.max(...joined) < accepted1);
  assert.ok(accepted1 < closed1 && closed1 < opened2 && opened2 < finished && finished < refused);
  // Accepted uploads are a running count, not a line per upload.
  assert.equal(lines.filter((l) => l.includes("round 1: 1/2 uploads accepted")).length <= 1, true);
});

Deno.test("event log: --log json gives one JSON object per line with a time and the same figures", async () => {
  const { runId, lines } = await federation("json");
  const events = lines.map((l) => JSON.parse(l));
  assert.ok(events.every((e) => typeof e.time === "string" && !Number.isNaN(Date.parse(e.time))));
  const closed = events.filter((e) => e.kind === "round_closed");
  assert.deepEqual(closed.map((e) => [e.run, e.round, e.clients, e.samples]), [[runId, 1, 2, 11], [
    runId,
    2,
    2,
    11,
  ]]);
  const refusals = events.find((e) => e.kind === "refusals");
  assert.deepEqual(
    Object.keys(refusals.counts).sort(),
    ["400 malformed_json", "415 unsupported_media_type"].sort(),
  );
  assert.equal(formatEvent({ kind: "run_finished", run: "r", rounds: 3 }), "run r finished after 3 rounds");
});
