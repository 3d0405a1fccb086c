import { decodeUpdate, encodeUpdate } from "../runtime/client/wire.ts";
import { foldSparse } from "../server/aggregate.ts";
import { sha256Hex } from "../server/tokens.ts";
import { initKernels } from "../runtime/kernels/mod.ts";
const k = await initKernels();
const n = 1 << 20, budget = n / 4;
const mask = new Uint8Array(n), values = new Float32Array(n);
let s = 1;
for (let c = 0; c < budget;) { s = (Math.imul(s, 1103515245) + 12345) >>> 0; const p = s % n; if (!mask[p]) { mask[p] = 1; values[p] = ((s>>>8)%2000)/1000-1; c++; } }
const body = encodeUpdate({ run: "r", round: 1, samples: 10, values, mask });
const sum = new Float32Array(n), w = new Float32Array(n);
k.reserve(16 * n + (8<<20));
const ws = k.allocF32(n), ww = k.allocF32(n);
const vbuf = k.allocF32(n); const bbuf = new Uint32Array(k.allocF32(n/32).buffer, 0, 0);
import process from "node:process";
function t(name: string, f: () => unknown, reps = 50) {
  for (let i = 0; i < 5; i++) f();
  const c0 = process.cpuUsage(); const t0 = performance.now(); for (let i = 0; i < reps; i++) f();
  const c = process.cpuUsage(c0);
  console.log(name, "wall", ((performance.now() - t0) / reps).toFixed(2), "cpu", ((c.user + c.system) / 1000 / reps).toFixed(2), "ms");
}
const rb = k.allocU8(n / 8); const rv = k.allocF32(budget);

const u = decodeUpdate(body, n);
t("decode", () => decodeUpdate(body, n));
t("fold js", () => foldSparse(sum, w, u.maskBits, u.values, 10));
t("accSparse js arrays", () => k.accumulateSparse(sum, w, u.maskBits, u.values, 10));
t("accSparse resident sums", () => k.accumulateSparse(ws, ww, u.maskBits, u.values, 10));
t("copy-in resident + acc", () => { rb.set(new Uint8Array(u.maskBits.buffer)); rv.set(u.values); k.accumulateSparse(ws, ww, new Uint32Array(rb.buffer, rb.byteOffset, n/32), rv, 10); });
t("countNonFinite", () => k.countNonFinite(u.values));
const bodyBuf = body;
let p: Promise<unknown> = Promise.resolve();
const t0 = performance.now(); for (let i = 0; i < 30; i++) await crypto.subtle.digest("SHA-256", bodyBuf); console.log("sha256 subtle body", ((performance.now()-t0)/30).toFixed(2));
const t1 = performance.now(); for (let i = 0; i < 30; i++) await sha256Hex(bodyBuf); console.log("sha256Hex body", ((performance.now()-t1)/30).toFixed(2));
const mb = new Uint8Array(u.maskBits.buffer);
const t2 = performance.now(); for (let i = 0; i < 30; i++) await sha256Hex(mb); console.log("sha256Hex mask", ((performance.now()-t2)/30).toFixed(2));
const t3 = performance.now(); for (let i = 0; i < 30; i++) new Uint8Array(body).slice(); console.log("copy body", ((performance.now()-t3)/30).toFixed(2));
