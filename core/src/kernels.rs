//! Matrix-vector kernels for every storage kind.
//!
//! The results are bit-identical on every platform: the firmware's trace is compared
//! bit for bit with the host's. Two rules make that so:
//! - float dot products accumulate in eight lanes, element `i` into lane `i % 8`, and
//!   the lanes are added in one fixed tree. A SIMD host and a scalar Cortex-M follow
//!   the same order, and Rust never contracts `a * b + c` into a fused multiply-add;
//! - int8 and int4 weights multiply int8-quantized activations (one scale per input
//!   vector) with exact integer accumulation; floats enter only per row (int8) or per
//!   group (int4: the tensor's group of 16 to 128 columns), in index order.

use crate::quant::{f16_le_to_f32, int4_at, StorageKind, Tensor};

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
    // Eight named lanes rather than an array: they stay in registers even where the
    // compiler does not unroll a loop over an array (the firmware's opt-level "s").
    let (mut a0, mut a1, mut a2, mut a3) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let (mut a4, mut a5, mut a6, mut a7) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let mut ac = a.chunks_exact(8);
    let mut bc = b.chunks_exact(8);
    for (x, y) in (&mut ac).zip(&mut bc) {
        a0 += x[0] * y[0];
        a1 += x[1] * y[1];
        a2 += x[2] * y[2];
        a3 += x[3] * y[3];
        a4 += x[4] * y[4];
        a5 += x[5] * y[5];
        a6 += x[6] * y[6];
        a7 += x[7] * y[7];
    }
    let (x, y) = (ac.remainder(), bc.remainder());
    if !x.is_empty() {
        // The last `n % 8` elements into lanes 0.. (out of line: rare).
        let p = tail_products(x, y);
        let k = x.len();
        a0 += p[0];
        if k > 1 {
            a1 += p[1];
        }
        if k > 2 {
            a2 += p[2];
        }
        if k > 3 {
            a3 += p[3];
        }
        if k > 4 {
            a4 += p[4];
        }
        if k > 5 {
            a5 += p[5];
        }
        if k > 6 {
            a6 += p[6];
        }
    }
    reduce8([a0, a1, a2, a3, a4, a5, a6, a7])
}

/// `x[j] * y[j]` for the (at most 7) elements of a dot product's tail.
#[inline(never)]
fn tail_products(x: &[f32], y: &[f32]) -> [f32; 7] {
    let mut p = [0.0f32; 7];
    for ((p, x), y) in p.iter_mut().zip(x).zip(y) {
        *p = x * y;
    }
    p
}

/// Dot product of little-endian f32 weights with `x`, in the same order as [`dot`].
#[inline]
fn dot_f32_le(w: &[u8], x: &[f32]) -> f32 {
    // Named lanes (see `dot`): registers rather than a stack array on a Cortex-M.
    let (mut a0, mut a1, mut a2, mut a3) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let (mut a4, mut a5, mut a6, mut a7) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let f = |b: &[u8], j: usize| {
        f32::from_le_bytes([b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]])
    };
    let mut wc = w.chunks_exact(32);
    let mut xc = x.chunks_exact(8);
    for (wb, xb) in (&mut wc).zip(&mut xc) {
        a0 += f(wb, 0) * xb[0];
        a1 += f(wb, 1) * xb[1];
        a2 += f(wb, 2) * xb[2];
        a3 += f(wb, 3) * xb[3];
        a4 += f(wb, 4) * xb[4];
        a5 += f(wb, 5) * xb[5];
        a6 += f(wb, 6) * xb[6];
        a7 += f(wb, 7) * xb[7];
    }
    let mut acc = [a0, a1, a2, a3, a4, a5, a6, a7];
    let (wr, xr) = (wc.remainder(), xc.remainder());
    if !xr.is_empty() {
        acc = tail_f32_le(acc, wr, xr);
    }
    reduce8(acc)
}

/// The last `n % 8` columns of [`dot_f32_le`] into lanes `0..` (out of line: rare).
#[inline(never)]
fn tail_f32_le(mut acc: [f32; 8], w: &[u8], x: &[f32]) -> [f32; 8] {
    for (j, (b, xv)) in w.chunks_exact(4).zip(x).enumerate() {
        acc[j] += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xv;
    }
    acc
}

/// Rows handled together by the float kernels: on 64-bit hosts four rows share each
/// load of `x` and give the adder four independent chains; on 32-bit microcontrollers
/// (32 single-precision registers) one row keeps the eight accumulators in registers.
#[cfg(target_pointer_width = "64")]
const FLOAT_ROWS: usize = 4;
#[cfg(not(target_pointer_width = "64"))]
const FLOAT_ROWS: usize = 1;

/// [`dot_f32_le`] of `R` rows at once (`w` holds `R` rows of `x.len()` weights): each
/// row's sum is formed in exactly the order of [`dot_f32_le`], so the results are the
/// same bits; only independent rows are interleaved.
#[inline(always)]
fn dot_rows_f32_le<const R: usize>(w: &[u8], x: &[f32], out: &mut [f32]) {
    let cols = x.len();
    let mut rows: [core::slice::ChunksExact<'_, u8>; R] =
        core::array::from_fn(|r| w[r * cols * 4..(r + 1) * cols * 4].chunks_exact(32));
    let mut acc = [[0.0f32; 8]; R];
    let mut xc = x.chunks_exact(8);
    for xb in &mut xc {
        for r in 0..R {
            let Some(wb) = rows[r].next() else { return };
            for j in 0..8 {
                let b = &wb[4 * j..4 * j + 4];
                acc[r][j] += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xb[j];
            }
        }
    }
    for r in 0..R {
        for (j, (b, xv)) in rows[r]
            .remainder()
            .chunks_exact(4)
            .zip(xc.remainder())
            .enumerate()
        {
            acc[r][j] += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xv;
        }
        out[r] = reduce8(acc[r]);
    }
}

/// [`dot_f16_le`] of `R` rows at once, each in exactly its order (see [`dot_rows_f32_le`]).
#[inline(always)]
fn dot_rows_f16_le<const R: usize>(w: &[u8], x: &[f32], out: &mut [f32]) {
    let cols = x.len();
    let mut rows: [core::slice::ChunksExact<'_, u8>; R] =
        core::array::from_fn(|r| w[r * cols * 2..(r + 1) * cols * 2].chunks_exact(16));
    let mut acc = [[0.0f32; 8]; R];
    let mut xc = x.chunks_exact(8);
    for xb in &mut xc {
        for r in 0..R {
            let Some(wb) = rows[r].next() else { return };
            let wf = halves8(wb);
            for j in 0..8 {
                acc[r][j] += wf[j] * xb[j];
            }
        }
    }
    for r in 0..R {
        for (j, (b, xv)) in rows[r]
            .remainder()
            .chunks_exact(2)
            .zip(xc.remainder())
            .enumerate()
        {
            acc[r][j] += f16_le_to_f32([b[0], b[1]]) * xv;
        }
        out[r] = reduce8(acc[r]);
    }
}

/// Eight little-endian halves (16 bytes) as f32, in a form the compiler vectorizes.
#[inline(always)]
fn halves8(b: &[u8]) -> [f32; 8] {
    let b: &[u8; 16] = b.try_into().unwrap_or(&[0; 16]);
    let mut h = [0u16; 8];
    for (j, v) in h.iter_mut().enumerate() {
        *v = u16::from_le_bytes([b[2 * j], b[2 * j + 1]]);
    }
    h.map(|v| f16_le_to_f32(v.to_le_bytes()))
}

/// Dot product of little-endian IEEE half weights with `x`, in the same order as [`dot`].
#[inline]
fn dot_f16_le(w: &[u8], x: &[f32]) -> f32 {
    let (mut a0, mut a1, mut a2, mut a3) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let (mut a4, mut a5, mut a6, mut a7) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    let mut wc = w.chunks_exact(16);
    let mut xc = x.chunks_exact(8);
    for (wb, xb) in (&mut wc).zip(&mut xc) {
        let h = halves8(wb);
        a0 += h[0] * xb[0];
        a1 += h[1] * xb[1];
        a2 += h[2] * xb[2];
        a3 += h[3] * xb[3];
        a4 += h[4] * xb[4];
        a5 += h[5] * xb[5];
        a6 += h[6] * xb[6];
        a7 += h[7] * xb[7];
    }
    let mut acc = [a0, a1, a2, a3, a4, a5, a6, a7];
    let (wr, xr) = (wc.remainder(), xc.remainder());
    if !xr.is_empty() {
        acc = tail_f16_le(acc, wr, xr);
    }
    reduce8(acc)
}

/// The last `n % 8` columns of [`dot_f16_le`] into lanes `0..` (out of line: rare).
#[inline(never)]
fn tail_f16_le(mut acc: [f32; 8], w: &[u8], x: &[f32]) -> [f32; 8] {
    for (j, (b, xv)) in w.chunks_exact(2).zip(x).enumerate() {
        acc[j] += f16_le_to_f32([b[0], b[1]]) * xv;
    }
    acc
}

/// `out[j] = dot(q, keys[j * d..][..d]) / scale` for every `j < out.len()`, `d =
/// q.len()`: one query against consecutive cached keys (the attention scores).
#[inline]
pub fn scores(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    #[cfg(tinylens_vfp)]
    if vfp::scores(q, keys, scale, out) {
        return;
    }
    scores_portable(q, keys, scale, out);
}

/// [`scores`] with the portable kernel only, whatever the target: the reference.
pub fn scores_portable(q: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    let d = q.len();
    for (j, s) in out.iter_mut().enumerate() {
        *s = dot(q, keys.get(j * d..(j + 1) * d).unwrap_or(&[])) / scale;
    }
}

/// `z = Σ_j a[j] · v_j`, `v_j = values[j * d..][..d]` (`d = z.len()`): each element
/// summed from 0.0 in key order, as the plain loop over keys then elements would, but
/// eight elements at a time over all keys, so that the sums stay in registers.
pub fn weighted_sum(a: &[f32], values: &[f32], z: &mut [f32]) {
    #[cfg(tinylens_vfp)]
    if vfp::weighted_sum(a, values, z) {
        return;
    }
    weighted_sum_portable(a, values, z);
}

/// [`weighted_sum`] with the portable kernel only, whatever the target: the reference.
pub fn weighted_sum_portable(a: &[f32], values: &[f32], z: &mut [f32]) {
    let d_head = z.len();
    let mut i = 0;
    while i + 8 <= z.len() {
        let mut acc = [0.0f32; 8];
        for (j, &w) in a.iter().enumerate() {
            let Some(v) = values.get(j * d_head + i..j * d_head + i + 8) else {
                break;
            };
            let [a0, a1, a2, a3, a4, a5, a6, a7] = &mut acc;
            *a0 += w * v[0];
            *a1 += w * v[1];
            *a2 += w * v[2];
            *a3 += w * v[3];
            *a4 += w * v[4];
            *a5 += w * v[5];
            *a6 += w * v[6];
            *a7 += w * v[7];
        }
        z[i..i + 8].copy_from_slice(&acc);
        i += 8;
    }
    for (k, zk) in z.iter_mut().enumerate().skip(i) {
        let mut acc = 0.0f32;
        for (j, &w) in a.iter().enumerate() {
            if let Some(v) = values.get(j * d_head + k) {
                acc += w * v;
            }
        }
        *zk = acc;
    }
}

/// `dst[i] += src[i]` (the residual stream, the heads' sum, the biases).
#[inline]
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    #[cfg(tinylens_vfp)]
    if vfp::add_assign(dst, src.as_ptr().cast(), src.len() * 4) {
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// `dst[i] += f32::from_le_bytes(src[4i..4i + 4])` (an f32 bias row as stored).
#[inline]
pub fn add_assign_le(dst: &mut [f32], src: &[u8]) {
    #[cfg(tinylens_vfp)]
    if vfp::add_assign(dst, src.as_ptr(), src.len()) {
        return;
    }
    for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// LayerNorm's centring of one row: `mean = Σ x / len` (index order), `x -= mean`,
/// and returns the variance `Σ x² / len` of the centred row (index order).
#[inline]
pub fn center(x: &mut [f32]) -> f32 {
    let len = x.len() as f32;
    #[cfg(tinylens_vfp)]
    if let Some(var) = vfp::center(x, len) {
        return var;
    }
    let mean = x.iter().sum::<f32>() / len;
    for v in x.iter_mut() {
        *v -= mean;
    }
    x.iter().map(|v| v * v).sum::<f32>() / len
}

/// `x[i] /= s`.
#[inline]
pub fn div_assign(x: &mut [f32], s: f32) {
    #[cfg(tinylens_vfp)]
    let x = {
        // Whole blocks of eight on the FPU, the rest below.
        let (head, tail) = x.split_at_mut(x.len() / 8 * 8);
        vfp::div_assign(head, s);
        tail
    };
    for v in x.iter_mut() {
        *v /= s;
    }
}

/// `x[i] = x[i] * w[i] + b[i]` for little-endian f32 rows `w`, `b` (LayerNorm's weight
/// and bias): the product rounded, then the sum.
#[inline]
pub fn mul_add_le(x: &mut [f32], w: &[u8], b: &[u8]) {
    #[cfg(tinylens_vfp)]
    if vfp::mul_add(x, w, b) {
        return;
    }
    let f = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for ((v, w), b) in x.iter_mut().zip(w.chunks_exact(4)).zip(b.chunks_exact(4)) {
        *v = *v * f(w) + f(b);
    }
}

/// `out[c] = (w[c] as i8) as f32 * s`: one row of int8 weights dequantized.
#[inline]
pub fn dequantize_i8(w: &[u8], s: f32, out: &mut [f32]) {
    #[cfg(tinylens_vfp)]
    if vfp::dequantize_i8(w, s, out) {
        return;
    }
    for (o, &b) in out.iter_mut().zip(w) {
        *o = (b as i8) as f32 * s;
    }
}

/// The index of the largest value (the first one on ties; NaN never wins): the greedy
/// choice of [`crate::sample::greedy`].
#[inline]
pub fn argmax(x: &[f32]) -> u32 {
    #[cfg(tinylens_vfp)]
    if let Some(i) = vfp::argmax(x) {
        return i;
    }
    argmax_portable(x)
}

/// [`argmax`] with the portable loop only, whatever the target: the reference.
pub fn argmax_portable(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best as u32
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
    // Whole bytes (two nibbles): groups start at even columns, as every group is even.
    // Integer addition is associative, so the pairing below changes nothing.
    let pairs = x.len() / 2;
    let bytes = &row[c0 / 2..c0 / 2 + pairs];
    let mut s: i32 = bytes
        .iter()
        .zip(x.chunks_exact(2))
        .map(|(&b, xs)| {
            let lo = ((b << 4) as i8 >> 4) as i32;
            let hi = (b as i8 >> 4) as i32;
            lo * xs[0] as i32 + hi * xs[1] as i32
        })
        .sum();
    if x.len() % 2 == 1 {
        s += int4_at(row, c0 + x.len() - 1) as i32 * x[x.len() - 1] as i32;
    }
    s
}

/// The DSP int8 kernel (Armv7E-M: Cortex-M4/M7; Armv8-M Mainline with the DSP
/// extension: Cortex-M33 and up, see `build.rs`). One of the crate's two modules with
/// `unsafe` code (inline assembly; see `lib.rs`), so it is allowed it; the portable
/// [`dot_i8`] stays the reference it is tested against bit for bit.
#[cfg(tinylens_dsp)]
#[allow(unsafe_code)]
mod dsp;

/// Attention over an f32 cache and f16 weights with the FPU (hard-float Arm targets,
/// see `build.rs`): a kernel module with `unsafe` code (inline assembly), the
/// portable [`dot`], [`weighted_sum`] and f16 kernels its reference.
#[cfg(tinylens_vfp)]
#[allow(unsafe_code)]
mod vfp;

/// The Helium (MVE) int8 kernel (Armv8.1-M: Cortex-M55, M85; see `build.rs` and
/// `kernels/mve.rs`), tested against the portable [`dot_i8`] bit for bit like the DSP one.
/// MVE cores have the DSP extension, so `tinylens_mve` comes with `tinylens_dsp`: rows the
/// MVE kernel does not take (multiples of 8 but not of 16 columns) go to the DSP kernel.
#[cfg(tinylens_mve)]
#[allow(unsafe_code)]
mod mve;

mod block;
pub use block::{matmul, Block, MatMul, Portable};

/// Whether int8 matrix-vector products in this build use the Helium (MVE) kernel
/// (`VMLADAVA.S8`; `-C target-cpu=cortex-m55`/`cortex-m85`: see `build.rs`). The
/// results are the same bits either way.
pub const MVE: bool = cfg!(tinylens_mve);

/// Whether int8 matrix-vector products in this build use the DSP kernel (`SXTB16`/
/// `SMLAD`; Armv7E-M targets always, Armv8-M Mainline ones when the flags say the core
/// has the extension: see `build.rs` and `kernels/dsp.rs`). The results are the same
/// bits either way.
pub const DSP: bool = cfg!(tinylens_dsp);

/// An input vector prepared for a matrix-vector product: the floats, and (when any
/// weight it meets is int8/int4) its int8 quantization with one scale.
pub struct Input<'x> {
    pub x: &'x [f32],
    pub q: &'x [i8],
    pub scale: f32,
    /// `q` laid out for the DSP kernel by [`arrange_pairs`] (only read when [`DSP`];
    /// may be empty, and then the portable kernel runs).
    pub pairs: &'x [u32],
}

/// Words [`arrange_pairs`] writes for `n` activations: two per group of four.
pub const fn pairs_len(n: usize) -> usize {
    n.div_ceil(4) * 2
}

/// Lays int8 activations out as the DSP kernel reads them: per group of four
/// `q[4g..4g + 4]`, word `2g` holds `q[4g]` (low half) and `q[4g + 2]` (high half) as
/// i16, word `2g + 1` holds `q[4g + 1]` and `q[4g + 3]` (the lanes `SXTB16` makes of a
/// word of weights and of that word rotated by 8). Missing activations of the last
/// group are 0. Writes [`pairs_len`]`(q.len())` words (fewer if `pairs` is shorter).
pub fn arrange_pairs(q: &[i8], pairs: &mut [u32]) {
    let lane = |v: i8| v as i16 as u16 as u32;
    let mut groups = q.chunks_exact(4);
    let mut out = pairs.chunks_exact_mut(2);
    for (g, o) in (&mut groups).zip(&mut out) {
        o[0] = lane(g[0]) | lane(g[2]) << 16;
        o[1] = lane(g[1]) | lane(g[3]) << 16;
    }
    let rest = groups.remainder();
    if !rest.is_empty() {
        if let Some(o) = out.next() {
            let at = |i: usize| rest.get(i).copied().unwrap_or(0);
            o[0] = lane(at(0)) | lane(at(2)) << 16;
            o[1] = lane(at(1)) | lane(at(3)) << 16;
        }
    }
}

/// [`quantize_input`] and, when the DSP kernel is on, [`arrange_pairs`] of the result
/// into `pairs`: the same values, in one pass on DSP targets with an FPU.
#[inline]
pub fn quantize_with_pairs(x: &[f32], q: &mut [i8], pairs: &mut [u32]) -> f32 {
    #[cfg(tinylens_dsp_vfp)]
    if let Some(scale) = dsp::quantize_pairs(x, q, pairs) {
        return scale;
    }
    quantize_with_pairs_portable(x, q, pairs)
}

/// [`quantize_with_pairs`] as two portable passes, whatever the target: the reference.
pub fn quantize_with_pairs_portable(x: &[f32], q: &mut [i8], pairs: &mut [u32]) -> f32 {
    let scale = quantize_input(x, q);
    if DSP {
        arrange_pairs(&q[..x.len().min(q.len())], pairs);
    }
    scale
}

/// Quantizes `x` to int8 with one symmetric scale `max|x| / 127`; returns the scale
/// (0 for an all-zero vector, whose products are then exactly 0; NaN when `x` holds a
/// NaN or infinity, so that it reaches the outputs instead of quantizing to 0).
pub fn quantize_input(x: &[f32], q: &mut [i8]) -> f32 {
    // max |x| on the bit patterns: with the sign cleared, the order of the patterns as
    // integers is the order of the magnitudes, and every NaN pattern is above
    // infinity's, so a NaN anywhere gives a NaN `amax` (as `f32::max` would not).
    let amax = f32::from_bits(x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff)));
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return if amax == 0.0 { 0.0 } else { f32::NAN };
    }
    let inv = QMAX / amax;
    if inv.is_finite() {
        for (o, v) in q.iter_mut().zip(x) {
            // No clamp needed: multiplying by `inv > 0` is monotonic, so |v * inv| is
            // largest for |v| = amax, where it is 127 within a few ulps: it rounds to 127.
            *o = round_half_away(v * inv) as i8;
        }
    } else {
        // amax below 127 / f32::MAX: `v * inv` is infinite or NaN for some v.
        for (o, v) in q.iter_mut().zip(x) {
            *o = round_clamp_i8(v * inv);
        }
    }
    amax / QMAX
}

/// `libm::roundf(y).clamp(-127, 127) as i8` (round half away from zero) for any `y`,
/// without the call: `t = trunc(2y)` (doubling is exact), then
/// `(t ± 1) / 2` truncated, the sign that of `t`. For `y >= 0` that is
/// `floor((floor(2y) + 1) / 2) = floor(y + 1/2)`, and symmetrically below 0; no
/// rounding happens anywhere. A test compares it with libm over a sweep of floats.
#[inline(always)]
pub fn round_clamp_i8(y: f32) -> i8 {
    // Any float: NaN converts to 0 and rounds to 0 (as `NaN as i8`); the saturated
    // conversion of infinities and huge values is first brought within range.
    let t = ((y * 2.0) as i32).clamp(-512, 512);
    ((t + 1 + (t >> 31)) >> 1).clamp(-127, 127) as i8
}

/// `libm::roundf(y) as i32` for a finite `y` with `|y| < 2^30` (see [`round_clamp_i8`]):
/// `t = trunc(2y)`, then `(t + 1 + (t >> 31)) >> 1`, which is `(t + 1) / 2` for
/// `t >= 0` and `floor(t / 2) = trunc((t - 1) / 2)` below.
#[inline(always)]
fn round_half_away(y: f32) -> i32 {
    let t = (y * 2.0) as i32;
    (t + 1 + (t >> 31)) >> 1
}

/// `libm::expf`, operation for operation (FreeBSD's `e_expf.c` with libm's `scalbnf`),
/// so the result is bit-identical on every platform, but inlined: the softmax's
/// exponentials then overlap instead of waiting on one call each. A test compares it
/// with `libm::expf` over a sweep of every range of f32.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    const HALF: [f32; 2] = [0.5, -0.5];
    const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 6.9314575195e-01
    const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 1.4286067653e-06
    const INV_LN2: f32 = f32::from_bits(0x3fb8_aa3b); // 1.4426950216e+00
    const P1: f32 = f32::from_bits(0x3e2a_aa8f); // 0xaaaa8f.0p-26
    const P2: f32 = f32::from_bits(0xbb35_5215); // -0xb55215.0p-32
    let mut x = x;
    let x1p127 = f32::from_bits(0x7f00_0000);
    let mut hx = x.to_bits();
    let sign = (hx >> 31) as i32;
    let signb = sign != 0;
    hx &= 0x7fff_ffff;
    if hx >= 0x42ae_ac50 {
        if hx > 0x7f80_0000 {
            return x; // NaN
        }
        if hx >= 0x42b1_7218 && !signb {
            return x * x1p127; // overflow
        }
        if signb && hx >= 0x42cf_f1b5 {
            return 0.0; // underflow
        }
    }
    let k: i32;
    let hi: f32;
    let lo: f32;
    if hx > 0x3eb1_7218 {
        if hx > 0x3f85_1592 {
            k = (INV_LN2 * x + HALF[sign as usize]) as i32;
        } else {
            k = 1 - sign - sign;
        }
        let kf = k as f32;
        hi = x - kf * LN2_HI;
        lo = kf * LN2_LO;
        x = hi - lo;
    } else if hx > 0x3900_0000 {
        k = 0;
        hi = x;
        lo = 0.0;
    } else {
        return 1.0 + x;
    }
    let xx = x * x;
    let c = x - xx * (P1 + xx * P2);
    let y = 1.0 + (x * c / (2.0 - c) - lo + hi);
    if k == 0 {
        y
    } else {
        scalbnf(y, k)
    }
}

/// libm's `scalbnf`: `x * 2^n` with the same pre-scaling steps.
#[inline(always)]
fn scalbnf(mut x: f32, mut n: i32) -> f32 {
    let two127 = f32::from_bits(0x7f00_0000);
    let two_m102 = f32::from_bits((127 - 102) << 23); // 2^-126 * 2^24
    if n > 127 {
        x *= two127;
        n -= 127;
        if n > 127 {
            x *= two127;
            n -= 127;
            if n > 127 {
                n = 127;
            }
        }
    } else if n < -126 {
        x *= two_m102;
        n += 102;
        if n < -126 {
            x *= two_m102;
            n += 102;
            if n < -126 {
                n = -126;
            }
        }
    }
    x * f32::from_bits(((127 + n) as u32) << 23)
}

/// Whether products with this tensor use the quantized input.
#[inline]
pub fn needs_quantized_input(kind: StorageKind) -> bool {
    matches!(kind, StorageKind::Int8 | StorageKind::Int4 { .. })
}

/// `out[r] = sum_c W[r, c] * x[c]` for every row of `w` (`out.len() == w.rows`).
///
/// Mismatched arguments never panic: rows past `out.len()` are not computed, `out`
/// entries past `w.rows` (or with `x`, the quantized input or the weights shorter
/// than the shape says) are set to NaN, so that they reach the logits as
/// [`crate::Error::NonFiniteLogits`] rather than as a plausible value.
pub fn matvec(w: &Tensor<'_>, input: &Input<'_>, out: &mut [f32]) {
    // The vector kernels first, with as little as possible around them (the calls are
    // many and some matrices small); anything they do not take goes the general way.
    #[cfg(tinylens_mve)]
    if w.kind == StorageKind::Int8
        && out.len() == w.rows
        && input.x.len() >= w.cols
        && mve::matvec_i8(w.values, w.scales, w.cols, input.q, input.scale, out)
    {
        return;
    }
    #[cfg(tinylens_dsp)]
    if w.kind == StorageKind::Int8
        && out.len() == w.rows
        && input.x.len() >= w.cols
        && input.q.len() >= w.cols
        && dsp::matvec_i8(w.values, w.scales, w.cols, input.pairs, input.scale, out)
    {
        return;
    }
    #[cfg(tinylens_dsp)]
    if let StorageKind::Int4 { group } = w.kind {
        if out.len() == w.rows
            && input.x.len() >= w.cols
            && dsp::matvec_i4(w.values, w.scales, w.cols, group, input.q, input.scale, out)
        {
            return;
        }
    }
    #[cfg(tinylens_vfp)]
    if w.kind == StorageKind::F16
        && out.len() == w.rows
        && vfp::matvec_f16(w.values, w.cols, input.x, out)
    {
        return;
    }
    matvec_with(w, input, out);
}

/// [`matvec`] with the portable kernels only, whatever the target: the reference the
/// DSP kernel is tested against (and measured against) on the device.
pub fn matvec_portable(w: &Tensor<'_>, input: &Input<'_>, out: &mut [f32]) {
    matvec_with(w, input, out);
}

#[inline(never)]
fn matvec_with(w: &Tensor<'_>, input: &Input<'_>, out: &mut [f32]) {
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
        StorageKind::Int4 { .. } => cols.div_ceil(2),
        StorageKind::Bytes => 0,
    };
    let rows = out.len().min(w.rows);
    let (out, rest) = out.split_at_mut(rows);
    rest.fill(f32::NAN);
    if row_len == 0 {
        // No columns (or no values): every sum is empty.
        for (r, o) in out.iter_mut().enumerate() {
            *o = match w.kind {
                StorageKind::Int8 => 0.0 * (w.scale(r) * input.scale),
                StorageKind::Int4 { .. } => 0.0 * input.scale,
                _ => 0.0,
            };
        }
        return;
    }
    // Rows the weights really hold; the others are NaN.
    let held = rows.min(w.values.len() / row_len);
    let (out, missing) = out.split_at_mut(held);
    missing.fill(f32::NAN);
    let values = &w.values[..held * row_len];
    match w.kind {
        StorageKind::F32 | StorageKind::F16 => {
            // FLOAT_ROWS rows at a time, the rest one by one; the same sums either way.
            let grouped = if FLOAT_ROWS > 1 {
                held / FLOAT_ROWS * FLOAT_ROWS
            } else {
                0
            };
            let (head, tail) = out.split_at_mut(grouped);
            let stride = row_len * FLOAT_ROWS;
            for (o, wr) in head
                .chunks_exact_mut(FLOAT_ROWS)
                .zip(values.chunks_exact(stride))
            {
                if w.kind == StorageKind::F32 {
                    dot_rows_f32_le::<FLOAT_ROWS>(wr, x, o);
                } else {
                    dot_rows_f16_le::<FLOAT_ROWS>(wr, x, o);
                }
            }
            for (o, row) in tail
                .iter_mut()
                .zip(values[grouped * row_len..].chunks_exact(row_len))
            {
                *o = if w.kind == StorageKind::F32 {
                    dot_f32_le(row, x)
                } else {
                    dot_f16_le(row, x)
                };
            }
        }
        StorageKind::Int8 => {
            for (r, (o, row)) in out.iter_mut().zip(values.chunks_exact(row_len)).enumerate() {
                *o = dot_i8(row, q) as f32 * (w.scale(r) * input.scale);
            }
        }
        StorageKind::Int4 { group } => {
            let gc = group.cols();
            let groups = cols.div_ceil(gc);
            for (r, (o, row)) in out.iter_mut().zip(values.chunks_exact(row_len)).enumerate() {
                let mut acc = 0.0f32;
                for g in 0..groups {
                    let c0 = g * gc;
                    let c1 = (c0 + gc).min(cols);
                    let s = dot_i4_group(row, c0, &q[c0..c1]);
                    acc += s as f32 * w.scale(r.saturating_mul(groups).saturating_add(g));
                }
                *o = acc * input.scale;
            }
        }
        StorageKind::Bytes => out.fill(0.0),
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
            pairs: &[],
        };
        let int4 = crate::quant::Int4Group::ALL.map(|group| (StorageKind::Int4 { group }, 5e-2));
        for (kind, tol) in [
            (StorageKind::F32, 1e-6),
            (StorageKind::F16, 2e-3),
            (StorageKind::Int8, 1e-2),
        ]
        .into_iter()
        .chain(int4)
        {
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
                pairs: &[],
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

    /// The int4 kernel at every group: per group the exact integer sum, times that
    /// group's scale, added in group order; times the input scale at the end.
    #[test]
    fn int4_kernel_is_the_exact_sum_per_group() {
        // 200 columns: a partial last group at every size (and an even tail).
        for cols in [200, 45, 128, 16] {
            let rows = 5;
            let w = data(rows * cols, 0.4);
            let x = data(cols, 1.3);
            let mut q = vec![0i8; cols];
            let scale = quantize_input(&x, &mut q);
            for group in crate::quant::Int4Group::ALL {
                let kind = StorageKind::Int4 { group };
                let buf = build(kind, rows, cols, &w);
                let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
                let mut out = vec![0.0; rows];
                let input = Input {
                    x: &x,
                    q: &q,
                    scale,
                    pairs: &[],
                };
                matvec(&t, &input, &mut out);
                let g = group.cols();
                let rb = cols.div_ceil(2);
                for r in 0..rows {
                    let mut acc = 0.0f32;
                    for (i, c0) in (0..cols).step_by(g).enumerate() {
                        let isum: i32 = (c0..(c0 + g).min(cols))
                            .map(|c| int4_at(&t.values[r * rb..][..rb], c) as i32 * q[c] as i32)
                            .sum();
                        acc += isum as f32 * t.scale(r * cols.div_ceil(g) + i);
                    }
                    assert_eq!(
                        out[r].to_bits(),
                        (acc * scale).to_bits(),
                        "{kind:?} {cols} cols row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn multi_row_float_kernels_are_the_one_row_kernels() {
        for cols in [1, 7, 8, 16, 37, 64] {
            let rows = 9;
            let w = data(rows * cols, 0.3);
            let x = data(cols, 1.7);
            for kind in [StorageKind::F32, StorageKind::F16] {
                let buf = build(kind, rows, cols, &w);
                let t = Tensor::from_data(kind, rows, cols, &buf).unwrap();
                let mut out = vec![0.0; rows];
                let input = Input {
                    x: &x,
                    q: &[],
                    scale: 0.0,
                    pairs: &[],
                };
                matvec(&t, &input, &mut out);
                for r in 0..rows {
                    let one = match kind {
                        StorageKind::F32 => dot_f32_le(&t.values[r * cols * 4..][..cols * 4], &x),
                        _ => dot_f16_le(&t.values[r * cols * 2..][..cols * 2], &x),
                    };
                    assert_eq!(
                        out[r].to_bits(),
                        one.to_bits(),
                        "{kind:?} {cols} cols row {r}"
                    );
                }
            }
        }
    }

    /// Bit patterns spread over every exponent and sign (and the special values).
    fn sweep() -> impl Iterator<Item = f32> {
        (0..=u32::MAX / 65_519)
            .map(|i| f32::from_bits(i.wrapping_mul(65_519)))
            .chain([
                0.0,
                -0.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                88.72284,
                -87.33655,
                -103.97208,
            ])
    }

    #[test]
    fn inline_expf_is_libm_expf() {
        for x in sweep() {
            let (a, b) = (expf(x), libm::expf(x));
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "expf({x:e}): {a:e} vs {b:e}"
            );
        }
        // The softmax range, densely.
        for i in 0..2_000_000 {
            let x = -(i as f32) * 6.0e-5;
            assert_eq!(expf(x).to_bits(), libm::expf(x).to_bits(), "expf({x:e})");
        }
    }

    #[test]
    fn rounding_is_libm_roundf() {
        let check = |y: f32| {
            let want = libm::roundf(y).clamp(-QMAX, QMAX) as i8;
            assert_eq!(round_clamp_i8(y), want, "round({y:e})");
        };
        for y in sweep() {
            check(y);
        }
        for i in -300_000..=300_000 {
            let y = i as f32 * 0.000_5;
            check(y);
            check(f32::from_bits(y.to_bits().wrapping_add(1)));
            check(f32::from_bits(y.to_bits().wrapping_sub(1)));
        }
    }

    /// What `SXTB16 rd, rm, ROR #rot` leaves in rd: bytes 0 and 2 of the rotated word,
    /// sign-extended to 16 bits.
    fn sxtb16(w: u32, rot: u32) -> [i32; 2] {
        let r = w.rotate_right(rot);
        [(r as u8 as i8) as i32, ((r >> 16) as u8 as i8) as i32]
    }

    /// `SMLAD acc, a, b, acc` with a's lanes given as values.
    fn smlad(acc: i32, a: [i32; 2], b: u32) -> i32 {
        acc.wrapping_add(a[0] * (b as u16 as i16) as i32)
            .wrapping_add(a[1] * ((b >> 16) as u16 as i16) as i32)
    }

    /// The DSP kernel's arithmetic, instruction for instruction, on the host: the
    /// layout of `arrange_pairs` feeds SXTB16/SMLAD the right activations for every
    /// byte of every weight word (QEMU runs the real instructions against the portable
    /// kernel in `firmware-examples/kernels`).
    #[test]
    fn pair_layout_matches_the_dsp_lanes() {
        let mut seed = 7u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for cols in (1..=72).chain([128, 136]) {
            let w: Vec<u8> = (0..cols).map(|_| next() as u8).collect();
            let q: Vec<i8> = (0..cols).map(|_| next() as i8).collect();
            let mut pairs = vec![0xdead_beef_u32; pairs_len(cols) + 3];
            arrange_pairs(&q, &mut pairs);
            assert!(pairs[pairs_len(cols)..].iter().all(|p| *p == 0xdead_beef));
            // Whole words of weights, the last one padded with zeros.
            let mut acc = 0i32;
            for (g, chunk) in w.chunks(4).enumerate() {
                let mut b = [0u8; 4];
                b[..chunk.len()].copy_from_slice(chunk);
                let word = u32::from_le_bytes(b);
                acc = smlad(acc, sxtb16(word, 0), pairs[2 * g]);
                acc = smlad(acc, sxtb16(word, 8), pairs[2 * g + 1]);
            }
            assert_eq!(acc, dot_i8(&w, &q), "{cols} columns");
        }
    }

    /// `quantize_input` is the libm formula it replaced: `roundf(v * (127 / amax))`
    /// clamped to ±127, on vectors with every kind of magnitude spread.
    #[test]
    fn quantize_input_is_the_libm_formula() {
        let mut seed = 99u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for case in 0..20_000 {
            let n = 1 + (next() % 70) as usize;
            let x: Vec<f32> = (0..n)
                .map(|_| match case % 3 {
                    0 => f32::from_bits(next() & 0xbfff_ffff), // any finite magnitude
                    1 => (next() % 1000) as f32 * 0.5 - 250.0, // exact halves
                    _ => (next() as f32 / u32::MAX as f32 - 0.5) * 3.0,
                })
                .collect();
            let mut q = vec![0i8; n];
            let scale = quantize_input(&x, &mut q);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 {
                assert_eq!(scale, 0.0);
                continue;
            }
            assert_eq!(scale, amax / 127.0);
            let inv = 127.0 / amax;
            for (v, q) in x.iter().zip(&q) {
                let want = libm::roundf(v * inv).clamp(-127.0, 127.0) as i8;
                assert_eq!(*q, want, "{v:e} in a vector with max {amax:e}");
            }
        }
        let mut q = [0i8; 3];
        assert!(quantize_input(&[1.0, f32::NAN, 2.0], &mut q).is_nan());
        assert!(quantize_input(&[1.0, f32::INFINITY], &mut q[..2]).is_nan());
        assert_eq!(q, [0, 0, 0]);
    }

    #[test]
    fn zero_input_gives_zero() {
        let x = vec![0.0; 10];
        let mut q = vec![1i8; 10];
        assert_eq!(quantize_input(&x, &mut q), 0.0);
        assert!(q.iter().all(|v| *v == 0));
    }
}
