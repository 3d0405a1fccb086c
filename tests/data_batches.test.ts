import assert from "node:assert/strict";
import { ByteTokenizer, collate, type Example, makeBatches, tokenizeExample } from "../runtime/data/mod.ts";

const tok = new ByteTokenizer({ bos: true });

Deno.test("data: tokenization appends EOS and marks only response tokens", () => {
  const t = tokenizeExample({ prompt: "ab", response: "cd" }, tok, 64);
  assert.deepEqual(t.ids, [1, 97 + 3, 98 + 3, 99 + 3, 100 + 3, 2]);
  assert.deepEqual(Array.from(t.isResponse), [0, 0, 0, 1, 1, 1]);
});

Deno.test("data: truncation keeps maxLen tokens and always some response", () => {
  const long = { prompt: "p".repeat(50), response: "r".repeat(50) };
  const t = tokenizeExample(long, tok, 20);
  assert.equal(t.ids.length, 20);
  const nResp = Array.from(t.isResponse).filter((v) => v === 1).length;
  assert.equal(nResp, 10);
  assert.equal(t.ids[19], "r".charCodeAt(0) + 3);
  const shortResp = tokenizeExample({ prompt: "p".repeat(50), response: "r" }, tok, 20);
  assert.equal(shortResp.ids.length, 20);
  assert.deepEqual(shortResp.ids.slice(-2), ["r".charCodeAt(0) + 3, 2]);
});

Deno.test("data: collate pads right and shifts the loss mask by one", () => {
  const a = tokenizeExample({ prompt: "ab", response: "c" }, tok, 64); // [BOS a b c EOS], resp at 3,4
  const b = tokenizeExample({ prompt: "a", response: "" }, tok, 64); // [BOS a EOS], resp at 2
  const batch = collate([a, b], tok.padTokenId, { padMultiple: 4, idType: "int32" });
  assert.equal(batch.batch, 2);
  assert.equal(batch.seq, 8);
  assert.ok(batch.inputIds instanceof Int32Array);
  assert.deepEqual(Array.from(batch.inputIds.slice(0, 8)), [1, 100, 101, 102, 2, 0, 0, 0]);
  assert.deepEqual(Array.from(batch.attentionMask.slice(0, 8)), [1, 1, 1, 1, 1, 0, 0, 0]);
  assert.deepEqual(Array.from(batch.lossMask.slice(0, 8)), [0, 0, 1, 1, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(batch.attentionMask.slice(8)), [1, 1, 1, 0, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(batch.lossMask.slice(8)), [0, 1, 0, 0, 0, 0, 0, 0]);
});

Deno.test("data: loss mask equals shifted response flags on every real token (property)", () => {
  const exs: Example[] = Array.from(
    { length: 37 },
    (_, i) => ({ prompt: "q".repeat(1 + (i * 7) % 23), response: "z".repeat((i * 5) % 17) }),
  );
  const batches = makeBatches(exs, tok, { maxLen: 24, batchSize: 5, seed: 3 });
  let rows = 0;
  for (const b of batches) {
    assert.equal(b.inputIds.length, b.batch * b.seq);
    assert.ok(b.seq <= 24);
    for (let r = 0; r < b.batch; r++, rows++) {
      for (let t = 0; t < b.seq; t++) {
        const i = r * b.seq + t;
        const next = t + 1 < b.seq ? Number(b.inputIds[i + 1]) : -1;
        const nextReal = t + 1 < b.seq && b.attentionMask[i + 1] === 1;
        const nextIsResp = nextReal && next !== 0 && (next === 2 || next === "z".charCodeAt(0) + 3);
        assert.equal(b.lossMask[i], nextIsResp ? 1 : 0, `row ${r} t ${t}`);
        if (b.attentionMask[i] === 0) assert.equal(Number(b.inputIds[i]), 0);
      }
    }
  }
  assert.equal(rows, 37);
});

Deno.test("data: batching is deterministic per seed and buckets by length", () => {
  const exs: Example[] = Array.from(
    { length: 64 },
    (_, i) => ({ prompt: `p${i}`, response: "x".repeat((i * 13) % 31) }),
  );
  const a = makeBatches(exs, tok, { maxLen: 64, batchSize: 4, seed: 11, padMultiple: 1 });
  const b = makeBatches(exs, tok, { maxLen: 64, batchSize: 4, seed: 11, padMultiple: 1 });
  const c = makeBatches(exs, tok, { maxLen: 64, batchSize: 4, seed: 12, padMultiple: 1 });
  assert.deepEqual(
    a.map((x) => Array.from(x.inputIds as BigInt64Array, Number)),
    b.map((x) => Array.from(x.inputIds as BigInt64Array, Number)),
  );
  assert.notDeepEqual(
    a.map((x) => Array.from(x.inputIds as BigInt64Array, Number)),
    c.map((x) => Array.from(x.inputIds as BigInt64Array, Number)),
  );
  // Bucketing: padding waste is far below that of unsorted batches of the same data.
  const pad = (bs: typeof a) =>
    bs.reduce((s, x) => s + x.batch * x.seq - x.attentionMask.reduce((p, v) => p + v, 0), 0);
  const unbucketed = makeBatches(exs, tok, {
    maxLen: 64,
    batchSize: 4,
    seed: 11,
    padMultiple: 1,
    bucketWindow: 1,
  });
  assert.ok(pad(a) < pad(unbucketed), `bucketed pad ${pad(a)} vs ${pad(unbucketed)}`);
  const fixed = makeBatches(exs, tok, { maxLen: 64, batchSize: 4, shuffle: false });
  assert.equal(fixed.reduce((s, x) => s + x.batch, 0), 64); // an empty response still has EOS to predict
});
