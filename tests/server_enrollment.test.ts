/**
 * Issue 12, "joining is open to anyone with the run id": per-run enrollment. A run with enrollment
 * "key" takes joins that present its join key; one with "invite" takes single-use invites the
 * admin issues. Open joining stays the default, and explicit.
 */
import assert from "node:assert/strict";
import type { PerfitApp } from "../server/app.ts";
import { INVITE_REPLAY_MS, MAX_INVITES_PER_REQUEST } from "../server/enrollment.ts";
import { ADMIN, appFetch, dumpKv, fakeTrainer, makeApp, runBody } from "./server_helpers.ts";
import { FederatedClient, FederatedClientError } from "../runtime/client/mod.ts";
import { keyCount } from "./server_faults.ts";

const JSON_HEADERS = { "content-type": "application/json" };
const ADMIN_HEADERS = { authorization: `Bearer ${ADMIN}`, ...JSON_HEADERS };
const KEY = "correct horse battery staple";

async function create(app: PerfitApp, over: Record<string, unknown>): Promise<string> {
  const res = await app.request("/v1/runs", {
    method: "POST",
    headers: ADMIN_HEADERS,
    body: JSON.stringify(runBody("perfit", over)),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return (await res.json()).run.id;
}

function joinRaw(app: PerfitApp, run: string, body: string): Promise<Response> {
  return Promise.resolve(
    app.request(`/v1/runs/${run}/join`, { method: "POST", headers: JSON_HEADERS, body }),
  );
}

const joinWith = (app: PerfitApp, run: string, body: Record<string, unknown>) =>
  joinRaw(app, run, JSON.stringify(body));

/** The status and error code of a refusal (null code on success). */
async function outcome(res: Response): Promise<[number, string | null]> {
  const j = await res.json();
  return [res.status, j?.error?.code ?? null];
}

async function invites(app: PerfitApp, run: string, count: number): Promise<string[]> {
  const res = await app.request(`/v1/runs/${run}/invites`, {
    method: "POST",
    headers: ADMIN_HEADERS,
    body: JSON.stringify({ count }),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return (await res.json()).invites;
}

const clients = (kv: Deno.Kv, run: string) => keyCount(kv, ["client", run]);

Deno.test("enrollment open: the explicit default; anyone with the run id joins", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await create(app, {});
    const info = await (await app.request(`/v1/runs/${run}`, { headers: ADMIN_HEADERS })).json();
    assert.equal(info.run.config.enrollment, "open");
    assert.equal((await joinWith(app, run, {})).status, 201);
    // Credentials a run does not ask for are not needed, and change nothing.
    assert.equal((await joinWith(app, run, { key: "anything", invite: "anything" })).status, 201);
    assert.equal(await clients(kv, run), 2);
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("enrollment key: a missing, wrong or prototype-named key is 403 enrollment_required and creates nothing; the key is never answered nor kept in clear", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await create(app, { enrollment: "key", joinKey: KEY });
    const other = await create(app, { enrollment: "key", joinKey: `${KEY}!` });
    const before = await dumpKv(kv);
    const refusals: string[] = [
      "{}",
      JSON.stringify({ key: "" }),
      JSON.stringify({ key: `${KEY} ` }),
      JSON.stringify({ key: KEY.toUpperCase() }),
      JSON.stringify({ key: `${KEY}!` }), // the other run's key
      JSON.stringify({ key: "__proto__" }),
      JSON.stringify({ key: "constructor" }),
      JSON.stringify({ key: "toString" }),
      // An own "__proto__" member of the body is data, not the body's key.
      `{"__proto__": {"key": ${JSON.stringify(KEY)}}}`,
      JSON.stringify({ invite: KEY }),
      JSON.stringify({ tier: "high" }), // the tier is not checked before the key
    ];
    for (const body of refusals) {
      assert.deepEqual(await outcome(await joinRaw(app, run, body)), [403, "enrollment_required"], body);
    }
    assert.deepEqual(await outcome(await joinWith(app, run, { key: 42 })), [422, "bad_body"]);
    assert.deepEqual(await dumpKv(kv), before, "a refused join writes nothing");
    assert.deepEqual(app.coordinator.loadedRuns(), [], "nor loads the run's state (8·N bytes)");

    const ok = await joinWith(app, run, { key: KEY, name: "alice", tier: "high" });
    assert.equal(ok.status, 201);
    const j = await ok.json();
    assert.equal(j.tier, "high");
    const task = await app.request(`/v1/runs/${run}/clients/${j.clientId}/task`, {
      headers: { authorization: `Bearer ${j.token}` },
    });
    assert.equal(task.status, 200, "the token of a keyed join works like any other");
    assert.deepEqual(await outcome(await joinWith(app, other, { key: KEY })), [403, "enrollment_required"]);
    assert.equal(await clients(kv, run), 1);
    assert.equal(await clients(kv, other), 0);

    // Not in any answer, nor in clear anywhere in KV.
    const answers = [
      await (await app.request(`/v1/runs/${run}`, { headers: ADMIN_HEADERS })).text(),
      await (await app.request("/v1/runs", { headers: ADMIN_HEADERS })).text(),
      await (await app.request(`/v1/runs/${run}`, { headers: { authorization: `Bearer ${j.token}` } }))
        .text(),
    ];
    for (const a of answers) assert.ok(!a.includes(KEY) && !a.includes("joinKey"), a.slice(0, 200));
    assert.ok((await dumpKv(kv)).every((e) => !e.includes(KEY)), "the key is stored hashed");
    // A keyed run takes no invites.
    const inv = await app.request(`/v1/runs/${run}/invites`, {
      method: "POST",
      headers: ADMIN_HEADERS,
      body: "{}",
    });
    assert.deepEqual(await outcome(inv), [409, "enrollment_mismatch"]);
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("enrollment invite: single use (403 invite_used), replays of the same join are the same client, other runs' and forged invites are refused", async () => {
  const kv = await Deno.openKv(":memory:");
  let t = 1_000_000;
  const app = makeApp(kv, {}, () => t);
  const twin = makeApp(kv, {}, () => t); // a second instance on the same KV
  try {
    const run = await create(app, { enrollment: "invite" });
    const other = await create(app, { enrollment: "invite" });
    const open = await create(app, {});
    const mine = await invites(app, run, 4);
    const theirs = await invites(app, other, 1);
    assert.equal(new Set(mine).size, 4);
    for (const i of mine) assert.match(i, /^pi1\.[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{43}$/);

    // Only the admin issues invites, only to invite runs, a bounded number at a time.
    const issue = (headers: Record<string, string>, target: string, body: string) =>
      app.request(`/v1/runs/${target}/invites`, { method: "POST", headers, body });
    assert.equal((await issue(JSON_HEADERS, run, "{}")).status, 401);
    assert.deepEqual(await outcome(await issue(ADMIN_HEADERS, open, "{}")), [409, "enrollment_mismatch"]);
    for (const count of [0, 1001, 1.5, "3"]) {
      assert.deepEqual(
        await outcome(await issue(ADMIN_HEADERS, run, JSON.stringify({ count }))),
        [422, "bad_body"],
      );
    }

    const [id, secret] = mine[0].split(".").slice(1);
    const forged = `pi1.${id}.${secret.slice(0, -1)}${secret.endsWith("A") ? "B" : "A"}`;
    const before = await dumpKv(kv);
    for (
      const body of [
        {},
        { invite: theirs[0] }, // another run's invite
        { invite: forged }, // right id, wrong secret
        { invite: "__proto__" },
        { invite: "pi1.__proto__.x" },
        { invite: `pi1.${id}` },
        { key: mine[0] },
      ]
    ) {
      assert.deepEqual(
        await outcome(await joinWith(app, run, body)),
        [403, "enrollment_required"],
        JSON.stringify(body),
      );
    }
    assert.deepEqual(await dumpKv(kv), before, "a refused join writes nothing");

    // First use joins; a replay of that very join (a lost answer) is the same client, on any
    // instance; any other join with it is refused.
    const first = await joinWith(app, run, { invite: mine[0], name: "alice" });
    assert.equal(first.status, 201);
    const alice = await first.json();
    const replay = await (await joinWith(twin, run, { invite: mine[0], name: "alice" })).json();
    assert.equal(replay.clientId, alice.clientId);
    const task = await app.request(`/v1/runs/${run}/clients/${replay.clientId}/task`, {
      headers: { authorization: `Bearer ${replay.token}` },
    });
    assert.equal(task.status, 200);
    for (
      const body of [{ invite: mine[0], name: "mallory" }, { invite: mine[0] }, {
        invite: mine[0],
        tier: "low",
      }]
    ) {
      assert.deepEqual(
        await outcome(await joinWith(app, run, body)),
        [403, "invite_used"],
        JSON.stringify(body),
      );
    }
    // A used invite of this run is still no invite of another.
    assert.deepEqual(await outcome(await joinWith(app, other, { invite: mine[0] })), [
      403,
      "enrollment_required",
    ]);
    // Once the admin revokes the client, a replay gets no fresh token for it.
    const revoke = await app.request(`/v1/runs/${run}/clients/${alice.clientId}/token`, {
      method: "DELETE",
      headers: ADMIN_HEADERS,
    });
    assert.equal(revoke.status, 200);
    t += 1;
    assert.deepEqual(
      await outcome(await joinWith(app, run, { invite: mine[0], name: "alice" })),
      [403, "invite_used"],
    );
    // The replay window closes.
    t += INVITE_REPLAY_MS + 1;
    assert.deepEqual(
      await outcome(await joinWith(app, run, { invite: mine[0], name: "alice" })),
      [403, "invite_used"],
    );

    // Joins racing for one invite on two instances: one client.
    const race = await Promise.all(
      Array.from(
        { length: 6 },
        (_, i) => joinWith(i % 2 ? twin : app, run, { invite: mine[1], name: `racer${i}` }),
      ),
    );
    const outcomes = await Promise.all(race.map(outcome));
    assert.equal(outcomes.filter(([s]) => s === 201).length, 1, JSON.stringify(outcomes));
    assert.equal(outcomes.filter(([s, c]) => s === 403 && c === "invite_used").length, 5);

    assert.equal(await clients(kv, run), 2);
    assert.equal(await clients(kv, other), 0);
    // KV keeps only hashes of the secrets.
    const dump = (await dumpKv(kv)).join("\n");
    for (const i of [...mine, ...theirs]) {
      assert.ok(!dump.includes(i.split(".")[2]), "invites are stored hashed");
    }
    // The unused invites still work.
    assert.equal((await joinWith(app, run, { invite: mine[2] })).status, 201);
    assert.equal((await joinWith(app, other, { invite: theirs[0] })).status, 201);
  } finally {
    await app.close();
    await twin.close();
    kv.close();
  }
});

Deno.test("enrollment invite: one request issues the most invites it may ask for (its commits within KV's checks per operation)", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await create(app, { enrollment: "invite" });
    const many = await invites(app, run, MAX_INVITES_PER_REQUEST);
    assert.equal(new Set(many).size, MAX_INVITES_PER_REQUEST);
    assert.equal(await keyCount(kv, ["invite", run]), MAX_INVITES_PER_REQUEST);
    const used = await joinWith(app, run, { invite: many[MAX_INVITES_PER_REQUEST - 1] });
    assert.equal(used.status, 201, "the last one joins");
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("enrollment from the shipped client: FederatedClient joins a key run with its key and an invite run with an invite", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const keyed = await create(app, {
      enrollment: "key",
      joinKey: KEY,
      clientsPerRound: 1,
      quorum: 1,
      rounds: 1,
    });
    const invited = await create(app, { enrollment: "invite", clientsPerRound: 1, quorum: 1, rounds: 1 });
    const [invite] = await invites(app, invited, 1);
    const route = appFetch(() => app);
    const make = (runId: string, enrollment?: { key?: string; invite?: string }, name = "alice") =>
      FederatedClient.create({
        serverUrl: "http://t",
        runId,
        name,
        trainer: fakeTrainer(0),
        fetch: route,
        enrollment,
      });
    await assert.rejects(
      async () => (await make(keyed)).join(),
      (e) => e instanceof FederatedClientError && e.status === 403 && e.code === "enrollment_required",
    );
    const withKey = await make(keyed, { key: KEY });
    assert.match((await withKey.join()).clientId, /^c_/);
    const withInvite = await make(invited, { invite });
    assert.match((await withInvite.join()).clientId, /^c_/);
    // The same invite for someone else (the very same join again would be a replay: the same client).
    await assert.rejects(
      async () => (await make(invited, { invite }, "mallory")).join(),
      (e) => e instanceof FederatedClientError && e.status === 403 && e.code === "invite_used",
    );
  } finally {
    await app.close();
    kv.close();
  }
});

Deno.test("join info: anyone with the run id reads what joining needs (tiers, enrollment, round length), and nothing secret", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  try {
    const run = await create(app, { enrollment: "key", joinKey: KEY, train: { localSteps: 7 } });
    const res = await app.request(`/v1/runs/${run}/join`);
    assert.equal(res.status, 200);
    const text = await res.text();
    const info = JSON.parse(text);
    assert.deepEqual(info.tiers, { low: 1, mid: 2, high: 4 });
    assert.equal(info.enrollment, "key");
    assert.equal(info.localSteps, 7);
    assert.equal(info.roundDeadlineMs, 60_000);
    assert.ok(!text.includes(KEY) && !/hash|salt|secret/i.test(text), text);
    assert.equal((await app.request(`/v1/runs/run_nothere/join`)).status, 404);
    // `__proto__` is a well-formed id of no run (a KV key, never an object's property).
    assert.equal((await app.request(`/v1/runs/__proto__/join`)).status, 404);
    // A malformed id is refused before any read.
    for (const bad of ["a".repeat(300), "run%00x"]) {
      const r = await app.request(`/v1/runs/${bad}/join`);
      assert.equal(r.status, 400, bad);
      assert.match((await r.json()).error.code, /^bad_/);
    }
    assert.equal(await clients(kv, run), 0, "reading it joins nobody");
  } finally {
    await app.close();
    kv.close();
  }
});
