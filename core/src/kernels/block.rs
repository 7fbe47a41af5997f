//! Matrix–matrix products: one weight matrix times a block of positions.
//!
//! A block is the matrix-vector product of [`super::matvec`] done for several input
//! vectors at once. Each output keeps exactly the sum [`super::matvec`] forms for its
//! row and vector — the same eight float lanes, the same tail, the same lane tree; the
//! same exact integer sum and the same scale products for int8/int4 — so a block gives
//! the same bits as stepping the vectors one by one. What changes is only which
//! independent sums are interleaved: several rows share a load of each input vector,
//! and several vectors share a load of each weight row (register blocking over rows ×
//! tokens), which is what makes a block fast on a host with slow memory.
//!
//! [`MatMul`] is the seam a host plugs faster kernels into (SIMD, threads over row
//! blocks); [`Portable`] is the reference every implementation must equal bit for bit.

use super::{dot_i8, matvec, needs_quantized_input, pairs_len, reduce8, Input};
use crate::quant::{f16_le_to_f32, StorageKind, Tensor};

/// The activations of a block of `n` positions for one matrix product: `n` rows of
/// `cols` floats (`x[t * cols..][..cols]`), and, when the weight is int8/int4, each
/// row's int8 quantization (`q`, same layout), its scale (`scales[t]`) and, for the
/// DSP kernel, its pair layout (`pairs[t * pairs_len(cols)..]`; may be empty).
#[derive(Clone, Copy)]
pub struct Block<'x> {
    pub n: usize,
    pub cols: usize,
    pub x: &'x [f32],
    pub q: &'x [i8],
    pub scales: &'x [f32],
    pub pairs: &'x [u32],
}

impl<'x> Block<'x> {
    /// Row `t` as the [`Input`] of a matrix-vector product (empty slices past the end).
    pub fn input(&self, t: usize) -> Input<'x> {
        let c = self.cols;
        let at = |len: usize| t.saturating_mul(len)..t.saturating_mul(len).saturating_add(len);
        let p = pairs_len(c);
        Input {
            x: self.x.get(at(c)).unwrap_or(&[]),
            q: self.q.get(at(c)).unwrap_or(&[]),
            scale: self.scales.get(t).copied().unwrap_or(0.0),
            pairs: self.pairs.get(at(p)).unwrap_or(&[]),
        }
    }

    /// Rows `t0..t0 + n` of the block.
    pub fn rows(&self, t0: usize, n: usize) -> Block<'x> {
        let t0 = t0.min(self.n);
        let n = n.min(self.n - t0);
        let c = self.cols;
        let p = pairs_len(c);
        let part = |len: usize| t0 * len..(t0 + n) * len;
        Block {
            n,
            cols: c,
            x: self.x.get(part(c)).unwrap_or(&[]),
            q: self.q.get(part(c)).unwrap_or(&[]),
            scales: self.scales.get(t0..t0 + n).unwrap_or(&[]),
            pairs: self.pairs.get(part(p)).unwrap_or(&[]),
        }
    }
}

/// A matrix–matrix product: `out[t * w.rows + r] = W[r, :] · x[t, :]` for every row `r`
/// of `w` and position `t` of the block, each output the same bits as
/// [`super::matvec`] of row `t` would give it (`out` holds `x.n * w.rows` values).
pub trait MatMul {
    fn matmul(&self, w: &Tensor<'_>, x: &Block<'_>, out: &mut [f32]);
}

/// The portable kernels of this module: the reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl MatMul for Portable {
    #[inline]
    fn matmul(&self, w: &Tensor<'_>, x: &Block<'_>, out: &mut [f32]) {
        matmul(w, x, out);
    }
}

impl<K: MatMul + ?Sized> MatMul for &K {
    #[inline]
    fn matmul(&self, w: &Tensor<'_>, x: &Block<'_>, out: &mut [f32]) {
        (**self).matmul(w, x, out)
    }
}

/// Rows × tokens of one register block of the float kernel. On 64-bit hosts four rows
/// and two tokens (eight sums of eight lanes); 32-bit microcontrollers have the
/// registers for one sum, so there the block is the matrix-vector kernel per token.
#[cfg(target_pointer_width = "64")]
const BLOCK: (usize, usize) = (4, 2);
#[cfg(not(target_pointer_width = "64"))]
const BLOCK: (usize, usize) = (1, 1);

/// The portable matrix–matrix product (see [`MatMul`]). Arguments that do not fit
/// together get what [`super::matvec`] gives them, token by token (NaN where a value
/// is missing); a block of one is exactly [`super::matvec`].
pub fn matmul(w: &Tensor<'_>, x: &Block<'_>, out: &mut [f32]) {
    let rows = w.rows;
    let well_formed = x.cols == w.cols
        && x.x.len() >= x.n * x.cols
        && out.len() >= x.n * rows
        && w.values.len() >= w.kind.values_len(rows, w.cols).unwrap_or(usize::MAX)
        && (!needs_quantized_input(w.kind) || (x.q.len() >= x.n * x.cols && x.scales.len() >= x.n));
    let blocked = well_formed
        && x.n > 1
        && w.cols > 0
        && match w.kind {
            StorageKind::F32 | StorageKind::F16 => BLOCK.1 > 1,
            // The DSP kernel is the int8 kernel of that target; it goes token by token.
            StorageKind::Int8 => !super::DSP,
            _ => false,
        };
    if !blocked {
        for t in 0..x.n {
            let Some(o) = out.get_mut(t * rows..(t + 1) * rows) else {
                return;
            };
            matvec(w, &x.input(t), o);
        }
        return;
    }
    match w.kind {
        StorageKind::F32 => {
            float_blocks::<4>(w, x, out, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        StorageKind::F16 => float_blocks::<2>(w, x, out, |b| f16_le_to_f32([b[0], b[1]])),
        _ => int8_blocks(w, x, out),
    }
}

/// Float weights in register blocks of `BLOCK` rows × tokens; the rows and tokens left
/// over go in blocks of one row or one token, with the same per-output sums.
#[inline(always)]
fn float_blocks<const B: usize>(
    w: &Tensor<'_>,
    x: &Block<'_>,
    out: &mut [f32],
    load: impl Fn(&[u8]) -> f32 + Copy,
) {
    let (rows, cols) = (w.rows, w.cols);
    let row_len = cols * B;
    let (br, bt) = BLOCK;
    // Rows outer: a block of weight rows stays in the cache while every token of the
    // block passes over it, so each weight is read from memory once per block.
    let mut r = 0;
    while r < rows {
        let nr = if r + br <= rows { br } else { 1 };
        let wr = &w.values[r * row_len..(r + nr) * row_len];
        let mut t = 0;
        while t < x.n {
            let nt = if t + bt <= x.n { bt } else { 1 };
            let xs = &x.x[t * cols..(t + nt) * cols];
            let o = &mut out[t * rows + r..];
            match (nr, nt) {
                (4, 2) => float_block::<B, 4, 2>(wr, xs, cols, rows, o, load),
                (4, _) => float_block::<B, 4, 1>(wr, xs, cols, rows, o, load),
                (_, 2) => float_block::<B, 1, 2>(wr, xs, cols, rows, o, load),
                _ => float_block::<B, 1, 1>(wr, xs, cols, rows, o, load),
            }
            t += nt;
        }
        r += nr;
    }
}

/// `R` rows × `T` tokens: `out[t * stride + r]` is row `r` of `w` (`R` rows of `cols`
/// weights of `B` bytes) dotted with token `t` of `x`, each sum in the eight-lane order
/// of the matrix-vector kernels (lane `j` takes columns `j, j + 8, …`, the tail goes
/// to lanes `0..`, then the lane tree).
#[inline(always)]
fn float_block<const B: usize, const R: usize, const T: usize>(
    w: &[u8],
    x: &[f32],
    cols: usize,
    stride: usize,
    out: &mut [f32],
    load: impl Fn(&[u8]) -> f32,
) {
    let mut acc = [[[0.0f32; 8]; T]; R];
    let full = cols / 8 * 8;
    let mut c = 0;
    while c < full {
        for r in 0..R {
            let wb = &w[(r * cols + c) * B..(r * cols + c + 8) * B];
            let wf: [f32; 8] = core::array::from_fn(|j| load(&wb[j * B..j * B + B]));
            for t in 0..T {
                let xb = &x[t * cols + c..t * cols + c + 8];
                for j in 0..8 {
                    acc[r][t][j] += wf[j] * xb[j];
                }
            }
        }
        c += 8;
    }
    for r in 0..R {
        for t in 0..T {
            for j in 0..cols - full {
                let wv = load(&w[(r * cols + full + j) * B..(r * cols + full + j + 1) * B]);
                acc[r][t][j] += wv * x[t * cols + full + j];
            }
            out[t * stride + r] = reduce8(acc[r][t]);
        }
    }
}

/// Int8 weights: each row read once for two tokens; the exact integer sums times
/// `(row scale × token scale)`, as [`super::matvec`] forms them.
fn int8_blocks(w: &Tensor<'_>, x: &Block<'_>, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    for t0 in (0..x.n).step_by(2) {
        let nt = (x.n - t0).min(2);
        for r in 0..rows {
            let row = &w.values[r * cols..(r + 1) * cols];
            let s = w.scale(r);
            for t in t0..t0 + nt {
                let q = &x.q[t * cols..(t + 1) * cols];
                out[t * rows + r] = dot_i8(row, q) as f32 * (s * x.scales[t]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quantize_input;
    use crate::quant::quantize;

    fn data(n: usize, seed: f32) -> std::vec::Vec<f32> {
        (0..n)
            .map(|i| libm::sinf(i as f32 * 0.37 + seed) * 1.5)
            .collect()
    }

    /// Every kind, odd shapes: each output of the block is the matrix-vector product's.
    #[test]
    fn block_is_matvec_per_token() {
        for (rows, cols, n) in [(9, 70, 5), (4, 8, 2), (13, 37, 7), (1, 1, 3), (8, 64, 1)] {
            let wf = data(rows * cols, 0.3);
            let xf = data(n * cols, 1.1);
            let mut q = std::vec![0i8; n * cols];
            let scales: std::vec::Vec<f32> = (0..n)
                .map(|t| quantize_input(&xf[t * cols..][..cols], &mut q[t * cols..][..cols]))
                .collect();
            let block = Block {
                n,
                cols,
                x: &xf,
                q: &q,
                scales: &scales,
                pairs: &[],
            };
            let int4 = crate::quant::Int4Group::ALL.map(|group| StorageKind::Int4 { group });
            for kind in [StorageKind::F32, StorageKind::F16, StorageKind::Int8]
                .into_iter()
                .chain(int4)
            {
                let mut buf = std::vec![0u8; kind.data_len(rows, cols).unwrap()];
                assert!(quantize(kind, rows, cols, &wf, &mut buf));
                let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
                let mut out = std::vec![0.0; n * rows];
                matmul(&t, &block, &mut out);
                for tok in 0..n {
                    let mut one = std::vec![0.0; rows];
                    matvec(&t, &block.input(tok), &mut one);
                    for r in 0..rows {
                        assert_eq!(
                            out[tok * rows + r].to_bits(),
                            one[r].to_bits(),
                            "{kind:?} {rows}x{cols} token {tok} row {r}"
                        );
                    }
                }
            }
        }
    }
}
