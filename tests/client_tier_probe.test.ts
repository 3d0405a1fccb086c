/** `--tier auto`: the largest tier whose round fits half the deadline, from measured step times. */
import assert from "node:assert/strict";
import { pickTier } from "../runtime/client/tier_probe.ts";

Deno.test("tier probe: the largest tier whose projected round fits the share of the deadline", () => {
  const tiers = { low: 1, mid: 2, high: 4 };
  const fast = pickTier(tiers, { low: 0.1, mid: 0.15, high: 0.3 }, 20, 60_000);
  assert.equal(fast.tier, "high"); // 20 × 0.3 s = 6 s ≤ 30 s
  const slow = pickTier(tiers, { low: 0.5, mid: 1.2, high: 2 }, 20, 60_000);
  assert.equal(slow.tier, "mid"); // high: 40 s > 30 s; mid: 24 s fits
  const tooSlow = pickTier(tiers, { low: 5, mid: 9, high: 20 }, 20, 60_000);
  assert.equal(tooSlow.tier, "low");
  assert.match(tooSlow.why, /even the smallest tier/);
  assert.match(fast.why, /within 50% of the 60 s deadline/);
  // Names of Object.prototype never count as tiers; a tier without a measurement is refused.
  assert.throws(() => pickTier({ low: 1 }, {}, 20, 60_000), /no step time measured for tier low/);
  assert.throws(() => pickTier({}, {}, 20, 60_000), /no tiers/);
});
