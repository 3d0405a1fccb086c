/** Size limits of the coordinator (issue 11): one job per module, a thin facade. */
import assert from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;

Deno.test("code limits: no file under server/ is over 500 lines, and the Coordinator class is at most 400", async () => {
  const over: string[] = [];
  let files = 0;
  for await (const e of Deno.readDir(`${root}server`)) {
    if (!e.isFile || !e.name.endsWith(".ts")) continue;
    files++;
    const lines = (await Deno.readTextFile(`${root}server/${e.name}`)).split("\n").length;
    if (lines > 500) over.push(`server/${e.name}: ${lines} lines`);
  }
  assert.ok(files > 10, "the scan found the server files");
  assert.deepEqual(over, []);
  const src = (await Deno.readTextFile(`${root}server/coordinator.ts`)).split("\n");
  const start = src.findIndex((l) => l.startsWith("export class Coordinator"));
  const end = src.findIndex((l, i) => i > start && l === "}");
  assert.ok(start >= 0 && end > start, "Coordinator class found");
  assert.ok(end - start + 1 <= 400, `Coordinator is ${end - start + 1} lines`);
});
