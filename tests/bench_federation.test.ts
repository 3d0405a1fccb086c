/**
 * The federation bench's small mode end to end (bench/federation_135m.ts --model=tiny): the
 * coordinator, the admin CLI and 2 data-owner processes as real processes over loopback HTTP, and
 * one headless Chromium page on /client where Chromium is installed. Every client must finish both
 * rounds, both rounds must close with every client, and every figure the bench reports must be
 * there and positive.
 */
import assert from "node:assert/strict";
import { federate } from "../bench/federation_135m.ts";
import { formatReport } from "../bench/federation_135m.ts";
import { chromiumPath } from "./browser_harness.ts";

const chromium = chromiumPath();
if (chromium === null) {
  console.warn("bench_federation: Chromium part SKIPPED, no chromium (apt-get install -y chromium)");
}

Deno.test({
  name:
    "bench federation --model=tiny: 2 client processes (+ a Chromium page) federate 2 PerFIT rounds; every figure is measured",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const lines: string[] = [];
    const r = await federate({ model: "tiny", log: (l) => lines.push(l) });
    const n = 2 + (chromium ? 1 : 0);
    assert.equal(r.clientsPerRound, n);
    assert.equal(r.clients.length, n);
    assert.deepEqual(
      r.clients.map((c) => c.kind),
      chromium ? ["deno", "deno", "chromium"] : ["deno", "deno"],
    );

    assert.deepEqual(r.rounds.map((x) => [x.round, x.status, x.accepted]), [[1, "closed", n], [
      2,
      "closed",
      n,
    ]]);
    for (const x of r.rounds) {
      assert.ok(x.wallS > 0, `round ${x.round} wall ${x.wallS}`);
      assert.ok(x.coordinatorPeakMb > 0, `round ${x.round} coordinator peak ${x.coordinatorPeakMb}`);
    }
    for (const c of r.clients) {
      assert.ok([1, 2, 4].includes(c.expansion), `${c.name}: expansion ${c.expansion} (tier ${c.tier})`);
      assert.deepEqual(c.rounds.map((x) => x.round), [1, 2], `${c.name} trained both rounds`);
      for (const x of c.rounds) {
        const at = `${c.name} round ${x.round}`;
        assert.ok(Number.isInteger(x.tokens) && x.tokens > 0, `${at}: tokens ${x.tokens}`);
        assert.ok(x.trainS > 0 && Number.isFinite(x.tokensPerS) && x.tokensPerS > 0, `${at}: ${x.trainS} s`);
        assert.ok(x.peakMb > 0, `${at}: peak ${x.peakMb} MiB`);
        assert.ok(x.upBytes > 0 && x.downBytes > 0, `${at}: ${x.upBytes} B up, ${x.downBytes} B down`);
        // At most maxLen tokens per example, batchSize examples per step.
        assert.ok(
          x.tokens <= r.train.localSteps * r.train.batchSize * r.train.maxLen,
          `${at}: ${x.tokens} tokens`,
        );
      }
      // Round 2 names the mask searched in round 1 by reference: its body is no larger.
      assert.ok(c.rounds[1].upBytes <= c.rounds[0].upBytes, `${c.name}: ${c.rounds.map((x) => x.upBytes)}`);
      // The join and the task polls went through the relay too.
      assert.ok(c.otherUpBytes > 0 && c.otherDownBytes > 0, `${c.name}: other traffic`);
      if (c.kind === "chromium") {
        // The page fetched the whole base model folder from the coordinator.
        const size = (await Deno.stat(`${r.modelDir}/model.safetensors`)).size;
        assert.ok(c.modelDownBytes >= size, `${c.name}: model ${c.modelDownBytes} B of ${size}`);
      } else assert.equal(c.modelDownBytes, 0);
    }
    if (chromium) assert.ok(r.chromiumRssSumMb! > 0);
    const md = formatReport(r, "deno task bench federation_135m --model=tiny");
    assert.match(md, /\| 2 \| closed \|/);
    assert.doesNotMatch(md, /NaN|n\/a \|/);
  },
});
