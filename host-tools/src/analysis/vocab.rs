//! Full circuits: vocabulary-sized matrices `W_E A B R` with a low-rank middle `A B`
//! ([d_model, k] times [k, d_model]) and `R` = `W_U` (OV circuits, the direct path) or
//! `W_E^T` (QK circuits), as TransformerLens's `FactoredMatrix` keeps them, never formed.
//!
//! Everything but the scans goes through three `d_model x d_model` matrices computed
//! once per model ([`Vocab`]): the Gram matrices `G_E = W_E^T W_E` and `G_U = W_U W_U^T`
//! and the cross product `C = W_U W_E`. With them
//! - `||W_E A B R||_F^2 = tr((A^T G_E A) (B G_R B^T))` (`G_R` = `G_U`, or `G_E` for QK):
//!   two `k x k` matrices;
//! - the non-zero eigenvalues of `W_E A B R` are those of `B (R W_E) A` (`k x k`, with
//!   `R W_E` = `C` or `G_E`): TL's `FactoredMatrix.eigenvalues` without the
//!   vocabulary-sized factors.
//!
//! The Gram products are the only work that touches the vocabulary (three f64 products
//! of `d_vocab x d_model` matrices, in blocks of tokens, on faer's kernels); every head
//! after that costs `d_model^2 k`. Entries, for the scans that need all of them, come
//! from [`super::scan`] in f32 and the reported ones are recomputed here in f64.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};
use indicatif::ProgressBar;
use nalgebra::{Complex, DMatrix, DVector};

use super::factored::{eigenvalues, to_f64, LowRank};
use super::progress::par;
use super::scan::{scan, ScanOut, ScanSpec};
use crate::weights::Weights;
use crate::{Error, Result};

/// Tokens per block of the Gram products (the f64 copy of a block is
/// `2 x GRAM_BLOCK x d_model` doubles).
const GRAM_BLOCK: usize = 2048;

/// The vocabulary side of every full circuit of one model.
pub struct Vocab<'w> {
    pub w: &'w Weights,
    /// `W_E^T W_E` [d_model, d_model].
    pub g_e: DMatrix<f64>,
    /// `W_U W_U^T` [d_model, d_model].
    pub g_u: DMatrix<f64>,
    /// `W_U W_E` [d_model, d_model], when `d_vocab == d_vocab_out` (square OV circuits).
    pub c_ue: Option<DMatrix<f64>>,
}

/// A column-major nalgebra f32 matrix as a faer view (no copy).
pub fn view(m: &DMatrix<f32>) -> MatRef<'_, f32> {
    MatRef::from_column_major_slice(m.as_slice(), m.nrows(), m.ncols())
}

fn to_nalgebra(m: &Mat<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)])
}

impl<'w> Vocab<'w> {
    /// Computes the Gram and cross products of `w`'s embedding and unembedding.
    pub fn new(w: &'w Weights) -> Self {
        let d = w.cfg.d_model;
        let e = view(&w.w_e);
        let u = view(&w.w_u);
        let square = w.cfg.d_vocab == w.cfg.d_vocab_out;
        let mut g_e = Mat::<f64>::zeros(d, d);
        let mut g_u = Mat::<f64>::zeros(d, d);
        let mut c = Mat::<f64>::zeros(d, d);
        let n = e.nrows().max(u.ncols());
        for start in (0..n).step_by(GRAM_BLOCK) {
            let e_blk = (start < e.nrows()).then(|| {
                let len = GRAM_BLOCK.min(e.nrows() - start);
                let b = e.subrows(start, len);
                Mat::<f64>::from_fn(len, d, |i, j| f64::from(b[(i, j)]))
            });
            let u_blk = (start < u.ncols()).then(|| {
                let len = GRAM_BLOCK.min(u.ncols() - start);
                let b = u.subcols(start, len);
                Mat::<f64>::from_fn(d, len, |i, j| f64::from(b[(i, j)]))
            });
            if let Some(eb) = &e_blk {
                matmul(&mut g_e, Accum::Add, eb.transpose(), eb, 1.0, par());
            }
            if let Some(ub) = &u_blk {
                matmul(&mut g_u, Accum::Add, ub, ub.transpose(), 1.0, par());
            }
            if let (true, Some(eb), Some(ub)) = (square, &e_blk, &u_blk) {
                matmul(&mut c, Accum::Add, ub, eb, 1.0, par());
            }
        }
        Vocab {
            w,
            g_e: to_nalgebra(&g_e),
            g_u: to_nalgebra(&g_u),
            c_ue: square.then(|| to_nalgebra(&c)),
        }
    }
}

/// The right end of a full circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// `W_U` [d_model, d_vocab_out]: columns are output logits.
    Unembed,
    /// `W_E^T` [d_model, d_vocab]: columns are (key) tokens.
    EmbedT,
}

/// `W_E A B R`; `A` or `B` None stands for the identity (the direct path `W_E W_U`).
#[derive(Clone, Debug)]
pub struct FullCircuit {
    pub a: Option<DMatrix<f64>>,
    pub b: Option<DMatrix<f64>>,
    pub right: Right,
}

/// `m^T g m` (or `g` for the identity).
fn sandwich_left(g: &DMatrix<f64>, m: Option<&DMatrix<f64>>) -> DMatrix<f64> {
    match m {
        Some(m) => m.transpose() * (g * m),
        None => g.clone(),
    }
}

/// `m g m^T` (or `g`).
fn sandwich_right(g: &DMatrix<f64>, m: Option<&DMatrix<f64>>) -> DMatrix<f64> {
    match m {
        Some(m) => m * (g * m.transpose()),
        None => g.clone(),
    }
}

/// `sqrt(tr(x y))` for symmetric positive semi-definite `x`, `y` (0 if rounding makes the
/// trace negative).
pub fn norm_from_grams(x: &DMatrix<f64>, y: &DMatrix<f64>) -> f64 {
    x.component_mul(y).sum().max(0.0).sqrt()
}

impl FullCircuit {
    /// The circuit as two explicit factors, `(W_E A) [d_vocab, k]` and
    /// `(B R) [k, columns]`, for figures that show some of its rows and columns (the
    /// report's circuit maps); the norms and spectra never need them.
    pub fn factors(&self, w: &Weights) -> LowRank {
        let e = to_f64(&w.w_e);
        let left = match &self.a {
            Some(a) => &e * a,
            None => e.clone(),
        };
        let r = match self.right {
            Right::Unembed => to_f64(&w.w_u),
            Right::EmbedT => e.transpose(),
        };
        let right = match &self.b {
            Some(b) => b * r,
            None => r,
        };
        LowRank::new(left, right)
    }

    pub fn new(a: DMatrix<f64>, b: DMatrix<f64>, right: Right) -> Self {
        FullCircuit {
            a: Some(a),
            b: Some(b),
            right,
        }
    }

    fn gram_right<'v>(&self, v: &'v Vocab<'_>) -> &'v DMatrix<f64> {
        match self.right {
            Right::Unembed => &v.g_u,
            Right::EmbedT => &v.g_e,
        }
    }

    /// Rows of the circuit (`d_vocab`).
    pub fn nrows(&self, v: &Vocab<'_>) -> usize {
        v.w.cfg.d_vocab
    }

    /// Columns of the circuit.
    pub fn ncols(&self, v: &Vocab<'_>) -> usize {
        match self.right {
            Right::Unembed => v.w.cfg.d_vocab_out,
            Right::EmbedT => v.w.cfg.d_vocab,
        }
    }

    /// `A^T G_E A` (the left factor's Gram matrix).
    pub fn left_gram(&self, v: &Vocab<'_>) -> DMatrix<f64> {
        sandwich_left(&v.g_e, self.a.as_ref())
    }

    /// `B G_R B^T` (the right factor's Gram matrix).
    pub fn right_gram(&self, v: &Vocab<'_>) -> DMatrix<f64> {
        sandwich_right(self.gram_right(v), self.b.as_ref())
    }

    /// Frobenius norm, from the Gram matrices.
    pub fn frobenius_norm(&self, v: &Vocab<'_>) -> f64 {
        norm_from_grams(&self.left_gram(v), &self.right_gram(v))
    }

    /// The eigenvalues of `B (R W_E) A` [k, k]: the non-zero eigenvalues of the circuit
    /// plus zeros (TL's `FactoredMatrix.eigenvalues`). Requires a square circuit.
    pub fn eigenvalues(&self, v: &Vocab<'_>) -> Result<Vec<Complex<f64>>> {
        let c = match self.right {
            Right::EmbedT => &v.g_e,
            Right::Unembed => v.c_ue.as_ref().ok_or_else(|| {
                Error::Argument(format!(
                    "eigenvalues of a non-square {}x{} circuit",
                    v.w.cfg.d_vocab, v.w.cfg.d_vocab_out
                ))
            })?,
        };
        let ca = match &self.a {
            Some(a) => c * a,
            None => c.clone(),
        };
        let small = match &self.b {
            Some(b) => b * ca,
            None => ca,
        };
        eigenvalues(&small)
    }

    /// Row `token` of `W_E A` in f64.
    fn left_row(&self, v: &Vocab<'_>, token: usize) -> DVector<f64> {
        let e: DVector<f64> = v.w.w_e.row(token).transpose().map(f64::from);
        match &self.a {
            Some(a) => a.transpose() * e,
            None => e,
        }
    }

    /// Column `col` of `B R` in f64.
    fn right_col(&self, v: &Vocab<'_>, col: usize) -> DVector<f64> {
        let r: DVector<f64> = match self.right {
            Right::Unembed => v.w.w_u.column(col).map(f64::from),
            Right::EmbedT => v.w.w_e.row(col).transpose().map(f64::from),
        };
        match &self.b {
            Some(b) => b * r,
            None => r,
        }
    }

    /// One entry, in f64.
    pub fn entry(&self, v: &Vocab<'_>, row: usize, col: usize) -> f64 {
        self.left_row(v, row).dot(&self.right_col(v, col))
    }

    /// Scans the rows `tokens` of the circuit (see [`super::scan`]); `pb` advances by
    /// [`super::scan::blocks`]`(tokens.len())`.
    pub fn scan(
        &self,
        v: &Vocab<'_>,
        tokens: &[usize],
        spec: ScanSpec,
        pb: &ProgressBar,
    ) -> ScanOut {
        let w = v.w;
        let d = w.cfg.d_model;
        let f32m =
            |m: &DMatrix<f64>| Mat::<f32>::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] as f32);
        let e = view(&w.w_e);
        let all_rows = tokens.len() == e.nrows() && tokens.iter().enumerate().all(|(i, t)| i == *t);
        // The rows of W_E that are scanned (a copy only for a subset).
        let e_rows: Option<Mat<f32>> =
            (!all_rows).then(|| Mat::from_fn(tokens.len(), d, |i, j| e[(tokens[i], j)]));
        let e_used = e_rows.as_ref().map_or(e, |m| m.as_ref());
        let left: Option<Mat<f32>> = self.a.as_ref().map(|a| {
            let a = f32m(a);
            let mut out = Mat::<f32>::zeros(e_used.nrows(), a.ncols());
            matmul(&mut out, Accum::Replace, e_used, &a, 1.0, par());
            out
        });
        let r = match self.right {
            Right::Unembed => view(&w.w_u),
            Right::EmbedT => e.transpose(),
        };
        let right: Option<Mat<f32>> = self.b.as_ref().map(|b| {
            let b = f32m(b);
            let mut out = Mat::<f32>::zeros(b.nrows(), r.ncols());
            matmul(&mut out, Accum::Replace, &b, r, 1.0, par());
            out
        });
        scan(
            left.as_ref().map_or(e_used, |m| m.as_ref()),
            tokens,
            right.as_ref().map_or(r, |m| m.as_ref()),
            spec,
            pb,
        )
    }
}
