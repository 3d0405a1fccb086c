//! Perfit kernels: pruning masks and sparse parameter-wise aggregation over f32/u8/u32 arrays in
//! WebAssembly linear memory, vectorized with simd128.
//!
//! Plain C ABI, no allocator: the TypeScript binding (`runtime/kernels/wasm.ts`) owns linear memory
//! above `__heap_base` and passes pointers. Argument validation (lengths, k <= n) happens in the
//! binding; functions here only report data-dependent errors (NaN scores, malformed codes).
//! The scalar reference `runtime/kernels/scalar.ts` defines the semantics reproduced here.
#![no_std]

use core::arch::wasm32::*;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    unreachable()
}

const DIGIT_BITS: [u32; 3] = [11, 11, 10];
const DIGIT_SHIFT: [u32; 3] = [21, 10, 0];
const BINS: usize = 1 << 11;

/// Four interleaved histograms so consecutive increments rarely hit the same counter.
static mut HIST: [u32; 4 * BINS] = [0; 4 * BINS];

#[inline(always)]
unsafe fn load(p: *const u8) -> v128 {
    v128_load(p as *const v128)
}

#[inline(always)]
unsafe fn store(p: *mut u8, v: v128) {
    v128_store(p as *mut v128, v)
}

/// Order-preserving u32 keys of four floats; `+0.0` is added first so that -0 maps onto +0.
#[inline(always)]
fn keys(x: v128) -> v128 {
    let b = f32x4_add(x, f32x4_splat(0.0));
    let sign = i32x4_shr(b, 31);
    v128_xor(b, v128_or(sign, u32x4_splat(0x8000_0000)))
}

#[inline(always)]
fn key1(x: f32) -> u32 {
    let b = (x + 0.0).to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

#[inline(always)]
fn is_nan_bits(b: u32) -> bool {
    b & 0x7fff_ffff > 0x7f80_0000
}

/// Index of the first NaN in `x`, or -1.
#[no_mangle]
pub unsafe extern "C" fn pk_find_nan(x: *const f32, n: usize) -> i32 {
    let mut i = 0;
    while i + 4 <= n {
        let v = load(x.add(i) as *const u8);
        if v128_any_true(f32x4_ne(v, v)) {
            break;
        }
        i += 4;
    }
    while i < n {
        if is_nan_bits((*x.add(i)).to_bits()) {
            return i as i32;
        }
        i += 1;
    }
    -1
}

/// Radix select of the k-th largest key (1 <= k <= n). Writes `[key, ties]` to `out`, where `ties` is
/// how many elements equal to `key` the top-k mask keeps. Returns 0, or -1 if a score is NaN.
#[no_mangle]
pub unsafe extern "C" fn pk_topk_select(x: *const f32, n: usize, k: usize, out: *mut u32) -> i32 {
    let hist = &mut *core::ptr::addr_of_mut!(HIST);
    let mut prefix: u32 = 0;
    let mut prefix_mask: u32 = 0;
    let mut remaining = k as u32;
    for pass in 0..3 {
        let shift = DIGIT_SHIFT[pass];
        let digit_mask = (1u32 << DIGIT_BITS[pass]) - 1;
        for h in hist.iter_mut() {
            *h = 0;
        }
        let mut i = 0;
        if pass == 0 {
            let mut nan = i32x4_splat(0);
            while i + 4 <= n {
                let v = load(x.add(i) as *const u8);
                nan = v128_or(nan, f32x4_ne(v, v));
                let kv = u32x4_shr(keys(v), shift);
                *hist.get_unchecked_mut(u32x4_extract_lane::<0>(kv) as usize) += 1;
                *hist.get_unchecked_mut(BINS + u32x4_extract_lane::<1>(kv) as usize) += 1;
                *hist.get_unchecked_mut(2 * BINS + u32x4_extract_lane::<2>(kv) as usize) += 1;
                *hist.get_unchecked_mut(3 * BINS + u32x4_extract_lane::<3>(kv) as usize) += 1;
                i += 4;
            }
            if v128_any_true(nan) {
                return -1;
            }
            while i < n {
                let v = *x.add(i);
                if is_nan_bits(v.to_bits()) {
                    return -1;
                }
                *hist.get_unchecked_mut((key1(v) >> shift) as usize) += 1;
                i += 1;
            }
        } else {
            let pm = u32x4_splat(prefix_mask);
            let pv = u32x4_splat(prefix);
            while i + 16 <= n {
                let p = x.add(i) as *const u8;
                let k0 = keys(load(p));
                let k1 = keys(load(p.add(16)));
                let k2 = keys(load(p.add(32)));
                let k3 = keys(load(p.add(48)));
                let e0 = i32x4_eq(v128_and(k0, pm), pv);
                let e1 = i32x4_eq(v128_and(k1, pm), pv);
                let e2 = i32x4_eq(v128_and(k2, pm), pv);
                let e3 = i32x4_eq(v128_and(k3, pm), pv);
                if v128_any_true(v128_or(v128_or(e0, e1), v128_or(e2, e3))) {
                    for j in i..i + 16 {
                        let key = key1(*x.add(j));
                        if key & prefix_mask == prefix {
                            *hist.get_unchecked_mut(((key >> shift) & digit_mask) as usize) += 1;
                        }
                    }
                }
                i += 16;
            }
            while i < n {
                let key = key1(*x.add(i));
                if key & prefix_mask == prefix {
                    *hist.get_unchecked_mut(((key >> shift) & digit_mask) as usize) += 1;
                }
                i += 1;
            }
        }
        let mut digit = digit_mask as usize;
        while digit > 0 {
            let c = hist[digit] + hist[BINS + digit] + hist[2 * BINS + digit] + hist[3 * BINS + digit];
            if c >= remaining {
                break;
            }
            remaining -= c;
            digit -= 1;
        }
        prefix |= (digit as u32) << shift;
        prefix_mask |= digit_mask << shift;
    }
    *out = prefix;
    *out.add(1) = remaining;
    0
}

/// Writes the top-k mask for threshold key `t`: ones where key > t, and the first `ties` where key == t.
#[no_mangle]
pub unsafe extern "C" fn pk_topk_mask(x: *const f32, n: usize, t: u32, ties: u32, mask: *mut u8) {
    let tv = u32x4_splat(t);
    let one = u8x16_splat(1);
    let mut need = ties;
    let mut i = 0;
    while i + 16 <= n {
        let p = x.add(i) as *const u8;
        let k0 = keys(load(p));
        let k1 = keys(load(p.add(16)));
        let k2 = keys(load(p.add(32)));
        let k3 = keys(load(p.add(48)));
        let eq = v128_or(v128_or(i32x4_eq(k0, tv), i32x4_eq(k1, tv)), v128_or(i32x4_eq(k2, tv), i32x4_eq(k3, tv)));
        if need > 0 && v128_any_true(eq) {
            for j in i..i + 16 {
                let key = key1(*x.add(j));
                let keep = key > t || (key == t && need > 0);
                if key == t && need > 0 {
                    need -= 1;
                }
                *mask.add(j) = keep as u8;
            }
        } else {
            let a = i16x8_narrow_i32x4(u32x4_gt(k0, tv), u32x4_gt(k1, tv));
            let b = i16x8_narrow_i32x4(u32x4_gt(k2, tv), u32x4_gt(k3, tv));
            store(mask.add(i), v128_and(i8x16_narrow_i16x8(a, b), one));
        }
        i += 16;
    }
    while i < n {
        let key = key1(*x.add(i));
        let keep = key > t || (key == t && need > 0);
        if key == t && need > 0 {
            need -= 1;
        }
        *mask.add(i) = keep as u8;
        i += 1;
    }
}

/// Packs `n` mask bytes (non-zero = 1) into LSB-first u32 words.
#[no_mangle]
pub unsafe extern "C" fn pk_mask_to_bits(mask: *const u8, n: usize, bits: *mut u32) {
    let zero = u8x16_splat(0);
    let mut i = 0;
    while i + 32 <= n {
        let lo = i8x16_bitmask(i8x16_ne(load(mask.add(i)), zero)) as u32;
        let hi = i8x16_bitmask(i8x16_ne(load(mask.add(i + 16)), zero)) as u32;
        *bits.add(i / 32) = lo | (hi << 16);
        i += 32;
    }
    if i < n {
        let mut w = 0u32;
        for j in i..n {
            if *mask.add(j) != 0 {
                w |= 1 << (j - i);
            }
        }
        *bits.add(i / 32) = w;
    }
}

/// Unpacks `n` positions of an LSB-first bitmask into 0/1 bytes. Returns -1 if bits past `n` are set.
#[no_mangle]
pub unsafe extern "C" fn pk_bits_to_mask(bits: *const u32, n: usize, mask: *mut u8) -> i32 {
    let words = (n + 31) / 32;
    if n % 32 != 0 && (*bits.add(words - 1) >> (n % 32)) != 0 {
        return -1;
    }
    let sel_lo = i8x16(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let sel_hi = i8x16(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let bitv = u8x16(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
    let one = u8x16_splat(1);
    let mut i = 0;
    while i + 32 <= n {
        let w = u32x4_splat(*bits.add(i / 32));
        let lo = v128_and(i8x16_ne(v128_and(i8x16_swizzle(w, sel_lo), bitv), u8x16_splat(0)), one);
        let hi = v128_and(i8x16_ne(v128_and(i8x16_swizzle(w, sel_hi), bitv), u8x16_splat(0)), one);
        store(mask.add(i), lo);
        store(mask.add(i + 16), hi);
        i += 32;
    }
    while i < n {
        *mask.add(i) = ((*bits.add(i / 32) >> (i % 32)) & 1) as u8;
        i += 1;
    }
    0
}

/// Sums the u8 lanes of a byte counter into a u32.
#[inline(always)]
fn hsum_u8(acc: v128) -> u32 {
    let s = u32x4_extadd_pairwise_u16x8(u16x8_extadd_pairwise_u8x16(acc));
    u32x4_extract_lane::<0>(s) + u32x4_extract_lane::<1>(s) + u32x4_extract_lane::<2>(s) + u32x4_extract_lane::<3>(s)
}

/// Number of non-zero bytes.
#[no_mangle]
pub unsafe extern "C" fn pk_popcount_u8(mask: *const u8, n: usize) -> u32 {
    let zero = u8x16_splat(0);
    let mut total = 0u32;
    let mut i = 0;
    while i + 16 <= n {
        // A byte counter overflows after 255 increments, so flush every 255 vectors.
        let mut acc = zero;
        let mut r = 0;
        while r < 255 && i + 16 <= n {
            acc = i8x16_sub(acc, i8x16_ne(load(mask.add(i)), zero));
            i += 16;
            r += 1;
        }
        total += hsum_u8(acc);
    }
    while i < n {
        total += (*mask.add(i) != 0) as u32;
        i += 1;
    }
    total
}

/// Number of set bits in `words` u32 words.
#[no_mangle]
pub unsafe extern "C" fn pk_popcount_u32(bits: *const u32, words: usize) -> u32 {
    let mut total = 0u32;
    for i in 0..words {
        total += (*bits.add(i)).count_ones();
    }
    total
}

/// LEB128 gap code of a mask (each varint = zeros skipped before a one). Returns bytes written;
/// `out` must hold `popcount + ceil(n/128) + 5` bytes.
#[no_mangle]
pub unsafe extern "C" fn pk_encode_deltas(mask: *const u8, n: usize, out: *mut u8) -> usize {
    let mut pos = 0usize;
    let mut gap: u32 = 0;
    let mut i = 0;
    while i < n {
        if i + 16 <= n && !v128_any_true(load(mask.add(i))) {
            gap += 16;
            i += 16;
            continue;
        }
        let end = if i + 16 <= n { i + 16 } else { n };
        for j in i..end {
            if *mask.add(j) == 0 {
                gap += 1;
                continue;
            }
            while gap >= 0x80 {
                *out.add(pos) = (gap as u8 & 0x7f) | 0x80;
                pos += 1;
                gap >>= 7;
            }
            *out.add(pos) = gap as u8;
            pos += 1;
            gap = 0;
        }
        i = end;
    }
    pos
}

/// Decodes a gap code into a zero-filled mask of length n. Returns the number of ones, or
/// -1 (truncated varint), -2 (varint overflows 32 bits), -3 (index past n).
#[no_mangle]
pub unsafe extern "C" fn pk_decode_deltas(bytes: *const u8, len: usize, n: usize, mask: *mut u8) -> i32 {
    let zero = u8x16_splat(0);
    let mut i = 0;
    while i + 16 <= n {
        store(mask.add(i), zero);
        i += 16;
    }
    while i < n {
        *mask.add(i) = 0;
        i += 1;
    }
    let mut idx: u64 = 0; // one past the previous index
    let mut ones = 0i32;
    let mut pos = 0;
    while pos < len {
        let mut gap: u64 = 0;
        let mut shift = 0u32;
        loop {
            if pos >= len {
                return -1;
            }
            let b = *bytes.add(pos);
            pos += 1;
            if shift == 28 && b > 0x0f {
                return -2;
            }
            gap |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let at = idx + gap;
        if at >= n as u64 {
            return -3;
        }
        *mask.add(at as usize) = 1;
        idx = at + 1;
        ones += 1;
    }
    ones
}

/// Copies the values of `dense` at the mask's ones to `out`, in order. Returns how many.
#[no_mangle]
pub unsafe extern "C" fn pk_gather(dense: *const f32, mask: *const u8, n: usize, out: *mut f32) -> usize {
    let mut j = 0;
    let mut i = 0;
    while i < n {
        if i + 16 <= n && !v128_any_true(load(mask.add(i))) {
            i += 16;
            continue;
        }
        let end = if i + 16 <= n { i + 16 } else { n };
        for t in i..end {
            if *mask.add(t) != 0 {
                *out.add(j) = *dense.add(t);
                j += 1;
            }
        }
        i = end;
    }
    j
}

/// Writes `values` to the mask's ones of `out`, in order; other positions are untouched.
#[no_mangle]
pub unsafe extern "C" fn pk_scatter(values: *const f32, mask: *const u8, n: usize, out: *mut f32) {
    let mut j = 0;
    let mut i = 0;
    while i < n {
        if i + 16 <= n && !v128_any_true(load(mask.add(i))) {
            i += 16;
            continue;
        }
        let end = if i + 16 <= n { i + 16 } else { n };
        for t in i..end {
            if *mask.add(t) != 0 {
                *out.add(t) = *values.add(j);
                j += 1;
            }
        }
        i = end;
    }
}

/// Widens 16 mask bytes into four i32 lane masks (all ones where the byte is non-zero).
#[inline(always)]
fn widen_mask(mb: v128) -> (v128, v128, v128, v128) {
    let m = i8x16_ne(mb, u8x16_splat(0));
    let lo = i16x8_extend_low_i8x16(m);
    let hi = i16x8_extend_high_i8x16(m);
    (
        i32x4_extend_low_i16x8(lo),
        i32x4_extend_high_i16x8(lo),
        i32x4_extend_low_i16x8(hi),
        i32x4_extend_high_i16x8(hi),
    )
}

#[inline(always)]
unsafe fn acc4(sum: *mut f32, weight: *mut f32, values: *const f32, m: v128, wv: v128) {
    let s = load(sum as *const u8);
    let ww = load(weight as *const u8);
    let v = load(values as *const u8);
    store(sum as *mut u8, f32x4_add(s, v128_and(f32x4_mul(wv, v), m)));
    store(weight as *mut u8, f32x4_add(ww, v128_and(wv, m)));
}

/// One client's upload: `sum += w*m*values; weight += w*m`. Values outside the mask are never read
/// into the result, so garbage (even NaN) there is harmless.
#[no_mangle]
pub unsafe extern "C" fn pk_accumulate(sum: *mut f32, weight: *mut f32, values: *const f32, mask: *const u8, n: usize, w: f32) {
    let wv = f32x4_splat(w);
    let mut i = 0;
    while i + 16 <= n {
        let mb = load(mask.add(i));
        // All-zero chunks leave sum and weight as they are: skip their memory traffic.
        if v128_any_true(mb) {
            let (m0, m1, m2, m3) = widen_mask(mb);
            acc4(sum.add(i), weight.add(i), values.add(i), m0, wv);
            acc4(sum.add(i + 4), weight.add(i + 4), values.add(i + 4), m1, wv);
            acc4(sum.add(i + 8), weight.add(i + 8), values.add(i + 8), m2, wv);
            acc4(sum.add(i + 12), weight.add(i + 12), values.add(i + 12), m3, wv);
        }
        i += 16;
    }
    while i < n {
        if *mask.add(i) != 0 {
            *sum.add(i) += w * *values.add(i);
            *weight.add(i) += w;
        }
        i += 1;
    }
}

/// Swizzle patterns that expand the packed values of a 4-bit mask nibble into their lanes
/// (index 0x80 is out of range, so swizzle yields 0 there).
const fn expand_table() -> [[u8; 16]; 16] {
    let mut t = [[0x80u8; 16]; 16];
    let mut b = 0;
    while b < 16 {
        let mut rank = 0u8;
        let mut j = 0;
        while j < 4 {
            if b & (1 << j) != 0 {
                let mut q = 0;
                while q < 4 {
                    t[b][4 * j + q] = 4 * rank + q as u8;
                    q += 1;
                }
                rank += 1;
            }
            j += 1;
        }
        b += 1;
    }
    t
}

static EXPAND: [[u8; 16]; 16] = expand_table();

/// One client's compact upload: for the r-th set bit p of the LSB-first bitmask, `sum[p] += w*values[r]`
/// and `weight[p] += w`. Branch-free per nibble: load four packed values, expand them into their lanes
/// with a swizzle, and blend into sum and weight.
#[no_mangle]
pub unsafe extern "C" fn pk_accumulate_sparse(
    sum: *mut f32,
    weight: *mut f32,
    n: usize,
    bits: *const u32,
    values: *const f32,
    count: usize,
    w: f32,
) {
    let words = (n + 31) / 32;
    let wv = f32x4_splat(w);
    let lane_bits = u32x4(1, 2, 4, 8);
    let zero = u32x4_splat(0);
    let mut r = 0usize;
    for wi in 0..words {
        let x = *bits.add(wi);
        if x == 0 {
            continue;
        }
        let base = wi * 32;
        if r + 32 > count || base + 32 > n {
            // Near the end of the values or of sum/weight, 4-lane loads could run past them: finish this
            // word one position at a time.
            let mut y = x;
            while y != 0 {
                let p = base + y.trailing_zeros() as usize;
                *sum.add(p) += w * *values.add(r);
                *weight.add(p) += w;
                r += 1;
                y &= y - 1;
            }
            continue;
        }
        let mut q = 0;
        while q < 8 {
            // Two nibbles per step; the second one's values start after the first one's.
            let lo = (x >> (4 * q)) & 15;
            let hi = (x >> (4 * q + 4)) & 15;
            let p = base + 4 * q;
            q += 2;
            if lo | hi == 0 {
                continue;
            }
            let r_hi = r + lo.count_ones() as usize;
            nibble(sum.add(p), weight.add(p), values.add(r), lo, wv, lane_bits, zero);
            nibble(sum.add(p + 4), weight.add(p + 4), values.add(r_hi), hi, wv, lane_bits, zero);
            r = r_hi + hi.count_ones() as usize;
        }
    }
}

#[inline(always)]
unsafe fn nibble(sum: *mut f32, weight: *mut f32, values: *const f32, nib: u32, wv: v128, lane_bits: v128, zero: v128) {
    let sel = i32x4_ne(v128_and(u32x4_splat(nib), lane_bits), zero);
    let ex = i8x16_swizzle(load(values as *const u8), load(EXPAND[nib as usize].as_ptr()));
    let s = load(sum as *const u8);
    let ww = load(weight as *const u8);
    store(sum as *mut u8, v128_bitselect(f32x4_add(s, f32x4_mul(wv, ex)), s, sel));
    store(weight as *mut u8, v128_bitselect(f32x4_add(ww, wv), ww, sel));
}

/// `out = sum/weight` where weight > 0, else `own`.
#[no_mangle]
pub unsafe extern "C" fn pk_finalize(sum: *const f32, weight: *const f32, own: *const f32, out: *mut f32, n: usize) {
    let zero = f32x4_splat(0.0);
    let mut i = 0;
    while i + 4 <= n {
        let s = load(sum.add(i) as *const u8);
        let w = load(weight.add(i) as *const u8);
        let o = load(own.add(i) as *const u8);
        store(out.add(i) as *mut u8, v128_bitselect(f32x4_div(s, w), o, f32x4_gt(w, zero)));
        i += 4;
    }
    while i < n {
        let w = *weight.add(i);
        *out.add(i) = if w > 0.0 { *sum.add(i) / w } else { *own.add(i) };
        i += 1;
    }
}

/// AdamW step constants, laid out as 8 f32 by the binding (see `adamWConstants` in scalar.ts).
#[repr(C)]
pub struct AdamW {
    b1: f32,
    b2: f32,
    omb1: f32,
    omb2: f32,
    decay: f32,
    step_size: f32,
    bc2: f32,
    eps: f32,
}

/// Masked AdamW (decoupled decay). `mask` may be null (0) for a dense step. Unselected positions of
/// params, m and v are left untouched.
#[no_mangle]
pub unsafe extern "C" fn pk_masked_adamw(p: *mut f32, g: *const f32, m: *mut f32, v: *mut f32, mask: *const u8, n: usize, c: *const AdamW) {
    let c = &*c;
    let (b1, b2, omb1, omb2) = (f32x4_splat(c.b1), f32x4_splat(c.b2), f32x4_splat(c.omb1), f32x4_splat(c.omb2));
    let (decay, step, bc2, eps) = (f32x4_splat(c.decay), f32x4_splat(c.step_size), f32x4_splat(c.bc2), f32x4_splat(c.eps));
    let all = u32x4_splat(u32::MAX);
    let mut i = 0;
    while i + 4 <= n {
        let sel = if mask.is_null() {
            all
        } else {
            let bytes = u32x4(*mask.add(i) as u32, *mask.add(i + 1) as u32, *mask.add(i + 2) as u32, *mask.add(i + 3) as u32);
            i32x4_ne(bytes, u32x4_splat(0))
        };
        if v128_any_true(sel) {
            let gi = load(g.add(i) as *const u8);
            let mo = load(m.add(i) as *const u8);
            let vo = load(v.add(i) as *const u8);
            let po = load(p.add(i) as *const u8);
            let mn = f32x4_add(f32x4_mul(b1, mo), f32x4_mul(omb1, gi));
            let vn = f32x4_add(f32x4_mul(b2, vo), f32x4_mul(omb2, f32x4_mul(gi, gi)));
            let denom = f32x4_add(f32x4_sqrt(f32x4_mul(vn, bc2)), eps);
            let pn = f32x4_sub(f32x4_mul(po, decay), f32x4_div(f32x4_mul(step, mn), denom));
            store(m.add(i) as *mut u8, v128_bitselect(mn, mo, sel));
            store(v.add(i) as *mut u8, v128_bitselect(vn, vo, sel));
            store(p.add(i) as *mut u8, v128_bitselect(pn, po, sel));
        }
        i += 4;
    }
    while i < n {
        if mask.is_null() || *mask.add(i) != 0 {
            let gi = *g.add(i);
            let mn = c.b1 * *m.add(i) + c.omb1 * gi;
            let vn = c.b2 * *v.add(i) + c.omb2 * gi * gi;
            *m.add(i) = mn;
            *v.add(i) = vn;
            *p.add(i) = *p.add(i) * c.decay - (c.step_size * mn) / (sqrt_f32(vn * c.bc2) + c.eps);
        }
        i += 1;
    }
}

#[inline(always)]
fn sqrt_f32(x: f32) -> f32 {
    f32x4_extract_lane::<0>(f32x4_sqrt(f32x4_splat(x)))
}

/// Writes `[|a and b|, |a or b|]` (non-zero bytes = 1) to `out`.
#[no_mangle]
pub unsafe extern "C" fn pk_overlap(a: *const u8, b: *const u8, n: usize, out: *mut u32) {
    let zero = u8x16_splat(0);
    let (mut inter, mut union) = (0u32, 0u32);
    let mut i = 0;
    while i + 16 <= n {
        let (mut ai, mut au) = (zero, zero);
        let mut r = 0;
        while r < 255 && i + 16 <= n {
            let x = i8x16_ne(load(a.add(i)), zero);
            let y = i8x16_ne(load(b.add(i)), zero);
            ai = i8x16_sub(ai, v128_and(x, y));
            au = i8x16_sub(au, v128_or(x, y));
            i += 16;
            r += 1;
        }
        inter += hsum_u8(ai);
        union += hsum_u8(au);
    }
    while i < n {
        let x = *a.add(i) != 0;
        let y = *b.add(i) != 0;
        inter += (x && y) as u32;
        union += (x || y) as u32;
        i += 1;
    }
    *out = inter;
    *out.add(1) = union;
}

/// Number of NaN or infinite entries.
#[no_mangle]
pub unsafe extern "C" fn pk_count_nonfinite(x: *const f32, n: usize) -> u32 {
    let exp = u32x4_splat(0x7f80_0000);
    let mut acc = i32x4_splat(0);
    let mut i = 0;
    while i + 4 <= n {
        let v = load(x.add(i) as *const u8);
        acc = i32x4_sub(acc, i32x4_eq(v128_and(v, exp), exp));
        i += 4;
    }
    let mut total = u32x4_extract_lane::<0>(acc) + u32x4_extract_lane::<1>(acc) + u32x4_extract_lane::<2>(acc) + u32x4_extract_lane::<3>(acc);
    while i < n {
        total += ((*x.add(i)).to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32;
        i += 1;
    }
    total
}
