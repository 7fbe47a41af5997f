//! SIMD matrix products, chosen at run time: x86-64 (AVX2, AVX-512 VNNI; `x86.rs`) and
//! aarch64 NEON (`neon.rs`). The host crate's one module of `unsafe` kernel code:
//! intrinsics are `unsafe` to call, and each kernel is compiled for an instruction set
//! the CPU is checked to have (`Level::detect`) before it runs.
//!
//! Bits: the results are those of the core's portable kernels (`tinylens_core::
//! kernels`), which stay the reference every test compares against.
//! - f32/f16: the portable order is eight lanes, column `c` into lane `c % 8`, then
//!   `((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))`. Eight lanes are one 256-bit register (two
//!   128-bit NEON registers), so a multiply and an add per eight columns keep every
//!   lane's sum in order; the tail columns and the lane tree are done in scalar code
//!   exactly as the core does. Never FMA (`vfmadd`, `fmla`): a fused multiply-add
//!   rounds once instead of twice and changes bits. Halves are widened by the core's
//!   own formula (shift, one multiplication by 2^112, exponent fix-up for infinities
//!   and NaNs), not by `vcvtph2ps` / `fcvtl`, which quiet signalling NaNs.
//! - int8: integer sums are exact in any order. AVX2 multiplies |w| by x·sign(w)
//!   (`vpmaddubsw`: |w| ≤ 128 and |x| ≤ 127, so the pairs never saturate); VNNI adds
//!   128 to each weight to make it unsigned (`vpdpbusd`) and subtracts 128·Σx after;
//!   NEON widens each product to 16 bits (`smull`, |w·x| ≤ 16 384) and adds pairs into
//!   32 bits (`sadalp`). Floats enter as in the core: `isum as f32 * (row scale ×
//!   token scale)`.
//! - int4: each row's nibbles are widened to int8 once per row (for every token of
//!   the block), then each group (the tensor's 16, 32, 64 or 128 columns) is one exact
//!   integer sum as above, and
//!   the groups are added in the core's order: `acc += isum_g as f32 * scale_g`, then
//!   `acc * token scale`.
//!
//! Register blocks are rows × tokens, walked rows-outer so that a block of weight rows
//! stays in L1 while every token of the block of positions passes over it: each
//! weight is read from memory once per block of positions.

#![allow(unsafe_code)]

use tinylens_core::kernels::Block;
use tinylens_core::quant::{StorageKind, Tensor};

/// The instruction sets the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// The core's portable kernels.
    Portable,
    /// AVX2 (16 vector registers).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// AVX-512 VL/BW with VNNI: 32 vector registers (larger blocks), `vpdpbusd` for int8.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512Vnni,
    /// aarch64 Advanced SIMD (32 registers of 128 bits).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
}

impl Level {
    /// The best level this CPU has (`TINYLENS_PORTABLE` set: the portable kernels).
    pub fn detect() -> Self {
        if std::env::var_os("TINYLENS_PORTABLE").is_some() {
            return Level::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        {
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
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                return Level::Neon;
            }
        }
        Level::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512Vnni => "avx512-vnni",
            Level::Neon => "neon",
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
    match w.kind {
        StorageKind::F32 | StorageKind::F16 => {
            let f16 = w.kind == StorageKind::F16;
            // SAFETY: `level` came from `detect` (the CPU has its instruction sets); the
            // shapes were checked above (every pointer the kernel forms is inside
            // `w.values`, `x.x`, `out`).
            unsafe { float(level, f16, w.values, x.x, x.n, rows, cols, out) }
        }
        StorageKind::Int8 => {
            if x.q.len() < x.n * cols || x.scales.len() < x.n || w.scales.len() < 2 * rows {
                return false;
            }
            let mut isum = vec![0i32; x.n * rows];
            // SAFETY: as above, and `x.q`, `isum` checked to hold `n` rows.
            if !unsafe { int8(level, w.values, x.q, x.n, rows, cols, &mut isum) } {
                return false;
            }
            // The row scales widened once; outputs in memory order.
            let scales: Vec<f32> = (0..rows).map(|r| w.scale(r)).collect();
            for ((o, i), xs) in out
                .chunks_exact_mut(rows)
                .zip(isum.chunks_exact(rows))
                .zip(x.scales)
            {
                for ((o, &i), &s) in o.iter_mut().zip(i).zip(&scales) {
                    *o = i as f32 * (s * xs);
                }
            }
            true
        }
        StorageKind::Int4 { group } => {
            let groups = cols.div_ceil(group.cols());
            if x.q.len() < x.n * cols || x.scales.len() < x.n || w.scales.len() < 2 * rows * groups
            {
                return false;
            }
            // SAFETY: as above.
            unsafe { int4(level, w, x.q, x.scales, x.n, out) }
        }
        _ => false,
    }
}

/// The float kernel of `level`; `false` when it has none.
///
/// # Safety
/// `level` is one `Level::detect` returned; the shapes are checked as in [`matmul`].
#[allow(clippy::too_many_arguments, unused_variables)]
unsafe fn float(
    level: Level,
    f16: bool,
    w: &[u8],
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    out: &mut [f32],
) -> bool {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vnni => x86::float_avx512(f16, w, x, n, rows, cols, out),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => x86::float_avx2(f16, w, x, n, rows, cols, out),
        #[cfg(target_arch = "aarch64")]
        Level::Neon => neon::float(f16, w, x, n, rows, cols, out),
        _ => return false,
    }
    true
}

/// The int8 kernel of `level` (exact integer sums into `out`); `false` when it has none.
///
/// # Safety
/// As [`float`].
#[allow(unused_variables)]
unsafe fn int8(
    level: Level,
    w: &[u8],
    x: &[i8],
    n: usize,
    rows: usize,
    cols: usize,
    out: &mut [i32],
) -> bool {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vnni => x86::int8_vnni(w, x, n, rows, cols, out),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => x86::int8_avx2(w, x, n, rows, cols, out),
        #[cfg(target_arch = "aarch64")]
        Level::Neon => neon::int8(w, x, n, rows, cols, out),
        _ => return false,
    }
    true
}

/// The int4 kernel of `level`; `false` when it has none.
///
/// # Safety
/// As [`float`].
#[allow(unused_variables)]
unsafe fn int4(
    level: Level,
    w: &Tensor<'_>,
    x: &[i8],
    scales: &[f32],
    n: usize,
    out: &mut [f32],
) -> bool {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vnni => x86::int4_vnni(w, x, scales, n, out),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => x86::int4_avx2(w, x, scales, n, out),
        #[cfg(target_arch = "aarch64")]
        Level::Neon => neon::int4(w, x, scales, n, out),
        _ => return false,
    }
    true
}

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

/// One int4 row widened to int8 (`wide[c]`, the columns past `cols` left as they are).
#[inline(always)]
fn widen_int4(row: &[u8], cols: usize, wide: &mut [i8]) {
    for (c, v) in wide.iter_mut().enumerate().take(cols) {
        let b = row[c / 2];
        let nib = if c % 2 == 0 { b & 0x0f } else { b >> 4 };
        *v = ((nib << 4) as i8) >> 4;
    }
}

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

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
        // NEON is part of every aarch64 CPU (and of qemu-aarch64's): always tested there.
        #[cfg(target_arch = "aarch64")]
        {
            assert!(std::arch::is_aarch64_feature_detected!("neon"));
            l.push(Level::Neon);
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
                for &cols in &[1usize, 7, 8, 9, 16, 31, 32, 33, 48, 64, 70, 100, 128, 200] {
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
                        let int4 =
                            tinylens_core::Int4Group::ALL.map(|group| StorageKind::Int4 { group });
                        for kind in [StorageKind::F32, StorageKind::F16, StorageKind::Int8]
                            .into_iter()
                            .chain(int4)
                        {
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
                            if matches!(kind, StorageKind::Int8 | StorageKind::Int4 { .. }) {
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
