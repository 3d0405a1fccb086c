/**
 * `deno task bench [name ...]`: runs every benchmark module in bench/ (each exports
 * `run(): Promise<string>` returning a Markdown section) or only those whose file name contains
 * one of the given names, and prints the sections. Measured figures are copied into
 * bench/RESULTS.md by hand, with the machine they came from.
 */
import { load1 } from "./machine.ts";

const here = new URL(".", import.meta.url);
const skip = new Set(["main.ts", "results_table.ts"]);
const filters = Deno.args.filter((a) => !a.startsWith("-"));
const files: string[] = [];
for await (const e of Deno.readDir(here)) {
  if (!e.isFile || !e.name.endsWith(".ts") || skip.has(e.name)) continue;
  if (filters.length && !filters.some((f) => e.name.includes(f))) continue;
  files.push(e.name);
}
files.sort();
if (files.length === 0) {
  console.error(`no benchmark matches ${filters.join(", ")}`);
  Deno.exit(2);
}
const header = [
  `# Perfit benchmarks`,
  ``,
  `- date: ${new Date().toISOString()}`,
  `- machine: ${Deno.build.os}/${Deno.build.arch}, ${navigator.hardwareConcurrency} logical cores, Deno ${Deno.version.deno}`,
  ``,
];
console.log(header.join("\n"));
for (const f of files) {
  const mod = await import(new URL(f, here).href);
  if (typeof mod.run !== "function") continue;
  console.error(`bench: ${f}`);
  const t0 = performance.now();
  const before = load1();
  const section: string = await mod.run();
  const took = ((performance.now() - t0) / 1000).toFixed(1);
  console.log(
    section.trimEnd() + `\n\n_(${f}: ${took} s; load average ${before} before, ${load1()} after)_\n`,
  );
}
