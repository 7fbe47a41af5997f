//! The x86-64 kernels (AVX2, AVX-512 VL/BW with VNNI); see the parent module for the
//! bit rules. Every function here is `unsafe`: it must run only on a CPU that has the
//! instruction sets of its `target_feature` (checked by `Level::detect`), with shapes
//! the caller checked.

// The AVX-512 intrinsics (`vpdpbusd`) are stable since Rust 1.89; the workspace's
// MSRV is 1.85, and the VNNI kernel is the one item that needs more.
#![allow(clippy::incompatible_msrv)]

use std::arch::x86_64::*;
use tinylens_core::quant::Tensor;

use super::{reduce8, weight, widen_int4};

/// Eight weights from `p` (f32, or halves widened exactly as the core widens them).
#[inline(always)]
unsafe fn load8(f16: bool, p: *const u8) -> __m256 {
    if f16 {
        let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
        let mag = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_and_si256(h, _mm256_set1_epi32(0x7fff)),
            13,
        ));
        let mag = _mm256_mul_ps(
            mag,
            _mm256_castsi256_ps(_mm256_set1_epi32((254 - 15) << 23)),
        );
        let big = _mm256_cmp_ps(mag, _mm256_set1_ps(65536.0), _CMP_GE_OQ);
        let exp = _mm256_and_ps(big, _mm256_castsi256_ps(_mm256_set1_epi32(0xff << 23)));
        let sign = _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x8000)), 16);
        _mm256_or_ps(_mm256_or_ps(mag, exp), _mm256_castsi256_ps(sign))
    } else {
        _mm256_loadu_ps(p as *const f32)
    }
}

/// One register block: rows `r0..r0 + R` × tokens `t0..t0 + T`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn float_block<const R: usize, const T: usize, const F16: bool>(
    w: &[u8],
    x: &[f32],
    rows: usize,
    cols: usize,
    r0: usize,
    t0: usize,
    out: &mut [f32],
) {
    let b = if F16 { 2 } else { 4 };
    let row_len = cols * b;
    let wp = w.as_ptr().add(r0 * row_len);
    let xp = x.as_ptr().add(t0 * cols);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let full = cols / 8 * 8;
    let mut c = 0;
    while c < full {
        let xs: [__m256; T] = core::array::from_fn(|t| _mm256_loadu_ps(xp.add(t * cols + c)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wv = load8(F16, wp.add(r * row_len + c * b));
            for (a, xv) in acc_r.iter_mut().zip(&xs) {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(wv, *xv));
            }
        }
        c += 8;
    }
    if R == 4 && full == cols {
        // No tail: the lane trees of four rows at once, in the core's order —
        // `hadd` pairs lanes (l0+l1, l2+l3, ...), again pairs the pairs, and the two
        // halves make `(l0..l3) + (l4..l7)`. Four outputs, one store.
        #[allow(clippy::needless_range_loop)] // `t` indexes four rows' accumulators
        for t in 0..T {
            let h01 = _mm256_hadd_ps(acc[0][t], acc[1 % R][t]);
            let h23 = _mm256_hadd_ps(acc[2 % R][t], acc[3 % R][t]);
            let h = _mm256_hadd_ps(h01, h23);
            let sum = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            _mm_storeu_ps(out.as_mut_ptr().add((t0 + t) * rows + r0), sum);
        }
        return;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = &w[(r0 + r) * row_len..(r0 + r + 1) * row_len];
        for (t, a) in acc_r.iter().enumerate() {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
            let xt = &x[(t0 + t) * cols..(t0 + t + 1) * cols];
            for (j, lane) in lanes.iter_mut().enumerate().take(cols - full) {
                *lane += weight(F16, row, full + j) * xt[full + j];
            }
            out[(t0 + t) * rows + r0 + r] = reduce8(lanes);
        }
    }
}

/// Rows outer in blocks of `R`, tokens inner in blocks of `T`; the rows and tokens
/// left over in blocks of one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn float_all<const R: usize, const T: usize, const F16: bool>(
    w: &[u8],
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    out: &mut [f32],
) {
    let mut r = 0;
    while r < rows {
        let full_r = r + R <= rows;
        let mut t = 0;
        while t < n {
            // Tokens left over after the blocks of `T` go two at a time, then one.
            let nt = if t + T <= n {
                T
            } else if t + 2 <= n {
                2
            } else {
                1
            };
            match (full_r, nt) {
                (true, 1) => float_block::<R, 1, F16>(w, x, rows, cols, r, t, out),
                (true, 2) => float_block::<R, 2, F16>(w, x, rows, cols, r, t, out),
                (true, _) => float_block::<R, T, F16>(w, x, rows, cols, r, t, out),
                (false, 1) => float_block::<1, 1, F16>(w, x, rows, cols, r, t, out),
                (false, 2) => float_block::<1, 2, F16>(w, x, rows, cols, r, t, out),
                (false, _) => float_block::<1, T, F16>(w, x, rows, cols, r, t, out),
            }
            t += nt;
        }
        r += if full_r { R } else { 1 };
    }
}

#[target_feature(enable = "avx2")]
pub unsafe fn float_avx2(
    f16: bool,
    w: &[u8],
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    out: &mut [f32],
) {
    if f16 {
        float_all::<4, 3, true>(w, x, n, rows, cols, out)
    } else {
        float_all::<4, 3, false>(w, x, n, rows, cols, out)
    }
}

#[target_feature(enable = "avx2,avx512f,avx512vl")]
pub unsafe fn float_avx512(
    f16: bool,
    w: &[u8],
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    out: &mut [f32],
) {
    if f16 {
        float_all::<4, 6, true>(w, x, n, rows, cols, out)
    } else {
        float_all::<4, 6, false>(w, x, n, rows, cols, out)
    }
}

/// Horizontal sum of eight i32 lanes (exact: wrapping adds of an exact sum).
#[inline(always)]
unsafe fn hsum(v: __m256i) -> i32 {
    let mut l = [0i32; 8];
    _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, v);
    l.iter().fold(0i32, |a, b| a.wrapping_add(*b))
}

/// Σ w·x over 32 columns into i32 lanes with AVX2: |w| times x with w's sign.
#[inline(always)]
unsafe fn madd_avx2(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    let prod = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    _mm256_add_epi32(acc, _mm256_madd_epi16(prod, _mm256_set1_epi16(1)))
}

/// One int8 block, rows `r0..r0 + R` × tokens `t0..t0 + T`, exact integer sums.
/// With `vnni`, weights are made unsigned (+128) and 128·Σx subtracted (`xsum`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn int8_block<const R: usize, const T: usize, const VNNI: bool>(
    w: &[u8],
    x: &[i8],
    xsum: &[i32],
    rows: usize,
    cols: usize,
    r0: usize,
    t0: usize,
    out: &mut [i32],
) {
    let wp = w.as_ptr().add(r0 * cols);
    let xp = x.as_ptr().add(t0 * cols);
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let full = cols / 32 * 32;
    let bias = _mm256_set1_epi8(-128);
    let mut c = 0;
    while c < full {
        let xs: [__m256i; T] =
            core::array::from_fn(|t| _mm256_loadu_si256(xp.add(t * cols + c) as *const __m256i));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wv = _mm256_loadu_si256(wp.add(r * cols + c) as *const __m256i);
            if VNNI {
                let wu = _mm256_xor_si256(wv, bias);
                for (a, xv) in acc_r.iter_mut().zip(&xs) {
                    *a = _mm256_dpbusd_epi32(*a, wu, *xv);
                }
            } else {
                for (a, xv) in acc_r.iter_mut().zip(&xs) {
                    *a = madd_avx2(*a, wv, *xv);
                }
            }
        }
        c += 32;
    }
    // Sixteen columns more in 128-bit registers (W_O's rows of d_head = 16, 48, ...).
    let half = cols / 16 * 16;
    let mut acc16 = [[_mm_setzero_si128(); T]; R];
    if half > full {
        let xs: [__m128i; T] =
            core::array::from_fn(|t| _mm_loadu_si128(xp.add(t * cols + full) as *const __m128i));
        for (r, acc_r) in acc16.iter_mut().enumerate() {
            let wv = _mm_loadu_si128(wp.add(r * cols + full) as *const __m128i);
            for (a, xv) in acc_r.iter_mut().zip(&xs) {
                *a = if VNNI {
                    _mm_dpbusd_epi32(*a, _mm_xor_si128(wv, _mm256_castsi256_si128(bias)), *xv)
                } else {
                    let prod = _mm_maddubs_epi16(_mm_abs_epi8(wv), _mm_sign_epi8(*xv, wv));
                    _mm_madd_epi16(prod, _mm_set1_epi16(1))
                };
            }
        }
    }
    if R == 4 && half == cols {
        // No tail: four rows' sums at once (pairwise adds; integers, so any order).
        #[allow(clippy::needless_range_loop)] // `t` indexes four rows' accumulators
        for t in 0..T {
            let h01 = _mm256_hadd_epi32(acc[0][t], acc[1 % R][t]);
            let h23 = _mm256_hadd_epi32(acc[2 % R][t], acc[3 % R][t]);
            let h = _mm256_hadd_epi32(h01, h23);
            let mut s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
            let g01 = _mm_hadd_epi32(acc16[0][t], acc16[1 % R][t]);
            let g23 = _mm_hadd_epi32(acc16[2 % R][t], acc16[3 % R][t]);
            s = _mm_add_epi32(s, _mm_hadd_epi32(g01, g23));
            if VNNI {
                s = _mm_sub_epi32(s, _mm_set1_epi32(xsum[t0 + t].wrapping_mul(128)));
            }
            _mm_storeu_si128(
                out.as_mut_ptr().add((t0 + t) * rows + r0) as *mut __m128i,
                s,
            );
        }
        return;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = &w[(r0 + r) * cols..(r0 + r + 1) * cols];
        for (t, a) in acc_r.iter().enumerate() {
            let xt = &x[(t0 + t) * cols..(t0 + t + 1) * cols];
            let mut s = hsum(*a).wrapping_add(hsum128(acc16[r][t]));
            if VNNI {
                // Only the vector part saw the +128 (the tail below is exact as is).
                s = s.wrapping_sub(xsum[t0 + t].wrapping_mul(128));
            }
            for c in half..cols {
                s = s.wrapping_add((row[c] as i8) as i32 * xt[c] as i32);
            }
            out[(t0 + t) * rows + r0 + r] = s;
        }
    }
}

/// Horizontal sum of four i32 lanes (exact: wrapping adds of an exact sum).
#[inline(always)]
unsafe fn hsum128(v: __m128i) -> i32 {
    let mut l = [0i32; 4];
    _mm_storeu_si128(l.as_mut_ptr() as *mut __m128i, v);
    l.iter().fold(0i32, |a, b| a.wrapping_add(*b))
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn int8_all<const R: usize, const T: usize, const VNNI: bool>(
    w: &[u8],
    x: &[i8],
    n: usize,
    rows: usize,
    cols: usize,
    out: &mut [i32],
) {
    // Σx over each token's vector part (the columns the vector loops cover).
    let full = cols / 16 * 16;
    let xsum: Vec<i32> = (0..n)
        .map(|t| x[t * cols..t * cols + full].iter().map(|v| *v as i32).sum())
        .collect();
    let mut r = 0;
    while r < rows {
        let full_r = r + R <= rows;
        let mut t = 0;
        while t < n {
            let full_t = t + T <= n;
            match (full_r, full_t) {
                (true, true) => int8_block::<R, T, VNNI>(w, x, &xsum, rows, cols, r, t, out),
                (true, false) => int8_block::<R, 1, VNNI>(w, x, &xsum, rows, cols, r, t, out),
                (false, true) => int8_block::<1, T, VNNI>(w, x, &xsum, rows, cols, r, t, out),
                (false, false) => int8_block::<1, 1, VNNI>(w, x, &xsum, rows, cols, r, t, out),
            }
            t += if full_t { T } else { 1 };
        }
        r += if full_r { R } else { 1 };
    }
}

#[target_feature(enable = "avx2")]
pub unsafe fn int8_avx2(w: &[u8], x: &[i8], n: usize, rows: usize, cols: usize, out: &mut [i32]) {
    int8_all::<4, 2, false>(w, x, n, rows, cols, out)
}

#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,avx512vnni")]
pub unsafe fn int8_vnni(w: &[u8], x: &[i8], n: usize, rows: usize, cols: usize, out: &mut [i32]) {
    int8_all::<4, 4, true>(w, x, n, rows, cols, out)
}

/// Int4 rows widened to int8 one row at a time, then one exact integer sum per group
/// (the tensor's `g` columns, a multiple of 16) and token, the groups in the core's
/// order. A group is 32 columns per 256-bit step; a group of 16 is one step with the
/// upper half zero (zero weights and zero activations add nothing, with or without
/// VNNI's +128, which multiplies a zero activation).
#[inline(always)]
unsafe fn int4_all<const VNNI: bool>(
    w: &Tensor<'_>,
    x: &[i8],
    xscale: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let g = w.kind.int4_group().map_or(32, |g| g.cols());
    let (rows, cols) = (w.rows, w.cols);
    let groups = cols.div_ceil(g);
    let full = cols / g; // groups of all `g` columns
    let row_bytes = cols.div_ceil(2);
    // Σx over each token's full groups (for the +128 of VNNI).
    let xsum: Vec<i32> = (0..n * full)
        .map(|i| {
            let (t, k) = (i / full.max(1), i % full.max(1));
            x[t * cols + k * g..t * cols + (k + 1) * g]
                .iter()
                .map(|v| *v as i32)
                .sum()
        })
        .collect();
    let mut wide = vec![0i8; groups * g];
    let bias = _mm256_set1_epi8(-128);
    for r in 0..rows {
        let row = &w.values[r * row_bytes..(r + 1) * row_bytes];
        widen_int4(row, cols, &mut wide);
        let scales: Vec<f32> = (0..groups).map(|k| w.scale(r * groups + k)).collect();
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let mut acc = 0.0f32;
            for (k, scale) in scales.iter().enumerate() {
                let s = if k < full {
                    let mut v = _mm256_setzero_si256();
                    for c in (k * g..(k + 1) * g).step_by(32) {
                        let wv = load_step(wide.as_ptr().add(c), g);
                        let xv = load_step(xt.as_ptr().add(c), g);
                        v = if VNNI {
                            _mm256_dpbusd_epi32(v, _mm256_xor_si256(wv, bias), xv)
                        } else {
                            madd_avx2(v, wv, xv)
                        };
                    }
                    if VNNI {
                        hsum(v).wrapping_sub(xsum[t * full + k].wrapping_mul(128))
                    } else {
                        hsum(v)
                    }
                } else {
                    (k * g..cols).fold(0i32, |a, c| a + wide[c] as i32 * xt[c] as i32)
                };
                acc += s as f32 * scale;
            }
            out[t * rows + r] = acc * xscale[t];
        }
    }
}

/// The 32 int8 columns at `p` of a group of `g`, or, for a group of 16, its 16
/// columns with the upper half zero.
#[inline(always)]
unsafe fn load_step(p: *const i8, g: usize) -> __m256i {
    if g >= 32 {
        _mm256_loadu_si256(p as *const __m256i)
    } else {
        _mm256_zextsi128_si256(_mm_loadu_si128(p as *const __m128i))
    }
}

#[target_feature(enable = "avx2")]
pub unsafe fn int4_avx2(w: &Tensor<'_>, x: &[i8], s: &[f32], n: usize, out: &mut [f32]) {
    int4_all::<false>(w, x, s, n, out)
}

#[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,avx512vnni")]
pub unsafe fn int4_vnni(w: &Tensor<'_>, x: &[i8], s: &[f32], n: usize, out: &mut [f32]) {
    int4_all::<true>(w, x, s, n, out)
}
