/**
 * Client tokens (issue 12): one accepted spelling per token, expiry from `iat`, refresh, and
 * per-client revocation by the admin that every instance on the KV honours.
 */
import assert from "node:assert/strict";
import { ADMIN, createRun, makeApp, runBody, SECRET } from "./server_helpers.ts";
import { join, type Joined } from "./server_hardening_util.ts";
import { TokenSigner, unb64url } from "../server/tokens.ts";
import type { PerfitApp } from "../server/app.ts";

const admin = { authorization: `Bearer ${ADMIN}` };
const DAY = 24 * 3600_000;
const task = (app: PerfitApp, c: Joined, token = c.token) =>
  app.request(`/v1/runs/${c.run}/clients/${c.id}/task`, { headers: { authorization: `Bearer ${token}` } });
const tokenPath = (c: Joined) => `/v1/runs/${c.run}/clients/${c.id}/token`;

/** Status and error code of a response (body consumed). */
async function outcome(res: Response): Promise<[number, string | undefined]> {
  const j = await res.json();
  return [res.status, j?.error?.code];
}

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

Deno.test("server hardening: a token has one spelling; the unused low bits of its MAC's last character do not verify", async () => {
  const kv = await Deno.openKv(":memory:");
  const app = makeApp(kv);
  const run = await createRun(app, runBody("perfit"));
  const c = await join(app, run);
  const [p, body, mac] = c.token.split(".");
  // A 32-byte MAC is 43 characters: the last carries 4 bits of MAC and 2 that encode nothing.
  assert.equal(mac.length % 4, 3);
  const last = B64.indexOf(mac.at(-1)!);
  const spellings = [0, 1, 2, 3].map((low) => `${p}.${body}.${mac.slice(0, -1)}${B64[(last & ~3) | low]}`);
  const accepted: string[] = [];
  for (const t of spellings) {
    const res = await task(app, c, t);
    await res.body?.cancel();
    if (res.status === 200) accepted.push(t);
    else assert.equal(res.status, 401);
  }
  assert.deepEqual(accepted, [c.token], "only the canonical spelling is accepted");
  assert.throws(() => unb64url("QQ="), /base64url/, "no padding");
  assert.throws(() => unb64url("QR"), /base64url/, "non-zero unused bits");
  assert.throws(() => unb64url("Q"), /base64url/, "an impossible length");
  assert.deepEqual(unb64url("QQ"), new Uint8Array([0x41]));
  await app.close();
  kv.close();
});

Deno.test("server hardening: tokens expire after the TTL (401 token_expired) and a valid one refreshes", async () => {
  const kv = await Deno.openKv(":memory:");
  let t = 1_000_000;
  const app = makeApp(kv, { tokenTtlMs: 10 * DAY }, () => t);
  const run = await createRun(app, runBody("perfit"));
  const joined = await app.request(`/v1/runs/${run}/join`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
  });
  const j = await joined.json();
  const c: Joined = { run, id: j.clientId, token: j.token };
  assert.equal(j.tokenExpiresAt, t + 10 * DAY);
  t += 9 * DAY;
  assert.equal((await task(app, c)).status, 200, "valid before the TTL");
  const refreshed = await app.request(tokenPath(c), {
    method: "POST",
    headers: { authorization: `Bearer ${c.token}` },
  });
  assert.equal(refreshed.status, 200);
  const r = await refreshed.json();
  assert.notEqual(r.token, c.token);
  assert.equal(r.tokenExpiresAt, t + 10 * DAY);
  t += 2 * DAY; // the first token is 11 days old, the refreshed one 2
  assert.deepEqual(await outcome(await task(app, c)), [401, "token_expired"]);
  assert.equal((await task(app, c, r.token)).status, 200);
  const late = await app.request(tokenPath(c), {
    method: "POST",
    headers: { authorization: `Bearer ${c.token}` },
  });
  assert.deepEqual(await outcome(late), [401, "token_expired"], "an expired token cannot be refreshed");
  // Another client's token refreshes only its own client.
  const other = await join(app, run);
  const foreign = await app.request(tokenPath(c), {
    method: "POST",
    headers: { authorization: `Bearer ${other.token}` },
  });
  assert.equal(foreign.status, 403);
  await foreign.body?.cancel();
  // The TTL is the server's: a token signed long ago with the right secret is expired, whatever it says.
  const old = await (await TokenSigner.create(SECRET)).sign({ run, client: c.id, iat: t - 400 * DAY });
  assert.deepEqual(await outcome(await task(app, c, old)), [401, "token_expired"]);
  await app.close();
  kv.close();
});

Deno.test("server hardening: the admin revokes one client's tokens; every instance refuses them (token_revoked); the admin may issue a new one", async () => {
  const kv = await Deno.openKv(":memory:");
  let t = 5_000_000;
  const now = () => t;
  const a = makeApp(kv, { revocationCacheMs: 1000 }, now);
  const b = makeApp(kv, { revocationCacheMs: 1000 }, now); // a second instance on the same KV
  const run = await createRun(a, runBody("perfit"));
  const victim = await join(a, run);
  const bystander = await join(a, run);
  assert.equal((await task(b, victim)).status, 200, "instance b has read (and cached) the victim's state");
  t += 10;
  const denied = await a.request(tokenPath(victim), {
    method: "DELETE",
    headers: { authorization: `Bearer ${bystander.token}` },
  });
  assert.equal(denied.status, 401, "only the admin revokes");
  await denied.body?.cancel();
  const del = await a.request(tokenPath(victim), { method: "DELETE", headers: admin });
  assert.equal(del.status, 200);
  assert.equal((await del.json()).revokedAt, t);
  assert.deepEqual(
    await outcome(await task(a, victim)),
    [401, "token_revoked"],
    "at once on the revoking instance",
  );
  const refresh = await a.request(tokenPath(victim), {
    method: "POST",
    headers: { authorization: `Bearer ${victim.token}` },
  });
  assert.deepEqual(await outcome(refresh), [401, "token_revoked"], "a revoked token cannot refresh itself");
  t += 1001; // past instance b's cache
  assert.deepEqual(
    await outcome(await task(b, victim)),
    [401, "token_revoked"],
    "instance b, after its cache",
  );
  assert.equal((await task(b, bystander)).status, 200, "other clients are untouched");
  // The admin issues a fresh token (say, to the client's real owner).
  const issued = await a.request(tokenPath(victim), { method: "POST", headers: admin });
  assert.equal(issued.status, 200);
  const fresh = (await issued.json()).token;
  assert.equal((await task(a, victim, fresh)).status, 200);
  assert.equal((await task(b, victim, fresh)).status, 200);
  assert.deepEqual(
    await outcome(await task(b, victim)),
    [401, "token_revoked"],
    "the old token stays revoked",
  );
  // Revoked and re-issued within one millisecond: the new token is still later than the revocation.
  assert.equal((await a.request(tokenPath(victim), { method: "DELETE", headers: admin })).status, 200);
  const same = await (await a.request(tokenPath(victim), { method: "POST", headers: admin })).json();
  assert.equal((await task(a, victim, same.token)).status, 200);
  assert.deepEqual(await outcome(await task(a, victim, fresh)), [401, "token_revoked"]);
  const unknown = await a.request(`/v1/runs/${run}/clients/c_nobody/token`, {
    method: "DELETE",
    headers: admin,
  });
  assert.equal(unknown.status, 404);
  await unknown.body?.cancel();
  assert.ok((await kv.get(["revoked", run, victim.id])).value, "kept in KV under its own prefix");
  await a.close();
  await b.close();
  kv.close();
});
