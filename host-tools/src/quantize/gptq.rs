//! GPTQ: error-compensating rounding of one weight matrix (Frantar et al., "GPTQ:
//! Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2022).
//!
//! A stored matrix `W` [rows, cols] computes `y = W x`, one output per row. Rounding a
//! row `w` to `q` changes that output by `(w - q)·x`, and over calibration inputs the
//! expected squared change is `(w - q)ᵀ H (w - q)` with `H = Σ x xᵀ` (the Hessian of
//! the layer-wise squared error, up to a factor 2). GPTQ rounds one column at a time
//! and moves the rounding error of column `i` onto the columns not yet rounded, in the
//! proportions that minimise that quadratic (Optimal Brain Surgeon), using the upper
//! Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ U`): with `e = (w_i - q_i) / U_ii`,
//! `w_j -= e · U_ij` for every later column `j`.
//!
//! - Damping: `H + λ·mean(diag H)·I` (λ = 1% as in the paper) before the inverse, which
//!   also makes a singular `H` (e.g. LayerNorm outputs, which sum to zero) usable;
//!   inputs that are always zero get `H_ii = 1` (their weights are then simply rounded).
//! - Column order: the paper's order (natural), with int4 group scales chosen when the
//!   rounding reaches each group, from the already-updated weights ("groupsize"); and
//!   "act-order" (descending `H_ii`, the columns with the largest inputs first) with
//!   every scale fixed beforehand from the original weights ("static groups"), the
//!   combination that keeps groups well-defined under a permutation.
//! - Both, and plain round-to-nearest, are scored by the undamped objective
//!   `Σ_rows (w - q)ᵀ H (w - q)` and the best is kept, so calibration never does worse
//!   on its own data than rounding to nearest.
//! - Rows are independent given `U`, so each row is done in one pass; GPTQ's lazy batch
//!   updates are a cache blocking of the same arithmetic for matrices of thousands of
//!   columns, pointless at the few dozen columns of these models.

use half::f16;
use nalgebra::{DMatrix, DVector};
use serde::Serialize;
use tinylens_core::quant::{self, StorageKind, INT4_MAX, INT8_MAX};

/// Damping as a fraction of the mean diagonal of `H` (GPTQ's `percdamp`, 1%).
pub const DAMPING: f64 = 0.01;

/// The dampings the calibrated quantizer tries (see `quantize::quantize`): more
/// damping trusts the calibration inputs less and moves GPTQ towards plain rounding.
pub const DAMPINGS: [f64; 2] = [DAMPING, 0.1];

/// How the levels of one matrix were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Round to nearest (with the int4 clipping search).
    Nearest = 0,
    /// GPTQ in natural column order, int4 scales chosen group by group.
    Gptq = 1,
    /// GPTQ in descending order of `H_ii`, scales fixed from the original weights.
    GptqActOrder = 2,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Nearest => "nearest",
            Method::Gptq => "gptq",
            Method::GptqActOrder => "gptq-act-order",
        }
    }
}

/// Levels and scales of a quantized matrix, ready for [`quant::pack`].
#[derive(Debug, Clone)]
pub struct Rounded {
    pub levels: Vec<i8>,
    pub scales: Vec<f16>,
    pub method: Method,
    /// `Σ_rows (w - q)ᵀ H (w - q)` of the kept result.
    pub loss: f64,
    /// The same for round-to-nearest.
    pub nearest_loss: f64,
}

/// `Σ x xᵀ` over the calibration inputs of one matrix.
#[derive(Debug, Clone)]
pub struct Hessian {
    pub h: DMatrix<f64>,
    pub samples: usize,
}

impl Hessian {
    pub fn new(dim: usize) -> Self {
        Hessian {
            h: DMatrix::zeros(dim, dim),
            samples: 0,
        }
    }

    /// Adds one input vector.
    pub fn add(&mut self, x: &[f32]) {
        debug_assert_eq!(x.len(), self.h.nrows());
        let v = DVector::from_iterator(x.len(), x.iter().map(|v| *v as f64));
        self.h.ger(1.0, &v, &v, 1.0);
        self.samples += 1;
    }
}

fn qmax(kind: StorageKind) -> i8 {
    if kind == StorageKind::Int8 {
        INT8_MAX
    } else {
        INT4_MAX
    }
}

/// Columns sharing one scale: a whole row for int8, the tensor's group for int4.
fn group_len(kind: StorageKind, cols: usize) -> usize {
    match kind {
        StorageKind::Int4 { group } => group.cols(),
        _ => cols.max(1),
    }
}

fn scale_of(kind: StorageKind, values: &[f32]) -> f16 {
    if kind == StorageKind::Int8 {
        quant::int8_row_scale(values)
    } else {
        quant::int4_group_scale(values)
    }
}

/// Round-to-nearest levels and scales: exactly what [`quant::quantize`] stores.
pub fn nearest(kind: StorageKind, rows: usize, cols: usize, w: &[f32]) -> (Vec<i8>, Vec<f16>) {
    let g = group_len(kind, cols);
    let mut levels = Vec::with_capacity(rows * cols);
    let mut scales = Vec::new();
    for row in w.chunks(cols) {
        for group in row.chunks(g) {
            let s = scale_of(kind, group);
            scales.push(s);
            levels.extend(group.iter().map(|v| quant::round_level(*v, s, qmax(kind))));
        }
    }
    (levels, scales)
}

/// `Σ_rows (w - q)ᵀ H (w - q)`.
fn objective(
    kind: StorageKind,
    cols: usize,
    w: &[f32],
    levels: &[i8],
    scales: &[f16],
    h: &DMatrix<f64>,
) -> f64 {
    let g = group_len(kind, cols);
    let groups = cols.div_ceil(g);
    let mut total = 0.0;
    let mut d = vec![0.0f64; cols];
    for (r, row) in w.chunks(cols).enumerate() {
        for c in 0..cols {
            let s = scales[r * groups + c / g].to_f32() as f64;
            d[c] = row[c] as f64 - levels[r * cols + c] as f64 * s;
        }
        // Column j of H is contiguous (nalgebra is column-major).
        for (j, col) in h.as_slice().chunks_exact(cols).enumerate() {
            if d[j] == 0.0 {
                continue;
            }
            let hd: f64 = col.iter().zip(&d).map(|(a, b)| a * b).sum();
            total += d[j] * hd;
        }
    }
    total
}

/// The upper Cholesky factor `U` of `(H + damping)⁻¹`, rows contiguous.
struct UpperFactor {
    rows: Vec<f64>,
}

/// The upper Cholesky factor of `(H + damping)⁻¹` in the column order `perm`; more
/// damping is tried if the factorisation fails (numerically indefinite `H`).
fn inverse_factor(h: &DMatrix<f64>, perm: &[usize], damping: f64) -> Option<UpperFactor> {
    let n = h.nrows();
    let mut hp = DMatrix::from_fn(n, n, |i, j| h[(perm[i], perm[j])]);
    for i in 0..n {
        if hp[(i, i)] <= 0.0 {
            hp[(i, i)] = 1.0;
            for j in 0..n {
                if j != i {
                    hp[(i, j)] = 0.0;
                    hp[(j, i)] = 0.0;
                }
            }
        }
    }
    let mean_diag = (0..n).map(|i| hp[(i, i)]).sum::<f64>() / n.max(1) as f64;
    let mut damp = damping;
    for _ in 0..6 {
        let mut hd = hp.clone();
        for i in 0..n {
            hd[(i, i)] += damp * mean_diag;
        }
        if let Some(inv) = hd.cholesky().map(|c| c.inverse()) {
            // Symmetrise: the inverse is symmetric up to rounding.
            let inv = (&inv + inv.transpose()) * 0.5;
            if let Some(c) = inv.cholesky() {
                // U = Lᵀ; row i of U is column i of L, contiguous in column-major L.
                return Some(UpperFactor {
                    rows: c.l().as_slice().to_vec(),
                });
            }
        }
        damp *= 10.0;
    }
    None
}

/// Clipping ratios tried for each row's scales: `max|w| / qmax` times these. With
/// error compensation the best clipping differs from round-to-nearest's (the error of
/// a clipped weight is partly absorbed by the later columns), so each row's ratio is
/// chosen by the objective itself.
const CLIP_RATIOS: [f32; 7] = [1.0, 0.93, 0.86, 0.79, 0.72, 0.65, 0.58];

/// One row through GPTQ in column order `perm`: the row's levels (in natural column
/// order) and its scales (one per group). `scales` holds the starting scales; with
/// `dynamic` (natural order only) each int4 group's scale is chosen when the rounding
/// reaches it, from the already-updated weights, by the clipping search.
fn gptq_row(
    kind: StorageKind,
    row: &[f32],
    u: &UpperFactor,
    perm: &[usize],
    scales: &mut [f16],
    dynamic: bool,
    levels: &mut [i8],
) {
    let cols = row.len();
    let g = group_len(kind, cols);
    let qm = qmax(kind);
    let mut wr: Vec<f64> = perm.iter().map(|&c| row[c] as f64).collect();
    let mut group = Vec::with_capacity(g);
    for i in 0..cols {
        let c = perm[i];
        if dynamic && kind != StorageKind::Int8 && c % g == 0 {
            // Natural order: the group is columns i..i+g, all still unrounded.
            group.clear();
            group.extend(wr[i..(i + g).min(cols)].iter().map(|v| *v as f32));
            scales[c / g] = scale_of(kind, &group);
        }
        let s = scales[c / g];
        let q = quant::round_level(wr[i] as f32, s, qm);
        levels[c] = q;
        let ui = &u.rows[i * cols..(i + 1) * cols];
        let err = (wr[i] - q as f64 * s.to_f32() as f64) / ui[i];
        for (wj, uij) in wr[i + 1..].iter_mut().zip(&ui[i + 1..]) {
            *wj -= err * uij;
        }
    }
}

/// `(w - q)ᵀ H (w - q)` of one row.
fn row_objective(
    kind: StorageKind,
    row: &[f32],
    levels: &[i8],
    scales: &[f16],
    h: &DMatrix<f64>,
) -> f64 {
    objective(kind, row.len(), row, levels, scales, h)
}

/// The scales of one row at clipping `ratio` of its groups' `max|w|`, rounded to f16.
fn clipped_scales(kind: StorageKind, row: &[f32], ratio: f32) -> Vec<f16> {
    let g = group_len(kind, row.len());
    row.chunks(g)
        .map(|grp| {
            let amax = grp.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let target = amax * ratio;
            let qm = qmax(kind) as f32;
            let mut s = f16::from_f32(target / qm);
            if s.to_f32() == 0.0 && amax > 0.0 {
                s = f16::from_bits(1); // smallest subnormal: keeps tiny rows non-zero
            }
            // Rounded up (as the core's scales are) so that `target` itself is a level.
            while s.to_f32() * qm < target && s.is_finite() {
                s = f16::from_bits(s.to_bits() + 1);
            }
            s
        })
        .collect()
}

/// Quantizes `w` (`rows x cols`, row-major, one output per row) to `kind` (int8 or
/// int4) against the inputs summarised by `h` ([cols, cols]); see the module docs.
/// Per row, the candidates are round-to-nearest, GPTQ in natural order with scales
/// chosen group by group, and GPTQ in natural and act-order with the row's scales
/// clipped at each of [`CLIP_RATIOS`]; the one with the least objective is kept.
pub fn quantize(
    kind: StorageKind,
    rows: usize,
    cols: usize,
    w: &[f32],
    h: &Hessian,
    damping: f64,
) -> Rounded {
    assert!(matches!(kind, StorageKind::Int8 | StorageKind::Int4 { .. }));
    assert_eq!(w.len(), rows * cols);
    let h = &h.h;
    let (mut levels, mut scales) = nearest(kind, rows, cols, w);
    let groups = cols.div_ceil(group_len(kind, cols));
    let natural: Vec<usize> = (0..cols).collect();
    let mut act: Vec<usize> = natural.clone();
    // Descending H_ii, ties by column: deterministic.
    act.sort_by(|a, b| h[(*b, *b)].total_cmp(&h[(*a, *a)]).then(a.cmp(b)));
    let u_natural = inverse_factor(h, &natural, damping);
    let u_act = inverse_factor(h, &act, damping);
    let (mut loss, mut nearest_loss) = (0.0, 0.0);
    let mut counts = [0usize; 3];
    let mut lv = vec![0i8; cols];
    for r in 0..rows {
        let row = &w[r * cols..(r + 1) * cols];
        let sc = &mut scales[r * groups..(r + 1) * groups];
        let lr = &mut levels[r * cols..(r + 1) * cols];
        let base = row_objective(kind, row, lr, sc, h);
        nearest_loss += base;
        let mut best = (base, Method::Nearest);
        let mut try_one = |method: Method,
                           u: &UpperFactor,
                           perm: &[usize],
                           mut s: Vec<f16>,
                           dynamic: bool,
                           best: &mut (f64, Method),
                           lr: &mut [i8],
                           sc: &mut [f16]| {
            gptq_row(kind, row, u, perm, &mut s, dynamic, &mut lv);
            let e = row_objective(kind, row, &lv, &s, h);
            if e < best.0 {
                *best = (e, method);
                lr.copy_from_slice(&lv);
                sc.copy_from_slice(&s);
            }
        };
        if let Some(u) = &u_natural {
            if kind != StorageKind::Int8 {
                let s = sc.to_vec();
                try_one(Method::Gptq, u, &natural, s, true, &mut best, lr, sc);
            }
            for ratio in CLIP_RATIOS {
                let s = clipped_scales(kind, row, ratio);
                try_one(Method::Gptq, u, &natural, s, false, &mut best, lr, sc);
            }
        }
        if let Some(u) = &u_act {
            for ratio in CLIP_RATIOS {
                let s = clipped_scales(kind, row, ratio);
                try_one(Method::GptqActOrder, u, &act, s, false, &mut best, lr, sc);
            }
        }
        loss += best.0;
        counts[best.1 as usize] += 1;
    }
    // The method most rows used (ties: the first of nearest, gptq, act-order).
    let method = [Method::Nearest, Method::Gptq, Method::GptqActOrder]
        .into_iter()
        .max_by_key(|m| (counts[*m as usize], std::cmp::Reverse(*m as usize)))
        .unwrap_or(Method::Nearest);
    Rounded {
        levels,
        scales,
        method,
        loss,
        nearest_loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// int8 and int4 at every group size.
    fn kinds() -> Vec<StorageKind> {
        let mut k = vec![StorageKind::Int8];
        k.extend(tinylens_core::Int4Group::ALL.map(|group| StorageKind::Int4 { group }));
        k
    }

    fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
    }

    /// Correlated inputs (a few strong directions), where error compensation pays.
    fn inputs(rng: &mut StdRng, n: usize, dim: usize) -> Vec<Vec<f32>> {
        let basis: Vec<Vec<f32>> = (0..4).map(|_| random(rng, dim)).collect();
        (0..n)
            .map(|_| {
                let c: Vec<f32> = random(rng, 4);
                let noise = random(rng, dim);
                (0..dim)
                    .map(|i| (0..4).map(|k| c[k] * basis[k][i]).sum::<f32>() + 0.05 * noise[i])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn gptq_beats_nearest_on_its_objective_and_packs() {
        let mut rng = StdRng::seed_from_u64(3);
        let (rows, cols) = (24, 64);
        let w = random(&mut rng, rows * cols);
        let xs = inputs(&mut rng, 400, cols);
        let mut h = Hessian::new(cols);
        for x in &xs {
            h.add(x);
        }
        for kind in kinds() {
            let r = quantize(kind, rows, cols, &w, &h, DAMPING);
            assert_ne!(r.method, Method::Nearest, "{kind:?}");
            assert!(
                r.loss < 0.7 * r.nearest_loss,
                "{kind:?}: {} vs {}",
                r.loss,
                r.nearest_loss
            );
            // The objective is the output error over the calibration inputs.
            let out_err = |levels: &[i8], scales: &[f16]| -> f64 {
                let g = group_len(kind, cols);
                let groups = cols.div_ceil(g);
                xs.iter()
                    .map(|x| {
                        (0..rows)
                            .map(|r| {
                                (0..cols)
                                    .map(|c| {
                                        let s = scales[r * groups + c / g].to_f32() as f64;
                                        (w[r * cols + c] as f64 - levels[r * cols + c] as f64 * s)
                                            * x[c] as f64
                                    })
                                    .sum::<f64>()
                                    .powi(2)
                            })
                            .sum::<f64>()
                    })
                    .sum()
            };
            let e = out_err(&r.levels, &r.scales);
            assert!((e - r.loss).abs() <= 1e-6 * e.max(1.0), "{e} vs {}", r.loss);
            let mut bytes = vec![0u8; kind.data_len(rows, cols).unwrap()];
            assert!(quant::pack(
                kind, rows, cols, &r.levels, &r.scales, &mut bytes
            ));
        }
    }

    #[test]
    fn nearest_is_what_the_core_stores() {
        let mut rng = StdRng::seed_from_u64(4);
        let (rows, cols) = (5, 45);
        let w = random(&mut rng, rows * cols);
        for kind in kinds() {
            let (levels, scales) = nearest(kind, rows, cols, &w);
            let mut ours = vec![0u8; kind.data_len(rows, cols).unwrap()];
            assert!(quant::pack(kind, rows, cols, &levels, &scales, &mut ours));
            let mut core = vec![0u8; ours.len()];
            assert!(quant::quantize(kind, rows, cols, &w, &mut core));
            assert_eq!(ours, core);
        }
    }

    #[test]
    fn zero_inputs_and_zero_hessian_fall_back_to_nearest() {
        let mut rng = StdRng::seed_from_u64(5);
        let w = random(&mut rng, 4 * 8);
        let h = Hessian::new(8);
        let r = quantize(StorageKind::INT4, 4, 8, &w, &h, DAMPING);
        assert_eq!(r.method, Method::Nearest);
        assert_eq!(r.loss, 0.0);
    }
}
