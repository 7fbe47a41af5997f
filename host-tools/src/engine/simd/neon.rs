//! The aarch64 NEON kernels; see the parent module for the bit rules. Every function
//! here is `unsafe`: it must run only where `Level::detect` found NEON, with shapes the
//! caller checked.
//!
//! The eight float lanes of the portable order are two 128-bit registers (`lo` takes
//! columns `c..c + 4`, `hi` columns `c + 4..c + 8`), each lane summed by `fmul` then
//! `fadd` (never `fmla`, which fuses). Int8 products are widened to 16 bits
//! (`smull`/`smull2`: |w·x| ≤ 128·127 fits) and added pairwise into 32-bit lanes
//! (`sadalp`), an exact integer sum.

use std::arch::aarch64::*;
use tinylens_core::quant::Tensor;

use super::{reduce8, weight, widen_int4};

/// Eight weights from `p` as two registers (f32, or halves widened exactly as the core
/// widens them).
#[inline(always)]
unsafe fn load8(f16: bool, p: *const u8) -> (float32x4_t, float32x4_t) {
    if f16 {
        let h = vld1q_u16(p as *const u16);
        (
            widen4(vmovl_u16(vget_low_u16(h))),
            widen4(vmovl_high_u16(h)),
        )
    } else {
        let f = p as *const f32;
        (vld1q_f32(f), vld1q_f32(f.add(4)))
    }
}

/// Four halves (in the low 16 bits of each lane) to f32, by `f16_le_to_f32`'s formula.
#[inline(always)]
unsafe fn widen4(h: uint32x4_t) -> float32x4_t {
    let mag = vreinterpretq_f32_u32(vshlq_n_u32::<13>(vandq_u32(h, vdupq_n_u32(0x7fff))));
    let mag = vmulq_f32(mag, vreinterpretq_f32_u32(vdupq_n_u32((254 - 15) << 23)));
    let big = vcgeq_f32(mag, vdupq_n_f32(65536.0));
    let exp = vandq_u32(big, vdupq_n_u32(0xff << 23));
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    vreinterpretq_f32_u32(vorrq_u32(vorrq_u32(vreinterpretq_u32_f32(mag), exp), sign))
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
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[(zero, zero); T]; R];
    let full = cols / 8 * 8;
    let mut c = 0;
    while c < full {
        let xs: [(float32x4_t, float32x4_t); T] = core::array::from_fn(|t| {
            let p = xp.add(t * cols + c);
            (vld1q_f32(p), vld1q_f32(p.add(4)))
        });
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let (wl, wh) = load8(F16, wp.add(r * row_len + c * b));
            for (a, (xl, xh)) in acc_r.iter_mut().zip(&xs) {
                a.0 = vaddq_f32(a.0, vmulq_f32(wl, *xl));
                a.1 = vaddq_f32(a.1, vmulq_f32(wh, *xh));
            }
        }
        c += 8;
    }
    if R == 4 && full == cols {
        // No tail: the lane trees of four rows at once, in the core's order — `faddp`
        // pairs lanes (l0+l1, l2+l3, l4+l5, l6+l7), then pairs the pairs, then adds
        // `(l0..l3) + (l4..l7)`. Four outputs, one store.
        #[allow(clippy::needless_range_loop)] // `t` indexes four rows' accumulators
        for t in 0..T {
            let p = |r: usize| vpaddq_f32(acc[r % R][t].0, acc[r % R][t].1);
            let q01 = vpaddq_f32(p(0), p(1));
            let q23 = vpaddq_f32(p(2), p(3));
            vst1q_f32(
                out.as_mut_ptr().add((t0 + t) * rows + r0),
                vpaddq_f32(q01, q23),
            );
        }
        return;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = &w[(r0 + r) * row_len..(r0 + r + 1) * row_len];
        for (t, a) in acc_r.iter().enumerate() {
            let mut lanes = [0.0f32; 8];
            vst1q_f32(lanes.as_mut_ptr(), a.0);
            vst1q_f32(lanes.as_mut_ptr().add(4), a.1);
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
            let full_t = t + T <= n;
            match (full_r, full_t) {
                (true, true) => float_block::<R, T, F16>(w, x, rows, cols, r, t, out),
                (true, false) => float_block::<R, 1, F16>(w, x, rows, cols, r, t, out),
                (false, true) => float_block::<1, T, F16>(w, x, rows, cols, r, t, out),
                (false, false) => float_block::<1, 1, F16>(w, x, rows, cols, r, t, out),
            }
            t += if full_t { T } else { 1 };
        }
        r += if full_r { R } else { 1 };
    }
}

/// Float weights: blocks of 4 rows × 2 tokens (16 accumulators of 32 registers).
#[target_feature(enable = "neon")]
pub unsafe fn float(
    f16: bool,
    w: &[u8],
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    out: &mut [f32],
) {
    if f16 {
        float_all::<4, 2, true>(w, x, n, rows, cols, out)
    } else {
        float_all::<4, 2, false>(w, x, n, rows, cols, out)
    }
}

/// Σ w·x over 16 columns added into four i32 lanes, exactly.
#[inline(always)]
unsafe fn madd16(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    let hi = vmull_high_s8(w, x);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// One int8 block, rows `r0..r0 + R` × tokens `t0..t0 + T`, exact integer sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn int8_block<const R: usize, const T: usize>(
    w: &[u8],
    x: &[i8],
    rows: usize,
    cols: usize,
    r0: usize,
    t0: usize,
    out: &mut [i32],
) {
    let wp = w.as_ptr().add(r0 * cols) as *const i8;
    let xp = x.as_ptr().add(t0 * cols);
    let mut acc = [[vdupq_n_s32(0); T]; R];
    let full = cols / 16 * 16;
    let mut c = 0;
    while c < full {
        let xs: [int8x16_t; T] = core::array::from_fn(|t| vld1q_s8(xp.add(t * cols + c)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let wv = vld1q_s8(wp.add(r * cols + c));
            for (a, xv) in acc_r.iter_mut().zip(&xs) {
                *a = madd16(*a, wv, *xv);
            }
        }
        c += 16;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = &w[(r0 + r) * cols..(r0 + r + 1) * cols];
        for (t, a) in acc_r.iter().enumerate() {
            let xt = &x[(t0 + t) * cols..(t0 + t + 1) * cols];
            let mut s = vaddvq_s32(*a);
            for c in full..cols {
                s = s.wrapping_add((row[c] as i8) as i32 * xt[c] as i32);
            }
            out[(t0 + t) * rows + r0 + r] = s;
        }
    }
}

/// Int8 weights: blocks of 4 rows × 4 tokens, exact sums into `out`.
#[target_feature(enable = "neon")]
pub unsafe fn int8(w: &[u8], x: &[i8], n: usize, rows: usize, cols: usize, out: &mut [i32]) {
    const R: usize = 4;
    const T: usize = 4;
    let mut r = 0;
    while r < rows {
        let full_r = r + R <= rows;
        let mut t = 0;
        while t < n {
            let full_t = t + T <= n;
            match (full_r, full_t) {
                (true, true) => int8_block::<R, T>(w, x, rows, cols, r, t, out),
                (true, false) => int8_block::<R, 1>(w, x, rows, cols, r, t, out),
                (false, true) => int8_block::<1, T>(w, x, rows, cols, r, t, out),
                (false, false) => int8_block::<1, 1>(w, x, rows, cols, r, t, out),
            }
            t += if full_t { T } else { 1 };
        }
        r += if full_r { R } else { 1 };
    }
}

/// Int4 weights: each row widened to int8 once, then one exact integer sum per group
/// (the tensor's `g` columns, a multiple of 16: 16 per step) and token, the groups
/// added in the core's order.
#[target_feature(enable = "neon")]
pub unsafe fn int4(w: &Tensor<'_>, x: &[i8], xscale: &[f32], n: usize, out: &mut [f32]) {
    let g = w.kind.int4_group().map_or(32, |g| g.cols());
    let (rows, cols) = (w.rows, w.cols);
    let groups = cols.div_ceil(g);
    let full = cols / g;
    let row_bytes = cols.div_ceil(2);
    let mut wide = vec![0i8; groups * g];
    let mut scales = vec![0.0f32; groups];
    for r in 0..rows {
        widen_int4(
            &w.values[r * row_bytes..(r + 1) * row_bytes],
            cols,
            &mut wide,
        );
        for (k, s) in scales.iter_mut().enumerate() {
            *s = w.scale(r * groups + k);
        }
        for t in 0..n {
            let xt = &x[t * cols..(t + 1) * cols];
            let mut acc = 0.0f32;
            for (k, scale) in scales.iter().enumerate() {
                let s = if k < full {
                    let mut a = vdupq_n_s32(0);
                    for c in (k * g..(k + 1) * g).step_by(16) {
                        a = madd16(
                            a,
                            vld1q_s8(wide.as_ptr().add(c)),
                            vld1q_s8(xt.as_ptr().add(c)),
                        );
                    }
                    vaddvq_s32(a)
                } else {
                    (k * g..cols).fold(0i32, |a, c| a + wide[c] as i32 * xt[c] as i32)
                };
                acc += s as f32 * scale;
            }
            out[t * rows + r] = acc * xscale[t];
        }
    }
}
