//! x86-64 SIMD matrix products, chosen at run time. The host crate's one module of
//! `unsafe` kernel code: intrinsics are `unsafe` to call, and each kernel is compiled
//! for an instruction set the CPU is checked to have (`Level::detect`) before it runs.
//!
//! Bits: the results are those of the core's portable kernels (`tinylens_core::
//! kernels`), which stay the reference every test compares against.
//! - f32/f16: the portable order is eight lanes, column `c` into lane `c % 8`, then
//!   `((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))`. Eight lanes are one 256-bit register, so a
//!   `vmulps` and a `vaddps` per eight columns keep every lane's sum in order; the
//!   tail columns and the lane tree are done in scalar code exactly as the core does.
//!   Never FMA: a fused multiply-add rounds once instead of twice and changes bits.
//!   Halves are widened by the core's own formula (shift, one multiplication by
//!   2^112, exponent fix-up for infinities and NaNs), not by `vcvtph2ps`, which quiets
//!   signalling NaNs.
//! - int8: integer sums are exact in any order. AVX2 multiplies |w| by x·sign(w)
//!   (`vpmaddubsw`: |w| ≤ 128 and |x| ≤ 127, so the pairs never saturate); VNNI adds
//!   128 to each weight to make it unsigned (`vpdpbusd`) and subtracts 128·Σx after.
//!   Floats enter as in the core: `isum as f32 * (row scale * token scale)`.
//! - int4: each row's nibbles are widened to int8 once per row (for every token of
//!   the block), then each group of 32 columns is one exact integer sum as above, and
//!   the groups are added in the core's order: `acc += isum_g as f32 * scale_g`, then
//!   `acc * token scale`.
//!
//! Register blocks are rows × tokens, walked rows-outer so that a block of weight rows
//! stays in L1 while every token of the block of positions passes over it: each
//! weight is read from memory once per block of positions.

#![allow(unsafe_code)]

use tinylens_core::kernels::Block;
use tinylens_core::quant::{StorageKind, Tensor, INT4_GROUP};

/// The instruction sets the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The core's portable kernels.
    Portable,
    /// AVX2 (16 vector registers).
    Avx2,
    /// AVX-512 VL/BW with VNNI: 32 vector registers (larger blocks), `vpdpbusd` for int8.
    Avx512Vnni,
}

impl Level {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("TINYLENS_PORTABLE").is_some() {
                return Level::Portable;
            }
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return Level::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Runs the product with SIMD kernels when `level` has one for it and the arguments
/// are well formed; `false` otherwise (the caller then runs the portable kernels).
pub fn matmul(level: Level, w: &Tensor<'_>, x: &Block<'_>, out: &mut [f32]) -> bool {
    if level == Level::Portable || x.n == 0 || w.cols == 0 || w.rows == 0 {
        return false;
    }
    let (rows, cols) = (w.rows, w.cols);
    let shapes_fit = x.cols == cols
        && x.x.len() >= x.n * cols
        && out.len() >= x.n * rows
        && w.kind
            .values_len(rows, cols)
            .is_some_and(|n| w.values.len() >= n);
    if !shapes_fit {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        match w.kind {
            StorageKind::F32 | StorageKind::F16 => {
                let f16 = w.kind == StorageKind::F16;
                // SAFETY: `detect` found the instruction sets; the shapes were checked
                // above (every pointer the kernel forms is inside `w.values`, `x.x`, `out`).
                unsafe {
                    match level {
                        Level::Avx512Vnni => {
                            x86::float_avx512(f16, w.values, x.x, x.n, rows, cols, out)
                        }
                        _ => x86::float_avx2(f16, w.values, x.x, x.n, rows, cols, out),
                    }
                }
                true
            }
            StorageKind::Int8 => {
                if x.q.len() < x.n * cols || x.scales.len() < x.n || w.scales.len() < 2 * rows {
                    return false;
                }
                let mut isum = vec![0i32; x.n * rows];
                // SAFETY: as above, and `x.q`, `isum` checked to hold `n` rows.
                unsafe {
                    match level {
                        Level::Avx512Vnni => {
                            x86::int8_vnni(w.values, x.q, x.n, rows, cols, &mut isum)
                        }
                        _ => x86::int8_avx2(w.values, x.q, x.n, rows, cols, &mut isum),
                    }
                }
                for r in 0..rows {
                    let s = w.scale(r);
                    for t in 0..x.n {
                        out[t * rows + r] = isum[t * rows + r] as f32 * (s * x.scales[t]);
                    }
                }
                true
            }
            StorageKind::Int4 => {
                let groups = cols.div_ceil(INT4_GROUP);
                if x.q.len() < x.n * cols
                    || x.scales.len() < x.n
                    || w.scales.len() < 2 * rows * groups
                {
                    return false;
                }
                // SAFETY: as above.
                unsafe {
                    match level {
                        Level::Avx512Vnni => x86::int4_vnni(w, x.q, x.scales, x.n, out),
                        _ => x86::int4_avx2(w, x.q, x.scales, x.n, out),
                    }
                }
                true
            }
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, cols);
        false
    }
}

// The AVX-512 intrinsics (`vpdpbusd`) are stable since Rust 1.89; the workspace's
// MSRV is 1.85, and the VNNI kernel is the one item that needs more.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
mod x86 {
    use std::arch::x86_64::*;
    use tinylens_core::quant::Tensor;

    /// The core's lane tree.
    #[inline(always)]
    fn reduce8(a: [f32; 8]) -> f32 {
        ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
    }

    /// Weight `c` of a row as f32 (scalar, for the tails).
    #[inline(always)]
    fn weight(f16: bool, row: &[u8], c: usize) -> f32 {
        if f16 {
            tinylens_core::quant::f16_le_to_f32([row[2 * c], row[2 * c + 1]])
        } else {
            f32::from_le_bytes([row[4 * c], row[4 * c + 1], row[4 * c + 2], row[4 * c + 3]])
        }
    }

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
                core::array::from_fn(
                    |t| _mm256_loadu_si256(xp.add(t * cols + c) as *const __m256i),
                );
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
        for (r, acc_r) in acc.iter().enumerate() {
            let row = &w[(r0 + r) * cols..(r0 + r + 1) * cols];
            for (t, a) in acc_r.iter().enumerate() {
                let xt = &x[(t0 + t) * cols..(t0 + t + 1) * cols];
                let mut s = hsum(*a);
                if VNNI {
                    // Only the vector part saw the +128 (the tail below is exact as is).
                    s = s.wrapping_sub(xsum[t0 + t].wrapping_mul(128));
                }
                for c in full..cols {
                    s = s.wrapping_add((row[c] as i8) as i32 * xt[c] as i32);
                }
                out[(t0 + t) * rows + r0 + r] = s;
            }
        }
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
        // Σx over each token's vector part (the columns the vector loop covers).
        let full = cols / 32 * 32;
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
    pub unsafe fn int8_avx2(
        w: &[u8],
        x: &[i8],
        n: usize,
        rows: usize,
        cols: usize,
        out: &mut [i32],
    ) {
        int8_all::<4, 2, false>(w, x, n, rows, cols, out)
    }

    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub unsafe fn int8_vnni(
        w: &[u8],
        x: &[i8],
        n: usize,
        rows: usize,
        cols: usize,
        out: &mut [i32],
    ) {
        int8_all::<4, 4, true>(w, x, n, rows, cols, out)
    }

    /// Int4 rows widened to int8 one row at a time, then one exact integer sum per
    /// group of 32 columns and token, the groups in the core's order.
    #[inline(always)]
    unsafe fn int4_all<const VNNI: bool>(
        w: &Tensor<'_>,
        x: &[i8],
        xscale: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        use super::INT4_GROUP as G;
        let (rows, cols) = (w.rows, w.cols);
        let groups = cols.div_ceil(G);
        let full = cols / G; // groups of all 32 columns
        let row_bytes = cols.div_ceil(2);
        // Σx over each token's full groups (for the +128 of VNNI).
        let xsum: Vec<i32> = (0..n * full)
            .map(|i| {
                let (t, g) = (i / full.max(1), i % full.max(1));
                x[t * cols + g * G..t * cols + (g + 1) * G]
                    .iter()
                    .map(|v| *v as i32)
                    .sum()
            })
            .collect();
        let mut wide = vec![0i8; groups * G];
        let bias = _mm256_set1_epi8(-128);
        for r in 0..rows {
            let row = &w.values[r * row_bytes..(r + 1) * row_bytes];
            for (c, v) in wide.iter_mut().enumerate().take(cols) {
                let b = row[c / 2];
                let nib = if c % 2 == 0 { b & 0x0f } else { b >> 4 };
                *v = ((nib << 4) as i8) >> 4;
            }
            let scales: Vec<f32> = (0..groups).map(|g| w.scale(r * groups + g)).collect();
            for t in 0..n {
                let xt = &x[t * cols..(t + 1) * cols];
                let mut acc = 0.0f32;
                for (g, scale) in scales.iter().enumerate() {
                    let s = if g < full {
                        let wv = _mm256_loadu_si256(wide.as_ptr().add(g * G) as *const __m256i);
                        let xv = _mm256_loadu_si256(xt.as_ptr().add(g * G) as *const __m256i);
                        if VNNI {
                            let v = _mm256_dpbusd_epi32(
                                _mm256_setzero_si256(),
                                _mm256_xor_si256(wv, bias),
                                xv,
                            );
                            hsum(v).wrapping_sub(xsum[t * full + g].wrapping_mul(128))
                        } else {
                            hsum(madd_avx2(_mm256_setzero_si256(), wv, xv))
                        }
                    } else {
                        (g * G..cols).fold(0i32, |a, c| a + wide[c] as i32 * xt[c] as i32)
                    };
                    acc += s as f32 * scale;
                }
                out[t * rows + r] = acc * xscale[t];
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tinylens_core::kernels::{self, quantize_input};
    use tinylens_core::sample::Rng;

    fn levels() -> Vec<Level> {
        let mut l = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                l.push(Level::Avx2);
            }
            if Level::detect() == Level::Avx512Vnni {
                l.push(Level::Avx512Vnni);
            }
        }
        l
    }

    /// Every level against the portable kernels, bit for bit, over shapes that leave
    /// every kind of remainder (rows, tokens, columns), with raw random weight bits for
    /// halves (subnormals, infinities, NaNs) and int8 weights of -128.
    #[test]
    fn simd_is_the_portable_kernel() {
        let mut rng = Rng::new(42);
        let mut next = || rng.next_u64();
        for level in levels() {
            for &rows in &[1usize, 3, 4, 5, 9, 13, 70] {
                for &cols in &[1usize, 7, 8, 9, 31, 32, 33, 64, 70, 100] {
                    for &n in &[1usize, 2, 3, 5, 6, 7, 13] {
                        let x: Vec<f32> = (0..n * cols)
                            .map(|_| (next() % 20_001) as f32 / 5_000.0 - 2.0)
                            .collect();
                        let mut q = vec![0i8; n * cols];
                        let scales: Vec<f32> = (0..n)
                            .map(|t| {
                                quantize_input(
                                    &x[t * cols..(t + 1) * cols],
                                    &mut q[t * cols..(t + 1) * cols],
                                )
                            })
                            .collect();
                        let block = Block {
                            n,
                            cols,
                            x: &x,
                            q: &q,
                            scales: &scales,
                            pairs: &[],
                        };
                        for kind in [
                            StorageKind::F32,
                            StorageKind::F16,
                            StorageKind::Int8,
                            StorageKind::Int4,
                        ] {
                            let len = kind.data_len(rows, cols).unwrap();
                            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                            if kind == StorageKind::F32 {
                                // Finite floats of moderate size (and a few infinities).
                                for (i, c) in data.chunks_exact_mut(4).enumerate() {
                                    let v = if i % 97 == 5 {
                                        f32::INFINITY
                                    } else {
                                        (next() % 2001) as f32 / 1000.0 - 1.0
                                    };
                                    c.copy_from_slice(&v.to_le_bytes());
                                }
                            }
                            if kind == StorageKind::Int8 || kind == StorageKind::Int4 {
                                data[0] = 0x80;
                                // Finite f16 scales after the values.
                                let at = kind.values_len(rows, cols).unwrap().next_multiple_of(4);
                                for c in data[at..].chunks_exact_mut(2) {
                                    c.copy_from_slice(
                                        &(0x2000u16 + (next() % 0x1000) as u16).to_le_bytes(),
                                    );
                                }
                            }
                            let w = Tensor::from_data(kind, rows, cols, &data).unwrap();
                            let mut want = vec![0.0f32; n * rows];
                            kernels::matmul(&w, &block, &mut want);
                            let mut got = vec![0.0f32; n * rows];
                            assert!(matmul(level, &w, &block, &mut got));
                            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                                    "{level:?} {kind:?} {rows}x{cols}, {n} tokens, output {i}: {a:e} vs {b:e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
