import assert from "node:assert/strict";
import { loadFolder } from "../runtime/federation/setup.ts";
import { ProgressBar } from "../runtime/federation/progress.ts";
import { formatRound, resultToCsv } from "../runtime/federation/mod.ts";
import type { SimResult } from "../runtime/federation/types.ts";
import { DEFAULT_SIM } from "../runtime/federation/types.ts";

Deno.test("federation: loadFolder names categories and skips the base model's pre-training records", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const lines = Array.from(
      { length: 8 },
      (_, i) => JSON.stringify({ instruction: `q${i}`, output: `a${i}` }),
    ).join("\n");
    await Deno.writeTextFile(`${dir}/alpha.jsonl`, lines);
    await Deno.writeTextFile(`${dir}/ignored.txt`, "x");
    const all = await loadFolder(dir);
    assert.equal(all.length, 8);
    assert.ok(all.every((e) => e.category === "alpha"));
    const kept = await loadFolder(dir, { skipEvery: 4 });
    assert.deepEqual(kept.map((e) => e.response), ["a1", "a2", "a3", "a5", "a6", "a7"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("federation: progress bar rendering and round/CSV formatting", () => {
  const log: string[] = [];
  const bar = new ProgressBar(4, 8, { tty: false, write: (s) => log.push(s) });
  assert.equal(bar.render("x"), "[........]   0% x");
  bar.tick("a", 2);
  assert.equal(bar.render("a"), "[####....]  50% a");
  bar.tick("b", 5);
  assert.equal(bar.render(), "[########] 100% ");
  // Not a terminal: plain lines, one per tenth reached, never a carriage return.
  assert.deepEqual(log, ["progress 50% a\n", "progress 100% b\n"]);
  const tty: string[] = [];
  const live = new ProgressBar(2, 4, { tty: true, write: (s) => tty.push(s) });
  live.tick("t", 2);
  assert.ok(tty.length === 1 && tty[0].startsWith("\r[####] 100% t"));
  const rec = {
    round: 1,
    meanPerplexity: 3,
    seconds: 1,
    clients: [{
      clientId: "c0",
      tier: "high",
      expansion: 4,
      trained: true,
      meanLoss: 1.5,
      testNll: 10,
      testTokens: 9,
      perplexity: 3,
      uploadBytes: 100,
      maskMode: "bits",
      downloadBytes: 64,
    }],
  };
  assert.match(formatRound(rec), /round 1 .*3\.000[\s\S]*c0 +4 +3\.000 +1\.500 +100 bits/);
  const res: SimResult = {
    method: "perfit",
    config: DEFAULT_SIM,
    backend: "x",
    clients: [],
    budget: 1,
    maskStats: [],
    rounds: [rec],
    wallSeconds: 1,
  };
  const csv = resultToCsv(res).trim().split("\n");
  assert.equal(csv.length, 2);
  assert.equal(csv[1], "perfit,1,c0,high,4,true,1.5,9,3.0000,100,bits,64");
});
