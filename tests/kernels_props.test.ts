// Property tests: the WASM SIMD kernels agree with the scalar TypeScript reference (exactly on masks,
// integers and the element-wise float kernels, within tolerance for AdamW), and the reference agrees
// with naive oracles written from the definitions.
import assert from "node:assert/strict";
import { initKernels, KernelError, type Kernels, scalarKernels } from "../runtime/kernels/mod.ts";
import { mulberry32 as rng } from "../runtime/data/rng.ts";

const wasm = await initKernels({ backend: "wasm" });
const S = scalarKernels;

const SIZES = [
  0,
  1,
  2,
  3,
  4,
  5,
  7,
  15,
  16,
  17,
  31,
  32,
  33,
  63,
  64,
  65,
  100,
  255,
  256,
  257,
  1000,
  4099,
  70001,
];
const SEEDS = [1, 2, 3];

/** Scores with many ties, both zeros, infinities and subnormals, so the radix select meets every edge. */
function scores(n: number, r: () => number): Float32Array {
  const s = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = r();
    if (u < 0.05) s[i] = -0;
    else if (u < 0.1) s[i] = 0;
    else if (u < 0.12) s[i] = Infinity;
    else if (u < 0.14) s[i] = -Infinity;
    else if (u < 0.16) s[i] = 1e-42 * (r() < 0.5 ? -1 : 1);
    else if (u < 0.5) s[i] = Math.floor(r() * 8) - 4; // heavy ties
    else s[i] = (r() - 0.5) * 2 ** Math.floor(r() * 40 - 20);
  }
  return s;
}

function mask(n: number, r: () => number, density: number): Uint8Array {
  const m = new Uint8Array(n);
  // Non-0/1 bytes count as selected; runs of zeros exercise the SIMD skip paths.
  for (let i = 0; i < n; i++) m[i] = r() < density ? (r() < 0.9 ? 1 : 1 + Math.floor(r() * 255)) : 0;
  return m;
}

function floats(n: number, r: () => number): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (r() - 0.5) * 4;
  return x;
}

/** Oracle: top-k by sorting (score desc, index asc), -0 equal to +0. */
function sortTopk(s: Float32Array, k: number): Uint8Array {
  const idx = Array.from(s.keys()).sort((a, b) => (s[b] - s[a]) || (a - b));
  const m = new Uint8Array(s.length);
  for (let i = 0; i < k; i++) m[idx[i]] = 1;
  return m;
}

function ks(n: number, r: () => number): number[] {
  return [...new Set([0, 1, n, Math.floor(n / 2), Math.floor(r() * (n + 1)), Math.max(0, n - 1)])].filter((
    k,
  ) => k <= n);
}

function same(a: ArrayLike<number>, b: ArrayLike<number>, what: string): void {
  assert.equal(a.length, b.length, `${what}: length`);
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) assert.fail(`${what}: index ${i}: ${a[i]} !== ${b[i]}`);
  }
}

Deno.test("kernels: wasm backend loads with SIMD", () => {
  assert.equal(wasm.name, "wasm-simd");
});

Deno.test("kernels: topkMask keeps exactly k, matches a sort oracle, wasm == scalar", () => {
  for (const seed of SEEDS) {
    for (const n of SIZES) {
      const r = rng(seed * 1000 + n);
      const s = scores(n, r);
      for (const k of ks(n, r)) {
        const ref = S.topkMask(s, k);
        const tag = `seed ${seed} n ${n} k ${k}`;
        assert.equal(S.popcount(ref), k, tag);
        if (n <= 4099) same(ref, sortTopk(s, k), `oracle ${tag}`);
        same(wasm.topkMask(s, k), ref, `wasm ${tag}`);
        const tw = wasm.topkThreshold(s, k), ts = S.topkThreshold(s, k);
        assert.ok(Object.is(tw, ts), `threshold ${tag}: ${tw} vs ${ts}`);
        if (k > 0) {
          // Every kept score is >= the threshold and every dropped one <= it.
          for (let i = 0; i < n; i++) assert.ok(ref[i] ? s[i] >= ts : s[i] <= ts, `${tag} i ${i}`);
        } else assert.equal(ts, Infinity);
      }
    }
  }
});

Deno.test("kernels: ties go to lower indices; -0 ties with +0", () => {
  for (const k of [wasm, S]) {
    const s = new Float32Array(37).fill(1);
    same(k.topkMask(s, 5), Uint8Array.from({ length: 37 }, (_, i) => (i < 5 ? 1 : 0)), k.name);
    const z = new Float32Array([0, -0, 0, -0, -1]);
    same(k.topkMask(z, 3), [1, 1, 1, 0, 0], k.name);
    assert.ok(Object.is(k.topkThreshold(z, 2), 0), k.name);
  }
});

Deno.test("kernels: masks to bits and back, popcount, wasm == scalar", () => {
  for (const seed of SEEDS) {
    for (const n of SIZES) {
      const r = rng(seed * 7 + n);
      for (const density of [0, 0.01, 0.5, 1]) {
        const m = mask(n, r, density);
        const tag = `seed ${seed} n ${n} d ${density}`;
        const bits = S.maskToBits(m);
        same(wasm.maskToBits(m), bits, tag);
        const ones = Array.from(m).filter((x) => x !== 0).length;
        assert.equal(S.popcount(m), ones, tag);
        assert.equal(wasm.popcount(m), ones, tag);
        assert.equal(S.popcount(bits), ones, tag);
        assert.equal(wasm.popcount(bits), ones, tag);
        const back = m.map((x) => (x !== 0 ? 1 : 0));
        same(S.bitsToMask(bits, n), back, tag);
        same(wasm.bitsToMask(bits, n), back, tag);
      }
    }
  }
});

Deno.test("kernels: delta codes round-trip, wasm == scalar, known encodings", () => {
  for (const k of [wasm, S]) {
    same(k.encodeDeltas(Uint8Array.from([0, 1, 0, 0, 1, 1])), [1, 2, 0], k.name);
    const far = new Uint8Array(302);
    far[300] = 1;
    same(k.encodeDeltas(far), [0xac, 0x02], k.name);
    same(k.decodeDeltas(Uint8Array.from([0xac, 0x02]), 302), far, k.name);
    assert.equal(k.encodeDeltas(new Uint8Array(0)).length, 0);
  }
  for (const seed of SEEDS) {
    for (const n of [...SIZES, 200003]) {
      const r = rng(seed * 13 + n);
      for (const density of [0, 0.001, 0.1, 0.9]) {
        const m = mask(n, r, density);
        const tag = `seed ${seed} n ${n} d ${density}`;
        const code = S.encodeDeltas(m);
        same(wasm.encodeDeltas(m), code, tag);
        const back = m.map((x) => (x !== 0 ? 1 : 0));
        same(S.decodeDeltas(code, n), back, tag);
        same(wasm.decodeDeltas(code, n), back, tag);
      }
    }
  }
});

Deno.test("kernels: random bytes decode identically or fail identically in wasm and scalar", () => {
  const r = rng(99);
  for (let t = 0; t < 400; t++) {
    const bytes = Uint8Array.from(
      { length: Math.floor(r() * 12) },
      () => (r() < 0.5 ? Math.floor(r() * 256) : Math.floor(r() * 8)),
    );
    const n = Math.floor(r() * 40);
    const outcome = (k: Kernels) => {
      try {
        return Array.from(k.decodeDeltas(bytes, n)).join("");
      } catch (e) {
        assert.ok(e instanceof KernelError, `${k.name}: ${e}`);
        return "error";
      }
    };
    assert.equal(outcome(wasm), outcome(S), `bytes ${bytes} n ${n}`);
  }
});

Deno.test("kernels: gather and scatter, wasm == scalar == definition", () => {
  for (const seed of SEEDS) {
    for (const n of SIZES) {
      const r = rng(seed * 17 + n);
      const m = mask(n, r, r());
      const dense = floats(n, r);
      const want = Float32Array.from(Array.from(dense).filter((_, i) => m[i] !== 0));
      same(S.gather(dense, m), want, `gather n ${n}`);
      same(wasm.gather(dense, m), want, `gather n ${n}`);
      const base = floats(n, r);
      const a = base.slice(), b = base.slice();
      S.scatter(want, m, a);
      wasm.scatter(want, m, b);
      same(b, a, `scatter n ${n}`);
      for (let i = 0; i < n; i++) assert.ok(Object.is(a[i], m[i] ? dense[i] : base[i]));
    }
  }
});

Deno.test("kernels: accumulate + finalize over several clients, wasm == scalar exactly, close to f64", () => {
  for (const seed of SEEDS) {
    for (const n of SIZES) {
      const r = rng(seed * 19 + n);
      const sums = [new Float32Array(n), new Float32Array(n)];
      const weights = [new Float32Array(n), new Float32Array(n)];
      const s64 = new Float64Array(n), w64 = new Float64Array(n);
      for (let c = 0; c < 4; c++) {
        const m = mask(n, r, r());
        const v = floats(n, r);
        for (let i = 0; i < n; i++) if (!m[i] && r() < 0.1) v[i] = NaN; // ignored outside the mask
        const count = 1 + Math.floor(r() * 50);
        S.accumulate(sums[0], weights[0], v, m, count);
        wasm.accumulate(sums[1], weights[1], v, m, count);
        for (let i = 0; i < n; i++) if (m[i]) (s64[i] += count * v[i], w64[i] += count);
      }
      same(sums[1], sums[0], `sum n ${n}`);
      same(weights[1], weights[0], `weight n ${n}`);
      const own = floats(n, r);
      const outS = new Float32Array(n), outW = new Float32Array(n);
      S.finalize(sums[0], weights[0], own, outS);
      wasm.finalize(sums[1], weights[1], own, outW);
      same(outW, outS, `finalize n ${n}`);
      for (let i = 0; i < n; i++) {
        const want = w64[i] > 0 ? s64[i] / w64[i] : own[i];
        assert.ok(
          Math.abs(outS[i] - want) <= 1e-5 * (1 + Math.abs(want)),
          `n ${n} i ${i}: ${outS[i]} vs ${want}`,
        );
      }
      // out may alias own.
      const alias = own.slice();
      wasm.finalize(sums[1], weights[1], alias, alias);
      same(alias, outS, `alias n ${n}`);
    }
  }
});

Deno.test("kernels: accumulateSparse from a bitmask equals accumulate of the scattered upload", () => {
  for (const seed of SEEDS) {
    for (const n of SIZES) {
      const r = rng(seed * 37 + n);
      const acc = [0, 1, 2].map(() => ({ sum: new Float32Array(n), weight: new Float32Array(n) }));
      for (const density of [0.3, 0.97, 1]) {
        const m = mask(n, r, density);
        const bits = S.maskToBits(m);
        const packed = floats(S.popcount(m), r);
        const dense = new Float32Array(n);
        S.scatter(packed, m, dense);
        const count = 1 + Math.floor(r() * 9);
        S.accumulate(acc[0].sum, acc[0].weight, dense, m, count);
        S.accumulateSparse(acc[1].sum, acc[1].weight, bits, packed, count);
        wasm.accumulateSparse(acc[2].sum, acc[2].weight, bits, packed, count);
      }
      for (const j of [1, 2]) {
        same(acc[j].sum, acc[0].sum, `sum impl ${j} n ${n}`);
        same(acc[j].weight, acc[0].weight, `weight impl ${j} n ${n}`);
      }
    }
  }
});

Deno.test("kernels: masked AdamW matches an f64 PyTorch-style step; masked positions never move", () => {
  const opts = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 1 };
  for (const seed of SEEDS) {
    for (const n of SIZES) {
      const r = rng(seed * 23 + n);
      const m0 = mask(n, r, 0.6);
      const p0 = floats(n, r), g = floats(n, r);
      const st = [0, 1, 2].map(() => ({ p: p0.slice(), m: new Float32Array(n), v: new Float32Array(n) }));
      const ref = { p: Float64Array.from(p0), m: new Float64Array(n), v: new Float64Array(n) };
      for (let step = 1; step <= 3; step++) {
        const o = { ...opts, step };
        S.maskedAdamW(st[0].p, g, st[0].m, st[0].v, m0, o);
        wasm.maskedAdamW(st[1].p, g, st[1].m, st[1].v, m0, o);
        wasm.maskedAdamW(st[2].p, g, st[2].m, st[2].v, undefined, o);
        for (let i = 0; i < n; i++) {
          ref.m[i] = 0.9 * ref.m[i] + 0.1 * g[i];
          ref.v[i] = 0.999 * ref.v[i] + 0.001 * g[i] * g[i];
          ref.p[i] = ref.p[i] * (1 - 1e-4) -
            (1e-2 / (1 - 0.9 ** step)) * ref.m[i] / (Math.sqrt(ref.v[i] / (1 - 0.999 ** step)) + 1e-8);
        }
      }
      for (let i = 0; i < n; i++) {
        for (const [j, masked] of [[0, true], [1, true], [2, false]] as const) {
          const keep = masked && !m0[i];
          const p = st[j].p[i];
          if (keep) {
            assert.ok(Object.is(p, p0[i]) && st[j].m[i] === 0 && st[j].v[i] === 0, `n ${n} i ${i} moved`);
          } else assert.ok(Math.abs(p - ref.p[i]) < 1e-5, `n ${n} i ${i} impl ${j}: ${p} vs ${ref.p[i]}`);
        }
      }
    }
  }
});

Deno.test("kernels: jaccard and countNonFinite, wasm == scalar == definition", () => {
  for (const k of [wasm, S]) assert.equal(k.jaccard(new Uint8Array(5), new Uint8Array(5)), 1);
  for (const seed of SEEDS) {
    for (const n of SIZES) {
      const r = rng(seed * 29 + n);
      const a = mask(n, r, r()), b = mask(n, r, r());
      let inter = 0, union = 0;
      for (let i = 0; i < n; i++) (inter += +(!!a[i] && !!b[i]), union += +(!!a[i] || !!b[i]));
      const want = union === 0 ? 1 : inter / union;
      assert.equal(S.jaccard(a, b), want);
      assert.equal(wasm.jaccard(a, b), want);
      const x = floats(n, r);
      let bad = 0;
      for (let i = 0; i < n; i++) if (r() < 0.05) (x[i] = [NaN, Infinity, -Infinity][bad % 3], bad++);
      assert.equal(S.countNonFinite(x), bad);
      assert.equal(wasm.countNonFinite(x), bad);
    }
  }
});

function rejects(k: Kernels, f: () => unknown, pattern: RegExp): void {
  assert.throws(
    f,
    (e: unknown) => e instanceof KernelError && pattern.test(e.message),
    `${k.name}: ${pattern}`,
  );
}

Deno.test("kernels: bad input throws KernelError with a clear message", () => {
  for (const k of [wasm, S]) {
    const s = new Float32Array([3, 1, 2, 5, 4, 0, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2]);
    rejects(k, () => k.topkMask(s, 19), /exceeds the number of scores n = 18/);
    rejects(k, () => k.topkThreshold(s, -1), /non-negative integer/);
    rejects(k, () => k.topkMask(s, 1.5), /non-negative integer/);
    for (const at of [0, 5, 17]) {
      const bad = s.slice();
      bad[at] = NaN;
      rejects(k, () => k.topkMask(bad, 3), new RegExp(`index ${at} is NaN`));
      rejects(k, () => k.topkThreshold(bad, 0), new RegExp(`index ${at} is NaN`));
    }
    rejects(k, () => k.topkMask(s, 2, new Uint8Array(3)), /length mismatch/);
    rejects(k, () => k.topkMask([1, 2] as unknown as Float32Array, 1), /must be a Float32Array, got Array/);
    rejects(
      k,
      () => k.accumulate(new Float32Array(4), new Float32Array(4), new Float32Array(3), new Uint8Array(4), 1),
      /values has 3 elements but sum has 4/,
    );
    rejects(
      k,
      () => k.accumulate(new Float32Array(4), new Float32Array(4), new Float32Array(4), new Uint8Array(5), 1),
      /length mismatch/,
    );
    rejects(
      k,
      () =>
        k.accumulate(new Float32Array(4), new Float32Array(4), new Float32Array(4), new Uint8Array(4), NaN),
      /sample count/,
    );
    rejects(
      k,
      () =>
        k.accumulate(new Float32Array(4), new Float32Array(4), new Float32Array(4), new Uint8Array(4), -2),
      /sample count/,
    );
    rejects(
      k,
      () => k.finalize(new Float32Array(4), new Float32Array(4), new Float32Array(4), new Float32Array(2)),
      /length mismatch/,
    );
    rejects(k, () => k.gather(new Float32Array(4), new Uint8Array(3)), /length mismatch/);
    rejects(
      k,
      () => k.scatter(new Float32Array(2), Uint8Array.from([1, 0, 0]), new Float32Array(3)),
      /popcount\(mask\)/,
    );
    rejects(k, () => k.bitsToMask(Uint32Array.from([0b1000]), 3), /bits set past position n = 3/);
    rejects(k, () => k.bitsToMask(new Uint32Array(2), 3), /length mismatch/);
    rejects(k, () => k.decodeDeltas(Uint8Array.from([0x80]), 10), /truncated/);
    rejects(
      k,
      () => k.decodeDeltas(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0x7f]), 10),
      /overflows 32 bits/,
    );
    rejects(k, () => k.decodeDeltas(Uint8Array.from([3, 7]), 10), /past mask length n = 10/);
    rejects(k, () => k.jaccard(new Uint8Array(3), new Uint8Array(4)), /length mismatch/);
    rejects(k, () => k.popcount(new Float32Array(3) as unknown as Uint8Array), /popcount needs/);
    const p = new Float32Array(3);
    const o = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 };
    rejects(
      k,
      () => k.maskedAdamW(p, new Float32Array(2), p.slice(), p.slice(), undefined, o),
      /length mismatch/,
    );
    rejects(k, () => k.maskedAdamW(p, p.slice(), p.slice(), p.slice(), undefined, { ...o, step: 0 }), /step/);
    rejects(
      k,
      () => k.maskedAdamW(p, p.slice(), p.slice(), p.slice(), undefined, { ...o, beta1: 1 }),
      /betas/,
    );
  }
});
