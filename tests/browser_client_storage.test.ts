/** The client page's storage helpers: one database per coordinator and run, the file check on resume, forgetting. */
import assert from "node:assert/strict";
import { MemoryStorage } from "../runtime/client/storage.ts";
import {
  ForgettableStorage,
  type PageRecord,
  readPageRecord,
  resumeFileProblem,
  runStoreName,
  sha256Hex,
  writePageRecord,
} from "../web/client_storage.ts";

Deno.test("browser_client_storage: a database per coordinator and run", () => {
  assert.equal(runStoreName("http://127.0.0.1:8787/", "run_a"), "perfit-client http://127.0.0.1:8787 run_a");
  assert.notEqual(runStoreName("http://a:1", "r"), runStoreName("http://b:1", "r"));
  assert.notEqual(runStoreName("http://a:1", "r1"), runStoreName("http://a:1", "r2"));
});

Deno.test("browser_client_storage: a resume must train on the file the run was joined with", async () => {
  assert.equal(
    await sha256Hex("abc"),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  const s = new MemoryStorage();
  assert.equal(await readPageRecord(s), null);
  const rec: PageRecord = {
    name: "computing",
    file: { name: "computing.jsonl", sha256: await sha256Hex("x"), examples: 8 },
    joinedAt: 1,
  };
  await writePageRecord(s, rec);
  assert.deepEqual(await readPageRecord(s), rec);
  assert.equal(resumeFileProblem(rec, rec.file.sha256, "r"), null);
  assert.equal(resumeFileProblem(null, "anything", "r"), null, "nothing recorded: nothing to check");
  assert.match(
    resumeFileProblem(rec, await sha256Hex("y"), "r")!,
    /^this browser joined run r with the file computing\.jsonl \(8 examples, SHA-256 2d711642b726….*Forget this run/,
  );
  await s.set("page.json", new TextEncoder().encode("{not json"));
  assert.equal(await readPageRecord(s), null);
});

Deno.test("browser_client_storage: a forgotten run cannot be written back by a client still running", async () => {
  const inner = new MemoryStorage();
  const s = new ForgettableStorage(inner);
  await s.set("state.json", new Uint8Array([1]));
  assert.deepEqual(await s.get("state.json"), new Uint8Array([1]));
  s.forget();
  assert.throws(() => s.set("state.json", new Uint8Array([2])), /forgotten/);
  assert.throws(() => s.get("state.json"), /forgotten/);
  assert.deepEqual(inner.data.get("state.json"), new Uint8Array([1]), "the write did not reach the store");
});
