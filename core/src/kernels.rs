//! Matrix-vector kernels for every storage kind.
//!
//! The results are bit-identical on every platform: the firmware's trace is compared
//! bit for bit with the host's. Two rules make that so:
//! - float dot products accumulate in eight lanes, element `i` into lane `i % 8`, and
//!   the lanes are added in one fixed tree. A SIMD host and a scalar Cortex-M follow
//!   the same order, and Rust never contracts `a * b + c` into a fused multiply-add;
//! - int8 and int4 weights multiply int8-quantized activations (one scale per input
//!   vector) with exact integer accumulation; floats enter only per row (int8) or per
//!   group of 32 (int4), in index order.

use crate::quant::{int4_at, StorageKind, Tensor, INT4_GROUP};

/// Largest quantized activation magnitude.
const QMAX: f32 = 127.0;

#[inline(always)]
fn reduce8(a: [f32; 8]) -> f32 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// `sum a[i] * b[i]` in the fixed eight-lane order.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ac = a.chunks_exact(8);
    let mut bc = b.chunks_exact(8);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ac.remainder().iter().zip(bc.remainder()).enumerate() {
        acc[j] += x * y;
    }
    reduce8(acc)
}

/// Dot product of little-endian f32 weights with `x`, in the same order as [`dot`].
#[inline]
fn dot_f32_le(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut wc = w.chunks_exact(32);
    let mut xc = x.chunks_exact(8);
    for (wb, xb) in (&mut wc).zip(&mut xc) {
        for j in 0..8 {
            let b = &wb[4 * j..4 * j + 4];
            acc[j] += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xb[j];
        }
    }
    for (j, (b, xv)) in wc
        .remainder()
        .chunks_exact(4)
        .zip(xc.remainder())
        .enumerate()
    {
        acc[j] += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xv;
    }
    reduce8(acc)
}

/// Dot product of little-endian IEEE half weights with `x`, in the same order as [`dot`].
#[inline]
fn dot_f16_le(w: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut wc = w.chunks_exact(16);
    let mut xc = x.chunks_exact(8);
    for (wb, xb) in (&mut wc).zip(&mut xc) {
        for j in 0..8 {
            acc[j] += half::f16::from_le_bytes([wb[2 * j], wb[2 * j + 1]]).to_f32() * xb[j];
        }
    }
    for (j, (b, xv)) in wc
        .remainder()
        .chunks_exact(2)
        .zip(xc.remainder())
        .enumerate()
    {
        acc[j] += half::f16::from_le_bytes([b[0], b[1]]).to_f32() * xv;
    }
    reduce8(acc)
}

/// Exact integer dot product of int8 weights and int8 activations.
#[inline]
pub fn dot_i8(w: &[u8], x: &[i8]) -> i32 {
    // Integer addition is associative, so any order (and any SIMD) gives the same sum.
    w.iter()
        .zip(x)
        .map(|(&a, &b)| (a as i8) as i32 * b as i32)
        .sum()
}

/// Exact integer dot product of one int4 group (`x.len()` columns from column `c0`).
#[inline]
fn dot_i4_group(row: &[u8], c0: usize, x: &[i8]) -> i32 {
    let mut s = 0i32;
    let mut c = c0;
    let mut i = 0;
    // Whole bytes (two nibbles) when the group starts at an even column, which it always
    // does since INT4_GROUP is even.
    while i + 1 < x.len() {
        let b = row[c / 2];
        let lo = ((b << 4) as i8 >> 4) as i32;
        let hi = (b as i8 >> 4) as i32;
        s += lo * x[i] as i32 + hi * x[i + 1] as i32;
        i += 2;
        c += 2;
    }
    if i < x.len() {
        s += int4_at(row, c) as i32 * x[i] as i32;
    }
    s
}

/// An input vector prepared for a matrix-vector product: the floats, and (when any
/// weight it meets is int8/int4) its int8 quantization with one scale.
pub struct Input<'x> {
    pub x: &'x [f32],
    pub q: &'x [i8],
    pub scale: f32,
}

/// Quantizes `x` to int8 with one symmetric scale `max|x| / 127`; returns the scale
/// (0 for an all-zero vector, whose products are then exactly 0; NaN when `x` holds a
/// NaN or infinity, so that it reaches the outputs instead of quantizing to 0).
pub fn quantize_input(x: &[f32], q: &mut [i8]) -> f32 {
    // `f32::max` ignores NaN: keep it explicitly.
    let amax = x.iter().fold(0.0f32, |m, v| {
        let a = libm::fabsf(*v);
        if m.is_nan() || a.is_nan() {
            f32::NAN
        } else {
            m.max(a)
        }
    });
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return if amax == 0.0 { 0.0 } else { f32::NAN };
    }
    let inv = QMAX / amax;
    for (o, v) in q.iter_mut().zip(x) {
        *o = libm::roundf(v * inv).clamp(-QMAX, QMAX) as i8;
    }
    amax / QMAX
}

/// Whether products with this tensor use the quantized input.
#[inline]
pub fn needs_quantized_input(kind: StorageKind) -> bool {
    matches!(kind, StorageKind::Int8 | StorageKind::Int4)
}

/// `out[r] = sum_c W[r, c] * x[c]` for every row of `w` (`out.len() == w.rows`).
///
/// Mismatched arguments never panic: rows past `out.len()` are not computed, `out`
/// entries past `w.rows` (or with `x`, the quantized input or the weights shorter
/// than the shape says) are set to NaN, so that they reach the logits as
/// [`crate::Error::NonFiniteLogits`] rather than as a plausible value.
pub fn matvec(w: &Tensor<'_>, input: &Input<'_>, out: &mut [f32]) {
    let cols = w.cols;
    let quantized = needs_quantized_input(w.kind);
    let (Some(x), Some(q)) = (
        input.x.get(..cols),
        if quantized {
            input.q.get(..cols)
        } else {
            Some(&[][..])
        },
    ) else {
        out.fill(f32::NAN);
        return;
    };
    let row_len = match w.kind {
        StorageKind::F32 => cols.saturating_mul(4),
        StorageKind::F16 => cols.saturating_mul(2),
        StorageKind::Int8 => cols,
        StorageKind::Int4 => cols.div_ceil(2),
        StorageKind::Bytes => 0,
    };
    let rows = out.len().min(w.rows);
    let (out, rest) = out.split_at_mut(rows);
    rest.fill(f32::NAN);
    let mut row_chunks = w.values.chunks_exact(row_len.max(1));
    for (r, o) in out.iter_mut().enumerate() {
        let row = match (row_len, row_chunks.next()) {
            (0, _) => &[][..],
            (_, Some(row)) => row,
            (_, None) => {
                *o = f32::NAN;
                continue;
            }
        };
        *o = match w.kind {
            StorageKind::F32 => dot_f32_le(row, x),
            StorageKind::F16 => dot_f16_le(row, x),
            StorageKind::Int8 => dot_i8(row, q) as f32 * (w.scale(r) * input.scale),
            StorageKind::Int4 => {
                let groups = cols.div_ceil(INT4_GROUP);
                let mut acc = 0.0f32;
                for g in 0..groups {
                    let c0 = g * INT4_GROUP;
                    let c1 = (c0 + INT4_GROUP).min(cols);
                    let s = dot_i4_group(row, c0, &q[c0..c1]);
                    acc += s as f32 * w.scale(r.saturating_mul(groups).saturating_add(g));
                }
                acc * input.scale
            }
            StorageKind::Bytes => 0.0,
        };
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::quant::quantize;

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| libm::sinf(i as f32 * 0.37 + seed) * 1.5)
            .collect()
    }

    fn build(kind: StorageKind, rows: usize, cols: usize, w: &[f32]) -> Vec<u8> {
        let mut buf = vec![0u8; kind.data_len(rows, cols).unwrap()];
        assert!(quantize(kind, rows, cols, w, &mut buf));
        buf
    }

    #[test]
    fn dot_matches_f64_reference() {
        for n in [0, 1, 7, 8, 9, 33, 100] {
            let a = data(n, 0.1);
            let b = data(n, 2.0);
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - exact).abs() < 1e-4);
        }
    }

    #[test]
    fn matvec_every_kind_close_to_dense() {
        let (rows, cols) = (9, 70);
        let w = data(rows * cols, 0.5);
        let x = data(cols, 1.0);
        let mut q = vec![0i8; cols];
        let scale = quantize_input(&x, &mut q);
        let input = Input {
            x: &x,
            q: &q,
            scale,
        };
        for (kind, tol) in [
            (StorageKind::F32, 1e-6),
            (StorageKind::F16, 2e-3),
            (StorageKind::Int8, 1e-2),
            (StorageKind::Int4, 5e-2),
        ] {
            let buf = build(kind, rows, cols, &w);
            let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
            let mut out = vec![0.0; rows];
            matvec(&t, &input, &mut out);
            for r in 0..rows {
                let exact: f32 = (0..cols).map(|c| w[r * cols + c] * x[c]).sum();
                // Error relative to the size of the terms, as quantization error scales with it.
                let size: f32 = (0..cols).map(|c| (w[r * cols + c] * x[c]).abs()).sum();
                assert!(
                    (out[r] - exact).abs() < tol * size,
                    "{kind:?} row {r}: {} vs {exact}",
                    out[r]
                );
            }
        }
    }

    #[test]
    fn int8_kernel_is_the_exact_integer_sum() {
        let (rows, cols) = (3, 50);
        let w = data(rows * cols, 0.2);
        let x = data(cols, 0.9);
        let mut q = vec![0i8; cols];
        let scale = quantize_input(&x, &mut q);
        let buf = build(StorageKind::Int8, rows, cols, &w);
        let t = Tensor::from_data(StorageKind::Int8, rows, cols, &buf).unwrap();
        let mut out = vec![0.0; rows];
        matvec(
            &t,
            &Input {
                x: &x,
                q: &q,
                scale,
            },
            &mut out,
        );
        for r in 0..rows {
            let isum: i64 = (0..cols)
                .map(|c| (t.values[r * cols + c] as i8) as i64 * q[c] as i64)
                .sum();
            assert_eq!(out[r], isum as f32 * (t.scale(r) * scale));
        }
    }

    #[test]
    fn zero_input_gives_zero() {
        let x = vec![0.0; 10];
        let mut q = vec![1i8; 10];
        assert_eq!(quantize_input(&x, &mut q), 0.0);
        assert!(q.iter().all(|v| *v == 0));
    }
}
