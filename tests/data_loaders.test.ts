import assert from "node:assert/strict";
import { DataError, detectFormat, loadJsonl, parseJsonl } from "../runtime/data/mod.ts";

Deno.test("data: dolly records render the default template with and without context", () => {
  const text = [
    JSON.stringify({ instruction: "Define x", context: "", response: "a letter", category: "dictionary" }),
    JSON.stringify({ instruction: "Sum", context: "1 2", response: "3", category: "math" }),
  ].join("\n");
  const ex = parseJsonl(text);
  assert.equal(ex.length, 2);
  assert.equal(ex[0].prompt, "### Instruction:\nDefine x\n\n### Response:\n");
  assert.equal(ex[0].response, "a letter");
  assert.equal(ex[0].category, "dictionary");
  assert.equal(ex[1].prompt, "### Instruction:\nSum\n\n### Input:\n1 2\n\n### Response:\n");
});

Deno.test("data: alpaca records map input/output; braces in data are not re-substituted", () => {
  const text = JSON.stringify({ instruction: "Echo {input}", input: "{instruction}", output: "ok" }) + "\n\n";
  const ex = parseJsonl(text, { format: "auto" });
  assert.equal(ex.length, 1);
  assert.equal(
    ex[0].prompt,
    "### Instruction:\nEcho {input}\n\n### Input:\n{instruction}\n\n### Response:\n",
  );
  assert.equal(ex[0].response, "ok");
  assert.equal(ex[0].category, undefined);
});

Deno.test("data: chat records take the last assistant turn as the response", () => {
  const rec = {
    messages: [
      { role: "system", content: "be brief" },
      { role: "user", content: "hi" },
      { role: "assistant", content: "hello" },
      { role: "user", content: "bye?" },
      { role: "assistant", content: "bye" },
      { role: "user", content: "trailing" },
    ],
  };
  const [ex] = parseJsonl(JSON.stringify(rec));
  assert.equal(ex.response, "bye");
  assert.equal(
    ex.prompt,
    "### system:\nbe brief\n\n### user:\nhi\n\n### assistant:\nhello\n\n### user:\nbye?\n\n### assistant:\n",
  );
  assert.ok(!ex.prompt.includes("trailing"));
});

Deno.test("data: format detection", () => {
  assert.equal(detectFormat({ instruction: "a", response: "b" }), "dolly");
  assert.equal(detectFormat({ instruction: "a", output: "b" }), "alpaca");
  assert.equal(detectFormat({ messages: [] }), "chat");
  assert.equal(detectFormat({ text: "x" }), null);
  assert.equal(detectFormat([1]), null);
});

Deno.test("data: malformed lines name the source and line number", () => {
  const good = JSON.stringify({ instruction: "a", response: "b" });
  assert.throws(
    () => parseJsonl(`${good}\n${good}\n{"instruction": oops}\n`, { source: "f.jsonl" }),
    (e: Error) => {
      assert.ok(e instanceof DataError);
      assert.match(e.message, /^f\.jsonl:3: malformed JSON/);
      return true;
    },
  );
  assert.throws(
    () => parseJsonl(`${good}\n{"instruction": "a"}`, { source: "g.jsonl" }),
    /g\.jsonl:2: missing field "response"/,
  );
  assert.throws(
    () => parseJsonl(`${good}\n{"instruction": "a", "response": 5}`, { source: "h" }),
    /h:2: field "response" must be a string/,
  );
  assert.throws(() => parseJsonl(`{"foo": 1}`, { source: "i" }), /i:1: cannot detect format/);
  assert.throws(() => parseJsonl(`[1,2]`, { source: "j", format: "dolly" }), /j:1: expected a JSON object/);
  assert.throws(
    () => parseJsonl(JSON.stringify({ messages: [{ role: "user", content: "x" }] }), { source: "k" }),
    /k:1: chat record has no assistant turn/,
  );
  assert.throws(
    () => parseJsonl(JSON.stringify({ messages: [{ role: "user" }] }), { source: "l" }),
    /l:1: messages\[0\]: missing field "content"/,
  );
});

Deno.test("data: loadJsonl reads a file and reports its path in errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/bad.jsonl`;
    await Deno.writeTextFile(path, JSON.stringify({ instruction: "a", output: "b" }) + "\nnot json\n");
    await assert.rejects(() => loadJsonl(path), (e: Error) => e.message.startsWith(`${path}:2:`));
    const okPath = `${dir}/ok.jsonl`;
    await Deno.writeTextFile(okPath, JSON.stringify({ instruction: "a", output: "b" }) + "\n");
    const ex = await loadJsonl(okPath);
    assert.equal(ex[0].response, "b");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("data: the vendored lexicon-instruct satire file loads as dolly", async () => {
  const ex = await loadJsonl(new URL("../datasets/lexicon-instruct/satire.jsonl", import.meta.url).pathname);
  assert.ok(ex.length > 500);
  assert.ok(ex.every((e) => e.category === "satire" && e.response.length > 0));
});
