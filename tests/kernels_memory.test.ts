// The WASM binding's memory management: kernels run in place on buffers allocated in linear memory,
// mix with ordinary arrays, reuse scratch space, and refuse views detached by a memory grow.
import assert from "node:assert/strict";
import { initKernels, KernelError, kernels, scalarKernels, simdSupported } from "../runtime/kernels/mod.ts";
import { LinearArena } from "../runtime/kernels/memory.ts";

Deno.test("kernels memory: SIMD probe validates and auto mode picks wasm", async () => {
  assert.equal(simdSupported(), true);
  const k = await initKernels();
  assert.equal(k.name, "wasm-simd");
  assert.equal(kernels(), k);
  assert.equal((await initKernels({ backend: "scalar" })).name, "scalar");
  assert.equal(kernels(), scalarKernels);
  await initKernels();
});

Deno.test("kernels memory: loads from bytes, a compiled module and a URL", async () => {
  const url = new URL("../wasm/perfit_kernels.wasm", import.meta.url);
  const bytes = await Deno.readFile(url);
  for (const wasm of [bytes, await WebAssembly.compile(bytes), url, url.href]) {
    const k = await initKernels({ backend: "wasm", wasm });
    assert.equal(k.popcount(Uint8Array.from([1, 0, 3])), 2);
  }
  await assert.rejects(() => initKernels({ backend: "wasm", wasm: new Uint8Array([0, 1, 2]) }));
  const fallback = await initKernels({ wasm: new Uint8Array([0, 1, 2]) });
  assert.equal(fallback.name, "scalar");
  await initKernels();
});

Deno.test("kernels memory: resident buffers are updated in place and mix with ordinary arrays", async () => {
  const k = await initKernels({ backend: "wasm" });
  const n = 1037;
  k.reserve(n * 4 * 4 + n * 2 + 4096);
  const sum = k.allocF32(n), weight = k.allocF32(n), values = k.allocF32(n);
  const mask = k.allocU8(n);
  const buf = sum.buffer;
  for (let i = 0; i < n; i++) (values[i] = i, mask[i] = i % 3 === 0 ? 1 : 0);
  const plainValues = values.slice(), plainMask = mask.slice();
  k.accumulate(sum, weight, values, mask, 2); // all resident
  k.accumulate(sum, weight, plainValues, plainMask, 3); // mixed: uploads copied through scratch
  assert.equal(sum.buffer, buf, "no grow after reserve");
  for (let i = 0; i < n; i++) {
    assert.equal(sum[i], i % 3 === 0 ? 5 * i : 0);
    assert.equal(weight[i], i % 3 === 0 ? 5 : 0);
  }
  const out = k.allocF32(n);
  k.finalize(sum, weight, values, out);
  for (let i = 0; i < n; i++) assert.equal(out[i], i);
  for (const v of [sum, weight, values, out]) k.free(v);
  k.free(mask);
});

Deno.test("kernels memory: a view detached by growth is refused, not silently read as empty", async () => {
  const k = await initKernels({ backend: "wasm" });
  const a = k.allocF32(16);
  const big = k.allocF32(((a.buffer as ArrayBuffer).byteLength / 4) * 3); // forces a grow
  assert.equal((a.buffer as ArrayBuffer & { detached?: boolean }).detached, true);
  assert.throws(
    () => k.countNonFinite(a),
    (e: unknown) => e instanceof KernelError && /x is detached.*reserve/.test(e.message),
  );
  assert.throws(() => k.accumulate(a, a, a, new Uint8Array(0), 1), /sum is detached/);
  k.free(big);
});

Deno.test("kernels memory: ordinary arrays stream through element-wise kernels without growing memory", async () => {
  const k = await initKernels({ backend: "wasm" });
  const n = 300_001; // several staging chunks plus a ragged tail
  const sum = k.allocF32(n), weight = k.allocF32(n);
  const buffer = sum.buffer;
  const values = Float32Array.from({ length: n }, (_, i) => (i % 7) - 3);
  const mask = Uint8Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 1 : 0));
  k.accumulate(sum, weight, values, mask, 2); // resident sum/weight, streamed uploads
  const plainSum = new Float32Array(n), plainWeight = new Float32Array(n);
  k.accumulate(plainSum, plainWeight, values, mask, 2); // everything streamed, in and out
  assert.equal(sum.buffer, buffer, "memory did not grow, the views stay attached");
  const out = new Float32Array(n);
  k.finalize(plainSum, plainWeight, values, out);
  for (let i = 0; i < n; i++) {
    assert.equal(sum[i], mask[i] ? 2 * values[i] : 0);
    assert.equal(weight[i], mask[i] ? 2 : 0);
    assert.equal(plainSum[i], sum[i]);
    assert.equal(out[i], values[i]);
  }
  const nan = new Float32Array(n);
  nan[n - 1] = NaN;
  nan[70000] = -Infinity;
  assert.equal(k.countNonFinite(nan), 2);
  const sixth = Uint8Array.from({ length: n }, (_, i) => (i % 6 === 0 ? 1 : 0));
  assert.equal(k.jaccard(mask, sixth), 50001 / 100001);
  assert.equal(sum.buffer, buffer, "still no grow after countNonFinite and jaccard");
  // Compact uploads: resident sums with ordinary bits/values, then everything resident.
  const bits = k.maskToBits(mask), packed = k.gather(values, mask);
  const s2 = k.allocF32(n), w2 = k.allocF32(n);
  k.accumulateSparse(s2, w2, bits, packed, 2);
  const bytes = k.allocU8(bits.length * 4);
  const resBits = new Uint32Array(bytes.buffer, bytes.byteOffset, bits.length);
  resBits.set(bits);
  const resPacked = k.allocF32(packed.length);
  resPacked.set(packed);
  k.accumulateSparse(s2, w2, resBits, resPacked, 1);
  for (let i = 0; i < n; i++) {
    assert.equal(s2[i], mask[i] ? 3 * values[i] : 0);
    assert.equal(w2[i], mask[i] ? 3 : 0);
  }
  k.free(sum);
  k.free(weight);
});

Deno.test("kernels memory: arena reuses freed blocks and coalesces holes", () => {
  const mem = new WebAssembly.Memory({ initial: 1 });
  const arena = new LinearArena(mem, 1000);
  const a = arena.alloc(100), b = arena.alloc(100), c = arena.alloc(100);
  assert.equal(a % 16, 0);
  assert.ok(b >= a + 100 && c >= b + 100);
  arena.free(a);
  arena.free(b);
  assert.equal(arena.alloc(200), a, "coalesced hole of a and b is reused");
  arena.free(c);
  assert.throws(() => arena.free(c), KernelError);
  const d = arena.alloc(70000);
  assert.ok(mem.buffer.byteLength >= d + 70000);
});

Deno.test("kernels memory: auto mode falls back to scalar TypeScript when WASM SIMD is missing", async () => {
  const validate = WebAssembly.validate;
  WebAssembly.validate = () => false; // an engine without SIMD rejects the v128 probe module
  try {
    assert.equal(simdSupported(), false);
    const k = await initKernels();
    assert.equal(k.name, "scalar");
    assert.equal(kernels(), scalarKernels);
    await assert.rejects(() => initKernels({ backend: "wasm" }), /SIMD is not supported/);
  } finally {
    WebAssembly.validate = validate;
  }
  assert.equal((await initKernels()).name, "wasm-simd");
});

Deno.test("kernels memory: repeated initKernels() shares one instance, so alloc'd buffers stay resident", async () => {
  await initKernels({ backend: "scalar" });
  const a = await initKernels();
  const b = await initKernels();
  assert.equal(a, b);
  assert.equal(a.name, "wasm-simd");
  const other = await initKernels({ backend: "wasm" });
  assert.notEqual(other, a);
});

Deno.test("kernels memory: resident and unaligned subarray views give the scalar results", async () => {
  const k = await initKernels({ backend: "wasm" });
  const n = 5003;
  k.reserve(n * 64);
  let a = 3;
  const rnd = () => ((a = (Math.imul(a, 1664525) + 1013904223) >>> 0) / 4294967296);
  const scores = k.allocF32(n + 3), mask = k.allocU8(n + 5), values = k.allocF32(n + 3);
  for (let i = 0; i < n + 3; i++) (scores[i] = Math.floor(rnd() * 100), values[i] = rnd() - 0.5);
  for (let i = 0; i < n + 5; i++) mask[i] = rnd() < 0.3 ? 1 : 0;
  // Offsets 1..3 make every view misaligned for 16-byte vectors, resident in linear memory or not.
  for (const off of [0, 1, 3]) {
    const s = scores.subarray(off, off + n),
      m = mask.subarray(off + 2, off + 2 + n),
      v = values.subarray(off, off + n);
    const plain = [s.slice(), m.slice(), v.slice()] as const;
    for (const [ss, mm, vv, tag] of [[s, m, v, "resident"], [...plain, "plain"]] as const) {
      const out = k.allocU8(n + 1).subarray(1);
      assert.deepEqual(k.topkMask(ss, 777, out), scalarKernels.topkMask(plain[0], 777), `topk ${tag} ${off}`);
      assert.deepEqual(k.maskToBits(mm), scalarKernels.maskToBits(plain[1]), `bits ${tag} ${off}`);
      assert.deepEqual(k.gather(vv, mm), scalarKernels.gather(plain[2], plain[1]), `gather ${tag} ${off}`);
      assert.equal(k.popcount(mm), scalarKernels.popcount(plain[1]));
      const sw = [k.allocF32(n + 1).subarray(1), k.allocF32(n + 1).subarray(1)];
      const ref = [new Float32Array(n), new Float32Array(n)];
      k.accumulate(sw[0], sw[1], vv, mm, 3);
      scalarKernels.accumulate(ref[0], ref[1], plain[2], plain[1], 3);
      assert.deepEqual(sw[0], ref[0], `accumulate ${tag} ${off}`);
      assert.deepEqual(sw[1], ref[1]);
    }
  }
});
