//! Low-rank matrices kept as a product of two small factors, in f64.
//!
//! The analogue of TransformerLens's `FactoredMatrix`: a matrix `M = A B` with
//! `A` [n, k] and `B` [k, m] (k small, n and m possibly the vocabulary size) is never
//! formed. Its Frobenius norm comes from the triangular factors of thin QR
//! decompositions (`A = Q_A R_A`, `B^T = Q_B R_B`, so `||A B||_F = ||R_A R_B^T||_F`,
//! as `Q_A` and `Q_B` have orthonormal columns); its non-zero eigenvalues are those of
//! `B A` [k, k]; its entries are produced a block of rows at a time.

use nalgebra::{Complex, DMatrix, Schur};

use crate::{Error, Result};

/// Widens an f32 matrix to f64.
pub fn to_f64(m: &DMatrix<f32>) -> DMatrix<f64> {
    m.map(f64::from)
}

/// The triangular factor `R` of a thin QR decomposition of `x` ([min(n, m), m]), so that
/// `||x y||_F = ||R y||_F` for every `y`.
fn r_factor(x: &DMatrix<f64>) -> DMatrix<f64> {
    x.clone().qr().r()
}

/// One entry of a matrix, with its row and column.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Entry {
    pub row: usize,
    pub col: usize,
    pub value: f64,
}

/// `M = A B`, kept factored.
#[derive(Clone, Debug)]
pub struct LowRank {
    a: DMatrix<f64>,
    b: DMatrix<f64>,
    /// `R` of `A` and of `B^T`, computed once (norms of this matrix and of its products).
    r_a: DMatrix<f64>,
    r_bt: DMatrix<f64>,
}

impl LowRank {
    /// `A B`; panics if the inner dimensions differ (a programming error here, as every
    /// caller builds the factors from one validated `Weights`).
    pub fn new(a: DMatrix<f64>, b: DMatrix<f64>) -> Self {
        assert_eq!(
            a.ncols(),
            b.nrows(),
            "LowRank: inner dimensions differ ({}x{} times {}x{})",
            a.nrows(),
            a.ncols(),
            b.nrows(),
            b.ncols()
        );
        let r_a = r_factor(&a);
        let r_bt = r_factor(&b.transpose());
        LowRank { a, b, r_a, r_bt }
    }

    /// Left factor `A` [n, k].
    pub fn a(&self) -> &DMatrix<f64> {
        &self.a
    }

    /// Right factor `B` [k, m].
    pub fn b(&self) -> &DMatrix<f64> {
        &self.b
    }

    /// Rows of `A B`.
    pub fn nrows(&self) -> usize {
        self.a.nrows()
    }

    /// Columns of `A B`.
    pub fn ncols(&self) -> usize {
        self.b.ncols()
    }

    /// `(A B)^T = B^T A^T`, factored.
    pub fn transpose(&self) -> LowRank {
        LowRank {
            a: self.b.transpose(),
            b: self.a.transpose(),
            r_a: self.r_bt.clone(),
            r_bt: self.r_a.clone(),
        }
    }

    /// The product `A B` as a dense matrix (for tests and small matrices only).
    pub fn dense(&self) -> DMatrix<f64> {
        &self.a * &self.b
    }

    /// Frobenius norm of `A B`, from the small factors.
    pub fn frobenius_norm(&self) -> f64 {
        (&self.r_a * self.r_bt.transpose()).norm()
    }

    /// Frobenius norm of the product `self · other`, from the small factors:
    /// `A1 B1 A2 B2 = Q1 (R_A1 (B1 A2) R_B2^T) Q2^T`.
    pub fn product_norm(&self, other: &LowRank) -> f64 {
        assert_eq!(self.ncols(), other.nrows(), "LowRank::product_norm: shapes");
        let middle = &self.b * &other.a;
        (&self.r_a * middle * other.r_bt.transpose()).norm()
    }

    /// `self · other`, factored as `A1 (B1 A2 B2)`.
    pub fn then(&self, other: &LowRank) -> LowRank {
        assert_eq!(self.ncols(), other.nrows(), "LowRank::then: shapes");
        LowRank::new(self.a.clone(), &self.b * &other.a * &other.b)
    }

    /// The eigenvalues of `B A` [k, k]: the non-zero eigenvalues of `A B` plus zeros
    /// (`B A v = λ v` gives `A B (A v) = λ (A v)`). This is TransformerLens's
    /// `FactoredMatrix.eigenvalues`. Requires `A B` square.
    pub fn eigenvalues(&self) -> Result<Vec<Complex<f64>>> {
        if self.nrows() != self.ncols() {
            return Err(Error::Argument(format!(
                "eigenvalues of a non-square {}x{} matrix",
                self.nrows(),
                self.ncols()
            )));
        }
        eigenvalues(&(&self.b * &self.a))
    }

    /// Rows `start..start + len` of `A B`, as a dense [len, m] block.
    pub fn row_block(&self, start: usize, len: usize) -> DMatrix<f64> {
        self.a.rows(start, len) * &self.b
    }

    /// Calls `f(row_index, row)` for every row of `A B`, computing `ROW_BLOCK` rows at a time,
    /// so that the full [n, m] matrix is never stored.
    pub fn for_each_row(&self, mut f: impl FnMut(usize, &[f64])) {
        const ROW_BLOCK: usize = 64;
        let n = self.nrows();
        let mut start = 0;
        while start < n {
            let len = ROW_BLOCK.min(n - start);
            // Transposed so that each row of the block is contiguous (column-major storage).
            let block_t = self.row_block(start, len).transpose();
            for r in 0..len {
                f(start + r, block_t.column(r).as_slice());
            }
            start += len;
        }
    }

    /// The `k` largest entries of `A B` (ties: smaller row, then smaller column first),
    /// largest first.
    pub fn top_entries(&self, k: usize) -> Vec<Entry> {
        self.scan(k).0
    }

    /// For every row, the `k` largest entries as `(column, value)`, largest first.
    pub fn top_per_row(&self, k: usize) -> Vec<Vec<(usize, f64)>> {
        let mut out = Vec::with_capacity(self.nrows());
        self.for_each_row(|_, row| out.push(top_k_of_row(row, k)));
        out
    }

    /// For a square matrix: the fraction of rows whose largest entry is on the diagonal
    /// (for a full OV circuit: the fraction of tokens the head maps most strongly to
    /// themselves; on ties only the first maximum of a row counts).
    pub fn diagonal_argmax_fraction(&self) -> Option<f64> {
        self.scan(0).1
    }

    /// [`top_entries`](Self::top_entries) and
    /// [`diagonal_argmax_fraction`](Self::diagonal_argmax_fraction) in one pass over the rows.
    pub fn scan(&self, k: usize) -> (Vec<Entry>, Option<f64>) {
        let square = self.nrows() == self.ncols() && self.nrows() > 0;
        let mut top = TopK::new(k);
        let mut hits = 0usize;
        self.for_each_row(|i, row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                top.push(v, (i, j));
                if v > row[best] {
                    best = j;
                }
            }
            if best == i {
                hits += 1;
            }
        });
        let entries = top
            .into_sorted()
            .into_iter()
            .map(|(value, (row, col))| Entry { row, col, value })
            .collect();
        let frac = square.then(|| hits as f64 / self.nrows() as f64);
        (entries, frac)
    }
}

/// The `k` largest values of `row` as `(index, value)`, largest first (ties: smaller index).
pub fn top_k_of_row(row: &[f64], k: usize) -> Vec<(usize, f64)> {
    let mut top = TopK::new(k);
    for (j, &v) in row.iter().enumerate() {
        top.push(v, j);
    }
    top.into_sorted().into_iter().map(|(v, j)| (j, v)).collect()
}

/// A bounded selection of the `k` largest values (ties broken towards the smaller key).
/// `k` is small (tens), so a sorted vector with insertion is simplest.
struct TopK<K: Ord + Copy> {
    k: usize,
    /// Sorted best first.
    items: Vec<(f64, K)>,
}

impl<K: Ord + Copy> TopK<K> {
    fn new(k: usize) -> Self {
        TopK {
            k,
            // (A capacity hint only: `k` may come from the command line.)
            items: Vec::with_capacity(k.saturating_add(1).min(1024)),
        }
    }

    fn better(a: &(f64, K), b: &(f64, K)) -> bool {
        a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
    }

    fn push(&mut self, value: f64, key: K) {
        if self.k == 0 || value.is_nan() {
            return;
        }
        let item = (value, key);
        if self.items.len() == self.k && !Self::better(&item, self.items.last().unwrap()) {
            return;
        }
        let pos = self
            .items
            .iter()
            .position(|x| Self::better(&item, x))
            .unwrap_or(self.items.len());
        self.items.insert(pos, item);
        self.items.truncate(self.k);
    }

    fn into_sorted(self) -> Vec<(f64, K)> {
        self.items
    }
}

/// Eigenvalues of a small real square matrix (complex in general), via nalgebra's real
/// Schur decomposition. The eigenvalues are read off the quasi-triangular factor: 1x1
/// blocks are real eigenvalues, 2x2 blocks give a pair (complex conjugate, or two real
/// values if the block was not split). nalgebra's Francis iteration has no exceptional
/// shifts, so for the rare matrix on which it stalls (e.g. a cyclic permutation) the
/// decomposition is retried on `M + sI` for a few fixed shifts `s`, and `s` subtracted.
/// Order: as they appear on the diagonal of the Schur form (not sorted).
pub fn eigenvalues(m: &DMatrix<f64>) -> Result<Vec<Complex<f64>>> {
    assert!(m.is_square(), "eigenvalues: non-square matrix");
    let n = m.nrows();
    if n == 0 {
        return Ok(Vec::new());
    }
    if m.iter().any(|v| !v.is_finite()) {
        return Err(Error::Argument(
            "eigenvalues of a matrix with non-finite entries".into(),
        ));
    }
    let scale = m.amax();
    if scale == 0.0 {
        return Ok(vec![Complex::new(0.0, 0.0); n]);
    }
    let max_niter = 1000 * n.max(10);
    for shift in [0.0, 0.371, -0.613, 1.129, -1.787] {
        let s = shift * scale;
        let shifted = m + DMatrix::<f64>::identity(n, n) * s;
        if let Some(schur) = Schur::try_new(shifted, f64::EPSILON, max_niter) {
            let (_, t) = schur.unpack();
            let vals = quasi_triangular_eigenvalues(&t);
            if vals.iter().all(|z| z.re.is_finite() && z.im.is_finite()) {
                return Ok(vals.into_iter().map(|z| z - s).collect());
            }
        }
    }
    Err(Error::Unsupported(format!(
        "the eigenvalue iteration did not converge for a {n}x{n} matrix"
    )))
}

fn quasi_triangular_eigenvalues(t: &DMatrix<f64>) -> Vec<Complex<f64>> {
    let n = t.nrows();
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        if i + 1 < n && t[(i + 1, i)] != 0.0 {
            let (a, b, c, d) = (t[(i, i)], t[(i, i + 1)], t[(i + 1, i)], t[(i + 1, i + 1)]);
            let half_trace = 0.5 * (a + d);
            let half_diff = 0.5 * (a - d);
            let disc = b * c + half_diff * half_diff;
            if disc >= 0.0 {
                let r = disc.sqrt();
                out.push(Complex::new(half_trace + r, 0.0));
                out.push(Complex::new(half_trace - r, 0.0));
            } else {
                let r = (-disc).sqrt();
                out.push(Complex::new(half_trace, r));
                out.push(Complex::new(half_trace, -r));
            }
            i += 2;
        } else {
            out.push(Complex::new(t[(i, i)], 0.0));
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> DMatrix<f64> {
        DMatrix::from_fn(rows, cols, f)
    }

    /// A deterministic pseudo-random matrix (no RNG needed in these tests).
    fn pseudo(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
        mat(rows, cols, |i, j| {
            let x = ((i * 7919 + j * 104_729) as u64 ^ seed.wrapping_mul(0x9E37_79B9)) as f64;
            (x * 0.618_033_988_7).sin() * 2.0
        })
    }

    #[test]
    fn norms_from_factors_equal_dense_norms() {
        let a = pseudo(40, 3, 1);
        let b = pseudo(3, 30, 2);
        let lr = LowRank::new(a, b);
        let dense = lr.dense();
        assert!((lr.frobenius_norm() - dense.norm()).abs() < 1e-9 * dense.norm());
        assert!((lr.transpose().frobenius_norm() - dense.norm()).abs() < 1e-9 * dense.norm());

        let other = LowRank::new(pseudo(30, 2, 3), pseudo(2, 25, 4));
        let prod = &dense * other.dense();
        assert!((lr.product_norm(&other) - prod.norm()).abs() < 1e-9 * prod.norm());
        assert!((lr.then(&other).frobenius_norm() - prod.norm()).abs() < 1e-9 * prod.norm());
    }

    #[test]
    fn wide_factors_still_give_exact_norms() {
        // Inner dimension larger than the outer ones: R factors are wide.
        let lr = LowRank::new(pseudo(3, 8, 5), pseudo(8, 4, 6));
        let d = lr.dense();
        assert!((lr.frobenius_norm() - d.norm()).abs() < 1e-9 * d.norm());
    }

    #[test]
    fn rows_and_top_entries_match_dense() {
        let lr = LowRank::new(pseudo(150, 4, 7), pseudo(4, 150, 8));
        let d = lr.dense();
        let mut all: Vec<(f64, usize, usize)> = Vec::new();
        lr.for_each_row(|i, row| {
            for (j, &v) in row.iter().enumerate() {
                assert!((v - d[(i, j)]).abs() < 1e-12);
                all.push((v, i, j));
            }
        });
        assert_eq!(all.len(), 150 * 150);
        all.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap());
        let top = lr.top_entries(5);
        for (e, x) in top.iter().zip(&all) {
            assert_eq!((e.row, e.col), (x.1, x.2));
            assert_eq!(e.value, x.0);
        }
        let per_row = lr.top_per_row(3);
        assert_eq!(per_row.len(), 150);
        let row7: Vec<f64> = d.row(7).iter().copied().collect();
        let mut sorted = row7.clone();
        sorted.sort_by(|x, y| y.partial_cmp(x).unwrap());
        assert_eq!(per_row[7][0].1, sorted[0]);
        assert_eq!(per_row[7][2].1, sorted[2]);
        assert_eq!(row7[per_row[7][1].0], sorted[1]);
    }

    #[test]
    fn top_k_tie_break_and_small_rows() {
        assert_eq!(
            top_k_of_row(&[1.0, 3.0, 3.0, 2.0], 3),
            vec![(1, 3.0), (2, 3.0), (3, 2.0)]
        );
        assert_eq!(top_k_of_row(&[1.0], 3), vec![(0, 1.0)]);
        assert!(top_k_of_row(&[1.0], 0).is_empty());
    }

    fn sort_key(z: &Complex<f64>) -> (i64, i64) {
        ((z.re * 1e6).round() as i64, (z.im * 1e6).round() as i64)
    }

    #[test]
    fn eigenvalues_of_known_matrices() {
        // Rotation by 90 degrees: ±i.
        let r = DMatrix::from_row_slice(2, 2, &[0.0, -1.0, 1.0, 0.0]);
        let mut e = eigenvalues(&r).unwrap();
        e.sort_by_key(sort_key);
        assert!((e[0] - Complex::new(0.0, -1.0)).norm() < 1e-12);
        assert!((e[1] - Complex::new(0.0, 1.0)).norm() < 1e-12);

        // Cyclic permutation of 5 (a classic stall for unshifted Francis): the 5th roots of 1.
        let p = mat(5, 5, |i, j| if (i + 1) % 5 == j { 1.0 } else { 0.0 });
        let e = eigenvalues(&p).unwrap();
        assert_eq!(e.len(), 5);
        for z in &e {
            assert!((z.norm() - 1.0).abs() < 1e-9, "{z}");
            assert!((z.powu(5) - Complex::new(1.0, 0.0)).norm() < 1e-8, "{z}");
        }
        let sum: Complex<f64> = e.iter().sum();
        assert!(sum.norm() < 1e-9);

        // Triangular: the diagonal.
        let t = DMatrix::from_row_slice(3, 3, &[2.0, 5.0, 1.0, 0.0, -3.0, 4.0, 0.0, 0.0, 0.5]);
        let mut e: Vec<f64> = eigenvalues(&t).unwrap().iter().map(|z| z.re).collect();
        e.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert!(
            (e[0] + 3.0).abs() < 1e-12 && (e[1] - 0.5).abs() < 1e-12 && (e[2] - 2.0).abs() < 1e-12
        );

        assert_eq!(
            eigenvalues(&DMatrix::zeros(3, 3)).unwrap(),
            vec![Complex::new(0.0, 0.0); 3]
        );
    }

    #[test]
    fn small_product_eigenvalues_equal_large_product_eigenvalues() {
        // A [12, 3], B [3, 12]: the 12x12 product has the 3 eigenvalues of B A plus 9 zeros.
        for seed in 0..5 {
            let lr = LowRank::new(pseudo(12, 3, 10 + seed), pseudo(3, 12, 20 + seed));
            let small = lr.eigenvalues().unwrap();
            assert_eq!(small.len(), 3);
            let big = eigenvalues(&lr.dense()).unwrap();
            assert_eq!(big.len(), 12);
            let scale = big.iter().map(|z| z.norm()).fold(0.0, f64::max);
            let mut used = [false; 12];
            for z in &small {
                let (best, dist) = big
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !used[*i])
                    .map(|(i, w)| (i, (w - z).norm()))
                    .min_by(|x, y| x.1.partial_cmp(&y.1).unwrap())
                    .unwrap();
                assert!(
                    dist < 1e-8 * scale.max(1.0),
                    "seed {seed}: {z} vs {}",
                    big[best]
                );
                used[best] = true;
            }
            for (i, w) in big.iter().enumerate() {
                if !used[i] {
                    assert!(w.norm() < 1e-8 * scale.max(1.0), "seed {seed}: extra {w}");
                }
            }
        }
    }
}
