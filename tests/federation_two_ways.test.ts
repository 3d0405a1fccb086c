/**
 * One system, two carriers: the same seeded PerFIT federation (8 clients, 3 rounds, the bundled tiny
 * model) runs once through `deno task simulate` with the coordinator's app in that process, and once
 * with a `deno task serve` process as coordinator and the clients in a separate `simulate --server`
 * process talking to it over loopback HTTP. Clients are driven in turn in both, so uploads are
 * folded in the same order and the numbers agree exactly: identical upload bytes per client and
 * round, and perplexities equal (the bound is 1e-4 relative; any difference at all would
 * mean the carriers compute differently).
 */
import assert from "node:assert/strict";
import { startCoordinator } from "../scripts/denokv.ts";

const DENO = new URL("../scripts/deno.sh", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;
const ADMIN = "two-ways-admin-token-0123456789abcdef";

const FLAGS = [
  "--method=perfit",
  "--clients=8",
  "--rounds=3",
  "--local-steps=4",
  "--max-train=24",
  "--max-test=8",
  "--batch-size=4",
  "--max-len=48",
  "--backend=node",
  "--seed=5",
  "--quiet",
];

interface Result {
  rounds: {
    clients: { clientId: string; perplexity: number; uploadBytes: number; maskMode: string | null }[];
  }[];
  budget: number;
}

async function simulate(out: string, extra: string[]): Promise<Result> {
  const p = new Deno.Command("bash", {
    args: [DENO, "run", "-A", "--unstable-kv", "examples/simulate.ts", ...FLAGS, `--out=${out}`, ...extra],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  });
  const r = await p.output();
  const err = new TextDecoder().decode(r.stderr);
  assert.equal(r.code, 0, `simulate ${extra.join(" ")} failed:\n${err}`);
  return JSON.parse(await Deno.readTextFile(`${out}.json`));
}

Deno.test({
  name: "one federation: simulate in process and over loopback HTTP against `deno task serve` agree exactly",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const local = await simulate(`${dir}/in-process`, []);
      const server = await startCoordinator({
        kv: `${dir}/coordinator.kv`,
        flags: [`--admin-token=${ADMIN}`, "--rate-ip=0", "--rate-client=0"],
      });
      let remote: Result;
      try {
        remote = await simulate(`${dir}/over-http`, [`--server=${server.url}`, `--admin-token=${ADMIN}`]);
      } finally {
        await server.stop();
      }
      assert.equal(local.rounds.length, 3);
      assert.equal(remote.rounds.length, 3);
      for (let r = 0; r < 3; r++) {
        const a = local.rounds[r].clients;
        const b = remote.rounds[r].clients;
        assert.equal(a.length, 8);
        assert.deepEqual(b.map((c) => c.clientId), a.map((c) => c.clientId));
        assert.deepEqual(b.map((c) => c.uploadBytes), a.map((c) => c.uploadBytes), `round ${r + 1} bytes`);
        assert.deepEqual(b.map((c) => c.maskMode), a.map((c) => c.maskMode));
        for (let i = 0; i < a.length; i++) {
          const rel = Math.abs(a[i].perplexity - b[i].perplexity) / a[i].perplexity;
          assert.ok(rel <= 1e-4, `round ${r + 1} ${a[i].clientId}: ${a[i].perplexity} vs ${b[i].perplexity}`);
        }
        // Found equal to the last digit: both carriers fold the same uploads in the same order.
        assert.deepEqual(b.map((c) => c.perplexity), a.map((c) => c.perplexity));
      }
      // It is a PerFIT federation: masks are searched in round 1 and travel by reference after.
      assert.ok(local.rounds[0].clients.every((c) => c.maskMode !== "ref"));
      assert.ok(local.rounds[2].clients.every((c) => c.maskMode === "ref"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
