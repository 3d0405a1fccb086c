/**
 * What a slice's two bitmasks cost the coordinator: `encodeSlice` codes each in its smallest mask
 * code, and `encodeMask` skips the modes that cannot beat the cheap ones. Measured interleaved
 * against the search over every mode (`MASK_CODE_MODES`), on masks shaped as the coordinator's are:
 * whole rank components of rows (a PerFIT client's mask in the results layout, n = 217088) and a
 * FLoRA stack's positions with some slots' components unused (n = 1736704).
 *
 *   deno run -A bench/wire_slice.ts [--pairs=5]
 */
import { parseArgs } from "node:util";
import { decodeSlice, encodeSlice, packMask } from "../runtime/client/wire.ts";
import { encodeMask, encodeMaskAs, MASK_CODE_MODES } from "../runtime/kernels/mask_code.ts";
import { scalarKernels } from "../runtime/kernels/mod.ts";
import { fmtSpread, interleave, loadAverages } from "./machine.ts";

const everyMode = (m: Uint8Array) =>
  MASK_CODE_MODES.map((mode) => encodeMaskAs(m, mode, scalarKernels)).reduce((a, b) =>
    b.bytes.length < a.bytes.length ? b : a
  );

const ms = (seconds: number[]) => fmtSpread(seconds.map((t) => t * 1000), 1);

/** The Markdown section. */
export function run(pairs = 5): Promise<string> {
  if (!(Number.isInteger(pairs) && pairs >= 1)) {
    throw new RangeError(`--pairs must be a whole number ≥ 1, got ${pairs}`);
  }
  const lines = [
    `### A slice's bitmasks in their smallest code (bench/wire_slice.ts)`,
    ``,
    `Two masks per slice (the client's and the covered positions), ${pairs} interleaved pairs after a warm-up, ` +
    `ms per slice, median (range); load average before: ${loadAverages()}.`,
    ``,
    `| n | plain slice B | coded slice B | code: every mode, ms | code: encodeMask, ms | decode ms |`,
    `|---:|---:|---:|---:|---:|---:|`,
  ];
  for (const n of [217088, 1736704]) {
    const mask = new Uint8Array(n), covered = new Uint8Array(n);
    for (let p = 0; p < n; p++) {
      mask[p] = (p >> 9) % 4 === 0 ? 1 : 0;
      covered[p] = mask[p] && p % 5 !== 0 ? 1 : 0;
    }
    const maskBits = packMask(mask), coveredBits = packMask(covered);
    const values = new Float32Array(covered.reduce((a, v) => a + v, 0)).fill(1);
    const slice = { run: "r", round: 1, adapterSize: n, maskBits, coveredBits, values };
    const body = encodeSlice(slice);
    const plain = 8 * maskBits.length + 4 * values.length;
    const t = interleave({
      all: () => [everyMode(mask), everyMode(covered)],
      fast: () => [encodeMask(mask, scalarKernels), encodeMask(covered, scalarKernels)],
      decode: () => decodeSlice(body),
    }, pairs);
    lines.push(`| ${n} | ${plain} | ${body.length} | ${ms(t.all)} | ${ms(t.fast)} | ${ms(t.decode)} |`);
  }
  lines.push(``, `Load average after: ${loadAverages()}.`);
  return Promise.resolve(lines.join("\n"));
}

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { pairs: { type: "string", default: "5" } } });
  console.log(await run(Number(values.pairs)));
}
